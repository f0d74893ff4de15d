"""``lumiere eval``: text alignment, temporal consistency and a Frechet distance on moving shapes.

Prompts are drawn from the MovingShapes caption grammar; every generated clip is read back by the
analytic probe (``probe.py``). Reported:

- per-attribute accuracy (background, colour, shape, motion, all), and bouncing (periodic) motion
  on its own;
- temporal consistency of generated and of real clips (the probe's figure);
- Frechet distance (Heusel et al. 2017, Eq. 6) between probe features of generated clips and of
  real MovingShapes clips for the same captions: 0 for identical distributions;
- confusion counts per attribute (what the probe read for each value the prompt asked for), which
  say *how* a model fails: e.g. circles read as squares, or "moving right" read as static;
- per clip, the prompt, what the probe read and the measurements behind it (``clip_readings``), so
  a failure can be traced to a margin: e.g. squares whose fill ratio falls just short of a square's.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import torch
from scipy import linalg

from lumiere.data.shapes import parse_caption, random_caption, render_clip, sample_trajectory
from lumiere.eval.probe import ATTRIBUTES, ProbeResult, probe_clip, score


def draw_prompts(count: int, seed: int) -> list[str]:
    """``count`` captions from the grammar, a pure function of ``seed``."""
    rng = np.random.default_rng(seed)
    return [random_caption(rng)[0] for _ in range(count)]


def probe_features(reading: ProbeResult) -> np.ndarray:
    """A fixed-length description of a clip from its probe reading: ``[16]``.

    Colours of background and object, shape cues, mean position, net motion, area and its trend,
    temporal consistency and colour drift.
    """
    centroids = np.nan_to_num(reading.centroids, nan=0.5)
    areas = np.nan_to_num(reading.areas, nan=0.0)
    log_area = np.log(np.maximum(areas, 1e-4))
    return np.concatenate(
        [
            reading.background_rgb,
            reading.object_rgb,
            [
                np.nan_to_num(reading.fill_ratio),
                np.nan_to_num(reading.triangle_offset),
                centroids[:, 0].mean(),
                centroids[:, 1].mean(),
                centroids[-1, 0] - centroids[0, 0],
                centroids[-1, 1] - centroids[0, 1],
                areas.mean(),
                log_area[-1] - log_area[0],
                reading.temporal_consistency,
                reading.colour_drift,
            ],
        ]
    ).astype(np.float64)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets ``a [n, d]`` and ``b [m, d]``."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two feature sets [n>=2, d] of equal d, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():  # near-singular product: regularise (as pytorch-fid does)
        offset = np.eye(len(cov_a)) * 1e-6
        covmean = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))


def real_clips_for(captions: list[str], num_frames: int, resolution: int, seed: int) -> list[np.ndarray]:
    """One real MovingShapes clip ``[f, h, w, 3]`` per caption, showing exactly its attributes."""
    clips = []
    for index, caption in enumerate(captions):
        attributes = parse_caption(caption)
        rng = np.random.default_rng([seed, index])
        cx, cy, size = sample_trajectory(rng, attributes, num_frames, resolution, resolution)
        clips.append(render_clip(attributes, cx, cy, size, resolution, resolution))
    return clips


NO_OBJECT = "no object"  # the confusion entry for clips in which the probe finds no coherent object


def confusion(readings: list[ProbeResult], prompts: list[str]) -> dict[str, dict[str, dict[str, int]]]:
    """Per attribute, {prompted value: {read value: clips}} over the prompts that name it. A clip
    with no coherent object counts under ``NO_OBJECT``."""
    table: dict[str, dict[str, Counter[str]]] = {name: defaultdict(Counter) for name in ATTRIBUTES}
    for reading, prompt in zip(readings, prompts, strict=True):
        for name, wanted in parse_caption(prompt).items():
            if name in table and wanted is not None:
                table[name][wanted][getattr(reading, name) if reading.is_object else NO_OBJECT] += 1
    return {
        name: {w: dict(sorted(r.items())) for w, r in sorted(rows.items())} for name, rows in table.items()
    }


def clip_reading(reading: ProbeResult, prompt: str) -> dict[str, Any]:
    """One clip's line in the report: the prompt, what the probe read, and the figures it read them
    from (fill ratio and triangle offset for the shape; net travel in x and y, as fractions of the
    frame, and log-area growth for the motion)."""
    details = reading.details
    return {
        "prompt": prompt,
        "is_object": bool(reading.is_object),
        "reason": reading.reason,
        "read": reading.attributes(),
        "fill_ratio": round(float(reading.fill_ratio), 4),
        "triangle_offset": round(float(reading.triangle_offset), 4),
        "travel_x": round(float(details["travel_x"]), 4),
        "travel_y": round(float(details["travel_y"]), 4),
        "log_growth": round(float(details["log_growth"]), 4),
    }


def generate_clips(
    pipe,
    prompts: list[str],
    seed: int,
    num_frames: int,
    num_inference_steps: int,
    guidance_scale: float,
    batch_size: int,
    window: int | None = None,
    overlap: int | None = None,
    first_index: int = 0,
) -> list[np.ndarray]:
    """Text-to-video clips ``[f, h, w, 3]`` for ``prompts``, in batches; clip i is seeded by
    (seed, first_index + i) alone, so it depends neither on the batch size nor on how a long
    prompt list is split into runs (``first_index``: the position of ``prompts[0]`` in it).
    ``window``/``overlap``: the base model's temporal MultiDiffusion windows (clips longer than
    it was trained on)."""
    clips: list[np.ndarray] = []
    for first in range(0, len(prompts), batch_size):
        batch = prompts[first : first + batch_size]
        generators = [
            torch.Generator().manual_seed(seed * 100_003 + first_index + first + i) for i in range(len(batch))
        ]
        frames = pipe(
            batch,
            num_frames=num_frames,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generators,
            window=window,
            overlap=overlap,
            upsample=False,  # the base model is measured (the probe and the real clips are at its size)
        ).frames
        clips.extend(frames)
    return clips


def evaluate(
    pipe,
    count: int = 100,
    seed: int = 0,
    num_frames: int = 16,
    num_inference_steps: int = 25,
    guidance_scale: float = 5.0,
    batch_size: int = 8,
    window: int | None = None,
    overlap: int | None = None,
) -> dict[str, Any]:
    """Generate ``count`` clips for grammar prompts and score them. Returns plain JSON data.

    ``window``/``overlap``: generate in temporal windows (MultiDiffusion), to measure clips longer
    than the model's training length."""
    if count < 2:
        raise ValueError(f"count must be >= 2 (a Frechet distance needs two clips), got {count}")
    prompts = draw_prompts(count, seed)
    start = time.perf_counter()
    clips = generate_clips(
        pipe, prompts, seed, num_frames, num_inference_steps, guidance_scale, batch_size, window, overlap
    )
    seconds_per_clip = (time.perf_counter() - start) / count

    readings = [probe_clip(clip) for clip in clips]
    scores = [score(reading, prompt) for reading, prompt in zip(readings, prompts, strict=True)]
    accuracy = {key: float(np.mean([s[key] for s in scores])) for key in ("object", *ATTRIBUTES, "all")}
    bouncing = [
        s["motion"] for s, p in zip(scores, prompts, strict=True) if parse_caption(p)["motion"] == "bouncing"
    ]
    not_bouncing = [
        s["motion"] for s, p in zip(scores, prompts, strict=True) if parse_caption(p)["motion"] != "bouncing"
    ]

    resolution = clips[0].shape[1]
    real = real_clips_for(prompts, num_frames, resolution, seed + 1)
    real_readings = [probe_clip(clip) for clip in real]
    fd = frechet_distance(
        np.stack([probe_features(r) for r in readings]), np.stack([probe_features(r) for r in real_readings])
    )
    return {
        "count": count,
        "seed": seed,
        "num_frames": num_frames,
        "window": window,
        "overlap": overlap,
        "resolution": int(resolution),
        "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale,
        "accuracy": accuracy,
        "motion_accuracy_bouncing": float(np.mean(bouncing)) if bouncing else None,
        "motion_accuracy_other": float(np.mean(not_bouncing)) if not_bouncing else None,
        "bouncing_clips": len(bouncing),
        "temporal_consistency": {
            "generated": float(np.mean([r.temporal_consistency for r in readings])),
            "real": float(np.mean([r.temporal_consistency for r in real_readings])),
        },
        "frechet_probe_distance": fd,
        "confusion": confusion(readings, prompts),
        "seconds_per_clip": seconds_per_clip,
        "clip_readings": [clip_reading(r, p) for r, p in zip(readings, prompts, strict=True)],
    }
