"""One Accelerate training loop for every stage of Lumiere (Bar-Tal et al. 2024).

The loop knows no stage by name: the config's ``stage:`` picks a ``lumiere.stages.Stage``
(``t2i``: the image model, Sec. 3; ``stunet``: the Space-Time U-Net, Sec. 3.1; ``ssr``: spatial
super-resolution, Sec. 3.2; ``conditional``: one model for the applications, Sec. 4), which makes
the network, the data, the loss of a batch, the samples and the export. The loop reads as

    build stage -> model -> optimizer/EMA -> resume -> data -> steps -> checkpoint -> export

``export_checkpoint`` exports any checkpoint of a run (the newest, or a given step) without
training, so a run can be measured while it goes on.

- Objective: ``DiffusionObjective.training_loss``, the one training step (v-prediction on a cosine
  ``DDPMScheduler``, loss in fp32, optional min-SNR weighting), with 10% caption dropout for
  classifier-free guidance.
- AdamW with linear warm-up, gradient clipping, EMA weights (diffusers ``EMAModel``).
- Exact resume: the data stream and every random draw of step ``s`` are functions of
  (seed, s, rank) (``lumiere.data.stream``), so restoring weights, optimizer, schedule and EMA
  continues the same run.
- Past one process (``lumiere.distributed``): data parallel (DDP), FSDP2 with parameters,
  gradients, AdamW moments and the EMA sharded, or DeepSpeed ZeRO-2/ZeRO-3 (its fp32 master
  partitions, AdamW moments and their EMA per process; ``lumiere.distributed_zero``); sharded, each
  process writes its own pieces of a checkpoint, and the samples and the export gather the whole
  EMA weights on the main process.
- Atomic checkpoints (``lumiere.checkpoint``); SIGTERM/SIGINT write a final checkpoint; a
  non-finite loss or gradient skips the step, and too many in a row stop the run. Metrics and
  config files are replaced atomically (``lumiere.files``); a full disk or a read-only folder stops
  the run in one ``OutputError`` naming the folder, the last good checkpoint intact.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from lumiere.checkpoint import (
    CheckpointError,
    CheckpointWriteError,
    find_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    load_latest_checkpoint,
    save_checkpoint,
    save_sharded_checkpoint,
)
from lumiere.config import TrainConfig, config_to_dict, load_config
from lumiere.data.stream import step_batches, step_generator
from lumiere.diffusion import DiffusionObjective
from lumiere.distributed import Placement, like, local
from lumiere.errors import OutputError
from lumiere.files import describe_os_error, is_machine_fault, write_text_atomic
from lumiere.stages import get_stage

logger = logging.getLogger(__name__)


class TrainingStopped(RuntimeError):
    """The run cannot go on (e.g. too many non-finite steps in a row)."""


@dataclass
class TrainResult:
    step: int  # optimizer steps done
    final_loss: float  # mean loss of the last logging window
    model_dir: Path | None  # exported EMA model (None if the run stopped before max_steps)
    model: torch.nn.Module  # the trained network (not the EMA), unwrapped; under FSDP its DTensor shards
    skipped_steps: int  # steps skipped for a non-finite loss or gradient


class _StopFlag:
    """Set by SIGTERM/SIGINT so the loop can write a final checkpoint and leave cleanly."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: signals stay with the caller
                pass
        return self

    def _handle(self, signum, frame) -> None:
        logger.warning("signal %d received: writing a checkpoint and stopping", signum)
        self.requested = True

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


# ---------------------------------------------------------------------------------------------
# What a checkpoint holds: the network, its optimizer, warm-up schedule and EMA.
# ---------------------------------------------------------------------------------------------


class _Optimization:
    """AdamW over the trainable weights, linear warm-up, EMA of the trainable weights (for sampling
    and export), all placed as the run's ``Placement`` says: whole on every process, or sharded (the
    EMA then holds the same shards as the weights, and checkpoints are per process). Under ZeRO
    what AdamW updates and the EMA follows are DeepSpeed's fp32 master partitions (``params``)."""

    def __init__(self, model: torch.nn.Module, config: TrainConfig, placement: Placement):
        optim = config.optim
        self.placement = placement

        def make_optimizer(module: torch.nn.Module) -> torch.optim.Optimizer:
            trainable = [p for p in module.parameters() if p.requires_grad]
            return torch.optim.AdamW(
                trainable, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay
            )

        # forward_model: what the steps call (DDP-wrapped, compiled); model: the
        # network itself, what is saved, loaded and exported.
        self.forward_model, self.model, self.optimizer = placement.place(
            model, make_optimizer, config.model.compile, optim.batch_size, optim.grad_clip
        )
        self._params = [p for p in self.model.parameters() if p.requires_grad]
        self.torch_optimizer = getattr(self.optimizer, "optimizer", self.optimizer)  # Accelerate's wrapper's
        self.lr_schedule = get_scheduler(
            "constant_with_warmup", self.torch_optimizer, num_warmup_steps=optim.warmup_steps
        )
        # The EMA of the trained weights: a frozen weight never moves, so it is its own EMA (at the
        # paper's size, Sec. 3.1's frozen image model, this spares a copy of 4.3 B weights).
        self.ema = EMAModel(self.params, decay=optim.ema_decay, use_ema_warmup=True, power=2 / 3)
        self.param_names = [name for name, p in self.model.named_parameters() if p.requires_grad]
        if placement.zero is not None:  # one flat partition per parameter group
            self.param_names = [f"zero_partition_{group}" for group in range(len(self.params))]

    @property
    def params(self) -> list[torch.Tensor]:
        """What AdamW updates and the EMA follows: the trainable weights (under FSDP their
        shards), or under ZeRO this process's master partitions."""
        return self.placement.zero.masters() if self.placement.zero is not None else self._params

    def backward_and_step(self, loss: torch.Tensor, grad_clip: float) -> tuple[torch.Tensor, bool]:
        """Backward, clipping, AdamW (``Placement.backward_and_step``); on a step the warm-up
        schedule and the EMA follow. (The global gradient norm, whether the step was taken.)"""
        grad_norm, stepped = self.placement.backward_and_step(loss, self.optimizer, self.params, grad_clip)
        if stepped:
            self.lr_schedule.step()
            self.ema.step(self.params)
        return grad_norm, stepped

    def load(self, saved: dict[str, Any], path: Path) -> tuple[int, int]:
        """Restore a checkpoint (``load_latest_checkpoint``); returns (step, skipped steps)."""
        state = saved["state"]
        check_layout(state, path, self.placement.name, self.placement.accelerator.num_processes)
        zero = self.placement.zero
        if zero is not None:
            shard = saved["shard"]
            masters = [shard[f"model.{n}"] for n in self.param_names]
            zero.load(masters, shard, state["optimizer_param_groups"], path)
            shadows = [like(m, shard[f"ema.{n}"]) for n, m in zip(self.param_names, self.params, strict=True)]
            self.ema.load_state_dict({**state["ema"], "shadow_params": shadows})
            self.lr_schedule.load_state_dict(state["lr_schedule"])
            torch.set_rng_state(saved["rng"])
            return int(state["step"]), int(state["skipped_steps"])
        if self.placement.sharded:
            shard = saved["shard"]
            model_state = {k[len("model.") :]: v for k, v in shard.items() if k.startswith("model.")}
            ema_state = {k[len("ema.") :]: v for k, v in shard.items() if k.startswith("ema.")}
            optimizer_state = _optimizer_state(shard, state["optimizer_param_groups"], self.torch_optimizer)
            lr_schedule = state["lr_schedule"]
        else:
            model_state, ema_state = saved["model"], saved["ema"]
            optimizer_state, lr_schedule = saved["optimizer"]["optimizer"], saved["optimizer"]["lr_schedule"]
        # like(): under FSDP each piece goes back as the DTensor shard it was saved from.
        current = self.model.state_dict()
        self.model.load_state_dict(
            {k: like(current[k], v) if k in current else v for k, v in model_state.items()}
        )
        shadows = [
            like(s, ema_state[n]) for n, s in zip(self.param_names, self.ema.shadow_params, strict=True)
        ]
        self.ema.load_state_dict({**state["ema"], "shadow_params": shadows})
        self.optimizer.load_state_dict(optimizer_state)
        self.lr_schedule.load_state_dict(lr_schedule)
        torch.set_rng_state(saved["rng"])
        return int(state["step"]), int(state["skipped_steps"])

    def save(self, root: Path, step: int, skipped: int, config: TrainConfig, data: Any = None) -> None:
        """Write checkpoint ``step``: the main process alone when the weights are whole, every
        process its own pieces when sharded (FSDP: its shards; ZeRO: its master partitions)."""
        state = {
            "step": step,
            "skipped_steps": skipped,
            "ema": {k: v for k, v in self.ema.state_dict().items() if k != "shadow_params"},
            "config": config_to_dict(config),
            "data": data,  # shard streams: every process's data position (_data_positions)
        }
        if not self.placement.sharded:
            save_checkpoint(
                root,
                step,
                model_state=self.model.state_dict(),
                ema_state=dict(zip(self.param_names, self.ema.shadow_params, strict=True)),
                optimizer_state={
                    "optimizer": self.optimizer.state_dict(),
                    "lr_schedule": self.lr_schedule.state_dict(),
                },
                state=state,
                keep=config.keep_checkpoints,
            )
            return
        zero = self.placement.zero
        shard = {f"ema.{n}": local(s) for n, s in zip(self.param_names, self.ema.shadow_params, strict=True)}
        if zero is not None:  # the master partitions, their EMA and AdamW moments
            shard |= {f"model.{n}": m for n, m in zip(self.param_names, self.params, strict=True)}
            shard |= zero.optimizer_state()
            param_groups = zero.param_groups()
        else:
            optimizer_state = self.torch_optimizer.state_dict()
            shard |= {f"model.{k}": local(v) for k, v in self.model.state_dict().items()}
            for index, moments in optimizer_state["state"].items():
                shard |= {f"optimizer.{index}.{key}": local(value) for key, value in moments.items()}
            param_groups = optimizer_state["param_groups"]
        state |= {
            "processes": self.placement.accelerator.num_processes,
            "placement": self.placement.name,
            "optimizer_param_groups": param_groups,
            "lr_schedule": self.lr_schedule.state_dict(),
        }
        accelerator = self.placement.accelerator
        save_sharded_checkpoint(
            root,
            step,
            shard,
            state,
            config.keep_checkpoints,
            accelerator.process_index,
            self.placement.exchange,
        )

    @contextmanager
    def ema_weights(self) -> Iterator[torch.nn.Module]:
        """The model with its EMA weights in place, restored afterwards."""
        self.ema.store(self.params)
        self.ema.copy_to(self.params)
        try:
            yield self.model
        finally:
            self.ema.restore(self.params)

    @contextmanager
    def whole_ema_model(self, build: Callable[[], torch.nn.Module]) -> Iterator[torch.nn.Module | None]:
        """The network with its EMA weights, whole, on the main process; None on the others.
        Whole weights: the model itself. Sharded: every process must enter (the shards are
        all-gathered), and the main process gets a copy made by ``build`` holding them."""
        is_main = self.placement.accelerator.is_main_process
        if not self.placement.sharded:
            if not is_main:
                yield None
                return
            with self.ema_weights() as model:
                yield model
            return
        with self.ema_weights() as model:  # ZeRO: the EMA in the master partitions, read from them
            whole = self.placement.whole_state(model, keep=is_main)
        if not is_main:
            yield None
            return
        with torch.random.fork_rng():  # building draws initial weights: the run's RNG is left as it was
            copy = build()
        copy.load_state_dict(whole)
        yield copy


def check_layout(state: dict[str, Any], path: Path, placement: str, world: int) -> None:
    """A ``ValueError`` naming the checkpoint when it was written by a run placed otherwise than
    this one (``placement``: ``Placement.name``; ``world``: its number of processes)."""
    written = state.get("processes")  # sharded checkpoints: the number of processes
    written_by = state.get("placement", "fsdp") if written else "replicated"  # FSDP's carried no name
    names = {"fsdp": "FSDP", "zero2": "DeepSpeed ZeRO-2", "zero3": "DeepSpeed ZeRO-3"}
    if placement != "replicated" and (written != world or written_by != placement):
        how = (
            f"by {written} {names.get(written_by, written_by)} processes"
            if written
            else "whole (one process or DDP)"
        )
        raise ValueError(
            f"checkpoint {path} was written {how}; this run shards over {world} processes under "
            f"{names.get(placement, placement)}: resume it with the launch that wrote it (same accelerate config "
            "and number of processes), or start a new run from its exported model"
        )
    if placement == "replicated" and written:
        raise ValueError(
            f"checkpoint {path} holds the shards of {written} {names.get(written_by, written_by)} processes; "
            "resume it under the same accelerate config and number of processes"
        )


def _optimizer_state(
    shard: dict[str, torch.Tensor], param_groups: list[dict[str, Any]], optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """AdamW's ``state_dict`` from a process's shard (``optimizer.INDEX.KEY`` pieces) and the
    saved param groups: each moment placed as its parameter is (a DTensor shard), the step count
    (a scalar) as it is."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, piece in shard.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            param = params[int(index)]
            state.setdefault(int(index), {})[key] = piece if piece.dim() == 0 else like(param, piece)
    return {"state": state, "param_groups": param_groups}


class _Metrics:
    """The mean loss of each logging window, written to ``metrics.jsonl`` with speed figures."""

    def __init__(self, path: Path, start_step: int, clips_per_step: int, write: bool):
        self.path, self.start_step, self.clips_per_step, self.write = path, start_step, clips_per_step, write
        self.start_time = time.monotonic()
        self.window_loss, self.window_count = 0.0, 0
        self.final_loss = float("nan")  # mean loss of the last window

    def add(self, loss: torch.Tensor) -> None:
        self.window_loss += float(loss.detach())
        self.window_count += 1

    def elapsed(self) -> float:
        return time.monotonic() - self.start_time

    def log(self, step: int, lr: float, grad_norm: torch.Tensor, skipped: int, progress: tqdm) -> None:
        """Close the window: one line of ``metrics.jsonl`` (main process) and the progress bar."""
        elapsed = self.elapsed()
        steps_per_s = (step - self.start_step) / max(elapsed, 1e-9)
        self.final_loss = self.window_loss / max(self.window_count, 1)
        record = {
            "step": step,
            "loss": self.final_loss,
            "lr": lr,
            "grad_norm": float(grad_norm),
            "steps_per_s": steps_per_s,
            "clips_per_s": steps_per_s * self.clips_per_step,
            "elapsed_s": elapsed,
            "skipped_steps": skipped,
        }
        self.last = record  # what the trackers log
        progress.set_postfix(loss=f"{self.final_loss:.4f}", it_s=f"{steps_per_s:.2f}")
        if self.write:
            # The file is rewritten beside itself and renamed (no fsync: it is a log): a full disk
            # or a kill leaves the previous lines whole, never half a line.
            previous = self.path.read_text() if self.path.is_file() else ""
            write_text_atomic(self.path, previous + json.dumps(record) + "\n", fsync=False)
        self.window_loss, self.window_count = 0.0, 0

    def finish(self) -> float:
        """The final loss: that of the open window if it holds steps."""
        if self.window_count:
            self.final_loss = self.window_loss / self.window_count
        return self.final_loss


# ---------------------------------------------------------------------------------------------
# The loop.
# ---------------------------------------------------------------------------------------------


def train(
    config: TrainConfig,
    resume: bool = False,
    stop_after_steps: int | None = None,  # leave (with a checkpoint) after this many steps of this call
    time_limit_s: float | None = None,  # leave (with a checkpoint) after this wall-clock time
    accelerator: Accelerator | None = None,
) -> TrainResult:
    """Train one stage as ``config`` says; with ``resume`` continue from the latest checkpoint.

    A disk fault while writing (a full disk, a read-only output folder: a checkpoint, a metrics
    line, a sample, the export) stops the run with an ``OutputError`` naming the folder and the
    last good checkpoint, which stays intact; ``resume`` continues from it, bit for bit.
    """
    try:
        return _train(config, resume, stop_after_steps, time_limit_s, accelerator)
    except CheckpointWriteError:  # says all already: the folder, the space needed, the last checkpoint
        raise
    except OSError as error:
        if not isinstance(error, OutputError) and not is_machine_fault(error):
            raise  # not a write: e.g. a data folder that does not exist
        last = latest_checkpoint(Path(config.output_dir) / "checkpoints")
        kept = f"the last good checkpoint, {last}, is intact" if last else "no checkpoint was written yet"
        raise OutputError(
            error.errno,
            f"training stopped: {error if isinstance(error, OutputError) else describe_os_error(error)}; "
            f"{kept}: free space or make {config.output_dir} writable, then continue with --resume",
        ) from error


def _train(
    config: TrainConfig,
    resume: bool,
    stop_after_steps: int | None,
    time_limit_s: float | None,
    accelerator: Accelerator | None,
) -> TrainResult:
    output_dir = Path(config.output_dir)
    accelerator = accelerator or Accelerator(
        mixed_precision=config.mixed_precision,
        cpu=not torch.cuda.is_available(),
        log_with=_available_trackers(config.log_with),
        project_dir=output_dir,
    )
    device, is_main = accelerator.device, accelerator.is_main_process
    checkpoints = output_dir / "checkpoints"

    # 1. Placement (whole on each process, or sharded: lumiere.distributed; read from the launch,
    #    so a setting it cannot run stops here), stage, network, objective, text encoder.
    placement = Placement.of(accelerator)
    stage = get_stage(config.stage)(config)
    model = stage.build_model()
    if config.model.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    if config.model.channels_last:
        model.to(memory_format=torch.channels_last)
    objective = DiffusionObjective(stage.noise_scheduler())
    text_encoder = stage.load_text_encoder().to(device)

    # 2. The network placed, optimizer, warm-up schedule, EMA.
    opt = _Optimization(model, config, placement)
    model = opt.forward_model

    # 3. Resume.
    step, skipped_total = 0, 0
    rank = accelerator.process_index if placement.sharded else None  # sharded: each reads its own file
    latest = load_latest_checkpoint(checkpoints, rank) if resume else None
    if placement.sharded and len(set(placement.exchange(latest and str(latest[0])))) > 1:
        raise CheckpointError(
            f"the processes found different latest checkpoints in {checkpoints} (a damaged file?)"
        )
    if resume and latest is None:
        logger.warning("--resume: no checkpoint in %s, starting from step 0", checkpoints)
    if latest is not None:
        step, skipped_total = opt.load(latest[1], latest[0])
        logger.info("resumed from %s (step %d)", latest[0], step)

    # 4. Data stream from this step on.
    dataset, finite = stage.build_dataset()
    batches = _data_stream(dataset, finite, config, accelerator, step, latest[1]["state"] if latest else None)

    def checkpoint() -> None:
        accelerator.wait_for_everyone()
        positions = _data_positions(batches, accelerator)  # every process takes part in the gather
        if is_main or placement.sharded:  # sharded: every process writes its own shards
            opt.save(checkpoints, step, skipped_total, config, data=positions)
        accelerator.wait_for_everyone()

    def sample_with_ema(name: str) -> None:
        with opt.whole_ema_model(stage.build_model) as ema_model:  # sharded: every process gathers
            if ema_model is not None:
                stage.write_samples(ema_model, text_encoder, output_dir / "samples" / name, device)
                _log_sample_clip(accelerator, output_dir / "samples" / name, step)

    # 5. Steps.
    if is_main:
        write_text_atomic(output_dir / "config.json", json.dumps(config_to_dict(config), indent=2))
    _start_trackers(accelerator, config)
    start_step, bad_in_row = step, 0
    metrics = _Metrics(
        output_dir / "metrics.jsonl", step, config.optim.batch_size * accelerator.num_processes, is_main
    )
    progress = tqdm(
        total=config.optim.max_steps, initial=step, disable=not is_main, desc=f"train {config.stage}"
    )
    model.train()
    with _StopFlag() as stop:
        while step < config.optim.max_steps:
            generator = step_generator(config.seed, step, accelerator.process_index)
            loss = stage.training_loss(
                model, objective, next(batches), text_encoder, generator, device, placement.autocast
            )
            grad_norm, stepped = opt.backward_and_step(loss, config.optim.grad_clip)
            # The all-reduced gradient norm is the same on every process, so all skip together.
            if not stepped:
                skipped_total += 1
                bad_in_row += 1
                logger.warning(
                    "step %d: non-finite loss or gradient, skipped (%d in a row)", step, bad_in_row
                )
                if bad_in_row >= config.optim.max_bad_steps:
                    raise TrainingStopped(
                        f"{bad_in_row} consecutive steps had a non-finite loss or gradient (optim.max_bad_steps="
                        f"{config.optim.max_bad_steps}); lower optim.lr or check the data. Last good checkpoint: "
                        f"{latest_checkpoint(checkpoints)}"
                    )
                step += 1  # the step's data and noise are consumed, as in an uninterrupted run
                continue
            bad_in_row = 0
            step += 1
            metrics.add(loss)
            progress.update(1)

            if step % config.log_every == 0 or step == config.optim.max_steps:
                metrics.log(step, opt.lr_schedule.get_last_lr()[0], grad_norm, skipped_total, progress)
                accelerator.log(metrics.last, step=step)
            if step % config.checkpoint_every == 0 and step < config.optim.max_steps:
                checkpoint()
            if config.sample_every and step % config.sample_every == 0 and step < config.optim.max_steps:
                sample_with_ema(f"step_{step:08d}.mp4")
            out_of_time = time_limit_s is not None and metrics.elapsed() >= time_limit_s
            asked_to_stop = stop_after_steps is not None and step - start_step >= stop_after_steps
            # One process's signal or clock stops all at this step (each writes its part).
            stop_now = placement.any_process(stop.requested or out_of_time or asked_to_stop)
            if step < config.optim.max_steps and stop_now:
                checkpoint()
                progress.close()
                logger.info("stopped at step %d; continue with --resume", step)
                accelerator.end_training()
                return TrainResult(step, metrics.final_loss, None, opt.model, skipped_total)
    progress.close()
    final_loss = metrics.finish()
    checkpoint()

    # 6. Export the EMA weights (whole: gathered from the shards under FSDP), the final samples.
    model_dir = None
    with opt.whole_ema_model(stage.build_model) as ema_model:
        if ema_model is not None:
            model_dir = stage.export(ema_model, text_encoder, output_dir / "model")
            stage.write_samples(ema_model, text_encoder, output_dir / "samples" / "final.mp4", device)
            _log_sample_clip(accelerator, output_dir / "samples" / "final.mp4", step)
            logger.info("exported the EMA model to %s", model_dir)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(step, final_loss, model_dir, opt.model, skipped_total)


def export_checkpoint(
    config: TrainConfig,
    out_dir: str | Path,
    step: int | None = None,  # the checkpoint's step; None: the newest that verifies
    accelerator: Accelerator | None = None,
) -> Path:
    """``lumiere train CONFIG --export DIR``: the EMA model of one of the run's checkpoints, written
    to ``out_dir`` as the run's own end would export it at that step, without training. The run's
    folder is only read, so the run may go on meanwhile (checkpoints are published atomically). A
    sharded run's checkpoint is exported under the same launch (every process reads its pieces)."""
    accelerator = accelerator or Accelerator(
        mixed_precision=config.mixed_precision, cpu=not torch.cuda.is_available()
    )
    placement = Placement.of(accelerator)
    checkpoints = Path(config.output_dir) / "checkpoints"
    rank = accelerator.process_index if placement.sharded else None
    if step is None:
        found = load_latest_checkpoint(checkpoints, rank)
        if found is None:
            raise ValueError(f"no checkpoint to export under {checkpoints} (config key output_dir)")
        path, saved = found
    else:
        path = find_checkpoint(checkpoints, step)
        saved = load_checkpoint(path, rank)
    stage = get_stage(config.stage)(config)
    opt = _Optimization(stage.build_model(), config, placement)
    opt.load(saved, path)
    text_encoder = stage.load_text_encoder().to(accelerator.device)
    out_dir = Path(out_dir)
    with opt.whole_ema_model(stage.build_model) as ema_model:
        if ema_model is not None:
            stage.export(ema_model, text_encoder, out_dir)
            logger.info("exported the EMA model of %s to %s", path, out_dir)
    accelerator.wait_for_everyone()
    return out_dir


# ---------------------------------------------------------------------------------------------
# Shard streams (their data position is part of the checkpoint) and Accelerate's trackers.
# ---------------------------------------------------------------------------------------------


def _data_stream(
    dataset: Any, finite: bool, config: TrainConfig, accelerator: Accelerator, step: int, saved: dict | None
) -> Iterator[dict[str, Any]]:
    """The batches from ``step`` on: a step-indexed stream (``step_batches``), or for tar shards a
    ``ShardStream`` continuing from the position saved in the checkpoint's state."""
    from lumiere.data.streaming import ShardStream, StreamingClips

    rank, world = accelerator.process_index, accelerator.num_processes
    if isinstance(dataset, StreamingClips):
        positions = (saved or {}).get("data") or []
        position = positions[rank] if rank < len(positions) else None
        if saved is not None and position is None:
            logger.warning(
                "the checkpoint holds no data position: the shard stream starts from its beginning"
            )
        return ShardStream(dataset, rank, world, config.data.num_workers, position)
    return step_batches(
        dataset, finite, config.optim.batch_size, rank, world, step, config.data.seed, config.data.num_workers
    )


def _data_positions(batches: Any, accelerator: Accelerator) -> list[dict[str, Any]] | None:
    """Every process's shard-stream position, by rank (None for step-indexed streams)."""
    if not hasattr(batches, "position"):
        return None
    if accelerator.num_processes == 1:
        return [batches.position()]
    from accelerate.utils import gather_object

    return gather_object([batches.position()])


def _available_trackers(names: list[str]) -> list[str]:
    """``log_with`` less the trackers whose package is not installed (a warning names them)."""
    from accelerate.utils import is_tensorboard_available, is_wandb_available

    installed = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}
    missing = [name for name in names if name in installed and not installed[name]()]
    if missing:
        logger.warning("log_with: %s not installed, metrics go to metrics.jsonl only for them", missing)
    return [name for name in names if name not in missing]


def _start_trackers(accelerator: Accelerator, config: TrainConfig) -> None:
    """Start the trackers (main process) under ``output_dir/logs`` with the config as hyperparameters."""
    if not accelerator.log_with:
        return

    def flat(prefix: str, value: Any) -> dict[str, Any]:
        if isinstance(value, dict):
            return {k: v for key, item in value.items() for k, v in flat(f"{prefix}{key}.", item).items()}
        scalar = isinstance(value, (int, float, str, bool))
        return {prefix.rstrip("."): value if scalar else str(value)}

    accelerator.init_trackers("logs", config=flat("", config_to_dict(config)))


def _log_sample_clip(accelerator: Accelerator, path: Path, step: int) -> None:
    """The frames of a written sample clip, to the trackers that take images (TensorBoard: one
    image of the frames side by side per sample)."""
    if not accelerator.log_with or not path.is_file():
        return
    from lumiere.data.video_io import read_video

    frames, _ = read_video(path)  # [f, h, w, 3] uint8
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({f"samples/{path.stem}": frames}, step=step, dataformats="NHWC")
        elif hasattr(tracker, "log_images"):
            tracker.log_images({f"samples/{path.stem}": list(frames)}, step=step)


def train_from_config(
    config_path: str | Path,
    resume: bool = False,
    time_limit_s: float | None = None,
    overrides: Sequence[str] = (),
) -> TrainResult:
    """``lumiere train CONFIG.yaml [--resume] [--set KEY=VALUE ...]``."""
    return train(load_config(config_path, overrides), resume=resume, time_limit_s=time_limit_s)
