"""Analytic probe of moving-shapes clips (docs/design.md section 6).

Reads a clip back into the attributes its caption names, with no learned model:

1. background colour = per-channel median of the border ring over all frames;
2. foreground mask = pixels farther than ``threshold`` (RGB distance, [0, 1] units) from it;
3. object colour = median of the mask pixels farthest from the background (the object's core);
   soft coverage ``alpha`` = projection of each pixel onto the background -> object colour line;
4. per frame, from ``alpha``: area, centroid, and the extents of the row / column profiles;
5. classify background and colour (nearest named sRGB colour), shape (bounding-box fill ratio:
   circle pi/4, square 1, triangle 1/2; and the triangle's centroid sitting below its box centre),
   motion (centroid and log-area trends; reversals of the vertical centroid for bouncing).

``is_object`` is False when there is no coherent object (e.g. noise, a blank clip, an object that
flickers or jumps): then the attribute readings are meaningless and ``score`` counts them wrong.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from lumiere.data.shapes import BACKGROUNDS, COLOURS, STATIC, parse_caption

logger = logging.getLogger(__name__)

ATTRIBUTES = ("background", "shape", "colour", "motion")

# Decision thresholds, tuned with MovingShapes at 32x32 and 64x64 (tests/test_probe.py).
FILL_TRIANGLE = 0.64  # below: triangle (ideal 0.5); circle is pi/4 = 0.785
FILL_SQUARE = 0.88  # above: square (ideal 1.0; a 3x3 median filter takes it to ~0.87-0.9)
TRIANGLE_OFFSET = 0.07  # centroid below the box centre by this fraction of the box height (ideal 1/6)
MIN_TRAVEL = 0.08  # net centroid travel over the clip, fraction of the frame side, to call a translation
MIN_LOG_GROWTH = np.log(1.6)  # net log-area change over the clip to call growing / shrinking
NOISE_FILTER = 0.02  # border noise (see ProbeResult.noise) above which frames are 3x3 median-filtered first
MIN_SPAN_FILL = 0.85  # a solid convex object fills its row and column spans (textured blobs do not)
BOUNCE_HYSTERESIS = 0.05  # vertical move (fraction of height) that counts as a change of direction


@dataclass
class ProbeResult:
    """What the probe read from one clip of f frames."""

    is_object: bool  # a single coherent object was found; if False the readings below are unreliable
    reason: str  # why is_object is False ("" when True)
    background: str  # nearest of BACKGROUNDS to the border colour
    colour: str  # nearest of COLOURS to the object's core colour
    shape: str  # "circle" | "square" | "triangle"
    motion: str  # one of MOTIONS, or STATIC when nothing moves enough
    background_rgb: np.ndarray  # [3] in [0, 1]
    object_rgb: np.ndarray  # [3] in [0, 1]
    centroids: np.ndarray  # [f, 2] (x, y) as fractions of width and height
    areas: np.ndarray  # [f] object area as a fraction of the frame
    fill_ratio: float  # median area / bounding-box area over the larger half of the frames
    triangle_offset: float  # median (centroid - box centre) / box height, downwards positive
    # Temporal consistency: 1 - mean absolute frame-to-frame change (per channel, [0, 1] scale) of
    # the pixels that are background in both frames. 1.0 = perfectly still background.
    temporal_consistency: float
    noise: (
        float  # 75th percentile of |border pixel - its median| ([0, 1]); above NOISE_FILTER, median-filtered
    )
    colour_drift: float  # RMS distance of each frame's mean object colour from their mean ([0, 1] RGB)
    details: dict[str, float] = field(default_factory=dict)  # motion features, for debugging
    # [f, 3] per-frame median colour of the foreground pixels ([0, 1]; the background colour where a
    # frame has none): colour over time, for long clips (lumiere.eval.long_clips)
    frame_colours: np.ndarray | None = None

    def attributes(self) -> dict[str, str]:
        """{background, shape, colour, motion} as read."""
        return {k: getattr(self, k) for k in ATTRIBUTES}


def to_frames(clip: np.ndarray | torch.Tensor) -> np.ndarray:
    """numpy [f, h, w, 3] (float [0, 1] or uint8) or tensor [3, f, h, w] in [-1, 1] -> float32 [f, h, w, 3]."""
    if isinstance(clip, torch.Tensor):
        if clip.ndim != 4 or clip.shape[0] != 3:
            raise ValueError(f"a tensor clip must be [3, f, h, w] in [-1, 1], got shape {tuple(clip.shape)}")
        clip = ((clip.detach().float().cpu() + 1) / 2).permute(1, 2, 3, 0).numpy()
    clip = np.asarray(clip)
    if clip.ndim != 4 or clip.shape[-1] != 3:
        raise ValueError(f"a numpy clip must be [f, h, w, 3], got shape {clip.shape}")
    if clip.dtype == np.uint8:
        return clip.astype(np.float32) / 255
    return np.clip(clip.astype(np.float32), 0.0, 1.0)


def _nearest(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    names = list(palette)
    values = np.asarray([palette[n] for n in names], dtype=np.float32) / 255
    return names[int(np.argmin(np.linalg.norm(values - rgb, axis=1)))]


def _dilate(mask: np.ndarray) -> np.ndarray:
    """3x3 binary dilation of [f, h, w] masks."""
    out = mask.copy()
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    grown = out.copy()
    grown[:, :, 1:] |= out[:, :, :-1]
    grown[:, :, :-1] |= out[:, :, 1:]
    return grown


def _erode(mask: np.ndarray) -> np.ndarray:
    """3x3 binary erosion of [f, h, w] masks (outside the frame counts as set)."""
    out = mask.copy()
    out[:, 1:] &= mask[:, :-1]
    out[:, :-1] &= mask[:, 1:]
    shrunk = out.copy()
    shrunk[:, :, 1:] &= out[:, :, :-1]
    shrunk[:, :, :-1] &= out[:, :, 1:]
    return shrunk


def _median3x3(frames: np.ndarray) -> np.ndarray:
    """3x3 spatial median filter of [f, h, w, 3] frames, edges replicated."""
    f, h, w, _ = frames.shape
    padded = np.pad(frames, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    windows = np.stack([padded[:, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)])
    return np.partition(windows, 4, axis=0)[4]  # [9, f, h, w, 3] -> [f, h, w, 3]


def _span_fill(mask: np.ndarray) -> float:
    """Set pixels / pixels between the first and last set pixel of each row and column ([f, h, w])."""

    def rows(m: np.ndarray) -> float:
        first = np.argmax(m, axis=-1)
        last = m.shape[-1] - 1 - np.argmax(m[..., ::-1], axis=-1)
        span = np.where(m.any(axis=-1), last - first + 1, 0)
        return float(m.sum() / max(span.sum(), 1))

    return min(rows(mask), rows(mask.transpose(0, 2, 1)))


def turning_points(y: np.ndarray, hysteresis: float) -> tuple[list[int], list[int]]:
    """The runs of y [f] that go one way: (their directions, +1 up / -1 down, in order; the frame of
    the extreme at each change of direction). A change counts once y has moved ``hysteresis`` back
    from its extreme, so jitter smaller than that is not a turn."""
    directions: list[int] = []
    turns: list[int] = []
    direction, extreme, at = 0, float(y[0]), 0
    for i, v in enumerate(map(float, y[1:]), start=1):
        if direction == 0:
            if abs(v - y[0]) >= hysteresis:
                direction, extreme, at = (1 if v > y[0] else -1), v, i
                directions.append(direction)
        elif direction * (v - extreme) > 0:
            extreme, at = v, i  # still going the same way
        elif abs(v - extreme) >= hysteresis:
            turns.append(at)
            direction, extreme, at = -direction, v, i
            directions.append(direction)
    return directions, turns


def _reversals(y: np.ndarray, hysteresis: float) -> int:
    """Changes of direction of y, each counted once y has moved ``hysteresis`` back from its extreme."""
    return len(turning_points(y, hysteresis)[1])


def _box_fill(mask: np.ndarray) -> np.ndarray:
    """Fraction of each frame's mask bounding box that the mask covers; [f, h, w] -> [f] (0 if empty)."""
    out = np.zeros(len(mask))
    for i, m in enumerate(mask):
        rows, cols = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
        if len(rows):
            out[i] = m.sum() / ((rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1))
    return out


def _slope(t: np.ndarray, v: np.ndarray) -> float:
    """Least-squares change of v over t in [0, 1] (0 for a single frame)."""
    if len(v) < 2:
        return 0.0
    tc = t - t.mean()
    return float((tc * (v - v.mean())).sum() / (tc * tc).sum())


def probe_clip(
    clip: np.ndarray | torch.Tensor,
    threshold: float = 0.25,  # RGB distance from the background that makes a pixel foreground
    min_area: float = 0.004,  # smallest object, fraction of the frame (4 px at 32x32)
    max_area: float = 0.5,  # largest object, fraction of the frame
) -> ProbeResult:
    """Read background, object colour, shape, motion and consistency from one clip.

    clip: numpy [f, h, w, 3] in [0, 1] (or uint8), or tensor [3, f, h, w] in [-1, 1].
    """
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if not 0 <= min_area < max_area <= 1:
        raise ValueError(f"need 0 <= min_area < max_area <= 1, got min_area={min_area}, max_area={max_area}")
    frames = to_frames(clip)
    f, h, w, _ = frames.shape
    if min(h, w) < 8:
        raise ValueError(f"clip frames must be at least 8x8, got {h}x{w}")

    # 1. Background from the border ring (2 px at 32x32). Pixel noise, measured there, is removed
    # with a 3x3 median filter before reading the object (clean clips are read as they are).
    ring = max(1, round(min(h, w) / 16))
    border = np.ones((h, w), dtype=bool)
    border[ring:-ring, ring:-ring] = False
    border_px = frames[:, border].reshape(-1, 3)  # [f * n, 3]
    # 75th percentile of |deviation|: 1.15 sigma for Gaussian noise, 0.67 sigma where clipping at
    # black or white halves it; robust to the odd object pixel in the ring.
    noise = float(np.percentile(np.abs(border_px - np.median(border_px, axis=0)), 75, axis=0).mean())
    raw = frames
    if noise > NOISE_FILTER:
        frames = _median3x3(frames)
        border_px = frames[:, border].reshape(-1, 3)
    bg = np.median(border_px, axis=0)
    border_agreement = float((np.linalg.norm(border_px - bg, axis=-1) < threshold / 2).mean())

    # 2. Foreground mask.
    distance = np.linalg.norm(frames - bg, axis=-1)  # [f, h, w]
    mask = distance > threshold
    mask_area = mask.mean(axis=(1, 2))  # [f]

    # 3. Object colour from the core pixels, then soft coverage alpha in [0, 1].
    if mask.any():
        far = distance[mask]
        core = mask & (distance >= 0.8 * np.percentile(far, 90))
        fg = np.median(frames[core], axis=0)
        core_spread = float(np.linalg.norm(frames[core] - fg, axis=-1).mean())
    else:
        fg, core_spread = bg.copy(), 0.0
    axis = fg - bg
    contrast = float(np.linalg.norm(axis))
    alpha = np.clip((frames - bg) @ axis / max(contrast**2, 1e-6), 0.0, 1.0)
    alpha = alpha * _dilate(mask)  # ignore faint background noise away from the object

    # 4. Per-frame geometry from alpha.
    xs = (np.arange(w) + 0.5) / w
    ys = (np.arange(h) + 0.5) / h
    area = alpha.sum(axis=(1, 2))  # [f] pixels
    safe = np.maximum(area, 1e-6)
    cx = (alpha.sum(axis=1) * xs).sum(axis=1) / safe
    cy = (alpha.sum(axis=2) * ys).sum(axis=1) / safe
    col_profile = alpha.max(axis=1)  # [f, w]
    row_profile = alpha.max(axis=2)  # [f, h]
    box_w = col_profile.sum(axis=1)
    box_h = row_profile.sum(axis=1)
    box_cy = (row_profile * ys).sum(axis=1) / np.maximum(box_h, 1e-6)
    fill = area / np.maximum(box_w * box_h, 1e-6)
    offset = (cy - box_cy) * h / np.maximum(box_h, 1e-6)

    # Per-frame colour and temporal consistency outside the object.
    per_frame_colour = np.stack([frames[i][mask[i]].mean(axis=0) if mask[i].any() else bg for i in range(f)])
    frame_colours = np.stack(
        [np.median(frames[i][mask[i]], axis=0) if mask[i].any() else bg for i in range(f)]
    )
    drift = np.linalg.norm(per_frame_colour - per_frame_colour.mean(axis=0), axis=1)  # [f]
    colour_drift = float(np.sqrt((drift**2).mean()))
    if f > 1:
        outside = ~_dilate(mask)
        both = outside[1:] & outside[:-1]
        change = np.abs(np.diff(raw, axis=0)).mean(axis=-1)  # [f-1, h, w], noise included
        flicker = float(change[both].mean()) if both.any() else 1.0
    else:
        flicker = 0.0

    # 5a. Is there one coherent object?
    reason = ""
    sized = (mask_area >= min_area) & (mask_area <= max_area)
    hard_box = _box_fill(mask)
    span_fill = _span_fill(_dilate(_erode(mask)))  # opening drops isolated noise pixels
    jumps = np.hypot(np.diff(cx), np.diff(cy)) if f > 1 else np.zeros(0)
    growth = np.abs(np.diff(np.log(safe))) if f > 1 else np.zeros(0)
    if border_agreement < 0.8:
        reason = f"border is not one colour ({border_agreement:.0%} of it near the median)"
    elif sized.mean() < 0.8:
        reason = (
            f"object area outside [{min_area}, {max_area}] of the frame in {1 - sized.mean():.0%} of frames"
        )
    elif np.median(hard_box[sized]) < 0.3:
        reason = f"foreground is scattered (fills {np.median(hard_box[sized]):.0%} of its bounding box)"
    elif span_fill < MIN_SPAN_FILL:
        reason = f"foreground has holes (fills {span_fill:.0%} of its row and column spans)"
    elif core_spread > 0.2:
        reason = f"foreground is not one colour (spread {core_spread:.2f})"
    elif f > 1 and ((jumps > 0.4) | (growth > np.log(2.0))).mean() > 0.2:
        reason = "object jumps or flickers between frames"
    is_object = reason == ""

    # 5b. Shape, from the larger half of the frames (small frames are least reliable).
    big = area >= np.median(area)
    fill_ratio = float(np.median(fill[big]))
    triangle_offset = float(np.median(offset[big]))
    if fill_ratio < FILL_TRIANGLE or triangle_offset > TRIANGLE_OFFSET:
        shape = "triangle"
    elif fill_ratio > FILL_SQUARE:
        shape = "square"
    else:
        shape = "circle"

    # 5c. Motion.
    t = np.linspace(0.0, 1.0, f)
    travel_x, travel_y = _slope(t, cx), _slope(t, cy)
    log_growth = _slope(t, np.log(safe))
    bounces = _reversals(cy, BOUNCE_HYSTERESIS) if f > 2 else 0
    candidates = {
        "moving right" if travel_x > 0 else "moving left": abs(travel_x) / MIN_TRAVEL,
        "moving down" if travel_y > 0 else "moving up": abs(travel_y) / MIN_TRAVEL,
        "growing" if log_growth > 0 else "shrinking": abs(log_growth) / MIN_LOG_GROWTH,
    }
    if bounces >= 2:
        motion = "bouncing"
    else:
        motion = max(candidates, key=candidates.get)
        if candidates[motion] < 1.0:
            motion = STATIC

    return ProbeResult(
        is_object=is_object,
        reason=reason,
        background=_nearest(bg, BACKGROUNDS),
        colour=_nearest(fg, COLOURS),
        shape=shape,
        motion=motion,
        background_rgb=bg,
        object_rgb=fg,
        centroids=np.stack([cx, cy], axis=1),
        areas=area / (h * w),
        fill_ratio=fill_ratio,
        triangle_offset=triangle_offset,
        temporal_consistency=1.0 - flicker,
        noise=noise,
        colour_drift=colour_drift,
        details={
            "travel_x": travel_x,
            "travel_y": travel_y,
            "log_growth": log_growth,
            "bounces": float(bounces),
            "border_agreement": border_agreement,
            "core_spread": core_spread,
            "span_fill": span_fill,
            "contrast": contrast,
        },
        frame_colours=frame_colours,
    )


def score(clip: np.ndarray | torch.Tensor | ProbeResult, caption: str) -> dict[str, bool]:
    """Does the clip show what the caption says? -> {"object", each attribute the caption names, "all"}.

    Every attribute is False when no coherent object is found.
    """
    reading = clip if isinstance(clip, ProbeResult) else probe_clip(clip)
    wanted = parse_caption(caption)
    result = {"object": reading.is_object}
    for name in ATTRIBUTES:
        if wanted[name] is not None:
            result[name] = reading.is_object and getattr(reading, name) == wanted[name]
    result["all"] = all(result.values())
    return result


def alignment_accuracy(
    clips: Sequence[np.ndarray | torch.Tensor], captions: Sequence[str]
) -> dict[str, float]:
    """Fraction of clips whose reading matches its caption, per attribute and for "all"."""
    if len(clips) != len(captions) or len(clips) == 0:
        raise ValueError(
            f"clips and captions must be non-empty and of equal length, got {len(clips)} and {len(captions)}"
        )
    totals: dict[str, list[bool]] = {}
    for clip, caption in zip(clips, captions, strict=True):
        for name, ok in score(clip, caption).items():
            totals.setdefault(name, []).append(ok)
    return {name: float(np.mean(oks)) for name, oks in totals.items()}
