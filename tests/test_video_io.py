"""Video file round trips (mp4, webm, gif), grids and tensor <-> frame conversions."""

import logging

import numpy as np
import pytest
import torch

from lumiere.data.video_io import (
    frames_to_tensor,
    make_grid,
    read_video,
    read_video_timed,
    tensor_to_frames,
    to_float,
    to_uint8,
    write_video,
)


def smooth_clip(f=12, h=32, w=48):
    """Slowly varying colour gradients that move over time: float32 [f, h, w, 3] in [0.1, 0.9]."""
    t = np.linspace(0, 1, f)[:, None, None]
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    r = 0.5 + 0.4 * np.sin(2 * np.pi * (x + 0.5 * t))
    g = 0.5 + 0.4 * np.cos(2 * np.pi * y) + 0 * t
    b = 0.1 + 0.8 * (x + y) / 2 + 0 * t
    return np.stack([r, g, b], axis=-1).astype(np.float32)


def psnr(a, b):
    return 10 * np.log10(1.0 / np.mean((to_float(a) - to_float(b)) ** 2))


@pytest.mark.parametrize(("ext", "min_psnr"), [(".mp4", 30), (".webm", 30), (".gif", 27)])
def test_round_trip(tmp_path, ext, min_psnr):
    clip = smooth_clip()
    path = write_video(tmp_path / f"clip{ext}", clip, fps=10)
    frames, fps = read_video(path)
    assert frames.dtype == np.uint8 and frames.shape == clip.shape
    assert psnr(frames, clip) > min_psnr
    assert fps == pytest.approx(10, rel=0.05)  # gif delays are whole centiseconds
    # the clip is not static: a wrong frame order would show
    assert psnr(frames[::-1], clip) < min_psnr


def test_uint8_input_and_fps_fraction(tmp_path):
    clip = to_uint8(smooth_clip())
    path = write_video(tmp_path / "clip.mp4", clip, fps=29.97)
    frames, fps = read_video(path)
    assert psnr(frames, clip) > 30
    assert fps == pytest.approx(29.97, abs=0.01)


def test_timestamps(tmp_path):
    path = write_video(tmp_path / "clip.mp4", smooth_clip(f=10), fps=5)
    frames, times = read_video_timed(path)
    assert len(frames) == 10
    np.testing.assert_allclose(times, np.arange(10) / 5, atol=1e-3)
    first, first_times = read_video_timed(path, until=0.6)
    assert len(first) == 4 and first_times[-1] == pytest.approx(0.6, abs=1e-3)


def test_odd_size_mp4_is_padded_with_warning(tmp_path, caplog):
    clip = smooth_clip(h=31, w=29)
    with caplog.at_level(logging.WARNING, logger="lumiere.data.video_io"):
        write_video(tmp_path / "odd.mp4", clip, fps=8)
    assert "odd" in caplog.text
    frames, _ = read_video(tmp_path / "odd.mp4")
    assert frames.shape == (12, 32, 30, 3)
    assert psnr(frames[:, :31, :29], clip) > 30


def test_odd_size_webm_and_gif_keep_size(tmp_path):
    clip = smooth_clip(h=31, w=29)
    for ext in (".webm", ".gif"):
        frames, _ = read_video(write_video(tmp_path / f"odd{ext}", clip, fps=8))
        assert frames.shape == (12, 31, 29, 3), ext


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="path must end"):
        write_video(tmp_path / "clip.avi", smooth_clip(), fps=8)
    with pytest.raises(ValueError, match=r"\[f, h, w, 3\]"):
        write_video(tmp_path / "clip.mp4", np.zeros((3, 8, 16, 16)), fps=8)
    with pytest.raises(ValueError, match="fps"):
        write_video(tmp_path / "clip.mp4", smooth_clip(), fps=0)
    with pytest.raises(FileNotFoundError):
        read_video(tmp_path / "missing.mp4")


def test_to_uint8():
    frames = np.array([[[[-0.5, 0.0, 0.5], [1.0, 1.5, 0.999]]]], dtype=np.float32)
    np.testing.assert_array_equal(to_uint8(frames), [[[[0, 0, 128], [255, 255, 255]]]])
    already = np.arange(12, dtype=np.uint8).reshape(1, 2, 2, 3)
    assert to_uint8(already) is already


def test_tensor_frame_round_trip():
    video = torch.rand(3, 5, 8, 6) * 2 - 1
    frames = tensor_to_frames(video)
    assert frames.shape == (5, 8, 6, 3)
    # channel c of frame i at (y, x) maps to frames[i, y, x, c]
    assert frames[2, 3, 4, 1] == pytest.approx((video[1, 2, 3, 4].item() + 1) / 2)
    torch.testing.assert_close(frames_to_tensor(frames), video)
    batch = tensor_to_frames(torch.stack([video, -video]))
    assert batch.shape == (2, 5, 8, 6, 3)
    np.testing.assert_allclose(batch[1], 1 - frames, atol=1e-6)
    with pytest.raises(ValueError):
        tensor_to_frames(torch.zeros(4, 5, 8, 6))


def test_make_grid_layout():
    videos = np.stack([np.full((2, 4, 6, 3), i + 1, dtype=np.uint8) for i in range(5)])
    grid = make_grid(videos, nrow=3, padding=1)
    assert grid.shape == (2, 2 * 5 + 1, 3 * 7 + 1, 3)
    assert grid.dtype == np.uint8
    assert (grid[:, 1:5, 1:7] == 1).all()  # first clip, top left
    assert (grid[:, 1:5, 8:14] == 2).all()  # second clip, right of it
    assert (grid[:, 6:10, 1:7] == 4).all()  # fourth clip starts row two
    assert (grid[:, 6:10, 15:21] == 0).all()  # empty sixth slot is padding
    assert (grid[:, 0] == 0).all() and (grid[:, :, 7] == 0).all()
    single = make_grid(videos[:1], nrow=4, padding=0)
    np.testing.assert_array_equal(single, videos[0])
    with pytest.raises(ValueError):
        make_grid(videos[0], nrow=2)
