"""The paper's cascade on DeepFloyd IF: a diffusers IF folder -> a Lumiere pipeline folder.

Lumiere inflates Imagen, a pixel-space cascade with a T5 text encoder (Bar-Tal et al. 2024,
Sec. 3, App. B); DeepFloyd IF is the open model closest to it. ``inflate_if_pipeline`` reads a
local diffusers IF folder (``model_index.json`` with ``unet/``, ``text_encoder/``, ``tokenizer/``,
``scheduler/``) and writes what ``LumierePipeline.from_pretrained`` loads:

- ``stunet/``: the base STUNet inflated from stage I, time halved at every spatial downsampler
  (Sec. 3.1, the paper's choice);
- ``ssr/`` (with ``ssr=``): the SSR STUNet inflated from stage II without temporal resizing, run
  with temporal MultiDiffusion (Sec. 3.2). Stage II already takes the upsampled low-res image
  (6 = 3 + 3 input channels) and its augmentation level as class label, so it is used as is;
- ``text_encoder/``: the T5 encoder *referenced* by its path, not copied;
- ``scheduler/``: a DPM-Solver++ sampler over stage I's noise schedule (betas, epsilon
  prediction, learned variance and thresholding carried over).

Nothing is downloaded: the sources are local paths.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel

from lumiere.models.loading import weights_variant
from lumiere.models.stunet import STUNet
from lumiere.models.text import HFTextEncoder
from lumiere.pipelines.lumiere import MODEL_INDEX, LumierePipeline, make_sampling_scheduler

logger = logging.getLogger(__name__)

IF_FOLDERS = ("unet", "text_encoder", "tokenizer", "scheduler")  # what a diffusers IF folder must hold
SCHEDULER_CONFIG = "scheduler_config.json"


def check_if_folder(path: Path, needs_text: bool = True) -> None:
    """``FileNotFoundError`` unless ``path`` is a local diffusers pipeline folder with what is needed."""
    if not (path / MODEL_INDEX).is_file():
        raise FileNotFoundError(
            f"{path / MODEL_INDEX} not found: {str(path)!r} is not a local diffusers pipeline folder "
            "(nothing is downloaded; pass the path of a downloaded DeepFloyd IF folder)"
        )
    needed = IF_FOLDERS if needs_text else ("unet",)
    missing = [name for name in needed if not (path / name).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"{path} has no {', '.join(f'{name}/' for name in missing)}; it is not an IF folder"
        )


def inflate_if_pipeline(
    source: str | os.PathLike,  # local diffusers IF stage I folder
    out_dir: str | os.PathLike,  # the Lumiere pipeline folder to write
    ssr_source: str | os.PathLike | None = None,  # local diffusers IF stage II folder (its unet/ is used)
    **temporal_options: Any,  # STUNet.from_unet2d options (temporal_attention_layers, ...)
) -> Path:
    """Write a Lumiere pipeline folder inflated from DeepFloyd IF (see the module docstring); return it."""
    source = Path(source)
    check_if_folder(source)
    if ssr_source is not None:
        check_if_folder(Path(ssr_source), needs_text=False)

    # 1. Base STUNet from stage I: time halved where space is (the paper's default).
    image_model = _load_unet(source / "unet")
    stunet = STUNet.from_unet2d(image_model, **temporal_options)
    logger.info("inflated %s into the base STUNet", source / "unet")

    # 2. SSR STUNet from stage II: no temporal resizing, so it runs on windows of any length.
    ssr, ssr_scale = None, 2
    if ssr_source is not None:
        ssr_image_model = _load_unet(Path(ssr_source) / "unet")
        ssr = STUNet.from_unet2d(ssr_image_model, **{**temporal_options, "temporal_resizing": False})
        ssr_scale = _scale(ssr_image_model.config.sample_size, image_model.config.sample_size)
        logger.info("inflated %s into the SSR STUNet (x%d)", Path(ssr_source) / "unet", ssr_scale)

    # 3. T5 by reference; a sampler over stage I's noise schedule.
    text_encoder = HFTextEncoder(source, reference=True)
    schedule = json.loads((source / "scheduler" / SCHEDULER_CONFIG).read_text())
    scheduler = make_sampling_scheduler("dpm++", schedule)
    pipe = LumierePipeline(stunet, text_encoder, scheduler, ssr=ssr, ssr_scale=ssr_scale)
    out_dir = Path(out_dir)
    pipe.save_pretrained(out_dir)
    return out_dir


def _load_unet(directory: Path) -> UNet2DConditionModel:
    """The image U-Net of a stage, in fp32 (the inflated model trains in fp32 master weights), also
    from a folder downloaded with ``variant="fp16"`` (its only weights ``*.fp16.safetensors``)."""
    variant = weights_variant(directory)
    return UNet2DConditionModel.from_pretrained(directory, variant=variant).to(torch.float32)


def _scale(high: Any, low: Any) -> int:
    """The SSR's upsampling factor from the two stages' ``sample_size`` (IF: 256 / 64 = 4)."""
    high, low = (size if isinstance(size, int) else size[0] for size in (high, low))
    if high % low:
        raise ValueError(f"stage II's sample_size {high} is not a multiple of stage I's {low}")
    return high // low
