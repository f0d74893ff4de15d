"""Training past one process: where the network's weights live, and how they come back whole.

The paper's models train on many accelerators (Bar-Tal et al. 2024, Sec. 3 and App. B); a
fine-tune of an inflated IF or SDXL needs its parameters, gradients and optimizer state split
over processes. ``Placement.of(accelerator)`` says which of three ways a run uses:

    replicated  one process, or data parallel (DDP): every process holds every weight
    fsdp        PyTorch FSDP2 (``fully_shard``): each process holds 1/N of every parameter,
                gradient, AdamW moment and EMA weight, one FSDP unit per STUNet level (the Space-Time
                down/mid/up blocks of ``configs/accelerate/fsdp.yaml``)
    zero        DeepSpeed ZeRO-2 or ZeRO-3 (``deepspeed_zero2.yaml``, ``deepspeed_zero3.yaml``): each
                process holds 1/N of the fp32 master weights, AdamW moments and EMA (ZeRO-3: of the
                weights too); lumiere drives DeepSpeed's engine itself, on CPU and GPUs alike
                (``lumiere.distributed_zero``, which says why)

Under ``fsdp`` the weights are ``DTensor`` shards. On GPUs Accelerate's FSDP plugin shards the
model in ``accelerator.prepare``; with no GPU, Accelerate 1.16 does not turn FSDP on
(``accelerate launch`` with ``fsdp.yaml`` gives ``DistributedType.MULTI_CPU``, plain data
parallel), so ``Placement.place`` applies ``fully_shard`` itself with the same plugin settings
(wrap classes, reshard after forward, activation checkpointing): the same ``lumiere train``
under the same config file shards on CPU processes (gloo) too.

Each process steps its own pieces: ``Placement.backward_and_step`` (backward, the global gradient
norm clipped, the optimizer step, or none when the norm is not finite) is Accelerate's under DDP and
FSDP and DeepSpeed's engine under ZeRO. What reads whole weights (the validation samples, the export)
gets them from ``Placement.whole_state``: every shard or partition all-gathered, kept on the main
process. Sharded checkpoints hold each process's own pieces
(``lumiere.checkpoint.save_sharded_checkpoint``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

if TYPE_CHECKING:
    from lumiere.distributed_zero import ZeroRun, ZeroSettings

logger = logging.getLogger(__name__)

# The FSDP units when the plugin names none: the STUNet's levels (lumiere.models.stunet) and the
# image U-Net's blocks (diffusers' UNet2DConditionModel, stage t2i).
DEFAULT_WRAP_CLASSES = (
    "SpaceTimeDownBlock",
    "SpaceTimeMidBlock",
    "SpaceTimeUpBlock",
    "CrossAttnDownBlock2D",
    "DownBlock2D",
    "UNetMidBlock2DCrossAttn",
    "CrossAttnUpBlock2D",
    "UpBlock2D",
)


@dataclass
class Placement:
    """How one run spreads its network over processes (see the module docstring)."""

    kind: Literal["replicated", "fsdp", "zero"]
    accelerator: Accelerator
    shards_itself: bool = False  # fsdp applied here: Accelerate runs plain data parallel on CPU
    zero_settings: ZeroSettings | None = None  # zero: the launch's (stage, clipping)
    zero: ZeroRun | None = None  # zero: the engine, once ``place`` started it

    @classmethod
    def of(cls, accelerator: Accelerator) -> Placement:
        kind = accelerator.distributed_type
        if kind == DistributedType.FSDP:
            if not accelerator.is_fsdp2:
                raise ValueError(
                    "the accelerate config asks for FSDP version 1; lumiere trains under FSDP2 "
                    "(fsdp_version: 2, as in configs/accelerate/fsdp.yaml)"
                )
            return cls("fsdp", accelerator)
        # On CPU Accelerate starts DeepSpeed launches as plain data parallel (MULTI_CPU, with the
        # right ranks); on GPUs as DEEPSPEED. Either way lumiere drives the engine itself.
        if kind == DistributedType.DEEPSPEED or _asked("ACCELERATE_USE_DEEPSPEED"):
            from lumiere.distributed_zero import ZeroSettings

            settings = ZeroSettings.from_launch()
            if importlib.util.find_spec("deepspeed") is None:
                raise ValueError(
                    "the accelerate config asks for DeepSpeed ZeRO, which is not installed: pip install "
                    "deepspeed==0.19.8 (or launch with configs/accelerate/fsdp.yaml, which shards the same state)"
                )
            if kind == DistributedType.DEEPSPEED:
                _build_models_whole()
            return cls("zero", accelerator, zero_settings=settings)
        fsdp_asked = _asked("ACCELERATE_USE_FSDP")
        if fsdp_asked and kind == DistributedType.MULTI_CPU:
            return cls("fsdp", accelerator, shards_itself=True)
        return cls("replicated", accelerator)

    @property
    def sharded(self) -> bool:
        """Whether each process holds only its shards of the training state (checkpoints are per
        process)."""
        return self.kind in ("fsdp", "zero")

    @property
    def name(self) -> str:
        """How a checkpoint's ``state.json`` names the placement that wrote it."""
        return f"zero{self.zero_settings.stage}" if self.zero_settings else self.kind

    def place(
        self,
        model: torch.nn.Module,
        make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer],
        compile_model: bool = False,
        batch_size: int = 1,  # clips per process per step (DeepSpeed's config states it)
        grad_clip: float = 1.0,  # the global norm gradients are clipped to (DeepSpeed clips in its step)
    ) -> tuple[torch.nn.Module, torch.nn.Module, torch.optim.Optimizer]:
        """The network as the steps call it, the network itself (its weights: what EMA,
        checkpoints and export read) and its optimizer, built by ``make_optimizer`` over the
        weights as placed."""
        accelerator = self.accelerator
        if self.kind == "zero":
            from lumiere.distributed_zero import ZeroRun

            if compile_model:
                raise ValueError("model.compile is not supported under DeepSpeed ZeRO: set it false")
            if accelerator.mixed_precision == "fp16":
                raise ValueError(
                    "mixed_precision: fp16 is not supported under DeepSpeed ZeRO (no loss scaling on this path): "
                    "use bf16 or no"
                )
            model.to(accelerator.device)
            self.zero = ZeroRun(self.zero_settings, model, make_optimizer(model), batch_size, grad_clip)
            return self.zero.engine, model, self.zero.optimizer
        if self.shards_itself:
            _fully_shard(model, _fsdp_plugin())
            optimizer = make_optimizer(model)
            return (torch.compile(model) if compile_model else model), model, optimizer
        optimizer = make_optimizer(model)
        forward_model = torch.compile(model) if compile_model else model
        forward_model, optimizer = accelerator.prepare(forward_model, optimizer)
        return forward_model, accelerator.unwrap_model(forward_model), optimizer

    def autocast(self) -> AbstractContextManager:
        """The forward's mixed precision: the training config's ``mixed_precision``. Under ZeRO
        torch's autocast over the fp32 weights (Accelerate's is off under DeepSpeed on GPUs)."""
        if self.kind != "zero":
            return self.accelerator.autocast()
        if self.accelerator.mixed_precision == "bf16":
            return torch.autocast(self.accelerator.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def backward_and_step(
        self,
        loss: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        params: list[torch.Tensor],  # what the optimizer updates
        max_norm: float,
    ) -> tuple[torch.Tensor, bool]:
        """Backward, the gradients clipped to the global norm ``max_norm``, the optimizer step;
        (the global gradient norm, whether the step was taken). A non-finite loss or norm takes
        none (the norm is all-reduced: every process decides alike); the gradients are cleared."""
        if self.zero is not None:
            return self.zero.backward_and_step(loss)
        self.accelerator.backward(loss)
        grad_norm = self.accelerator.clip_grad_norm_(params, max_norm)
        finite = bool(torch.isfinite(torch.as_tensor(grad_norm))) and bool(torch.isfinite(loss))
        if finite:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return grad_norm, finite

    def whole_state(self, model: torch.nn.Module, keep: bool) -> dict[str, torch.Tensor]:
        """Every weight and buffer of ``model`` whole, on CPU, where ``keep``; every process calls it."""
        if self.zero is not None:
            return self.zero.full_state_dict(keep)
        return full_state_dict(model, keep)

    # ---- agreement between processes ---------------------------------------------------------

    def any_process(self, flag: bool) -> bool:
        """True on every process when ``flag`` is true on any: a stop asked of one process (a
        signal, its own clock) is a stop of all at the same step, so none waits in a collective."""
        if self.accelerator.num_processes == 1:
            return flag
        value = torch.tensor([float(flag)], device=self.accelerator.device)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return bool(value.item())

    def exchange(self, value: Any) -> list[Any]:
        """Every process's ``value``, by rank, on every process (a barrier as well)."""
        if self.accelerator.num_processes == 1:
            return [value]
        gathered: list[Any] = [None] * self.accelerator.num_processes
        torch.distributed.all_gather_object(gathered, value)
        return gathered


def _build_models_whole() -> None:
    """Under Accelerate's DeepSpeed state (GPUs) transformers would build every model it loads
    partitioned by ``deepspeed.zero.Init`` (ZeRO-3); lumiere builds the network and the text
    encoder whole on every process and hands the trained network to the engine itself."""
    try:
        from transformers.integrations import unset_hf_deepspeed_config
    except ImportError:
        return
    unset_hf_deepspeed_config()


def _asked(variable: str) -> bool:
    """Whether ``accelerate launch`` set ``variable`` (its config file asked for that plugin)."""
    return os.environ.get(variable, "false").lower() == "true"


def _fsdp_plugin():
    """Accelerate's FSDP settings, read from the environment ``accelerate launch`` sets from the
    config file (``FSDP_*``)."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    return FullyShardedDataParallelPlugin()


def _fully_shard(model: torch.nn.Module, plugin: Any) -> None:
    """FSDP2 on ``model`` in place: each module of a wrap class is one unit (innermost first),
    the root the last; activation checkpointing through the model's own switch
    (``STUNet.enable_gradient_checkpointing``), which keeps parameter names unchanged."""
    from torch.distributed.fsdp import fully_shard

    if plugin.fsdp_version != 2:
        raise ValueError(
            f"the accelerate config asks for FSDP version {plugin.fsdp_version}; lumiere trains under "
            "FSDP2 (fsdp_version: 2, as in configs/accelerate/fsdp.yaml)"
        )
    names = set(plugin.transformer_cls_names_to_wrap or DEFAULT_WRAP_CLASSES)
    if plugin.activation_checkpointing and getattr(model, "_supports_gradient_checkpointing", False):
        model.enable_gradient_checkpointing()
    reshard = bool(plugin.reshard_after_forward)
    units = [module for module in model.modules() if type(module).__name__ in names]
    if not units:
        logger.warning(
            "FSDP: no module of %s's is of a wrap class (%s): the whole network is one unit",
            type(model).__name__,
            ", ".join(sorted(names)),
        )
    for unit in reversed(units):  # children before their parents
        fully_shard(unit, reshard_after_forward=reshard)
    fully_shard(model, reshard_after_forward=reshard)
    logger.info("FSDP2 on CPU processes: %d units of %s plus the root", len(units), sorted(names))


# ---------------------------------------------------------------------------------------------
# Shards in and out: local pieces for checkpoints, whole tensors for samples and the export.
# ---------------------------------------------------------------------------------------------


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's piece of ``tensor`` (the tensor itself when it is not a ``DTensor``)."""
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def like(template: torch.Tensor, piece: torch.Tensor) -> torch.Tensor:
    """``piece`` (this process's, as ``local`` gave it) placed as ``template`` is: a ``DTensor``
    on the same mesh with the same placements and global shape, or ``piece`` on ``template``'s
    device (a checkpoint is read onto the CPU; the EMA must live where its weights do)."""
    from torch.distributed.tensor import DTensor

    if not isinstance(template, DTensor):
        return piece.to(template.device)
    return DTensor.from_local(
        piece.to(template.device),
        template.device_mesh,
        template.placements,
        run_check=False,
        shape=template.shape,
        stride=template.stride(),
    )


def full_state_dict(model: torch.nn.Module, keep: bool) -> dict[str, torch.Tensor]:
    """Every weight and buffer of ``model`` whole, on CPU, where ``keep`` (the main process); an
    empty dict elsewhere. Every process must call it (each sharded tensor is all-gathered)."""
    from torch.distributed.tensor import DTensor

    whole = {}
    for name, value in model.state_dict().items():
        if isinstance(value, DTensor):
            value = value.full_tensor()
        if keep:
            whole[name] = value.detach().cpu().clone()
    return whole
