"""A full clip in seconds (issue 34): today's settings against the new defaults and each speed switch.

One run, interleaved (setting A, B, C, ..., then again), median of ``--repeats`` runs each: a
16-frame clip of the shipped pipeline (base 16x32x32, classifier-free guidance 5.0, DPM-Solver++,
then the SSR to 64x64), timed as

- base: the base clip alone (up to its last denoising step, read from the pipeline's callback);
- ssr: the rest of the call (the SSR with MultiDiffusion, and the frames' conversion);
- full: the whole ``pipe(...)`` call, what ``lumiere generate`` waits for besides loading and writing.

Settings (``--settings``, comma-separated):

- ``today``: the settings and code path before issue 34 (25 + 25 steps, SSR windows of 8 frames
  overlapping by 2, the temporal cross-attention reading one copy of the text per pixel);
- ``default``: today's settings on today's code (the exact speed-ups only: same clip up to rounding);
- ``cl``: default + the SSR in channels_last memory layout (same clip up to rounding);
- ``window16``: cl + the SSR on the whole 16-frame clip in one window (``ssr_window=None``);
- ``ssrcache2``: window16 + DeepCache on the SSR, a full call every 2 steps (``ssr_cache_interval=2``);
- ``ssrcache3``: the same, every 3 steps;
- ``basecache2``: cl + DeepCache on the base, every 2 steps (``cache_interval=2``);
- ``guidance60``: cl + guidance on the first 60% of the base steps (``guidance_end=0.6``);
- ``bf16``: cl + both networks in bfloat16 (``pipe.to(torch.bfloat16)``, CLI ``--dtype bf16``);
- ``steps20``, ``steps15``: cl + 20 or 15 base steps (``num_inference_steps``);
- ``fast``: window16 + ssrcache2 + basecache2 + guidance60.

``--ssr-steps N`` sets the SSR's steps in every setting but ``today`` (the lead's few-step SSR);
``--steps`` the base's. Then the utilisation of one SSR network call at 64x64: its FLOPs
(``torch.utils.flop_counter``) per second over the fp32 matmul peak measured in the same run.
``--quality N``: the SSR's PSNR gain over bilinear and flicker on N evaluation clips (as
``bench/ssr_quality.py`` and ``bench/ssr_real.py`` measure them), per setting. ``--probe N``: the
probe's accuracy on N base clips per setting (``lumiere eval``'s prompts and seeds, batches of 8).

    python bench/bench_speed.py --threads 2 --repeats 3
    python bench/bench_speed.py --model runs/ssr_real/model --ssr-steps 4 --settings today,default,window16
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import platform
import statistics
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from lumiere.eval.conditional import psnr
from lumiere.eval.evaluate import draw_prompts, real_clips_for
from lumiere.eval.probe import ATTRIBUTES, probe_clip, score
from lumiere.models import stunet as stunet_module
from lumiere.pipelines import LumierePipeline
from profile_sampling import count_flops, matmul_peak

PROMPT = "a red circle moving right on a black background"


@dataclass
class Setting:
    """One column of the table: pipeline keywords and how the networks are held."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)  # of pipe(...): ssr_window=, cache_interval=, ...
    channels_last: bool = False  # the SSR in channels_last memory layout
    legacy: bool = False  # the code path before issue 34 (text copied per pixel in temporal cross-attention)
    today_steps: bool = False  # keep 25 SSR steps whatever --ssr-steps says
    bf16: bool = False  # both networks in bfloat16 (oneDNN's bf16 kernels; avx512_bf16 / AMX CPUs)


def settings(names: list[str]) -> list[Setting]:
    window16 = dict(ssr_window=None)
    known = {
        "today": Setting("today", legacy=True, today_steps=True),
        "default": Setting("default"),
        "cl": Setting("cl", channels_last=True),
        "window16": Setting("window16", window16, channels_last=True),
        "ssrcache2": Setting("ssrcache2", window16 | dict(ssr_cache_interval=2), channels_last=True),
        "ssrcache3": Setting("ssrcache3", window16 | dict(ssr_cache_interval=3), channels_last=True),
        "basecache2": Setting("basecache2", dict(cache_interval=2), channels_last=True),
        "guidance60": Setting("guidance60", dict(guidance_end=0.6), channels_last=True),
        "bf16": Setting("bf16", channels_last=True, bf16=True),
        "steps20": Setting("steps20", dict(num_inference_steps=20), channels_last=True),
        "steps15": Setting("steps15", dict(num_inference_steps=15), channels_last=True),
        "fast": Setting(
            "fast",
            window16 | dict(ssr_cache_interval=2, cache_interval=2, guidance_end=0.6),
            channels_last=True,
        ),
    }
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SystemExit(f"--settings: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    return [known[name] for name in names]


# ---------------------------------------------------------------------------------------------
# Today's code path, for the "before" column.
# ---------------------------------------------------------------------------------------------


# Deliberately repeats TemporalAttentionBlock.forward as it was before issue 34 (the "today" column);
# only the cross-attention lines differ from src/lumiere/models/stunet.py.
def _per_pixel_text_forward(self, hidden_states, num_frames, text=None, text_mask=None):
    """``TemporalAttentionBlock.forward`` before issue 34: the cross-attention reads one copy of
    the clip's text per pixel ``[(b h w), n, d]`` (same output; h*w times the keys and values)."""
    height, width = hidden_states.shape[-2:]
    residual = hidden_states
    tokens = rearrange(self.norm_in(hidden_states), "(b f) c h w -> (b h w) f c", f=num_frames)
    tokens = tokens + self.frame_positions(num_frames, tokens)
    tokens = tokens + self.attn(self.norm_attn(tokens))
    if self.cross_attn is not None:
        pixels = height * width
        text = text[::num_frames].repeat_interleave(pixels, 0)
        if text_mask is not None:
            text_mask = text_mask[::num_frames].repeat_interleave(pixels, 0)
        tokens = tokens + self.cross_attn(
            self.norm_cross(tokens), encoder_hidden_states=text, attention_mask=text_mask
        )
    tokens = tokens + self.ff(self.norm_ff(tokens))
    delta = rearrange(self.proj_out(tokens), "(b h w) f c -> (b f) c h w", h=height, w=width)
    return residual + delta


@contextlib.contextmanager
def code_path(legacy: bool) -> Iterator[None]:
    block = stunet_module.TemporalAttentionBlock
    current = block.forward
    if legacy:
        block.forward = _per_pixel_text_forward
    try:
        yield
    finally:
        block.forward = current


# ---------------------------------------------------------------------------------------------
# Timing.
# ---------------------------------------------------------------------------------------------


def pipeline_for(base: LumierePipeline, setting: Setting) -> LumierePipeline:
    """``base`` itself, or a copy (sharing the text encoder and scheduler) whose SSR is in
    channels_last layout (outputs equal up to rounding) and, for ``bf16``, whose networks are bfloat16."""
    if not (setting.channels_last or setting.bf16):
        return base
    pipe = copy.copy(base)
    if setting.bf16:
        pipe.stunet = copy.deepcopy(base.stunet).to(dtype=torch.bfloat16)
    ssr = copy.deepcopy(base.ssr).to(dtype=torch.bfloat16 if setting.bf16 else torch.float32)
    pipe.ssr = ssr.to(memory_format=torch.channels_last) if setting.channels_last else ssr
    return pipe


def call_kwargs(setting: Setting, args: argparse.Namespace) -> dict[str, Any]:
    kwargs = dict(num_frames=16, num_inference_steps=args.steps, guidance_scale=5.0)
    if args.ssr_steps is not None and not setting.today_steps:
        kwargs["ssr_steps"] = args.ssr_steps
    return kwargs | setting.kwargs


def time_full(
    pipe: LumierePipeline, setting: Setting, args: argparse.Namespace
) -> tuple[float, float, float]:
    """(base s, ssr s, full s) of one 16-frame clip."""
    marks: list[float] = []
    start = time.perf_counter()
    with code_path(setting.legacy):
        pipe(
            PROMPT,
            generator=torch.Generator().manual_seed(0),
            callback=lambda step, timestep, sample: marks.append(time.perf_counter()),
            **call_kwargs(setting, args),
        )
    end = time.perf_counter()
    return marks[-1] - start, end - marks[-1], end - start


def ssr_call_utilisation(
    pipe: LumierePipeline, frames: int, peak: float, repeats: int
) -> tuple[float, float, float]:
    """(GFLOP per call, seconds per call, utilisation) of one SSR network call on a ``frames``-frame window."""
    text = pipe.text_encoder.encode([PROMPT])
    kwargs = dict(
        sample=torch.randn(1, pipe.ssr.in_channels, frames, 64, 64),
        timestep=torch.tensor(500),
        encoder_hidden_states=text.states,
        encoder_attention_mask=text.mask,
        noise_level=torch.full((1,), 100),
    )
    with torch.no_grad():
        pipe.ssr(**kwargs)
        flops = count_flops(lambda: pipe.ssr(**kwargs))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            pipe.ssr(**kwargs)
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return flops / 1e9, seconds, flops / seconds / peak


# ---------------------------------------------------------------------------------------------
# Quality of the SSR settings.
# ---------------------------------------------------------------------------------------------


def flicker(video: np.ndarray, truth: np.ndarray) -> float:
    """Mean |change of the output - change of the truth| between consecutive frames, x 1000 (bench/ssr_real.py)."""
    return float(np.abs(np.diff(video, axis=0) - np.diff(truth, axis=0)).mean() * 1000)


def ssr_quality(
    pipe: LumierePipeline, setting: Setting, args: argparse.Namespace
) -> tuple[float, float, float]:
    """(mean PSNR gain over bilinear dB, SSR flicker, bilinear flicker) on ``--quality`` evaluation clips:
    true 64x64 moving-shapes clips, area-downsampled 2x and upsampled back (``bench/ssr_quality.py``)."""
    ssr = {k[4:]: v for k, v in call_kwargs(setting, args).items() if k.startswith("ssr_")}
    steps = ssr.pop("steps", None)  # None: the pipeline's SSR default (its ssr_steps, else args.steps)
    options = {"cache_interval": ssr.pop("cache_interval", 1)}
    gains, flickers, bilinear_flickers = [], [], []
    for i, prompt in enumerate(draw_prompts(args.quality, 3)):
        truth = real_clips_for([prompt], 16, 64, seed=11 + i)[0]  # [16, 64, 64, 3]
        low = F.avg_pool2d(torch.from_numpy(truth).permute(0, 3, 1, 2), 2)  # [16, 3, 32, 32]
        bilinear = F.interpolate(low, scale_factor=2, mode="bilinear", align_corners=False)
        bilinear = bilinear.permute(0, 2, 3, 1).clamp(0, 1).numpy()
        with code_path(setting.legacy):
            upsampled = upsample(pipe, low.permute(0, 2, 3, 1).numpy()[None], prompt, steps, ssr, options)
        gains.append(psnr(upsampled, truth) - psnr(bilinear, truth))
        flickers.append(flicker(upsampled, truth))
        bilinear_flickers.append(flicker(bilinear, truth))
    return float(np.mean(gains)), float(np.mean(flickers)), float(np.mean(bilinear_flickers))


def probe_accuracy(pipe: LumierePipeline, setting: Setting, args: argparse.Namespace) -> dict[str, float]:
    """The probe's accuracy (object, each attribute, all) on ``--probe`` base clips of the setting,
    for ``lumiere eval``'s prompts and seeds (``evaluate(pipe, count, seed=0)``)."""
    prompts = draw_prompts(args.probe, 0)
    kwargs = {k: v for k, v in call_kwargs(setting, args).items() if not k.startswith("ssr_")}
    scores = []
    for first in range(0, len(prompts), 8):
        batch = prompts[first : first + 8]
        generators = [torch.Generator().manual_seed(first + i) for i in range(len(batch))]
        with code_path(setting.legacy):
            frames = pipe(batch, generator=generators, upsample=False, **kwargs).frames
        scores += [score(probe_clip(clip), prompt) for clip, prompt in zip(frames, batch, strict=True)]
    return {key: float(np.mean([s[key] for s in scores])) for key in ("object", *ATTRIBUTES, "all")}


def upsample(pipe, video, prompt, steps, ssr: dict[str, Any], options: dict[str, Any]) -> np.ndarray:
    """``pipe.upsample`` with the setting's window, and its cache interval through ``SSROptions``."""
    from lumiere.pipelines import SSROptions

    window = ssr.get("window", SSROptions.window)
    # pipe.upsample takes the window options flat; the cache interval is an SSROptions field, so
    # the SSR pass is called as the pipeline's __call__ calls it.
    low_res = torch.from_numpy(video).permute(0, 4, 1, 2, 3) * 2 - 1  # [1, 3, f, h, w] in [-1, 1]
    size = tuple(2 * side for side in low_res.shape[-2:])
    opts = pipe.resolve_ssr_options(SSROptions(window=window, steps=steps, **options), 25)
    windows = pipe.check_ssr_inputs(low_res.shape[2], *size, opts)
    cond, uncond = pipe.encode_prompt([prompt], None, 1, False, pipe._execution_device)
    with torch.no_grad():
        sample = pipe.super_resolve(low_res, cond, uncond, opts, windows, torch.Generator().manual_seed(0))
    return pipe.postprocess(sample, "np")[0]


# ---------------------------------------------------------------------------------------------


def machine() -> str:
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines()
        name = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name"))
    except (OSError, StopIteration):
        name = platform.processor() or "unknown CPU"
    load = open("/proc/loadavg").read().split()[0] if platform.system() == "Linux" else "?"
    return f"{name}; load average {load} at start"


def time_settings(
    base: LumierePipeline, pipes: dict[str, LumierePipeline], chosen: list[Setting], args: argparse.Namespace
) -> None:
    """The before/after table of whole clips, then the SSR call's utilisation."""
    for s in chosen:  # warm-up: oneDNN primitive caches, allocator
        with code_path(s.legacy):
            pipes[s.name](PROMPT, num_frames=16, num_inference_steps=1, ssr_steps=1, **s.kwargs)
    times: dict[str, list[tuple[float, float, float]]] = {s.name: [] for s in chosen}
    for _ in range(args.repeats):
        for s in chosen:
            times[s.name].append(time_full(pipes[s.name], s, args))

    reference = chosen[0].name
    ref = [statistics.median(t[i] for t in times[reference]) for i in range(3)]
    print(
        f"\n16-frame clip, base {args.steps} steps, SSR "
        f"{args.ssr_steps or 'the model default (ssr_steps x ssr_strength of model_index.json)'} steps "
        f"(today: {args.steps}); "
        f"median of {args.repeats}; ratio = {reference} / setting"
    )
    print("| setting | pipeline keywords | base s | ssr s | full s | full ratio |")
    print("|---|---|---|---|---|---|")
    for s in chosen:
        base_s, ssr_s, full_s = (statistics.median(t[i] for t in times[s.name]) for i in range(3))
        keywords = ", ".join(
            f"{k}={v}" for k, v in call_kwargs(s, args).items() if k not in ("num_frames", "guidance_scale")
        )
        keywords += ", SSR channels_last" if s.channels_last else ""
        keywords += ", networks in bf16" if s.bf16 else ""
        keywords += ", per-pixel text (before)" if s.legacy else ""
        print(
            f"| {s.name} | {keywords} | {base_s:.2f} | {ssr_s:.2f} | {full_s:.2f} | {ref[2] / full_s:.2f}x |"
        )

    peak = matmul_peak()
    print(f"\nfp32 matmul peak (2048^3 torch.mm, best of 5): {peak / 1e9:.1f} GFLOP/s")
    print("| SSR network call at 64x64 | GFLOP | s/call | GFLOP/s | utilisation |")
    print("|---|---|---|---|---|")
    for label, pipe, frames, legacy in (
        ("8-frame window (today)", base, 8, True),
        (
            "8-frame window, channels_last",
            pipes.get("cl", pipeline_for(base, Setting("cl", channels_last=True))),
            8,
            False,
        ),
        (
            "16-frame window, channels_last",
            pipes.get("cl", pipeline_for(base, Setting("cl", channels_last=True))),
            16,
            False,
        ),
    ):
        with code_path(legacy):
            gflop, seconds, use = ssr_call_utilisation(pipe, frames, peak, args.repeats)
        print(f"| {label} | {gflop:.1f} | {seconds:.3f} | {gflop / seconds:.1f} | {100 * use:.1f}% |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="pipeline directory (default: the shipped model)")
    parser.add_argument("--today-model", default=None,
                        help="pipeline directory the 'today' setting runs (default: --model), e.g. the model shipped before")  # fmt: skip
    parser.add_argument(
        "--settings", default="today,default,cl,window16,ssrcache2,basecache2,guidance60,bf16,fast"
    )
    parser.add_argument("--steps", type=int, default=25, help="base denoising steps")
    parser.add_argument(
        "--ssr-steps", type=int, default=None, help="SSR steps in every setting but today (default: --steps)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting (0: quality only)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--quality", type=int, default=0, help="evaluation clips for the SSR's PSNR gain (0: skip)"
    )
    parser.add_argument("--probe", type=int, default=0, help="base clips for the probe's accuracy (0: skip)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    chosen = settings(args.settings.split(","))

    base = LumierePipeline.from_pretrained(args.model)
    base.set_progress_bar_config(disable=True)
    today = base
    if args.today_model:
        today = LumierePipeline.from_pretrained(args.today_model)
        today.set_progress_bar_config(disable=True)
    pipes = {s.name: pipeline_for(today if s.legacy else base, s) for s in chosen}
    print(f"machine: {machine()}; torch {torch.__version__}, {args.threads} threads")
    flags = " ".join(
        f"--{key.replace('_', '-')} {value}" for key, value in vars(args).items() if value is not None
    )
    print(f"command: python bench/bench_speed.py {flags}")

    if args.repeats > 0:
        time_settings(base, pipes, chosen, args)

    if args.quality:
        print(f"\nSSR quality on {args.quality} evaluation clips (16 frames, 32 -> 64)")
        print("| setting | PSNR gain over bilinear dB | flicker x1000 (bilinear) |")
        print("|---|---|---|")
        for s in chosen:
            gain, flick, bilinear = ssr_quality(pipes[s.name], s, args)
            print(f"| {s.name} | {gain:+.2f} | {flick:.2f} ({bilinear:.2f}) |", flush=True)

    if args.probe:
        print(f"\nprobe accuracy on {args.probe} base clips (lumiere eval's prompts and seeds)")
        print("| setting | object | " + " | ".join(ATTRIBUTES) + " | all |")
        print("|---|" + "---|" * (len(ATTRIBUTES) + 2))
        for s in chosen:
            accuracy = probe_accuracy(pipes[s.name], s, args)
            print(
                f"| {s.name} | " + " | ".join(f"{100 * v:.1f}%" for v in accuracy.values()) + " |", flush=True
            )


if __name__ == "__main__":
    main()
