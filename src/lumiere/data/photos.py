"""Clips of real camera material made offline: camera moves across real photographs.

scikit-image bundles real photographs (no download). A virtual camera moves a crop window across
one (a pan in any direction, a zoom in or out, or a still shot) and each frame is the window
resampled with antialiasing: real textures, edges, sensor noise and colour statistics, with a rigid
camera motion (no parallax, no moving objects). What the SSR learns real detail from (data.kind
"photos", issue 31) and what its real-footage benchmark measures (``bench/ssr_real.py``).

The photographs are split in two: ``PHOTOS`` are held out for evaluation (the benchmark and the
tests use them), ``TRAIN_PHOTOS`` are the ones a model may train on. Frames are uint8
``[f, h, w, 3]`` from the rendering functions and float ``[3, f, h, w]`` in [-1, 1] from the dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

# Held out (evaluation): name -> what it shows (for captions).
PHOTOS = {
    "astronaut": "an astronaut portrait",
    "coffee": "a cup of coffee",
    "chelsea": "a cat",
    "rocket": "a rocket on its launch pad",
    "camera": "a man with a camera",  # grayscale: repeated into three channels
    "hubble_deep_field": "galaxies in deep space",
}
# Training only; none is in PHOTOS (scikit-image's "cat" is "chelsea", so it is left out).
TRAIN_PHOTOS = {
    "stereo_motorcycle": "a motorcycle in a workshop",  # the left view of the stereo pair
    "immunohistochemistry": "stained tissue under a microscope",
    "retina": "a retina photographed through the eye",
    "brick": "a brick wall",
    "grass": "a lawn of grass",
    "gravel": "gravel on the ground",
    "moon": "the surface of the moon",
    "coins": "old coins on a table",
    "clock": "a clock on a wall",
    "page": "a printed page",
}
MOTIONS = ("pan left", "pan right", "pan up", "pan down", "zoom in", "zoom out")
# Gaussian sigma (output pixels) of a softened clip: a defocused lens or a compressed video, whose
# frames hold less detail than the sharp photographs; real footage is often that soft.
SOFT_SIGMA = (0.5, 2.0)


@lru_cache(maxsize=32)
def _photo(name: str) -> np.ndarray:
    import skimage.data

    image = getattr(skimage.data, name)()
    image = np.asarray(image[0] if isinstance(image, tuple) else image)  # stereo: the left view
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    image = np.ascontiguousarray(image[..., :3]).astype(np.uint8)
    image.setflags(write=False)  # shared by the cache
    return image


def photo(name: str) -> np.ndarray:
    """The bundled photograph ``name`` (a key of ``PHOTOS`` or ``TRAIN_PHOTOS``) as uint8 [h, w, 3]
    (grayscale repeated into three channels)."""
    if name not in PHOTOS and name not in TRAIN_PHOTOS:
        raise ValueError(f"photo name must be one of {list(PHOTOS) + list(TRAIN_PHOTOS)}, got {name!r}")
    return _photo(name)


def camera_move(
    image: np.ndarray,  # uint8 [H, W, 3]
    num_frames: int,
    size: tuple[int, int],  # (h, w) of the output frames
    centre: tuple[float, float],  # (y, x) of the window's centre at mid-move, in the photo's pixels
    crop: float,  # the window's height, as a share of the photo's usable height (0, 1]
    shift: tuple[float, float],  # (dy, dx) over the whole move, in window heights / widths
    zoom: tuple[float, float],  # window scale at the first and the last frame (1: ``crop``)
) -> np.ndarray:
    """A camera move across a photo -> uint8 [f, h, w, 3]: the window moves and scales linearly;
    each frame is the window resampled to ``size`` (bilinear over an area-prefiltered photo, so a
    frame is about what a camera of that resolution would record)."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    height, width = image.shape[:2]
    out_h, out_w = size
    crop_h = crop * min(height, width * out_h / out_w)
    crop_w = crop_h * out_w / out_h
    # Prefilter: downscale the photo so the smallest window maps to about the output size (area).
    factor = max(1, int(crop_h * min(zoom) / out_h))
    photo_t = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float()  # [1, 3, H, W]
    if factor > 1:
        photo_t = F.avg_pool2d(photo_t, factor, ceil_mode=True)
    scale_h, scale_w = photo_t.shape[2] / height, photo_t.shape[3] / width
    frames = []
    for k in range(num_frames):
        a = k / max(num_frames - 1, 1)  # 0 -> 1 along the move
        scale = zoom[0] + (zoom[1] - zoom[0]) * a
        h, w = crop_h * scale, crop_w * scale
        cy = centre[0] + shift[0] * (a - 0.5) * crop_h
        cx = centre[1] + shift[1] * (a - 0.5) * crop_w
        ys = (cy - h / 2 + (torch.arange(out_h) + 0.5) * h / out_h) * scale_h
        xs = (cx - w / 2 + (torch.arange(out_w) + 0.5) * w / out_w) * scale_w
        # grid_sample wants [-1, 1] coordinates (align_corners=False: pixel edges at +-1).
        gy = ys / photo_t.shape[2] * 2 - 1
        gx = xs / photo_t.shape[3] * 2 - 1
        grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None]  # [1, h, w, 2] (x, y)
        frame = F.grid_sample(photo_t, grid, mode="bilinear", padding_mode="border", align_corners=False)
        frames.append(frame[0].permute(1, 2, 0))  # [3, h, w] -> [h, w, 3]
    return torch.stack(frames).round().clamp(0, 255).to(torch.uint8).numpy()


def pan_zoom_clip(
    image: np.ndarray,  # uint8 [H, W, 3]
    motion: str,  # one of MOTIONS
    num_frames: int = 16,
    size: tuple[int, int] = (64, 64),  # (h, w) of the output frames
    extent: float = 0.25,  # how far the camera moves: a share of the window (pan) or of its scale (zoom)
    seed: int = 0,  # where on the photo the camera looks
) -> np.ndarray:
    """One of the six fixed moves (``MOTIONS``) -> uint8 [f, h, w, 3]: the window (half the photo's
    shorter side) pans by ``extent`` of itself, or zooms by ``extent`` of its scale, linearly."""
    if motion not in MOTIONS:
        raise ValueError(f"motion must be one of {MOTIONS}, got {motion!r}")
    rng = np.random.default_rng(seed)
    height, width = image.shape[:2]
    centre = (rng.uniform(0.4, 0.6) * height, rng.uniform(0.4, 0.6) * width)
    shift = {"pan left": (0.0, -extent), "pan right": (0.0, extent), "pan up": (-extent, 0.0),
             "pan down": (extent, 0.0)}.get(motion, (0.0, 0.0))  # fmt: skip
    zoom = {"zoom in": (1.0, 1.0 - extent), "zoom out": (1.0 - extent, 1.0)}.get(motion, (1.0, 1.0))
    return camera_move(image, num_frames, size, centre, 0.5, shift, zoom)


def caption_for(description: str, motion: str) -> str:
    """"a camera panning left over <description>" (``motion`` one of ``MOTIONS`` or "still")."""
    if motion == "still":
        return f"a still camera over {description}"
    return f"a camera {motion.replace('pan', 'panning').replace('zoom', 'zooming')} over {description}"


# ---------------------------------------------------------------------------------------------
# The training dataset
# ---------------------------------------------------------------------------------------------


class PhotoClips(Dataset):
    """Random camera moves over ``TRAIN_PHOTOS`` (data.kind "photos"); item i depends only on (seed, i).

    Each clip draws a photo, a window size (``crop_range``, a share of the photo's shorter side:
    the scale of its detail), a centre, a pan of random direction and length, a zoom, or a still
    shot, and a horizontal flip; a grayscale photo gets a random colour tint, so the colour
    statistics are not all grey. Items: {"video": float32 [3, f, h, w] in [-1, 1], "caption": str}.
    With ``shapes_fraction`` > 0 that share of the items (every item i with a draw below it) are
    MovingShapes clips instead (``lumiere.data.shapes``), so a model keeps what it knew of them.
    With ``soft_share`` > 0 that share of the photo clips is blurred (``soften``, sigma drawn in
    ``SOFT_SIGMA``), so an SSR learns to add no detail a soft clip does not have.
    """

    def __init__(
        self,
        length: int = 10_000,  # number of items; the generator itself is unbounded
        num_frames: int = 8,  # frames per clip
        resolution: int = 64,  # square side in pixels
        seed: int = 0,  # item i is drawn from numpy default_rng([seed, i])
        photos: Sequence[str] | None = None,  # names in TRAIN_PHOTOS or PHOTOS; None: TRAIN_PHOTOS
        shapes_fraction: float = 0.0,  # share of MovingShapes clips among the items, in [0, 1]
        crop_range: tuple[float, float] = (0.12, 0.9),  # window height over the photo's shorter side
        soft_share: float = 0.0,  # share of the photo clips blurred, in [0, 1]
    ) -> None:
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if not 0.0 <= shapes_fraction <= 1.0:
            raise ValueError(f"shapes_fraction must be in [0, 1], got {shapes_fraction}")
        if not 0.0 <= soft_share <= 1.0:
            raise ValueError(f"soft_share must be in [0, 1], got {soft_share}")
        if not 0.0 < crop_range[0] <= crop_range[1] <= 1.0:
            raise ValueError(f"crop_range must be 0 < low <= high <= 1, got {crop_range}")
        self.photos = tuple(TRAIN_PHOTOS if photos is None else photos)
        if not self.photos:
            raise ValueError("photos must name at least one photograph")
        for name in self.photos:
            photo(name)  # a clear error for an unknown name, before training starts
        self.length, self.num_frames, self.resolution = int(length), int(num_frames), int(resolution)
        self.seed, self.shapes_fraction, self.crop_range = int(seed), float(shapes_fraction), crop_range
        self.soft_share = float(soft_share)
        self._shapes = None
        if shapes_fraction > 0:
            from lumiere.data.shapes import MovingShapes

            self._shapes = MovingShapes(self.length, self.num_frames, self.resolution, seed=self.seed)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -self.length <= index < self.length:
            raise IndexError(f"index must be in [-{self.length}, {self.length - 1}], got {index}")
        index %= self.length
        rng = np.random.default_rng([self.seed, index])
        if self._shapes is not None and rng.uniform() < self.shapes_fraction:
            item = self._shapes[index]
            return {"video": item["video"], "caption": item["caption"]}
        frames, caption = self.render(rng)
        video = torch.from_numpy(frames).float().div(127.5).sub(1)  # [f, h, w, 3] in [-1, 1]
        return {"video": video.permute(3, 0, 1, 2).contiguous(), "caption": caption}

    def render(self, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        """One clip's draws -> (uint8 [f, h, w, 3], caption)."""
        name = self.photos[int(rng.integers(len(self.photos)))]
        image = photo(name)
        height, width = image.shape[:2]
        crop = float(np.exp(rng.uniform(*np.log(self.crop_range))))  # log-uniform: every scale of detail
        kind = rng.choice(["pan", "zoom", "still"], p=[0.6, 0.25, 0.15])
        shift, zoom, motion = (0.0, 0.0), (1.0, 1.0), "still"
        if kind == "pan":
            angle, length = rng.uniform(0, 2 * np.pi), rng.uniform(0.05, 0.5)
            shift = (length * np.sin(angle), length * np.cos(angle))
            motion = ("pan down" if shift[0] > 0 else "pan up") if abs(shift[0]) > abs(shift[1]) else (
                "pan right" if shift[1] > 0 else "pan left")  # fmt: skip
        elif kind == "zoom":
            amount = rng.uniform(0.05, 0.4)
            zoom_in = bool(rng.integers(2))
            zoom, motion = ((1.0, 1.0 - amount), "zoom in") if zoom_in else ((1.0 - amount, 1.0), "zoom out")
        # The centre keeps the whole move inside the photo where it fits (border padding elsewhere).
        crop_h = crop * min(height, width)
        margin_y = min(0.5, (crop_h * (0.5 + abs(shift[0]) / 2)) / height)
        margin_x = min(0.5, (crop_h * (0.5 + abs(shift[1]) / 2)) / width)
        centre = (rng.uniform(margin_y, 1 - margin_y) * height, rng.uniform(margin_x, 1 - margin_x) * width)
        frames = camera_move(image, self.num_frames, (self.resolution, self.resolution), centre, crop, shift, zoom)
        if name in _GRAYSCALE and rng.uniform() < 0.7:  # tint: warm, cool, any hue, at random strength
            tint = rng.uniform(0.55, 1.0, size=3)
            frames = np.round(frames * (tint / tint.max())).astype(np.uint8)
        if rng.integers(2):
            frames = frames[:, :, ::-1]
            motion = {"pan left": "pan right", "pan right": "pan left"}.get(motion, motion)
        # Drawn last and only when asked, so a clip without softening is the one drawn before it existed.
        if self.soft_share > 0 and rng.uniform() < self.soft_share:
            frames = soften(frames, float(rng.uniform(*SOFT_SIGMA)))
        return np.ascontiguousarray(frames), caption_for(TRAIN_PHOTOS.get(name) or PHOTOS[name], motion)


def soften(frames: np.ndarray, sigma: float) -> np.ndarray:
    """Frames uint8 [f, h, w, 3] blurred in space by a Gaussian of ``sigma`` pixels (scipy, reflected
    borders) -> uint8 [f, h, w, 3]; frames are not mixed."""
    from scipy.ndimage import gaussian_filter

    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    soft = gaussian_filter(frames.astype(np.float32), sigma=(0, sigma, sigma, 0), mode="reflect")
    return np.round(soft).clip(0, 255).astype(np.uint8)


_GRAYSCALE = frozenset({"brick", "grass", "gravel", "moon", "coins", "clock", "page", "camera"})
