"""Inflate the image models people have: a diffusers folder -> a Lumiere pipeline folder.

``inflate_pipeline`` reads a local diffusers folder's ``model_index.json`` and dispatches:
DeepFloyd IF to ``inflate_if_pipeline`` (pixel space, the paper's cascade), Stable Diffusion
1.x/2.x and SDXL to ``inflate_sd_pipeline`` (latent space).

The paper's cascade on DeepFloyd IF: a diffusers IF folder -> a Lumiere pipeline folder.

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

Lumiere in latent space (``inflate_sd_pipeline``): a Stable Diffusion 1.x/2.x or SDXL folder
(``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, SDXL also ``text_encoder_2/``,
``tokenizer_2/``, ``scheduler/``) becomes ``stunet/`` (its U-Net inflated: the STUNet denoises
latents ``[b, 4, f, h/8, w/8]``), ``vae/`` (the autoencoder, copied: clips are encoded and decoded
frame by frame), ``text_encoder/`` (the family's CLIP encoder(s), referenced by path) and
``scheduler/`` (a DPM-Solver++ sampler over the folder's noise schedule and prediction type: SD 2.x
768-v predicts v). With ``conditional=True`` the STUNet is widened for image-to-video, inpainting
and cinemagraphs (the extra input weights start at zero, Sec. 4), ready to fine-tune.

Nothing is downloaded: the sources are local paths.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from lumiere.models.conditional import build_conditional_stunet
from lumiere.models.loading import weights_variant
from lumiere.models.stunet import STUNet
from lumiere.models.text import HFTextEncoder, text_encoder_for_sd_folder
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


def inflate_pipeline(
    source: str | os.PathLike,  # local diffusers folder: DeepFloyd IF stage I, SD 1.x/2.x or SDXL
    out_dir: str | os.PathLike,  # the Lumiere pipeline folder to write
    ssr_source: str | os.PathLike | None = None,  # IF only: the stage II folder
    conditional: bool = False,  # SD only: widen the STUNet for image-to-video / inpainting
    **temporal_options: Any,  # STUNet.from_unet2d options
) -> Path:
    """Inflate the folder by its family (``model_index.json``'s ``_class_name``); return ``out_dir``."""
    source = Path(source)
    family = pipeline_family(source)
    if family == "if":
        if conditional:
            raise ValueError("conditional=True applies to Stable Diffusion folders; IF folders inflate text-to-video")
        return inflate_if_pipeline(source, out_dir, ssr_source=ssr_source, **temporal_options)
    if ssr_source is not None:
        raise ValueError(
            f"ssr_source applies to DeepFloyd IF (its stage II); {source} is a Stable Diffusion folder "
            "(latent space; its clips are upsampled by nothing or by a pixel SSR trained with lumiere)"
        )
    return inflate_sd_pipeline(source, out_dir, conditional=conditional, **temporal_options)


def pipeline_family(path: Path) -> str:
    """"if" or "sd" (SD 1.x/2.x and SDXL) from a diffusers folder's ``model_index.json``."""
    if not (path / MODEL_INDEX).is_file():
        raise FileNotFoundError(
            f"{path / MODEL_INDEX} not found: {str(path)!r} is not a local diffusers pipeline folder "
            "(nothing is downloaded; pass the path of a downloaded IF, Stable Diffusion or SDXL folder)"
        )
    class_name = str(json.loads((path / MODEL_INDEX).read_text()).get("_class_name", ""))
    if class_name.startswith("IF"):
        return "if"
    if class_name.startswith("StableDiffusion"):
        return "sd"
    raise ValueError(
        f"{path / MODEL_INDEX}: _class_name={class_name!r} is not a supported family; supported: DeepFloyd IF "
        "(IFPipeline), Stable Diffusion 1.x/2.x (StableDiffusionPipeline) and SDXL (StableDiffusionXLPipeline)"
    )


def check_sd_folder(path: Path) -> None:
    """``ValueError`` naming the component a Stable Diffusion / SDXL folder lacks or has wrong:
    ``unet/``, ``vae/`` and ``scheduler/`` must be there (the text encoders are checked by
    ``text_encoder_for_sd_folder``), and the U-Net must denoise the VAE's latent channels."""
    missing = [name for name in ("unet", "vae", "scheduler") if not (path / name / _config_file(name)).is_file()]
    if missing:
        raise ValueError(
            f"{path} has no {', '.join(f'{name}/' for name in missing)} with its config: a Stable Diffusion "
            "folder needs unet/, vae/, scheduler/ and its text encoder(s)"
        )
    unet = json.loads((path / "unet" / "config.json").read_text())
    vae = json.loads((path / "vae" / "config.json").read_text())
    if unet.get("in_channels") != vae.get("latent_channels") or unet.get("out_channels") != vae.get("latent_channels"):
        raise ValueError(
            f"{path}: the unet takes {unet.get('in_channels')} input channels and predicts "
            f"{unet.get('out_channels')}, but the vae has latent_channels={vae.get('latent_channels')}; a text-to-image "
            "U-Net denoises exactly the VAE's latents (an inpainting U-Net, 9 input channels, is not supported)"
        )


def _config_file(component: str) -> str:
    return SCHEDULER_CONFIG if component == "scheduler" else "config.json"


def inflate_sd_pipeline(
    source: str | os.PathLike,  # local diffusers SD 1.x/2.x or SDXL folder
    out_dir: str | os.PathLike,  # the Lumiere latent pipeline folder to write
    conditional: bool = False,  # widen for image-to-video / inpainting / cinemagraphs (Sec. 4)
    clip_skip: int | None = None,  # CLIP layers skipped from the end (diffusers' clip_skip)
    **temporal_options: Any,  # STUNet.from_unet2d options (temporal_attention_layers, ...)
) -> Path:
    """Write a Lumiere latent pipeline folder inflated from Stable Diffusion (see the module
    docstring); return it. ``LumierePipeline.from_pretrained`` loads it; ``lumiere train`` with
    ``model.init_from: OUT`` fine-tunes it."""
    source = Path(source)
    check_sd_folder(source)
    text_encoder = text_encoder_for_sd_folder(source, clip_skip=clip_skip)

    # 1. The STUNet from the U-Net (time halved where space is, the paper's default); widened
    #    with zero weights for conditioning when asked, so it starts as the image model either way.
    stunet = STUNet.from_unet2d(_load_unet(source / "unet"), **temporal_options)
    if conditional:
        stunet = build_conditional_stunet(stunet)
    logger.info("inflated %s into a latent STUNet", source / "unet")

    # 2. The autoencoder, copied (clips go through it frame by frame).
    vae = AutoencoderKL.from_pretrained(source / "vae", variant=weights_variant(source / "vae"), torch_dtype=torch.float32)

    # 3. A sampler over the folder's noise schedule (betas, prediction type).
    schedule = json.loads((source / "scheduler" / SCHEDULER_CONFIG).read_text())
    scheduler = make_sampling_scheduler("dpm++", schedule)
    pipe = LumierePipeline(stunet, text_encoder, scheduler, vae=vae)
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
