"""``lumiere data shard``: WebDataset shards of a folder holding every odd case real folders hold."""

from __future__ import annotations

import json
import os
import tarfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from lumiere.data.shards import PROGRESS_DIR, list_sources, probe_clip, write_shards
from lumiere.testing.real_clips import pan_zoom_clip, photo, write_real_folder


def write_odd(
    path: Path,
    frames: np.ndarray,  # uint8 [f, h, w, 3]
    pix_fmt: str = "yuv420p",
    fps: int = 8,
    audio: bool = False,
    vfr: bool = False,  # frame intervals alternate 1/fps and 3/fps
    rotation: int = 0,  # display rotation, degrees counter-clockwise
    caption: str | None = "a clip",
) -> Path:
    """Encode ``frames`` in ``pix_fmt`` (and the given oddities) to ``path``: H.264 (libx264), or
    FFV1 for gray (this libx264 turns gray into yuv420p; libx265's gray corrupts the heap here)."""
    codec = "ffv1" if pix_fmt.startswith("gray") else "libx264"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        stream.time_base = Fraction(1, 1000)
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "crf": "18"}
        if rotation:
            stream.set_display_rotation(rotation)
        sound = container.add_stream("aac", rate=16000) if audio else None
        time = 0
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = time, Fraction(1, 1000)
            time += 1000 // fps * (3 if vfr and i % 2 else 1)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
        if sound is not None:
            samples = (np.sin(np.arange(16000) / 10) * 0.1).astype(np.float32)[None]  # 1 s of a tone
            chunk = av.AudioFrame.from_ndarray(samples[:, :1024], format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts = 16000, 0
            container.mux(sound.encode(chunk))
            container.mux(sound.encode(None))
    if caption is not None:
        path.with_suffix(".txt").write_text(caption)
    return path


def odd_folder(root: Path) -> dict[str, str | None]:
    """A folder with real clips and every odd case; returns file name -> expected skip reason."""
    write_real_folder(root, 4, num_frames=12, size=(32, 48), fps=8)
    expected: dict[str, str | None] = {f"clip_{i:03d}.mp4": None for i in range(4)}
    pan = pan_zoom_clip(photo("coffee"), "pan right", 12, (32, 48))
    cases = {
        "audio.mp4": {"audio": True},
        "vfr.mp4": {"vfr": True},
        "gray.mkv": {"pix_fmt": "gray"},
        "tenbit.mp4": {"pix_fmt": "yuv420p10le"},
        "yuv444.mp4": {"pix_fmt": "yuv444p"},
        "rotated.mp4": {"rotation": 90},
        "short.mp4": {},  # 3 frames: shorter than the clips asked for when streaming
        "nocaption.mp4": {"caption": None},
    }
    for name, options in cases.items():
        frames = pan[:3] if name == "short.mp4" else pan
        write_odd(root / name, frames, **options)
        expected[name] = "no caption" if name == "nocaption.mp4" else None
    huge = np.asarray(np.broadcast_to(photo("astronaut")[:, :, None], (512, 512, 4, 3))).reshape(512, 2048, 3)
    write_odd(root / "huge.mp4", np.stack([huge] * 4))  # 2048x512: downscaled when decoding
    expected["huge.mp4"] = None
    (root / "empty.mp4").write_bytes(b"")
    (root / "empty.txt").write_text("nothing")
    expected["empty.mp4"] = "empty"
    # seeded noise: fresh random bytes (os.urandom) were once probed by FFmpeg as a video it could
    # decode (a clean-CI run counted corrupt.mp4 as a clip); these bytes are not
    (root / "corrupt.mp4").write_bytes(np.random.default_rng(4096).bytes(4096))
    (root / "corrupt.txt").write_text("noise")
    expected["corrupt.mp4"] = "unreadable"
    good = (root / "clip_000.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(good[: len(good) // 2])  # the moov atom is lost
    (root / "truncated.txt").write_text("half a file")
    expected["truncated.mp4"] = "unreadable"
    with av.open(str(root / "soundonly.mp4"), mode="w") as container:  # a container without video
        sound = container.add_stream("aac", rate=16000)
        chunk = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        chunk.sample_rate, chunk.pts = 16000, 0
        container.mux(sound.encode(chunk))
        container.mux(sound.encode(None))
    (root / "soundonly.txt").write_text("a tone")
    expected["soundonly.mp4"] = "no video stream"
    return expected


@pytest.fixture(scope="module")
def odd(tmp_path_factory) -> tuple[Path, dict[str, str | None]]:
    root = tmp_path_factory.mktemp("odd")
    return root, odd_folder(root)


def shard_members(out: Path) -> dict[str, list[str]]:
    members = {}
    for shard in sorted(out.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            members[shard.name] = tar.getnames()
    return members


def test_manifest_counts_and_reasons(odd, tmp_path):
    root, expected = odd
    manifest = write_shards(root, tmp_path / "shards", shard_size_mb=0.05, workers=2, progress=False)
    skipped = {entry["source"]: entry["reason"] for entry in manifest["skipped_files"]}
    assert skipped == {name: reason for name, reason in expected.items() if reason}
    good = sorted(name for name, reason in expected.items() if reason is None)
    assert manifest["files"] == len(expected) and manifest["clips"] == len(good)
    assert manifest["skipped_by_reason"] == {
        "empty": 1,
        "no caption": 1,
        "no video stream": 1,
        "unreadable": 2,
    }
    # Bounded shards: a shard closes before the clip that would take it past 0.05 MB.
    assert len(manifest["shards"]) > 1
    for shard in manifest["shards"]:
        assert shard["bytes"] <= 0.05 * 2**20 or shard["clips"] == 1
    assert sum(s["clips"] for s in manifest["shards"]) == len(good)
    # Every clip: bytes as they were, caption and metadata.
    metas = {}
    for shard in sorted((tmp_path / "shards").glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(member).read())
                    key = member.name[: -len(".json")]
                    assert (
                        tar.extractfile(f"{key}.{meta['ext']}").read() == (root / meta["source"]).read_bytes()
                    )
                    assert (
                        tar.extractfile(f"{key}.txt").read().decode()
                        == (root / meta["source"]).with_suffix(".txt").read_text().strip()
                    )
                    metas[meta["source"]] = meta
    assert sorted(metas) == good
    assert metas["audio.mp4"]["audio"] and not metas["clip_000.mp4"]["audio"]
    assert metas["vfr.mp4"]["vfr"] and not metas["clip_000.mp4"]["vfr"]
    assert metas["gray.mkv"]["pix_fmt"] == "gray"
    assert metas["tenbit.mp4"]["pix_fmt"] == "yuv420p10le"
    assert metas["yuv444.mp4"]["pix_fmt"] == "yuv444p"
    assert metas["rotated.mp4"]["rotation"] == 90
    assert (metas["rotated.mp4"]["width"], metas["rotated.mp4"]["height"]) == (32, 48)  # display: turned
    assert (metas["huge.mp4"]["width"], metas["huge.mp4"]["height"]) == (2048, 512)
    assert metas["clip_000.mp4"]["frames"] == 12 and metas["clip_000.mp4"]["fps"] == pytest.approx(8)
    assert metas["clip_000.mp4"]["duration"] == pytest.approx(1.5)
    assert metas["short.mp4"]["frames"] == 3


def test_too_large_frames_are_skipped_with_their_reason(odd):
    root, _ = odd
    (source,) = [s for s in list_sources(root) if s.path.endswith("huge.mp4")]
    meta, reason, detail = probe_clip(source, max_pixels=1000 * 1000)
    assert meta is None and reason == "too large" and "2048x512" in detail


def test_manifest_csv_with_windows(tmp_path):
    write_real_folder(tmp_path / "v", 2, num_frames=16, size=(32, 32))
    (tmp_path / "list.csv").write_text(
        "path,caption,start,end\nv/clip_000.mp4,first,0.5,1.5\nv/clip_001.mp4,second,,\nv/missing.mp4,gone,,\n"
    )
    manifest = write_shards(tmp_path / "list.csv", tmp_path / "out", progress=False)
    assert manifest["clips"] == 2 and manifest["skipped_by_reason"] == {"missing": 1}
    assert manifest["seconds"] == pytest.approx(1.0 + 2.0)  # the window, then the whole clip
    with pytest.raises(ValueError, match="end"):
        (tmp_path / "bad.csv").write_text("path,caption,start,end\nv/clip_000.mp4,x,2,1\n")
        list_sources(tmp_path / "bad.csv")


def test_resume_after_a_kill_writes_no_shard_twice(tmp_path):
    write_real_folder(tmp_path / "v", 6, num_frames=8, size=(32, 32))
    whole = write_shards(tmp_path / "v", tmp_path / "whole", shard_size_mb=0.006, progress=False)
    assert len(whole["shards"]) >= 3
    # A run killed after two shards: shard 2 half-written under its temporary name, no record.
    out = tmp_path / "killed"
    write_shards(tmp_path / "v", out, shard_size_mb=0.006, progress=False)
    for shard in whole["shards"][2:]:
        name = shard["name"]
        os.replace(out / name, out / (name + ".tmp"))
        (out / PROGRESS_DIR / name.replace(".tar", ".json")).unlink()
    (out / "manifest.json").unlink()
    kept = {name: (out / name).stat().st_mtime_ns for name in ("shard-000000.tar", "shard-000001.tar")}
    resumed = write_shards(tmp_path / "v", out, shard_size_mb=0.006, progress=False)
    assert {name: (out / name).stat().st_mtime_ns for name in kept} == kept  # not written again
    assert resumed["shards"] == whole["shards"] and resumed["clips"] == whole["clips"] == 6
    assert shard_members(out) == shard_members(tmp_path / "whole")
    assert not list(out.glob("*.tmp"))  # the half-written shards were written over, then renamed


def test_cli_data_shard(tmp_path):
    from lumiere.cli import main

    write_real_folder(tmp_path / "v", 2, num_frames=8, size=(32, 32))
    assert main(["data", "shard", str(tmp_path / "v"), "--out", str(tmp_path / "s"), "--workers", "1"]) == 0
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["clips"] == 2 and manifest["shards"][0]["name"] == "shard-000000.tar"
