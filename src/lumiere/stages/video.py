"""Stage ``stunet``: the Space-Time U-Net (Bar-Tal et al. 2024, Sec. 3, 3.1).

The text-to-image model is inflated into a STUNet: its spatial blocks are kept (frozen by default,
``model.freeze_spatial``), temporal convolutions and attention are inserted, and the clip is
down- and up-sampled in time as well as space, so the whole clip is generated in one pass.
``VideoStage`` is also the base of the stages that widen a STUNet (``ssr``, ``conditional``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from diffusers import DDPMScheduler, UNet2DConditionModel

from lumiere.diffusion import noise_scheduler_from_config
from lumiere.models.presets import STUNET_PRESETS
from lumiere.models.stunet import STUNet
from lumiere.models.text import CONFIG_NAME as TEXT_ENCODER_CONFIG
from lumiere.models.text import TextEncoder
from lumiere.stages.base import Stage, is_image_model_dir, resolve_model_dir

logger = logging.getLogger(__name__)


class VideoStage(Stage):
    """The STUNet (Sec. 3.1) on clips ``[b, c, f, h, w]``, inflated from an image model or loaded
    from a STUNet (``model.init_from``). Exported as a full pipeline."""

    name = "stunet"
    component = "stunet"  # the pipeline subfolder ``model.init_from`` is read from
    trains_conv_in = False  # a widened input conv (the conditioning's only way in) always trains

    def make_model(self) -> STUNet:
        source = Path(self.config.model.init_from)
        if is_image_model_dir(source) or is_image_model_dir(source / "unet"):
            image_model = UNet2DConditionModel.from_pretrained(resolve_model_dir(source, "unet"))
            model = self.inflate(image_model)
            logger.info("inflated the image model of %s into a %s STUNet", source, self.name)
        else:
            model = self.load(source)
        model = self.adapt(model)
        model.freeze_spatial(self.config.model.freeze_spatial)
        if self.trains_conv_in:
            model.conv_in.requires_grad_(True)
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

    def load_text_encoder(self) -> TextEncoder:
        """The config's ``text_encoder``; when not set, that of the pipeline ``model.init_from``
        names (e.g. the T5 an inflated IF folder refers to), else MiniLM."""
        saved = Path(self.config.model.init_from) / "text_encoder"
        if self.config.text_encoder is None and (saved / TEXT_ENCODER_CONFIG).is_file():
            return TextEncoder.from_pretrained(saved)
        return super().load_text_encoder()

    def adapt(self, model: STUNet) -> STUNet:
        """The stage's change to the made or loaded STUNet (none here; see ``ConditionalStage``)."""
        return model
