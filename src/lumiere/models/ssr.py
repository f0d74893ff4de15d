"""The spatial super-resolution (SSR) model and its conditioning input (Lumiere Sec. 3.2).

The SSR network is a STUNet inflated *without* temporal resizing (it sees every frame at every
level, so it can run on windows of any length) and conditioned on the low-resolution clip:

1. the low-res clip ``[b, 3, f, h, w]`` is upsampled to the high-res size (bilinear, or bicubic
   for an SSR trained so: ``UPSAMPLE_MODES``);
2. it is noise-augmented, ``sqrt(a) * x + sqrt(1 - a) * eps`` with ``a = alphas_cumprod[level]``
   of the training noise schedule (conditioning augmentation, Ho et al. 2021, "Cascaded Diffusion
   Models for High Fidelity Image Generation", Sec. 3.2): a level drawn per clip in training, a
   small fixed level at sampling, so the model tolerates the base model's imperfect outputs;
3. it is concatenated to the noisy high-res clip along channels (``STUNet.widen_input(3)``), and
   the level goes to the network as ``noise_level`` (in timestep units, as the timestep itself).

This is the recipe of diffusers' Stable Diffusion x4 upscaler (``noise_level``, default 20 at
sampling, at most 350), with our pixel-space video layout. The training draws (level and noise per
clip) are the stage's: ``lumiere.stages.ssr.training_condition``.

Axis legend:
    b  clips      c  channels      f  frames      h, w  low-res size      H, W  high-res size
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from einops import rearrange

from lumiere.models.stunet import STUNet

SSR_CONDITION_CHANNELS = 3  # the upsampled low-res RGB clip
SAMPLING_NOISE_LEVEL = 20  # augmentation level at sampling (SD x4 upscaler's default); a timestep
UPSAMPLE_MODES = ("bilinear", "bicubic")  # how the low-res clip is upsampled (model.ssr_upsample)


# ---------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------


def build_ssr_stunet(image_model: UNet2DConditionModel, **options: Any) -> STUNet:
    """Inflate an image model into an SSR STUNet: no temporal resizing, noise-level conditioning,
    extra input channels for the upsampled low-res clip, as many as the image model denoises
    (3 for pixels, ``SSR_CONDITION_CHANNELS``; 4 for SD latents), with zero weights, so it starts as
    the image model. ``options`` go to ``STUNet.from_unet2d`` (e.g. ``temporal_attention_layers``)."""
    stunet = STUNet.from_unet2d(
        image_model, temporal_resizing=False, noise_level_conditioning=True, **options
    )
    stunet.widen_input(stunet.out_channels)
    return stunet


def check_ssr_stunet(stunet: STUNet, name: str = "ssr", sample_channels: int | None = None) -> None:
    """Raise ``ValueError`` unless ``stunet`` is an SSR model as ``build_ssr_stunet`` makes it, or
    as an image super-resolution model inflates (IF stage II: the noise level is its class label).
    ``sample_channels``: of the clip it denoises (default: its output channels; half of them for a
    learned-variance model)."""
    problems = []
    sample_channels = stunet.out_channels if sample_channels is None else sample_channels
    if stunet.temporal_factor != 1:
        problems.append(f"it resizes time (temporal factor {stunet.temporal_factor}; an SSR model has 1)")
    if stunet.noise_level_embedding is None and stunet.class_embedding is None:
        problems.append("it has no noise-level conditioning")
    if stunet.in_channels != 2 * sample_channels:
        problems.append(
            f"it takes {stunet.in_channels} input channels for {sample_channels} sample channels "
            f"(an SSR model takes {sample_channels} more: the low-res clip)"
        )
    if problems:
        raise ValueError(
            f"{name} is not an SSR STUNet: {'; '.join(problems)} (build it with build_ssr_stunet)"
        )


# ---------------------------------------------------------------------------------------------
# Resizing
# ---------------------------------------------------------------------------------------------


def downsample_video(video: torch.Tensor, scale: int) -> torch.Tensor:
    """``[b, c, f, H, W] -> [b, c, f, H/scale, W/scale]`` by area averaging (the low-res training input)."""
    height, width = video.shape[-2:]
    if scale < 1 or height % scale or width % scale:
        raise ValueError(f"height={height} and width={width} must be multiples of ssr_scale={scale}")
    frames = rearrange(video, "b c f h w -> (b f) c h w")
    frames = F.avg_pool2d(frames, kernel_size=scale)
    return rearrange(frames, "(b f) c h w -> b c f h w", b=video.shape[0])


def check_upsample_mode(mode: str, name: str = "ssr_upsample") -> str:
    """``mode`` if it is one of ``UPSAMPLE_MODES``, else ``ValueError`` naming ``name``."""
    if mode not in UPSAMPLE_MODES:
        raise ValueError(f"{name}={mode!r}: must be one of {list(UPSAMPLE_MODES)}")
    return mode


def upsample_video(video: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """``[b, c, f, h, w] -> [b, c, f, H, W]``, bilinear or bicubic (``align_corners=False``; bicubic
    is PyTorch's a = -0.75 kernel, and may overshoot the input's range at edges), frame by frame."""
    check_upsample_mode(mode, "mode")
    frames = rearrange(video, "b c f h w -> (b f) c h w")
    frames = F.interpolate(frames, size=size, mode=mode, align_corners=False)
    return rearrange(frames, "(b f) c h w -> b c f h w", b=video.shape[0])


def residual_over_upsample(high_res: torch.Tensor, scale: int, mode: str = "bilinear") -> torch.Tensor:
    """``[b, c, f, H, W]`` -> the clip minus the ``mode`` upsample of its area-downsampled copy.

    What a residual SSR (``model.ssr_residual``) diffuses instead of the high-res clip: the detail
    the interpolation misses. Sampling adds ``upsample_video(low_res, (H, W), mode)`` back, so a
    residual of zero is exactly that interpolation: an SSR over bicubic (``model.ssr_upsample``)
    starts from the better of the two classic upsamplers on real footage (docs/data.md). (Residual
    targets for diffusion super-resolution: Li et al. 2022, "SRDiff", Sec. 3.2; Yue et al. 2023,
    "ResShift".) A deviation from Lumiere, which does not say what its SSR diffuses; off by default.
    """
    low_res = downsample_video(high_res, scale)
    return high_res - upsample_video(low_res, tuple(high_res.shape[-2:]), mode)


# ---------------------------------------------------------------------------------------------
# Conditioning input
# ---------------------------------------------------------------------------------------------


@dataclass
class SSRCondition:
    """What the SSR network takes besides the noisy high-res clip.

    video: ``[b, 3, f, H, W]`` the upsampled, noise-augmented low-res clip (concatenated to the
        noisy clip along channels).
    noise_level: ``[b]`` long, its augmentation level (a timestep of the training schedule).
    """

    video: torch.Tensor
    noise_level: torch.Tensor


def augment(
    video: torch.Tensor, noise: torch.Tensor, noise_level: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """``sqrt(a) x + sqrt(1 - a) eps`` with ``a = alphas_cumprod[noise_level]`` per clip.

    video, noise ``[b, ...]``; noise_level ``[b]`` integer timesteps. Level 0 of a schedule with
    ``alphas_cumprod[0] ~ 1`` is (almost) no augmentation.
    """
    a = alphas_cumprod.to(device=video.device, dtype=torch.float32)[noise_level.to(video.device)]  # [b]
    a = a.reshape(-1, *([1] * (video.ndim - 1)))  # [b, 1, ..., 1]
    return (a.sqrt() * video.float() + (1 - a).sqrt() * noise.float()).to(video.dtype)


def make_condition(
    low_res: torch.Tensor,
    size: tuple[int, int],
    noise_level: torch.Tensor,
    noise: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    mode: str = "bilinear",
) -> SSRCondition:
    """Low-res clip ``[b, 3, f, h, w]`` in [-1, 1] -> ``SSRCondition`` at high-res ``size`` (H, W).

    ``noise`` is ``[b, 3, f, H, W]`` (augmentation is applied after upsampling, at the resolution
    the network sees); ``noise_level`` ``[b]``; ``mode`` the upsampling (``UPSAMPLE_MODES``).
    """
    upsampled = upsample_video(low_res, size, mode)  # [b, 3, f, H, W]
    if noise.shape != upsampled.shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)}; expected {tuple(upsampled.shape)}")
    return SSRCondition(augment(upsampled, noise, noise_level, alphas_cumprod), noise_level)


def noise_level_kwargs(stunet: STUNet, noise_level: torch.Tensor | None) -> dict[str, torch.Tensor | None]:
    """The ``STUNet.forward`` keyword that takes the augmentation level ``[b]`` of the low-res input:
    ``noise_level`` for our SSR (``noise_level_conditioning``); ``class_labels`` for an image model
    that had one (IF stage II: ``class_embed_type="timestep"``), as diffusers' IF pipeline passes it."""
    stunet = getattr(stunet, "module", stunet)  # the STUNet inside a DistributedDataParallel wrapper
    takes_class_label = stunet.noise_level_embedding is None and stunet.class_embedding is not None
    if noise_level is not None and takes_class_label:
        return {"class_labels": noise_level}
    return {"noise_level": noise_level}


def ssr_model_input(noisy: torch.Tensor, condition_video: torch.Tensor) -> torch.Tensor:
    """``[b, c, f, H, W]`` noisy clip and ``[b, k, f, H, W]`` condition -> ``[b, c + k, f, H, W]``."""
    if noisy.shape[0] != condition_video.shape[0] or noisy.shape[2:] != condition_video.shape[2:]:
        raise ValueError(
            f"condition video {tuple(condition_video.shape)} does not match the noisy clip {tuple(noisy.shape)} "
            "in batch, frames or size"
        )
    return torch.cat([noisy, condition_video.to(noisy.dtype)], dim=1)
