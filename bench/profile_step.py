"""Where the time of one STUNet training step goes: ``torch.profiler`` table by operator.

One forward + backward of the preset's STUNet on a random clip (MSE to zero; the loss does not
change the cost), after one untimed warm-up step, sorted by self CPU time.

    python bench/profile_step.py --size 16x64x64 --threads 1
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from lumiere.models.presets import STUNET_PRESETS, TEXT_DIM, build_unet2d
from lumiere.models.stunet import STUNet


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="default")
    parser.add_argument("--size", default="16x64x64", help="FRAMESxHEIGHTxWIDTH")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rows", type=int, default=15, help="operators shown")
    args = parser.parse_args()
    frames, height, width = (int(v) for v in args.size.split("x"))
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = STUNet.from_unet2d(build_unet2d(args.preset), **STUNET_PRESETS[args.preset])
    video = torch.randn(args.batch, 3, frames, height, width)  # [B, C, T, H, W]
    timestep = torch.full((args.batch,), 500)
    text = torch.randn(args.batch, 16, TEXT_DIM)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(video, timestep, text).sample.square().mean().backward()

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    print(f"preset {args.preset}, clip {args.size}, batch {args.batch}, threads {args.threads}")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
