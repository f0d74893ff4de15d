"""Tiny Stable Diffusion folders, laid out exactly as the published diffusers folders.

Real SD 1.x / 2.x / SDXL weights cannot be downloaded here, so tests and benchmarks build a folder
with the same ``model_index.json``, components and configs as the published ones, with the widths
scaled down and random weights: a ``UNet2DConditionModel``, an ``AutoencoderKL`` with the published
8x downsampling (4 levels) and scaling factor, CLIP text models (SDXL: the two encoders, the second
with a projection for the pooled embedding) with a hand-made BPE vocabulary, and the family's
scheduler config. ``diffusers``' own pipeline classes write the folder, so it is what
``StableDiffusionPipeline.save_pretrained`` writes for the real model.

Published configs mirrored (layouts, not widths):
- SD 1.x: runwayml/stable-diffusion-v1-5 (PNDM, scaled_linear betas 0.00085..0.012, epsilon,
  VAE scaling_factor 0.18215, CLIP ViT-L/14 text model, last layer).
- SD 2.x: stabilityai/stable-diffusion-2-1 (768-v: v_prediction, DDIM, linear projections,
  OpenCLIP-H text model with 23 of its 24 layers, i.e. the penultimate layer).
- SDXL: stabilityai/stable-diffusion-xl-base-1.0 (Euler, epsilon, VAE scaling_factor 0.13025,
  text_encoder CLIP-L + text_encoder_2 OpenCLIP-bigG with projection, cross-attention on both
  penultimate layers concatenated, "text_time" added embedding of the pooled text and 6 time ids).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

SD_FAMILIES = ("sd1", "sd2", "sdxl")

# Words of the hand-made vocabulary: whole-word BPE tokens for these, characters for the rest.
WORDS = (
    "a red green blue yellow white purple orange cyan circle square triangle star moving left right "
    "up down growing shrinking bouncing on black background the of and in cat dog photo video"
).split()

# Scheduler configs of the published folders (their scheduler/scheduler_config.json).
_SCALED_LINEAR = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
)
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "sd1": ("PNDMScheduler", dict(_SCALED_LINEAR, skip_prk_steps=True, set_alpha_to_one=False,
                                  steps_offset=1, prediction_type="epsilon")),  # fmt: skip
    "sd2": ("DDIMScheduler", dict(_SCALED_LINEAR, clip_sample=False, set_alpha_to_one=False,
                                  steps_offset=1, prediction_type="v_prediction")),  # fmt: skip
    "sdxl": ("EulerDiscreteScheduler", dict(_SCALED_LINEAR, steps_offset=1, prediction_type="epsilon",
                                            timestep_spacing="leading", interpolation_type="linear")),  # fmt: skip
}
VAE_SCALING = {"sd1": 0.18215, "sd2": 0.18215, "sdxl": 0.13025}

TEXT_WIDTH = 32  # SD 1.x/2.x text model width here (768 / 1024 published)
SDXL_TEXT_WIDTHS = (16, 32)  # SDXL's two text encoders here (768 and 1280 published)
SDXL_POOLED = 16  # text_encoder_2's projection_dim here (1280 published)
TIME_ID_WIDTH = 8  # SDXL's addition_time_embed_dim here (256 published)


def make_tiny_sd_folder(
    directory: str | os.PathLike,  # where the diffusers folder is written
    family: str = "sd1",  # one of SD_FAMILIES
    seed: int = 0,  # the random weights
    sample_size: int = 8,  # latent side of the U-Net (x8 pixels)
) -> Path:
    """Write a tiny, randomly initialised diffusers folder of ``family``; return its path."""
    from diffusers import (
        AutoencoderKL,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )

    if family not in SD_FAMILIES:
        raise ValueError(f"family={family!r}: choose one of {', '.join(SD_FAMILIES)}")
    torch.manual_seed(seed)
    directory = Path(directory)
    unet = UNet2DConditionModel(**unet_config(family, sample_size))
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,  # 4 levels: 8x, as published
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),  # (128, 256, 512, 512) published
        layers_per_block=1,  # 2 published
        norm_num_groups=8,  # 32 published
        latent_channels=4,
        sample_size=sample_size * 8,
        scaling_factor=VAE_SCALING[family],
        force_upcast=family == "sdxl",  # SDXL's VAE overflows in fp16 (its config says so)
    )
    scheduler = make_scheduler(family)
    if family == "sdxl":
        (text_encoder, tokenizer), (text_encoder_2, tokenizer_2) = (
            _clip_text(width, projection=index == 1) for index, width in enumerate(SDXL_TEXT_WIDTHS)
        )
        pipe = StableDiffusionXLPipeline(
            vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
            tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=True,
        )  # fmt: skip
    else:
        text_encoder, tokenizer = _clip_text(TEXT_WIDTH, projection=False, sd2=family == "sd2")
        pipe = StableDiffusionPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )  # fmt: skip
    pipe.save_pretrained(directory, safe_serialization=True)
    return directory


def unet_config(family: str, sample_size: int = 8) -> dict[str, Any]:
    """The family's U-Net layout (block types, projections, added embeddings) at tiny widths."""
    common = dict(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=8,
    )
    if family == "sd1":
        return dict(common, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=8,
                    cross_attention_dim=TEXT_WIDTH)  # fmt: skip
    if family == "sd2":
        return dict(common, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=(2, 4),
                    use_linear_projection=True, cross_attention_dim=TEXT_WIDTH)  # fmt: skip
    return dict(
        common,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 2),
        use_linear_projection=True,
        cross_attention_dim=sum(SDXL_TEXT_WIDTHS),  # both encoders' states, concatenated
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_ID_WIDTH,
        projection_class_embeddings_input_dim=SDXL_POOLED + 6 * TIME_ID_WIDTH,
    )


def make_scheduler(family: str):
    """The family's published sampling scheduler (class and config)."""
    import diffusers

    class_name, config = SCHEDULERS[family]
    return getattr(diffusers, class_name)(**config)


def _clip_text(width: int, projection: bool, sd2: bool = False):
    """A tiny CLIP text model (with projection: ``CLIPTextModelWithProjection``) and its tokenizer."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = make_clip_tokenizer()
    config = CLIPTextConfig(
        vocab_size=len(tokenizer.get_vocab()),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        hidden_act="gelu" if sd2 else "quick_gelu",  # OpenCLIP uses gelu, OpenAI CLIP quick_gelu
        projection_dim=SDXL_POOLED,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)
    return model.eval(), tokenizer


def make_clip_tokenizer():
    """A ``CLIPTokenizer`` over a hand-made BPE vocabulary: the characters a-z, 0-9, the merges
    that build ``WORDS`` whole, and CLIP's start/end tokens (77 tokens, as published)."""
    import tempfile

    from transformers import CLIPTokenizer

    symbols = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-")
    vocab: dict[str, int] = {}
    for token in symbols + [s + "</w>" for s in symbols]:
        vocab.setdefault(token, len(vocab))
    merges: list[str] = []
    for word in WORDS:  # merge left to right: r e -> re, re d</w> -> red</w>
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merge = f"{pieces[0]} {pieces[1]}"
            if merge not in merges:
                merges.append(merge)
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
            vocab.setdefault(pieces[0], len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    with tempfile.TemporaryDirectory() as folder:
        vocab_file, merges_file = Path(folder) / "vocab.json", Path(folder) / "merges.txt"
        vocab_file.write_text(json.dumps(vocab))
        merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=77,
                             pad_token="<|endoftext|>")  # fmt: skip
