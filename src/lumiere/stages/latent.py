"""Training in a VAE latent space: what a stage needs when ``model.init_from`` is a latent
pipeline folder (``lumiere inflate`` of Stable Diffusion 1.x/2.x or SDXL: ``stunet/``, ``vae/``,
``text_encoder/``, ``scheduler/``).

Lumiere's STUNet is a pixel model (Sec. 3); inflated from a latent image model it denoises the
VAE's latents ``[b, c, f, h/8, w/8]`` of the pixel clips ``[b, 3, f, h, w]``, as Stable Diffusion
does for images. ``LatentSpace`` is the one collaborator a stage holds for that: the clean sample
of a batch is a draw from the VAE posterior of each clip (its moments computed now, or read from
the latent cache, ``lumiere.data.latent_cache``), taken with the step's generator. ``data.resolution``
stays in pixels.

Axis legend: b clips, c channels, f frames, h/w height/width.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lumiere.checkpoint import read_json_object

if TYPE_CHECKING:
    from lumiere.config import TrainConfig

logger = logging.getLogger(__name__)


def is_latent_folder(path: str | os.PathLike | None) -> bool:
    """Whether ``path`` is a latent pipeline folder: it has ``vae/config.json``."""
    return path is not None and (Path(path) / "vae" / "config.json").is_file()


class LatentSpace:
    """The VAE latent space of a latent pipeline folder: clips -> posterior moments -> latents.

    The VAE is loaded on first use only (``vae``): training from caches never loads it.
    """

    def __init__(
        self,
        folder: str | os.PathLike,  # the latent pipeline folder (its vae/)
        vae_batch_size: int = 8,  # frames per VAE encoder call (data.vae_batch_size)
    ):
        self.vae_dir = Path(folder) / "vae"
        self.vae_config = read_json_object(self.vae_dir / "config.json")
        self.vae_batch_size = vae_batch_size
        self._vae: Any = None
        self._identity: str | None = None

    @classmethod
    def of(cls, config: TrainConfig) -> LatentSpace | None:
        """The latent space of ``config``'s ``model.init_from``; None for a pixel model."""
        if not is_latent_folder(config.model.init_from):
            return None
        return cls(config.model.init_from, config.data.vae_batch_size)

    @property
    def scale_factor(self) -> int:
        """Pixels per latent along height and width (8 for every SD family)."""
        return 2 ** (len(self.vae_config["block_out_channels"]) - 1)

    @property
    def vae(self) -> Any:
        """The ``AutoencoderKL`` of ``vae/``, frozen, loaded on first use."""
        if self._vae is None:
            from diffusers import AutoencoderKL

            self._vae = AutoencoderKL.from_pretrained(self.vae_dir).eval().requires_grad_(False)
            logger.info("loaded the VAE of %s", self.vae_dir)
        return self._vae

    @property
    def identity(self) -> str:
        """sha256 of the VAE's config and weights: the latent cache's key (files hashed, not loaded)."""
        if self._identity is None:
            from lumiere.data.latent_cache import files_fingerprint

            self._identity = files_fingerprint([self.vae_dir])
        return self._identity

    def moments(self, video: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
        """Clips ``[b, 3, f, h, w]`` in [-1, 1] -> posterior moments ``[b, 2c, f, h/8, w/8]`` float32.

        One clip per encoder pass (``vae_batch_size`` frames per call), the way the cache builder
        encodes them, so cached and computed moments are the same numbers.
        """
        from lumiere.models.vae import encode_moments

        vae = self.vae.to(device)
        moments = [encode_moments(vae, clip[None].to(device), self.vae_batch_size) for clip in video]
        # Contiguous: the encoder's output can come in a channels-last layout, whose strides reach
        # the STUNet's backward pass (a segmentation fault in torch 2.13's CPU kernels).
        return torch.cat(moments).contiguous()

    def sample(self, moments: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Scaled latents ``[b, c, f, h/8, w/8]``: one draw from each clip's posterior, with
        ``generator`` (the step's first draw), scaled as the VAE's config says."""
        from lumiere.models.vae import latents_from_moments

        return latents_from_moments(self.vae_config, moments.contiguous(), generator).contiguous()


def sdxl_time_ids(height: int, width: int, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """SDXL's micro-conditioning ``[b, 6]``: original size, crop top-left, target size, as
    (h, w, 0, 0, h, w) of an uncropped pixel clip (Podell et al. 2023, Sec. 2.2)."""
    return torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32, device=device).repeat(
        batch, 1
    )
