"""The paper's ablation at small scale (issue 7, figure 5): one pass over the whole clip against a
keyframes + temporal super-resolution cascade and against UNet3DConditionModel, at equal training
wall-clock on MovingShapes.

Lumiere's claim (Bar-Tal et al. 2024, Sec. 1 and 3): a base model that sees every frame at once gives
globally coherent motion, where a cascade that makes distant keyframes and fills in with temporal
super-resolution (TSR) cannot recover fast or periodic motion aliased away between keyframes.
Bouncing shapes (periodic up-down motion) are the test: with one keyframe every 4 frames, a
bounce of 1.5-2.5 periods per 16 frames is close to aliasing.

Arms (each trained for ``--minutes`` of wall-clock, same data stream, same recipe as
``lumiere.train``: v-prediction (min-SNR weights only with ``--min-snr-gamma``), caption dropout,
AdamW with warm-up, EMA). Equal wall-clock is measured on one machine at one time: before the
first arm trains, every stage of every arm takes a few steps side by side, and each stage gets the
steps that fill its share of ``--minutes`` at its measured speed (``--budget calibrated``, the
default; the budgets go to ``OUT/calibration.json`` and every later run into that folder reuses
them). Trained against its own clock instead (``--budget wallclock``), an arm run in a session
whose host ran 1.6x slower got 1.6x fewer steps (docs/benchmarks.md).

- ``stunet``: our STUNet (``--preset``), one pass over the whole clip;
- ``cascade``: a base STUNet of the same preset trained on every ``--stride``-th frame, and a TSR
  model that fills in: the same preset inflated *without* temporal resizing (every frame at every
  level, like the SSR) and conditioned as the paper's conditional model is (Sec. 4): its first
  conv is widened (``STUNet.widen_input``) to take concat(noisy clip, C, M), C = each keyframe held
  until the next (nearest-frame upsampling), M = 1 on keyframes. Keyframes are noised during
  training and the level is embedded (``noise_level_conditioning``): conditioning augmentation
  (Ho et al. 2021, "Cascaded Diffusion Models for High Fidelity Image Generation"), so the TSR
  copes with generated keyframes. The two models split the arm's budget (``--tsr-share``);
- ``unet3d``: diffusers UNet3DConditionModel at the STUNet's parameter count (``peers.py``).

With ``--init-from`` (an image model saved by ``lumiere train`` stage t2i) every arm starts from the
same image weights: the STUNets inflate it; the UNet3D takes the image model's widths and loads
every spatial weight whose name and shape agree (diffusers' 3-D blocks keep the 2-D names).

Reported per arm: steps and clips seen, final loss, probe accuracy (all attributes, motion),
motion accuracy on bouncing prompts on their own, temporal consistency of generated and real clips,
Frechet probe distance to real clips, sampling seconds per clip. Writes ``results.json`` and a grid
video per arm to ``--out``.

    python bench/ablation.py --minutes 60 --threads 2 --out runs/ablation      # ~3 h of training
    python bench/ablation.py --init-from runs/t2i_default/model --minutes 60 --out runs/ablation_init
    # the same, one arm per session: each call trains only the arms not yet in results.json, and
    # resumes an arm stopped mid-training (a killed session) from its state, written every 5 min
    python bench/ablation.py --init-from runs/t2i_default/model --minutes 60 --out runs/ablation_init \\
        --arms stunet --keep-done
    python bench/ablation.py --preset tiny --resolution 16 --frames 8 --minutes 0.05 \\
        --eval-count 2 --bouncing-count 1 --eval-steps 2 --out /tmp/ablation_smoke   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import UNet2DConditionModel, UNet3DConditionModel
from diffusers.training_utils import EMAModel
from torch import nn

import harness
import peers
from loops import guided_sample
from lumiere.data.shapes import MovingShapes, parse_caption, random_caption
from lumiere.data.stream import step_generator
from lumiere.diffusion import DiffusionObjective, drop_captions
from lumiere.eval.evaluate import draw_prompts, frechet_distance, probe_features, real_clips_for
from lumiere.eval.probe import ATTRIBUTES, probe_clip, score
from lumiere.models.presets import STUNET_PRESETS, build_unet2d
from lumiere.models.stunet import STUNet
from lumiere.models.text import NULL_PROMPT, load_text_encoder
from lumiere.stages import resolve_model_dir

ARMS = ("stunet", "cascade", "unet3d")
TSR_CONDITION_CHANNELS = 4  # C (3: keyframes held to the next one) + M (1: 1 on keyframes)


# ---------------------------------------------------------------------------------------------
# The TSR model of the cascade.
# ---------------------------------------------------------------------------------------------


class KeyframeTSR(nn.Module):
    """Temporal super-resolution: a STUNet without temporal resizing, conditioned on keyframes.

    ``forward(video [b, 3, f, h, w], timestep [b], text [b, n, d], conditioning [b, 4, f, h, w],
    noise_level [b]) -> [b, 3, f, h, w]``; ``conditioning`` comes from ``condition(keyframes)``.
    """

    frame_multiple = 1

    def __init__(self, stunet: STUNet, stride: int):
        super().__init__()
        if stunet.temporal_factor != 1:
            raise ValueError("the TSR must keep every frame: build its STUNet with temporal_resizing=False")
        stunet.widen_input(TSR_CONDITION_CHANNELS)  # zero weights: starts as the unconditional model
        self.net = stunet
        self.stride = stride

    def condition(self, keyframes: torch.Tensor) -> torch.Tensor:
        """Keyframes ``[b, 3, k, h, w]`` (frames 0, s, 2s, ...) -> C and M ``[b, 4, k*s, h, w]``."""
        held = keyframes.repeat_interleave(self.stride, dim=2)  # [b, 3, f, h, w]
        mask = torch.zeros_like(held[:, :1])  # [b, 1, f, h, w]
        mask[:, :, :: self.stride] = 1
        return torch.cat([held, mask], dim=1)

    def forward(self, video, timestep, text, conditioning, noise_level):
        model_input = torch.cat([video, conditioning], dim=1)  # [b, 3 + 4, f, h, w]
        return self.net(model_input, timestep, text, noise_level=noise_level).sample


# ---------------------------------------------------------------------------------------------
# Arms: which networks, trained on what, for what share of the budget.
# ---------------------------------------------------------------------------------------------


@dataclass
class Stage:
    """One network of an arm, trained for ``share`` of the arm's wall-clock budget."""

    name: str
    model: nn.Module
    loss: Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]
    share: float
    log: dict[str, Any] = field(default_factory=dict)


def diffusion_loss(
    objective: DiffusionObjective,
    model: nn.Module,
    x0: torch.Tensor,  # [b, c, f, h, w] clean clips
    text: torch.Tensor,  # [b, n, d]
    generator: torch.Generator,
    min_snr_gamma: float | None,
    **model_kwargs: torch.Tensor,
) -> torch.Tensor:
    """lumiere.train's loss, the one training step (``DiffusionObjective.training_loss``): v-prediction
    on the cosine schedule, min-SNR weights when a gamma is given; ``model`` is any arm's network."""
    return objective.training_loss(
        lambda noisy, timesteps, _: model(noisy, timesteps, text, **model_kwargs),
        x0,
        generator=generator,
        min_snr_gamma=min_snr_gamma,
    )


def tsr_loss(
    objective, stride: int, max_level: int, min_snr_gamma, model, clips, text, generator
) -> torch.Tensor:
    """The TSR's loss: the whole clip, conditioned on its own keyframes noised to a random level."""
    keyframes = clips[:, :, ::stride]  # [b, 3, k, h, w]
    level = torch.randint(0, max_level + 1, (clips.shape[0],), generator=generator)  # [b]
    noisy_keys = objective.add_noise(keyframes, torch.randn(keyframes.shape, generator=generator), level)
    conditioning = model.condition(noisy_keys)
    return diffusion_loss(
        objective, model, clips, text, generator, min_snr_gamma, conditioning=conditioning, noise_level=level
    )


def load_image_model(path: str | None) -> UNet2DConditionModel | None:
    return None if path is None else UNet2DConditionModel.from_pretrained(resolve_model_dir(path, "unet"))


def stunet_of(args, image_model: UNet2DConditionModel | None, **options: Any) -> STUNet:
    """The preset's STUNet (or ``--init-from``'s image model inflated), with ``options`` overriding."""
    torch.manual_seed(args.seed)
    source = (
        image_model if image_model is not None else build_unet2d(args.preset, sample_size=args.resolution)
    )
    stunet = STUNet.from_unet2d(source, **{**STUNET_PRESETS[args.preset], **options})
    if args.freeze_spatial:
        stunet.freeze_spatial()
    return stunet


def unet3d_of(args, image_model: UNet2DConditionModel | None) -> nn.Module:
    """The parameter-matched UNet3D peer, or one with the image model's widths and spatial weights."""
    if image_model is None:
        return peers.build("unet3d", args.preset, args.resolution, seed=args.seed)
    torch.manual_seed(args.seed)
    image_config = dict(image_model.config)
    config = peers.unet3d_config(image_config, args.resolution, tuple(image_config["block_out_channels"]))
    config["norm_num_groups"] = image_config["norm_num_groups"]  # the image model's, so weights mean the same
    unet3d = UNet3DConditionModel(**config)
    own, image = unet3d.state_dict(), image_model.state_dict()
    shared = {k: v for k, v in image.items() if k in own and own[k].shape == v.shape}
    unet3d.load_state_dict(shared, strict=False)
    print(f"unet3d: loaded {len(shared)} of the image model's {len(image)} tensors")
    if args.freeze_spatial:
        for name, param in unet3d.named_parameters():
            param.requires_grad_(name not in shared)
    return peers.UNet3DDenoiser(unet3d)


def stage_shares(arm: str, args) -> dict[str, float]:
    """Each stage of ``arm`` and its share of the arm's training budget."""
    if arm == "cascade":
        return {"cascade/base": 1.0 - args.tsr_share, "cascade/tsr": args.tsr_share}
    return {arm: 1.0}


def build_arm(name: str, args, objective: DiffusionObjective, image_model) -> list[Stage]:
    """The stages of one arm: a single network, or the cascade's base and TSR."""
    shares = stage_shares(name, args)

    def whole_clip(model, clips, text, gen):
        return diffusion_loss(objective, model, clips, text, gen, args.min_snr_gamma)

    if name == "stunet":
        return [
            Stage("stunet", peers.STUNetDenoiser(stunet_of(args, image_model)), whole_clip, shares["stunet"])
        ]
    if name == "unet3d":
        return [Stage("unet3d", unet3d_of(args, image_model), whole_clip, shares["unet3d"])]
    base = peers.STUNetDenoiser(stunet_of(args, image_model))
    keyframes = args.frames // args.stride
    if args.frames % args.stride or keyframes % base.frame_multiple:
        raise SystemExit(
            f"--frames {args.frames} / --stride {args.stride} must give a whole number of keyframes that is a "
            f"multiple of {base.frame_multiple} (the base STUNet's temporal factor)"
        )
    tsr = KeyframeTSR(
        stunet_of(args, image_model, temporal_resizing=False, noise_level_conditioning=True), args.stride
    )

    def keyframe_loss(model, clips, text, gen):
        return diffusion_loss(objective, model, clips[:, :, :: args.stride], text, gen, args.min_snr_gamma)

    def fill_in_loss(model, clips, text, gen):
        return tsr_loss(
            objective, args.stride, args.tsr_max_level, args.min_snr_gamma, model, clips, text, gen
        )

    return [
        Stage("cascade/base", base, keyframe_loss, shares["cascade/base"]),
        Stage("cascade/tsr", tsr, fill_in_loss, shares["cascade/tsr"]),
    ]


# ---------------------------------------------------------------------------------------------
# Training for a budget.
# ---------------------------------------------------------------------------------------------


def batch_of(data: MovingShapes, step: int, size: int) -> tuple[torch.Tensor, list[str]]:
    """Clips ``[b, 3, f, h, w]`` and captions of step ``step``: the same stream for every arm."""
    items = [data[step * size + i] for i in range(size)]
    return torch.stack([item["video"] for item in items]), [item["caption"] for item in items]


def save_state(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` under a temporary name, fsynced, then renamed: a kill leaves the old state or
    the new one, never a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass(frozen=True)
class Budget:
    """How long a stage trains: ``seconds`` of training wall-clock, or exactly ``steps`` steps."""

    seconds: float | None = None
    steps: int | None = None

    def spent(self, step: int, seconds: float) -> bool:
        if self.steps is not None:
            return step >= self.steps
        return seconds >= self.seconds

    def __str__(self) -> str:
        return f"{self.steps} steps" if self.steps is not None else f"{self.seconds:.0f} s"


class StageTrainer:
    """One stage's optimisation, as ``lumiere.train`` does it: AdamW with linear warm-up, gradient
    clipping at 1, EMA with warm-up. ``step(i)`` trains on step ``i``'s batch and noise, which are
    functions of ``i`` alone, so every arm sees the same data stream and a resumed stage trains as
    one run would."""

    def __init__(self, stage: Stage, data: MovingShapes, encoder, args):
        self.stage, self.data, self.encoder, self.args = stage, data, encoder, args
        self.model = stage.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=args.lr)
        self.warmup = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min(1.0, (step + 1) / args.warmup_steps)
        )
        self.ema = EMAModel(self.model.parameters(), decay=args.ema_decay, use_ema_warmup=True, power=2 / 3)

    def step(self, step: int) -> float:
        """One optimisation step on step ``step``'s clips ``[batch, 3, f, h, w]``; returns the loss."""
        args = self.args
        generator = step_generator(args.seed, step, 0)
        clips, captions = batch_of(self.data, step, args.batch)
        text = self.encoder.encode(drop_captions(captions, args.caption_dropout, generator=generator)).states
        loss = self.stage.loss(self.model, clips, text, generator)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.warmup.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.step(self.model.parameters())
        return loss.item()

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "warmup": self.warmup.state_dict(),
            "ema": self.ema.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.warmup.load_state_dict(state["warmup"])
        self.ema.load_state_dict(state["ema"])


def train_stage(
    stage: Stage, budget: Budget, data: MovingShapes, encoder, args, state_path: Path | None = None
) -> None:
    """Train ``stage.model`` until ``budget`` is spent; leave the EMA weights in it.

    With ``state_path``, the stage's state (weights, optimizer, warm-up, EMA, step, losses and the
    training seconds spent) is written there every ``--checkpoint-minutes`` and when the stage
    ends; a later call with the same path continues a stopped stage where it was, or loads a
    finished one. Only time spent in training steps counts against a wall-clock budget (not model
    building, not writing states).
    """
    trainer = StageTrainer(stage, data, encoder, args)
    model = trainer.model
    losses: list[float] = []
    step_seconds: list[float] = []  # per step: shows a stretch where the machine ran slow
    step, spent = 0, 0.0
    if state_path is not None and state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state["finished"]:
            model.load_state_dict(state["model"])
            model.eval()
            stage.log = state["log"]
            print(f"  {stage.name}: finished earlier, loaded from {state_path}")
            return
        trainer.load_state_dict(state)
        losses, step, spent = state["losses"], state["step"], state["seconds"]
        step_seconds = state.get("step_seconds", [])
        print(f"  {stage.name}: resumed at step {step}, {spent:.0f} s spent; budget {budget}", flush=True)

    def state_now(finished: bool) -> dict[str, Any]:
        if finished:
            return {"model": model.state_dict(), "finished": True, "log": stage.log}
        return {
            **trainer.state_dict(),
            "finished": False,
            "log": stage.log,
            "losses": losses,
            "step_seconds": step_seconds,
            "step": step,
            "seconds": spent,
        }

    every = args.checkpoint_minutes * 60
    last_saved, segment_start = spent, time.monotonic()
    while not budget.spent(step, spent):
        losses.append(trainer.step(step))
        step += 1
        now = time.monotonic()
        step_seconds.append(now - segment_start)
        spent += now - segment_start
        segment_start = now
        if step % args.log_every == 0:
            print(
                f"  {stage.name}: step {step}, loss {np.mean(losses[-args.log_every :]):.4f}, "
                f"{np.mean(step_seconds[-args.log_every :]):.2f} s/step, {spent:.0f} s; budget {budget}",
                flush=True,  # progress shows in a redirected log while the arm trains
            )
        if (
            state_path is not None
            and every > 0
            and spent - last_saved >= every
            and not budget.spent(step, spent)
        ):
            save_state(state_path, state_now(finished=False))
            last_saved, segment_start = spent, time.monotonic()  # writing is not training time
    trainer.ema.copy_to(model.parameters())  # evaluate the EMA weights, as lumiere exports them
    model.eval()
    stage.log = {
        "steps": step,
        "clips": step * args.batch,
        "seconds": spent,
        "final_loss": float(np.mean(losses[-50:])) if losses else None,
        # Median s/step over each tenth of the stage: under a wall-clock budget a machine that ran
        # slow for a while (other load, a throttled host) costs the arm steps; this shows when.
        "seconds_per_step_by_tenth": [
            float(np.median(part)) for part in np.array_split(step_seconds, 10) if len(part)
        ],
        "params": peers.parameter_count(model),
        "trainable_params": sum(p.numel() for p in trainer.params),
    }
    if state_path is not None:
        save_state(state_path, state_now(finished=True))


# ---------------------------------------------------------------------------------------------
# Equal wall-clock from step times measured side by side (--budget calibrated).
# ---------------------------------------------------------------------------------------------


def calibrate(args, objective, image_model, data: MovingShapes, encoder) -> dict[str, float]:
    """Median seconds per training step of every stage of every arm, measured side by side now.

    Each stage takes ``--calibration-warmup`` untimed steps, then the stages take turns, a few
    steps at a time over three rounds, so a host that speeds up or slows down while this runs
    moves every stage's figure alike. Returns ``{stage name: s/step}``.
    """
    stages = [stage for arm in ARMS for stage in build_arm(arm, args, objective, image_model)]
    trainers = [StageTrainer(stage, data, encoder, args) for stage in stages]
    for trainer in trainers:
        for i in range(args.calibration_warmup):
            trainer.step(i)
    rounds = 3
    per_round = max(1, -(-args.calibration_steps // rounds))  # ceil
    times: dict[str, list[float]] = {stage.name: [] for stage in stages}
    for r in range(rounds):
        for trainer in trainers:
            for i in range(per_round):
                start = time.monotonic()
                trainer.step(args.calibration_warmup + r * per_round + i)
                times[trainer.stage.name].append(time.monotonic() - start)
            print(
                f"  calibration round {r + 1}/{rounds}: {trainer.stage.name} "
                f"{np.median(times[trainer.stage.name]):.2f} s/step",
                flush=True,
            )
    return {name: float(np.median(t)) for name, t in times.items()}


def step_budgets(
    seconds_per_step: dict[str, float],
    shares: dict[str, dict[str, float]],
    done_steps: dict[str, dict[str, int]],
    minutes: float,
    reference: str = "stunet",
) -> tuple[dict[str, int], float, str]:
    """Steps per stage that give every arm the same training wall-clock on one machine.

    ``seconds_per_step``: each stage's s/step measured side by side (``calibrate``); ``shares``:
    ``{arm: {stage: share of the arm's budget}}``; ``done_steps``: the steps of arms already
    trained, ``{arm: {stage: steps}}``. The budget is ``minutes``, or, when the ``reference`` arm
    is done (trained earlier, perhaps on a host of another speed), the time its steps take at the
    measured speed: the other arms then get what that arm got, measured on one machine at one
    time. A done arm keeps its steps. Returns ``(budgets {stage: steps}, seconds, how)``.
    """
    if reference in done_steps:
        seconds = sum(steps * seconds_per_step[stage] for stage, steps in done_steps[reference].items())
        how = (
            f"the time the {reference} arm's {' + '.join(map(str, done_steps[reference].values()))} steps "
            "take at the measured speed"
        )
    else:
        seconds, how = minutes * 60, f"{minutes:g} min"
    budgets: dict[str, int] = {}
    for arm, arm_shares in shares.items():
        for stage, share in arm_shares.items():
            if arm in done_steps:
                budgets[stage] = done_steps[arm][stage]
            else:
                budgets[stage] = max(1, round(share * seconds / seconds_per_step[stage]))
    return budgets, seconds, how


def calibrated_budgets(args, out: Path, results, objective, image_model, data, encoder) -> dict[str, int]:
    """The step budgets of ``OUT/calibration.json``; measured and written there first if absent,
    so every later call into the same ``--out`` (another session, another host) trains the same
    steps."""
    path = out / "calibration.json"
    if path.exists():
        calibration = json.loads(path.read_text())
        differ = protocol_differences(calibration["args"], vars(args))
        if differ:
            raise SystemExit(
                f"{path} holds step budgets for other settings ({differ}); use another --out, or delete "
                "it to calibrate again"
            )
        print(
            f"== step budgets from {path} (measured {calibration['measured_at']}): {calibration['budgets']}"
        )
        return calibration["budgets"]
    print(
        f"== calibration: {args.calibration_steps} timed steps per stage of every arm, side by side "
        f"({args.threads} threads)",
        flush=True,
    )
    seconds_per_step = calibrate(args, objective, image_model, data, encoder)
    done = {
        arm: {stage: log["steps"] for stage, log in r["stages"].items()} for arm, r in results["arms"].items()
    }
    shares = {arm: stage_shares(arm, args) for arm in ARMS}
    budgets, seconds, how = step_budgets(seconds_per_step, shares, done, args.minutes)
    calibration = {
        "args": vars(args),
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": f"{harness.cpu_name()}, {os.cpu_count()} logical CPUs",
        "threads": args.threads,
        "seconds_per_step": seconds_per_step,
        "budget_seconds": seconds,
        "budget_from": how,
        "budgets": budgets,
    }
    path.write_text(json.dumps(calibration, indent=2))
    print(f"== budget: {seconds:.0f} s per arm ({how}); steps per stage: {budgets}")
    return budgets


# ---------------------------------------------------------------------------------------------
# Sampling and scoring.
# ---------------------------------------------------------------------------------------------


def eval_prompts(args) -> tuple[list[str], list[str]]:
    """(general prompts drawn from the caption grammar, prompts whose motion is bouncing)."""
    general = draw_prompts(args.eval_count, args.seed)
    rng = np.random.default_rng([args.seed, 1])
    bouncing: list[str] = []
    while len(bouncing) < args.bouncing_count:
        caption, attributes = random_caption(rng)
        if attributes["motion"] == "bouncing":
            bouncing.append(caption)
    return general, bouncing


@torch.no_grad()
def sample_arm(
    stages: list[Stage], prompts: list[str], encoder, objective, args, cache: Path | None = None
) -> tuple[list[torch.Tensor], float]:
    """One clip ``[3, f, h, w]`` in [-1, 1] per prompt, and the sampling seconds per clip; seeds
    depend on the prompt index only.

    With ``cache``, each batch of clips is written there (atomically) as it is made and read back
    on a later call, so an evaluation stopped part-way resumes at its next batch.
    """
    clips: list[torch.Tensor] = []
    seconds = 0.0
    for first in range(0, len(prompts), args.eval_batch):
        batch = prompts[first : first + args.eval_batch]
        path = None if cache is None else cache / f"samples_{first:05d}.pt"
        if path is not None and path.exists():
            done = torch.load(path, map_location="cpu", weights_only=True)
        else:
            start = time.perf_counter()
            done = {"clips": sample_batch(stages, batch, first, encoder, objective, args)}
            done["seconds"] = time.perf_counter() - start
            if path is not None:
                save_state(path, done)
        clips.extend(done["clips"])
        seconds += done["seconds"]
        print(f"  sampled {len(clips)}/{len(prompts)} clips, {seconds / len(clips):.1f} s/clip", flush=True)
    return clips, seconds / len(clips)


def sample_batch(stages: list[Stage], batch: list[str], first: int, encoder, objective, args) -> torch.Tensor:
    """Clips ``[n, 3, f, h, w]`` in [-1, 1] for the prompts ``batch``, the ``first``-th onwards."""
    common = dict(num_steps=args.eval_steps, guidance_scale=args.guidance)
    n = len(batch)
    text = encoder.encode(batch).states
    null_text = encoder.encode([NULL_PROMPT] * n).states
    seed = args.seed * 100_003 + first
    shape = (n, 3, args.frames, args.resolution, args.resolution)
    if len(stages) == 1:
        out = guided_sample(stages[0].model, shape, text, null_text, seed=seed, **common)
    else:
        base, tsr = stages[0].model, stages[1].model
        key_shape = (n, 3, args.frames // args.stride, args.resolution, args.resolution)
        keyframes = guided_sample(base, key_shape, text, null_text, seed=seed, **common).clamp(-1, 1)
        level = torch.full((n,), args.tsr_sample_level)
        noise = torch.randn(keyframes.shape, generator=torch.Generator().manual_seed(seed))
        conditioning = tsr.condition(objective.add_noise(keyframes, noise, level))
        out = guided_sample(
            tsr,
            shape,
            text,
            null_text,
            seed=seed + 1,
            model_kwargs={"conditioning": conditioning, "noise_level": level},
            **common,
        )
    return out.clamp(-1, 1)


def score_clips(clips, general: list[str], bouncing: list[str], args) -> dict[str, Any]:
    """Probe accuracy on the general prompts, motion accuracy on the bouncing ones, consistency, FD."""
    readings = [probe_clip(clip) for clip in clips]
    general_readings, bouncing_readings = readings[: len(general)], readings[len(general) :]
    scores = [score(r, p) for r, p in zip(general_readings, general, strict=True)]
    accuracy = {key: float(np.mean([s[key] for s in scores])) for key in ("object", *ATTRIBUTES, "all")}
    bounce_scores = [score(r, p)["motion"] for r, p in zip(bouncing_readings, bouncing, strict=True)]
    other_motion = [
        s["motion"] for s, p in zip(scores, general, strict=True) if parse_caption(p)["motion"] != "bouncing"
    ]
    prompts = general + bouncing
    real = [probe_clip(c) for c in real_clips_for(prompts, args.frames, args.resolution, args.seed + 1)]
    try:
        fd = frechet_distance(
            np.stack([probe_features(r) for r in readings]), np.stack([probe_features(r) for r in real])
        )
    except ValueError:
        fd = None
    return {
        "accuracy": accuracy,
        "motion_accuracy_bouncing": float(np.mean(bounce_scores)) if bounce_scores else None,
        "motion_accuracy_other": float(np.mean(other_motion)) if other_motion else None,
        "temporal_consistency": float(np.mean([r.temporal_consistency for r in readings])),
        "temporal_consistency_real": float(np.mean([r.temporal_consistency for r in real])),
        "frechet_probe_distance": fd,
    }


def write_grid(clips: list[torch.Tensor], path: Path, fps: float = 8.0) -> None:
    from lumiere.data.video_io import make_grid, write_video

    frames = np.stack(
        [((c.permute(1, 2, 3, 0).numpy() + 1) / 2).clip(0, 1) for c in clips[:16]]
    )  # [n, f, h, w, 3]
    write_video(path, make_grid(frames, nrow=4), fps=fps)


# ---------------------------------------------------------------------------------------------
# Main.
# ---------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, from: {', '.join(ARMS)}")
    parser.add_argument("--minutes", type=float, default=60.0, help="training wall-clock per arm")
    parser.add_argument(
        "--budget",
        choices=("calibrated", "wallclock"),
        default="calibrated",
        help="calibrated (default): every arm trains the steps that fill --minutes at step times measured "
        "side by side in one run (OUT/calibration.json, reused by later runs), so a host that runs "
        "slower in one session than in another costs no arm steps; wallclock: each arm trains until "
        "--minutes of its own training time are spent",
    )
    parser.add_argument(
        "--calibration-steps", type=int, default=9, help="timed steps per stage when calibrating"
    )
    parser.add_argument(
        "--calibration-warmup", type=int, default=2, help="untimed steps per stage before them"
    )
    parser.add_argument("--preset", default="default", help="image U-Net preset of every model")
    parser.add_argument(
        "--init-from", default=None, help="image model (stage t2i output) every arm starts from"
    )
    parser.add_argument(
        "--freeze-spatial", action="store_true", help="train only new layers (needs --init-from)"
    )
    parser.add_argument("--frames", type=int, default=16, help="frames per clip")
    parser.add_argument("--resolution", type=int, default=32, help="frame height and width")
    parser.add_argument(
        "--stride", type=int, default=4, help="the cascade's base makes every stride-th frame"
    )
    parser.add_argument(
        "--tsr-share", type=float, default=0.5, help="share of the cascade's budget for the TSR"
    )
    parser.add_argument(
        "--tsr-max-level", type=int, default=250, help="max keyframe-noise timestep in training"
    )
    parser.add_argument(
        "--tsr-sample-level", type=int, default=50, help="keyframe-noise timestep when sampling"
    )
    parser.add_argument(
        "--batch", type=int, default=8, help="clips per step (as configs/recipe/02_stunet.yaml)"
    )
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--warmup-steps", type=int, default=200)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument(
        "--min-snr-gamma",
        type=float,
        default=None,
        help="min-SNR loss weights (5: stages 1-3a); default: none, the plain v-loss of the shipped stage 3b, "
        "which session 2 found the high-noise steps (layout, motion) need",
    )
    parser.add_argument("--caption-dropout", type=float, default=0.1)
    parser.add_argument("--eval-count", type=int, default=100, help="prompts drawn from the caption grammar")
    parser.add_argument(
        "--bouncing-count", type=int, default=50, help="extra prompts whose motion is bouncing"
    )
    parser.add_argument("--eval-steps", type=int, default=25, help="sampler steps")
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--eval-batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--out", default="runs/ablation", help="results.json and sample grids go here")
    parser.add_argument(
        "--keep-done",
        action="store_true",
        help="keep the arms already in OUT/results.json (same settings) and train only the others, "
        "resuming an arm stopped mid-training from its last state in OUT/state/ARM: spreads a long "
        "ablation over several sessions",
    )
    parser.add_argument(
        "--checkpoint-minutes",
        type=float,
        default=5.0,
        help="write each stage's training state to OUT/state/ARM this often (training time; 0: only "
        "when a stage ends)",
    )
    args = parser.parse_args()
    if args.freeze_spatial and not args.init_from:
        parser.error("--freeze-spatial needs --init-from (from scratch there is nothing to freeze)")
    if not 0 < args.tsr_share < 1:
        parser.error("--tsr-share must be in (0, 1)")
    if args.calibration_steps < 1 or args.calibration_warmup < 0:
        parser.error(
            f"--calibration-steps must be >= 1 and --calibration-warmup >= 0, got "
            f"{args.calibration_steps} and {args.calibration_warmup}"
        )
    if args.checkpoint_minutes < 0:
        parser.error(f"--checkpoint-minutes must be >= 0, got {args.checkpoint_minutes}")
    return args


def main() -> None:
    args = parse_args()
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    for arm in arms:
        if arm not in ARMS:
            raise SystemExit(f"unknown arm {arm!r}; choose from {', '.join(ARMS)}")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = load_done(out / "results.json", args) if args.keep_done else {"args": vars(args), "arms": {}}
    objective = DiffusionObjective()
    encoder = load_text_encoder(None)
    image_model = load_image_model(args.init_from)
    data = MovingShapes(length=2**31 - 1, num_frames=args.frames, resolution=args.resolution, seed=args.seed)
    general, bouncing = eval_prompts(args)
    to_train = [arm for arm in arms if arm not in results["arms"]]
    budgets = (
        calibrated_budgets(args, out, results, objective, image_model, data, encoder)
        if args.budget == "calibrated" and to_train
        else {}
    )

    for arm in arms:
        if arm in results["arms"]:
            print(f"== {arm}: kept from {out / 'results.json'}")
            continue
        stages = build_arm(arm, args, objective, image_model)
        stage_budgets = {
            stage.name: Budget(steps=budgets[stage.name])
            if budgets
            else Budget(seconds=args.minutes * 60 * stage.share)
            for stage in stages
        }
        print(f"== {arm}: training for {' + '.join(str(b) for b in stage_budgets.values())}")
        multiple = stages[-1].model.frame_multiple
        if args.frames % multiple:
            raise SystemExit(f"{arm}: --frames {args.frames} must be a multiple of {multiple}")
        states = out / "state" / arm  # per-stage training states, so a stopped arm resumes
        if not args.keep_done and states.exists():
            shutil.rmtree(states)  # without --keep-done every arm starts afresh
        check_state_settings(states / "args.json", args)
        for stage in stages:
            train_stage(
                stage,
                stage_budgets[stage.name],
                data,
                encoder,
                args,
                states / f"{stage.name.replace('/', '-')}.pt",
            )
        clips, seconds_per_clip = sample_arm(
            stages, general + bouncing, encoder, objective, args, cache=states / "samples"
        )
        scores = score_clips(clips, general, bouncing, args)
        write_grid(clips, out / f"{arm}.mp4")
        results["arms"][arm] = {
            "stages": {stage.name: stage.log for stage in stages},
            "sample_seconds_per_clip": seconds_per_clip,
            **scores,
        }
        (out / "results.json").write_text(json.dumps(results, indent=2))
        shutil.rmtree(states)  # the arm is in results.json; its states are no longer needed
    print_results(results, args)
    print(f"results: {out / 'results.json'}; sample grids: {out}/<arm>.mp4")


# Settings that do not change what an arm learns or how it is scored (may differ between runs
# merged by --keep-done). --threads is not one of them: it sets how many steps a budget buys, so
# arms merged into one table must have had the same number of cores. The calibration settings are
# run-only because the budgets they give are written once, to OUT/calibration.json, and reused.
RUN_ONLY_SETTINGS = (
    "arms",
    "out",
    "log_every",
    "keep_done",
    "checkpoint_minutes",
    "calibration_steps",
    "calibration_warmup",
)
# Where a stage stops, not what each step does: a training state made under one budget resumes
# under another (a step is a function of its index alone).
STOP_SETTINGS = ("budget", "minutes")
# Results made before --budget existed were trained against the wall-clock.
DEFAULTS_BEFORE = {"budget": "wallclock"}


def protocol_differences(before: dict[str, Any], now: dict[str, Any], ignore: tuple[str, ...] = ()) -> str:
    """The settings (other than RUN_ONLY_SETTINGS and ``ignore``) that differ, as "k: a then, b
    now", or ""."""
    before = {**DEFAULTS_BEFORE, **before}
    skip = RUN_ONLY_SETTINGS + ignore
    differ = sorted(k for k in now if k not in skip and before.get(k) != now[k])
    return ", ".join(f"{k}: {before.get(k)!r} then, {now[k]!r} now" for k in differ)


def check_state_settings(path: Path, args: argparse.Namespace) -> None:
    """Record the settings of an arm's training states in ``path``, or refuse (SystemExit) to
    resume states made with other ones."""
    if path.exists():
        differ = protocol_differences(json.loads(path.read_text()), vars(args), ignore=STOP_SETTINGS)
        if differ:
            raise SystemExit(
                f"--keep-done: the states in {path.parent} were made with other settings ({differ}); "
                "use another --out, or delete that folder to restart the arm"
            )
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(vars(args), indent=2))


def load_done(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The results of an earlier run into the same ``--out``, to be extended with more arms.
    Refuses (SystemExit naming the settings) if that run used other settings, so a merged table
    always compares arms under one protocol."""
    fresh = {"args": vars(args), "arms": {}}
    if not path.exists():
        return fresh
    done = json.loads(path.read_text())
    before = {**DEFAULTS_BEFORE, **done.get("args", {})}
    # Arms trained against the wall-clock may join a calibrated run: they keep their steps, and the
    # reference arm's steps set the others' budget (step_budgets). The reverse would mix protocols.
    ignore = ("budget",) if (before["budget"], args.budget) == ("wallclock", "calibrated") else ()
    differ = protocol_differences(before, vars(args), ignore=ignore)
    if differ:
        raise SystemExit(f"--keep-done: {path} was made with other settings ({differ}); use another --out")
    return {"args": vars(args), "arms": done.get("arms", {})}


def print_results(results: dict[str, Any], args) -> None:
    print(
        f"\n{args.minutes:g} min of training per arm ({args.budget}); {args.frames} frames x {args.resolution}x{args.resolution}; "
        f"{args.eval_count} grammar prompts + {args.bouncing_count} bouncing prompts; "
        f"{args.eval_steps} DPM-Solver++ steps, guidance {args.guidance}"
    )
    rows = []
    for arm, r in results["arms"].items():
        stages = r["stages"].values()
        rows.append(
            [
                arm,
                f"{sum(s['params'] for s in stages) / 1e6:.2f}",
                " + ".join(str(s["steps"]) for s in stages),
                " + ".join(harness.fmt(s["final_loss"], 3) for s in stages),
                harness.fmt(r["accuracy"]["all"]),
                harness.fmt(r["accuracy"]["motion"]),
                harness.fmt(r["motion_accuracy_bouncing"]),
                harness.fmt(r["motion_accuracy_other"]),
                f"{r['temporal_consistency']:.3f} / {r['temporal_consistency_real']:.3f}",
                harness.fmt(r["frechet_probe_distance"]),
                f"{r['sample_seconds_per_clip']:.2f}",
            ]
        )
    harness.print_table(
        [
            "arm",
            "params M",
            "steps",
            "final loss",
            "all acc",
            "motion acc",
            "bouncing acc",
            "other motion",
            "consistency gen/real",
            "FD probe",
            "s/clip",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
