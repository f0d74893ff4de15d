"""Sampling pipelines: text -> base STUNet -> frames (SSR and conditioning come later)."""

from .lumiere import (
    DEFAULT_MODEL_DIR,
    OUTPUT_TYPES,
    SAMPLERS,
    LumierePipeline,
    LumierePipelineOutput,
    make_sampling_scheduler,
)

__all__ = [
    "DEFAULT_MODEL_DIR",
    "OUTPUT_TYPES",
    "SAMPLERS",
    "LumierePipeline",
    "LumierePipelineOutput",
    "make_sampling_scheduler",
]
