"""Stage ``ssr``: the spatial super-resolution model (Bar-Tal et al. 2024, Sec. 3.2).

The high-res clip is the sample; its area-downsampled copy, upsampled back and noise-augmented
(``lumiere.models.ssr``), is the conditioning, concatenated to the noisy clip along channels. The
SSR STUNet is inflated without temporal resizing, so it runs on temporal windows of any length
(MultiDiffusion at sampling) and trains on short clips.

Axis legend:
    b  clips      c  channels      f  frames      h, w  low-res size      H, W  high-res size
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from diffusers import UNet2DConditionModel
from torch.utils.data import IterableDataset

from lumiere.models.ssr import (
    SSRCondition,
    build_ssr_stunet,
    check_ssr_stunet,
    downsample_video,
    make_condition,
    residual_over_upsample,
)
from lumiere.models.stunet import STUNet
from lumiere.stages.video import VideoStage

if TYPE_CHECKING:
    from lumiere.config import TrainConfig
    from lumiere.models.text import TextEncoder

SAMPLE_CLIPS = 4  # held-out data clips upsampled as the stage's validation samples


def training_condition(
    high_res: torch.Tensor,
    scale: int,
    max_noise_level: int,
    alphas_cumprod: torch.Tensor,
    generator: torch.Generator | None = None,
    mode: str = "bilinear",
) -> SSRCondition:
    """The conditioning of one training batch: downsample the clean high-res clip ``[b, 3, f, H, W]``
    by ``scale`` (area), upsample back, augment at a level drawn uniformly in ``[0, max_noise_level]``
    per clip. Every draw comes from ``generator`` (CPU), so a step's batch is reproducible.
    ``mode``: the upsampling, bilinear or bicubic (``model.ssr_upsample``)."""
    batch = high_res.shape[0]
    low_res = downsample_video(high_res, scale)
    noise_level = torch.randint(0, max_noise_level + 1, (batch,), generator=generator)
    noise = torch.randn(high_res.shape, generator=generator)
    return make_condition(
        low_res,
        tuple(high_res.shape[-2:]),
        noise_level.to(high_res.device),
        noise.to(device=high_res.device, dtype=high_res.dtype),
        alphas_cumprod,
        mode,
    )


class SSRStage(VideoStage):
    """The SSR STUNet (Sec. 3.2): conditioned on the upsampled, noise-augmented low-res clip and its level.
    Exported as an upsampling-only pipeline (``ssr/``, with ``ssr_scale`` and ``ssr_residual``)."""

    name = "ssr"
    component = "ssr"
    trains_conv_in = True
    trains_in_latent_space = False  # an SSR on latents is not built yet (config check: ValueError)
    supports_lora = False

    @classmethod
    def check_config(cls, config: TrainConfig) -> None:
        if not config.model.init_from:
            raise ValueError(f"config key model.init_from is required for stage {cls.name!r}")
        cls.check_latent_and_lora(config)
        if config.data.resolution % config.model.ssr_scale:
            raise ValueError(
                f"config key data.resolution ({config.data.resolution}) must be a multiple of model.ssr_scale "
                f"({config.model.ssr_scale}) for stage 'ssr'"
            )
        if config.model.ssr_residual_scale != 1.0 and not config.model.ssr_residual:
            raise ValueError("config key model.ssr_residual_scale applies with model.ssr_residual: true only")

    def inflate(self, image_model: UNet2DConditionModel) -> STUNet:
        # Without temporal resizing, widened for the low-res clip (Sec. 3.2).
        return build_ssr_stunet(image_model, **self.inflation_options())

    def load(self, source: Path) -> STUNet:
        from lumiere.pipelines.lumiere import sample_channels

        model = super().load(source)
        # The clip's channels: half the output for a learned-variance model (IF stage II).
        channels = sample_channels(model, self.noise_scheduler())
        check_ssr_stunet(model, name=f"model.init_from={str(source)!r}", sample_channels=channels)
        return model

    def diffused_sample(self, clean: torch.Tensor) -> torch.Tensor:
        if self.config.model.ssr_residual:
            model = self.config.model
            return residual_over_upsample(clean, model.ssr_scale, model.ssr_upsample) * model.ssr_residual_scale
        return clean

    def draw_condition(
        self, clean: torch.Tensor, alphas_cumprod: torch.Tensor, generator: torch.Generator | None
    ) -> SSRCondition:
        return training_condition(
            clean,
            self.config.model.ssr_scale,
            self.config.optim.max_augmentation_level,
            alphas_cumprod,
            generator=generator,
            mode=self.config.model.ssr_upsample,
        )

    def write_samples(self, model: STUNet, text_encoder: TextEncoder, path: Path, device) -> None:
        """Held-out data clips (with their own captions; ``sample_prompts`` is not used), each shown
        as low-res (nearest-upsampled) | SSR output | ground truth, written as one grid video."""
        from lumiere.data.video_io import make_grid, write_video

        config = self.config
        high, captions = self.sample_clips()
        count = len(captions)
        low = downsample_video(high, config.model.ssr_scale)
        pipe = self.pipeline(model, text_encoder)
        pipe.set_progress_bar_config(disable=True)
        low_frames = ((low + 1) / 2).clamp(0, 1).permute(0, 2, 3, 4, 1).numpy()  # [n, f, h, w, 3]
        upsampled = pipe.upsample(
            low_frames,
            captions,
            window=None,
            num_inference_steps=config.sample_steps,
            generator=[torch.Generator().manual_seed(i) for i in range(count)],
        ).frames  # [n, f, H, W, 3]
        nearest = low_frames.repeat(config.model.ssr_scale, axis=2).repeat(config.model.ssr_scale, axis=3)
        truth = ((high + 1) / 2).clamp(0, 1).permute(0, 2, 3, 4, 1).numpy()
        rows = np.stack([nearest, upsampled, truth], axis=1).reshape(-1, *truth.shape[1:])  # [3n, f, H, W, 3]
        path.parent.mkdir(parents=True, exist_ok=True)
        write_video(path, make_grid(rows, nrow=3), fps=config.data.fps)

    def sample_clips(self) -> tuple[torch.Tensor, list[str]]:
        """Up to ``SAMPLE_CLIPS`` data clips ``[n, 3, f, H, W]`` in [-1, 1] and their captions: the
        end of an indexed dataset (rarely trained on), or the first batch a streamed one forms
        (shards: the readers batch their clips, one bucket per batch)."""
        dataset, _ = self.build_dataset()
        if isinstance(dataset, IterableDataset):
            batch = next(iter(dataset))
            return batch["video"][:SAMPLE_CLIPS], list(batch["caption"][:SAMPLE_CLIPS])
        items = [dataset[len(dataset) - 1 - i] for i in range(min(SAMPLE_CLIPS, len(dataset)))]
        return torch.stack([item["video"] for item in items]), [item["caption"] for item in items]

    def pipeline(self, stunet: STUNet, text_encoder: TextEncoder):
        """An upsampling-only pipeline around the SSR model (no base model); what is exported."""
        from lumiere.pipelines import LumierePipeline

        return LumierePipeline.from_stunet(
            None,
            text_encoder=text_encoder,
            scheduler=self.sampling_scheduler(),
            ssr=stunet,
            ssr_scale=self.config.model.ssr_scale,
            ssr_residual=self.config.model.ssr_residual,
            ssr_upsample=self.config.model.ssr_upsample,
            ssr_residual_scale=self.config.model.ssr_residual_scale,
        )
