"""VideoFolder: discovery, manifests, fps resampling, crops, resizing, and skipping bad files."""

import json
import logging

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lumiere.data.video_folder import VideoFolder, resample_indices
from lumiere.data.video_io import write_video

LOGGER = "lumiere.data.video_folder"


def counter_clip(num_frames, h=32, w=32):
    """Frame k is flat gray at level 10 + 20k (uint8), so the decoded level tells the frame index."""
    levels = 10 + 20 * np.arange(num_frames, dtype=np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (num_frames, h, w, 3)).copy()


def frame_indices(video):
    """Recover source frame indices from a [3, f, h, w] tensor in [-1, 1] made of counter frames."""
    levels = (video.mean(dim=(0, 2, 3)) + 1) * 127.5
    return [round((level.item() - 10) / 20) for level in levels]


def add_video(folder, name, frames, fps, caption):
    write_video(folder / f"{name}.mp4", frames, fps=fps)
    if caption is not None:
        (folder / f"{name}.txt").write_text(caption + "\n")


@pytest.fixture
def folder(tmp_path):
    for i in range(3):
        add_video(tmp_path, f"clip{i}", counter_clip(12), fps=20, caption=f"caption {i}")
    return tmp_path


def test_item_format_and_captions(folder):
    data = VideoFolder(folder, num_frames=4, resolution=16, fps=20)
    assert len(data) == 3
    item = data[1]
    assert item["video"].shape == (3, 4, 16, 16) and item["video"].dtype == torch.float32
    assert -1 <= item["video"].min() and item["video"].max() <= 1
    assert item["caption"] == "caption 1"


def test_fps_resampling_picks_frames_by_timestamp(folder):
    data = VideoFolder(folder, num_frames=5, resolution=16, fps=10, random_crop=False)
    assert frame_indices(data[0]["video"]) == [0, 2, 4, 6, 8]
    native = VideoFolder(folder, num_frames=5, resolution=16, fps=None, random_crop=False)
    assert frame_indices(native[0]["video"]) == [0, 1, 2, 3, 4]
    # 12 frames at 20 fps last 0.6 s: 6 frames at 10 fps, 7 (duplicates) at 12 fps
    np.testing.assert_array_equal(resample_indices(np.arange(12) / 20, 10, 0.6), [0, 2, 4, 6, 8, 10])
    np.testing.assert_array_equal(resample_indices(np.arange(4) / 10, 20, 0.4), [0, 0, 1, 1, 2, 2, 3, 3])


def test_temporal_crop_is_seeded(folder):
    starts = []
    for epoch in range(8):
        a = VideoFolder(folder, num_frames=3, resolution=16, fps=10, seed=7)
        b = VideoFolder(folder, num_frames=3, resolution=16, fps=10, seed=7)
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        b[2]  # access order must not matter
        indices = frame_indices(a[0]["video"])
        assert indices == frame_indices(b[0]["video"])
        assert np.all(np.diff(indices) == 2)  # consecutive frames at 10 fps
        starts.append(indices[0])
    assert len(set(starts)) > 1  # epochs draw different crops
    assert set(starts) <= {0, 2, 4, 6}


def test_resize_shorter_side_and_centre_crop(tmp_path):
    frames = np.zeros((4, 32, 64, 3), dtype=np.uint8)
    frames[..., 2] = 255  # blue
    frames[:, :, :12, :] = (255, 0, 0)  # a red stripe on the left, outside the centre crop
    frames[:, :, 30:34, :] = (0, 255, 0)  # a green stripe in the middle
    add_video(tmp_path, "wide", frames, fps=8, caption="wide")
    video = VideoFolder(tmp_path, num_frames=4, resolution=16, fps=None)[0]["video"]
    assert video.shape == (3, 4, 16, 16)
    rgb = (video + 1) / 2
    assert rgb[0, :, :, :2].max() < 0.2  # red stripe cropped away
    assert rgb[1, :, :, 7:9].mean() > 0.6  # green stripe stays at the centre
    assert rgb[2, :, :, :4].mean() > 0.8
    tall = VideoFolder(tmp_path, num_frames=2, resolution=(24, 8), fps=None)[0]["video"]
    assert tall.shape == (3, 2, 24, 8)


def test_csv_and_jsonl_manifests(folder):
    (folder / "list.csv").write_text('video,caption\nclip2.mp4,"two, from csv"\nclip0.mp4,zero\n')
    data = VideoFolder(folder / "list.csv", num_frames=2, resolution=8, fps=None)
    assert [data[i]["caption"] for i in range(2)] == ["two, from csv", "zero"]
    lines = [
        json.dumps({"video": "clip1.mp4", "caption": "one"}),
        "",
        json.dumps({"video": "clip0.mp4", "caption": "0"}),
    ]
    (folder / "list.jsonl").write_text("\n".join(lines))
    data = VideoFolder(folder / "list.jsonl", num_frames=2, resolution=8, fps=None)
    assert len(data) == 2 and data[0]["caption"] == "one"
    (folder / "bad.csv").write_text("path,text\nclip0.mp4,zero\n")
    with pytest.raises(ValueError, match="'video' and 'caption'"):
        VideoFolder(folder / "bad.csv")


def test_video_without_caption_is_skipped(folder, caplog):
    add_video(folder, "orphan", counter_clip(12), fps=20, caption=None)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        data = VideoFolder(folder, num_frames=2, resolution=8)
    assert len(data) == 3
    assert "orphan.mp4" in caplog.text


def test_bad_files_are_skipped_with_one_warning_each(folder, caplog):
    (folder / "broken.mp4").write_bytes(b"\x00\x01 this is not a video" * 50)
    (folder / "broken.txt").write_text("broken")
    add_video(folder, "short", counter_clip(3), fps=20, caption="short")
    data = VideoFolder(folder, num_frames=4, resolution=16, fps=20)
    names = [path.name for path, _ in data.entries]
    assert names == ["broken.mp4", "clip0.mp4", "clip1.mp4", "clip2.mp4", "short.mp4"]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(3):
            items = [data[i] for i in range(len(data))]
    assert [item["caption"] for item in items] == [
        "caption 0",
        "caption 0",
        "caption 1",
        "caption 2",
        "caption 0",
    ]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert any("broken.mp4" in w for w in warnings) and any("short.mp4" in w for w in warnings)
    assert data.bad == {0, 4}


def test_all_bad_raises(tmp_path):
    add_video(tmp_path, "short", counter_clip(3), fps=20, caption="short")
    data = VideoFolder(tmp_path, num_frames=8, resolution=16, fps=20)
    with pytest.raises(RuntimeError, match="none of the 1 videos"):
        data[0]


def test_dataloader_batches(folder):
    loader = DataLoader(VideoFolder(folder, num_frames=4, resolution=16, fps=10), batch_size=2)
    batch = next(iter(loader))
    assert batch["video"].shape == (2, 3, 4, 16, 16)
    assert batch["caption"] == ["caption 0", "caption 1"]


def test_bad_arguments(folder, tmp_path):
    with pytest.raises(ValueError, match="num_frames"):
        VideoFolder(folder, num_frames=0)
    with pytest.raises(ValueError, match="fps"):
        VideoFolder(folder, fps=0)
    with pytest.raises(FileNotFoundError):
        VideoFolder(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no captioned videos"):
        VideoFolder(empty)
