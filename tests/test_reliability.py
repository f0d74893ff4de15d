"""Reliability matrix (issue 35): what a new user can get wrong, and what the machine can do wrong.

Every case of the ``lumiere`` command ends in exactly one line on stderr that names the argument,
file or folder, with exit code 2 for input to change and 1 for a fault of the machine (a full
disk, a read-only file system) or of the work; no traceback; no file left behind. Disk faults are
injected by failing the OS call (``os.fsync``, ``os.replace``, the encoder's write) and, where
this machine lets the test mount one, on a real small or read-only tmpfs. Training hit by a disk
fault keeps its last good checkpoint and resumes bit for bit. docs/reliability.md holds the
matrix in words.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import lumiere.data.video_io as video_io
from lumiere.checkpoint import load_checkpoint
from lumiere.cli import MAX_SEED, main
from lumiere.config import config_from_dict, load_config
from lumiere.data.video_io import write_video
from lumiere.errors import OutputError
from lumiere.files import atomic_write, check_writable, staged_folder
from lumiere.models.presets import STUNET_PRESETS, build_unet2d
from lumiere.models.ssr import build_ssr_stunet
from lumiere.models.stunet import STUNet
from lumiere.pipelines import LumierePipeline
from lumiere.pipelines.inputs import OversizedInputError
from lumiere.pipelines.memory import estimate_sampling_seconds, network_calls
from lumiere.train import train

PROMPT = "a red circle moving right on a black background"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# ---------------------------------------------------------------------------------------------
# Fixtures: a tiny pipeline with an SSR, small inputs, tmpfs mounts where allowed.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A saved tiny pipeline (base + SSR), a 4-frame 8x8 clip, and images whose headers claim
    10000x10000 and 30000x30000 pixels (a few bytes each: nothing that large is ever decoded)."""
    root = tmp_path_factory.mktemp("reliability")
    torch.manual_seed(0)
    stunet = STUNet.from_unet2d(build_unet2d("tiny"), **STUNET_PRESETS["tiny"])
    ssr = build_ssr_stunet(build_unet2d("tiny"), **STUNET_PRESETS["tiny"])
    LumierePipeline.from_stunet(stunet, ssr=ssr).save_pretrained(root / "model")
    write_video(root / "clip.mp4", np.zeros((4, 8, 8, 3), np.uint8))
    png_header(root / "large.png", 10_000, 10_000)
    png_header(root / "bomb.png", 30_000, 30_000)
    (root / "a_file").write_text("not a folder")
    (root / "a_folder.mp4").mkdir()
    return {"root": root, "model": root / "model", "clip": root / "clip.mp4"}


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header says ``width x height`` (8-bit gray) and whose pixel data is empty."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")
    )
    return path


def _mount(target: Path, options: str) -> bool:
    target.mkdir(parents=True, exist_ok=True)
    if not IS_ROOT or shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True)
    return done.returncode == 0


@contextlib.contextmanager
def tmpfs(target: Path, options: str):
    """A tmpfs at ``target`` (e.g. "size=64k", "ro"), unmounted afterwards; skips the test where
    this machine does not allow mounting (not root, a container without the capability)."""
    if not _mount(target, options):
        pytest.skip("mounting a tmpfs is not allowed here; the fault-injection variant covers this case")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def fill(folder: Path) -> None:
    """Fill the file system of ``folder`` to the last byte."""
    with contextlib.suppress(OSError), open(folder / "filler", "wb", buffering=0) as handle:
        while True:
            handle.write(b"\0" * 4096)


# ---------------------------------------------------------------------------------------------
# The command, in process: exit code, one line, no traceback, nothing left behind.
# ---------------------------------------------------------------------------------------------


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def assert_one_line(stderr: str, pattern: str) -> None:
    # A progress bar closed by the error (its last frame, then a newline) is progress, not an error.
    lines = [line for line in stderr.splitlines() if line.strip() and "|" not in line.split("\r")[-1]]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr}"
    assert "Traceback" not in stderr
    assert lines[0].startswith("lumiere"), lines[0]
    assert re.search(pattern, lines[0]), f"{pattern!r} not in {lines[0]!r}"


def assert_nothing_left(path: Path) -> None:
    """No output at ``path`` and no temporary file beside it."""
    assert not path.exists() or path.is_dir(), f"{path} was left behind"
    folder = path.parent
    if folder.is_dir():
        leftovers = [p.name for p in folder.iterdir() if ".partial" in p.name]
        assert not leftovers, leftovers


def base(files, out: str) -> list[str]:
    return ["generate", PROMPT, "--model", str(files["model"]), "--steps", "1", "--frames", "2",
            "--no-upsample", "-o", out]  # fmt: skip


def upsample(files, out: str) -> list[str]:
    return ["upsample", str(files["clip"]), "--prompt", PROMPT, "--model", str(files["model"]),
            "--steps", "1", "-o", out]  # fmt: skip


def training_config(root: Path, text: str | bytes) -> str:
    path = root / "config.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


# (id, argv of (files, tmp_path), exit code, what the one line says)
CLI_CASES = [
    # Values the option type accepts but the code cannot: checked at parse time.
    ("seed-past-64-bits", lambda f, t: base(f, f"{t}/a.mp4") + ["--seed", str(2**64)], 2,
     r"argument --seed: must be an integer in \[0, 18446744073709551615\], got 18446744073709551616"),
    ("seed-plus-clips-past-64-bits", lambda f, t: base(f, f"{t}/a.mp4") + ["--seed", str(MAX_SEED), "--num-videos", "2"],
     2, r"argument --seed: clip i uses seed \+ i, so --seed must be <= 18446744073709551614"),
    ("negative-seed", lambda f, t: base(f, f"{t}/a.mp4") + ["--seed", "-1"], 2, r"argument --seed: must be an integer in"),
    ("device-bogus", lambda f, t: base(f, f"{t}/a.mp4") + ["--device", "bogus"], 2,
     r"argument --device: 'bogus' is not a torch device; devices here: cpu"),
    ("device-not-here", lambda f, t: base(f, f"{t}/a.mp4") + ["--device", "cuda:99"], 2,
     r"argument --device: 'cuda:99' is not available here; devices here: cpu"),
    ("noise-level-past-the-schedule", lambda f, t: upsample(f, f"{t}/a.mp4") + ["--noise-level", "5000"], 2,
     r"argument --noise-level: must be an integer timestep in \[0, 999\].*got 5000"),
    # Images too large to decode: refused from the header (ours), or by Pillow's bomb check.
    ("image-10000x10000", lambda f, t: base(f, f"{t}/a.mp4") + ["--image", str(f["root"] / "large.png")], 2,
     r"image is 10000x10000 pixels; at most 89,478,485 are taken"),
    ("image-decompression-bomb", lambda f, t: base(f, f"{t}/a.mp4") + ["--image", str(f["root"] / "bomb.png")], 2,
     r"image is 900,000,000 pixels; at most 89,478,485 are taken"),
    # Output paths that cannot be written: refused before any sampling.
    ("output-is-a-folder", lambda f, t: base(f, str(f["root"] / "a_folder.mp4")), 2,
     r"argument -o/--output: .*a_folder.mp4 is a folder; give a file name"),
    ("output-under-a-file", lambda f, t: base(f, str(f["root"] / "a_file" / "a.mp4")), 2,
     r"argument -o/--output: .*a_file/a.mp4 is under .*a_file, which is a file, not a folder"),
    ("eval-out-is-a-folder", lambda f, t: ["eval", "--model", str(f["model"]), "--count", "2", "--out", str(f["root"])],
     2, r"argument --out: .* is a folder"),
    ("data-under-a-file", lambda f, t: ["data", "shapes", "--out", str(f["root"] / "a_file" / "d"), "--count", "1"], 2,
     r"argument --out: .*a_file/d is under .*a_file, which is a file"),
    # Training configs: file and key (and line) named.
    ("yaml-syntax", lambda f, t: ["train", training_config(t, "stage: t2i\noptim:\n  lr: [1\n")], 2,
     r"config.yaml line 4, column 1: invalid YAML: expected ',' or ']'"),
    ("yaml-unknown-key", lambda f, t: ["train", training_config(t, "optim:\n  lrr: 0.1\n")], 2,
     r"config.yaml: unknown config key optim.lrr; did you mean optim.lr\?"),
    ("yaml-wrong-type", lambda f, t: ["train", training_config(t, "optim:\n  batch_size: eight\n")], 2,
     r"config.yaml: config key optim.batch_size must be an integer, got text 'eight'"),
    ("yaml-list-not-mapping", lambda f, t: ["train", training_config(t, "optim:\n  - lr\n")], 2,
     r"config.yaml: config key optim must be a mapping of keys to values, got a list"),
    ("yaml-binary", lambda f, t: ["train", training_config(t, b"\x89PNG\r\n\x1a\n\x00\x00")], 2,
     r"config.yaml is not a YAML text file \(byte 0x89 at offset 0 is not UTF-8\)"),
    ("yaml-control-character", lambda f, t: ["train", training_config(t, "stage: t2i\nseed: \x07\n")], 2,
     r"config.yaml line 2: invalid YAML: unacceptable character"),
    ("yaml-nan-learning-rate", lambda f, t: ["train", training_config(t, "optim:\n  lr: .nan\n")], 2,
     r"config.yaml: config key optim.lr must be a finite number, got nan"),
    ("yaml-1e-4-read-as-text", lambda f, t: ["train", training_config(t, "optim:\n  lr: 1e-4\n")], 2,
     r"optim.lr must be a number, got the text '1e-4' .*write it with a dot, e.g. 1.0e-4"),
    ("yaml-output-dir-under-a-file", lambda f, t: ["train", training_config(t, f"output_dir: {f['root'] / 'a_file' / 'run'}\n")],
     2, r"config key output_dir in .*config.yaml: .* which is a file, not a folder"),
]  # fmt: skip


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_refusal_is_one_line_with_its_exit_code(case, files, tmp_path, capsys):
    _, argv, code, message = case
    argv = argv(files, tmp_path)
    got, stderr = run_cli(argv, capsys)
    assert got == code, stderr
    assert_one_line(stderr, message)
    if "-o" in argv:
        assert_nothing_left(Path(argv[argv.index("-o") + 1]))


def damaged_model(files, tmp_path: Path, damage) -> Path:
    model = tmp_path / "model"
    shutil.copytree(files["model"], model)
    damage(model)
    return model


def _set_scheduler_key(model: Path, key: str, value) -> None:
    path = model / "scheduler" / "scheduler_config.json"
    config = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**config, key: value}))  # JSON is YAML; safe_dump writes JSON-compatible


MODEL_CASES = [
    ("config-json-not-json", lambda m: (m / "ssr" / "config.json").write_text("{not json"),
     r"ssr/config.json is corrupted \(not valid JSON"),
    ("model-index-a-list", lambda m: (m / "model_index.json").write_text("[1]"),
     r"model_index.json is corrupted: expected a JSON object, got list"),
    ("scheduler-wrong-type", lambda m: (m / "scheduler" / "scheduler_config.json").write_text(
        (m / "scheduler" / "scheduler_config.json").read_text().replace('"num_train_timesteps": 1000', '"num_train_timesteps": "many"')),
     r"scheduler_config.json: key num_train_timesteps must be an integer, got str 'many'"),
]  # fmt: skip


@pytest.mark.parametrize("case", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_cli_damaged_model_folder_is_one_line_exit_1(case, files, tmp_path, capsys):
    _, damage, message = case
    model = damaged_model(files, tmp_path, damage)
    out = tmp_path / "out" / "a.mp4"
    code, stderr = run_cli(["generate", PROMPT, "--model", str(model), "-o", str(out)], capsys)
    assert code == 1, stderr
    assert_one_line(stderr, message)
    assert_nothing_left(out)


def test_cli_debug_log_level_shows_the_traceback(files, tmp_path, capsys, caplog):
    """``--log-level DEBUG`` logs the refusal's traceback; the line on stderr stays the same."""
    code, stderr = run_cli(["--log-level", "DEBUG"] + base(files, f"{tmp_path}/a.mp4") +
                           ["--image", str(files["root"] / "large.png")], capsys)  # fmt: skip
    assert code == 2
    assert_one_line(stderr, "image is 10000x10000 pixels")
    assert any(record.exc_info for record in caplog.records), "no traceback logged under DEBUG"


def test_cli_in_a_subprocess_prints_no_traceback(files, tmp_path):
    """The real process (logging to stderr, progress bars, warnings): one line, no traceback."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cases = [  # a refusal after a model was loaded (and logged), and one of the library's config reader
        (upsample(files, str(tmp_path / "a.mp4")) + ["--noise-level", "5000"], 2, "argument --noise-level"),
        (["train", training_config(tmp_path, "optim:\n  lr: .inf\n")], 2, "optim.lr must be a finite number"),
    ]  # fmt: skip
    for argv, code, message in cases:
        done = subprocess.run(
            [sys.executable, "-m", "lumiere.cli", *argv], capture_output=True, text=True, env=env
        )
        assert done.returncode == code, done.stderr
        assert_one_line(done.stderr, message)


# ----- bounds before work: time and memory --------------------------------------------------


def test_upsampling_4096_frames_is_estimated_and_refused_over_the_time_limit(files, tmp_path, capsys):
    long_clip = tmp_path / "long.mp4"
    write_video(long_clip, np.zeros((4096, 8, 8, 3), np.uint8), fps=24)
    out = tmp_path / "up.mp4"
    argv = ["upsample", str(long_clip), "--prompt", PROMPT, "--model", str(files["model"]), "-o", str(out),
            "--time-limit", "0.001"]  # fmt: skip
    code, stderr = run_cli(argv, capsys)
    assert code == 2
    assert_one_line(
        stderr,
        r"argument --time-limit: the request needs about .* \(\d+ network calls\), more than 0.001 min",
    )
    assert_nothing_left(out)
    # The count of network calls is exact: 25 steps x the SSR's 16-frame windows overlapping by 2.
    assert network_calls(4096, 25, 16, 2, 1) == 25 * 293
    seconds, calls = estimate_sampling_seconds(
        LumierePipeline.from_pretrained(files["model"]).ssr, 1, 4096, 16, 16, False, 25, "cpu",
        window=16, overlap=2, flops_per_second=1e9,
    )  # fmt: skip
    assert calls == 25 * 293 and seconds > 0


def test_upsampling_a_clip_that_would_not_fit_in_memory_is_refused_before_decoding(
    files, tmp_path, capsys, monkeypatch
):
    import lumiere.pipelines.memory as memory

    monkeypatch.setattr(memory, "available_bytes", lambda device=None: 1000)  # 1 kB free
    decoded = []
    monkeypatch.setattr(video_io, "read_video", lambda *a: decoded.append(a))
    out = tmp_path / "up.mp4"
    code, stderr = run_cli(upsample(files, str(out)), capsys)
    assert code == 1
    assert_one_line(
        stderr, r"decoding the 4 frames of 8x8 of .*clip.mp4 needs about [\d.]+ KiB but 1000 B is available"
    )
    assert decoded == [] and not out.exists()


def test_pipeline_refuses_an_oversized_image_path_from_its_header(files):
    pipe = LumierePipeline.from_pretrained(files["model"])
    with pytest.raises(OversizedInputError, match="10000x10000 pixels"):
        pipe(PROMPT, image=files["root"] / "large.png", num_frames=2, num_inference_steps=1)


# ---------------------------------------------------------------------------------------------
# Outputs: atomic, and checked before the work.
# ---------------------------------------------------------------------------------------------


def test_disk_full_while_encoding_leaves_no_clip(files, tmp_path, capsys, monkeypatch):
    """The encoder's write fails half-way (ENOSPC): exit 1, one line, no 0-byte or partial clip,
    and a clip that was there before is kept."""

    def encode_then_fail(path, *args, **kwargs):
        Path(path).write_bytes(b"\0" * 100)  # what the encoder got out before the disk filled
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(video_io, "_encode", encode_then_fail)
    out = tmp_path / "a.mp4"
    code, stderr = run_cli(base(files, str(out)), capsys)
    assert code == 1
    assert_one_line(stderr, r"cannot write .*a.mp4: no space left on device")
    assert_nothing_left(out)
    out.write_bytes(b"previous clip")
    assert run_cli(base(files, str(out)), capsys)[0] == 1
    assert out.read_bytes() == b"previous clip"


def test_full_and_read_only_tmpfs_are_refused_before_sampling(files, tmp_path, capsys):
    with tmpfs(tmp_path / "full", "size=64k") as full:
        fill(full)
        out = full / "a.mp4"
        code, stderr = run_cli(base(files, str(out)), capsys)
        assert code == 1
        assert_one_line(stderr, r"argument -o/--output: no space left on the device of .*full \(0 B free\)")
        assert_nothing_left(out)
    with tmpfs(tmp_path / "ro", "ro") as read_only:
        for argv in (base(files, str(read_only / "a.mp4")), upsample(files, str(read_only / "b.mp4")),
                     ["data", "shapes", "--out", str(read_only / "data"), "--count", "1"]):  # fmt: skip
            code, stderr = run_cli(argv, capsys)
            assert code == 1
            assert_one_line(stderr, r"cannot write in .*ro: read-only file system")


@pytest.mark.skipif(IS_ROOT, reason="root writes into a chmod 555 folder anyway; the tmpfs test covers it")
def test_read_only_folder_by_permissions_is_refused_before_sampling(files, tmp_path, capsys):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        code, stderr = run_cli(base(files, str(folder / "a.mp4")), capsys)
        assert code == 2
        assert_one_line(stderr, r"argument -o/--output: cannot write in .*locked: permission denied")
    finally:
        folder.chmod(0o755)


def test_data_set_cut_short_by_a_full_disk_leaves_the_folder_as_it_was(tmp_path, capsys, monkeypatch):
    written = []

    def write_or_fill(path, video, fps=8.0):
        if len(written) == 2:
            raise OutputError(errno.ENOSPC, f"cannot write {path}: no space left on device")
        written.append(path)
        return real_write(path, video, fps)

    real_write = video_io.write_video
    monkeypatch.setattr(video_io, "write_video", write_or_fill)
    out = tmp_path / "shapes"
    code, stderr = run_cli(["data", "shapes", "--out", str(out), "--count", "4", "--frames", "2"], capsys)
    assert code == 1
    assert_one_line(stderr, "no space left on device")
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no data set, no staging folder
    written.clear()
    monkeypatch.setattr(video_io, "write_video", real_write)
    assert run_cli(["data", "shapes", "--out", str(out), "--count", "4", "--frames", "2"], capsys)[0] == 0
    assert sorted(p.name for p in out.iterdir())[:2] == ["clip_000000.mp4", "clip_000000.txt"]


def test_atomic_write_and_check_writable(tmp_path):
    target = tmp_path / "x" / "out.json"
    with pytest.raises(RuntimeError), atomic_write(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("the writer failed")
    assert not target.exists() and list(target.parent.iterdir()) == []
    with atomic_write(target) as temporary:
        temporary.write_text("whole")
    assert target.read_text() == "whole" and oct(target.stat().st_mode & 0o777) != oct(0o600)
    with pytest.raises(OutputError) as info:
        check_writable(tmp_path / "x", "output")
    assert info.value.errno == errno.EISDIR
    with pytest.raises(OutputError) as info:
        check_writable(target / "deeper" / "y.mp4", "output")
    assert info.value.errno == errno.ENOTDIR
    with pytest.raises(ValueError), staged_folder(tmp_path / "set") as staging:
        (staging / "a.txt").write_text("a")
        raise ValueError("cut short")
    assert not (tmp_path / "set").exists() and not list(tmp_path.glob(".set*"))


# ---------------------------------------------------------------------------------------------
# Disk faults during training: one line naming the folder; the last good checkpoint intact;
# --resume continues bit for bit.
# ---------------------------------------------------------------------------------------------


def run_config(output_dir: Path, max_steps: int = 4) -> dict:
    return {
        "stage": "t2i",
        "output_dir": str(output_dir),
        "model": {"preset": "tiny"},
        "data": {"resolution": 16, "num_frames": 1},
        "optim": {"batch_size": 2, "max_steps": max_steps, "warmup_steps": 1, "lr": 1e-3},
        "log_every": 1,
        "checkpoint_every": 2,
        "keep_checkpoints": 1,
        "sample_steps": 1,
    }


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The reference run: 4 steps, a checkpoint at step 2 and the final one at step 4."""
    out = tmp_path_factory.mktemp("uninterrupted")
    train(config_from_dict(run_config(out)))
    return out


def assert_same_final_weights(expected: Path, got: Path, step: int = 4) -> None:
    a = load_checkpoint(expected / "checkpoints" / f"step_{step:08d}")
    b = load_checkpoint(got / "checkpoints" / f"step_{step:08d}")
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part


def fail_fsync_under(monkeypatch, fragment: str, code: int) -> None:
    """``os.fsync`` fails with ``code`` for files whose path contains ``fragment`` (the disk fills
    or turns read-only as a checkpoint is flushed)."""
    real = os.fsync

    def fsync(fd):
        if fragment in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(code, os.strerror(code))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to tell which file is flushed")
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS], ids=["disk-full", "read-only"])
def test_checkpoint_disk_fault_keeps_the_last_one_and_resume_is_bit_exact(
    code, uninterrupted, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    config = config_from_dict(run_config(out))
    fail_fsync_under(monkeypatch, "step_00000004.tmp", code)
    with pytest.raises(OutputError) as info:
        train(config)
    message = str(info.value)
    assert info.value.errno == code
    assert (
        f"cannot write the step 4 checkpoint in {out / 'checkpoints'}: {os.strerror(code).lower()}" in message
    )
    assert re.search(r"a checkpoint needs about [\d.]+ [KM]iB, [\d.]+ [KMGT]iB free", message), message
    assert f"the last good checkpoint, {out / 'checkpoints' / 'step_00000002'}, is intact" in message
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000002"]  # no .tmp left
    load_checkpoint(out / "checkpoints" / "step_00000002")  # verifies every checksum
    monkeypatch.undo()  # space is back
    train(config, resume=True)
    assert_same_final_weights(uninterrupted, out)


def test_metrics_write_on_a_read_only_folder_stops_with_one_line(
    uninterrupted, tmp_path, monkeypatch, capsys
):
    """The folder turns read-only at step 3's metrics line: exit 1, one line naming the file
    and the last good checkpoint; the metrics written so far are whole lines; --resume is exact."""
    out = tmp_path / "run"
    config_path = Path(training_config(tmp_path, yaml.safe_dump(run_config(out))))
    real_replace = os.replace
    lines_before = []

    def replace(src, dst):
        if (
            str(dst).endswith("metrics.jsonl")
            and Path(dst).is_file()
            and len(Path(dst).read_text().splitlines()) == 2
        ):
            lines_before.append(Path(dst).read_text())
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    code, stderr = run_cli(["train", str(config_path)], capsys)
    assert code == 1
    assert_one_line(stderr, r"training stopped: cannot write .*metrics.jsonl: read-only file system; the last good "
                            r"checkpoint, .*step_00000002, is intact: .* continue with --resume")  # fmt: skip
    assert (out / "metrics.jsonl").read_text() == lines_before[0]  # two whole lines, untouched
    assert not list(out.glob(".metrics*"))
    monkeypatch.setattr(os, "replace", real_replace)
    assert run_cli(["train", str(config_path), "--resume"], capsys)[0] == 0
    assert_same_final_weights(uninterrupted, out)


def test_training_on_a_real_full_tmpfs_resumes_bit_exact_once_space_is_back(uninterrupted, tmp_path, capsys):
    """A tmpfs with room for one checkpoint and a half: the step-4 checkpoint (written before the
    step-2 one is deleted) does not fit. Then the tmpfs is grown and the run resumed."""
    checkpoint_bytes = sum(
        p.stat().st_size for p in (uninterrupted / "checkpoints" / "step_00000004").iterdir()
    )
    size_kib = int(checkpoint_bytes * 1.5 / 1024) + 64
    with tmpfs(tmp_path / "disk", f"size={size_kib}k") as disk:
        out = disk / "run"
        config_path = Path(training_config(tmp_path, yaml.safe_dump(run_config(out))))
        code, stderr = run_cli(["train", str(config_path)], capsys)
        assert code == 1, stderr
        assert_one_line(stderr, r"cannot write the step 4 checkpoint in .*run/checkpoints: no space left on device "
                                r"\(a checkpoint needs about [\d.]+ [KM]iB, [\d.]+ [KM]iB free\)")  # fmt: skip
        assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000002"]
        subprocess.run(["mount", "-o", f"remount,size={4 * size_kib}k", str(disk)], check=True)
        assert run_cli(["train", str(config_path), "--resume"], capsys)[0] == 0
        assert_same_final_weights(uninterrupted, out)


def test_a_run_stopped_by_non_finite_losses_is_one_line(tmp_path, capsys):
    config = run_config(tmp_path / "run", max_steps=6)
    config["optim"] |= {"lr": 1e30, "warmup_steps": 0, "max_bad_steps": 1, "grad_clip": 1e30}
    code, stderr = run_cli(["train", training_config(tmp_path, yaml.safe_dump(config))], capsys)
    assert code == 1, stderr
    assert_one_line(stderr, r"1 consecutive steps had a non-finite loss or gradient .* Last good checkpoint")


def test_config_validation_is_generic_over_the_dataclass_fields(tmp_path):
    """Any float field refuses non-finite values and any nested section a list, by its key."""
    for key, value in (
        ("optim.grad_clip", float("inf")),
        ("optim.ema_decay", float("nan")),
        ("data.fps", float("inf")),
    ):
        section, name = key.split(".")
        with pytest.raises(ValueError, match=f"config key {key} must be a finite number"):
            config_from_dict({section: {name: value}})
    for section in ("model", "data", "optim"):
        with pytest.raises(ValueError, match=f"config key {section} must be a mapping"):
            config_from_dict({section: [1, 2]})
    (tmp_path / "folder.yaml").mkdir()
    with pytest.raises(ValueError, match="folder.yaml is a folder, not a YAML file"):
        load_config(tmp_path / "folder.yaml")


# ---------------------------------------------------------------------------------------------
# The web page's request handlers (plain Python; Gradio not needed).
# ---------------------------------------------------------------------------------------------


class RefusingPipe:
    """Stands in for the pipeline's refusal of a value (what ``LumierePipeline`` raises)."""

    def __init__(self, error: BaseException):
        from types import SimpleNamespace

        self.error = error
        # A conditional STUNet's shape (7 input channels: clip, masked clip, mask), as test_web's stand-in.
        self.stunet = SimpleNamespace(temporal_factor=2, spatial_factor=2, in_channels=7, out_channels=3,
                                      noise_level_embedding=None,
                                      config=SimpleNamespace(unet_config={"sample_size": 16}))  # fmt: skip
        self.ssr = None

    def __call__(self, *args, **kwargs):
        raise self.error


def test_web_refuses_wrong_types_instead_of_converting_them(tmp_path):
    from lumiere.web.app import InputError, Studio

    studio = Studio(RefusingPipe(AssertionError("the pipeline was called")), output_dir=tmp_path)
    settings = studio.settings(2, 1, 1.0, 0)
    for prompt, message in ((5, "The prompt must be text; got a number"), (["a"], "got a list")):
        with pytest.raises(InputError, match=message):
            studio.text_to_video(prompt, None, settings)
    with pytest.raises(InputError, match="The negative prompt must be text"):
        studio.text_to_video(PROMPT, 3, settings)
    for request, message in ((("16", 1, 1.0, 0), "Frames must be a whole number; got text '16'"),
                             ((2, True, 1.0, 0), "Steps must be a whole number; got true/false"),
                             ((2, 1, "5", 0), "Guidance must be a number; got text '5'")):  # fmt: skip
        with pytest.raises(InputError, match=message):
            studio.settings(*request)
    with pytest.raises(InputError, match="must come from the image editor; got text"):
        studio.cinemagraph(PROMPT, None, "a path", settings)


def test_web_errors_are_in_the_page_words(tmp_path):
    from lumiere.errors import InvalidArgument
    from lumiere.pipelines.memory import InsufficientMemoryError
    from lumiere.web.app import InputError, Studio, WebError

    refused = InvalidArgument("num_frames", "must be a positive multiple of 4 for this model", 6)
    studio = Studio(RefusingPipe(refused), output_dir=tmp_path)
    with pytest.raises(
        InputError, match=r"^Frames: must be a positive multiple of 4 for this model \(got 6\)\.$"
    ):
        studio.text_to_video(PROMPT, None, studio.settings(2, 1, 1.0, 0))
    studio = Studio(RefusingPipe(InsufficientMemoryError("needs 9 GiB")), output_dir=tmp_path)
    with pytest.raises(WebError, match="does not have the memory for this request; ask for fewer frames"):
        studio.text_to_video(PROMPT, None, studio.settings(2, 1, 1.0, 0))


def test_web_limits_queued_requests_per_client(tmp_path):
    from lumiere.web.app import Caps, QueueFull, Studio

    studio = Studio(
        RefusingPipe(ValueError()), Caps(max_queued_per_client=2, queue_size=3), output_dir=tmp_path
    )
    with studio.admit("10.0.0.1"), studio.admit("10.0.0.1"):
        with pytest.raises(QueueFull, match="You already have 2 requests in line"), studio.admit("10.0.0.1"):
            pass
        with studio.admit("10.0.0.2"):  # another client still gets in, up to the total
            with pytest.raises(QueueFull, match="The server is busy"), studio.admit("10.0.0.3"):
                pass
    with pytest.raises(RuntimeError), studio.admit("10.0.0.1"):
        raise RuntimeError("a request that fails")
    with studio.admit("10.0.0.1"), studio.admit("10.0.0.1"):  # places are given back, failures included
        pass


def test_web_uploads_are_removed_when_their_request_ends(tmp_path):
    from lumiere.web.app import remove_uploads

    uploads = tmp_path / "gradio" / "abc123"
    uploads.mkdir(parents=True)
    image, layer, mine = uploads / "image.png", uploads / "layer.png", tmp_path / "mine.png"
    for path in (image, layer, mine):
        path.write_bytes(b"png")
    editor = {"background": str(image), "layers": [str(layer)], "composite": None}
    assert remove_uploads((editor, str(mine), 0.5), tmp_path / "gradio") == 2
    assert not image.exists() and not layer.exists() and not uploads.exists()
    assert mine.exists()  # outside the upload folder: never touched
