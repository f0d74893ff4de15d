"""Per-process memory of ``lumiere train`` whole (DDP) against sharded (FSDP, ZeRO-2, ZeRO-3) (issue 32, item 4).

The STUNet of the ``default`` preset with every width times ``--width-scale`` (4: image U-Net
channels 128/256/512), inflated (Sec. 3.1) and trained whole (``model.freeze_spatial: false``:
every weight has a gradient, two AdamW moments and an EMA copy), runs ``--steps`` steps of
``lumiere train`` under ``configs/accelerate/ddp.yaml``, ``fsdp.yaml``, ``deepspeed_zero2.yaml`` and
``deepspeed_zero3.yaml`` on ``--processes`` CPU processes (gloo), each launched by ``accelerate
launch`` exactly as a user would. Each process reports:

- ``placed``: its resident set once the network is placed (whole, or its FSDP shards) and the
  high-water mark is reset (``harness.start_memory_window``): libraries and weights;
- ``peak``: its high-water mark from there to the first checkpoint: optimizer state and EMA
  (created lazily / at placement), the FSDP units gathered for a forward and backward,
  activations, gradients;
- ``state``: the bytes of its own weights, AdamW moments and EMA, counted from the tensors (the
  part sharding divides by N; the gradients, as large as the weights, live from the backward to
  the step). Under ZeRO the weights are the model's (whole under ZeRO-2, its partitions under
  ZeRO-3; not counted: the whole copies ZeRO-3 keeps between steps of weights under DeepSpeed's
  ``stage3_param_persistence_threshold``, which the peak includes) plus DeepSpeed's fp32 master
  partitions (each storage once), the EMA and moments those of the master partitions.

Processes are started with ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed tensors leave the
resident set (glibc keeps small freed blocks otherwise). ZeRO runs on CPU through lumiere's own
driving of DeepSpeed's engine (``lumiere.distributed_zero``), as on GPUs.

    python bench/bench_distributed_memory.py --json docs/distributed_memory_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# Inside each training process (started by accelerate launch with --worker).
# ---------------------------------------------------------------------------------------------


def worker(config_path: str) -> None:
    """``lumiere.train.train`` on the config, with the memory window opened once the network is
    placed and read when the first checkpoint starts; each process writes its figures to
    ``OUTPUT_DIR/memory_rankR.json``."""
    sys.path.insert(0, str(Path(__file__).parent))
    import harness
    import lumiere.train as training
    from lumiere.config import load_config
    from lumiere.distributed import Placement, local

    report: dict = {}
    place, positions = Placement.place, training._data_positions

    def place_and_open_window(self, *args, **kwargs):
        forward_model, model, optimizer = place(self, *args, **kwargs)
        report["placed_mib"] = harness.start_memory_window()
        report.update(placement=self.kind, rank=self.accelerator.process_index)
        # ZeRO-3's weights are partitions: ds_numel is the whole weight's size
        report["parameters"] = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
        placed.extend([model, getattr(optimizer, "optimizer", optimizer), self.zero])
        return forward_model, model, optimizer

    def close_window(*args, **kwargs):  # every process calls it first thing in a checkpoint
        if "peak_mib" not in report:
            report["peak_mib"] = harness.peak_rss_mib()
            model, optimizer, zero = placed
            moments = [local(v) for state in optimizer.state.values() for v in state.values() if v.dim() > 0]
            if zero is None:
                weights = [local(p) for p in model.parameters()]
                ema = [local(p) for p in model.parameters() if p.requires_grad]  # a copy of each trained one
                held = sum(t.numel() * t.element_size() for t in weights + ema)
            else:  # ZeRO-3: each weight's partition; ZeRO-2: whole weights; and the fp32 master partitions
                # (views of flat buffers, which DeepSpeed may share with the masters: each storage once)
                pieces = [getattr(p, "ds_tensor", p) for p in model.parameters()] + zero.masters()
                storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in pieces}
                ema = zero.masters()  # a copy of each master partition
                held = sum(storages.values()) + sum(t.numel() * t.element_size() for t in ema)
            held += sum(t.numel() * t.element_size() for t in moments)
            report["state_mib"] = held / 2**20
        return positions(*args, **kwargs)

    placed: list = []
    Placement.place = place_and_open_window
    training._data_positions = close_window
    config = load_config(config_path)
    training.train(config, stop_after_steps=config.optim.max_steps - 1)
    (Path(config.output_dir) / f"memory_rank{report['rank']}.json").write_text(json.dumps(report))


# ---------------------------------------------------------------------------------------------
# The parent: one launch per placement.
# ---------------------------------------------------------------------------------------------


def make_image_model(folder: Path, scale: int) -> None:
    import torch

    from lumiere.models.presets import UNET_PRESETS, build_unet2d

    torch.manual_seed(0)
    widths = tuple(scale * c for c in UNET_PRESETS["default"]["block_out_channels"])
    build_unet2d("default", block_out_channels=widths).save_pretrained(folder)


CONFIG_FILES = {"ddp": "ddp", "fsdp": "fsdp", "zero2": "deepspeed_zero2", "zero3": "deepspeed_zero3"}


def launch(placement: str, config: Path, output_dir: Path, processes: int) -> list[dict]:
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "configs" / "accelerate" / f"{CONFIG_FILES[placement]}.yaml"),
        "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", "0",
        str(Path(__file__).resolve()), "--worker", str(config),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{placement} launch failed:\n{done.stderr[-3000:]}")
    return [json.loads((output_dir / f"memory_rank{rank}.json").read_text()) for rank in range(processes)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--width-scale", type=int, default=4, help="widths of the default preset times this")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2, help="training steps measured (>= 1)")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1, help="clips per process per step")
    parser.add_argument("--placements", nargs="+", default=list(CONFIG_FILES), choices=list(CONFIG_FILES))
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()

    results = {}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        make_image_model(root / "unet", args.width_scale)
        for placement in args.placements:
            config = {
                "stage": "stunet",
                "output_dir": str(root / placement),
                "model": {"init_from": str(root / "unet"), "preset": "default", "freeze_spatial": False},
                "data": {"resolution": args.resolution, "num_frames": args.frames},
                "optim": {"batch_size": args.batch, "max_steps": args.steps + 1, "warmup_steps": 1},
                "checkpoint_every": 10_000,
                "log_with": [],
            }
            path = root / f"{placement}.yaml"
            path.write_text(yaml.safe_dump(config))
            results[placement] = launch(placement, path, root / placement, args.processes)

    print(
        f"STUNet: default preset, widths x{args.width_scale}, trained whole; {args.processes} CPU processes;"
    )
    print(f"{args.batch} clip(s) of {args.frames}x{args.resolution}x{args.resolution} per process, fp32\n")
    print(
        f"{'placement':<10} {'rank':>4} {'parameters':>12} {'state MiB':>10} {'placed MiB':>11} {'peak MiB':>9}"
    )
    for placement, ranks in results.items():
        for r in ranks:
            print(
                f"{placement:<10} {r['rank']:>4} {r['parameters']:>12,} {r['state_mib']:>10.0f} "
                f"{r['placed_mib']:>11.0f} {r['peak_mib']:>9.0f}"
            )
    if args.json:
        payload = {"settings": vars(args), "results": results}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(sys.argv[2])
    else:
        main()
