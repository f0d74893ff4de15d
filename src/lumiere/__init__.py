"""lumiere: Lumiere's Space-Time U-Net video diffusion (Bar-Tal et al., 2024) on diffusers."""

from lumiere.models.presets import build_unet2d, preset_names
from lumiere.models.stunet import STUNet, STUNetOutput

__version__ = "0.1.0"

__all__ = ["STUNet", "STUNetOutput", "build_unet2d", "preset_names", "__version__"]
