"""Stage ``stunet``: the Space-Time U-Net (Bar-Tal et al. 2024, Sec. 3, 3.1).

The text-to-image model is inflated into a STUNet: its spatial blocks are kept (frozen by default,
``model.freeze_spatial``), temporal convolutions and attention are inserted, and the clip is
down- and up-sampled in time as well as space, so the whole clip is generated in one pass.
``VideoStage`` is also the base of the stages that widen a STUNet (``ssr``, ``conditional``).

From a latent pipeline folder (an inflated Stable Diffusion / SDXL, with ``vae/``) the stage
trains in its latent space (``lumiere.stages.latent.LatentSpace``), from the latent and text
caches when ``data.cache_dir`` is set (``lumiere.data.latent_cache``), and exports a latent
pipeline folder. ``model.lora_rank`` adds LoRA adapters on the spatial layers
(``lumiere.models.lora``), exported as the image U-Net's diffusers LoRA file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from torch.utils.data import Dataset

from lumiere.diffusion import noise_scheduler_from_config
from lumiere.models.presets import STUNET_PRESETS
from lumiere.models.stunet import STUNet
from lumiere.models.text import CONFIG_NAME as TEXT_ENCODER_CONFIG
from lumiere.models.text import TextEncoder
from lumiere.stages.base import Stage, is_image_model_dir, resolve_model_dir
from lumiere.stages.latent import LatentSpace, sdxl_time_ids

if TYPE_CHECKING:
    from lumiere.config import TrainConfig
    from lumiere.models.text import TextEncoding
    from lumiere.pipelines import LumierePipeline

logger = logging.getLogger(__name__)

SD_TEXT_FOLDERS = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")  # a diffusers SD folder's


class VideoStage(Stage):
    """The STUNet (Sec. 3.1) on clips ``[b, c, f, h, w]``, inflated from an image model or loaded
    from a STUNet (``model.init_from``). Exported as a full pipeline."""

    name = "stunet"
    component = "stunet"  # the pipeline subfolder ``model.init_from`` is read from
    trains_conv_in = False  # a widened input conv (the conditioning's only way in) always trains
    trains_in_latent_space = True
    supports_lora = True

    def __init__(self, config: TrainConfig):
        super().__init__(config)
        self.latent = LatentSpace.of(config) if self.trains_in_latent_space else None  # None: pixels
        self.micro_conditioning = False  # SDXL's U-Net: pooled text and time ids (set by make_model)

    @property
    def cached(self) -> bool:
        """Whether training reads the text cache (and never loads the text encoder): latent training
        with ``data.cache_dir``. The clips' latents are cached too, except for streamed shards
        (``latent_cache.caches_latents``), so only then is the VAE never loaded either."""
        return self.latent is not None and bool(self.config.data.cache_dir)

    @property
    def latents_cached(self) -> bool:
        """Whether training reads the clips' VAE moments from ``data.cache_dir``."""
        from lumiere.data.latent_cache import caches_latents

        return self.cached and caches_latents(self.config)

    def make_model(self) -> STUNet:
        source = Path(self.config.model.init_from)
        if is_image_model_dir(source) or is_image_model_dir(source / "unet"):
            image_model = UNet2DConditionModel.from_pretrained(resolve_model_dir(source, "unet"))
            model = self.inflate(image_model)
            logger.info("inflated the image model of %s into a %s STUNet", source, self.name)
        else:
            model = self.load(source)
        model = self.adapt(model)
        self.deepen(model)
        model.freeze_spatial(self.config.model.freeze_spatial)
        if self.trains_conv_in:
            model.conv_in.requires_grad_(True)
        options = self.config.model
        if options.lora_rank:
            from lumiere.models.lora import add_spatial_lora

            add_spatial_lora(model, options.lora_rank, options.lora_alpha, options.lora_target_modules)
        self.micro_conditioning = model.image_config.get("addition_embed_type") == "text_time"
        channels = self.latent and self.latent.vae_config.get("latent_channels")
        if channels and model.out_channels != channels:
            raise ValueError(
                f"the stunet of model.init_from={str(source)!r} predicts {model.out_channels} channels, "
                f"its vae has latent_channels={channels}"
            )
        return model

    def inflation_options(self) -> dict[str, Any]:
        """Keyword arguments of ``STUNet.from_unet2d`` for the config's preset and overrides."""
        options = dict(STUNET_PRESETS.get(self.config.model.preset, {}))
        if self.config.model.temporal_attention_layers is not None:
            options["temporal_attention_layers"] = self.config.model.temporal_attention_layers
        return options

    def inflate(self, image_model: UNet2DConditionModel) -> STUNet:
        """The STUNet of an image model (Sec. 3.1): its weights, plus temporal layers."""
        return STUNet.from_unet2d(image_model, **self.inflation_options())

    def load(self, source: Path) -> STUNet:
        """A saved STUNet (or the ``component`` of a saved pipeline) to continue from."""
        return STUNet.from_pretrained(resolve_model_dir(source, self.component))

    def noise_scheduler(self) -> DDPMScheduler:
        """The schedule of the pipeline ``model.init_from`` names (its ``scheduler/``: e.g. IF's
        epsilon prediction with learned variance), else ours: fine-tuning keeps the objective the
        model was trained with."""
        saved = Path(self.config.model.init_from) / "scheduler" / "scheduler_config.json"
        if not saved.is_file():
            return super().noise_scheduler()
        return noise_scheduler_from_config(json.loads(saved.read_text()))

    def saved_text_encoder(self) -> Path | None:
        """The saved text encoder folder ``load_text_encoder`` reads: the pipeline's, when
        ``text_encoder`` is not set and ``model.init_from`` has one."""
        saved = Path(self.config.model.init_from) / "text_encoder"
        if self.config.text_encoder is None and (saved / TEXT_ENCODER_CONFIG).is_file():
            return saved
        return None

    def load_text_encoder(self) -> TextEncoder:
        """With caches: the cached embeddings (``CachedTextEncoder``); the encoder itself is never
        loaded. Else ``source_text_encoder``."""
        if not self.cached:
            return self.source_text_encoder()
        from lumiere.data.latent_cache import CachedTextEncoder, text_store

        store = text_store(self.config.data.cache_dir, self.text_encoder_identity())
        return CachedTextEncoder(store, self.saved_text_encoder())

    def source_text_encoder(self) -> TextEncoder:
        """The config's ``text_encoder``; when not set, that of the pipeline ``model.init_from``
        names (e.g. the T5 an inflated IF folder refers to), or of the Stable Diffusion folder it
        is (its CLIP encoders), else MiniLM."""
        saved = self.saved_text_encoder()
        if saved is not None:
            return TextEncoder.from_pretrained(saved)
        if self.config.text_encoder is None and self.latent is not None:
            from lumiere.models.text import load_text_encoder

            return load_text_encoder(self.config.model.init_from)
        return super().load_text_encoder()

    def text_encoder_identity(self) -> str:
        from lumiere.data.latent_cache import files_fingerprint, text_encoder_fingerprint

        saved = self.saved_text_encoder()
        if saved is not None:
            return text_encoder_fingerprint(saved)
        if self.config.text_encoder is None and self.latent is not None:
            root = Path(self.config.model.init_from)
            return files_fingerprint([root / name for name in SD_TEXT_FOLDERS if (root / name).is_dir()])
        return super().text_encoder_identity()

    # ---- latent space --------------------------------------------------------------------------

    def build_dataset(self) -> tuple[Dataset, bool]:
        """The clips (``pixel_dataset``), or with caches their cached moments (``CachedClips``)."""
        if not self.latents_cached:
            return super().build_dataset()
        from lumiere.data.latent_cache import CachedClips, check_cacheable, clip_keys, latent_store

        dataset, finite = self.pixel_dataset()
        check_cacheable(self.config, finite)
        return CachedClips(
            clip_keys(dataset), latent_store(self.config.data.cache_dir, self.latent.identity)
        ), True

    def batch_sample(self, batch: dict[str, Any], generator: torch.Generator, device) -> torch.Tensor:
        """Pixels: the clips. Latent space: a draw from each clip's VAE posterior ``[b, c, f, h/8, w/8]``
        (moments cached or computed now), the step's first draw from ``generator``."""
        if self.latent is None:
            return super().batch_sample(batch, generator, device)
        moments = batch["moments"] if "moments" in batch else self.latent.moments(batch["video"], device)
        return self.latent.sample(moments.to(device), generator)

    def added_conditions(
        self, encoding: TextEncoding, batch_size: int, device
    ) -> dict[str, torch.Tensor] | None:
        """SDXL's U-Net: the pooled text and the time ids of the uncropped pixel clip."""
        if not self.micro_conditioning:
            return None
        if encoding.pooled is None:
            raise ValueError("this U-Net (SDXL) takes a pooled text embedding; the text encoder gives none")
        size = self.config.data.resolution
        return {
            "text_embeds": encoding.pooled.to(device),
            "time_ids": sdxl_time_ids(size, size, batch_size, device),
        }

    # ---- samples and export ----------------------------------------------------------------------

    def pipeline(self, stunet: torch.nn.Module, text_encoder: TextEncoder) -> LumierePipeline:
        """Pixels: the base pipeline. Latent space: with the folder's VAE, which decodes the samples."""
        if self.latent is None:
            return super().pipeline(stunet, text_encoder)
        from lumiere.pipelines import LumierePipeline

        return LumierePipeline.from_stunet(
            stunet, text_encoder=text_encoder, scheduler=self.sampling_scheduler(), vae=self.latent.vae
        )

    def save(self, model: torch.nn.Module, text_encoder: TextEncoder, directory: Path) -> None:
        """The pipeline; with LoRA its STUNet holds the base spatial weights and the adapters go to
        ``pytorch_lora_weights.safetensors`` beside it (the image U-Net's diffusers LoRA), or, with
        ``model.lora_fuse``, are merged into the spatial weights. Trained from caches, the text
        encoder's saved folder is copied (the encoder is loaded only when it has none)."""
        from lumiere.data.latent_cache import CachedTextEncoder

        cached = isinstance(text_encoder, CachedTextEncoder)
        if cached and text_encoder.source is None:
            text_encoder, cached = self.source_text_encoder(), False
        if not self.config.model.lora_rank:
            super().save(model, text_encoder, directory)
        else:
            from lumiere.models.lora import save_lora_weights, without_lora  # peft: only with LoRA

            fuse = self.config.model.lora_fuse
            super().save(without_lora(model, fuse=fuse), text_encoder, directory)
            if not fuse:
                save_lora_weights(model, directory)
        if cached:
            _name_text_encoder_class(directory)

    def adapt(self, model: STUNet) -> STUNet:
        """The stage's change to the made or loaded STUNet (none here; see ``ConditionalStage``)."""
        return model

    def deepen(self, model: STUNet) -> None:
        """``model.coarse_temporal_halvings``: the temporal-only level for long clips
        (``STUNet.deepen_time``; it starts as the loaded model), unless the model has it already;
        ``model.temporal_conv_text``: temporal convs that read the text (``STUNet.add_text_to_temporal_convs``,
        also starting as the loaded model), unless they do already."""
        if self.config.model.temporal_conv_text and not model.config.get("temporal_conv_text", False):
            model.add_text_to_temporal_convs()
        halvings = self.config.model.coarse_temporal_halvings
        if not halvings:
            return
        have = model.config.get("coarse_temporal_halvings", 0)
        if not have:
            model.deepen_time(halvings)
        elif have != halvings:
            raise ValueError(
                f"config key model.coarse_temporal_halvings is {halvings}, but model.init_from="
                f"{self.config.model.init_from!r} has {have}; set it to {have} or 0"
            )


def _name_text_encoder_class(directory: Path) -> None:
    """Put the class of the copied text encoder (its ``kind``) in ``model_index.json``, where the
    pipeline's writer named the ``CachedTextEncoder`` that stood in for it."""
    from lumiere.checkpoint import read_json_object
    from lumiere.models.text import ENCODER_KINDS

    kind = read_json_object(directory / "text_encoder" / TEXT_ENCODER_CONFIG).get("kind")
    index = read_json_object(directory / "model_index.json")
    encoder = ENCODER_KINDS[kind]
    index["text_encoder"] = [encoder.__module__, encoder.__name__]
    (directory / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
