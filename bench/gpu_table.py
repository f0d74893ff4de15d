"""One prepared script for a lent GPU: figures 1, 2 and 4 of issue 7 on CUDA, bf16, torch.compile.

Runs ``bench_train.py`` (training throughput, peak memory, utilisation) and ``bench_sample.py``
(sampling latency) with ``--device cuda --dtype bf16 --compile``: every model in its own process,
bf16 autocast over fp32 weights (as Accelerate's ``mixed_precision="bf16"``), inductor. The
utilisation of a STUNet training step is reported twice: against a bf16 ``torch.mm`` peak
measured in the same run, and against the card's published dense bf16 peak (table below).

Everything printed also goes to ``$OUT/gpu_table.txt``, and the raw results to
``$OUT/gpu_table.json`` (``$OUT`` unset: ``runs/gpu_table``), written after each figure so a run cut
short still leaves what it measured.

    python bench/gpu_table.py                       # both sizes, default models, ~5-8 min on an H100
    python bench/gpu_table.py --sizes 16x64x64 --skip-sample
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

import bench_sample
import bench_train
import harness
import peers

# Dense (no structured sparsity) bf16 tensor-core peaks, TFLOP/s. NVIDIA quotes the sparse figure
# first; the dense one is half of it. Sources: NVIDIA H100 Tensor Core GPU datasheet (H100 SXM
# 1,979 / PCIe 1,513 / NVL 1,671 TFLOPS bf16 with sparsity), NVIDIA H200 Tensor Core GPU datasheet
# (H200 SXM 1,979 with sparsity, same compute as the H100 SXM), NVIDIA A100 datasheet (312 dense).
BF16_DENSE_PEAK_TFLOPS = {
    "H200": 989.4,
    "H100 NVL": 835.5,
    "H100 PCIe": 756.5,
    "H100": 989.4,  # SXM5 (its device name is e.g. "NVIDIA H100 80GB HBM3")
    "A100": 312.0,
}


def spec_peak(device_name: str) -> tuple[str, float] | None:
    """(table key, dense bf16 FLOP/s) of the first key found in the device name, else None."""
    for key, tflops in BF16_DENSE_PEAK_TFLOPS.items():
        if all(part in device_name for part in key.split()):
            return key, tflops * 1e12
    return None


class Tee:
    """Write to the console and to a file."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
            stream.flush()
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models", default=",".join(peers.DEFAULT_MODELS), help=f"from: {', '.join(peers.PEERS)}"
    )
    parser.add_argument("--preset", default="default")
    parser.add_argument("--sizes", default="16x32x32,16x64x64", help="training clip sizes (figure 1)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--sample-size", default="16x32x32", help="sampled clip size (figure 2)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls after compilation")
    parser.add_argument("--no-compile", action="store_true", help="eager bf16 instead of torch.compile")
    parser.add_argument("--skip-sample", action="store_true", help="figures 1 and 4 only")
    parser.add_argument("--timeout", type=float, default=300, help="seconds before one worker is killed")
    parser.add_argument(
        "--cpu-smoke", action="store_true", help="check the plumbing on CPU (tiny preset, fp32, no compile)"
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if not args.cpu_smoke and not torch.cuda.is_available():
        raise SystemExit(
            "gpu_table.py needs a CUDA device and torch.cuda.is_available() is False here. "
            "On CPU run bench/bench_train.py and bench/bench_sample.py instead "
            "(or --cpu-smoke to check this script's plumbing)."
        )
    out = Path(os.environ.get("OUT") or "runs/gpu_table")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "gpu_table.txt", "w") as log, contextlib.redirect_stdout(Tee(sys.stdout, log)):
        run(args, out)


def run(args: argparse.Namespace, out: Path) -> None:
    smoke = args.cpu_smoke
    device = "cpu" if smoke else "cuda"
    common = dict(
        models=args.models,
        preset="tiny" if smoke else args.preset,
        threads=torch.get_num_threads(),
        repeats=args.repeats,
        warmup=args.warmup,
        device=device,
        dtype="fp32" if smoke else "bf16",
        compile=not (smoke or args.no_compile),
        channels_last=False,
        timeout=args.timeout,
        json=None,
    )
    name = "CPU (smoke run)" if smoke else torch.cuda.get_device_name(0)
    spec = None if smoke else spec_peak(name)
    print(
        f"device: {name}; bf16 dense peak from the datasheet: {f'{spec[1] / 1e12:,.1f} TFLOP/s ({spec[0]})' if spec else 'unknown'}"
    )
    results: dict[str, Any] = {"device": name, "spec_peak_flops_per_s": spec[1] if spec else None}
    start = time.monotonic()

    # Figures 1 and 4: training throughput, memory, utilisation.
    train_args = argparse.Namespace(
        **common,
        sizes=args.sizes,
        batch=args.batch,
        matmul_size=512 if smoke else 8192,
        matmul_repeats=3 if smoke else 20,
    )
    results["train"] = bench_train.run(train_args)
    save(out, results)
    if spec:
        print(
            f"\nutilisation against the datasheet peak ({spec[0]}, {spec[1] / 1e12:,.1f} TFLOP/s bf16 dense):"
        )
        for size, rows in results["train"]["sizes"].items():
            for model, r in rows.items():
                if "error" not in r:
                    achieved = r["flops_per_step"] / harness.median(r["step_s"])
                    print(
                        f"  {size} {model}: {achieved / 1e12:,.2f} TFLOP/s = {100 * achieved / spec[1]:.2f}%"
                    )
    print(f"(figures 1 and 4 took {time.monotonic() - start:.0f} s)")

    # Figure 2: sampling latency.
    if not args.skip_sample:
        sample_args = argparse.Namespace(**common, size=args.sample_size, steps=args.steps, guidance=5.0)
        print()
        results["sample"] = bench_sample.run(sample_args)
        save(out, results)
    print(f"\ntotal {time.monotonic() - start:.0f} s; results in {out}/gpu_table.json and gpu_table.txt")


def save(out: Path, results: dict[str, Any]) -> None:
    (out / "gpu_table.json").write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
