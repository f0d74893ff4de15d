"""Lumiere in latent space against pixel space, at the same output size (issue 30, "Benchmark").

Two STUNets of the same widths, levels and layers (Stable Diffusion 1.5's layout, every width
about / 10: ``latent_memory_gpu.SMALL_UNET``, 32-64-128-128, 2 layers per level), random weights:

- ``latent``: the SD-shaped STUNet on latents ``[b, 4, f, h/8, w/8]``, with an ``AutoencoderKL``
  of SD 1.5's layout at widths / 8 (``SMALL_VAE``) that encodes clips for training and decodes
  the sampled latents, 8 frames per call (``lumiere.models.vae``);
- ``pixel``: the same STUNet on pixels ``[b, 3, f, h, w]``. Layout: SD's attends in its first
  three levels; at 256x256 pixels the first would attend over 65,536 tokens per frame (a
  4.3-billion-entry score matrix per head and frame, out of reach of 2 CPU cores), so the pixel
  STUNet attends only at its coarsest level (32x32 at 256x256, the largest map the latent
  STUNet attends at), as the pixel models do (Imagen, DeepFloyd IF, lumiere's ``default`` preset:
  no attention at full resolution). Everything else is the same.

Both read the same CLIP-shaped text encoder (``SMALL_TEXT``: 12 layers of width 64). Measured,
each in a fresh process (``harness.run_isolated``), at 16 frames of 256x256 by default:

- training step (forward, backward, AdamW over the temporal layers, spatial layers frozen, as
  Lumiere's video stage; v-prediction + min-SNR, ``loops.make_training_step``), batch 1: the
  pixel STUNet on the clip; the latent STUNet with the VAE encoding the clip and the text
  encoder encoding the caption in the step ("no cache"), and reading them from memory
  ("cache": what a step reading the latent / text caches computes; the file read is not in it);
- clip: ``LumierePipeline(...)("prompt", num_frames, height, width)``, ``--steps`` denoising
  steps with guidance (batch 2 per network call), text encoding and (latent) VAE decoding.

Times: median of ``--repeats`` after ``--warmup``, and the fastest call (the first included),
the one least slowed by other jobs on a shared machine; memory: the process's resident-set
high-water mark during the timed work (VmHWM) minus what it held before (weights, inputs).

    python bench/bench_latent.py --threads 2 --json runs/bench/latent.json
    python bench/bench_latent.py --size 16x64x64 --repeats 1 --warmup 1   # a quick look
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

import harness
from latent_memory_gpu import SMALL_TEXT, SMALL_UNET, SMALL_VAE, sd_text_encoder
from loops import make_training_step

SCRIPT = Path(__file__).resolve()
# The pixel STUNet: SMALL_UNET on RGB, spatial attention at the coarsest level only (see above).
PIXEL_UNET = dict(
    SMALL_UNET,
    in_channels=3,
    out_channels=3,
    down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
)
CAPTION = "a red circle moving left on a black background"
GUIDANCE = 5.0  # as bench_sample.py and the pipeline's default
RUNS = (  # (task, model, cached)
    ("train", "pixel", False),
    ("train", "latent", False),
    ("train", "latent", True),
    ("sample", "pixel", False),
    ("sample", "latent", False),
)


# ---------------------------------------------------------------------------------------------
# Worker: one model, one task.
# ---------------------------------------------------------------------------------------------


class _Prediction(torch.nn.Module):
    """A STUNet returning its prediction tensor (``loops.make_training_step`` calls it so)."""

    def __init__(self, stunet: torch.nn.Module):
        super().__init__()
        self.stunet = stunet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.stunet(sample, timestep, text).sample


def build(model: str, folder: Path, device: torch.device):
    """(STUNet, VAE or None, text encoder) of ``model``, random weights, on ``device``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from lumiere.models.stunet import STUNet

    text_encoder = sd_text_encoder(folder, SMALL_TEXT).to(device)
    torch.manual_seed(0)
    unet2d = UNet2DConditionModel(**(SMALL_UNET if model == "latent" else PIXEL_UNET))
    stunet = STUNet.from_unet2d(unet2d).to(device)
    vae = AutoencoderKL(**SMALL_VAE).to(device).eval() if model == "latent" else None
    return stunet, vae, text_encoder


def measure(config: dict[str, Any]) -> dict[str, Any]:
    """Worker: time and memory of one training step or one clip."""
    from lumiere.models.vae import encode_video, vae_scale_factor
    from lumiere.pipelines import LumierePipeline
    from lumiere.testing.tiny_sd import make_scheduler

    device, dtype = harness.setup(config)
    frames, height, width = config["size"]
    with tempfile.TemporaryDirectory() as folder:
        stunet, vae, text_encoder = build(config["model"], Path(folder) / "sd", device)
    counts = {
        "params": sum(p.numel() for p in stunet.parameters()),
        "vae_params": sum(p.numel() for p in vae.parameters()) if vae is not None else 0,
    }
    if config["task"] == "train":
        stunet.freeze_spatial()
        stunet.train()
        generator = torch.Generator(device=device).manual_seed(1)
        clip = torch.rand(1, 3, frames, height, width, generator=generator, device=device) * 2 - 1

        def encoded() -> tuple[torch.Tensor, torch.Tensor]:
            """The step's inputs made afresh: the caption, and (latent) the clip through the VAE."""
            text_encoder.clear_cache()
            text = text_encoder.encode([CAPTION], device=device).states  # [1, 77, d]
            x0 = encode_video(vae, clip, generator=generator) if vae is not None else clip
            return x0, text

        cache = encoded()  # what the caches hold: the latents and text states of this clip
        fresh = config["model"] == "latent" and not config["cached"]
        step = make_training_step(_Prediction(stunet), tuple(cache[0].shape), device, dtype,
                                  inputs=encoded if fresh else lambda: cache)  # fmt: skip
        key = "step_s"
    else:
        stunet.eval()
        pipe = LumierePipeline(stunet, text_encoder, make_scheduler("sd1"), vae=vae)
        counts["latent_side"] = height // vae_scale_factor(vae) if vae is not None else height

        def step() -> torch.Tensor:
            text_encoder.clear_cache()
            return pipe(CAPTION, num_frames=frames, height=height, width=width,
                        num_inference_steps=config["steps"], guidance_scale=GUIDANCE,
                        generator=torch.Generator().manual_seed(0), output_type="pt").frames  # fmt: skip

        key = "clip_s"
    built_rss = harness.start_memory_window()
    return {**counts, **harness.measure(step, device, config, built_rss, key)}


# ---------------------------------------------------------------------------------------------
# Parent: run the workers, print the table and the ratios.
# ---------------------------------------------------------------------------------------------


def step_memory(row: dict[str, Any]) -> float:
    """MiB the timed work needed above the built models and inputs."""
    return row["peak_rss_mib"] - row["built_rss_mib"]


def seconds(row: dict[str, Any]) -> float:
    """Median of the timed calls."""
    return harness.median(row.get("step_s") or row["clip_s"])


def best_seconds(row: dict[str, Any]) -> float:
    """Fastest call, the first included: on a machine shared with other jobs, the call least
    slowed by them (the medians move with their load)."""
    return min([row["first_s"], *(row.get("step_s") or row["clip_s"])])


def label(task: str, model: str, cached: bool) -> str:
    if task == "sample":
        return f"clip, {model}"
    return f"train step, {model}" + ({"latent": ", cache" if cached else ", no cache"}.get(model, ""))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="16x256x256", help="output clip FRAMESxHEIGHTxWIDTH (pixels)")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps per clip")
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="torch threads per worker"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls first")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", choices=tuple(harness.DTYPES), default="fp32", help="autocast dtype")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds before a worker is killed")
    parser.add_argument("--json", default=None, help="also write every result to this JSON file")
    args = parser.parse_args()
    size = harness.parse_size(args.size)
    if size[1] % 64:
        raise SystemExit(
            f"--size {args.size}: height and width must be multiples of 64 (VAE 8x, then 3 halvings)"
        )
    base = {
        "threads": args.threads,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "device": args.device,
        "dtype": args.dtype,
        "size": list(size),
        "steps": args.steps,
    }
    rows, load_before = {}, os.getloadavg()
    for task, model, cached in RUNS:
        config = {**base, "task": task, "model": model, "cached": cached}
        rows[label(task, model, cached)] = row = harness.run_isolated(SCRIPT, config, args.timeout)
        print(f"{label(task, model, cached)}: {harness.fmt(row.get('wall_s'))} s wall", flush=True)
    results = report(args, size, rows)
    # Other processes on the machine slow every run alike only if they stay the same: say how busy it was.
    results["load_average_1min"] = {"before": load_before[0], "after": os.getloadavg()[0]}
    print(f"load average (1 min) before / after: {load_before[0]:.1f} / {os.getloadavg()[0]:.1f}")
    harness.write_json(args.json, results)


def report(args: argparse.Namespace, size: tuple[int, int, int], rows: dict[str, dict]) -> dict[str, Any]:
    frames, height, width = size
    machine = f"{harness.cpu_name()}; torch {torch.__version__}; device {args.device}; threads {args.threads}; {args.dtype}"
    print(f"\nmachine: {machine}")
    print(
        f"output: {frames} frames of {height}x{width}; latent STUNet on {frames}x{height // 8}x{width // 8} latents; "
        f"clip: {args.steps} denoising steps, guidance {GUIDANCE}; times: median of {args.repeats} after "
        f"{args.warmup} warm-up"
    )
    print("memory: VmHWM during the timed work minus the RSS before it (MiB); peak RSS: the whole process")
    table = []
    for name, row in rows.items():
        if "error" in row:
            table.append([name, "-", "-", "-", "-", row["error"][:80]])
            continue
        table.append([name, f"{row['params'] / 1e6:.2f}", f"{seconds(row):.3f}", f"{best_seconds(row):.3f}",
                      f"{step_memory(row):,.0f}", f"{row['peak_rss_mib']:,.0f}", ""])  # fmt: skip
    harness.print_table(
        ["run", "STUNet M params", "median s", "best s", "MiB", "peak RSS MiB", "error"], table
    )

    ratios: dict[str, float] = {}
    pixel, fresh, cached = "train step, pixel", "train step, latent, no cache", "train step, latent, cache"
    pairs = (  # (name, numerator run, denominator run, what is compared)
        ("train_time_pixel_over_latent_cache", pixel, cached, seconds),
        ("train_time_pixel_over_latent_no_cache", pixel, fresh, seconds),
        ("train_memory_pixel_over_latent_cache", pixel, cached, step_memory),
        ("cache_speedup", fresh, cached, seconds),
        ("clip_time_pixel_over_latent", "clip, pixel", "clip, latent", seconds),
        ("clip_memory_pixel_over_latent", "clip, pixel", "clip, latent", step_memory),
        ("best_train_time_pixel_over_latent_cache", pixel, cached, best_seconds),
        ("best_train_time_pixel_over_latent_no_cache", pixel, fresh, best_seconds),
        ("best_cache_speedup", fresh, cached, best_seconds),
        ("best_clip_time_pixel_over_latent", "clip, pixel", "clip, latent", best_seconds),
    )
    for key, numerator, denominator, measure_of in pairs:
        if "error" not in rows[numerator] and "error" not in rows[denominator]:
            ratios[key] = measure_of(rows[numerator]) / measure_of(rows[denominator])
            print(f"{key}: {ratios[key]:.2f}")
    return {"machine": machine, "args": vars(args), "rows": rows, "ratios": ratios}


if __name__ == "__main__":
    if not harness.serve_worker(measure):
        main()
