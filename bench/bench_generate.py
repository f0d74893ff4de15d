"""Sampling latency of one base clip (16 frames, 25 steps, classifier-free guidance) on this machine.

Measures, in one run and on the same inputs:
  - lumiere's STUNet pipeline (the shipped default model, or --model, or a fresh ``--preset``);
  - the same image U-Net applied frame by frame with no temporal layers (the lower bound of cost);
and prints the median of ``--repeats`` runs and the ratio between them.

    python bench/bench_generate.py                 # shipped default model
    python bench/bench_generate.py --preset default --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lumiere.models.presets import STUNET_PRESETS, build_unet2d
from lumiere.models.stunet import STUNet
from lumiere.pipelines import DEFAULT_MODEL_DIR, LumierePipeline


def time_pipeline(pipe: LumierePipeline, args: argparse.Namespace) -> list[float]:
    def once() -> float:
        start = time.perf_counter()
        pipe(
            "a red circle moving right on a black background",
            num_frames=args.frames,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            generator=torch.Generator().manual_seed(0),
        )
        return time.perf_counter() - start

    once()  # warm-up (allocator, oneDNN primitive caches)
    return [once() for _ in range(args.repeats)]


@torch.no_grad()
def time_per_frame_unet(unet, pipe: LumierePipeline, args: argparse.Namespace) -> list[float]:
    """The same denoising loop with the image U-Net on every frame: network calls and scheduler steps."""
    size = pipe.stunet.config.unet_config["sample_size"]
    text = pipe.text_encoder.encode(["a red circle moving right on a black background", ""])
    batch = 2 if args.guidance > 1 else 1
    states = text.states[:batch].repeat_interleave(args.frames, 0)
    mask = text.mask[:batch].repeat_interleave(args.frames, 0)

    def once() -> float:
        start = time.perf_counter()
        sample = torch.randn(args.frames, 3, size, size, generator=torch.Generator().manual_seed(0))
        pipe.scheduler.set_timesteps(args.steps)
        for timestep in pipe.scheduler.timesteps:
            model_input = torch.cat([sample] * batch)
            output = unet(model_input, timestep, states, encoder_attention_mask=mask).sample
            if batch == 2:
                uncond, cond = output.chunk(2)
                output = uncond + args.guidance * (cond - uncond)
            sample = pipe.scheduler.step(output, timestep, sample).prev_sample
        return time.perf_counter() - start

    once()
    return [once() for _ in range(args.repeats)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="pipeline directory (default: the shipped model)")
    parser.add_argument(
        "--preset", default=None, help="time a freshly initialised preset instead of a saved model"
    )
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.preset is not None:
        stunet = STUNet.from_unet2d(build_unet2d(args.preset), **STUNET_PRESETS[args.preset]).eval()
        pipe = LumierePipeline.from_stunet(stunet)
        source = f"fresh preset {args.preset!r}"
    else:
        pipe = LumierePipeline.from_pretrained(args.model)
        source = args.model or f"shipped default ({DEFAULT_MODEL_DIR})"
    pipe.set_progress_bar_config(disable=True)
    lumiere_times = time_pipeline(pipe, args)
    peer_times = time_per_frame_unet(_image_model_of(pipe.stunet), pipe, args)
    params = sum(p.numel() for p in pipe.stunet.parameters())
    print(f"model: {source}; {params / 1e6:.2f}M parameters; torch threads: {args.threads}")
    print(f"clip: {args.frames} frames, {args.steps} steps, guidance {args.guidance}")
    print(f"{'model':<34}{'median s':>10}{'min s':>10}")
    for name, times in (("lumiere STUNet", lumiere_times), ("image U-Net per frame (bound)", peer_times)):
        print(f"{name:<34}{statistics.median(times):>10.3f}{min(times):>10.3f}")
    ratio = statistics.median(lumiere_times) / statistics.median(peer_times)
    print(f"STUNet / per-frame time ratio: {ratio:.2f}")


def _image_model_of(stunet: STUNet):
    """Rebuild the image U-Net inside a STUNet (weights included) from its config and spatial weights."""
    from diffusers import UNet2DConditionModel

    from lumiere.models.inflate import stunet_key

    unet = UNet2DConditionModel(**stunet.config.unet_config)
    state = stunet.state_dict()
    unet.load_state_dict({key: state[stunet_key(key)] for key in unet.state_dict()})
    return unet.eval()


if __name__ == "__main__":
    main()
