"""Training configuration: YAML files validated into dataclasses.

Every hyperparameter lives in one dataclass field with a one-line reason. Config keys are a public
API: an unknown key or a value of the wrong type is a ``ValueError`` naming the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


@dataclass
class ModelConfig:
    preset: str = "default"  # image U-Net preset (lumiere.models.presets) for stage t2i
    init_from: str | None = None  # t2i: None (random), an image model, or a STUNet (its image model); others: an image-model or STUNet directory
    temporal_attention_layers: int | None = None  # None: the preset's value
    freeze_spatial: bool = True  # train only the inserted temporal layers (Sec. 3.1); ssr: conv_in too
    gradient_checkpointing: bool = False  # trade compute for activation memory
    compile: bool = False  # torch.compile the network (inductor)
    channels_last: bool = False  # NHWC memory format for the 2-D convolutions
    ssr_scale: int = 2  # ssr: the low-res clip is data.resolution / ssr_scale (the paper's SSR goes 8x)
    ssr_residual: bool = False  # ssr: diffuse the detail over bilinear upsampling, not the clip


@dataclass
class DataConfig:
    kind: Literal["shapes", "folder"] = "shapes"  # synthetic MovingShapes or a VideoFolder
    path: str | None = None  # folder of videos (kind "folder")
    num_frames: int = 16  # frames per clip (1 for stage t2i)
    resolution: int = 32  # square side in pixels
    fps: float = 8.0  # frame rate the folder videos are resampled to
    length: int | None = None  # distinct synthetic clips (None: a fresh clip every time)
    seed: int = 0  # the data stream is a function of (seed, step): resume is exact
    num_workers: int = 0  # DataLoader worker processes
    style: str | None = (
        None  # a pixel style of lumiere.data.styles (style fine-tune demo, Sec. 4.1); None: off
    )
    task_mix: tuple[float, float, float, float] = (
        0.4,
        0.25,
        0.2,
        0.15,
    )  # conditional: shares of t2v, i2v, inpaint, cinemagraph
    # shapes video stages: shares of the motions (left, right, up, down, growing, shrinking,
    # bouncing); None: uniform
    motion_mix: tuple[float, float, float, float, float, float, float] | None = None


@dataclass
class OptimConfig:
    batch_size: int = 8  # clips per process per step
    max_steps: int = 1000  # optimizer steps of the run
    lr: float = 1e-4  # AdamW peak learning rate
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW moments
    warmup_steps: int = 100  # linear warm-up, then constant
    grad_clip: float = 1.0  # max global gradient norm
    ema_decay: float = 0.999  # EMA of the weights used for sampling and export
    min_snr_gamma: float | None = 5.0  # min-SNR loss weighting (Hang et al. 2023); None: off
    timestep_bias_portion: float = 0.0  # share of timesteps drawn from [timestep_bias_begin, T) instead of [0, T)
    timestep_bias_begin: int = 700  # start of the high-noise range of the timestep bias
    caption_dropout: float = 0.1  # captions replaced by "" for classifier-free guidance
    max_bad_steps: int = 10  # consecutive non-finite losses/gradients before the run stops
    max_augmentation_level: int = 250  # ssr: low-res noise augmentation level ~ U[0, this] (a timestep)


@dataclass
class TrainConfig:
    stage: str = "t2i"  # what is trained: a name of lumiere.stages.STAGES (t2i, stunet, ssr, conditional)
    output_dir: str = "runs/default"  # checkpoints, samples, metrics and the exported model
    seed: int = 0  # model initialisation and the per-step noise
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # Accelerate's autocast
    text_encoder: str | None = None  # None: MiniLM; else a local T5/CLIP directory
    log_every: int = 10  # steps between metric lines
    checkpoint_every: int = 200  # steps between checkpoints
    keep_checkpoints: int = 2  # older checkpoints are deleted
    sample_every: int = 0  # steps between sample clips (0: only at the end)
    sample_prompts: list[str] = field(
        default_factory=lambda: ["a red circle moving right on a black background"]
    )  # prompts of the sample clips
    sample_steps: int = 20  # sampler steps of the sample clips
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self) -> None:
        # The stage names and each stage's own checks come from the registry (lumiere.stages);
        # imported here, not at the top, so that importing this module does not load the networks.
        from lumiere.stages import get_stage

        stage = get_stage(self.stage)
        checks = [
            ("optim.batch_size", self.optim.batch_size >= 1, ">= 1"),
            ("optim.max_steps", self.optim.max_steps >= 1, ">= 1"),
            ("optim.lr", self.optim.lr > 0, "> 0"),
            ("optim.warmup_steps", self.optim.warmup_steps >= 0, ">= 0"),
            ("optim.grad_clip", self.optim.grad_clip > 0, "> 0"),
            ("optim.ema_decay", 0 <= self.optim.ema_decay < 1, "in [0, 1)"),
            ("optim.caption_dropout", 0 <= self.optim.caption_dropout <= 1, "in [0, 1]"),
            ("optim.max_bad_steps", self.optim.max_bad_steps >= 1, ">= 1"),
            ("data.num_frames", self.data.num_frames >= 1, ">= 1"),
            ("data.resolution", self.data.resolution >= 8, ">= 8"),
            ("data.length", self.data.length is None or self.data.length >= 1, ">= 1 or null"),
            ("checkpoint_every", self.checkpoint_every >= 1, ">= 1"),
            ("keep_checkpoints", self.keep_checkpoints >= 1, ">= 1"),
            ("log_every", self.log_every >= 1, ">= 1"),
            ("sample_every", self.sample_every >= 0, ">= 0"),
            ("model.ssr_scale", self.model.ssr_scale >= 1, ">= 1"),
            (
                "data.task_mix",
                min(self.data.task_mix) >= 0 and sum(self.data.task_mix) > 0,
                "4 shares >= 0 (t2v, i2v, inpaint, cinemagraph) with a positive sum",
            ),
            ("optim.max_augmentation_level", 0 <= self.optim.max_augmentation_level <= 999, "in [0, 999]"),
            ("optim.timestep_bias_portion", 0 <= self.optim.timestep_bias_portion <= 1, "in [0, 1]"),
            ("optim.timestep_bias_begin", 0 <= self.optim.timestep_bias_begin <= 999, "in [0, 999]"),
        ]
        for key, ok, accepted in checks:
            if not ok:
                raise ValueError(f"config key {key} must be {accepted}")
        from lumiere.data.styles import STYLES

        if self.data.style is not None and self.data.style not in STYLES:
            raise ValueError(
                f"config key data.style must be null or one of {list(STYLES)}, got {self.data.style!r}"
            )
        if self.data.motion_mix is not None:
            from lumiere.data.shapes import check_motion_mix

            check_motion_mix(self.data.motion_mix, name="config key data.motion_mix")
            if self.data.kind != "shapes" or stage.image_data:
                raise ValueError("config key data.motion_mix applies to shapes data in video stages only")
        if self.data.kind == "folder" and not self.data.path:
            raise ValueError("config key data.path is required when data.kind is 'folder'")
        stage.check_config(self)


# ---------------------------------------------------------------------------------------------
# Validation of plain YAML data against the dataclasses.
# ---------------------------------------------------------------------------------------------


def _check_value(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ValueError(f"config key {key} must be a mapping, got {type(value).__name__}")
        return _from_dict(hint, value, prefix=f"{key}.")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _check_value(value, option, key)
            except ValueError as error:
                errors.append(str(error))
        raise ValueError(errors[0])
    if origin is Literal:
        if value not in args:
            raise ValueError(f"config key {key} must be one of {list(args)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key {key} must be a list, got {type(value).__name__}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ValueError(f"config key {key} must have {len(args)} entries, got {len(value)}")
            return tuple(
                _check_value(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
            )
        inner = args[0] if args else Any
        items = [_check_value(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool):
        raise ValueError(f"config key {key} must be int, got bool")
    if not isinstance(value, hint):
        raise ValueError(f"config key {key} must be {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


def _from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown config key {prefix}{unknown[0]}; known keys: {', '.join(sorted(names))}")
    values = {name: _check_value(value, hints[name], f"{prefix}{name}") for name, value in data.items()}
    return cls(**values)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Validate plain data (as read from YAML) into a ``TrainConfig``."""
    if not isinstance(data, dict):
        raise ValueError(f"a training config must be a mapping, got {type(data).__name__}")
    return _from_dict(TrainConfig, data)


def load_config(path: str | Path) -> TrainConfig:
    """Read and validate a YAML training config."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training config {path} does not exist")
    return config_from_dict(yaml.safe_load(path.read_text()) or {})


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """Plain data for YAML/JSON (tuples become lists)."""
    return yaml.safe_load(yaml.safe_dump(_plain(dataclasses.asdict(config))))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
