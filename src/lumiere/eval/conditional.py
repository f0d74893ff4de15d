"""``lumiere eval --task``: the guarantees of conditional generation (Sec. 4), measured on moving shapes.

For prompts from the caption grammar, a real MovingShapes clip showing exactly the prompt is the
input; the model's output is read back with the probe (``probe.py``). Known pixels are measured
*without* pasting (``keep_known=False``), so the figures are the model's own:

    i2v          image = the real clip's first frame. PSNR of the generated first frame against
                 it; probe accuracy of the clip (does it move as the prompt says).
    inpaint      video = the real clip, mask = a random box (the same in every frame). PSNR of the
                 region outside the mask; probe accuracy of the clip with the known region pasted.
    cinemagraph  image = the first frame, mask = the region the object sweeps in the real clip.
                 PSNR of every frame against the image outside the mask; the mean frame-to-frame
                 change inside it (it should move) and outside it.
    sdedit       video = the real clip; the mean absolute distance of the output to it for each
                 strength (it should grow with strength), and probe accuracy per strength.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from lumiere.eval.evaluate import draw_prompts, real_clips_for
from lumiere.eval.probe import ATTRIBUTES, probe_clip, score
from lumiere.models.conditional import motion_region
from lumiere.stages.conditional import random_box_mask

TASKS = ("i2v", "inpaint", "cinemagraph", "sdedit")
SDEDIT_STRENGTHS = (0.2, 0.4, 0.6, 0.8, 1.0)
PSNR_TARGET = 30.0  # dB, issue 6's bar for reproduced pixels


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two arrays in [0, 1] (inf when equal)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(1 / mse))


def _summary(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    finite = np.minimum(array, 100.0)  # inf (exact) counts as 100 dB in the mean
    return {
        "mean": float(finite.mean()),
        "min": float(finite.min()),
        f"share_at_least_{PSNR_TARGET:g}": float((array >= PSNR_TARGET).mean()),
    }


def _accuracy(clips: list[np.ndarray], prompts: list[str]) -> dict[str, float]:
    scores = [score(probe_clip(clip), prompt) for clip, prompt in zip(clips, prompts, strict=True)]
    return {key: float(np.mean([s[key] for s in scores])) for key in ("object", *ATTRIBUTES, "all")}


# The sampling keywords (count, seed, num_frames, num_inference_steps, guidance_scale) repeat those
# of lumiere.eval.evaluate.evaluate on purpose (a duplicates pair): the CLI passes every evaluation one
# shared set of them, and flat keywords keep each entry point callable on its own.
def evaluate_conditional(
    pipe,
    task: str,
    count: int = 100,
    seed: int = 0,
    num_frames: int = 16,
    num_inference_steps: int = 25,
    guidance_scale: float = 5.0,
) -> dict[str, Any]:
    """Run ``task`` (one of ``TASKS``) on ``count`` grammar prompts; return plain JSON data."""
    if task not in TASKS:
        raise ValueError(f"task={task!r}: choose one of {', '.join(TASKS)}")
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    prompts = draw_prompts(count, seed)
    height, width = (int(s) for s in _size(pipe))
    if height != width:
        raise ValueError(f"the moving-shapes evaluation needs a square model, got {height}x{width}")
    real = real_clips_for(prompts, num_frames, height, seed + 1)  # [f, h, w, 3] in [0, 1] each
    rng = np.random.default_rng(seed + 2)
    common = dict(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)
    result: dict[str, Any] = {"task": task, "count": count, "seed": seed, "num_frames": num_frames, **common}
    common["upsample"] = False  # the base model is what is measured, at the size of the given clip
    start = time.perf_counter()

    def generator(i: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed * 100_003 + i)

    if task == "sdedit":
        per_strength = {}
        for strength in SDEDIT_STRENGTHS:
            outputs = [
                pipe(p, video=clip, strength=strength, generator=generator(i), **common).frames[0]
                for i, (p, clip) in enumerate(zip(prompts, real, strict=True))
            ]
            per_strength[str(strength)] = {
                "distance_to_input": float(
                    np.mean([np.abs(o - c).mean() for o, c in zip(outputs, real, strict=True)])
                ),
                "accuracy": _accuracy(outputs, prompts),
            }
        distances = [per_strength[str(s)]["distance_to_input"] for s in SDEDIT_STRENGTHS]
        result["strengths"] = per_strength
        result["distance_grows_with_strength"] = bool(np.all(np.diff(distances) > 0))
    else:
        known_psnr, outputs, inside_change, outside_change = [], [], [], []
        for i, (prompt, clip) in enumerate(zip(prompts, real, strict=True)):
            if task == "i2v":
                frames = pipe(prompt, image=clip[0], num_frames=num_frames, keep_known=False,
                              generator=generator(i), **common).frames[0]  # fmt: skip
                known_psnr.append(psnr(frames[0], clip[0]))
            elif task == "inpaint":
                mask = random_box_mask(
                    height, width, torch.Generator().manual_seed(int(rng.integers(2**31)))
                ).numpy()
                frames = pipe(
                    prompt, video=clip, mask=mask, keep_known=False, generator=generator(i), **common
                ).frames[0]
                kept = mask == 0
                known_psnr.append(psnr(frames[:, kept], clip[:, kept]))
                frames = np.where(kept[None, :, :, None], clip, frames)  # pasted, for the probe
            else:  # cinemagraph
                region = motion_region(torch.from_numpy(clip).permute(3, 0, 1, 2) * 2 - 1).numpy()
                if region.all() or not region.any():
                    continue  # nothing (or everything) to animate: no cinemagraph to make
                frames = pipe(prompt, image=clip[0], mask=region, num_frames=num_frames, keep_known=False,
                              generator=generator(i), **common).frames[0]  # fmt: skip
                still = region == 0
                known_psnr.append(
                    psnr(frames[:, still], np.broadcast_to(clip[0][still], frames[:, still].shape))
                )
                change = np.abs(np.diff(frames, axis=0)).mean(axis=(0, 3))  # [h, w]
                inside_change.append(float(change[~still].mean()))
                outside_change.append(float(change[still].mean()))
            outputs.append(frames)
        label = {"i2v": "first_frame", "inpaint": "unmasked_region", "cinemagraph": "outside_mask"}[task]
        result[f"psnr_{label}_db"] = _summary(known_psnr)
        if task != "cinemagraph":
            result["accuracy"] = _accuracy(outputs, prompts)
        else:
            result["clips"] = len(outputs)
            result["frame_change_inside_mask"] = float(np.mean(inside_change))
            result["frame_change_outside_mask"] = float(np.mean(outside_change))
    result["seconds"] = time.perf_counter() - start
    return result


def _size(pipe) -> tuple[int, int]:
    size = pipe.stunet.config.unet_config.get("sample_size")
    return (size, size) if isinstance(size, int) else tuple(size)
