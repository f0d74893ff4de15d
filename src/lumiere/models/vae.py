"""Clips in and out of a Stable Diffusion latent space, frame by frame (Lumiere in latent space).

Lumiere's STUNet is a pixel model (Sec. 3, inflated from Imagen); inflated from a latent image
model (Stable Diffusion, SDXL) it denoises latents ``[b, c, f, h/8, w/8]`` instead, and a
diffusers ``AutoencoderKL`` maps clips to and from them. The autoencoder is an image model, so a
clip goes through it as a batch of frames, ``vae_batch_size`` frames per call: its memory stays
that of ``vae_batch_size`` frames whatever the clip's length. Latents are scaled as the VAE's
config says (``scaling_factor``: SD 0.18215, SDXL 0.13025; ``shift_factor`` where the config has
one), as every diffusers pipeline of the family does.

Axis legend: b clips, c channels, f frames, h/w height/width.
"""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange

from lumiere.errors import InvalidArgument
from lumiere.models.placement import execution_device

DEFAULT_VAE_BATCH_SIZE = 8  # frames per autoencoder call


def vae_scale_factor(vae: Any) -> int:
    """Pixels per latent along height and width: 2 ** (levels - 1) (8 for every SD family)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def latent_channels(vae: Any) -> int:
    """Channels of the latent space (4 for SD 1.x/2.x/SDXL)."""
    return int(vae.config.latent_channels)


def check_vae_batch_size(vae_batch_size: int) -> None:
    """``InvalidArgument`` (a ``ValueError``) naming ``vae_batch_size`` unless it is an integer >= 1."""
    if isinstance(vae_batch_size, bool) or not isinstance(vae_batch_size, int) or vae_batch_size < 1:
        raise InvalidArgument("vae_batch_size", "must be an integer >= 1 (frames per VAE call)", vae_batch_size)


def _frame_chunks(frames: torch.Tensor, vae_batch_size: int) -> list[torch.Tensor]:
    check_vae_batch_size(vae_batch_size)
    return list(frames.split(vae_batch_size))


@torch.no_grad()
def encode_moments(vae: Any, video: torch.Tensor, vae_batch_size: int = DEFAULT_VAE_BATCH_SIZE) -> torch.Tensor:
    """Clips ``[b, 3, f, h, w]`` in [-1, 1] -> the posterior's moments ``[b, 2c, f, h/8, w/8]``
    (mean, then log-variance: what ``DiagonalGaussianDistribution`` takes), unscaled, float32.

    What a latent cache stores: a latent drawn from them later (``latents_from_moments``) is the
    latent the VAE would have drawn.
    """
    if video.ndim != 5 or video.shape[1] != 3:
        raise ValueError(f"video must be [b, 3, f, h, w] RGB clips, got shape {tuple(video.shape)}")
    factor = vae_scale_factor(vae)
    if video.shape[-2] % factor or video.shape[-1] % factor:
        raise ValueError(
            f"height and width must be multiples of {factor} for this VAE, got {tuple(video.shape[-2:])}"
        )
    batch = video.shape[0]
    # execution_device: vae.device is the CPU or "meta" under the pipeline's CPU offload
    frames = rearrange(video, "b c f h w -> (b f) c h w").to(device=execution_device(vae), dtype=vae.dtype)
    moments = [vae.encode(chunk).latent_dist.parameters.float() for chunk in _frame_chunks(frames, vae_batch_size)]
    # contiguous: the VAE may return channels-last tensors, which the STUNet's backward does not take on CPU
    return rearrange(torch.cat(moments), "(b f) c h w -> b c f h w", b=batch).contiguous()


def latents_from_moments(
    vae_config: Any,  # the VAE's config (scaling_factor, shift_factor)
    moments: torch.Tensor,  # [b, 2c, f, h, w] from encode_moments
    generator: torch.Generator | None = None,  # None: the posterior's mean (deterministic)
) -> torch.Tensor:
    """Scaled latents ``[b, c, f, h, w]``: a draw from the posterior (its mean without a generator),
    times ``scaling_factor`` after subtracting ``shift_factor``: the diffusion model's clean sample."""
    mean, logvar = moments.float().chunk(2, dim=1)
    latents = mean
    if generator is not None:
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))  # the clamp of diffusers' DiagonalGaussianDistribution
        noise = torch.randn(mean.shape, generator=generator, device=generator.device).to(mean.device)
        latents = mean + std * noise
    scale, shift = _scaling_of(vae_config)
    return (latents - shift) * scale


def _scaling_of(vae_config: Any) -> tuple[float, float]:
    """(scaling_factor, shift_factor) of a VAE config (an object or a dict; shift 0 where it has none)."""
    get = vae_config.get if isinstance(vae_config, dict) else lambda key, default=None: getattr(vae_config, key, default)
    return float(get("scaling_factor")), float(get("shift_factor", None) or 0.0)


def encode_video(
    vae: Any,
    video: torch.Tensor,  # [b, 3, f, h, w] in [-1, 1]
    vae_batch_size: int = DEFAULT_VAE_BATCH_SIZE,
    generator: torch.Generator | None = None,  # None: the posterior's mean
) -> torch.Tensor:
    """Clips -> scaled latents ``[b, c, f, h/8, w/8]`` float32, ``vae_batch_size`` frames per call."""
    return latents_from_moments(vae.config, encode_moments(vae, video, vae_batch_size), generator)


@torch.no_grad()
def decode_latents(
    vae: Any,
    latents: torch.Tensor,  # [b, c, f, h, w] scaled latents
    vae_batch_size: int = DEFAULT_VAE_BATCH_SIZE,
) -> torch.Tensor:
    """Scaled latents -> clips ``[b, 3, f, 8h, 8w]`` float32 in about [-1, 1] (not clamped),
    ``vae_batch_size`` frames per decoder call, so decoder memory does not grow with the clip."""
    if latents.ndim != 5 or latents.shape[1] != latent_channels(vae):
        raise ValueError(
            f"latents must be [b, {latent_channels(vae)}, f, h, w] for this VAE, got shape {tuple(latents.shape)}"
        )
    scale, shift = _scaling_of(vae.config)
    batch = latents.shape[0]
    frames = rearrange(latents.float() / scale + shift, "b c f h w -> (b f) c h w")
    dtype = vae.dtype
    decoded = [
        vae.decode(chunk.to(device=execution_device(vae), dtype=dtype)).sample.float()
        for chunk in _frame_chunks(frames, vae_batch_size)
    ]
    return rearrange(torch.cat(decoded), "(b f) c h w -> b c f h w", b=batch).contiguous()
