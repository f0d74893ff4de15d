"""Freed memory kept (``lumiere.runtime.keep_freed_memory``) against glibc's malloc defaults.

Each setting runs in its own fresh process (``LUMIERE_KEEP_FREED_MEMORY=1`` or ``0``), on the same
work, and reports wall time, the CPU time spent in the kernel, minor page faults and peak resident
memory:

- ``generate``: the shipped pipeline's base model, ``--batch`` prompts of ``--frames`` frames at
  32x32, ``--steps`` sampling steps (after one untimed call of one step), guidance 5: what the
  long-clip benchmark runs, and ``lumiere generate`` before its SSR;
- ``train``: training steps (v-prediction loss, backward, AdamW; ``loops.make_training_step``) of
  the shipped base STUNet on ``--train-batch`` clips of 16x32x32, after one untimed step.

    python bench/bench_allocator.py                       # 80 frames x 4, 3 steps; train batch 8
    python bench/bench_allocator.py --frames 16 --batch 8 --threads 2
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path
from typing import Any

import torch

import harness
from loops import make_training_step
from lumiere.runtime import ENV_SWITCH

SCRIPT = Path(__file__).resolve()
SETTINGS = {"kept": "1", "glibc default": "0"}


def _usage() -> dict[str, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"user_s": usage.ru_utime, "sys_s": usage.ru_stime, "minor_faults": usage.ru_minflt}


class Unconditioned(torch.nn.Module):
    """The shipped STUNet as a text-to-video denoiser: its conditioning channels (Sec. 4) zero."""

    def __init__(self, stunet: torch.nn.Module):
        super().__init__()
        self.stunet = stunet

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        extra = self.stunet.config.get("extra_in_channels") or 0
        zeros = noisy.new_zeros(noisy.shape[0], extra, *noisy.shape[2:])
        return self.stunet(torch.cat([noisy, zeros], dim=1), timesteps, encoder_hidden_states=text).sample


def measure(config: dict[str, Any]) -> dict[str, Any]:
    """Worker: one kind of work under the allocator setting of this process's environment."""
    torch.set_num_threads(config["threads"])
    torch.manual_seed(0)
    from lumiere.pipelines import LumierePipeline

    pipe = LumierePipeline.from_pretrained()
    pipe.set_progress_bar_config(disable=True)
    if config["work"] == "generate":
        prompts = ["a red circle bouncing quickly on a black background"] * config["batch"]

        def work(steps: int) -> None:
            generator = torch.Generator().manual_seed(0)
            pipe(
                prompts,
                num_frames=config["frames"],
                num_inference_steps=steps,
                generator=generator,
                upsample=False,
            )

        work(1)
        built = harness.start_memory_window()
        before, start = _usage(), time.perf_counter()
        work(config["steps"])
        repeats = 1
    else:
        model = Unconditioned(pipe.stunet.train())
        batch = config["train_batch"]
        text = torch.randn(batch, 16, pipe.text_encoder.dim)
        step = make_training_step(model, (batch, 3, 16, 32, 32), torch.device("cpu"), text=text)
        step()
        built = harness.start_memory_window()
        before, start = _usage(), time.perf_counter()
        repeats = config["train_steps"]
        for _ in range(repeats):
            step()
    seconds = time.perf_counter() - start
    after = _usage()
    return {
        "seconds": seconds / repeats,
        **{key: (after[key] - before[key]) / repeats for key in after},
        "built_rss_mib": built,
        "peak_rss_mib": harness.peak_rss_mib(),
        "kept": harness.KEEPS_FREED_MEMORY,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=80)
    parser.add_argument("--batch", type=int, default=4, help="prompts per generate call")
    parser.add_argument("--steps", type=int, default=3, help="sampling steps timed")
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default="generate,train", help="comma-separated of generate, train")
    parser.add_argument("--json", default=None, help="write the raw results here")
    args = parser.parse_args()
    print(harness.describe_machine(argparse.Namespace(device="cpu", threads=args.threads, dtype="fp32",
                                                      compile=False, channels_last=False)))  # fmt: skip
    results: dict[str, Any] = {"args": vars(args), "work": {}}
    rows = []
    for work in [w.strip() for w in args.work.split(",") if w.strip()]:
        config = {**vars(args), "work": work}
        measured = {
            name: harness.run_isolated(SCRIPT, config, env={ENV_SWITCH: flag})
            for name, flag in SETTINGS.items()
        }
        results["work"][work] = measured
        for name, m in measured.items():
            if "error" in m:
                rows.append([work, name, m["error"], "", "", "", ""])
                continue
            default = measured["glibc default"]
            speedup = default["seconds"] / m["seconds"] if "seconds" in default else None
            rows.append([work, name, harness.fmt(m["seconds"], 1), harness.fmt(m["sys_s"], 1),
                         f"{m['minor_faults'] / 1e6:.2f}", f"{m['peak_rss_mib']:.0f}", harness.fmt(speedup, 2)])  # fmt: skip
    harness.print_table(["work", "malloc", "s (a step/call)", "kernel CPU s", "page faults (M)", "peak RSS MiB",
                         "speed-up"], rows)  # fmt: skip
    print(f"generate: {args.batch} x {args.frames} frames, {args.steps} steps; train: batch {args.train_batch} "
          f"of 16x32x32, a step; each setting in a fresh process ({ENV_SWITCH}=1/0)")  # fmt: skip
    if args.json:
        harness.write_json(args.json, results)


if __name__ == "__main__":
    if not harness.serve_worker(measure):
        main()
