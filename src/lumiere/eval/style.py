"""``lumiere eval --task style``: the effect of weight blending (Sec. 4.1) as alpha goes from 0 to 1.

For each alpha, the STUNet's image-model weights become ``alpha * W_style + (1 - alpha) * W_orig``
(``lumiere.models.blend``) and clips are generated for the same grammar prompts and seeds. The
probe reads each clip's object colour; with the ``complement`` style (hue rotated 180 degrees), a
clip counts as *styled* when that colour is nearer the complement of the prompted colour than the
prompted colour itself. Reported per alpha: the styled share, the mean distance of the object
colour to the prompted and to the complementary colour, and probe accuracy of shape and motion
(what the blend should keep).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lumiere.data.shapes import COLOURS, parse_caption
from lumiere.data.styles import complement_colours
from lumiere.eval.evaluate import draw_prompts, generate_clips
from lumiere.eval.probe import probe_clip, score
from lumiere.models.blend import blend_weights

DEFAULT_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


# The sampling keywords (count, seed, num_frames, num_inference_steps, guidance_scale) repeat those
# of lumiere.eval.evaluate.evaluate on purpose (a duplicates pair): the CLI passes every evaluation one
# shared set of them, and flat keywords keep each entry point callable on its own.
def evaluate_style(
    pipe,
    styled: torch.nn.Module,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    count: int = 32,
    seed: int = 0,
    num_frames: int = 16,
    num_inference_steps: int = 25,
    guidance_scale: float = 5.0,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Generate ``count`` clips per alpha with blended weights; return plain JSON data."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    original = pipe.stunet
    prompts = draw_prompts(count, seed)
    targets = [np.asarray(COLOURS[parse_caption(p)["colour"]], np.float64) / 255 for p in prompts]
    complements = [complement_colours(torch.from_numpy(t)[:, None]).numpy()[:, 0] for t in targets]
    rows = {}
    try:
        for alpha in alphas:
            pipe.stunet = blend_weights(original, styled, alpha)
            clips = generate_clips(
                pipe, prompts, seed, num_frames, num_inference_steps, guidance_scale, batch_size
            )
            readings = [probe_clip(clip) for clip in clips]
            to_prompted = [
                float(np.linalg.norm(r.object_rgb - t)) for r, t in zip(readings, targets, strict=True)
            ]
            to_complement = [
                float(np.linalg.norm(r.object_rgb - c)) for r, c in zip(readings, complements, strict=True)
            ]
            scores = [score(r, p) for r, p in zip(readings, prompts, strict=True)]
            seen = np.isfinite(to_prompted) & np.isfinite(to_complement)  # clips the probe read an object in
            near = np.asarray(to_complement)[seen] < np.asarray(to_prompted)[seen]
            rows[str(alpha)] = {
                "styled_share": float(near.mean()) if seen.any() else None,
                "distance_to_prompted_colour": float(np.asarray(to_prompted)[seen].mean())
                if seen.any()
                else None,
                "distance_to_complement_colour": float(np.asarray(to_complement)[seen].mean())
                if seen.any()
                else None,
                "accuracy": {
                    key: float(np.mean([s[key] for s in scores])) for key in ("object", "shape", "motion")
                },
            }
    finally:
        pipe.stunet = original
    return {
        "task": "style",
        "count": count,
        "seed": seed,
        "num_frames": num_frames,
        "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale,
        "alphas": rows,
    }
