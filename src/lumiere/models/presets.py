"""Registry of our image U-Nets (``UNet2DConditionModel`` configs) and of their inflation settings.

``tiny`` is for tests, ``default`` is the shipped moving-shapes model (pixel space, 32x32 base
clips of 16 frames), ``paper`` approaches the paper's base model (128x128 pixels; Imagen's exact
widths are unpublished, so Stable Diffusion 1.5's block layout stands in).
The names are reused as CLI choices.
"""

from __future__ import annotations

from typing import Any

from diffusers import UNet2DConditionModel

TEXT_DIM = 384  # all-MiniLM-L6-v2 token states, our default text encoder

UNET_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=2,  # diffusers' legacy name: this is the number of heads
        cross_attention_dim=TEXT_DIM,
    ),
    "default": dict(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64, 128),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=16,
        attention_head_dim=4,
        cross_attention_dim=TEXT_DIM,
    ),
    "paper": dict(
        sample_size=128,
        in_channels=3,
        out_channels=3,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        layers_per_block=2,
        attention_head_dim=8,
        cross_attention_dim=TEXT_DIM,
    ),
}

# Inflation settings per preset (keyword arguments of STUNet.from_unet2d).
STUNET_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(temporal_attention_layers=1, temporal_attention_heads=2),
    "default": dict(temporal_attention_layers=2, temporal_attention_heads=4),
    "paper": dict(temporal_attention_layers=4, temporal_attention_heads=8),
}


def preset_names() -> list[str]:
    return list(UNET_PRESETS)


def unet2d_config(preset: str, **overrides: Any) -> dict[str, Any]:
    """The ``UNet2DConditionModel`` config of a preset, with ``overrides`` applied."""
    if preset not in UNET_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(UNET_PRESETS)}")
    return {**UNET_PRESETS[preset], **overrides}


def build_unet2d(preset: str, **overrides: Any) -> UNet2DConditionModel:
    """A randomly initialised image U-Net of a preset."""
    return UNet2DConditionModel(**unet2d_config(preset, **overrides))
