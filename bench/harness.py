"""Measurement plumbing shared by the benchmarks.

- Every measurement runs in a fresh Python process (``run_isolated``), so one model's allocator
  state, oneDNN caches or compiled graphs never touch another's, and its memory is its own.
- Peak memory is read inside that process from Linux's high-water mark of its resident set
  (``VmHWM`` in ``/proc/self/status``), reset once the model is built (``/proc/self/clear_refs``),
  so it covers the timed work: Python, torch, weights, activations, gradients, optimizer state.
  Not ``ru_maxrss`` from ``wait4``/``RUSAGE_CHILDREN``: at ``exec`` Linux folds the high-water mark of
  the forking parent into the child's ``maxrss`` (fs/exec.c, ``setmax_mm_hiwater_rss``), so a child
  of an 800 MiB parent reports at least 800 MiB however little it uses (checked here: a 10 MiB
  child read 830 MiB). On CUDA the worker also reports ``torch.cuda.max_memory_allocated``.
- Times are wall-clock around synchronised calls; tables show the median of ``--repeats`` after
  ``--warmup`` untimed calls (the first call, with any compilation, is reported on its own).
- The matmul peak is the best of several large square ``torch.mm`` calls, measured in its own
  process with the same thread count as the models.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

import peers
from lumiere.runtime import keep_freed_memory

# Every benchmark process, its workers included, runs as the lumiere command does (lumiere.runtime);
# LUMIERE_KEEP_FREED_MEMORY=0 in a worker's environment measures glibc's default instead.
KEEPS_FREED_MEMORY = keep_freed_memory()

WORKER_FLAG = "--worker"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# ---------------------------------------------------------------------------------------------
# One fresh process per measurement.
# ---------------------------------------------------------------------------------------------


def run_isolated(
    script: str | Path,
    config: dict[str, Any],
    timeout_s: float | None = None,
    env: dict[str, str] | None = None,  # variables added to this process's environment
) -> dict[str, Any]:
    """``python SCRIPT --worker CONFIG_JSON`` in a fresh process -> its JSON result plus ``wall_s``;
    ``{"error": ...}`` if it failed, was killed (out of memory) or ran past ``timeout_s``."""
    start = time.perf_counter()
    command = [sys.executable, str(script), WORKER_FLAG, json.dumps(config)]
    environment = {**os.environ, **env} if env else None
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=environment)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s", "wall_s": time.perf_counter() - start}
    wall = time.perf_counter() - start
    results = [line for line in done.stdout.splitlines() if line.startswith("{")]  # the JSON result
    if done.returncode != 0 or not results:
        killed = done.returncode < 0
        reason = (
            "killed (out of memory?)" if killed else (done.stderr.strip().splitlines() or ["no output"])[-1]
        )
        return {"error": reason[:200], "wall_s": wall}
    return {**json.loads(results[-1]), "wall_s": wall}


def serve_worker(measure: Callable[[dict[str, Any]], dict[str, Any]]) -> bool:
    """If this process was started by ``run_isolated``, run ``measure(config)``, print its JSON, and
    return True; otherwise return False (the caller is the parent)."""
    if len(sys.argv) != 3 or sys.argv[1] != WORKER_FLAG:
        return False
    import warnings

    warnings.filterwarnings("ignore")  # diffusers' deprecation notices would drown the tables
    config = json.loads(sys.argv[2])
    print(json.dumps(measure(config)))
    return True


# ---------------------------------------------------------------------------------------------
# Inside a worker.
# ---------------------------------------------------------------------------------------------


def setup(config: dict[str, Any]) -> tuple[torch.device, torch.dtype]:
    """Threads, seed, device and autocast dtype of a worker."""
    torch.set_num_threads(config["threads"])
    torch.manual_seed(0)
    device = torch.device(config["device"])
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on tensor cores, as training would
        torch.backends.cudnn.allow_tf32 = True
    return device, DTYPES[config["dtype"]]


def prepare_model(config: dict[str, Any], device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(eager model, model to time): built, moved, channels_last and compiled as the config says."""
    resolution = config["size"][1]
    model = peers.build(config["model"], config["preset"], resolution).to(device)
    if config.get("channels_last"):
        model.to(memory_format=torch.channels_last)  # NHWC weights; activations follow the convs
    timed = torch.compile(model) if config.get("compile") else model
    return model, timed


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], repeats: int, warmup: int, device: torch.device) -> list[float]:
    """Wall-clock seconds of ``repeats`` synchronised calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def time_once(fn: Callable[[], Any], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def measure(
    work: Callable[[], Any],
    device: torch.device,
    config: dict[str, Any],  # a worker's config: "repeats" and "warmup"
    built_rss: float,  # start_memory_window()'s reading, taken before the timed work
    times_key: str,  # the worker's name for the timed seconds ("step_s", "sample_s", ...)
    first_key: str = "first_s",  # its name for the first call (compilation included when compiling)
) -> dict[str, Any]:
    """Time ``work`` (a first call, then ``repeats`` after ``warmup - 1`` more) and read the memory
    it left: what every benchmark worker reports besides its own figures."""
    first = time_once(work, device)
    times = time_calls(work, config["repeats"], max(config["warmup"] - 1, 0), device)
    return {
        first_key: first,
        times_key: times,
        "built_rss_mib": built_rss,
        "peak_rss_mib": peak_rss_mib(),
        **device_memory(device),
    }


def _status_mib(field: str) -> float | None:
    """A ``/proc/self/status`` memory field (``VmHWM``, ``VmRSS``) in MiB; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def start_memory_window() -> float:
    """Collect garbage, reset this process's RSS high-water mark, and return the RSS now (MiB):
    what the process holds before the timed work (libraries, weights, inputs)."""
    gc.collect()
    try:  # hand freed heap back to the OS, so the RSS below is what the process really holds
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux >= 4.0: VmHWM := VmRSS
    except OSError:
        pass
    current = _status_mib("VmRSS")
    return current if current is not None else peak_rss_mib()


def peak_rss_mib() -> float:
    """This process's peak resident set since the last ``start_memory_window`` (MiB)."""
    peak = _status_mib("VmHWM")
    if peak is None:  # not Linux: the peak over the whole life of the process
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return peak


def device_memory(device: torch.device) -> dict[str, float]:
    if device.type != "cuda":
        return {}
    return {"cuda_peak_mib": torch.cuda.max_memory_allocated(device) / 2**20}


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of the matmuls, convolutions and attention in ``fn`` (``torch.utils.flop_counter``)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matmul_peak(config: dict[str, Any]) -> dict[str, Any]:
    """Worker: best FLOP/s of a large square ``torch.mm`` (2 n^3 FLOPs), same threads as the models."""
    device, dtype = setup(config)
    n = config["matmul_size"]
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    times = time_calls(
        lambda: torch.mm(a, b, out=out), repeats=config["matmul_repeats"], warmup=2, device=device
    )
    return {"flops_per_s": 2 * n**3 / min(times), "size": n, "dtype": config["dtype"]}


# ---------------------------------------------------------------------------------------------
# Command line and output.
# ---------------------------------------------------------------------------------------------


def add_common_arguments(parser: argparse.ArgumentParser, repeats: int = 5) -> None:
    parser.add_argument(
        "--models",
        default=",".join(peers.DEFAULT_MODELS),
        help=f"comma-separated, from: {', '.join(peers.PEERS)}",
    )
    parser.add_argument("--preset", default="default", help="image U-Net preset every model is sized from")
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="torch threads per worker"
    )
    parser.add_argument("--repeats", type=int, default=repeats, help="timed calls per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first (compilation, caches)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="autocast dtype")
    parser.add_argument("--compile", action="store_true", help="torch.compile every model (inductor)")
    parser.add_argument("--channels-last", action="store_true", help="NHWC memory format for every model")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds before a worker is killed")
    parser.add_argument("--json", default=None, help="also write every result to this JSON file")


def model_names(args: argparse.Namespace) -> list[str]:
    names = [name.strip() for name in args.models.split(",") if name.strip()]
    for name in names:
        if name not in peers.PEERS:
            raise SystemExit(f"unknown model {name!r}; choose from {', '.join(peers.PEERS)}")
    return names


def base_config(args: argparse.Namespace) -> dict[str, Any]:
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch.cuda.is_available() is False on this machine")
    return {
        "preset": args.preset,
        "threads": args.threads,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "device": args.device,
        "dtype": args.dtype,
        "compile": args.compile,
        "channels_last": args.channels_last,
    }


def parse_size(text: str) -> tuple[int, int, int]:
    """'16x32x32' -> (frames, height, width); height must equal width (lumiere-pytorch needs squares)."""
    try:
        frames, height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"size {text!r}: expected FRAMESxHEIGHTxWIDTH, e.g. 16x32x32") from None
    if height != width:
        raise SystemExit(f"size {text!r}: height and width must be equal")
    return frames, height, width


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine(args: argparse.Namespace) -> str:
    cpu = cpu_name()
    device = args.device
    if device.startswith("cuda") and torch.cuda.is_available():
        device = f"{device} ({torch.cuda.get_device_name(device)})"
    flags = [args.dtype] + [
        name for name, on in (("compile", args.compile), ("channels_last", args.channels_last)) if on
    ]
    flags.append("freed memory kept" if KEEPS_FREED_MEMORY else "glibc malloc defaults")
    return (
        f"machine: {cpu}, {os.cpu_count()} logical CPUs; torch {torch.__version__}; device {device}; "
        f"threads {args.threads}; {', '.join(flags)}"
    )


MEMORY_NOTE = (
    "memory: each model runs in a fresh process; 'peak RSS' is that process's resident-set high-water mark "
    "(VmHWM) during the timed work, whole process (libraries and weights included); the 'MiB' column "
    "after it is that peak minus the RSS held before the timed work (activations, gradients, optimizer)"
)


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain-text table, first column left-aligned, the rest right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        first = row[0].ljust(widths[0])
        rest = "  ".join(cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True))
        print(f"{first}  {rest}")
        if index == 0:
            print("-" * (sum(widths) + 2 * (len(widths) - 1)))


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2))
        print(f"results written to {path}")
