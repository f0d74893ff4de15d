"""Peak CPU memory of decoding a latent clip with SD 1.5's VAE, per VAE option (issue 30, item 5).

The VAE at SD 1.5's published size (84M parameters; ``bench/latent_memory_gpu.py``'s config, random
weights) decodes 16 frames of 32x32 latents (256x256 pixels) with ``lumiere.models.vae.decode_latents``
under each option: all 16 frames in one call (``vae_batch_size=16``), the default 8, one frame per
call (what VAE slicing does), and 128-pixel tiles (``enable_vae_tiling(tile_size=128)``, 8 frames
per call). Each option runs in a fresh process (``MALLOC_MMAP_THRESHOLD_=65536``, so freed tensors
leave the resident set); the figure is the rise of the process's resident-set high-water mark
(``VmHWM``) over the decode, i.e. the decoder's working memory above its weights and input.

    python bench/vae_memory_cpu.py --frames 16 --size 256 --json docs/vae_memory_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

OPTIONS = ("batch16", "batch8", "batch1", "tiles128")


def _vm(field: str) -> float:
    """A ``/proc/self/status`` field in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def worker(option: str, frames: int, size: int, threads: int) -> dict:
    import torch
    from diffusers import AutoencoderKL

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from latent_memory_gpu import SD15_VAE
    from lumiere.models.vae import decode_latents

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    vae = AutoencoderKL(**SD15_VAE).eval()
    latents = torch.randn(1, 4, frames, size // 8, size // 8)
    batch = {"batch16": 16, "batch8": 8, "batch1": 1, "tiles128": 8}[option]
    if option == "tiles128":
        vae.tile_sample_min_size, vae.tile_latent_min_size = 128, 16
        vae.enable_tiling()
    before = _vm("VmRSS")
    start = time.perf_counter()
    with torch.no_grad():
        frames_out = decode_latents(vae, latents, vae_batch_size=batch)
    seconds = time.perf_counter() - start
    return {"option": option, "peak_above_start_mib": round(_vm("VmHWM") - before, 1),
            "seconds": round(seconds, 1), "output": list(frames_out.shape)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=256, help="frame side in pixels")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    parser.add_argument("--worker", choices=OPTIONS, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.frames, args.size, args.threads)))
        return
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    rows = []
    for option in OPTIONS:
        command = [sys.executable, __file__, "--worker", option, "--frames", str(args.frames),
                   "--size", str(args.size), "--threads", str(args.threads)]  # fmt: skip
        out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(f"{option:>9}: {rows[-1]['peak_above_start_mib']:8.1f} MiB above the start, {rows[-1]['seconds']} s",
              flush=True)  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"frames": args.frames, "size": args.size, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
