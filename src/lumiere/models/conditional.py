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
    keyframes     every k-th frame, from a random phase   (a cascade's temporal super-resolution:
                  the frames between keyframes, the cascade baseline of issue 33)

The training mixture of these tasks (random masks, task sampling) is the stage's:
``lumiere.stages.conditional``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lumiere.models.stunet import STUNet

MASK_CONDITION_CHANNELS = 4  # pixel models: masked RGB clip C (3) and the known-mask M (1)
TASKS = ("t2v", "i2v", "inpaint", "cinemagraph", "keyframes")
MOTION_THRESHOLD = 0.1  # |frame - first frame| in [-1, 1] units above which a pixel "moves"


@dataclass
class MaskCondition:
    """What the conditional STUNet takes besides the noisy clip (duck-types ``SSRCondition``).

    video: ``[b, c + 1, f, h, w]`` the masked conditioning clip ``C * M`` (c channels: RGB in
        [-1, 1] for a pixel model, latents for a latent one) and the known-mask ``M`` (1 channel,
        0 or 1), concatenated to the noisy clip along channels.
    noise_level: always None (no augmentation level).
    """

    video: torch.Tensor
    noise_level: None = None

    @property
    def known(self) -> torch.Tensor:
        """``[b, 1, f, h, w]`` 1 where the conditioning pixel (or latent) is given."""
        return self.video[:, -1:]

    @property
    def clip(self) -> torch.Tensor:
        """``[b, c, f, h, w]`` the conditioning clip, zero where unknown."""
        return self.video[:, :-1]


def make_mask_condition(clip: torch.Tensor, known: torch.Tensor) -> MaskCondition:
    """Clip ``[b, c, f, h, w]`` (pixels in [-1, 1] or latents) and known-mask ``[b, 1, f, h, w]``
    -> ``MaskCondition``."""
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
    batch, channels, frames, height, width = shape
    return MaskCondition(
        torch.zeros(batch, mask_condition_channels(channels), frames, height, width, device=device, dtype=dtype)
    )


def mask_condition_channels(sample_channels: int) -> int:
    """Extra input channels of a conditional model denoising ``sample_channels``: the masked clip
    (as many channels) and the mask (1). Pixels: 3 + 1 = ``MASK_CONDITION_CHANNELS``; SD latents: 4 + 1."""
    return sample_channels + 1


# ---------------------------------------------------------------------------------------------
# The conditional network
# ---------------------------------------------------------------------------------------------


def is_conditional_stunet(stunet: STUNet) -> bool:
    """Whether ``stunet`` takes the conditioning channels (masked clip and mask; no SSR noise level)."""
    return (
        stunet.in_channels == stunet.out_channels + mask_condition_channels(stunet.out_channels)
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
    stunet.widen_input(mask_condition_channels(stunet.out_channels))
    return stunet


# ---------------------------------------------------------------------------------------------
# Cinemagraph region
# ---------------------------------------------------------------------------------------------


def motion_region(clip: torch.Tensor, dilation: int = 2) -> torch.Tensor:
    """``[3, f, h, w]`` clip in [-1, 1] -> ``[h, w]`` float, 1 where any frame differs from the first
    (the part a cinemagraph animates), grown by ``dilation`` pixels."""
    moving = (clip - clip[:, :1]).abs().amax(dim=(0, 1)) > MOTION_THRESHOLD  # [h, w]
    region = moving.float()[None, None]
    if dilation > 0:
        region = F.max_pool2d(region, 2 * dilation + 1, stride=1, padding=dilation)
    return region[0, 0]
