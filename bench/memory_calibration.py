"""Calibration of the memory guard (``lumiere.pipelines.memory.estimate_peak_bytes``, issue 8).

For a few STUNets and shapes, one no-grad forward pass each; the peak resident set above the
resident model and inputs (``harness.start_memory_window`` / ``peak_rss_mib``) is compared with the
estimate of the activations. The measuring process runs with ``MALLOC_MMAP_THRESHOLD_=65536`` so
freed tensors leave the resident set (the estimate counts live tensors); ``--default-malloc``
measures with glibc's default allocator instead, which keeps some freed memory resident.

    python bench/memory_calibration.py                  # the table in the estimate's docstring
    python bench/memory_calibration.py --default-malloc
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch

import harness

SCRIPT = Path(__file__).resolve()
TEXT_TOKENS = 32  # MiniLM's max_length
FOUR_LEVELS = {
    "block_out_channels": [32, 64, 128, 128],
    "down_block_types": ["DownBlock2D"] + ["CrossAttnDownBlock2D"] * 3,
    "up_block_types": ["CrossAttnUpBlock2D"] * 3 + ["UpBlock2D"],
    "layers_per_block": 2,
}
WIDE_TINY = {"block_out_channels": [48, 96], "norm_num_groups": 16}
# (preset, U-Net overrides, [(clips, frames, height, width), ...])
CASES = [
    ("tiny", {}, [(1, 8, 64, 64), (1, 16, 64, 64), (1, 32, 64, 64), (2, 16, 64, 64), (1, 16, 128, 128),
                  (1, 8, 128, 128), (1, 64, 32, 32), (1, 16, 32, 32), (1, 32, 96, 96)]),
    ("default", {}, [(1, 16, 32, 32), (1, 16, 64, 64), (1, 32, 64, 64), (2, 16, 64, 64), (1, 16, 128, 128),
                     (1, 64, 32, 32), (1, 8, 96, 96), (1, 4, 128, 128)]),
    ("tiny", WIDE_TINY, [(1, 16, 64, 64), (1, 32, 64, 64)]),
    ("default", FOUR_LEVELS, [(1, 16, 64, 64), (1, 8, 128, 128)]),
]  # fmt: skip


def build(preset: str, overrides: dict):
    from lumiere.models.presets import STUNET_PRESETS, build_unet2d
    from lumiere.models.stunet import STUNet

    torch.manual_seed(0)
    return STUNet.from_unet2d(build_unet2d(preset, **overrides), **STUNET_PRESETS[preset]).eval()


def worker(preset: str, overrides: dict, shapes: list) -> None:
    """Measure each shape in this process; print one JSON line per shape."""
    from lumiere.pipelines.memory import estimate_peak_bytes

    torch.set_num_threads(1)
    model = build(preset, overrides)
    text_width = model.config.unet_config["cross_attention_dim"]
    for clips, frames, height, width in [(1, model.temporal_factor, 16, 16), *shapes]:  # first: warm-up
        sample = torch.randn(clips, model.in_channels, frames, height, width)
        states = torch.randn(clips, TEXT_TOKENS, text_width)
        mask = torch.ones(clips, TEXT_TOKENS, dtype=torch.long)
        before = harness.start_memory_window()
        with torch.no_grad():
            output = model(sample, 500, states, encoder_attention_mask=mask).sample
        measured = (harness.peak_rss_mib() - before) * 2**20
        del output
        estimate = estimate_peak_bytes(
            model, clips, frames, height, width, text_tokens=TEXT_TOKENS, include_weights=False
        )
        row = dict(preset=preset, overrides=overrides, clips=clips, frames=frames, size=f"{height}x{width}")
        print(json.dumps({**row, "measured": measured, "estimate": estimate}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--default-malloc", action="store_true", help="keep glibc's default mmap threshold")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*json.loads(args.worker))
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not args.default_malloc:
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    errors = []
    print(
        f"{'model':>28} {'clips':>5} {'frames':>6} {'size':>8} {'measured':>10} {'estimate':>10} {'error':>7}"
    )
    for preset, overrides, shapes in CASES:
        command = [sys.executable, str(SCRIPT), "--worker", json.dumps([preset, overrides, shapes])]
        lines = subprocess.run(
            command, env=env, capture_output=True, text=True, check=True
        ).stdout.splitlines()
        for row in map(json.loads, lines[1:]):  # lines[0]: the warm-up
            error = row["estimate"] / row["measured"] - 1
            errors.append(error)
            name = preset + (f" {overrides['block_out_channels']}" if overrides else "")
            print(
                f"{name:>28} {row['clips']:>5} {row['frames']:>6} {row['size']:>8} "
                f"{row['measured'] / 2**20:>8.0f}MB {row['estimate'] / 2**20:>8.0f}MB {error:>+7.0%}"
            )
    print(f"error: min {min(errors):+.0%}, median {statistics.median(errors):+.0%}, max {max(errors):+.0%}")


if __name__ == "__main__":
    main()
