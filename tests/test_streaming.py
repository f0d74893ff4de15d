"""Streaming clips from tar shards: reader splits, exact resume, buckets, odd files, training."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lumiere.config import config_from_dict
from lumiere.data.shards import write_shards
from lumiere.data.streaming import ShardStream, StreamingClips, decode_window, expand_shards, index_shard
from lumiere.testing.real_clips import pan_zoom_clip, photo, write_real_folder
from lumiere.train import train
from test_shards import odd_folder, write_odd


@pytest.fixture(scope="module")
def real_shards(tmp_path_factory) -> Path:
    """12 real clips in 6 shards: 8 wide (32x48, 12 frames), 4 tall (48x32, 6 frames)."""
    root = tmp_path_factory.mktemp("real")
    write_real_folder(root / "wide", 8, num_frames=12, size=(32, 48), fps=8)
    write_real_folder(root / "tall", 4, num_frames=6, size=(48, 32), fps=8, seed=100)
    manifest = write_shards(root, root / "shards", shard_size_mb=0.007, progress=False)
    assert manifest["clips"] == 12 and len(manifest["shards"]) >= 4
    return root / "shards"


def all_keys(shards: Path) -> set[str]:
    return {f"{Path(p).name}:{e.key}" for p in expand_shards(str(shards)) for e in index_shard(p)}


def test_expand_shards_patterns(real_shards):
    paths = expand_shards(str(real_shards))
    assert len(paths) >= 4 and paths == sorted(paths)
    assert expand_shards(str(real_shards / "shard-{000000..000001}.tar")) == paths[:2]
    assert expand_shards(str(real_shards / "shard-*.tar")) == paths
    with pytest.raises(FileNotFoundError, match="shard-000099"):
        expand_shards(str(real_shards / "shard-000099.tar"))


@pytest.mark.parametrize("shards", ["many", "few"])
def test_two_ranks_two_workers_read_disjoint_clips_covering_the_shards(real_shards, shards):
    path = str(real_shards) if shards == "many" else str(real_shards / "shard-00000[01].tar")
    dataset = StreamingClips(path, batch_size=1, num_frames=4, resolution=16)
    everything = {(s, i) for s in range(len(dataset.shards)) for i in range(len(dataset.entries(s)))}
    for epoch in (0, 1):
        reads = [list(dataset.epoch_refs(epoch, rank, 2, worker, 2)) for rank in (0, 1) for worker in (0, 1)]
        assert sum(len(r) for r in reads) == len(everything)  # disjoint ...
        assert set().union(*map(set, reads)) == everything  # ... and covering
    # Through real DataLoader workers: each rank's stream with 2 workers; the batches of epoch 0.
    seen = []
    for rank in (0, 1):
        dataset = StreamingClips(path, batch_size=1, num_frames=4, resolution=16, shuffle_buffer=4)
        stream = ShardStream(dataset, rank=rank, world=2, num_workers=2)
        for batch in islice(stream, 2 * len(everything)):
            seen += batch["key"] if stream.last_state["epoch"] == 0 else []
    assert len(set(seen)) == len(seen) == len(everything)
    if shards == "many":
        assert set(seen) == all_keys(real_shards)


def test_resume_continues_the_sequence(real_shards):
    def stream(position=None):
        dataset = StreamingClips(
            str(real_shards),
            batch_size=2,
            num_frames=4,
            seed=3,
            shuffle_buffer=3,
            buckets=[(16, 24), (24, 16)],
        )
        return ShardStream(dataset, rank=0, world=1, num_workers=2, position=position)

    whole = stream()
    first = [next(whole) for _ in range(7)]  # an odd count: the next batch is worker 1's
    position = whole.position()
    rest = [next(whole) for _ in range(9)]  # past the end of the first epoch (6 clips per worker)
    assert position["batches"] == 7 and any(s["pending"] for s in position["states"].values())  # in a bucket
    resumed = stream(position)
    again = [next(resumed) for _ in range(9)]
    assert [b["key"] for b in again] == [b["key"] for b in rest]
    for a, b in zip(again, rest, strict=True):
        torch.testing.assert_close(a["video"], b["video"])
    assert len(first) == 7


def test_a_bucketed_batch_has_one_shape(real_shards):
    dataset = StreamingClips(
        str(real_shards), batch_size=2, buckets=[(16, 24), (24, 16)], length_buckets=[4, 8], shuffle_buffer=4
    )
    shapes = set()
    for batch in islice(dataset.reader(0, 1, 0, 1), 12):
        video = batch["video"]
        assert video.shape[0] == 2 and video.dtype == torch.float32
        assert -1 <= float(video.min()) and float(video.max()) <= 1
        shapes.add(tuple(video.shape[1:]))
    # Wide clips (12 frames) fill 8-frame 16x24 batches, tall ones (6 frames) 4-frame 24x16 batches.
    assert shapes == {(3, 8, 16, 24), (3, 4, 24, 16)}


@pytest.fixture(scope="module")
def odd_shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("odd_stream")
    odd_folder(root)
    write_shards(root, root / "shards", progress=False)
    return root / "shards"


@pytest.mark.parametrize("short", ["skip", "loop"])
def test_odd_files_are_decoded_or_skipped_with_a_counted_reason(odd_shards, short):
    dataset = StreamingClips(str(odd_shards), batch_size=1, num_frames=4, resolution=16, short_clips=short)
    batches = []
    for batch in dataset.reader(0, 1, 0, 1):
        if batch["data_state"]["epoch"] > 0:
            break
        batches.append(batch)
    sources = {f"{Path(p).name}:{e.key}": e.meta["source"] for p in dataset.shards for e in index_shard(p)}
    assert len(sources) == 12  # 4 real; audio, vfr, gray, 10-bit, yuv444, rotated, huge, short
    skipped = batches[-1]["data_state"]["skipped"]
    clips = {sources[b["key"][0]]: b["video"][0] for b in batches}
    if short == "skip":
        assert skipped == {"too short": 1} and len(batches) == 11 and "short.mp4" not in clips
    else:
        assert skipped == {} and len(batches) == 12
        loop = clips["short.mp4"]  # 3 frames, then again from the first
        torch.testing.assert_close(loop[:, 3], loop[:, 0])
    for video in clips.values():
        assert video.shape == (3, 4, 16, 16) and torch.isfinite(video).all() and video.std() > 0.05


def test_rotation_is_applied_and_huge_frames_are_downscaled(tmp_path):
    pan = pan_zoom_clip(photo("coffee"), "pan right", 4, (32, 48))
    path = write_odd(tmp_path / "r.mp4", pan, rotation=90, caption=None)
    meta = {"width": 32, "height": 48, "rotation": 90, "fps": 8, "first_time": 0.0}
    frames = decode_window(path.read_bytes(), meta, np.array([0.0, 0.125]), (48, 32))
    assert frames.shape == (2, 48, 32, 3)
    counter = np.abs(frames[0].astype(float) - np.rot90(pan[0], 1)).mean()
    clockwise = np.abs(frames[0].astype(float) - np.rot90(pan[0], -1)).mean()
    assert counter < 10 < clockwise  # the display matrix turns the frames counter-clockwise
    huge = np.asarray(np.broadcast_to(photo("astronaut")[:, :, None], (512, 512, 4, 3))).reshape(512, 2048, 3)
    path = write_odd(tmp_path / "h.mp4", np.stack([huge] * 2), caption=None)
    meta = {"width": 2048, "height": 512, "rotation": 0, "fps": 8, "first_time": 0.0}
    frames = decode_window(path.read_bytes(), meta, np.array([0.0]), (16, 16))
    assert frames.shape == (1, 32, 128, 3)  # twice the crop size, aspect kept: not 512x2048


def test_training_on_shards_of_real_clips_resumes_exactly(real_shards, tmp_path):
    def config(name, stage="t2i", **data):
        return config_from_dict(
            {
                "stage": stage,
                "output_dir": str(tmp_path / name),
                "model": {"preset": "tiny", **data.pop("model", {})},
                "data": {"kind": "shards", "path": str(real_shards), "resolution": 16, "num_frames": 4,
                         "shuffle_buffer": 4, "num_workers": 1, **data},
                "optim": {"batch_size": 2, "max_steps": 4, "warmup_steps": 1, "lr": 1e-3},
                "log_every": 1,
                "checkpoint_every": 100,
                "sample_steps": 1,
                "log_with": ["tensorboard"],
            }
        )  # fmt: skip

    whole = train(config("whole"))
    train(config("parts"), stop_after_steps=2)
    parts = train(config("parts"), resume=True)
    assert whole.step == parts.step == 4
    for name, value in whole.model.state_dict().items():
        torch.testing.assert_close(parts.model.state_dict()[name], value, rtol=0, atol=0, msg=name)
    assert list((tmp_path / "whole" / "logs").glob("events.out.tfevents.*"))  # TensorBoard metrics
    # The video stage: a few steps of a tiny STUNet on the same shards.
    video = train(config("video", stage="stunet", model={"init_from": str(whole.model_dir)}, num_workers=0))
    assert video.step == 4 and np.isfinite(video.final_loss)
    saved = load_file(next((tmp_path / "video" / "model").rglob("*.safetensors")))
    assert all(torch.isfinite(v).all() for v in saved.values())
    # The SSR stage on the same shards, with its validation samples (a streamed first batch).
    ssr = train(config("ssr", stage="ssr", model={"init_from": str(whole.model_dir), "freeze_spatial": False},
                       num_workers=0, resolution=32))  # fmt: skip
    assert ssr.step == 4 and np.isfinite(ssr.final_loss)
    assert (tmp_path / "ssr" / "samples" / "final.mp4").is_file()
