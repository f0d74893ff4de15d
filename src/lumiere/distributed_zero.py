"""DeepSpeed ZeRO-2 and ZeRO-3 under ``lumiere train``, driven by lumiere itself (issue 32).

ZeRO (Rajbhandari et al. 2020) splits over the N processes what AdamW needs per weight: the fp32
master weights and both moments (stage 2 also the gradients, reduce-scattered), and at stage 3
the model's weights themselves, gathered per module for its forward and backward. A launch with
``configs/accelerate/deepspeed_zero2.yaml`` or ``deepspeed_zero3.yaml`` sets ``ACCELERATE_USE_DEEPSPEED``
and the file's ``deepspeed_config`` keys as ``ACCELERATE_*`` variables; ``ZeroSettings.from_launch``
reads them and refuses what this path does not do with a ``ValueError`` naming the key.

lumiere drives the DeepSpeed engine itself, on CPU processes (gloo) and on GPUs alike: it builds the
DeepSpeed config from those settings and the training config (``ZeroSettings.deepspeed_config``),
calls ``deepspeed.initialize`` with the network and its AdamW, and steps the engine
(``ZeroRun.backward_and_step``). One path for both because (1) without a GPU Accelerate 1.16 does not
run DeepSpeed at all (a ZeRO launch is plain data parallel with ``cpu=True``; without it Accelerate
sees 1 process where DeepSpeed sees 2), so only this path can be tested here; (2) Accelerate's
plugin steps the optimizer inside ``accelerator.backward``, so the loop could neither read the
global gradient norm before the step nor keep the EMA, checkpoints and export in lumiere's own
formats without the same engine internals used here.

What lumiere reads of the engine is each process's fp32 master partition of every parameter group
(``ZeroRun.masters``; flat, 1/N of the trained weights, what AdamW updates):

- the EMA (diffusers ``EMAModel``) is kept over the master partitions: each process the EMA of its
  own partition; elementwise it is the EMA of the whole weights;
- a checkpoint holds, per process, its master partitions, their EMA and AdamW moments
  (``ZeroRun.optimizer_state``), in lumiere's safetensors shard files, not DeepSpeed's pickles;
- the whole weights (samples, export) are assembled by ``ZeroRun.full_state_dict``: every trained
  weight all-gathered from the master partitions (``deepspeed.utils.safe_get_full_fp32_param``),
  the frozen ones (partitioned too under ZeRO-3) through ``deepspeed.zero.GatheredParameters``.

Frozen weights and buffers are not part of a ZeRO checkpoint: every process builds them the same
way (the stage's network from ``model.init_from``) and they never change. Mixed precision is the
training config's ``mixed_precision`` as autocast over fp32 weights (as under DDP and FSDP), not
DeepSpeed's own bf16 mode (bf16 weights): the engine then runs in fp32 and skips a step whose
gradient norm is not finite, as the loop does under DDP.
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)

ZERO_FILES = "configs/accelerate/deepspeed_zero2.yaml or deepspeed_zero3.yaml"

# Bucket sizes, in elements, of ZeRO's gradient reduce-scatter and weight all-gather, and how many
# gathered ZeRO-3 weights may stay live. DeepSpeed's defaults (5e8 elements for the buckets, 1e9
# live) are sized for throughput on large clusters and keep a whole model's worth of buffers: on the
# memory benchmark's 92 M-weight STUNet (bench/bench_distributed_memory.py, 2 CPU processes) they
# raised ZeRO-3's per-process peak to 2990 MiB, above DDP's 2824; with 1e7 (40 MB of fp32, about
# what Accelerate's "auto" gives a model of hidden size 3,000-4,000) it is 2304 MiB.
ZERO_BUCKETS = {
    "reduce_bucket_size": 10_000_000,
    "allgather_bucket_size": 10_000_000,
    "stage3_prefetch_bucket_size": 10_000_000,
    "stage3_max_live_parameters": 10_000_000,
    "stage3_max_reuse_distance": 10_000_000,
}


@dataclass(frozen=True)
class ZeroSettings:
    """The ZeRO settings of an ``accelerate launch`` (its config file's ``deepspeed_config``)."""

    stage: int  # deepspeed_config.zero_stage: 2 or 3
    gradient_clipping: float | None  # deepspeed_config.gradient_clipping (None: not set)

    @classmethod
    def from_launch(cls, environ: dict[str, str] | None = None) -> ZeroSettings:
        """Read the variables ``accelerate launch`` sets from the file; a ``ValueError`` naming the
        key for what this path does not support."""
        env = os.environ if environ is None else environ

        def value(name: str, default: str) -> str:
            return env.get(name, default).strip().lower()

        if env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE"):
            raise ValueError(
                "deepspeed_config.deepspeed_config_file is not supported by lumiere train: it builds the "
                "DeepSpeed config itself from the accelerate file's keys (zero_stage, gradient_clipping, "
                f"...; see {ZERO_FILES}); remove deepspeed_config_file"
            )
        stage = value("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
        if stage not in ("2", "3"):
            raise ValueError(
                f"deepspeed_config.zero_stage {stage} is not supported by lumiere train: use 2 (optimizer "
                "state and gradients sharded) or 3 (the weights too); stage 0 is data parallel "
                "(configs/accelerate/ddp.yaml)"
            )
        for key, name in (
            ("offload_optimizer_device", "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE"),
            ("offload_param_device", "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE"),
        ):
            if value(name, "none") != "none":
                raise ValueError(
                    f"deepspeed_config.{key} {value(name, 'none')} is not supported by lumiere train (ZeRO-Offload "
                    "is untested here: its CPU Adam and swapped optimizer state are not what the checkpoints "
                    f"read); set it to none, as in {ZERO_FILES}"
                )
        if value("ACCELERATE_DEEPSPEED_ZERO3_INIT", "false") == "true":
            raise ValueError(
                "deepspeed_config.zero3_init_flag true is not supported by lumiere train: every process builds "
                "the network whole (from model.init_from), then ZeRO-3 partitions it; set it to false"
            )
        accumulation = value("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "1")
        if accumulation != "1":
            raise ValueError(
                f"deepspeed_config.gradient_accumulation_steps {accumulation} is not supported by lumiere train: "
                "one step per batch; set it to 1 and raise optim.batch_size or the number of processes"
            )
        clipping = value("ACCELERATE_GRADIENT_CLIPPING", "none")
        return cls(int(stage), None if clipping in ("none", "") else float(clipping))

    def deepspeed_config(self, batch_size: int, processes: int, grad_clip: float) -> dict[str, Any]:
        """The DeepSpeed config of the run: ``batch_size`` clips per process per step (the training
        config's ``optim.batch_size``), gradients clipped to the global norm ``grad_clip``
        (``optim.grad_clip``, which the launch's ``gradient_clipping`` must equal), fp32 weights."""
        if self.gradient_clipping is not None and self.gradient_clipping != grad_clip:
            raise ValueError(
                f"deepspeed_config.gradient_clipping {self.gradient_clipping} of the accelerate config differs "
                f"from the training config's optim.grad_clip {grad_clip}: one run clips to one norm; make them "
                f"equal (or pass --gradient_clipping {grad_clip} to accelerate launch)"
            )
        return {
            "train_micro_batch_size_per_gpu": batch_size,
            "gradient_accumulation_steps": 1,
            "train_batch_size": batch_size * processes,
            "gradient_clipping": grad_clip,
            "zero_optimization": {"stage": self.stage, **ZERO_BUCKETS},
            "zero_allow_untested_optimizer": True,  # torch's AdamW: ZeRO steps it over its partitions
            "bf16": {"enabled": False},  # autocast over fp32 weights (module docstring)
            "fp16": {"enabled": False},
            "steps_per_print": 2**31 - 1,  # lumiere logs the steps itself
        }


class ZeroRun:
    """A network and its AdamW under DeepSpeed's engine: the engine (what the steps call), the
    ZeRO optimizer, and what lumiere reads and writes of its partitions."""

    def __init__(
        self,
        settings: ZeroSettings,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,  # AdamW over the trainable weights
        batch_size: int,
        grad_clip: float,
    ):
        import deepspeed

        if not torch.distributed.is_initialized():
            raise ValueError(
                "DeepSpeed ZeRO needs the process group accelerate launch starts: run lumiere train as "
                f"accelerate launch --config_file {ZERO_FILES} -m lumiere.cli train CONFIG"
            )
        # DeepSpeed's communication on the process group Accelerate started (gloo on CPU, nccl on GPUs).
        deepspeed.init_distributed(dist_backend=torch.distributed.get_backend())
        self.stage = settings.stage
        self.model = model
        self.inner = optimizer  # ZeRO steps it over the master partitions
        config = settings.deepspeed_config(batch_size, torch.distributed.get_world_size(), grad_clip)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=config
        )
        logger.info(
            "DeepSpeed ZeRO-%d on %d processes, driven by lumiere: %s",
            self.stage,
            torch.distributed.get_world_size(),
            [tuple(m.shape) for m in self._masters()],
        )

    # ---- the partitions ---------------------------------------------------------------------

    def _masters(self) -> list[torch.Tensor]:
        """This process's fp32 master partition of each parameter group (flat), as DeepSpeed holds it."""
        if self.stage == 3:
            return list(self.optimizer.fp32_partitioned_groups_flat)
        return list(self.optimizer.single_partition_of_fp32_groups)

    def masters(self) -> list[torch.Tensor]:
        """The master partitions as views sharing their storage (written in place by the EMA and
        a resume). Views: a DeepSpeed tensor's ``ds_id`` would make diffusers' EMA gather it."""
        return [m.detach().requires_grad_(True) for m in self._masters()]

    def masters_changed(self) -> None:
        """After the master partitions were written (a resume): the model's weights follow them."""
        if self.stage == 2:
            self.optimizer.update_lp_params()  # the weights' partition, then all-gathered
            return
        optimizer = self.optimizer
        for lp, hp in zip(
            optimizer.fp16_partitioned_groups_flat, optimizer.fp32_partitioned_groups_flat, strict=True
        ):
            # One tensor only where DeepSpeed shares them (fp32 weights on an accelerator)
            if lp.data_ptr() != hp.data_ptr():
                lp.data.copy_(hp.data)
        persistent = optimizer.persistent_parameters  # small weights kept whole between steps
        if persistent:  # their whole copies are stale: gathered again from the partitions
            persistent[0].partition(persistent)
            persistent[0].all_gather(persistent)

    # ---- a step -----------------------------------------------------------------------------

    def backward_and_step(self, loss: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """The engine's backward (gradients averaged over processes and partitioned) and step
        (the global norm, clipping to it, AdamW on each partition); (the global gradient norm,
        whether the step was taken: DeepSpeed skips one whose norm is not finite)."""
        self.engine.backward(loss)
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        grad_norm = torch.as_tensor(float("nan") if norm is None else float(norm))
        # A non-finite loss gives non-finite gradients: the norm decides, as it does under DDP.
        return grad_norm, bool(self.engine.was_step_applied())

    # ---- checkpoints ------------------------------------------------------------------------

    def optimizer_state(self) -> dict[str, torch.Tensor]:
        """AdamW's state of each master partition: ``optimizer.GROUP.KEY`` (moments, step count).
        Read from the state itself: under ZeRO-3 the inner optimizer's param groups are empty
        between steps, so its ``state_dict`` cannot name them."""
        pieces = {}
        for group, master in enumerate(self._masters()):
            for key, value in self.inner.state.get(master, {}).items():
                pieces[f"optimizer.{group}.{key}"] = value
        return pieces

    def param_groups(self) -> list[dict[str, Any]]:
        """AdamW's hyperparameters by group (lr as the warm-up left it), without the tensors."""
        return [{k: v for k, v in group.items() if k != "params"} for group in self.inner.param_groups]

    def load(
        self,
        masters: list[torch.Tensor],
        pieces: dict[str, torch.Tensor],  # optimizer.GROUP.KEY, as optimizer_state wrote them
        param_groups: list[dict[str, Any]],
        source: Any,  # the checkpoint, for the error
    ) -> None:
        """Restore the master partitions, AdamW's state and hyperparameters, then the weights."""
        current = self._masters()
        if [m.shape for m in masters] != [m.shape for m in current]:
            raise ValueError(
                f"checkpoint {source}: its ZeRO partitions {[tuple(m.shape) for m in masters]} do not fit this "
                f"run's {[tuple(m.shape) for m in current]}: it was written for another network (model.*)"
            )
        for group, (master, saved) in enumerate(zip(current, masters, strict=True)):
            master.data.copy_(saved)
            prefix = f"optimizer.{group}."
            self.inner.state[master] = {  # the step count (a scalar) stays where AdamW keeps it
                name[len(prefix) :]: value.clone().to(master.device) if value.dim() else value.clone()
                for name, value in pieces.items()
                if name.startswith(prefix)
            }
        for group, saved in zip(self.inner.param_groups, param_groups, strict=True):
            group.update({k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
        self.masters_changed()

    # ---- whole weights ----------------------------------------------------------------------

    def full_state_dict(self, keep: bool) -> dict[str, torch.Tensor]:
        """Every weight and buffer whole, on CPU, where ``keep`` (the main process); an empty dict
        elsewhere. Trained weights are gathered from the master partitions (so an EMA copied into
        them is what comes out); every process must call it."""
        from deepspeed.utils import safe_get_full_fp32_param

        model = self.model
        frozen = [p for p in model.parameters() if not p.requires_grad]
        gathered = nullcontext()
        if self.stage == 3:
            import deepspeed

            gathered = deepspeed.zero.GatheredParameters(frozen, modifier_rank=None)
        trained = {name: p for name, p in model.named_parameters() if p.requires_grad}
        whole = {}
        with gathered:
            for name, value in model.state_dict().items():
                if name not in trained and keep:
                    whole[name] = value.detach().cpu().clone()
        for name, param in trained.items():
            value = safe_get_full_fp32_param(param)  # a collective: all-gathered from the partitions
            if keep:
                shape = getattr(param, "ds_shape", param.shape)
                whole[name] = value.detach().reshape(shape).cpu().clone()
        if not keep:
            return {}
        order = list(model.state_dict())
        return {name: whole[name] for name in order}
