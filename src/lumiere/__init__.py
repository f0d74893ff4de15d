"""lumiere: Lumiere's Space-Time U-Net video diffusion (Bar-Tal et al., 2024) on diffusers."""

from lumiere.models.blend import blend_weights, load_style
from lumiere.models.presets import build_unet2d, preset_names
from lumiere.models.stunet import STUNet, STUNetOutput
from lumiere.models.text import TextEncoder, load_text_encoder, text_encoder_for_sd_folder
from lumiere.pipelines import LumierePipeline, LumierePipelineOutput, SSROptions
from lumiere.pipelines.convert import inflate_pipeline

__version__ = "0.1.0"

__all__ = [
    "LumierePipeline",
    "LumierePipelineOutput",
    "SSROptions",
    "STUNet",
    "STUNetOutput",
    "TextEncoder",
    "__version__",
    "blend_weights",
    "build_unet2d",
    "inflate_pipeline",
    "load_style",
    "load_text_encoder",
    "preset_names",
    "text_encoder_for_sd_folder",
]
