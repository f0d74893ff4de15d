"""Stage ``stunet``: the Space-Time U-Net (Bar-Tal et al. 2024, Sec. 3, 3.1).

The text-to-image model is inflated into a STUNet: its spatial blocks are kept (frozen by default,
``model.freeze_spatial``), temporal convolutions and attention are inserted, and the clip is
down- and up-sampled in time as well as space, so the whole clip is generated in one pass.
``VideoStage`` is also the base of the stages that widen a STUNet (``ssr``, ``conditional``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from diffusers import UNet2DConditionModel

from lumiere.models.presets import STUNET_PRESETS
from lumiere.models.stunet import STUNet
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

    def adapt(self, model: STUNet) -> STUNet:
        """The stage's change to the made or loaded STUNet (none here; see ``ConditionalStage``)."""
        return model
