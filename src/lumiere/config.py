"""Training configuration: YAML files validated into dataclasses.

Every hyperparameter lives in one dataclass field with a one-line reason. Config keys are a public
API: an unknown key or a value of the wrong type is a ``ValueError`` naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
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
    ssr_residual: bool = False  # ssr: diffuse the detail over the upsampled low-res clip, not the clip
    ssr_upsample: Literal["bilinear", "bicubic"] = "bilinear"  # ssr: how the low-res clip is upsampled (input and residual base)
    ssr_residual_scale: float = 1.0  # ssr with ssr_residual: the detail is multiplied by this in training (its std ~0.05 -> ~0.5, the data's)
    lora_rank: int = 0  # stunet: rank of LoRA adapters on the spatial layers, trained beside the temporal ones; 0: none
    lora_alpha: float | None = None  # LoRA scale numerator (scale alpha / rank); None: the rank (scale 1)
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"]
    )  # spatial modules given LoRA, by name suffix (diffusers' choice: the attention projections)
    coarse_temporal_halvings: int = 0  # stunet/conditional: halve time this many more times below the mid block (STUNet.deepen_time, long clips); 0: as loaded
    temporal_conv_text: bool = False  # stunet/conditional: the temporal convs read the mean text state (STUNet.add_text_to_temporal_convs, long clips); false: as loaded
    lora_fuse: bool = False  # export: merge the LoRA into the spatial weights instead of writing pytorch_lora_weights.safetensors


@dataclass
class DataConfig:
    kind: Literal["shapes", "folder", "shards", "photos"] = "shapes"  # synthetic MovingShapes, a VideoFolder, streamed tar shards, or camera moves over photos (lumiere.data.photos)
    path: str | None = None  # folder of videos (kind "folder"); shard paths, folder, glob or {a..b} pattern (kind "shards")
    num_frames: int = 16  # frames per clip (1 for stage t2i)
    resolution: int = 32  # square side in pixels
    fps: float = 8.0  # frame rate the folder videos are resampled to
    length: int | None = None  # distinct synthetic clips (None: a fresh clip every time)
    seed: int = 0  # the data stream is a function of (seed, step): resume is exact
    num_workers: int = 0  # DataLoader worker processes
    style: str | None = (
        None  # a pixel style of lumiere.data.styles (style fine-tune demo, Sec. 4.1); None: off
    )
    task_mix: tuple[float, ...] = (
        0.4,
        0.25,
        0.2,
        0.15,
    )  # conditional: shares of t2v, i2v, inpaint, cinemagraph (4), and optionally keyframes (a 5th: a cascade's TSR)
    keyframe_step: int = 5  # conditional, task keyframes: every keyframe_step-th frame is known (80 -> 16: 5)
    # shapes video stages: shares of the motions (left, right, up, down, growing, shrinking,
    # bouncing); None: uniform
    motion_mix: tuple[float, float, float, float, float, float, float] | None = None
    long_motion_share: float = 0.0  # shapes video stages: share of clips with a motion that spans the whole clip (lumiere.data.shapes.LONG_MOTIONS); 0: none
    # shares of the long motions (left and back, right and back, up and back, down and back, growing
    # then shrinking, shrinking then growing, bouncing slowly, bouncing quickly); None: uniform
    long_motion_mix: tuple[float, float, float, float, float, float, float, float] | None = None
    frame_step: int = 1  # shapes: clips are every frame_step-th frame of a num_frames * frame_step clip (a cascade's keyframes)
    source_frames: int | None = None  # shapes: clips are a random window of num_frames of a clip this long (a cascade's TSR windows); None: whole clips
    cache_dir: str | None = None  # latent training: VAE-latent and text caches (`lumiere data cache`); None: encode every step
    vae_batch_size: int = 8  # latent training: frames per VAE encoder call (its memory does not grow with the clip)
    shuffle_buffer: int = 256  # shards: clips each reader shuffles among (memory: that many clip references)
    short_clips: Literal["skip", "loop"] = "skip"  # shards: a clip shorter than the shortest length is skipped or looped
    buckets: list[tuple[int, int]] | None = None  # shards: (h, w) sizes, a clip goes to the closest aspect, a batch holds one; None: data.resolution squares
    length_buckets: list[int] | None = None  # shards: frame counts, a clip takes the longest it holds; None: data.num_frames
    photos: list[str] | None = None  # photos: scikit-image photograph names; None: lumiere.data.photos.TRAIN_PHOTOS (the held-out PHOTOS stay for evaluation)
    shapes_fraction: float = 0.0  # photos: share of MovingShapes clips mixed in, so a model keeps what it knew of them
    soft_share: float = 0.0  # photos: share of the photo clips blurred (lumiere.data.photos.soften), as soft real footage is


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
    log_with: list[str] = field(
        default_factory=lambda: ["tensorboard"]
    )  # Accelerate trackers of metrics and sample clips (tensorboard, wandb, ...; []: metrics.jsonl only)
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
            ("model.ssr_residual_scale", self.model.ssr_residual_scale > 0, "> 0"),
            (
                "data.task_mix",
                len(self.data.task_mix) in (4, 5) and min(self.data.task_mix) >= 0 and sum(self.data.task_mix) > 0,
                "4 or 5 shares >= 0 (t2v, i2v, inpaint, cinemagraph, and optionally keyframes) with a positive sum",
            ),
            ("data.keyframe_step", self.data.keyframe_step >= 2, ">= 2"),
            ("optim.max_augmentation_level", 0 <= self.optim.max_augmentation_level <= 999, "in [0, 999]"),
            ("optim.timestep_bias_portion", 0 <= self.optim.timestep_bias_portion <= 1, "in [0, 1]"),
            ("optim.timestep_bias_begin", 0 <= self.optim.timestep_bias_begin <= 999, "in [0, 999]"),
            ("data.shuffle_buffer", self.data.shuffle_buffer >= 1, ">= 1"),
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
        if self.data.kind != "photos" and (
            self.data.photos is not None or self.data.shapes_fraction or self.data.soft_share
        ):
            raise ValueError(
                "config keys data.photos, data.shapes_fraction and data.soft_share apply to data.kind 'photos' only"
            )
        for key in ("shapes_fraction", "soft_share"):
            if not 0 <= getattr(self.data, key) <= 1:
                raise ValueError(f"config key data.{key} must be in [0, 1], got {getattr(self.data, key)}")
        if self.data.frame_step < 1 or (self.data.frame_step > 1 and self.data.kind != "shapes"):
            raise ValueError("config key data.frame_step must be >= 1, and 1 unless data.kind is 'shapes'")
        if self.data.source_frames is not None and (
            self.data.kind != "shapes" or self.data.frame_step != 1 or self.data.source_frames < self.data.num_frames
        ):
            raise ValueError(
                "config key data.source_frames must be >= data.num_frames, with data.kind 'shapes' and "
                f"data.frame_step 1 (or null); got {self.data.source_frames}"
            )
        if self.model.coarse_temporal_halvings < 0:
            raise ValueError("config key model.coarse_temporal_halvings must be >= 0")
        if self.model.coarse_temporal_halvings and self.stage not in ("stunet", "conditional"):
            raise ValueError(
                f"config key model.coarse_temporal_halvings applies to stages 'stunet' and 'conditional', not {self.stage!r}"
            )
        if self.model.temporal_conv_text and self.stage not in ("stunet", "conditional"):
            raise ValueError(
                f"config key model.temporal_conv_text applies to stages 'stunet' and 'conditional', not {self.stage!r}"
            )
        if self.data.long_motion_share or self.data.long_motion_mix is not None:
            from lumiere.data.shapes import check_long_motions

            check_long_motions(
                self.data.long_motion_share,
                self.data.long_motion_mix,
                names=("config key data.long_motion_share", "config key data.long_motion_mix"),
            )
            if self.data.kind != "shapes" or stage.image_data:
                raise ValueError(
                    "config keys data.long_motion_share and data.long_motion_mix apply to shapes data in video stages only"
                )
        if self.data.kind in ("folder", "shards") and not self.data.path:
            raise ValueError(f"config key data.path is required when data.kind is {self.data.kind!r}")
        stage.check_config(self)


# ---------------------------------------------------------------------------------------------
# Validation of plain YAML data against the dataclasses.
# ---------------------------------------------------------------------------------------------


def _type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "text", bool: "a boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _check_value(value: Any, hint: Any, key: str) -> Any:
    """``value`` validated against the type hint ``hint`` (dataclasses, unions, literals, lists,
    tuples, scalars): generic over the dataclass fields, so new fields need no code here. A
    ``ValueError`` names ``key`` and what it must be."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ValueError(f"config key {key} must be a mapping of keys to values, got {_type_name(value)}")
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
        raise ValueError(errors[0] + (" or null" if type(None) in args else ""))
    if origin is Literal:
        if value not in args:
            raise ValueError(f"config key {key} must be one of {list(args)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key {key} must be a list, got {_type_name(value)}")
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
        value = float(value)
    if hint is float and isinstance(value, str) and _is_number(value):
        # PyYAML reads 1e-4 (no dot) as text: say how to write it rather than "got str".
        raise ValueError(f"config key {key} must be a number, got the text {value!r} (YAML reads it as text: "
                         f"write it with a dot, e.g. {_yaml_float(value)})")  # fmt: skip
    if hint in (int, float) and isinstance(value, bool):
        raise ValueError(f"config key {key} must be {'an integer' if hint is int else 'a number'}, got {value}")
    if not isinstance(value, hint):
        what = {int: "an integer", float: "a number", str: "text", bool: "true or false"}.get(hint, hint.__name__)
        raise ValueError(f"config key {key} must be {what}, got {_type_name(value)} {value!r}")
    if hint is float and not math.isfinite(value):
        raise ValueError(f"config key {key} must be a finite number, got {value}")
    return value


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _yaml_float(text: str) -> str:
    """``1e-4`` -> ``1.0e-4``: how YAML 1.1 (PyYAML) wants a float in scientific notation."""
    mantissa, _, exponent = text.lower().partition("e")
    return f"{mantissa if '.' in mantissa else mantissa + '.0'}e{exponent}" if exponent else text


def _from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key in names:
            continue
        if not isinstance(key, str):
            raise ValueError(f"config key {prefix}{key!r} must be text, got {_type_name(key)}")
        close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
        hint = f"did you mean {prefix}{close[0]}? " if close else ""
        raise ValueError(f"unknown config key {prefix}{key}; {hint}known keys: {', '.join(sorted(names))}")
    values = {name: _check_value(value, hints[name], f"{prefix}{name}") for name, value in data.items()}
    return cls(**values)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Validate plain data (as read from YAML) into a ``TrainConfig``."""
    if not isinstance(data, dict):
        raise ValueError(f"a training config must be a mapping of keys to values, got {_type_name(data)}")
    return _from_dict(TrainConfig, data)


def read_yaml(path: str | Path) -> Any:
    """The YAML document in ``path``; a ``ValueError`` naming the file (and the line and column of
    a syntax error), ``FileNotFoundError`` for a missing file."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a YAML file")
    if not path.is_file():
        raise FileNotFoundError(f"training config {path} does not exist")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path} is not a YAML text file (byte 0x{raw[error.start]:02x} at offset {error.start} is not UTF-8)"
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        if isinstance(error, yaml.reader.ReaderError):  # a character YAML refuses: no mark, a position
            where = f" line {text.count(chr(10), 0, error.position) + 1}"
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        context = getattr(error, "context", None)
        raise ValueError(
            f"{path}{where}: invalid YAML: {problem}" + (f" ({context})" if context else "")
        ) from None


def apply_overrides(data: dict[str, Any], overrides: typing.Sequence[str]) -> dict[str, Any]:
    """``data`` (a config as read from YAML) with each ``KEY=VALUE`` of ``overrides`` set, in order.

    KEY is dotted (``model.init_from``, ``optim.max_steps``); VALUE is read as YAML (``400``,
    ``1.0e-4``, ``[1, 0, 0, 0]``, ``null``, a path). Keys are checked later, with the file's own
    (``config_from_dict``); a malformed override is a ``ValueError`` naming it.
    """
    result = dict(data)
    for override in overrides:
        key, sep, text = override.partition("=")
        parts = [part.strip() for part in key.split(".")]
        if not sep or not all(parts):
            raise ValueError(f"--set {override!r} must be KEY=VALUE, with KEY dotted, e.g. optim.max_steps=400")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ValueError(f"--set {override!r}: the value {text!r} is not valid YAML") from None
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = {}
            elif not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ValueError(f"--set {override!r}: config key {where} is a value, not a section")
            node[part] = child = dict(child)  # a copy: the caller's data stays as read
            node = child
        node[parts[-1]] = value
    return result


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> TrainConfig:
    """Read and validate a YAML training config, with ``overrides`` (``KEY=VALUE``, see
    ``apply_overrides``) set on top: every problem is a ``ValueError`` naming the file and the key
    (YAML syntax: the line), ``FileNotFoundError`` for a missing file."""
    path = Path(path)
    data = read_yaml(path)
    if data is not None and not isinstance(data, dict):
        raise ValueError(f"{path}: a training config must be a mapping of keys to values, got {_type_name(data)}")
    data = apply_overrides({} if data is None else data, overrides)
    try:
        return config_from_dict(data)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """Plain data for YAML/JSON (tuples become lists)."""
    return yaml.safe_load(yaml.safe_dump(_plain(dataclasses.asdict(config))))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
