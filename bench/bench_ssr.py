"""Peak memory, time and seams of SSR with MultiDiffusion over temporal windows (Lumiere Sec. 3.2).

For each clip length (default 16, 32, 64, 128 frames) at one fixed window, ``pipe.upsample`` runs
in a fresh Python process, so each length gets its own peak:

- peak memory: the worker's peak resident set size, ``resource.getrusage(RUSAGE_SELF).ru_maxrss``
  read when it is done (Linux: KiB). It is the whole process (interpreter, torch, text encoder,
  model, warm-up, the clip), i.e. what a user of ``lumiere upsample`` would see. tracemalloc does
  not see torch's CPU allocations; RSS does. Also shown: the increase of the peak over the RSS just
  before the timed call, which isolates what ``upsample`` itself adds.
- time: wall clock of the timed call, after a one-window warm-up (oneDNN primitive caches).

The claim checked: from 16 to 128 frames, peak <= 1.10 x peak(16) + the size of the 128-frame clip
(one float32 ``[3, f, H, W]`` high-res clip), and time per frame stays flat (linear time).

Seams: mean |frame[t+1] - frame[t]| over the transitions where the set of windows covering a frame
changes (window borders) vs the transitions inside windows, on the output and, for reference, on
the ground-truth high-res clip (its own motion sets the scale).

    python bench/bench_ssr.py                         # the shipped model if it has an SSR, else a fresh preset
    python bench/bench_ssr.py --model runs/ssr_default/model --steps 25
    python bench/bench_ssr.py --preset tiny --steps 2 # a quick look
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

WORKER_FLAG = "--worker-frames"


# ---------------------------------------------------------------------------------------------
# Worker: one clip length in its own process.
# ---------------------------------------------------------------------------------------------


def _rss_bytes() -> int:
    """Current resident set size of this process."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize()


def load_pipeline(args: argparse.Namespace):
    """(pipeline with an SSR model, a note saying which model it is)."""
    import torch

    from lumiere.models.presets import STUNET_PRESETS, build_unet2d
    from lumiere.models.ssr import build_ssr_stunet
    from lumiere.pipelines import DEFAULT_MODEL_DIR, LumierePipeline

    path = args.model
    if path is None and (DEFAULT_MODEL_DIR / "ssr" / "config.json").is_file():
        path = DEFAULT_MODEL_DIR
    if path is not None:
        pipe = LumierePipeline.from_pretrained(path)
        if pipe.ssr is None:
            raise SystemExit(f"{path} has no SSR model (no ssr/ folder)")
        return pipe, f"model {path}"
    torch.manual_seed(0)
    ssr = build_ssr_stunet(build_unet2d(args.preset), **STUNET_PRESETS[args.preset]).eval()
    note = (
        f"NOTE: no shipped SSR model; a freshly initialised '{args.preset}' preset (its conditioning "
        "weights are zero, so its output ignores the input: timings and memory are real, seams are not "
        "a quality measurement)"
    )
    return LumierePipeline.from_stunet(None, ssr=ssr), note


def ground_truth(num_frames: int, size: int, seed: int) -> tuple[np.ndarray, str]:
    """A moving-shapes clip ``[f, size, size, 3]`` in [0, 1] and its caption."""
    from lumiere.data.shapes import MovingShapes

    frames, caption, _ = MovingShapes(length=1, num_frames=num_frames, resolution=size, seed=seed).sample(0)
    return frames, caption


def seam_stats(frames: np.ndarray, windows: list[slice]) -> dict[str, float]:
    """Mean |frame[t+1] - frame[t]| at window borders and inside windows; frames ``[f, h, w, 3]``."""
    num_frames = frames.shape[0]
    covering = [
        frozenset(i for i, w in enumerate(windows) if w.start <= t < w.stop) for t in range(num_frames)
    ]
    diffs = np.abs(np.diff(frames.astype(np.float64), axis=0)).mean(axis=(1, 2, 3))  # [f - 1]
    border = [d for t, d in enumerate(diffs) if covering[t] != covering[t + 1]]
    inside = [d for t, d in enumerate(diffs) if covering[t] == covering[t + 1]]
    return {
        "border": float(np.mean(border)) if border else float("nan"),
        "inside": float(np.mean(inside)) if inside else float("nan"),
        "border_count": len(border),
        "inside_count": len(inside),
    }


def worker(args: argparse.Namespace) -> None:
    import torch

    from lumiere.models.ssr import downsample_video
    from lumiere.pipelines.multidiffusion import temporal_windows

    torch.set_num_threads(args.threads)
    pipe, note = load_pipeline(args)
    pipe.set_progress_bar_config(disable=True)
    scale = pipe.ssr_scale
    low_size = args.size or int(pipe.ssr.config.unet_config["sample_size"])
    num_frames = args.worker_frames

    truth, caption = ground_truth(num_frames, low_size * scale, args.seed)  # [f, H, W, 3]
    high = torch.from_numpy(truth).permute(3, 0, 1, 2)[None] * 2 - 1  # [1, 3, f, H, W]
    low = (
        ((downsample_video(high, scale) + 1) / 2).clamp(0, 1).permute(0, 2, 3, 4, 1).numpy()
    )  # [1, f, h, w, 3]
    call = dict(window=args.window, overlap=args.overlap, chunk_size=args.chunk_size)

    # Warm-up on one window (same shapes per window call as the timed run).
    pipe.upsample(low[:, : args.window], caption, num_inference_steps=1, **call)

    rss_before = _rss_bytes()
    start = time.perf_counter()
    frames = pipe.upsample(
        low, caption, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(0), **call
    ).frames[0]
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB

    windows = (
        temporal_windows(num_frames, args.window, args.overlap)
        if args.window < num_frames
        else [slice(0, num_frames)]
    )
    result = {
        "frames": num_frames,
        "windows": len(windows),
        "seconds": seconds,
        "peak_bytes": peak,
        "increase_bytes": peak - rss_before,
        "clip_bytes": 4 * 3 * num_frames * frames.shape[1] * frames.shape[2],
        "size": f"{low.shape[2]}x{low.shape[3]} -> {frames.shape[1]}x{frames.shape[2]}",
        "seams": seam_stats(frames, windows),
        "seams_truth": seam_stats(truth, windows),
        "note": note,
    }
    print(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# Parent: one worker per clip length, then the table.
# ---------------------------------------------------------------------------------------------


def run_worker(args: argparse.Namespace, num_frames: int) -> dict:
    command = [sys.executable, __file__, WORKER_FLAG, str(num_frames)]
    for name in ("window", "overlap", "chunk_size", "steps", "threads", "seed", "preset"):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    if args.model is not None:
        command += ["--model", str(args.model)]
    if args.size is not None:
        command += ["--size", str(args.size)]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise SystemExit(f"worker for {num_frames} frames failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def report(results: list[dict], args: argparse.Namespace) -> None:
    mib = 2**20
    first, last = results[0], results[-1]
    print(results[0]["note"])
    print(
        f"SSR upsample {first['size']}, window {args.window}, overlap {args.overlap}, chunk {args.chunk_size}, "
        f"{args.steps} steps, {args.threads} thread(s); one fresh process per length\n"
    )
    header = (
        f"{'frames':>6} {'windows':>7} {'time s':>8} {'ms/frame/step':>13} {'time x':>7} "
        f"{'peak MiB':>9} {'peak x':>7} {'+call MiB':>9} {'clip MiB':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        per_frame = 1000 * r["seconds"] / (r["frames"] * args.steps)
        print(
            f"{r['frames']:>6} {r['windows']:>7} {r['seconds']:>8.2f} {per_frame:>13.2f} "
            f"{r['seconds'] / first['seconds']:>7.2f} {r['peak_bytes'] / mib:>9.1f} "
            f"{r['peak_bytes'] / first['peak_bytes']:>7.3f} {r['increase_bytes'] / mib:>9.1f} "
            f"{r['clip_bytes'] / mib:>8.2f}"
        )
    bound = 1.10 * first["peak_bytes"] + last["clip_bytes"]
    verdict = "holds" if last["peak_bytes"] <= bound else "FAILS"
    print(
        f"\nmemory bound {first['frames']} -> {last['frames']} frames: peak {last['peak_bytes'] / mib:.1f} MiB "
        f"<= 1.10 x {first['peak_bytes'] / mib:.1f} + clip {last['clip_bytes'] / mib:.2f} = {bound / mib:.1f} MiB: "
        f"{verdict}"
    )
    frames_ratio = last["frames"] / first["frames"]
    windows_ratio = last["windows"] / first["windows"]
    print(
        f"time {first['frames']} -> {last['frames']} frames: x{last['seconds'] / first['seconds']:.2f} for "
        f"x{frames_ratio:.0f} frames (x{windows_ratio:.2f} windows; linear in the windows)"
    )
    print("\nseams: mean |frame[t+1] - frame[t]| at window borders vs inside windows")
    print(
        f"{'frames':>6} {'output border':>13} {'inside':>8} {'ratio':>6}   {'truth border':>12} {'inside':>8} {'ratio':>6}"
    )
    for r in results:
        out, ref = r["seams"], r["seams_truth"]
        print(
            f"{r['frames']:>6} {out['border']:>13.4f} {out['inside']:>8.4f} {out['border'] / out['inside']:>6.2f}   "
            f"{ref['border']:>12.4f} {ref['inside']:>8.4f} {ref['border'] / ref['inside']:>6.2f}"
        )
    out = last["seams"]
    verdict = "no larger" if out["border"] <= out["inside"] else "LARGER"
    print(f"at {last['frames']} frames the output's border differences are {verdict} than inside windows")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", type=Path, default=None, help="pipeline directory with ssr/ (default: shipped)"
    )
    parser.add_argument("--preset", default="default", help="preset of the fresh model when none is found")
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--overlap", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4, help="denoising steps (time is per step)")
    parser.add_argument(
        "--size", type=int, default=None, help="low-res side (default: the model's sample size)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="moving-shapes clip")
    parser.add_argument(WORKER_FLAG, type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.worker_frames is not None:
        worker(args)
        return
    results = []
    for num_frames in args.frames:
        results.append(run_worker(args, num_frames))
        print(f"  {num_frames} frames done ({results[-1]['seconds']:.1f} s)", file=sys.stderr)
    report(results, args)


if __name__ == "__main__":
    main()
