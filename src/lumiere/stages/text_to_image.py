"""Stage ``t2i``: the text-to-image model that Lumiere inflates (Bar-Tal et al. 2024, Sec. 3).

Lumiere builds on a pre-trained text-to-image U-Net; we train our own small one on single frames
(``[b, c, h, w]``), a diffusers ``UNet2DConditionModel``. From a STUNet (or a pipeline holding one)
it fine-tunes that model's image model alone, e.g. for a style (Sec. 4.1).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from diffusers import UNet2DConditionModel

from lumiere.stages.base import Stage, is_image_model_dir, resolve_model_dir

if TYPE_CHECKING:
    from lumiere.models.text import TextEncoder


class TextToImageStage(Stage):
    """The text-to-image model (Sec. 3): a ``UNet2DConditionModel`` on single frames, random
    (``model.preset``), loaded, or the image model of a STUNet (Sec. 4.1). Exported as ``unet/``."""

    name = "t2i"
    image_data = True
    needs_init_from = False

    def make_model(self) -> UNet2DConditionModel:
        from lumiere.models.inflate import extract_image_model
        from lumiere.models.presets import build_unet2d
        from lumiere.models.stunet import STUNet

        if not self.config.model.init_from:
            return build_unet2d(self.config.model.preset)
        source = Path(self.config.model.init_from)
        if is_image_model_dir(source) or is_image_model_dir(source / "unet"):
            return UNet2DConditionModel.from_pretrained(resolve_model_dir(source, "unet"))
        # A STUNet (or pipeline): fine-tune its image model alone, e.g. for a style (Sec. 4.1).
        return extract_image_model(STUNet.from_pretrained(resolve_model_dir(source, "stunet")))

    def sampling_stunet(self, model: torch.nn.Module):
        """A one-frame STUNet around the image model, so the one pipeline samples it."""
        from lumiere.models.stunet import STUNet

        return STUNet.from_unet2d(model, temporal_resizing=False, temporal_attention_layers=0)

    def save(self, model: torch.nn.Module, text_encoder: TextEncoder, directory: Path) -> None:
        model.save_pretrained(directory / "unet")
