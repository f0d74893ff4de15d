"""Training-step throughput, peak memory and utilisation against peers (issue 7, figures 1 and 4).

For each clip size and each model (``peers.py``: the STUNet and its peers at comparable parameter
counts), one fresh process times full training steps (v-prediction loss with min-SNR weights,
backward, AdamW) on a batch of clips and reports clips/s and peak memory. It also counts the FLOPs
of one step (``torch.utils.flop_counter``: matmuls, convolutions, attention, forward and backward)
and divides FLOPs/s by the peak matmul FLOP/s measured in the same run: the utilisation.

    python bench/bench_train.py                                   # 16x32x32 and 16x64x64, batch 4
    python bench/bench_train.py --sizes 16x32x32 --repeats 3 --threads 2
    python bench/bench_train.py --compile --channels-last         # speed levers, same table
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import harness
import peers
from loops import forward_backward, make_training_step

SCRIPT = Path(__file__).resolve()
TARGET_SPEEDUP = 1.5  # issue 7: STUNet at least 1.5x the fastest peer with temporal layers
TARGET_UTILISATION = 0.40  # issue 7: at least 40% of the measured matmul peak


def measure(config: dict[str, Any]) -> dict[str, Any]:
    """Worker: one model, one clip size."""
    if config["task"] == "matmul_peak":
        return harness.matmul_peak(config)
    device, dtype = harness.setup(config)
    eager, model = harness.prepare_model(config, device)
    frames, height, width = config["size"]
    if frames % eager.frame_multiple:
        return {"error": f"frames must be a multiple of {eager.frame_multiple}"}
    shape = (config["batch"], 3, frames, height, width)
    text = peers.text_states(config["batch"]).to(device)
    built_rss = harness.start_memory_window()
    flops = harness.count_flops(lambda: forward_backward(eager, shape, device, dtype, text))
    step = make_training_step(model, shape, device, dtype, text)
    return {
        "params": peers.parameter_count(eager),
        "flops_per_step": flops,
        **harness.measure(step, device, config, built_rss, "step_s", first_key="first_step_s"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    harness.add_common_arguments(parser)
    parser.add_argument("--sizes", default="16x32x32,16x64x64", help="clip sizes FRAMESxHEIGHTxWIDTH")
    parser.add_argument("--batch", type=int, default=4, help="clips per training step")
    parser.add_argument(
        "--matmul-size", type=int, default=2048, help="side of the square matmul for the peak"
    )
    parser.add_argument("--matmul-repeats", type=int, default=10)
    args = parser.parse_args()
    results = run(args)
    harness.write_json(args.json, results)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure and print every table; returns the raw results."""
    names = harness.model_names(args)
    sizes = [harness.parse_size(s) for s in args.sizes.split(",")]
    base = harness.base_config(args)
    peak_config = {
        **base,
        "task": "matmul_peak",
        "matmul_size": args.matmul_size,
        "matmul_repeats": args.matmul_repeats,
    }
    peak_before = harness.run_isolated(SCRIPT, peak_config, args.timeout)
    if "error" in peak_before:
        raise SystemExit(f"matmul peak measurement failed: {peak_before['error']}")
    model_rows = {}
    for size in sizes:
        for name in names:
            config = {**base, "task": "train", "model": name, "size": list(size), "batch": args.batch}
            model_rows[size, name] = harness.run_isolated(SCRIPT, config, args.timeout)
    # Measured again after the models, and the higher one kept: one short burst of load from
    # elsewhere must not lower the peak (that would inflate every utilisation).
    peak_after = harness.run_isolated(SCRIPT, peak_config, args.timeout)
    peaks = [p["flops_per_s"] for p in (peak_before, peak_after) if "error" not in p]
    peak_flops = max(peaks)

    print(harness.describe_machine(args))
    print(
        f"peak matmul: {peak_flops / 1e9:,.1f} GFLOP/s ({args.dtype} torch.mm {args.matmul_size}^2, best of "
        f"{args.matmul_repeats}, same threads, measured before and after the models in this run: "
        + ", ".join(f"{p / 1e9:,.1f}" for p in peaks)
        + ")"
    )
    print(
        f"training step: batch {args.batch}, v-prediction + min-SNR loss, backward, AdamW; every weight trained"
    )
    print(f"times: median of {args.repeats} steps after {args.warmup} warm-up steps")
    print(harness.MEMORY_NOTE)

    results: dict[str, Any] = {
        "peak_flops_per_s": peak_flops,
        "peaks": peaks,
        "args": vars(args),
        "sizes": {},
    }
    for size in sizes:
        rows = {name: model_rows[size, name] for name in names}
        results["sizes"]["x".join(map(str, size))] = rows
        print_size(size, rows, args, peak_flops)
    return results


def print_size(size, rows: dict[str, dict[str, Any]], args, peak_flops: float) -> None:
    frames, height, width = size
    print(f"\n== {frames} frames x {height}x{width}, batch {args.batch} ==")
    table = []
    for name, r in rows.items():
        if "error" in r:
            table.append([name, "-", "-", "-", "-", "-", "-", "-", f"failed: {r['error']}"])
            continue
        step = harness.median(r["step_s"])
        achieved = r["flops_per_step"] / step
        memory = r.get("cuda_peak_mib", r["peak_rss_mib"] - r["built_rss_mib"])
        table.append(
            [
                name,
                f"{r['params'] / 1e6:.2f}",
                f"{step:.3f}",
                f"{args.batch / step:.2f}",
                f"{r['peak_rss_mib']:,.0f}",
                f"{memory:,.0f}",
                f"{r['flops_per_step'] / 1e9:,.1f}",
                f"{achieved / 1e9:,.1f}",
                f"{100 * achieved / peak_flops:.1f}",
            ]
        )
    memory_header = "CUDA peak MiB" if args.device.startswith("cuda") else "step MiB"
    harness.print_table(
        [
            "model",
            "params M",
            "step s",
            "clips/s",
            "peak RSS MiB",
            memory_header,
            "GFLOP/step",
            "GFLOP/s",
            "util %",
        ],
        table,
    )
    print_ratios(rows, args, peak_flops)


def print_ratios(rows: dict[str, dict[str, Any]], args, peak_flops: float) -> None:
    ok = {name: r for name, r in rows.items() if "error" not in r}
    if "stunet" not in ok:
        return
    throughput = {name: args.batch / harness.median(r["step_s"]) for name, r in ok.items()}
    stunet = throughput["stunet"]
    if len(throughput) > 1:
        print(
            "STUNet clips/s / model clips/s: "
            + ", ".join(f"{n} {stunet / t:.2f}x" for n, t in throughput.items() if n != "stunet")
        )
    temporal_peers = {n: t for n, t in throughput.items() if n != "stunet" and peers.PEERS[n].temporal}
    if temporal_peers:
        fastest = max(temporal_peers, key=temporal_peers.get)
        speedup = stunet / temporal_peers[fastest]
        verdict = "met" if speedup >= TARGET_SPEEDUP else "NOT met"
        print(
            f"vs the fastest peer with temporal layers ({fastest}): {speedup:.3f}x (target >= {TARGET_SPEEDUP}x: {verdict})"
        )
    r = ok["stunet"]
    utilisation = r["flops_per_step"] / harness.median(r["step_s"]) / peak_flops
    verdict = "met" if utilisation >= TARGET_UTILISATION else "NOT met"
    print(
        f"STUNet utilisation (figure 4): {r['flops_per_step'] / 1e9:,.1f} GFLOP/step / {harness.median(r['step_s']):.3f} s "
        f"/ {peak_flops / 1e9:,.1f} GFLOP/s peak = {100 * utilisation:.1f}% (target >= {100 * TARGET_UTILISATION:.0f}%: {verdict})"
    )


if __name__ == "__main__":
    if not harness.serve_worker(measure):
        main()
