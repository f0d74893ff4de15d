"""Training stages as objects (the config's ``stage:``), and their registry.

Each stage (``Stage``) owns its network, data, model input, loss, samples and export; the training
loop (``lumiere.train``) runs any of them. A new stage is one ``Stage`` subclass and one line in
``STAGES``.

    t2i          TextToImageStage  the image model Lumiere inflates (Sec. 3)
    stunet       VideoStage        the Space-Time U-Net (Sec. 3, 3.1)
    ssr          SSRStage          spatial super-resolution (Sec. 3.2)
    conditional  ConditionalStage  one model for i2v, inpainting, cinemagraphs (Sec. 4)
"""

from __future__ import annotations

from lumiere.stages.base import Stage, conditioned_forward, resolve_model_dir
from lumiere.stages.conditional import ConditionalStage
from lumiere.stages.ssr import SSRStage
from lumiere.stages.text_to_image import TextToImageStage
from lumiere.stages.video import VideoStage

STAGES: dict[str, type[Stage]] = {
    "t2i": TextToImageStage,
    "stunet": VideoStage,
    "ssr": SSRStage,
    "conditional": ConditionalStage,
}


def get_stage(name: str) -> type[Stage]:
    """The ``Stage`` class of a config's ``stage:`` name; ``ValueError`` naming the known ones."""
    if name not in STAGES:
        raise ValueError(f"config key stage must be one of {list(STAGES)}, got {name!r}")
    return STAGES[name]


__all__ = [
    "STAGES",
    "ConditionalStage",
    "SSRStage",
    "Stage",
    "TextToImageStage",
    "VideoStage",
    "conditioned_forward",
    "get_stage",
    "resolve_model_dir",
]
