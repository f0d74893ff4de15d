"""The probe for long clips (issue 33): does the motion hold from the first second to the last?

Lumiere's headline (Bar-Tal et al. 2024, Sec. 1 and 3) is that one pass over the whole clip (80
frames, 5 s at 16 fps) keeps motion globally coherent, periodic motion above all, where keyframes
plus temporal super-resolution, or windows over a short model, drift. This module reads that off a
clip with the analytic probe (``lumiere.eval.probe``), no learned model:

1. the base reading over all frames (background, colour, shape; ``probe_clip``);
2. the object present in every frame: its area, as the probe measures it, at least ``min_area``
   of the frame in each frame (an object that vanishes for one frame is flagged);
3. colour in every second: the nearest named colour of each second's median object colour
   (``SECOND`` frames a second) must be the asked one;
4. the motion over the whole clip, as a sequence of directions: two or more turns of the vertical
   centroid are a bounce (its speed from the bounce period: below ``BOUNCE_PERIOD_SPLIT`` frames
   quick, above slow); otherwise the channel that moves most (horizontal or vertical centroid, or
   log-area) and its runs: one run is a move ("moving right", "growing"), two runs a move and back
   ("moving right and back", "growing then shrinking"), more is read as ``OSCILLATING``;
5. the bounce period's steadiness: the spread (std / mean) of the intervals between turns of the
   same kind (top to top, floor to floor), from the first second to the last;
6. drift between the first and the last second: the distance between their median object colours
   (RGB, [0, 1]) and |log| of the ratio of their median object areas.

Every figure is tested on rendered MovingShapes clips, which must read as their captions, and on
counter-examples (tests/test_long_clips.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lumiere.data.shapes import (
    BOUNCE_PERIOD_SPLIT,
    COLOURS,
    LONG_MOTION_PHRASES,
    LONG_MOTIONS,
    MOTION_PHRASES,
    MOTIONS,
    STATIC,
    VIDEO_TEMPLATES,
    check_long_motions,
    make_caption,
    parse_caption,
    random_attributes,
    random_long_motion,
)
from lumiere.eval.probe import (
    BOUNCE_HYSTERESIS,
    MIN_LOG_GROWTH,
    MIN_TRAVEL,
    ProbeResult,
    _nearest,
    probe_clip,
    turning_points,
)

SECOND = 16  # frames per second of the paper's base clips (80 frames = 5 s at 16 fps)
OSCILLATING = "back and forth"  # three or more runs of a move: no motion of the vocabulary
MIN_AREA = 0.004  # the object is present in a frame whose area is this fraction of it (the probe's min_area)
MAX_PERIOD_SPREAD = 0.2  # std / mean of the bounce intervals above which a bounce is irregular
MAX_COLOUR_DRIFT = 0.15  # RGB distance ([0, 1]) between the first and last second's object colours
MAX_SIZE_DRIFT = float(np.log(1.25))  # |log area ratio| between the first and last second
RUN_SHARE = 0.3  # a run must cover this share of the channel's range (or its threshold) to count
SIZE_CHANGING = ("growing", "shrinking")  # motions whose first and last seconds differ in size by design

# Runs of the dominant channel -> motion. Image y grows downwards: a y run of +1 is "down".
_RUNS_TO_MOTION = {
    ("x", (1,)): "moving right",
    ("x", (-1,)): "moving left",
    ("x", (1, -1)): "moving right and back",
    ("x", (-1, 1)): "moving left and back",
    ("y", (1,)): "moving down",
    ("y", (-1,)): "moving up",
    ("y", (-1, 1)): "moving up and back",
    ("y", (1, -1)): "moving down and back",
    ("size", (1,)): "growing",
    ("size", (-1,)): "shrinking",
    ("size", (1, -1)): "growing then shrinking",
    ("size", (-1, 1)): "shrinking then growing",
}


@dataclass
class LongReading:
    """What the long-clip probe read from one clip of f frames."""

    probe: ProbeResult  # the base reading over all frames
    motion: str  # a motion of MOTIONS or LONG_MOTIONS without speed ("bouncing"), OSCILLATING or STATIC
    speed: str | None  # bounces: "slowly" or "quickly" (from the period); None otherwise
    present: np.ndarray  # [f] bool: the object is there in that frame
    second_colours: list[str]  # nearest named colour of the object in each second (the last may be short)
    bounce_period: float  # mean frames per bounce (NaN: not a bounce)
    period_spread: float  # std / mean of the same-kind turn intervals (NaN: fewer than two of them)
    colour_drift: float  # RGB distance between the median object colours of the first and last second
    size_drift: float  # |log| of the ratio of the median object areas of the last and first second

    @property
    def present_throughout(self) -> bool:
        return bool(self.present.all())

    @property
    def steady(self) -> bool:
        """A bounce with at least two same-kind intervals (four turns) whose spread is at most
        ``MAX_PERIOD_SPREAD``."""
        return bool(np.isfinite(self.period_spread) and self.period_spread <= MAX_PERIOD_SPREAD)


def _seconds(num_frames: int) -> list[slice]:
    """Consecutive windows of SECOND frames (the last may be shorter; one window for short clips)."""
    return [slice(start, min(start + SECOND, num_frames)) for start in range(0, num_frames, SECOND)]


def _refined(y: np.ndarray, turns: list[int]) -> np.ndarray:
    """Sub-frame times of the extremes at ``turns``: the vertex of a parabola through 3 frames."""
    times = []
    for i in turns:
        if 0 < i < len(y) - 1:
            curvature = y[i - 1] - 2 * y[i] + y[i + 1]
            offset = 0.5 * (y[i - 1] - y[i + 1]) / curvature if curvature != 0 else 0.0
            times.append(i + float(np.clip(offset, -0.5, 0.5)))
        else:
            times.append(float(i))
    return np.asarray(times)


def bounce_timing(cy: np.ndarray, turns: list[int]) -> tuple[float, float]:
    """(frames per bounce, spread) from the turns of the vertical centroid ``cy`` [f].

    A bounce is one floor contact to the next, i.e. two turns. The spread is the coefficient of
    variation of the intervals between turns of the same kind (top to top and floor to floor);
    NaN when there are fewer than two such intervals."""
    times = _refined(cy, turns)
    if len(times) < 2:
        return float("nan"), float("nan")
    period = float(2 * np.diff(times).mean())
    same_kind = times[2:] - times[:-2]
    spread = float(same_kind.std() / same_kind.mean()) if len(same_kind) >= 2 else float("nan")
    return period, spread


def read_motion(probe: ProbeResult) -> tuple[str, str | None, float, float]:
    """(motion, speed, bounce period, period spread) of a clip, from the probe's per-frame
    centroids and areas over the whole clip (module docstring, step 4)."""
    cx, cy = probe.centroids[:, 0], probe.centroids[:, 1]
    if len(cy) < 3:
        return STATIC, None, float("nan"), float("nan")
    _, y_turns = turning_points(cy, BOUNCE_HYSTERESIS)
    if len(y_turns) >= 2:
        period, spread = bounce_timing(cy, y_turns)
        return "bouncing", ("quickly" if period < BOUNCE_PERIOD_SPLIT else "slowly"), period, spread
    channels = {
        "x": (cx, MIN_TRAVEL),
        "y": (cy, MIN_TRAVEL),
        "size": (np.log(np.maximum(probe.areas, 1e-6)), MIN_LOG_GROWTH),
    }
    ranges = {name: float(np.ptp(v)) / threshold for name, (v, threshold) in channels.items()}
    dominant = max(ranges, key=ranges.get)
    if ranges[dominant] < 1.0:
        return STATIC, None, float("nan"), float("nan")
    values, threshold = channels[dominant]
    # A run must be a real part of the move: jitter of a third of the range is not a way back.
    directions, _ = turning_points(values, max(threshold, RUN_SHARE * float(np.ptp(values))))
    motion = _RUNS_TO_MOTION.get((dominant, tuple(directions)), OSCILLATING)
    return motion, None, float("nan"), float("nan")


def read_long_clip(clip: np.ndarray | torch.Tensor, min_area: float = MIN_AREA) -> LongReading:
    """Read one clip: numpy [f, h, w, 3] in [0, 1] (or uint8), or tensor [3, f, h, w] in [-1, 1]."""
    probe = probe_clip(clip, min_area=min_area)
    motion, speed, period, spread = read_motion(probe)
    present = probe.areas >= min_area
    colours = probe.frame_colours
    seconds = _seconds(len(present))

    def median_colour(window: slice) -> np.ndarray:
        there = present[window]
        pixels = colours[window][there] if there.any() else colours[window]
        return np.median(pixels, axis=0)

    def median_area(window: slice) -> float:
        return float(np.median(probe.areas[window]))

    first, last = seconds[0], seconds[-1]
    return LongReading(
        probe=probe,
        motion=motion,
        speed=speed,
        present=present,
        second_colours=[_nearest(median_colour(window), COLOURS) for window in seconds],
        bounce_period=period,
        period_spread=spread,
        colour_drift=float(np.linalg.norm(median_colour(last) - median_colour(first))),
        size_drift=float(abs(np.log(max(median_area(last), 1e-6) / max(median_area(first), 1e-6)))),
    )


def wanted_motion(caption: str) -> tuple[str, str | None]:
    """(motion without speed, speed or None) that a caption asks for: "bouncing slowly" ->
    ("bouncing", "slowly")."""
    motion = parse_caption(caption)["motion"]
    for speed in ("slowly", "quickly"):
        if motion == f"bouncing {speed}":
            return "bouncing", speed
    return motion, None


def score_long(clip: np.ndarray | torch.Tensor | LongReading, caption: str) -> dict[str, bool]:
    """Does the whole clip show what the caption says? -> {"object", "present" (every frame),
    each attribute the caption names ("colour": in every second; "motion": over the whole clip,
    speed included), "all"}. Every attribute is False when no coherent object is found."""
    reading = clip if isinstance(clip, LongReading) else read_long_clip(clip)
    wanted = parse_caption(caption)
    ok = reading.probe.is_object
    result = {"object": ok, "present": ok and reading.present_throughout}
    if wanted["background"] is not None:
        result["background"] = ok and reading.probe.background == wanted["background"]
    if wanted["shape"] is not None:
        result["shape"] = ok and reading.probe.shape == wanted["shape"]
    if wanted["colour"] is not None:
        result["colour"] = ok and all(c == wanted["colour"] for c in reading.second_colours)
    motion, speed = wanted_motion(caption)
    result["motion"] = ok and reading.motion == motion and (speed is None or reading.speed == speed)
    result["all"] = all(result.values())
    return result


def draw_long_prompts(
    count: int, seed: int, long_share: float = 0.6, motions: Sequence[str] | None = None
) -> list[str]:
    """``count`` captions for long clips, a pure function of ``seed``: background, shape and colour
    as ``lumiere eval`` draws them, the motion one of LONG_MOTIONS with probability ``long_share``
    (uniform among them), else one of the older MOTIONS. ``motions`` (of MOTIONS and LONG_MOTIONS)
    asks for those motions instead, prompt i for ``motions[i % len(motions)]``: a probe of a few
    words ("bouncing slowly" against "bouncing quickly") on balanced prompts."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    check_long_motions(long_share, None)
    if motions is not None:
        unknown = [m for m in motions if m not in MOTIONS and m not in LONG_MOTIONS]
        if not motions or unknown:
            raise ValueError(
                f"motions must be a non-empty list of {', '.join((*MOTIONS, *LONG_MOTIONS))}; got {list(motions)}"
            )
    rng = np.random.default_rng([seed, 33])
    prompts = []
    for index in range(count):
        attributes = random_attributes(rng)
        if motions is not None:
            attributes["motion"] = motions[index % len(motions)]
        elif rng.random() < long_share:
            attributes["motion"] = random_long_motion(rng)
        template = int(rng.integers(len(VIDEO_TEMPLATES)))
        phrases = LONG_MOTION_PHRASES.get(attributes["motion"]) or MOTION_PHRASES[attributes["motion"]]
        prompts.append(make_caption(attributes, template, int(rng.integers(len(phrases)))))
    return prompts


def _median(values: Sequence[float]) -> float | None:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.median(finite)) if finite else None


def long_clip_metrics(clips: Sequence[np.ndarray | torch.Tensor], captions: Sequence[str]) -> dict[str, Any]:
    """The issue's figures over a set of clips: per-attribute accuracy over the whole clip, the
    share of clips with the object in every frame, bouncing accuracy and steadiness, and drift
    between the first and last second. Plain JSON data, with one line per clip (``clips``)."""
    if len(clips) != len(captions) or len(clips) == 0:
        raise ValueError(
            f"clips and captions must be non-empty and of equal length, got {len(clips)} and {len(captions)}"
        )
    readings = [read_long_clip(clip) for clip in clips]
    lines = [clip_line(r, c, score_long(r, c)) for r, c in zip(readings, captions, strict=True)]
    return summarise_clip_lines(lines)


def summarise_clip_lines(lines: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``long_clip_metrics`` from the clips' lines (``clip_line``) alone: the figures of a run
    made in slices, each slice keeping only its lines (a few hundred bytes a clip, not the clip).
    The figures behind the lines are rounded to 4 decimals, and so are the thresholds' inputs."""
    if not lines:
        raise ValueError("lines must be non-empty")
    captions = [line["prompt"] for line in lines]
    scores = [line["scores"] for line in lines]

    def finite(value: float | None) -> float:
        return float("nan") if value is None else float(value)

    keys = ("object", "present", "background", "shape", "colour", "motion", "all")
    accuracy = {
        k: float(np.mean([s[k] for s in scores if k in s])) for k in keys if any(k in s for s in scores)
    }
    bouncing = [i for i, c in enumerate(captions) if wanted_motion(c)[0] == "bouncing"]
    # Bounces with a speed word: several at a steady period in the truth (3-10 in 80 frames), so
    # their steadiness is measurable; plain "bouncing" is 1.5-2.5 bounces over the clip.
    periodic = [i for i in bouncing if wanted_motion(captions[i])[1] is not None]
    objects = [i for i, line in enumerate(lines) if line["is_object"]]  # drift needs an object
    # Size drift is measured where the asked motion has the same size at both ends.
    sized = [i for i in objects if wanted_motion(captions[i])[0] not in SIZE_CHANGING]
    spread = [finite(line["period_spread"]) for line in lines]
    colour_drift = [finite(line["colour_drift"]) for line in lines]
    size_drift = [finite(line["size_drift"]) for line in lines]

    def share(indices: list[int], ok) -> float | None:
        return float(np.mean([ok(i) for i in indices])) if indices else None

    return {
        "count": len(lines),
        "accuracy": accuracy,
        "bouncing": {
            "clips": len(bouncing),
            "motion_accuracy": share(bouncing, lambda i: scores[i]["motion"]),
            "periodic_clips": len(periodic),
            "periodic_motion_accuracy": share(periodic, lambda i: scores[i]["motion"]),  # speed included
            # steady: read as a bounce whose same-kind intervals vary by at most MAX_PERIOD_SPREAD
            "steady": share(periodic, lambda i: bool(spread[i] <= MAX_PERIOD_SPREAD)),
            "median_period_spread": _median([spread[i] for i in periodic]),
        },
        "drift": {
            "colour_median": _median([colour_drift[i] for i in objects]),
            "colour_flagged": share(objects, lambda i: bool(colour_drift[i] > MAX_COLOUR_DRIFT)),
            "size_median": _median([size_drift[i] for i in sized]),
            "size_flagged": share(sized, lambda i: bool(size_drift[i] > MAX_SIZE_DRIFT)),
        },
        # motion accuracy per asked motion (speed included): where the whole-clip motion fails
        "motion_by_asked": {
            asked: {"clips": len(indices), "motion_accuracy": share(indices, lambda i: scores[i]["motion"])}
            for asked, indices in sorted(_by_asked_motion(captions).items())
        },
        "clips": list(lines),
    }


def _by_asked_motion(captions: Sequence[str]) -> dict[str, list[int]]:
    """Indices of the captions by the motion they ask for, speed included ("bouncing slowly")."""
    groups: dict[str, list[int]] = {}
    for index, caption in enumerate(captions):
        motion, speed = wanted_motion(caption)
        groups.setdefault(motion if speed is None else f"{motion} {speed}", []).append(index)
    return groups


def clip_line(reading: LongReading, caption: str, scores: dict[str, bool]) -> dict[str, Any]:
    """One clip's line in the report: the prompt, what was read and the figures behind it."""

    def rounded(v: float) -> float | None:
        return round(float(v), 4) if np.isfinite(v) else None

    return {
        "prompt": caption,
        "scores": scores,
        "is_object": bool(reading.probe.is_object),
        "reason": reading.probe.reason,
        "motion": reading.motion if reading.speed is None else f"{reading.motion} {reading.speed}",
        "absent_frames": int((~reading.present).sum()),
        "second_colours": reading.second_colours,
        "bounce_period": rounded(reading.bounce_period),
        "period_spread": rounded(reading.period_spread),
        "colour_drift": rounded(reading.colour_drift),
        "size_drift": rounded(reading.size_drift),
    }
