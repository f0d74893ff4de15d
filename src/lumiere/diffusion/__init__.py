"""Diffusion training objective on diffusers schedulers (noise, v/eps/x0 targets, loss weights), and
the one training step of every model, ``DiffusionObjective.training_loss``."""

from .objective import (
    PREDICTION_TYPES,
    DiffusionObjective,
    append_dims,
    drop_captions,
    make_noise_scheduler,
    noise_scheduler_from_config,
)

__all__ = [
    "PREDICTION_TYPES",
    "DiffusionObjective",
    "append_dims",
    "drop_captions",
    "make_noise_scheduler",
    "noise_scheduler_from_config",
]
