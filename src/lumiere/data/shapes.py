"""Synthetic moving-shapes clips with captions (docs/design.md section 6).

Every clip shows one solid shape on a solid background, moving in one of seven ways (``MOTIONS``),
or, for long clips (the paper's 80 frames, 5 s at 16 fps), in one of eight motions that need the
whole clip (``LONG_MOTIONS``: bounces at a steady period with a speed word, moves that cross the
frame and return, growth then shrinking). A clip is a pure function of ``(seed, index)``, so the data set is reproducible, needs no storage and is cheap
enough (well under a millisecond per 16x32x32 clip) to feed CPU training directly.

Geometry, in pixel units with pixel centres at ``j + 0.5``: ``size`` is the diameter of a circle,
the side of a square, and base = height of an isosceles triangle pointing up (so its bounding box
fill ratio is 1/2, a circle's pi/4 and a square's 1, which is what the probe in
``lumiere.eval.probe`` reads back). A shape's position is its centroid. Shapes are drawn
anti-aliased from a signed distance: coverage = clip(0.5 - distance, 0, 1).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from lumiere.data.video_io import parse_resolution

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------
# Vocabularies. Colours are pure sRGB values (CSS named colours), 0-255.
# ------------------------------------------------------------------------------------------------

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "gray": (128, 128, 128),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),  # CSS "lime": the sRGB primary
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "purple": (128, 0, 128),
    "cyan": (0, 255, 255),
    "orange": (255, 165, 0),
}
MOTIONS: tuple[str, ...] = (
    "moving left",
    "moving right",
    "moving up",
    "moving down",
    "growing",
    "shrinking",
    "bouncing",
)
STATIC = "static"  # the motion attribute of image-mode samples (single frames)

# Other wordings of each motion, used by caption templates and understood by ``parse_caption``.
MOTION_PHRASES: dict[str, tuple[str, ...]] = {
    "moving left": ("moving left", "moving to the left", "sliding left"),
    "moving right": ("moving right", "moving to the right", "sliding right"),
    "moving up": ("moving up", "moving upwards", "rising"),
    "moving down": ("moving down", "moving downwards", "falling"),
    "growing": ("growing", "getting bigger", "growing larger"),
    "shrinking": ("shrinking", "getting smaller", "shrinking in size"),
    "bouncing": ("bouncing", "bouncing up and down", "hopping up and down"),
}

# Long motions (issue 33): each spans the whole clip, so a model must see all of it to draw it. The
# first phrase is the canonical one. Bounces carry their speed, as a period in frames (at 16 fps:
# quickly = 0.5-0.7 s, slowly = 1.25-1.6 s per bounce).
LONG_MOTIONS: tuple[str, ...] = (
    "moving left and back",
    "moving right and back",
    "moving up and back",
    "moving down and back",
    "growing then shrinking",
    "shrinking then growing",
    "bouncing slowly",
    "bouncing quickly",
)
LONG_MOTION_PHRASES: dict[str, tuple[str, ...]] = {
    "moving left and back": (
        "moving left and back",
        "moving to the left and back",
        "sliding left and back again",
    ),
    "moving right and back": (
        "moving right and back",
        "moving to the right and back",
        "sliding right and back again",
    ),
    "moving up and back": ("moving up and back", "moving upwards and back", "rising and coming back down"),
    "moving down and back": (
        "moving down and back",
        "moving downwards and back",
        "sinking and coming back up",
    ),
    "growing then shrinking": (
        "growing then shrinking",
        "growing and then shrinking",
        "getting bigger then smaller",
    ),
    "shrinking then growing": (
        "shrinking then growing",
        "shrinking and then growing",
        "getting smaller then bigger",
    ),
    "bouncing slowly": ("bouncing slowly", "slowly bouncing", "bouncing up and down slowly"),
    "bouncing quickly": ("bouncing quickly", "quickly bouncing", "bouncing up and down fast"),
}
BOUNCE_PERIOD_QUICK = (8.0, 11.0)  # frames per bounce of "bouncing quickly"
BOUNCE_PERIOD_SLOW = (20.0, 26.0)  # frames per bounce of "bouncing slowly"
BOUNCE_PERIOD_SPLIT = 15.0  # the probe reads a period below this as quick, above as slow

# ``{motion}`` takes one of MOTION_PHRASES; the first template uses the canonical phrase.
VIDEO_TEMPLATES: tuple[str, ...] = (
    "a {colour} {shape} {motion} on a {background} background",
    "{colour} {shape}, {motion}, {background} background",
    "a {colour} {shape} {motion} against a {background} background",
    "a {background} background with a {colour} {shape} {motion}",
    "{background} background, a {colour} {shape} {motion}",
)
IMAGE_TEMPLATES: tuple[str, ...] = (
    "a {colour} {shape} on a {background} background",
    "{colour} {shape}, {background} background",
    "a {colour} {shape} against a {background} background",
    "a {background} background with a {colour} {shape}",
)

# Sizes and travel, as fractions of the shorter frame side. At 32x32 the smallest shape is 8 px.
SIZE_RANGE = (0.25, 0.40)  # shapes that keep their size
GROW_SMALL_RANGE = (0.25, 0.30)  # size at the small end of growing / shrinking
GROW_LARGE_RANGE = (0.50, 0.65)  # size at the large end
IMAGE_SIZE_RANGE = (0.25, 0.60)  # single-frame samples
TRAVEL_RANGE = (0.6, 1.0)  # fraction of the free room a translating shape crosses during the clip
BOUNCE_AMPLITUDE_RANGE = (0.6, 1.0)  # fraction of the free vertical room a bounce spans
BOUNCE_COUNT_RANGE = (1.5, 2.5)  # bounces per clip
MARGIN = 0.06  # minimum gap between a shape's bounding box and the frame edge


def caption_grammar() -> dict[str, Any]:
    """The vocabularies and templates that captions are drawn from (for eval prompt sets)."""
    return {
        "backgrounds": tuple(BACKGROUNDS),
        "shapes": SHAPES,
        "colours": tuple(COLOURS),
        "motions": MOTIONS,
        "motion_phrases": dict(MOTION_PHRASES),
        "long_motions": LONG_MOTIONS,
        "long_motion_phrases": dict(LONG_MOTION_PHRASES),
        "video_templates": VIDEO_TEMPLATES,
        "image_templates": IMAGE_TEMPLATES,
    }


def _check_mode(mode: str) -> None:
    if mode not in ("video", "image"):
        raise ValueError(f"mode must be 'video' or 'image', got {mode!r}")


def check_motion_mix(
    motion_mix: Sequence[float] | None, name: str = "motion_mix"
) -> tuple[float, ...] | None:
    """None, or one share >= 0 per entry of MOTIONS with a positive sum, as floats; ValueError otherwise."""
    if motion_mix is None:
        return None
    shares = tuple(float(w) for w in motion_mix)
    if len(shares) != len(MOTIONS) or min(shares) < 0 or sum(shares) <= 0:
        raise ValueError(
            f"{name} must be None or {len(MOTIONS)} shares >= 0 with a positive sum, one per motion "
            f"{MOTIONS}, got {list(motion_mix)}"
        )
    return shares


def check_long_motions(
    long_share: float, long_mix: Sequence[float] | None, names: tuple[str, str] = ("long_share", "long_mix")
) -> tuple[float, tuple[float, ...] | None]:
    """(share in [0, 1], None or one share >= 0 per entry of LONG_MOTIONS with a positive sum); ValueError
    naming the argument otherwise."""
    share = float(long_share)
    if not 0.0 <= share <= 1.0:
        raise ValueError(
            f"{names[0]} must be in [0, 1] (the share of clips with a long motion), got {long_share}"
        )
    if long_mix is None:
        return share, None
    shares = tuple(float(w) for w in long_mix)
    if len(shares) != len(LONG_MOTIONS) or min(shares) < 0 or sum(shares) <= 0:
        raise ValueError(
            f"{names[1]} must be None or {len(LONG_MOTIONS)} shares >= 0 with a positive sum, one per long "
            f"motion {LONG_MOTIONS}, got {list(long_mix)}"
        )
    return share, shares


def random_long_motion(rng: np.random.Generator, long_mix: Sequence[float] | None = None) -> str:
    """One of LONG_MOTIONS, drawn with the relative shares ``long_mix`` (None: uniform)."""
    if long_mix is None:
        return str(rng.choice(LONG_MOTIONS))
    return str(rng.choice(LONG_MOTIONS, p=np.asarray(long_mix, dtype=np.float64) / sum(long_mix)))


def random_attributes(
    rng: np.random.Generator, mode: str = "video", motion_mix: Sequence[float] | None = None
) -> dict[str, str]:
    """Draw {background, shape, colour, motion} uniformly; motion is ``STATIC`` in image mode.

    ``motion_mix``: relative shares of the MOTIONS in order (None: uniform), e.g. to over-sample the
    motions a model gets wrong in a fine-tuning stage.
    """
    _check_mode(mode)
    shares = check_motion_mix(motion_mix)
    attributes = {
        "background": str(rng.choice(list(BACKGROUNDS))),
        "shape": str(rng.choice(SHAPES)),
        "colour": str(rng.choice(list(COLOURS))),
    }
    if mode != "video":
        motion = STATIC
    elif shares is None:
        motion = str(rng.choice(MOTIONS))  # the data stream of every stage trained so far
    else:
        motion = str(rng.choice(MOTIONS, p=np.asarray(shares) / sum(shares)))
    return {**attributes, "motion": motion}


def make_caption(attributes: dict[str, str], template: int = 0, phrase: int = 0) -> str:
    """Render a caption; ``template`` indexes the templates, ``phrase`` the motion's wordings."""
    motion = attributes.get("motion", STATIC)
    templates = IMAGE_TEMPLATES if motion in (STATIC, None) else VIDEO_TEMPLATES
    if not 0 <= template < len(templates):
        raise ValueError(f"template must be in [0, {len(templates) - 1}], got {template}")
    words = {k: attributes[k] for k in ("background", "shape", "colour")}
    if templates is VIDEO_TEMPLATES:
        if motion not in MOTION_PHRASES and motion not in LONG_MOTION_PHRASES:
            raise ValueError(f"motion must be one of {MOTIONS + LONG_MOTIONS} or {STATIC!r}, got {motion!r}")
        phrases = MOTION_PHRASES.get(motion) or LONG_MOTION_PHRASES[motion]
        if not 0 <= phrase < len(phrases):
            raise ValueError(f"phrase must be in [0, {len(phrases) - 1}], got {phrase}")
        words["motion"] = phrases[phrase]
    return re.sub(r"\ba (?=[aeiou])", "an ", templates[template].format(**words))  # "an orange"


def random_caption(rng: np.random.Generator, mode: str = "video") -> tuple[str, dict[str, str]]:
    """Draw attributes and a caption for them in a random template; returns (caption, attributes)."""
    attributes = random_attributes(rng, mode)
    return _caption_from_rng(attributes, rng), attributes


def _caption_from_rng(attributes: dict[str, str], rng: np.random.Generator) -> str:
    templates = IMAGE_TEMPLATES if attributes["motion"] == STATIC else VIDEO_TEMPLATES
    template = int(rng.integers(len(templates)))
    motion = attributes["motion"]
    phrase = 0 if motion == STATIC else int(rng.integers(len(_ALL_PHRASES[motion])))
    return make_caption(attributes, template, phrase)


_ALL_PHRASES = {**MOTION_PHRASES, **LONG_MOTION_PHRASES}
# Longest phrase first, so "moving to the left" (or "moving left and back") is not read as a
# shorter phrase. The sort is stable: the short motions' phrases keep their order.
_PHRASE_TO_MOTION = sorted(((p, m) for m, ps in _ALL_PHRASES.items() for p in ps), key=lambda pm: -len(pm[0]))


def parse_caption(caption: str) -> dict[str, str | None]:
    """Read {background, shape, colour, motion} back from a caption.

    An attribute the caption does not name is None, except motion, which is ``STATIC`` when no
    motion phrase occurs. "grey" is read as "gray".
    """
    text = " " + re.sub(r"[^a-z]+", " ", caption.lower()).replace("grey", "gray") + " "
    found: dict[str, str | None] = {"background": None, "shape": None, "colour": None, "motion": STATIC}
    for name in BACKGROUNDS:
        if f" {name} " in text:
            found["background"] = name
    for name in SHAPES:
        if f" {name} " in text:
            found["shape"] = name
    for name in COLOURS:
        if f" {name} " in text:
            found["colour"] = name
    for phrase, motion in _PHRASE_TO_MOTION:
        if f" {phrase} " in text:
            found["motion"] = motion
            break
    return found


# ------------------------------------------------------------------------------------------------
# Drawing
# ------------------------------------------------------------------------------------------------


def _signed_distance(
    shape: str, xs: np.ndarray, ys: np.ndarray, cx: np.ndarray, cy: np.ndarray, size: np.ndarray
) -> np.ndarray:
    """Signed distance in pixels (negative inside) of pixel centres to a shape.

    xs: [1, 1, w], ys: [1, h, 1]; cx, cy, size: [f, 1, 1] -> [f, h, w].
    """
    dx, dy, half = xs - cx, ys - cy, size / 2
    if shape == "circle":
        return np.sqrt(dx * dx + dy * dy) - half
    if shape == "square":
        qx, qy = np.abs(dx) - half, np.abs(dy) - half
        outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
        return outside + np.minimum(np.maximum(qx, qy), 0)
    if shape == "triangle":
        # Apex at (cx, cy - 2s/3), base from (cx -+ s/2, cy + s/3): the centroid is (cx, cy).
        # Side edges have direction (s/2, s) from the apex; outward unit normal (2, -1)/sqrt(5).
        base = dy - size / 3
        side = (2 * np.abs(dx) - (dy + 2 * size / 3)) / math.sqrt(5.0)
        return np.maximum(base, side)
    raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")


def _extent(shape: str) -> tuple[float, float]:
    """Bounding box of a size-1 shape around its centroid: (above, below) the centroid."""
    return (2 / 3, 1 / 3) if shape == "triangle" else (0.5, 0.5)


def render_clip(
    attributes: dict[str, str],
    cx: np.ndarray,
    cy: np.ndarray,
    size: np.ndarray,
    height: int,
    width: int,
) -> np.ndarray:
    """Draw one shape per frame; cx, cy, size: [f] in pixels -> float32 [f, h, w, 3] in [0, 1]."""
    xs = (np.arange(width, dtype=np.float32) + 0.5)[None, None, :]
    ys = (np.arange(height, dtype=np.float32) + 0.5)[None, :, None]
    col = lambda a: np.asarray(a, dtype=np.float32)[:, None, None]  # noqa: E731  [f] -> [f, 1, 1]
    distance = _signed_distance(attributes["shape"], xs, ys, col(cx), col(cy), col(size))
    alpha = np.clip(0.5 - distance, 0.0, 1.0)[..., None]  # [f, h, w, 1]
    bg = np.asarray(BACKGROUNDS[attributes["background"]], dtype=np.float32) / 255
    fg = np.asarray(COLOURS[attributes["colour"]], dtype=np.float32) / 255
    return (bg + alpha * (fg - bg)).astype(np.float32, copy=False)


def sample_trajectory(
    rng: np.random.Generator, attributes: dict[str, str], num_frames: int, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centroid and size per frame for the attributes' motion -> (cx, cy, size), each [f] in pixels.

    The whole shape stays inside the frame, at least ``MARGIN`` of the shorter side from the edges.
    """
    short = min(height, width)
    margin = MARGIN * short
    above, below = _extent(attributes["shape"])
    t = np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)
    motion = attributes["motion"]

    def free_range(size: float, vertical: bool) -> tuple[float, float]:
        """Interval of centroid positions that keep a shape of this size inside the frame."""
        if vertical:
            return margin + above * size, height - margin - below * size
        return margin + size / 2, width - margin - size / 2

    if motion in LONG_MOTIONS:
        return _long_trajectory(rng, motion, t, short, free_range)

    if motion in ("growing", "shrinking"):
        small = rng.uniform(*GROW_SMALL_RANGE) * short
        large = rng.uniform(*GROW_LARGE_RANGE) * short
        size = small * (large / small) ** t  # geometric: constant relative growth per frame
        if motion == "shrinking":
            size = size[::-1]
        cx = np.full(num_frames, rng.uniform(*free_range(large, False)))
        cy = np.full(num_frames, rng.uniform(*free_range(large, True)))
        return cx, cy, size

    s = rng.uniform(*(IMAGE_SIZE_RANGE if motion == STATIC else SIZE_RANGE)) * short
    size = np.full(num_frames, s)
    (x_lo, x_hi), (y_lo, y_hi) = free_range(s, False), free_range(s, True)
    cx = np.full(num_frames, rng.uniform(x_lo, x_hi))
    cy = np.full(num_frames, rng.uniform(y_lo, y_hi))
    if motion in ("moving left", "moving right", "moving up", "moving down"):
        lo, hi = (x_lo, x_hi) if motion in ("moving left", "moving right") else (y_lo, y_hi)
        travel = rng.uniform(*TRAVEL_RANGE) * (hi - lo)
        start = rng.uniform(lo, hi - travel)
        path = start + travel * t
        if motion in ("moving left", "moving up"):
            path = path[::-1]
        if motion in ("moving left", "moving right"):
            cx = path
        else:
            cy = path
    elif motion == "bouncing":
        # A ball bouncing on a floor: height above the floor is |sin|, one arch per bounce.
        amplitude = rng.uniform(*BOUNCE_AMPLITUDE_RANGE) * (y_hi - y_lo)
        floor = rng.uniform(y_lo + amplitude, y_hi)
        bounces = rng.uniform(*BOUNCE_COUNT_RANGE)
        cy = floor - amplitude * np.abs(np.sin(np.pi * bounces * t + rng.uniform(0, 0.25) * np.pi))
    elif motion != STATIC:
        raise ValueError(f"motion must be one of {MOTIONS} or {STATIC!r}, got {motion!r}")
    return cx, cy, size


def _long_trajectory(
    rng: np.random.Generator,
    motion: str,
    t: np.ndarray,  # [f] clip time in [0, 1]
    short: float,  # the shorter frame side, pixels
    free_range: Any,  # (size, vertical) -> (lo, hi) centroid interval that keeps the shape inside
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cx, cy, size), each [f] in pixels, of one of LONG_MOTIONS: out and back over the clip
    (sin^2 of half a turn: still at both ends, turning at the middle), or bounces of a fixed period
    in frames, as many as the clip holds."""
    num_frames = len(t)
    there_and_back = np.sin(np.pi * t) ** 2  # 0 -> 1 -> 0
    if motion in ("growing then shrinking", "shrinking then growing"):
        small = rng.uniform(*GROW_SMALL_RANGE) * short
        large = rng.uniform(*GROW_LARGE_RANGE) * short
        phase = there_and_back if motion == "growing then shrinking" else 1 - there_and_back
        size = small * (large / small) ** phase
        cx = np.full(num_frames, rng.uniform(*free_range(large, False)))
        cy = np.full(num_frames, rng.uniform(*free_range(large, True)))
        return cx, cy, size
    s = rng.uniform(*SIZE_RANGE) * short
    size = np.full(num_frames, s)
    (x_lo, x_hi), (y_lo, y_hi) = free_range(s, False), free_range(s, True)
    cx = np.full(num_frames, rng.uniform(x_lo, x_hi))
    cy = np.full(num_frames, rng.uniform(y_lo, y_hi))
    if motion.endswith("and back"):
        horizontal = motion in ("moving left and back", "moving right and back")
        lo, hi = (x_lo, x_hi) if horizontal else (y_lo, y_hi)
        travel = rng.uniform(*TRAVEL_RANGE) * (hi - lo)
        start = rng.uniform(lo, hi - travel)
        path = start + travel * there_and_back
        if motion in ("moving left and back", "moving up and back"):
            path = (2 * start + travel) - path  # mirrored: out towards lo, then back
        if horizontal:
            cx = path
        else:
            cy = path
        return cx, cy, size
    # Bouncing at a steady period (frames per bounce), one arch of |sin| per bounce.
    amplitude = rng.uniform(*BOUNCE_AMPLITUDE_RANGE) * (y_hi - y_lo)
    floor = rng.uniform(y_lo + amplitude, y_hi)
    period = rng.uniform(*(BOUNCE_PERIOD_QUICK if motion == "bouncing quickly" else BOUNCE_PERIOD_SLOW))
    frames = np.arange(num_frames, dtype=np.float64)
    cy = floor - amplitude * np.abs(np.sin(np.pi * frames / period + rng.uniform(0, 0.25) * np.pi))
    return cx, cy, size


class MovingShapes(Dataset):
    """Procedural moving-shapes clips; item i depends only on (seed, i).

    Each item is a dict: "video" float32 [3, f, h, w] in [-1, 1] (f = 1 in image mode),
    "caption" str, "attributes" {background, shape, colour, motion} (motion ``STATIC`` for images).
    """

    def __init__(
        self,
        length: int = 10_000,  # number of items; the generator itself is unbounded
        num_frames: int = 16,  # frames per clip (ignored in image mode)
        resolution: int | Sequence[int] = 32,  # int or (h, w)
        seed: int = 0,  # item i is drawn from numpy default_rng([seed, i])
        mode: str = "video",  # "video": moving clips; "image": single frames, captions without motion
        motion_mix: Sequence[float] | None = None,  # shares of MOTIONS in order; None: uniform
        long_share: float = 0.0,  # share of clips with one of LONG_MOTIONS (long clips; 0: none)
        long_mix: Sequence[float] | None = None,  # shares of LONG_MOTIONS in order; None: uniform
        frame_step: int = 1,  # every frame_step-th frame of a num_frames * frame_step clip (keyframes)
        source_frames: int | None = None,  # a random window of num_frames of a clip this long (a TSR's windows)
    ) -> None:
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        _check_mode(mode)
        self.motion_mix = check_motion_mix(motion_mix)
        if self.motion_mix is not None and mode != "video":
            raise ValueError(f"motion_mix applies to mode 'video' only, not {mode!r}")
        self.long_share, self.long_mix = check_long_motions(long_share, long_mix)
        if frame_step < 1:
            raise ValueError(f"frame_step must be >= 1, got {frame_step}")
        self.frame_step = int(frame_step)
        if source_frames is not None and (source_frames < num_frames or frame_step != 1 or mode != "video"):
            raise ValueError(
                f"source_frames must be >= num_frames ({num_frames}), with frame_step 1 and mode 'video'; "
                f"got {source_frames}"
            )
        self.source_frames = None if source_frames is None else int(source_frames)
        if (self.long_share > 0 or self.long_mix is not None) and mode != "video":
            raise ValueError(f"long_share and long_mix apply to mode 'video' only, not {mode!r}")
        self.length = int(length)
        self.num_frames = 1 if mode == "image" else int(num_frames)
        self.height, self.width = parse_resolution(resolution, min_side=8)
        self.seed = int(seed)
        self.mode = mode

    def __len__(self) -> int:
        return self.length

    def sample(self, index: int) -> tuple[np.ndarray, str, dict[str, str]]:
        """Item ``index`` as (frames float32 [f, h, w, 3] in [0, 1], caption, attributes)."""
        if not -self.length <= index < self.length:
            raise IndexError(f"index must be in [-{self.length}, {self.length - 1}], got {index}")
        index %= self.length
        rng = np.random.default_rng([self.seed, index])
        attributes = random_attributes(rng, self.mode, self.motion_mix)
        # No draw at all when long_share is 0: the data streams of the 16-frame stages are unchanged.
        if self.long_share > 0 and rng.random() < self.long_share:
            attributes["motion"] = random_long_motion(rng, self.long_mix)
        caption = _caption_from_rng(attributes, rng)
        # frame_step > 1: the keyframes of a longer clip (a keyframe model of a cascade, issue 33).
        span = self.source_frames or self.num_frames * self.frame_step
        cx, cy, size = sample_trajectory(rng, attributes, span, self.height, self.width)
        if self.frame_step > 1:
            cx, cy, size = cx[:: self.frame_step], cy[:: self.frame_step], size[:: self.frame_step]
        if self.source_frames is not None:  # a window of the longer clip (drawn only then: other streams unchanged)
            start = int(rng.integers(0, self.source_frames - self.num_frames + 1))
            window = slice(start, start + self.num_frames)
            cx, cy, size = cx[window], cy[window], size[window]
        frames = render_clip(attributes, cx, cy, size, self.height, self.width)
        return frames, caption, attributes

    def __getitem__(self, index: int) -> dict[str, Any]:
        frames, caption, attributes = self.sample(index)
        video = torch.from_numpy(frames).permute(3, 0, 1, 2)  # [f, h, w, 3] -> [3, f, h, w]
        return {"video": video.mul(2).sub(1).contiguous(), "caption": caption, "attributes": attributes}


def write_shapes_dataset(
    out_dir: str | Path,
    count: int,
    num_frames: int = 16,
    resolution: int | Sequence[int] = 32,
    seed: int = 0,
    fps: float = 8.0,
    ext: str = ".mp4",
) -> list[Path]:
    """Write ``count`` clips as ``clip_000000.mp4`` with the caption in ``clip_000000.txt`` beside it.

    This is the ``VideoFolder`` layout. mp4 is H.264 yuv420p, so colours are slightly lossy.
    Returns the video paths.
    """
    from lumiere.data.video_io import write_video

    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = MovingShapes(length=count, num_frames=num_frames, resolution=resolution, seed=seed)
    width = max(6, len(str(count - 1)))
    paths = []
    for i in range(count):
        frames, caption, _ = data.sample(i)
        path = out / f"clip_{i:0{width}d}{ext}"
        write_video(path, frames, fps=fps)
        path.with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")
        paths.append(path)
    logger.info("wrote %d moving-shapes clips to %s", count, out)
    return paths
