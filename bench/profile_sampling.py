"""Where the time of one *sampling* network call goes: per block and per operator (issue 34).

Profiles the shipped pipeline's two networks at the sizes ``lumiere generate`` calls them:

- base: the conditional base STUNet on ``[2, 7, 16, 32, 32]`` (classifier-free guidance runs the
  unconditional and conditional clip in one batch of 2; 3 clip + 4 conditioning channels);
- ssr: the SSR STUNet on one MultiDiffusion window ``[1, 6, 8, 64, 64]`` (3 clip + 3 low-res
  channels, no guidance), and with ``--ssr-frames 16`` the whole clip in one window.

For each: the time of each top-level block (forward hooks, median of ``--repeats`` calls), the
``torch.profiler`` table by operator (self CPU time, one call), and the FLOPs of one call
(``torch.utils.flop_counter``, the CPU attention kernel included) over the measured fp32 matmul peak: the utilisation.

    python bench/profile_sampling.py --threads 2
    python bench/profile_sampling.py --threads 2 --channels-last --rows 25
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from lumiere.models.stunet import STUNet
from lumiere.pipelines import LumierePipeline

PROMPT = "a red circle moving right on a black background"


def call_inputs(pipe: LumierePipeline, which: str, frames: int) -> tuple[STUNet, dict]:
    """The network and the keyword arguments of one sampling call of it, as the pipeline makes them."""
    text = pipe.text_encoder.encode([PROMPT, ""])
    if which == "base":
        model, batch, size = pipe.stunet, 2, 32
        sample = torch.randn(batch, model.in_channels, frames, size, size)
        extra = {}
    else:
        model, batch, size = pipe.ssr, 1, 64
        sample = torch.randn(batch, model.in_channels, frames, size, size)
        extra = {"noise_level": torch.full((batch,), 100)}
    kwargs = dict(
        sample=sample,
        timestep=torch.tensor(500),
        encoder_hidden_states=text.states[:batch],
        encoder_attention_mask=text.mask[:batch],
        **extra,
    )
    return model, kwargs


def block_times(model: STUNet, kwargs: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each top-level block of one call (forward hooks, CPU: synchronous)."""
    blocks = {"conv_in": model.conv_in, "mid_block": model.mid_block, "conv_out": model.conv_out}
    blocks |= {f"down_blocks.{i}": b for i, b in enumerate(model.down_blocks)}
    blocks |= {f"up_blocks.{i}": b for i, b in enumerate(model.up_blocks)}
    blocks |= {f"mid.temporal_attentions.{i}": b for i, b in enumerate(model.mid_block.temporal_attentions)}
    samples: dict[str, list[float]] = defaultdict(list)
    starts: dict[str, float] = {}
    handles = []
    for name, module in blocks.items():
        handles.append(
            module.register_forward_pre_hook(lambda m, a, n=name: starts.__setitem__(n, time.perf_counter()))
        )
        handles.append(
            module.register_forward_hook(
                lambda m, a, o, n=name: samples[n].append(time.perf_counter() - starts[n])
            )
        )
    totals = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(**kwargs)
        totals.append(time.perf_counter() - start)
    for handle in handles:
        handle.remove()
    out = {name: statistics.median(values) for name, values in samples.items()}
    out["total"] = statistics.median(totals)
    return out


def _cpu_flash_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of ``aten._scaled_dot_product_flash_attention_for_cpu`` from its input shapes (QK^T
    and PV, 2 per multiply-add), which ``torch.utils.flop_counter`` counts only for the CUDA kernels."""
    batch, heads, queries, width = query
    keys = key[-2]
    return 2 * batch * heads * queries * keys * (width + value[-1])


def count_flops(fn) -> int:
    """FLOPs of ``fn()``: ``FlopCounterMode`` with the CPU attention kernel counted too."""
    kernel = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    counter = FlopCounterMode(display=False, custom_mapping={kernel: _cpu_flash_attention_flops})
    with counter:
        fn()
    return counter.get_total_flops()


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """Best FLOP/s of a square fp32 ``torch.mm`` (2 n^3 FLOPs)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="pipeline directory (default: the shipped model)")
    parser.add_argument("--which", default="base,ssr", help="comma-separated: base, ssr")
    parser.add_argument("--ssr-frames", type=int, default=8, help="frames of the SSR window (16: one window)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rows", type=int, default=20, help="operators shown")
    parser.add_argument(
        "--channels-last", action="store_true", help="networks in channels_last memory layout"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    pipe = LumierePipeline.from_pretrained(args.model)
    if args.channels_last:
        for model in (pipe.stunet, pipe.ssr):
            model.to(memory_format=torch.channels_last)
    peak = matmul_peak()
    print(
        f"threads {args.threads}; fp32 matmul peak {peak / 1e9:.1f} GFLOP/s; channels_last {args.channels_last}"
    )
    for which in args.which.split(","):
        frames = 16 if which == "base" else args.ssr_frames
        model, kwargs = call_inputs(pipe, which, frames)
        with torch.no_grad():
            model(**kwargs)  # warm-up (oneDNN primitive caches)
            flops = count_flops(functools.partial(model, **kwargs))
            times = block_times(model, kwargs, args.repeats)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                model(**kwargs)
        shape = tuple(kwargs["sample"].shape)
        total = times["total"]
        print(
            f"\n== {which}: sample {shape}; {flops / 1e9:.1f} GFLOP/call; {total:.3f} s/call (median); "
            f"{flops / total / 1e9:.1f} GFLOP/s = {100 * flops / total / peak:.1f}% of the matmul peak"
        )
        print(f"{'block':<28}{'s':>8}{'share':>8}")
        for name, seconds in times.items():
            if name != "total":
                print(f"{name:<28}{seconds:>8.3f}{100 * seconds / total:>7.1f}%")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
