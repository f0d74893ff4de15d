"""Sampling pipelines: text (+ image / video / mask) -> base STUNet -> SSR -> frames."""

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
