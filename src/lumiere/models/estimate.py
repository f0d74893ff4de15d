"""What a STUNet costs before any weight exists: parameters, FLOPs and memory (issue 29, part 4).

Every measurement runs the real ``STUNet.forward`` (and its backward) on the meta device: tensors
have shapes and dtypes but no storage, so an IF-I-XL-sized model at 80 frames of 128x128 is
"run" in seconds on a laptop. Nothing is approximated by formulas except the optimizer state:

- parameters: ``spatial_parameters()`` (the image model's) and ``temporal_parameters()`` (what
  inflation inserts, Lumiere Sec. 3.1), and how many of them train;
- FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over one forward (one network evaluation of
  a denoising step) and over forward + backward (a training step; frozen layers compute no weight
  gradients, so it is not simply 3x the forward). Matmuls, convolutions and attention are
  counted; element-wise work is not;
- memory: ``_LiveBytes`` follows every tensor storage the pass allocates and when it is freed,
  as the CUDA caching allocator would see them: activations kept for the backward (with and
  without gradient checkpointing), the peak of a training step and of a no-grad forward.
  Attention runs as PyTorch's memory-efficient kernel, as on CUDA (the attention matrix is never
  materialised).

Axis legend: b clips, c channels, f frames, h, w height, width, n text tokens, d text width.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import weakref
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from lumiere.errors import InvalidArgument
from lumiere.models.presets import STUNET_PRESETS, unet2d_config
from lumiere.models.stunet import STUNet

logger = logging.getLogger(__name__)

TEXT_TOKENS = 77  # T5 / CLIP max_length (IF, SD); our MiniLM uses fewer, so this errs high
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
ADAMW_STATES = 2  # exp_avg and exp_avg_sq, float32, per trained parameter

# ---------------------------------------------------------------------------------------------
# The paper's setting: Imagen's widths are unpublished; DeepFloyd IF is the open pixel cascade
# closest to it (Sec. 3: a 128x128 base model, SSR to 1024x1024 over temporal windows).
# ---------------------------------------------------------------------------------------------

# DeepFloyd/IF-I-XL-v1.0 unet/config.json, as copied in
# https://huggingface.co/lucostiguy11/dreambooth_if/raw/c2434e5b3fefc3f6b54f8983d467437dd7aefbb6/unet/config.json
# (_name_or_path "DeepFloyd/IF-I-XL-v1.0"; the original config.yml of
# https://huggingface.co/ckpt/IF-I-XL-v1.0-16bit agrees: model_channels 704, channel_mult 1,2,3,4,
# num_res_blocks 3, num_head_channels 64, encoder_dim 4096, encoder_channels 2816). The widths are
# 704/1408/2112/2816, not 512/1024/1536/2048. Lumiere's base model runs at 128x128, IF-I at 64x64.
IF_I_XL_UNET: dict[str, Any] = dict(
    sample_size=64,
    in_channels=3,
    out_channels=6,  # learned variance
    down_block_types=("ResnetDownsampleBlock2D",) + ("SimpleCrossAttnDownBlock2D",) * 3,
    mid_block_type="UNetMidBlock2DSimpleCrossAttn",
    up_block_types=("SimpleCrossAttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",),
    block_out_channels=(704, 1408, 2112, 2816),
    layers_per_block=3,
    attention_head_dim=64,
    cross_attention_dim=2816,
    cross_attention_norm="group_norm",
    encoder_hid_dim=4096,  # T5-XXL
    encoder_hid_dim_type="text_proj",
    addition_embed_type="text",
    addition_embed_type_num_heads=64,
    resnet_time_scale_shift="scale_shift",
    act_fn="gelu",
)

# DeepFloyd/IF-II-L-v1.0 unet/config.json, as copied in
# https://huggingface.co/williamberman/dreambooth_me_upscale/blob/main/unet/config.json
# (_name_or_path "DeepFloyd/IF-II-L-v1.0"): the upsampler, its noise level a "timestep" class label.
IF_II_L_UNET: dict[str, Any] = dict(
    sample_size=256,
    in_channels=6,  # noisy clip + upsampled low-res clip
    out_channels=6,
    down_block_types=("ResnetDownsampleBlock2D",) * 3 + ("SimpleCrossAttnDownBlock2D",) * 2,
    mid_block_type="UNetMidBlock2DSimpleCrossAttn",
    up_block_types=("SimpleCrossAttnUpBlock2D",) * 2 + ("ResnetUpsampleBlock2D",) * 3,
    block_out_channels=(160, 320, 640, 960, 1280),
    layers_per_block=(2, 2, 3, 5, 5),
    attention_head_dim=64,
    cross_attention_dim=1280,
    cross_attention_norm="group_norm",
    encoder_hid_dim=4096,
    encoder_hid_dim_type="text_proj",
    addition_embed_type="text",
    addition_embed_type_num_heads=64,
    class_embed_type="timestep",
    mid_block_scale_factor=1.4142271248762552,
    resnet_out_scale_factor=1.4142271248762552,
    resnet_skip_time_act=True,
    resnet_time_scale_shift="scale_shift",
    act_fn="gelu",
)

PAPER_FRAMES, PAPER_SIZE = 80, 128  # Sec. 3: 80 frames (5 s at 16 fps) at 128x128
PAPER_SSR_SIZE = 1024  # Sec. 3.2: the SSR goes to 1024x1024
PAPER_SETTING = "paper"  # the source name for the paper's cascade


@dataclass
class Workload:
    """The clip one network call sees: ``[batch, c, num_frames, height, width]`` plus text."""

    batch: int = 1  # clips per call (classifier-free guidance at sampling: 2 per clip)
    num_frames: int = PAPER_FRAMES
    height: int = PAPER_SIZE
    width: int = PAPER_SIZE
    text_tokens: int = TEXT_TOKENS


@dataclass
class MeasuredModel:
    """A STUNet on the meta device to estimate, with the clip it is estimated for."""

    name: str  # what the rows describe (e.g. "base", "ssr", "stunet")
    model: STUNet
    workload: Workload


@dataclass
class MemoryEstimate:
    """Bytes of one network in one precision (``dtype``: "fp32" or "bf16").

    Training follows Accelerate's mixed precision: float32 weights, gradients and AdamW states;
    under "bf16" the activations are bfloat16 and the forward holds bfloat16 copies of the weights.
    """

    dtype: str
    weights: int  # all parameters and buffers (training: float32; inference: dtype)
    gradients: int  # float32, trained parameters
    optimizer: int  # AdamW's two float32 states per trained parameter
    activations: int  # kept for the backward after a forward (output included)
    activations_checkpointed: int  # the same with gradient checkpointing
    training_peak: int  # weights + gradients + optimizer (+ bf16 weight copies) + pass peak
    training_peak_checkpointed: int
    inference_peak: int  # weights in dtype + the peak of a no-grad forward


@dataclass
class Estimate:
    """Parameters, FLOPs and memory of one STUNet for one ``Workload``."""

    name: str
    workload: Workload
    spatial_parameters: int  # from the image model
    temporal_parameters: int  # inserted by inflation (Sec. 3.1)
    trained_parameters: int
    forward_flops: int  # one network evaluation: one denoising step at this batch
    training_flops: int  # forward + backward of one training step
    memory: dict[str, MemoryEstimate] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Measuring on the meta device.
# ---------------------------------------------------------------------------------------------


class _LiveBytes(TorchDispatchMode):
    """Bytes of the tensor storages allocated under this mode and still alive: ``current``, its
    ``peak``, as an allocator would count them (views share their base's storage)."""

    def __init__(self) -> None:
        super().__init__()
        self.current = self.peak = 0
        self._live: dict[int, int] = {}  # storage key -> bytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in _allocated(func, out):
            self.track(tensor)
        return out

    def track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self._live:
            return
        self._live[key] = storage.nbytes()
        self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self.forget, key)

    def forget(self, key: int) -> None:
        """Stop counting a storage (freed, or counted elsewhere, e.g. as a parameter's gradient)."""
        self.current -= self._live.pop(key, 0)


def _allocated(func: torch._ops.OpOverload, out: Any) -> Iterator[torch.Tensor]:
    """The tensors of ``func``'s result that own storage it allocated: not the views and in-place
    results its schema marks as aliasing an input (``Tensor(a)``). A view of a tensor made before
    the pass (a parameter's ``weight.t()`` in every ``F.linear``, an input's ``unsqueeze``) would
    otherwise count its base as an activation: on the tiny STUNet that alone was 1.2 MB of the
    14.0 MB the meta pass said a forward keeps, against 12.8 MB autograd saves on CPU (whose
    weights and inputs are not activations); for the paper's base, its 6.8 GiB of fp32 linear
    weights, counted a second time in every activation and peak figure."""
    returns = func._schema.returns
    results = (out,) if len(returns) == 1 else tuple(out or ())  # one ``Tensor[]`` is one list
    for returned, value in zip(returns, results, strict=True):
        if returned.alias_info is None:
            yield from _tensors(value)


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)


def _efficient_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
    """``F.scaled_dot_product_attention`` as CUDA runs it: the memory-efficient kernel, which keeps
    only a log-sum-exp per query for the backward ([b, heads, n_q, n_k] never exists). On the meta
    device PyTorch would pick the math path, which materialises the attention matrix."""
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            attn_mask = torch.zeros_like(attn_mask, dtype=query.dtype).masked_fill(~attn_mask, -math.inf)
        attn_mask = attn_mask.to(query.dtype).expand(*query.shape[:-2], query.shape[-2], key.shape[-2])
    return torch.ops.aten._scaled_dot_product_efficient_attention(
        query, key, value, attn_mask, query.requires_grad, dropout_p, is_causal, scale=scale
    )[0]


@contextlib.contextmanager
def _cuda_attention() -> Iterator[None]:
    """diffusers' attention processors call ``F.scaled_dot_product_attention`` through the module."""
    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _efficient_attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def example_inputs(model: STUNet, workload: Workload, dtype: torch.dtype) -> dict[str, Any]:
    """Keyword arguments of ``model.forward`` for ``workload`` on the model's device: what the
    pipeline passes (text states and mask) and what its image model needs (class labels, ...)."""
    config, device, b = model.image_config, model.device, workload.batch
    text_width = config.encoder_hid_dim or config.cross_attention_dim
    text_width = text_width[-1] if isinstance(text_width, (list, tuple)) else text_width
    inputs: dict[str, Any] = dict(
        sample=torch.zeros(
            b,
            model.in_channels,
            workload.num_frames,
            workload.height,
            workload.width,
            device=device,
            dtype=dtype,
        ),
        timestep=torch.full((b,), 500.0, device=device),
        encoder_hidden_states=torch.zeros(b, workload.text_tokens, text_width, device=device, dtype=dtype),
        encoder_attention_mask=torch.ones(b, workload.text_tokens, device=device),
    )
    if model.noise_level_embedding is not None:
        inputs["noise_level"] = torch.full((b,), 100, device=device)
    if model.class_embedding is not None:  # e.g. IF stage II's noise level
        labels = torch.zeros(b, device=device, dtype=torch.long if config.num_class_embeds else dtype)
        inputs["class_labels"] = labels
    if config.time_cond_proj_dim:
        inputs["timestep_cond"] = torch.zeros(b, config.time_cond_proj_dim, device=device, dtype=dtype)
    if config.addition_embed_type == "text_time":  # SDXL: pooled text + 6 time ids
        ids = 6
        pooled = model.add_embedding.linear_1.in_features - ids * config.addition_time_embed_dim
        inputs["added_cond_kwargs"] = dict(
            text_embeds=torch.zeros(b, pooled, device=device, dtype=dtype),
            time_ids=torch.zeros(b, ids, device=device, dtype=dtype),
        )
    return inputs


@dataclass
class _Pass:
    """What one measured pass saw."""

    kept: int  # live bytes after the forward (what the backward needs, plus the output)
    peak: int  # live bytes at the pass's peak (gradients of parameters not included)


@contextlib.contextmanager
def _pass(model: STUNet, dtype: torch.dtype, train: bool, checkpointing: bool) -> Iterator[None]:
    """``model`` set up for one pass: dtype, checkpointing, mode, gradients cleared afterwards."""
    torch.nn.Module.to(model, dtype=dtype)  # ModelMixin.to warns about fp32 modules it has none of
    if checkpointing:
        model.enable_gradient_checkpointing()
    else:
        model.disable_gradient_checkpointing()
    model.train(train)
    try:
        with _cuda_attention(), torch.set_grad_enabled(train):
            yield
    finally:
        model.zero_grad(set_to_none=True)


def _flops(model: STUNet, workload: Workload, train: bool) -> int:
    """FLOPs of one forward (and backward). Counted apart from memory: the counter's module hooks
    keep references of their own, which would show as memory."""
    counter = FlopCounterMode(display=False)
    with _pass(model, torch.float32, train, checkpointing=False), counter:
        output = model(**example_inputs(model, workload, torch.float32)).sample
        if train:
            output.float().square().mean().backward()
    return counter.get_total_flops()


def _measure(
    model: STUNet, workload: Workload, dtype: torch.dtype, train: bool, checkpointing: bool
) -> _Pass:
    """Bytes of one forward (and, with ``train``, its backward) of ``model`` on the meta device."""
    tracker = _LiveBytes()
    with _pass(model, dtype, train, checkpointing):
        inputs = example_inputs(model, workload, dtype)
        handles = [  # a parameter's gradient is counted once, as float32, by the caller
            p.register_post_accumulate_grad_hook(lambda p: tracker.forget(p.grad.untyped_storage()._cdata))
            for p in model.parameters()
            if p.requires_grad
        ]
        try:
            with tracker:
                output = model(**inputs).sample
                kept = tracker.current
                if train:
                    output.float().square().mean().backward()
        finally:
            for handle in handles:
                handle.remove()
    return _Pass(kept=kept, peak=tracker.peak)


def _count(parameters: Iterator[torch.nn.Parameter]) -> int:
    return sum(p.numel() for p in parameters)


def estimate(measured: MeasuredModel, dtypes: tuple[str, ...] = ("fp32", "bf16")) -> Estimate:
    """Parameters, FLOPs and memory of ``measured.model`` (on the meta device) for its workload."""
    model, workload = measured.model, measured.workload
    model.check_input(
        torch.empty(1, model.in_channels, workload.num_frames, workload.height, workload.width, device="meta")
    )
    trained = _count(p for p in model.parameters() if p.requires_grad)
    elements = _count(model.parameters()) + sum(b.numel() for b in model.buffers())
    result = Estimate(
        name=measured.name,
        workload=workload,
        spatial_parameters=_count(model.spatial_parameters()),
        temporal_parameters=_count(model.temporal_parameters()),
        trained_parameters=trained,
        forward_flops=_flops(model, workload, train=False),
        training_flops=_flops(model, workload, train=True),
    )
    for name in dtypes:
        dtype = DTYPES[name]
        logger.info("estimating %s in %s: forward, training step, with checkpointing", measured.name, name)
        inference = _measure(model, workload, dtype, train=False, checkpointing=False)
        training = _measure(model, workload, dtype, train=True, checkpointing=False)
        checkpointed = _measure(model, workload, dtype, train=True, checkpointing=True)
        itemsize = torch.empty((), dtype=dtype).element_size()
        state = 4 * elements + 4 * trained + ADAMW_STATES * 4 * trained  # weights, grads, AdamW
        if dtype != torch.float32:
            state += itemsize * elements  # autocast's low-precision copies of the weights
        result.memory[name] = MemoryEstimate(
            dtype=name,
            weights=4 * elements,
            gradients=4 * trained,
            optimizer=ADAMW_STATES * 4 * trained,
            activations=training.kept,
            activations_checkpointed=checkpointed.kept,
            training_peak=state + training.peak,
            training_peak_checkpointed=state + checkpointed.peak,
            inference_peak=itemsize * elements + inference.peak,
        )
    torch.nn.Module.to(model, dtype=torch.float32)
    return result


# ---------------------------------------------------------------------------------------------
# What to estimate: a training config, a saved model, or the paper's setting.
# ---------------------------------------------------------------------------------------------


def _meta_image_model(unet_config: dict[str, Any]) -> UNet2DConditionModel:
    with torch.device("meta"):
        return UNet2DConditionModel(**{k: v for k, v in unet_config.items() if not k.startswith("_")})


def _meta_stunet(config: dict[str, Any]) -> STUNet:
    """A STUNet from its saved ``config.json`` contents, on the meta device (no weights read)."""
    with torch.device("meta"):
        return STUNet.from_config(config)


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config.json in {str(directory)!r}")
    return json.loads(path.read_text())


def paper_models(workload: Workload | None = None) -> list[MeasuredModel]:
    """The paper's cascade on IF-I-XL / IF-II-L widths: the base STUNet (temporal resizing, the
    paper preset's temporal attention) on ``workload`` (default: 80 frames at 128x128), and the
    SSR STUNet (no temporal resizing, Sec. 3.2) on one window at 1024x1024."""
    from lumiere.pipelines.lumiere import SSR_WINDOW

    workload = workload or Workload()
    with torch.device("meta"):
        base = STUNet.from_unet2d(_meta_image_model(IF_I_XL_UNET), **STUNET_PRESETS["paper"])
        ssr = STUNet.from_unet2d(
            _meta_image_model(IF_II_L_UNET), temporal_resizing=False, **STUNET_PRESETS["paper"]
        )
    for model in (base, ssr):
        model.freeze_spatial()
    scale = PAPER_SSR_SIZE // PAPER_SIZE
    ssr_workload = replace(
        workload, num_frames=SSR_WINDOW, height=workload.height * scale, width=workload.width * scale
    )
    return [
        MeasuredModel("base (IF-I-XL widths)", base, workload),
        MeasuredModel(f"SSR (IF-II-L widths), one {SSR_WINDOW}-frame window", ssr, ssr_workload),
    ]


def _directory_models(directory: Path, workload: Workload) -> list[MeasuredModel]:
    """A saved pipeline (its ``stunet`` and ``ssr``), a STUNet folder or an image-model folder."""
    from lumiere.pipelines.lumiere import MODEL_INDEX, SSR_WINDOW

    index = directory / MODEL_INDEX
    if index.is_file():
        listing = json.loads(index.read_text())
        models = []
        if (directory / "stunet").is_dir():
            models.append(MeasuredModel("stunet", _meta_stunet(_read_config(directory / "stunet")), workload))
        if (directory / "ssr").is_dir():
            scale = int(listing.get("ssr_scale") or 1)
            window = replace(
                workload,
                num_frames=min(workload.num_frames, SSR_WINDOW),
                height=workload.height * scale,
                width=workload.width * scale,
            )
            models.append(MeasuredModel("ssr", _meta_stunet(_read_config(directory / "ssr")), window))
        if not models:
            raise FileNotFoundError(f"pipeline folder {str(directory)!r} holds no stunet/ or ssr/")
    else:
        config = _read_config(directory)
        if config.get("_class_name") == "UNet2DConditionModel":
            with torch.device("meta"):
                model = STUNet.from_unet2d(_meta_image_model(config))
        else:
            model = _meta_stunet(config)
        models = [MeasuredModel(directory.name or "stunet", model, workload)]
    for measured in models:
        measured.model.freeze_spatial()  # the training default (model.freeze_spatial)
    return models


def _config_models(path: Path, overrides: dict[str, int]) -> list[MeasuredModel]:
    """The network a training config trains, built as its stage builds it (``VideoStage.make_model``)
    but on the meta device: from ``model.init_from``'s config.json where it exists, else from
    ``model.preset``'s image model (e.g. before the run that writes ``init_from``)."""
    from lumiere.config import load_config
    from lumiere.stages import VideoStage, get_stage
    from lumiere.stages.base import is_image_model_dir, resolve_model_dir

    config = load_config(path)
    stage = get_stage(config.stage)(config)
    if not isinstance(stage, VideoStage):
        raise ValueError(
            f"stage {config.stage!r} trains an image model, not a STUNet; estimate a video stage's config "
            "(stunet, ssr, conditional)"
        )
    source = Path(config.model.init_from)
    with torch.device("meta"):
        if is_image_model_dir(source) or is_image_model_dir(source / "unet"):
            model = stage.inflate(_meta_image_model(_read_config(resolve_model_dir(source, "unet"))))
        elif (source / stage.component / "config.json").is_file() or (source / "config.json").is_file():
            model = _meta_stunet(_read_config(resolve_model_dir(source, stage.component)))
        else:
            logger.info(
                "model.init_from=%s does not exist yet: estimating preset %r", source, config.model.preset
            )
            model = stage.inflate(_meta_image_model(unet2d_config(config.model.preset)))
        model = stage.adapt(model)
        stage.deepen(model)  # model.coarse_temporal_halvings (long clips)
    model.freeze_spatial(config.model.freeze_spatial)
    if stage.trains_conv_in:
        model.conv_in.requires_grad_(True)
    workload = Workload(
        batch=config.optim.batch_size,
        num_frames=config.data.num_frames,
        height=config.data.resolution,
        width=config.data.resolution,
    )
    workload = replace(workload, **overrides)
    return [MeasuredModel(config.stage, model, workload)]


def models_to_estimate(source: str | Path, **sizes: int | None) -> list[MeasuredModel]:
    """The STUNets ``source`` names, on the meta device, each with its clip.

    ``source``: ``"paper"`` (the paper's cascade on IF widths), a YAML training config (its
    stage's network, sized by its data and batch), or a saved pipeline / STUNet / image-model
    folder (its config.json only). ``sizes`` (``batch``, ``num_frames``, ``height``, ``width``;
    None: the source's own) set the clip; a pipeline's SSR runs at its scale over one window.
    """
    overrides = {key: value for key, value in sizes.items() if value is not None}
    for key, value in overrides.items():
        if value < 1:
            raise InvalidArgument(key, "must be >= 1", value)
    if str(source) == PAPER_SETTING:
        return paper_models(replace(Workload(), **overrides))
    path = Path(source)
    if path.is_dir():
        return _directory_models(path, replace(Workload(), **overrides))
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        return _config_models(path, overrides)
    raise FileNotFoundError(
        f"{str(source)!r} is neither a YAML training config, a model folder, nor {PAPER_SETTING!r}"
    )


def check_workload(measured: MeasuredModel) -> None:
    """Raise ``InvalidArgument`` (naming ``num_frames`` / ``height`` / ``width``) for a clip the
    STUNet cannot take, as the pipeline would."""
    model, workload = measured.model, measured.workload
    factor = model.temporal_factor
    if workload.num_frames % factor:
        raise InvalidArgument(
            "num_frames", f"must be a positive multiple of {factor} for {measured.name}", workload.num_frames
        )
    for name in ("height", "width"):
        if getattr(workload, name) % model.spatial_factor:
            raise InvalidArgument(
                name,
                f"must be a multiple of {model.spatial_factor} for {measured.name}",
                getattr(workload, name),
            )


# ---------------------------------------------------------------------------------------------
# Reporting.
# ---------------------------------------------------------------------------------------------


def _bytes_text(value: int) -> str:
    if value >= 2**30:
        return f"{value / 2**30:,.1f} GiB"
    return f"{value / 2**20:,.1f} MiB"


def _flops_text(value: int) -> str:
    if value >= 1e12:
        return f"{value / 1e12:,.1f} TFLOP"
    return f"{value / 1e9:,.2f} GFLOP"


def _count_text(value: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.2f} {unit}"
    return str(value)


MEMORY_ROWS = (  # MemoryEstimate field -> row label
    ("weights", "weights (fp32 master)"),
    ("gradients", "gradients (fp32)"),
    ("optimizer", "AdamW states (fp32)"),
    ("activations", "activations"),
    ("activations_checkpointed", "activations, checkpointed"),
    ("training_peak", "training step peak"),
    ("training_peak_checkpointed", "training peak, checkpointed"),
    ("inference_peak", "inference forward peak"),
)


def format_estimate(result: Estimate) -> str:
    """A plain-text table of one estimate (markdown-compatible rows)."""
    work = result.workload
    lines = [
        f"{result.name}: batch {work.batch}, {work.num_frames} frames, {work.height}x{work.width}, "
        f"{work.text_tokens} text tokens",
        f"  parameters: {_count_text(result.spatial_parameters)} image + "
        f"{_count_text(result.temporal_parameters)} temporal ({_count_text(result.trained_parameters)} trained)",
        f"  FLOPs: {_flops_text(result.forward_flops)} per denoising step (one forward), "
        f"{_flops_text(result.training_flops)} per training step",
        "",
        "| memory | " + " | ".join(result.memory) + " |",
        "|---|" + "---:|" * len(result.memory),
    ]
    for key, label in MEMORY_ROWS:
        cells = " | ".join(_bytes_text(getattr(memory, key)) for memory in result.memory.values())
        lines.append(f"| {label} | {cells} |")
    return "\n".join(lines)
