"""One Accelerate training loop for every stage (DESIGN.md sec. 2): t2i, stunet, ssr, conditional.

- Objective: v-prediction on a cosine ``DDPMScheduler`` (``lumiere.diffusion``), loss in fp32,
  optional min-SNR weighting, 10% caption dropout for classifier-free guidance.
- Stage ``ssr`` (Sec. 3.2): the high-res clip is the sample; its area-downsampled copy, upsampled
  back and noise-augmented (``lumiere.models.ssr``), is the conditioning. The SSR model works per
  temporal window, so it trains on short clips.
- Stage ``conditional`` (Sec. 4): the base STUNet widened to take a masked clip and its mask
  (``lumiere.models.conditional``), trained on a mix of text-to-video, image-to-video,
  inpainting and cinemagraph conditioning (``data.task_mix``), so one model serves all four.
- AdamW with linear warm-up, gradient clipping, EMA weights (diffusers ``EMAModel``).
- Exact resume: the data stream and every random draw of step ``s`` are functions of
  (seed, s, rank), so restoring weights, optimizer, schedule and EMA continues the same run.
- Atomic checkpoints (``lumiere.checkpoint``); SIGTERM/SIGINT write a final checkpoint; a
  non-finite loss or gradient skips the step, and too many in a row stop the run.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from diffusers import UNet2DConditionModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from lumiere.checkpoint import latest_checkpoint, load_latest_checkpoint, save_checkpoint
from lumiere.config import TrainConfig, config_to_dict, load_config
from lumiere.diffusion import DiffusionObjective, drop_captions
from lumiere.models.conditional import TASKS, MaskCondition, build_conditional_stunet
from lumiere.models.conditional import training_condition as conditional_training_condition
from lumiere.models.inflate import extract_image_model
from lumiere.models.presets import STUNET_PRESETS, build_unet2d
from lumiere.models.ssr import (
    SSRCondition,
    build_ssr_stunet,
    check_ssr_stunet,
    residual_over_bilinear,
    ssr_model_input,
    training_condition,
)
from lumiere.models.stunet import STUNet
from lumiere.models.text import TextEncoder, load_text_encoder

logger = logging.getLogger(__name__)

_SHAPES_LENGTH = 2**31 - 1  # synthetic clips: every global index is a fresh clip
_SSR_SAMPLE_CLIPS = 4  # held-out data clips upsampled as the ssr stage's samples


class TrainingStopped(RuntimeError):
    """The run cannot go on (e.g. too many non-finite steps in a row)."""


@dataclass
class TrainResult:
    step: int  # optimizer steps done
    final_loss: float  # mean loss of the last logging window
    model_dir: Path | None  # exported EMA model (None if the run stopped before max_steps)
    model: torch.nn.Module  # the trained network (not the EMA), unwrapped
    skipped_steps: int  # steps skipped for a non-finite loss or gradient


# ---------------------------------------------------------------------------------------------
# Data: a deterministic stream of batches indexed by step.
# ---------------------------------------------------------------------------------------------


class StepSampler(Sampler[int]):
    """Dataset indices for steps ``start_step, start_step + 1, ...`` of one process.

    Global sample ``k = (step * world + rank) * batch + i``. A finite data set is shuffled per epoch
    with a permutation seeded by (seed, epoch), so the stream is a pure function of the step.
    """

    def __init__(
        self, length: int, batch_size: int, rank: int, world: int, start_step: int, seed: int, shuffle: bool
    ):
        self.length, self.batch_size, self.rank, self.world = length, batch_size, rank, world
        self.start_step, self.seed, self.shuffle = start_step, seed, shuffle
        self._permutation: tuple[int, torch.Tensor] | None = None

    def _index(self, k: int) -> int:
        if not self.shuffle:
            return k % self.length
        epoch, position = divmod(k, self.length)
        if self._permutation is None or self._permutation[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._permutation = (epoch, torch.randperm(self.length, generator=generator))
        return int(self._permutation[1][position])

    def __iter__(self) -> Iterator[int]:
        step = self.start_step
        while True:
            base = (step * self.world + self.rank) * self.batch_size
            for i in range(self.batch_size):
                yield self._index(base + i)
            step += 1


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "video": torch.stack([item["video"] for item in items]),
        "caption": [item["caption"] for item in items],
    }


def build_dataset(config: TrainConfig) -> tuple[Dataset, bool]:
    """The stage's data set (styled when ``data.style`` says so), and whether it is finite."""
    dataset, finite = _build_base_dataset(config)
    if config.data.style is not None:
        from lumiere.data.styles import StyledDataset

        dataset = StyledDataset(dataset, config.data.style)
    return dataset, finite


def _build_base_dataset(config: TrainConfig) -> tuple[Dataset, bool]:
    data = config.data
    if data.kind == "shapes":
        from lumiere.data.shapes import MovingShapes

        mode = "image" if config.stage == "t2i" else "video"
        dataset = MovingShapes(
            length=data.length or _SHAPES_LENGTH,
            num_frames=data.num_frames,
            resolution=data.resolution,
            seed=data.seed,
            mode=mode,
            motion_mix=data.motion_mix,
        )
        return dataset, data.length is not None
    from lumiere.data.video_folder import VideoFolder

    frames = 1 if config.stage == "t2i" else data.num_frames
    return VideoFolder(
        data.path, num_frames=frames, resolution=data.resolution, fps=data.fps, seed=data.seed
    ), True


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The generator of every random draw of one step on one process (noise, timesteps, dropout)."""
    state = np.random.SeedSequence([seed, step, rank]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


# ---------------------------------------------------------------------------------------------
# Stages: which network is trained, on what input, and how it is exported.
# ---------------------------------------------------------------------------------------------


def _is_image_model_dir(path: Path) -> bool:
    config = path / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("_class_name") == "UNet2DConditionModel"


def resolve_model_dir(path: str | Path, component: str) -> Path:
    """``path`` itself, or its ``component`` subfolder when ``path`` is a saved pipeline."""
    path = Path(path)
    if (path / component / "config.json").is_file():
        return path / component
    if (path / "config.json").is_file():
        return path
    raise FileNotFoundError(f"model.init_from={str(path)!r} holds no {component} model (no config.json)")


def _inflation_options(config: TrainConfig) -> dict[str, Any]:
    """Keyword arguments of ``STUNet.from_unet2d`` for the config's preset and overrides."""
    options = dict(STUNET_PRESETS.get(config.model.preset, {}))
    if config.model.temporal_attention_layers is not None:
        options["temporal_attention_layers"] = config.model.temporal_attention_layers
    return options


def build_model(config: TrainConfig) -> torch.nn.Module:
    """The network of the stage, initialised as the config says (seeded by ``config.seed``)."""
    torch.manual_seed(config.seed)
    if config.stage == "t2i":
        if not config.model.init_from:
            return build_unet2d(config.model.preset)
        source = Path(config.model.init_from)
        if _is_image_model_dir(source) or _is_image_model_dir(source / "unet"):
            return UNet2DConditionModel.from_pretrained(resolve_model_dir(source, "unet"))
        # A STUNet (or pipeline): fine-tune its image model alone, e.g. for a style (Sec. 4.1).
        return extract_image_model(STUNet.from_pretrained(resolve_model_dir(source, "stunet")))
    if config.stage in ("stunet", "ssr", "conditional"):
        source = Path(config.model.init_from)
        component = "ssr" if config.stage == "ssr" else "stunet"
        if _is_image_model_dir(source) or _is_image_model_dir(source / "unet"):
            image_model = UNet2DConditionModel.from_pretrained(resolve_model_dir(source, "unet"))
            if config.stage in ("stunet", "conditional"):
                model = STUNet.from_unet2d(image_model, **_inflation_options(config))
            else:  # inflated without temporal resizing, widened for the low-res clip (Sec. 3.2)
                model = build_ssr_stunet(image_model, **_inflation_options(config))
            logger.info("inflated the image model of %s into a %s STUNet", source, config.stage)
        else:
            model = STUNet.from_pretrained(resolve_model_dir(source, component))
            if config.stage == "ssr":
                check_ssr_stunet(model, name=f"model.init_from={str(source)!r}")
        if config.stage == "conditional":  # widened for (C, M), zero weights: starts as the base (Sec. 4)
            model = build_conditional_stunet(model)
        model.freeze_spatial(config.model.freeze_spatial)
        if config.stage in ("ssr", "conditional"):
            # The widened input conv is the only way the conditioning enters: it always trains.
            model.conv_in.requires_grad_(True)
        return model
    raise ValueError(f"stage {config.stage!r} is unknown; stages: 't2i', 'stunet', 'ssr', 'conditional'")


def model_input(config: TrainConfig, video: torch.Tensor) -> torch.Tensor:
    """Clean sample of the stage: images ``[b, c, h, w]`` for t2i, videos ``[b, c, f, h, w]`` otherwise
    (for ssr the high-res clip, at ``data.resolution``)."""
    return video[:, :, 0] if config.stage == "t2i" else video


def stage_condition(
    config: TrainConfig, x0: torch.Tensor, alphas_cumprod: torch.Tensor, generator: torch.Generator
) -> SSRCondition | MaskCondition | None:
    """Conditioning of the stage beyond text: for ssr, the augmented low-res clip and its level;
    for conditional, a masked clip and its known-mask from the task mix (``models.conditional``)."""
    if config.stage == "conditional":
        return conditional_training_condition(
            x0, generator, dict(zip(TASKS, config.data.task_mix, strict=True))
        )[0]
    if config.stage != "ssr":
        return None
    return training_condition(
        x0, config.model.ssr_scale, config.optim.max_augmentation_level, alphas_cumprod, generator=generator
    )


def forward_model(
    model: torch.nn.Module,
    noisy: torch.Tensor,
    timesteps: torch.Tensor,
    states: torch.Tensor,
    mask: torch.Tensor,
    condition: SSRCondition | MaskCondition | None,
) -> torch.Tensor:
    """The network's prediction for a noisy batch, with the stage's conditioning when it has one."""
    if condition is None:
        return model(noisy, timesteps, states, encoder_attention_mask=mask).sample
    return model(
        ssr_model_input(noisy, condition.video),
        timesteps,
        states,
        encoder_attention_mask=mask,
        noise_level=condition.noise_level,
    ).sample


def _as_stunet(model: torch.nn.Module) -> STUNet:
    """A STUNet view of the trained network, for sampling: an image model becomes a one-frame STUNet."""
    if isinstance(model, STUNet):
        return model
    return STUNet.from_unet2d(model, temporal_resizing=False, temporal_attention_layers=0)


def _is_ssr(model: torch.nn.Module) -> bool:
    return isinstance(model, STUNet) and model.noise_level_embedding is not None


def export_model(
    model: torch.nn.Module,
    text_encoder: TextEncoder,
    out_dir: Path,
    ssr_scale: int | None = None,
    ssr_residual: bool = False,
) -> Path:
    """Save the trained network: an image model as ``unet/``, a STUNet as a full pipeline, an SSR
    STUNet as an upsampling-only pipeline (``ssr/``, no base; its ``ssr_scale`` and ``ssr_residual``
    in model_index.json).

    Atomic: written to a sibling folder, then swapped in by renames, so a kill never leaves a
    half-written mix at ``out_dir`` (in the instant between the two renames the previous export
    sits at ``.NAME.previous``); ``lumiere train --resume`` exports again.
    """
    out_dir = Path(out_dir)
    staging = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if isinstance(model, STUNet):
        from lumiere.pipelines import LumierePipeline

        if _is_ssr(model):
            pipe = LumierePipeline.from_stunet(
                None, text_encoder=text_encoder, ssr=model, ssr_scale=ssr_scale, ssr_residual=ssr_residual
            )
        else:
            pipe = LumierePipeline.from_stunet(model, text_encoder=text_encoder)
        pipe.save_pretrained(staging)
    else:
        model.save_pretrained(staging / "unet")
    previous = out_dir.with_name(f".{out_dir.name}.previous")
    shutil.rmtree(previous, ignore_errors=True)
    if out_dir.exists():
        out_dir.rename(previous)
    staging.rename(out_dir)
    shutil.rmtree(previous, ignore_errors=True)
    return out_dir


def write_samples(model, text_encoder, config: TrainConfig, path: Path, device) -> None:
    """Sample clips of ``config.sample_prompts`` with the given weights, written as one grid video.

    For stage ssr: held-out data clips (with their own captions; ``sample_prompts`` is not used),
    each shown as low-res (nearest-upsampled) | SSR output | ground truth.
    """
    from lumiere.data.video_io import make_grid, write_video
    from lumiere.pipelines import LumierePipeline

    if config.stage == "ssr":
        write_ssr_samples(model, text_encoder, config, path)
        return
    stunet = _as_stunet(model)
    frames = 1 if config.stage == "t2i" else config.data.num_frames
    pipe = LumierePipeline.from_stunet(stunet, text_encoder=text_encoder)
    pipe.set_progress_bar_config(disable=True)
    generator = [torch.Generator().manual_seed(i) for i in range(len(config.sample_prompts))]
    clips = pipe(
        list(config.sample_prompts),
        num_frames=frames,
        height=config.data.resolution,
        width=config.data.resolution,
        num_inference_steps=config.sample_steps,
        generator=generator,
    ).frames
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, make_grid(clips, nrow=min(4, len(clips))), fps=config.data.fps)


def write_ssr_samples(model: STUNet, text_encoder: TextEncoder, config: TrainConfig, path: Path) -> None:
    """Upsample a few held-out data clips (with their own captions) with the SSR model."""
    from lumiere.data.video_io import make_grid, write_video
    from lumiere.models.ssr import downsample_video
    from lumiere.pipelines import LumierePipeline

    dataset, _ = build_dataset(config)
    count = min(_SSR_SAMPLE_CLIPS, len(dataset))
    items = [dataset[len(dataset) - 1 - i] for i in range(count)]  # the end of the stream: rarely trained on
    high = torch.stack([item["video"] for item in items])  # [n, 3, f, H, W] in [-1, 1]
    low = downsample_video(high, config.model.ssr_scale)
    pipe = LumierePipeline.from_stunet(
        None,
        text_encoder=text_encoder,
        ssr=model,
        ssr_scale=config.model.ssr_scale,
        ssr_residual=config.model.ssr_residual,
    )
    pipe.set_progress_bar_config(disable=True)
    low_frames = ((low + 1) / 2).clamp(0, 1).permute(0, 2, 3, 4, 1).numpy()  # [n, f, h, w, 3]
    upsampled = pipe.upsample(
        low_frames,
        [item["caption"] for item in items],
        window=None,
        num_inference_steps=config.sample_steps,
        generator=[torch.Generator().manual_seed(i) for i in range(count)],
    ).frames  # [n, f, H, W, 3]
    nearest = low_frames.repeat(config.model.ssr_scale, axis=2).repeat(config.model.ssr_scale, axis=3)
    truth = ((high + 1) / 2).clamp(0, 1).permute(0, 2, 3, 4, 1).numpy()
    rows = np.stack([nearest, upsampled, truth], axis=1).reshape(-1, *truth.shape[1:])  # [3n, f, H, W, 3]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, make_grid(rows, nrow=3), fps=config.data.fps)


# ---------------------------------------------------------------------------------------------
# The loop.
# ---------------------------------------------------------------------------------------------


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


def train(
    config: TrainConfig,
    resume: bool = False,
    stop_after_steps: int | None = None,  # leave (with a checkpoint) after this many steps of this call
    time_limit_s: float | None = None,  # leave (with a checkpoint) after this wall-clock time
    accelerator: Accelerator | None = None,
) -> TrainResult:
    """Train one stage as ``config`` says; with ``resume`` continue from the latest checkpoint."""
    accelerator = accelerator or Accelerator(
        mixed_precision=config.mixed_precision, cpu=not torch.cuda.is_available()
    )
    output_dir = Path(config.output_dir)
    checkpoints = output_dir / "checkpoints"
    is_main = accelerator.is_main_process

    # 1. Network, objective, text encoder.
    model = build_model(config)
    if config.model.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    if config.model.channels_last:
        model.to(memory_format=torch.channels_last)
    objective = DiffusionObjective()
    text_encoder = load_text_encoder(config.text_encoder).to(accelerator.device)

    # 2. Optimizer over the trainable weights, warm-up schedule, EMA of every weight.
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=config.optim.lr, betas=config.optim.betas, weight_decay=config.optim.weight_decay
    )
    lr_schedule = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=config.optim.warmup_steps)
    ema = EMAModel(model.parameters(), decay=config.optim.ema_decay, use_ema_warmup=True, power=2 / 3)
    param_names = [name for name, _ in model.named_parameters()]

    # 3. Resume.
    step, skipped_total = 0, 0
    if resume:
        latest = load_latest_checkpoint(checkpoints)
        if latest is None:
            logger.warning("--resume: no checkpoint in %s, starting from step 0", checkpoints)
        else:
            found, saved = latest
            model.load_state_dict(saved["model"])
            ema_meta = saved["state"]["ema"]
            ema.load_state_dict({**ema_meta, "shadow_params": [saved["ema"][n] for n in param_names]})
            optimizer.load_state_dict(saved["optimizer"]["optimizer"])
            lr_schedule.load_state_dict(saved["optimizer"]["lr_schedule"])
            torch.set_rng_state(saved["rng"])
            step = int(saved["state"]["step"])
            skipped_total = int(saved["state"]["skipped_steps"])
            logger.info("resumed from %s (step %d)", found, step)
    if config.model.compile:
        model = torch.compile(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    if config.model.compile:
        unwrapped = getattr(unwrapped, "_orig_mod", unwrapped)

    # 4. Data stream from this step on.
    dataset, finite = build_dataset(config)
    sampler = StepSampler(
        len(dataset),
        config.optim.batch_size,
        accelerator.process_index,
        accelerator.num_processes,
        step,
        config.data.seed,
        finite,
    )
    loader = DataLoader(
        dataset,
        batch_size=config.optim.batch_size,
        sampler=sampler,
        collate_fn=_collate,
        num_workers=config.data.num_workers,
    )
    batches = iter(loader)

    def checkpoint() -> None:
        accelerator.wait_for_everyone()
        if is_main:
            save_checkpoint(
                checkpoints,
                step,
                model_state=unwrapped.state_dict(),
                ema_state=dict(zip(param_names, ema.shadow_params, strict=True)),
                optimizer_state={
                    "optimizer": optimizer.state_dict(),
                    "lr_schedule": lr_schedule.state_dict(),
                },
                state={
                    "step": step,
                    "skipped_steps": skipped_total,
                    "ema": {k: v for k, v in ema.state_dict().items() if k != "shadow_params"},
                    "config": config_to_dict(config),
                },
                keep=config.keep_checkpoints,
            )
        accelerator.wait_for_everyone()

    def sample_with_ema(name: str) -> None:
        if not is_main:
            return
        ema.store(unwrapped.parameters())
        ema.copy_to(unwrapped.parameters())
        try:
            write_samples(unwrapped, text_encoder, config, output_dir / "samples" / name, accelerator.device)
        finally:
            ema.restore(unwrapped.parameters())

    # 5. Steps.
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.json").write_text(json.dumps(config_to_dict(config), indent=2))
    metrics_path = output_dir / "metrics.jsonl"
    start_time, start_step = time.monotonic(), step
    window_loss, window_count, bad_in_row = 0.0, 0, 0
    final_loss = float("nan")
    progress = tqdm(
        total=config.optim.max_steps, initial=step, disable=not is_main, desc=f"train {config.stage}"
    )
    model.train()
    with _StopFlag() as stop:
        while step < config.optim.max_steps:
            generator = step_generator(config.seed, step, accelerator.process_index)
            batch = next(batches)
            clean = model_input(config, batch["video"]).to(accelerator.device)
            x0 = clean
            if config.stage == "ssr" and config.model.ssr_residual:
                x0 = residual_over_bilinear(clean, config.model.ssr_scale)
            captions = drop_captions(batch["caption"], config.optim.caption_dropout, generator=generator)
            states, mask = text_encoder.encode(captions, device=accelerator.device)
            timesteps = objective.sample_timesteps(
                x0.shape[0],
                generator=generator,
                bias_portion=config.optim.timestep_bias_portion,
                bias_begin=config.optim.timestep_bias_begin,
            ).to(accelerator.device)
            noise = torch.randn(x0.shape, generator=generator).to(accelerator.device)
            noisy = objective.add_noise(x0, noise, timesteps)
            condition = stage_condition(config, clean, objective.scheduler.alphas_cumprod, generator)
            with accelerator.autocast():
                prediction = forward_model(model, noisy, timesteps, states, mask, condition)
            loss = objective.loss(prediction, x0, noise, timesteps, min_snr_gamma=config.optim.min_snr_gamma)
            accelerator.backward(loss)
            grad_norm = accelerator.clip_grad_norm_(params, config.optim.grad_clip)
            # The all-reduced gradient norm is the same on every process, so all skip together.
            if not torch.isfinite(torch.as_tensor(grad_norm)) or not torch.isfinite(loss):
                optimizer.zero_grad(set_to_none=True)
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
            optimizer.step()
            lr_schedule.step()
            optimizer.zero_grad(set_to_none=True)
            ema.step(unwrapped.parameters())
            step += 1
            window_loss += float(loss.detach())
            window_count += 1
            progress.update(1)

            if step % config.log_every == 0 or step == config.optim.max_steps:
                elapsed = time.monotonic() - start_time
                steps_per_s = (step - start_step) / max(elapsed, 1e-9)
                final_loss = window_loss / max(window_count, 1)
                record = {
                    "step": step,
                    "loss": final_loss,
                    "lr": lr_schedule.get_last_lr()[0],
                    "grad_norm": float(grad_norm),
                    "steps_per_s": steps_per_s,
                    "clips_per_s": steps_per_s * config.optim.batch_size * accelerator.num_processes,
                    "elapsed_s": elapsed,
                    "skipped_steps": skipped_total,
                }
                progress.set_postfix(loss=f"{final_loss:.4f}", it_s=f"{steps_per_s:.2f}")
                if is_main:
                    with open(metrics_path, "a") as handle:
                        handle.write(json.dumps(record) + "\n")
                window_loss, window_count = 0.0, 0
            if step % config.checkpoint_every == 0 and step < config.optim.max_steps:
                checkpoint()
            if config.sample_every and step % config.sample_every == 0 and step < config.optim.max_steps:
                sample_with_ema(f"step_{step:08d}.mp4")
            out_of_time = time_limit_s is not None and time.monotonic() - start_time >= time_limit_s
            asked_to_stop = stop_after_steps is not None and step - start_step >= stop_after_steps
            if step < config.optim.max_steps and (stop.requested or out_of_time or asked_to_stop):
                checkpoint()
                progress.close()
                logger.info("stopped at step %d; continue with --resume", step)
                return TrainResult(step, final_loss, None, unwrapped, skipped_total)
    progress.close()
    if window_count:
        final_loss = window_loss / window_count
    checkpoint()

    # 6. Export the EMA weights and write the final samples.
    model_dir = None
    if is_main:
        ema.store(unwrapped.parameters())
        ema.copy_to(unwrapped.parameters())
        try:
            model_dir = export_model(
                unwrapped,
                text_encoder,
                output_dir / "model",
                ssr_scale=config.model.ssr_scale,
                ssr_residual=config.model.ssr_residual,
            )
            write_samples(
                unwrapped, text_encoder, config, output_dir / "samples" / "final.mp4", accelerator.device
            )
        finally:
            ema.restore(unwrapped.parameters())
        logger.info("exported the EMA model to %s", model_dir)
    accelerator.wait_for_everyone()
    return TrainResult(step, final_loss, model_dir, unwrapped, skipped_total)


def train_from_config(
    config_path: str | Path,
    resume: bool = False,
    time_limit_s: float | None = None,
) -> TrainResult:
    """``lumiere train CONFIG.yaml [--resume]``."""
    return train(load_config(config_path), resume=resume, time_limit_s=time_limit_s)
