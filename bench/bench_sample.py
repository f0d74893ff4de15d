"""Sampling latency of one clip against peers (issue 7, figure 2).

Every model runs the same fixed denoising loop (``loops.guided_sample``): the pipeline's sampler
(DPM-Solver++ with trailing spacing, ``lumiere.pipelines.make_sampling_scheduler``), 25 steps,
classifier-free guidance as one batch of 2 (unconditional and conditional text states). The text
encoder is left out (it is the same for every model). One fresh process per model.

    python bench/bench_sample.py                                  # 16x32x32, 25 steps, guidance 5
    python bench/bench_sample.py --size 16x64x64 --repeats 3 --threads 2
    python bench/bench_sample.py --compile --channels-last
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

import harness
import peers
from loops import guided_sample

SCRIPT = Path(__file__).resolve()
TARGET_SPEEDUP = 1.5  # issue 7: sampling at least 1.5x faster than the fastest peer with temporal layers


def measure(config: dict[str, Any]) -> dict[str, Any]:
    """Worker: one model, one clip."""
    device, dtype = harness.setup(config)
    eager, model = harness.prepare_model(config, device)
    eager.eval()
    frames, height, width = config["size"]
    if frames % eager.frame_multiple:
        return {"error": f"frames must be a multiple of {eager.frame_multiple}"}
    generator = torch.Generator().manual_seed(0)
    text = peers.text_states(1, generator).to(device)
    null_text = peers.text_states(1, generator).to(device)
    built_rss = harness.start_memory_window()

    def sample() -> torch.Tensor:
        return guided_sample(
            model,
            (1, 3, frames, height, width),
            text,
            null_text,
            num_steps=config["steps"],
            guidance_scale=config["guidance"],
            device=device,
            dtype=dtype,
        )

    return {
        "params": peers.parameter_count(eager),
        **harness.measure(sample, device, config, built_rss, "sample_s"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    harness.add_common_arguments(parser, repeats=3)
    parser.set_defaults(warmup=1)
    parser.add_argument("--size", default="16x32x32", help="clip size FRAMESxHEIGHTxWIDTH")
    parser.add_argument("--steps", type=int, default=25, help="sampler steps")
    parser.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale")
    args = parser.parse_args()
    results = run(args)
    harness.write_json(args.json, results)


def run(args: argparse.Namespace) -> dict[str, Any]:
    names = harness.model_names(args)
    size = harness.parse_size(args.size)
    config = {**harness.base_config(args), "size": list(size), "steps": args.steps, "guidance": args.guidance}
    rows = {name: harness.run_isolated(SCRIPT, {**config, "model": name}, args.timeout) for name in names}

    print(harness.describe_machine(args))
    guided = "guidance " + (f"{args.guidance} (batch of 2)" if args.guidance > 1 else "off")
    print(f"clip: {size[0]} frames x {size[1]}x{size[2]}, DPM-Solver++ {args.steps} steps, {guided}")
    print(f"times: median of {args.repeats} samples after {args.warmup} warm-up sample(s)")
    print(harness.MEMORY_NOTE)
    table = []
    for name, r in rows.items():
        if "error" in r:
            table.append([name, "-", "-", "-", "-", "-", "-", f"failed: {r['error']}"])
            continue
        median = harness.median(r["sample_s"])
        memory = r.get("cuda_peak_mib", r["peak_rss_mib"] - r["built_rss_mib"])
        table.append(
            [
                name,
                f"{r['params'] / 1e6:.2f}",
                f"{median:.3f}",
                f"{min(r['sample_s']):.3f}",
                f"{1000 * median / args.steps:.1f}",
                f"{r['first_s']:.2f}",
                f"{r['peak_rss_mib']:,.0f}",
                f"{memory:,.0f}",
            ]
        )
    memory_header = "CUDA peak MiB" if args.device.startswith("cuda") else "sample MiB"
    harness.print_table(
        ["model", "params M", "median s", "min s", "ms/step", "first s", "peak RSS MiB", memory_header], table
    )
    print_ratios(rows)
    return {"args": vars(args), "rows": rows}


def print_ratios(rows: dict[str, dict[str, Any]]) -> None:
    ok = {name: harness.median(r["sample_s"]) for name, r in rows.items() if "error" not in r}
    if "stunet" not in ok:
        return
    stunet = ok["stunet"]
    if len(ok) > 1:
        print(
            "model time / STUNet time: "
            + ", ".join(f"{n} {t / stunet:.2f}x" for n, t in ok.items() if n != "stunet")
        )
    temporal = {n: t for n, t in ok.items() if n != "stunet" and peers.PEERS[n].temporal}
    if temporal:
        fastest = min(temporal, key=temporal.get)
        speedup = temporal[fastest] / stunet
        verdict = "met" if speedup >= TARGET_SPEEDUP else "NOT met"
        print(
            f"vs the fastest peer with temporal layers ({fastest}): {speedup:.3f}x (target >= {TARGET_SPEEDUP}x: {verdict})"
        )


if __name__ == "__main__":
    if not harness.serve_worker(measure):
        main()
