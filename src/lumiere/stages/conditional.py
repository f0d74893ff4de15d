"""Stage ``conditional``: one STUNet for Lumiere's applications (Bar-Tal et al. 2024, Sec. 4).

The base STUNet is widened to take a masked conditioning clip and its known-mask
(``lumiere.models.conditional``), zero weights on the new channels so it starts as the base model,
and fine-tuned on a mix of text-to-video, image-to-video, inpainting and cinemagraph conditions
(``data.task_mix``), so one model serves all four (Sec. 4.2); a fifth share trains keyframe
in-filling (``keyframes``: a cascade's temporal super-resolution, the baseline of issue 33). This
module holds that training mixture: the random masks and the task draw of each training clip.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from lumiere.models.conditional import (
    TASKS,
    MaskCondition,
    build_conditional_stunet,
    make_mask_condition,
    motion_region,
)
from lumiere.models.stunet import STUNet
from lumiere.stages.video import VideoStage

# Training mixture: text-to-video keeps the largest share so the one shipped model stays a good
# text-to-video model; the paper does not give its mixture.
DEFAULT_TASK_PROBABILITIES: dict[str, float] = {"t2v": 0.4, "i2v": 0.25, "inpaint": 0.2, "cinemagraph": 0.15}


# ---------------------------------------------------------------------------------------------
# Training mixture
# ---------------------------------------------------------------------------------------------


def random_box_mask(height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """``[h, w]`` float, 1 inside one to three random boxes of 1/4 to 3/4 of each side."""
    mask = torch.zeros(height, width)
    for _ in range(int(torch.randint(1, 4, (1,), generator=generator))):
        box_h = int(
            torch.randint(max(1, height // 4), max(2, 3 * height // 4) + 1, (1,), generator=generator)
        )
        box_w = int(torch.randint(max(1, width // 4), max(2, 3 * width // 4) + 1, (1,), generator=generator))
        top = int(torch.randint(0, height - box_h + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - box_w + 1, (1,), generator=generator))
        mask[top : top + box_h, left : left + box_w] = 1
    return mask


def random_blob_mask(height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """``[h, w]`` float, 1 inside smooth random blobs: 4x4 noise, bicubic upsampled, thresholded
    so that 20% to 60% of the frame is covered."""
    coarse = torch.randn(1, 1, 4, 4, generator=generator)
    smooth = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)[0, 0]
    cover = 0.2 + 0.4 * float(torch.rand((), generator=generator))
    threshold = torch.quantile(smooth.flatten(), 1 - cover)
    return (smooth >= threshold).float()


def sample_tasks(
    batch: int, generator: torch.Generator, probabilities: Mapping[str, float] = DEFAULT_TASK_PROBABILITIES
) -> list[str]:
    """One task per clip, drawn from ``probabilities`` (keys from ``TASKS``; normalised)."""
    unknown = sorted(set(probabilities) - set(TASKS))
    if unknown or not probabilities:
        raise ValueError(f"task probabilities name {unknown or 'nothing'}; tasks are {', '.join(TASKS)}")
    names = list(probabilities)
    weights = torch.tensor([float(probabilities[name]) for name in names])
    if (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"task probabilities must be >= 0 with a positive sum, got {dict(probabilities)}")
    picks = torch.multinomial(weights / weights.sum(), batch, replacement=True, generator=generator)
    return [names[int(i)] for i in picks]


def training_condition(
    x0: torch.Tensor,
    generator: torch.Generator,
    probabilities: Mapping[str, float] = DEFAULT_TASK_PROBABILITIES,
    keyframe_step: int = 5,  # task keyframes: every keyframe_step-th frame is known
) -> tuple[MaskCondition, list[str]]:
    """The conditioning of one training batch of clean clips ``x0`` ``[b, 3, f, h, w]`` in [-1, 1]:
    a task per clip (``sample_tasks``), its known-mask, and the conditioning clip. Every draw comes
    from ``generator`` (CPU), so a step's batch is reproducible. Returns (condition, tasks)."""
    if isinstance(keyframe_step, bool) or not isinstance(keyframe_step, int) or keyframe_step < 2:
        raise ValueError(f"keyframe_step must be an integer >= 2, got {keyframe_step!r}")
    batch, _, frames, height, width = x0.shape
    tasks = sample_tasks(batch, generator, probabilities)
    known = torch.zeros(batch, 1, frames, height, width)
    clip = x0.detach().float().cpu().clone()
    for i, task in enumerate(tasks):
        if task == "i2v":
            known[i, :, 0] = 1
        elif task == "inpaint":
            use_box = bool(torch.rand((), generator=generator) < 0.5)
            region = (random_box_mask if use_box else random_blob_mask)(height, width, generator)
            known[i] = 1 - region  # the same region to generate in every frame
        elif task == "cinemagraph":
            region = motion_region(clip[i])
            if region.sum() == 0:  # nothing moves: animate a random box instead
                region = random_box_mask(height, width, generator)
            known[i] = 1 - region
            known[i, :, 0] = 1
            clip[i] = clip[i, :, :1].expand_as(clip[i])  # the image, repeated over time
        elif task == "keyframes":
            # A window of a longer clip: its keyframes may start at any phase (the TSR of a cascade
            # runs over windows of the keyframed clip, bench/long_clip_compare.py).
            phase = int(torch.randint(0, min(keyframe_step, frames), (1,), generator=generator))
            known[i, :, phase::keyframe_step] = 1
    condition = make_mask_condition(clip.to(x0.device, x0.dtype), known.to(x0.device))
    return condition, tasks


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------


class ConditionalStage(VideoStage):
    """The base STUNet widened for (masked clip C, known-mask M), trained on the task mix (Sec. 4)."""

    name = "conditional"
    trains_conv_in = True
    # Not yet: its masks and conditioning clip are drawn on the clean sample, which in latent space
    # would be the latent grid (config check: a latent model.init_from is a ValueError).
    trains_in_latent_space = False
    supports_lora = False

    def adapt(self, model: STUNet) -> STUNet:
        # Widened for (C, M) with zero weights: starts as the base model (Sec. 4).
        return build_conditional_stunet(model)

    def draw_condition(
        self, clean: torch.Tensor, alphas_cumprod: torch.Tensor, generator: torch.Generator | None
    ) -> MaskCondition:
        # 4 shares: the four tasks of Sec. 4 (the draws of configs written before keyframes existed).
        mix = dict(zip(TASKS, self.config.data.task_mix, strict=False))
        return training_condition(clean, generator, mix, self.config.data.keyframe_step)[0]
