"""The conditional STUNet of Lumiere's applications (Bar-Tal et al. 2024, Sec. 4).

One network serves text-to-video, image-to-video, inpainting and cinemagraphs: the base STUNet's
input is widened (``STUNet.widen_input``) from the noisy clip to concat(noisy clip, masked
conditioning clip C, mask M), 3 + 3 + 1 = 7 channels, and fine-tuned with a mix of conditioning
tasks (stage ``conditional``). With zero weights on the new channels it starts out as the base
model, and an all-zero M (nothing known) is plain text-to-video.

Mask convention inside the library: ``known`` is 1 where the conditioning pixel is given and
the output should reproduce it, 0 where the model generates. (The user-facing ``mask`` of the
pipeline marks the region to *generate* or *animate*; it is ``1 - known`` there.)

Tasks (``TASKS``), each a rule for ``known`` on a clip ``[b, 3, f, h, w]``:
    t2v           nothing known                          (text-to-video)
    i2v           the first frame                        (image-to-video, Sec. 4.2)
    inpaint       everything outside random boxes/blobs  (video inpainting, Sec. 4.2)
    cinemagraph   the first frame, and everything outside the region that moves, where C is
                  the first frame repeated over time     (cinemagraphs, Sec. 4.2)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lumiere.models.stunet import STUNet

CONDITION_CHANNELS = 4  # masked RGB clip C (3) and the known-mask M (1)
TASKS = ("t2v", "i2v", "inpaint", "cinemagraph")
# Training mixture: text-to-video keeps the largest share so the one shipped model stays a good
# text-to-video model; the paper does not give its mixture.
DEFAULT_TASK_PROBABILITIES: dict[str, float] = {"t2v": 0.4, "i2v": 0.25, "inpaint": 0.2, "cinemagraph": 0.15}
MOTION_THRESHOLD = 0.1  # |frame - first frame| in [-1, 1] units above which a pixel "moves"


@dataclass
class MaskCondition:
    """What the conditional STUNet takes besides the noisy clip (duck-types ``SSRCondition``).

    video: ``[b, 4, f, h, w]`` the masked conditioning clip ``C * M`` (3 channels, [-1, 1]) and
        the known-mask ``M`` (1 channel, 0 or 1), concatenated to the noisy clip along channels.
    noise_level: always None (no augmentation level).
    """

    video: torch.Tensor
    noise_level: None = None

    @property
    def known(self) -> torch.Tensor:
        """``[b, 1, f, h, w]`` 1 where the conditioning pixel is given."""
        return self.video[:, 3:4]

    @property
    def clip(self) -> torch.Tensor:
        """``[b, 3, f, h, w]`` the conditioning clip, zero where unknown."""
        return self.video[:, :3]


def make_mask_condition(clip: torch.Tensor, known: torch.Tensor) -> MaskCondition:
    """Clip ``[b, 3, f, h, w]`` in [-1, 1] and known-mask ``[b, 1, f, h, w]`` -> ``MaskCondition``."""
    if (
        known.ndim != 5
        or known.shape[1] != 1
        or known.shape[0] != clip.shape[0]
        or known.shape[2:] != clip.shape[2:]
    ):
        raise ValueError(
            f"known-mask has shape {tuple(known.shape)}; expected {(clip.shape[0], 1, *clip.shape[2:])} "
            f"for a clip of shape {tuple(clip.shape)}"
        )
    known = known.to(clip.dtype)
    return MaskCondition(torch.cat([clip * known, known], dim=1))


def empty_condition(shape: tuple[int, int, int, int, int], device=None, dtype=torch.float32) -> MaskCondition:
    """The text-to-video condition (nothing known) for clips of ``shape`` ``[b, c, f, h, w]``."""
    batch, _, frames, height, width = shape
    return MaskCondition(
        torch.zeros(batch, CONDITION_CHANNELS, frames, height, width, device=device, dtype=dtype)
    )


# ---------------------------------------------------------------------------------------------
# The conditional network
# ---------------------------------------------------------------------------------------------


def is_conditional_stunet(stunet: STUNet) -> bool:
    """Whether ``stunet`` takes the 4 conditioning channels (and no SSR noise level)."""
    return (
        stunet.in_channels == stunet.out_channels + CONDITION_CHANNELS
        and stunet.noise_level_embedding is None
    )


def build_conditional_stunet(stunet: STUNet) -> STUNet:
    """Widen a text-to-video STUNet in place to take (C, M): the extra input weights start at zero,
    so the result is the same function as ``stunet`` (Sec. 4). A conditional STUNet is returned as is."""
    if is_conditional_stunet(stunet):
        return stunet
    if stunet.in_channels != stunet.out_channels or stunet.noise_level_embedding is not None:
        raise ValueError(
            f"cannot make a conditional model of a STUNet with {stunet.in_channels} input channels "
            f"for {stunet.out_channels} output channels (an SSR or otherwise widened model); "
            "start from a text-to-video STUNet"
        )
    stunet.widen_input(CONDITION_CHANNELS)
    return stunet


# ---------------------------------------------------------------------------------------------
# Training mixture (stage ``conditional``)
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


def motion_region(clip: torch.Tensor, dilation: int = 2) -> torch.Tensor:
    """``[3, f, h, w]`` clip in [-1, 1] -> ``[h, w]`` float, 1 where any frame differs from the first
    (the part a cinemagraph animates), grown by ``dilation`` pixels."""
    moving = (clip - clip[:, :1]).abs().amax(dim=(0, 1)) > MOTION_THRESHOLD  # [h, w]
    region = moving.float()[None, None]
    if dilation > 0:
        region = F.max_pool2d(region, 2 * dilation + 1, stride=1, padding=dilation)
    return region[0, 0]


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
) -> tuple[MaskCondition, list[str]]:
    """The conditioning of one training batch of clean clips ``x0`` ``[b, 3, f, h, w]`` in [-1, 1]:
    a task per clip (``sample_tasks``), its known-mask, and the conditioning clip. Every draw comes
    from ``generator`` (CPU), so a step's batch is reproducible. Returns (condition, tasks)."""
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
    condition = make_mask_condition(clip.to(x0.device, x0.dtype), known.to(x0.device))
    return condition, tasks
