"""Growth of time and memory with the frame count, per model (issue 7, figure 3).

For each model and each frame count (16, 32, 64, 128 at 32x32 by default), one fresh process
measures either a training step (``--mode train``, batch 1: forward, backward, AdamW) or one
guided network evaluation (``--mode sample``: a batch of 2, no gradients, i.e. one of the 25
steps of ``bench_sample.py``). The STUNet compresses time, so its cost should grow more slowly
than that of models that keep every frame at every level.

    python bench/bench_frames.py                                  # train, 16..128 frames, 32x32
    python bench/bench_frames.py --mode sample --frames 16,32,64,128,256
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

import harness
import peers
from loops import autocast, make_training_step

SCRIPT = Path(__file__).resolve()


def measure(config: dict[str, Any]) -> dict[str, Any]:
    """Worker: one model, one frame count."""
    device, dtype = harness.setup(config)
    eager, model = harness.prepare_model(config, device)
    frames, resolution = config["frames"], config["resolution"]
    if frames % eager.frame_multiple:
        return {"error": f"frames must be a multiple of {eager.frame_multiple}"}
    built_rss = harness.start_memory_window()
    if config["mode"] == "train":
        shape = (config["batch"], 3, frames, resolution, resolution)
        work = make_training_step(model, shape, device, dtype, peers.text_states(config["batch"]).to(device))
    else:
        eager.eval()
        video = torch.randn(2, 3, frames, resolution, resolution, device=device)
        timesteps = torch.full((2,), 500, device=device)
        text = peers.text_states(2).to(device)

        @torch.no_grad()
        def work() -> torch.Tensor:
            with autocast(device, dtype):
                return model(video, timesteps, text)

    return {
        "params": peers.parameter_count(eager),
        **harness.measure(work, device, config, built_rss, "times_s"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    harness.add_common_arguments(parser, repeats=3)
    parser.set_defaults(warmup=1)
    parser.add_argument("--frames", default="16,32,64,128", help="comma-separated frame counts")
    parser.add_argument("--resolution", type=int, default=32, help="frame height and width")
    parser.add_argument("--mode", choices=("train", "sample"), default="train")
    parser.add_argument("--batch", type=int, default=1, help="clips per training step (--mode train)")
    args = parser.parse_args()
    results = run(args)
    harness.write_json(args.json, results)


def run(args: argparse.Namespace) -> dict[str, Any]:
    names = harness.model_names(args)
    frame_counts = [int(f) for f in args.frames.split(",")]
    config = {
        **harness.base_config(args),
        "resolution": args.resolution,
        "mode": args.mode,
        "batch": args.batch,
    }
    rows: dict[str, dict[int, dict[str, Any]]] = {}
    for name in names:
        rows[name] = {}
        for frames in frame_counts:
            size = [frames, args.resolution, args.resolution]
            result = harness.run_isolated(
                SCRIPT, {**config, "model": name, "frames": frames, "size": size}, args.timeout
            )
            rows[name][frames] = result

    print(harness.describe_machine(args))
    work = (
        f"one training step, batch {args.batch}"
        if args.mode == "train"
        else "one guided network evaluation (batch 2, no grad)"
    )
    print(
        f"work: {work}; frames {args.resolution}x{args.resolution}; median of {args.repeats} after {args.warmup} warm-up"
    )
    print(
        "memory: each (model, frame count) runs in a fresh process; 'peak RSS' is its resident-set high-water "
        "mark (VmHWM) during the timed work, whole process; 'work MiB' that peak minus the RSS held before "
        "the work (activations, gradients, optimizer state); CUDA: torch.cuda.max_memory_allocated"
    )
    headers = ["model"] + [f"{f} fr" for f in frame_counts] + [f"x {frame_counts[-1]}/{frame_counts[0]}"]

    def cell(r: dict[str, Any], key: str) -> float | None:
        if "error" in r:
            return None
        if key == "time":
            return harness.median(r["times_s"])
        if "cuda_peak_mib" in r:
            return r["cuda_peak_mib"]
        return r["peak_rss_mib"] if key == "peak" else r["peak_rss_mib"] - r["built_rss_mib"]

    tables = [("time", "seconds", 3), ("peak", "peak RSS MiB (whole process)", 0), ("work", "work MiB", 0)]
    if args.device.startswith("cuda"):
        tables = [("time", "seconds", 3), ("peak", "CUDA peak MiB", 0)]
    for key, title, digits in tables:
        print(f"\n{title}")
        table = []
        for name in names:
            values = [cell(rows[name][f], key) for f in frame_counts]
            growth = values[-1] / values[0] if values[0] and values[-1] else None
            shown = ["n/a" if v is None else f"{v:,.{digits}f}" for v in values]
            table.append([name, *shown, "-" if growth is None else f"{growth:.1f}"])
        harness.print_table(headers, table)
    errors = [(n, f, r["error"]) for n in names for f, r in rows[n].items() if "error" in r]
    for name, frames, error in errors:
        print(f"{name} at {frames} frames: {error}")
    stunet = rows.get("stunet", {})
    if stunet:
        for name in names:
            if name == "stunet":
                continue
            ratios = [
                f"{f}: {cell(rows[name][f], 'time') / cell(stunet[f], 'time'):.2f}x"
                for f in frame_counts
                if cell(rows[name][f], "time") and cell(stunet[f], "time")
            ]
            if ratios:
                print(f"{name} time / STUNet time: " + ", ".join(ratios))
    return {"args": vars(args), "rows": {n: {str(f): r for f, r in v.items()} for n, v in rows.items()}}


if __name__ == "__main__":
    if not harness.serve_worker(measure):
        main()
