"""Peak accelerator memory of each memory option of a latent Lumiere at Stable Diffusion 1.5's size
(issue 30, item 5; the figures of docs/latent.md "Memory options").

The model is SD 1.5 at its published widths with random weights (nothing is downloaded): the
U-Net, VAE and CLIP text model built from the values of the published ``config.json`` files,
written out below, the U-Net inflated to a STUNet (``STUNet.from_unet2d``, Lumiere's temporal
layers inserted, frames halved at each of its 3 spatial downsamplers). Memory does not depend on
the weights' values, only on their shapes.

Generation: one prompt, 16 frames of 256x256 pixels (latents [2, 4, 16, 32, 32] with guidance),
``--steps`` denoising steps (the peak does not grow with the step count), under each option:
nothing (fp32), fp16, bf16, and on fp16: model CPU offload, sequential CPU offload, VAE slicing,
VAE tiling (128-pixel tiles), the VAE on all 16 frames at once (``vae_batch_size=16``; the
default decodes 8 per call). Training: one AdamW step of the STUNet on one clip of 16x32x32
latents (the 256x256 clip) with 77 text tokens, fp32 and bf16 autocast, with and without
gradient checkpointing; the temporal layers trained (Lumiere's video stage), and all layers.

Figures: ``torch.cuda.max_memory_allocated`` over the option's call (reset before it; all weights
of an offload option start on the CPU), what is allocated before it, and the seconds it took.
Everything runs in one process, one option after another, each leaving nothing on the device.

    OUT=/tmp/out PYTHONPATH=src python bench/latent_memory_gpu.py               # H200: < 6 min
    OUT=/tmp/out PYTHONPATH=src python bench/latent_memory_gpu.py --device cpu --small   # a test

Needs only torch, diffusers, transformers, accelerate, einops and safetensors (and this
repository's src/ on the path); writes ``$OUT/latent_memory.json``; ``--markdown JSON`` prints
the rows of docs/latent.md's tables from it. ``--small`` shrinks every
width about 10x and the clip to 8 frames of 64x64 (a run on 2 CPU cores in about a minute); on a CPU
the peak is the process's resident-set high-water mark (``VmHWM``), not comparable with CUDA's.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import diffusers
import torch

try:  # lumiere.pipelines.inputs imports PyAV (video files) at the top; prompts never reach it
    import av  # noqa: F401
except ImportError:
    sys.modules["av"] = types.ModuleType("av")  # a stand-in that fails if anything uses it

import harness  # noqa: E402  (bench/, beside this file)
from loops import make_training_step  # noqa: E402

# runwayml/stable-diffusion-v1-5, unet/config.json (diffusers 0.6 layout; the same numbers in
# stable-diffusion-v1-5/stable-diffusion-v1-5): 860M parameters.
SD15_UNET: dict[str, Any] = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    attention_head_dim=8,
    cross_attention_dim=768,
    norm_num_groups=32,
    norm_eps=1e-5,
    act_fn="silu",
    downsample_padding=1,
    flip_sin_to_cos=True,
    freq_shift=0,
    mid_block_scale_factor=1,
    center_input_sample=False,
)
# The same folder's vae/config.json (AutoencoderKL, 84M parameters; scaling_factor 0.18215).
SD15_VAE: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    act_fn="silu",
    sample_size=512,
    scaling_factor=0.18215,
)
# The same folder's text_encoder/config.json: CLIP ViT-L/14's text model (123M parameters).
SD15_TEXT: dict[str, Any] = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    projection_dim=768,
)
# --small (and bench/bench_latent.py): the same layouts, every width about / 10 (group norms of 8;
# the text model keeps its 12 layers at width 64, 768 / 12).
SMALL_UNET = dict(SD15_UNET, block_out_channels=(32, 64, 128, 128), norm_num_groups=8, cross_attention_dim=64)
SMALL_VAE = dict(SD15_VAE, block_out_channels=(16, 32, 64, 64), norm_num_groups=8)
SMALL_TEXT = dict(SD15_TEXT, hidden_size=64, intermediate_size=256, num_attention_heads=4, projection_dim=64)

PROMPT = "a red circle moving left on a black background"
GUIDANCE = 7.5  # SD 1.5's default: the network runs on a batch of 2 (unconditional + conditional)
TILE = 128  # pixels per VAE tile (SD's own tile, 512, would hold a whole 256x256 frame)
SECONDS_LIMIT = 360  # the brief of this script: under 6 minutes on an H200


# ---------------------------------------------------------------------------------------------
# The model.
# ---------------------------------------------------------------------------------------------


def sd_text_encoder(folder: Path, text_config: dict[str, Any]):
    """A lumiere ``SDTextEncoder`` over a CLIP text model of ``text_config`` (random weights), in an
    SD 1.x folder layout written to ``folder``: the tiny test folder's tokenizer (a hand-made BPE
    vocabulary; the published one cannot be downloaded here) and the model beside it."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from lumiere.models.text import text_encoder_for_sd_folder
    from lumiere.testing import make_tiny_sd_folder
    from lumiere.testing.tiny_sd import make_clip_tokenizer

    make_tiny_sd_folder(folder, "sd1")
    tokenizer = make_clip_tokenizer()
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    CLIPTextModel(CLIPTextConfig(**text_config, **ids)).save_pretrained(folder / "text_encoder")
    return text_encoder_for_sd_folder(folder)


def build_pipeline(small: bool, device: torch.device, folder: Path):
    """LumierePipeline of the inflated SD 1.5 U-Net, its VAE and CLIP text model (random weights),
    every network on ``device`` in fp32."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from lumiere.models.stunet import STUNet
    from lumiere.pipelines import LumierePipeline
    from lumiere.testing.tiny_sd import make_scheduler

    unet_config, vae_config, text_config = (
        (SMALL_UNET, SMALL_VAE, SMALL_TEXT) if small else (SD15_UNET, SD15_VAE, SD15_TEXT)
    )
    text_encoder = sd_text_encoder(folder, text_config)
    torch.manual_seed(0)
    with torch.device(device):  # random init where the weights will live: seconds, not minutes
        unet2d = UNet2DConditionModel(**unet_config)
        stunet = STUNet.from_unet2d(unet2d)
        vae = AutoencoderKL(**vae_config)
    del unet2d
    pipe = LumierePipeline(stunet, text_encoder, make_scheduler("sd1"), vae=vae)
    pipe.to(device)
    return pipe


def parameter_counts(pipe) -> dict[str, int]:
    inserted = sum(p.numel() for p in pipe.stunet.temporal_parameters())
    return {
        "stunet": sum(p.numel() for p in pipe.stunet.parameters()),
        "stunet_inserted": inserted,
        "vae": sum(p.numel() for p in pipe.vae.parameters()),
        "text_encoder": sum(p.numel() for p in pipe.text_encoder.parameters()),
    }


# ---------------------------------------------------------------------------------------------
# Measurement.
# ---------------------------------------------------------------------------------------------


def _clear(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def measured(device: torch.device, work: Callable[[], Any]) -> dict[str, Any]:
    """Run ``work`` once: peak memory over it (CUDA: allocated; CPU: VmHWM), seconds."""
    _clear(device)
    before = (
        torch.cuda.memory_allocated(device) / 2**20
        if device.type == "cuda"
        else harness.start_memory_window()
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak = (
        torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else harness.peak_rss_mib()
    )
    return {"peak_mib": peak, "before_mib": before, "seconds": seconds}


def generation_options(
    pipe, device: torch.device, dtype: torch.dtype
) -> list[tuple[str, Callable, Callable, dict]]:
    """(name, set up, tear down, call arguments) per option; each set up starts from fp32 on the
    device and each tear down returns there."""

    def cast(to: torch.dtype) -> Callable[[], None]:
        def set_up() -> None:
            pipe.to(to)
            pipe.vae.to(dtype=to)  # LumierePipeline.to casts the STUNets; the VAE here too

        return set_up

    def back() -> None:
        pipe.disable_cpu_offload()
        pipe.disable_vae_slicing()
        pipe.disable_vae_tiling()
        pipe.to(device)
        pipe.to(torch.float32)
        pipe.vae.to(dtype=torch.float32)

    def then(*steps: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            for step in steps:
                step()

        return run

    half = cast(dtype)
    name = {torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
    offload_device = {"device": device}
    return [
        ("fp32 (no option)", cast(torch.float32), back, {}),
        ("fp16", cast(torch.float16), back, {}),
        ("bf16", cast(torch.bfloat16), back, {}),
        (
            f"{name} + model CPU offload",
            then(half, lambda: pipe.enable_model_cpu_offload(**offload_device)),
            back,
            {},
        ),
        (
            f"{name} + sequential CPU offload",
            then(half, lambda: pipe.enable_sequential_cpu_offload(**offload_device)),
            back,
            {},
        ),
        (f"{name} + VAE slicing", then(half, pipe.enable_vae_slicing), back, {}),
        (f"{name} + VAE tiling ({TILE} px)", then(half, lambda: pipe.enable_vae_tiling(TILE)), back, {}),
        (f"{name} + VAE on 16 frames at once", half, back, {"vae_batch_size": 16}),
        (
            f"{name} + sequential offload + VAE slicing + tiling",
            then(
                half,
                lambda: pipe.enable_sequential_cpu_offload(**offload_device),
                pipe.enable_vae_slicing,
                lambda: pipe.enable_vae_tiling(TILE),
            ),  # fmt: skip
            back,
            {},
        ),
    ]


def measure_generation(pipe, device: torch.device, args: argparse.Namespace) -> list[dict[str, Any]]:
    dtype = torch.float16 if args.half == "fp16" else torch.bfloat16
    rows = []
    for name, set_up, tear_down, kwargs in generation_options(pipe, device, dtype):
        set_up()

        def generate(kwargs=kwargs) -> None:
            pipe.text_encoder.clear_cache()  # the text encoder runs in every option
            pipe(PROMPT, num_frames=args.frames, height=args.size, width=args.size, num_inference_steps=args.steps,
                 guidance_scale=GUIDANCE, generator=torch.Generator().manual_seed(0), output_type="pt", **kwargs)  # fmt: skip

        try:
            result = measured(device, generate)
        except Exception as error:  # an option that fails is a finding, not the end of the run
            result = {"error": f"{type(error).__name__}: {error}"[:300]}
        tear_down()
        rows.append({"option": name, **result})
        print(f"  generation  {name}: {json.dumps(result)}", flush=True)
    return rows


class _Prediction(torch.nn.Module):
    """The STUNet returning its prediction tensor, as ``loops.make_training_step`` calls a model."""

    def __init__(self, stunet: torch.nn.Module):
        super().__init__()
        self.stunet = stunet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.stunet(sample, timestep, text).sample


def measure_training(pipe, device: torch.device, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One AdamW step (v-prediction, as ``lumiere train``) of the STUNet on one latent clip."""
    stunet = pipe.stunet
    pipe.to("cpu")  # the text encoder and VAE are not in a step that reads cached latents
    stunet.to(device)
    factor = 8
    shape = (1, 4, args.frames, args.size // factor, args.size // factor)
    text = torch.randn(1, 77, pipe.text_encoder.dim, device=device)
    rows = []
    for trainable in ("temporal", "all"):
        for dtype_name in ("fp32", "bf16"):
            for checkpointing in (False, True):
                stunet.freeze_spatial(trainable == "temporal")
                stunet.train()
                if checkpointing:
                    stunet.enable_gradient_checkpointing()
                else:
                    stunet.disable_gradient_checkpointing()
                step = make_training_step(
                    _Prediction(stunet), shape, device, harness.DTYPES[dtype_name], text=text
                )
                name = f"train {trainable} layers, {dtype_name}{', checkpointing' if checkpointing else ''}"
                try:
                    step()  # AdamW's states exist from the first step on: measure the second
                    result = measured(device, step)
                except Exception as error:
                    result = {"error": f"{type(error).__name__}: {error}"[:300]}
                del step
                stunet.zero_grad(set_to_none=True)
                rows.append({"option": name, **result})
                print(f"  training    {name}: {json.dumps(result)}", flush=True)
    stunet.disable_gradient_checkpointing()
    stunet.freeze_spatial(False)
    stunet.eval()
    return rows


# ---------------------------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------------------------


def markdown_rows(path: str) -> None:
    """Print the rows of docs/latent.md's tables from a run's JSON (peaks in GiB)."""
    payload = json.loads(Path(path).read_text())
    generation = payload["generation"]
    baseline = generation[0].get("peak_mib")
    for row in generation:
        if "error" in row:
            print(f"| {row['option']} | failed: {row['error'][:80]} | | |")
            continue
        ratio = f"{row['peak_mib'] / baseline:.2f}" if baseline else "-"
        print(f"| {row['option']} | {row['peak_mib'] / 1024:.2f} | {ratio} | {row['seconds']:.1f} |")
    print()
    for row in payload["training"]:
        cells = (
            f"failed: {row['error'][:80]} |"
            if "error" in row
            else f"{row['peak_mib'] / 1024:.2f} | {row['seconds']:.2f} |"
        )
        print(f"| {row['option']} | {cells}")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--markdown":  # tables of a finished run, for the docs
        markdown_rows(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (the figures) or cpu (a test)")
    parser.add_argument("--small", action="store_true", help="widths / 10, 8 frames of 64x64")
    parser.add_argument("--frames", type=int, default=None, help="default 16 (8 with --small)")
    parser.add_argument(
        "--size", type=int, default=None, help="pixels per side; default 256 (64 with --small)"
    )
    parser.add_argument("--steps", type=int, default=4, help="denoising steps per clip")
    parser.add_argument("--half", choices=("fp16", "bf16"), default="fp16", help="precision of the options")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--json", default=None, help="default: $OUT/latent_memory.json (OUT set), else none")
    args = parser.parse_args()
    diffusers.utils.logging.set_verbosity_error()  # its notice on every fp16 cast would drown the table
    args.frames = args.frames or (8 if args.small else 16)
    args.size = args.size or (64 if args.small else 256)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device here (use --device cpu --small)")
        torch.backends.cuda.matmul.allow_tf32 = True
        device = torch.device("cuda", device.index or 0)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        pipe = build_pipeline(args.small, device, Path(folder) / "sd15")
        built_s = time.perf_counter() - start
        print(f"built in {built_s:.1f} s: {parameter_counts(pipe)}", flush=True)
        generation = measure_generation(pipe, device, args)
        training = [] if args.skip_training else measure_training(pipe, device, args)
        counts = parameter_counts(pipe)
    total_s = time.perf_counter() - start

    unit = "CUDA max_memory_allocated" if device.type == "cuda" else "process VmHWM (CPU)"
    print(f"\n{'small' if args.small else 'SD 1.5'} widths, {args.frames} frames of {args.size}x{args.size}, "
          f"{args.steps} steps, guidance {GUIDANCE}; peak = {unit}, MiB")  # fmt: skip
    baseline = next((row.get("peak_mib") for row in generation if "peak_mib" in row), None)
    harness.print_table(
        ["option", "peak MiB", "x fp32", "before MiB", "seconds"],
        [
            [
                row["option"],
                harness.fmt(row.get("peak_mib"), 0),
                harness.fmt(row["peak_mib"] / baseline if baseline and "peak_mib" in row else None),
                harness.fmt(row.get("before_mib"), 0),
                harness.fmt(row.get("seconds")) if "error" not in row else row["error"][:60],
            ]
            for row in generation + training
        ],
    )
    print(f"total {total_s:.0f} s (limit {SECONDS_LIMIT} s on an H200)")
    payload = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else harness.cpu_name(),
        "torch": torch.__version__,
        "small": args.small,
        "frames": args.frames,
        "size": args.size,
        "steps": args.steps,
        "guidance_scale": GUIDANCE,
        "half": args.half,
        "vae_tile_px": TILE,
        "peak_unit": unit,
        "parameters": counts,
        "build_s": built_s,
        "total_s": total_s,
        "generation": generation,
        "training": training,
    }
    path = args.json or (
        str(Path(os.environ["OUT"]) / "latent_memory.json") if os.environ.get("OUT") else None
    )
    harness.write_json(path, payload)


if __name__ == "__main__":
    main()
