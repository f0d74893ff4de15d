"""Sampling pipelines: text (+ image / video / mask) -> base STUNet -> SSR -> frames."""

from .conditioning import Conditioning, prepare_conditioning
from .lumiere import (
    DEFAULT_MODEL_DIR,
    OUTPUT_TYPES,
    SAMPLERS,
    LumierePipeline,
    LumierePipelineOutput,
    SSROptions,
    make_sampling_scheduler,
)

__all__ = [
    "DEFAULT_MODEL_DIR",
    "OUTPUT_TYPES",
    "SAMPLERS",
    "Conditioning",
    "LumierePipeline",
    "LumierePipelineOutput",
    "SSROptions",
    "make_sampling_scheduler",
    "prepare_conditioning",
]
