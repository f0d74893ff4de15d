"""SSR quality against bilinear upsampling (issue 5): PSNR to the true high-res clip.

Real moving-shapes clips (16 frames at 64x64, one per prompt drawn from the caption grammar) are
area-downsampled to 32x32, then upsampled by the SSR (``pipe.upsample``, window 8, overlap 2) and
by bilinear interpolation; both are compared with the true clip.

    python bench/ssr_quality.py                                   # the shipped model, 25 steps
    python bench/ssr_quality.py --model runs/ssr_residual/model --steps 10
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from lumiere.eval.conditional import psnr
from lumiere.eval.evaluate import draw_prompts, real_clips_for
from lumiere.pipelines import LumierePipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default=None, help="pipeline directory with ssr/ (default: the shipped one)"
    )
    parser.add_argument("--count", type=int, default=6, help="clips (prompts)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = LumierePipeline.from_pretrained(args.model)
    if pipe.ssr is None:
        raise SystemExit(f"{args.model or 'the shipped model'} has no SSR model (no ssr/ folder)")
    pipe.set_progress_bar_config(disable=True)
    scale = pipe.ssr_scale
    gains = []
    for i, prompt in enumerate(draw_prompts(args.count, 3)):
        truth = real_clips_for([prompt], 16, 32 * scale, seed=11 + i)[0]  # [16, H, W, 3]
        low = F.avg_pool2d(torch.from_numpy(truth).permute(0, 3, 1, 2), scale)  # [16, 3, h, w]
        bilinear = F.interpolate(low, scale_factor=scale, mode="bilinear", align_corners=False)
        bilinear = bilinear.permute(0, 2, 3, 1).clamp(0, 1).numpy()
        start = time.perf_counter()
        upsampled = pipe.upsample(
            low.permute(0, 2, 3, 1).numpy()[None],
            prompt,
            num_inference_steps=args.steps,
            generator=torch.Generator().manual_seed(0),
        ).frames[0]
        seconds = time.perf_counter() - start
        ssr_db, bilinear_db = psnr(upsampled, truth), psnr(bilinear, truth)
        gains.append(ssr_db - bilinear_db)
        print(f"{prompt!r}: SSR {ssr_db:.2f} dB, bilinear {bilinear_db:.2f} dB, {seconds:.1f} s", flush=True)
    print(f"mean gain over bilinear: {np.mean(gains):+.2f} dB ({args.steps} steps, {args.count} clips)")


if __name__ == "__main__":
    main()
