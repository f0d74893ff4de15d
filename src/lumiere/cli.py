"""The ``lumiere`` command: thin wrappers that parse, call library functions and show progress.

    lumiere generate PROMPT -o OUT.mp4 [options]   text -> video file (a grid with --num-videos > 1)
    lumiere upsample IN.mp4 -o OUT.mp4 --prompt P   spatial super-resolution of a video (SSR model)
    lumiere train CONFIG.yaml [--resume]            one training stage from a YAML config
    lumiere train CONFIG.yaml --set KEY=VALUE       ... with a config key set over the file's
    lumiere train CONFIG.yaml --export DIR [--step N]   a checkpoint of that run, exported
    lumiere data shapes --out DIR --count N         write the synthetic moving-shapes data set
    lumiere data cache CONFIG                       encode a latent config's clips and captions once
    lumiere serve [--host H] [--port N] [--model P] a web page for generation (the web extra)
    lumiere estimate CONFIG|DIR|paper [--frames N]  parameters, FLOPs and memory, on the meta device

Out-of-range options are argparse errors (exit code 2) naming the option, checked at parse time
where they can be (a seed in [0, 2**64 - 1], a --device this torch build and machine have). What a
value must be for the model (a window a multiple of its temporal factor, a mask that fits the
clip, --strength with --video only) is the library's rule, not restated here. Whatever ends a
subcommand is reported at one boundary, ``main`` (``classify``): one line on stderr naming the
argument, file or folder, no traceback (``--log-level DEBUG`` logs it); exit code 2 for input to
change (a ``ValueError``, a missing file, an output path that is a folder), 1 for a fault of the
machine or of the work (a full disk, a read-only file system, too little memory, a damaged
model). A ``lumiere.errors.InvalidArgument`` names the pipeline argument, which
``OPTION_OF_ARGUMENT`` turns into its option, in argparse's words (``argument --window: must be a
positive multiple of 4 for this model ..., got 6``). Outputs are checked for writability before
any work and written atomically (``lumiere.files``); docs/reliability.md has the whole matrix.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# The library's own constants: `import lumiere.cli` imports the package (and torch) anyway.
from lumiere.data.video_io import VIDEO_EXTENSIONS
from lumiere.errors import InvalidArgument
from lumiere.files import (
    check_writable,
    describe_os_error,
    is_machine_fault,
    staged_folder,
    write_text_atomic,
)
from lumiere.pipelines import SAMPLERS, SSROptions
from lumiere.runtime import keep_freed_memory

logger = logging.getLogger("lumiere")
# What loading a saved model can raise (lumiere.checkpoint.CheckpointError is a RuntimeError):
# reported as a failure of the work (exit code 1) with the message naming the file or key.
_MODEL_LOAD_ERRORS = (FileNotFoundError, ValueError, RuntimeError)
# The arguments of LumierePipeline.__call__ / .upsample that options set -> the option (the one
# table between the library's names and the command's): how main names a refused value.
# fmt: off
OPTION_OF_ARGUMENT = {
    "num_frames": "--frames", "height": "--height", "width": "--width",
    "num_inference_steps": "--steps", "guidance_scale": "--guidance",
    "num_videos_per_prompt": "--num-videos", "negative_prompt": "--negative-prompt",
    "image": "--image", "video": "--video", "mask": "--mask", "strength": "--strength",
    "window": "--window", "overlap": "--overlap", "chunk_size": "--chunk-size", "noise_level": "--noise-level",
    "ssr_window": "--ssr-window", "ssr_overlap": "--ssr-overlap", "ssr_chunk_size": "--ssr-chunk-size",
    "ssr_steps": "--ssr-steps", "ssr_strength": "--ssr-strength", "cache_interval": "--cache-interval",
    "guidance_end": "--guidance-end",
    "ssr_cache_interval": "--ssr-cache-interval", "ssr_draws": "--ssr-draws", "draws": "--draws",
}
# fmt: on
SSR_DEFAULTS = SSROptions()  # the SSR options' defaults, shown in --help
DECODED_BYTES = 1 + 4 + 4  # per decoded value: uint8 frames, their float32 tensor, its resized copy
LONG_RUN_S = 600  # an estimated time above this is logged as a warning (stop with Ctrl-C, or --time-limit)


# ---------------------------------------------------------------------------------------------
# Argument types: each raises ArgumentTypeError, which argparse reports with the option's name.
# ---------------------------------------------------------------------------------------------


def _int_at_least(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    accepted = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer {accepted}, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"must be an integer {accepted}, got {value}")
        return value

    parse.__name__ = f"integer {accepted}"
    return parse


MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes 64-bit seeds
_seed = _int_at_least(0, MAX_SEED)


def _device(text: str) -> str:
    """argparse type: a torch device that this torch build has and this machine shows."""
    import torch

    here = ", ".join(available_devices())
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device; devices here: {here}") from None
    if device.type == "cpu":
        return text
    backend = {"cuda": torch.cuda, "mps": torch.backends.mps}.get(device.type, getattr(torch, device.type, None))
    found = backend is not None and hasattr(backend, "is_available") and backend.is_available()
    count = getattr(backend, "device_count", lambda: 1)() if found else 0
    if not found or (device.index is not None and device.index >= count):
        raise argparse.ArgumentTypeError(f"{text!r} is not available here; devices here: {here}")
    return text


def available_devices() -> list[str]:
    """The torch devices this build and machine offer: cpu, cuda:N, mps, xpu:N."""
    import torch

    devices = ["cpu"]
    devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    devices += ["mps"] if torch.backends.mps.is_available() else []
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        devices += [f"xpu:{i}" for i in range(xpu.device_count())]
    return devices


def _float_in(low: float, high: float, low_open: bool = False) -> Callable[[str], float]:
    """argparse type: a float in [low, high] (or (low, high] with ``low_open``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not (low < value if low_open else low <= value) or not value <= high or math.isnan(value):
            bracket = "(" if low_open else "["
            raise argparse.ArgumentTypeError(f"must be in {bracket}{low:g}, {high:g}], got {text}")
        return value

    return parse


def _float_list_in(low: float, high: float) -> Callable[[str], tuple[float, ...]]:
    """argparse type: comma-separated floats, each in [low, high]."""
    one = _float_in(low, high)

    def parse(text: str) -> tuple[float, ...]:
        parts = [part for part in text.split(",") if part.strip()]
        if not parts:
            raise argparse.ArgumentTypeError("must list at least one number")
        return tuple(one(part.strip()) for part in parts)

    return parse


def _existing_file(text: str) -> Path:
    """argparse type: the path of an existing file."""
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no file at {text!r}")
    return path


def _float_at_least(minimum: float, strict: bool = False) -> Callable[[str], float]:
    bound = f"> {minimum:g}" if strict else f">= {minimum:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number {bound}, got {text!r}") from None
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"must be a number {bound}, got {text}")
        return value

    parse.__name__ = f"number {bound}"
    return parse


def _video_path(text: str) -> Path:
    path = Path(text)
    if path.suffix.lower() not in VIDEO_EXTENSIONS:
        raise argparse.ArgumentTypeError(f"must end in one of {', '.join(VIDEO_EXTENSIONS)}, got {text!r}")
    return path


def _nonempty_text(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must be a non-empty prompt")
    return text


def _add_model_option(
    parser: argparse.ArgumentParser, what: str = "directory written by LumierePipeline.save_pretrained"
) -> None:
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        metavar="PATH",
        help=f"{what} (default: the model shipped in the package)",
    )


def _add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        type=_device,
        default=None,
        help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available, else cpu)",
    )


def _add_sampling_options(
    parser: argparse.ArgumentParser, guidance: float, guidance_help: str, steps: int | None = 25, steps_help: str = ""
) -> None:
    """--steps, --guidance, --scheduler and --time-limit of a sampling command."""
    parser.add_argument(
        "--time-limit",
        type=_float_at_least(0.0, strict=True),
        default=None,
        metavar="MINUTES",
        help="refuse, before any work, a request estimated to take longer (the estimate is logged either "
        "way; default: no limit)",
    )
    parser.add_argument(
        "--steps", type=_int_at_least(1), default=steps, metavar="N", help=f"denoising steps, >= 1{steps_help}"
    )
    parser.add_argument(
        "--guidance",
        type=_float_at_least(0.0),
        default=guidance,
        metavar="G",
        help=f"classifier-free guidance scale, >= 0 {guidance_help}",
    )
    parser.add_argument(
        "--scheduler",
        choices=tuple(SAMPLERS),
        default="dpm++",
        help="sampler, over the model's saved noise schedule",
    )


def _subcommand(
    subparsers: argparse._SubParsersAction,
    name: str,
    run: Callable[..., int] | None,
    help: str,
    description: str,
) -> argparse.ArgumentParser:
    """A subcommand's parser, which ``main`` runs with ``run(args, parser)`` (None: a group of subcommands)."""
    parser = subparsers.add_parser(name, help=help, description=description, formatter_class=_HelpFormatter)
    if run is not None:
        parser.set_defaults(func=run, command_parser=parser)
    return parser


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose errors are one line on stderr (no usage block): every error of
    the command reads ``lumiere CMD: error: ...``, the usage stays with ``--help``."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" except where the default is None (the help text says what it means)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


# ---------------------------------------------------------------------------------------------
# lumiere generate
#
# Options are declared one `add_argument` call each, argparse's idiom (as in diffusers' example
# scripts): the calls below and in the other subcommands share their shape (flag, type, default,
# metavar, help) because each declares another option, not because logic repeats; options that do
# repeat across subcommands are declared once (_add_model_option, _add_sampling_options, ...).
# ---------------------------------------------------------------------------------------------


def _add_generate(parser: argparse.ArgumentParser) -> None:
    """Generate a video from a text prompt with a Lumiere pipeline."""
    parser.add_argument("prompt", type=_nonempty_text, help="text prompt (non-empty)")
    parser.add_argument(
        "-o",
        "--output",
        type=_video_path,
        required=True,
        metavar="OUT",
        help=f"output video file; the format follows the extension ({', '.join(VIDEO_EXTENSIONS)})",
    )
    parser.add_argument(
        "--frames",
        type=_int_at_least(1),
        default=None,
        metavar="N",
        help="frames per clip: a positive multiple of the model's temporal factor (default: 16, or the "
        "length of --video); a model with a long-clip model (long_stunet/) makes long clips with it "
        "(docs/long_clips.md)",
    )
    _add_sampling_options(parser, 5.0, "(<= 1: no guidance)")
    _add_conditioning_options(parser)
    parser.add_argument(
        "--seed",
        type=_seed,
        default=0,
        metavar="S",
        help="random seed in [0, 2**64 - 1]; clip i of --num-videos uses seed + i, so it is the same as that "
        "seed alone",
    )
    _add_model_option(parser)
    parser.add_argument(
        "--num-videos",
        type=_int_at_least(1),
        default=1,
        metavar="N",
        help="clips to generate, >= 1; more than one are tiled into a grid in one file",
    )
    parser.add_argument(
        "--negative-prompt",
        default=None,
        metavar="TEXT",
        help="prompt to steer away from with guidance (default: the empty prompt, i.e. unconditional)",
    )
    parser.add_argument(
        "--fps",
        type=_float_at_least(0.0, strict=True),
        default=8.0,
        metavar="N",
        help="frame rate of the file, > 0",
    )
    parser.add_argument(
        "--height",
        type=_int_at_least(1),
        default=None,
        metavar="H",
        help="height in pixels, a multiple of the model's spatial factor (default: the model's sample size)",
    )
    parser.add_argument(
        "--width",
        type=_int_at_least(1),
        default=None,
        metavar="W",
        help="width in pixels, a multiple of the model's spatial factor (default: the model's sample size)",
    )
    _add_device_option(parser)
    parser.add_argument(
        "--no-upsample",
        action="store_true",
        help="skip the spatial super-resolution model (output at the base size)",
    )
    _add_base_window_options(parser, what="base model: ")
    _add_ssr_window_options(parser, prefix="ssr-", what="SSR ")
    parser.add_argument(
        "--ssr-steps",
        type=_int_at_least(1),
        default=None,
        metavar="N",
        help="SSR denoising steps, >= 1 (default: the model's, 1 for the shipped one; else --steps)",
    )
    _add_ssr_strength_option(parser, "--ssr-strength", "the SSR's schedule", "the base clip")
    _add_ssr_draws_option(parser, "--ssr-draws")
    _add_speed_options(parser)


def _add_ssr_strength_option(parser: argparse.ArgumentParser, flag: str, what: str, source: str) -> None:
    """The SSR's ``strength`` (``SSROptions.strength``) as ``flag``; None: the model's default."""
    parser.add_argument(
        flag,
        type=_float_in(0.0, 1.0, low_open=True),
        default=None,
        metavar="F",
        help=f"share of {what} run, from the noised interpolation of {source}, in (0, 1]; 1: from pure noise "
        "(default: the model's, 1 for the shipped one)",
    )


def _add_ssr_draws_option(parser: argparse.ArgumentParser, flag: str) -> None:
    """The SSR's ``draws`` (``SSROptions.draws``) as ``flag``; None: the model's default."""
    parser.add_argument(
        flag,
        type=_int_at_least(1),
        default=None,
        metavar="N",
        help="SSR samples averaged per clip, >= 1: their mean is closer to the true clip in PSNR, at N times "
        "the SSR's network calls (default: the model's, 1 for the shipped one)",
    )


def _add_speed_options(parser: argparse.ArgumentParser) -> None:
    """--cache-interval, --ssr-cache-interval, --guidance-end: switches that trade quality for time
    (docs/speed.md has their figures; the defaults leave the clip unchanged)."""
    group = parser.add_argument_group("speed", "faster sampling at some cost in quality (docs/speed.md)")
    for prefix, what in (("", "base model"), ("ssr-", "SSR")):
        group.add_argument(
            f"--{prefix}cache-interval",
            type=_int_at_least(1),
            default=1,
            metavar="N",
            help=f"{what}: a full network call every N steps, reusing its deep features in between "
            "(DeepCache), >= 1; 1: every call is full",
        )
    group.add_argument(
        "--guidance-end",
        type=_float_in(0.0, 1.0),
        default=1.0,
        metavar="F",
        help="base model: classifier-free guidance on the first fraction F of the steps only, in [0, 1]; "
        "the rest run the conditional branch alone; 1: every step",
    )
    group.add_argument(
        "--dtype",
        choices=("fp32", "bf16"),
        default="fp32",
        help="precision of the networks: bf16 runs oneDNN's bfloat16 kernels (faster on CPUs with "
        "avx512_bf16 or AMX, and on GPUs), at bfloat16 rounding",
    )


def _add_conditioning_options(parser: argparse.ArgumentParser) -> None:
    """--image, --video, --mask, --strength, --style, --alpha (Sec. 4 of the paper)."""
    group = parser.add_argument_group(
        "conditioning",
        "image-to-video: --image; cinemagraph: --image --mask (region to animate); inpainting: --video "
        "--mask (region to generate); video-to-video (SDEdit): --video [--strength]; stylised: --style",
    )
    group.add_argument("--image", type=_existing_file, default=None, metavar="PATH", help="image file")
    group.add_argument("--video", type=_existing_file, default=None, metavar="PATH", help="video file")
    group.add_argument(
        "--mask",
        type=_existing_file,
        default=None,
        metavar="PATH",
        help="mask image (white = 1 = region to generate / animate; thresholded at 0.5), or a .npy array "
        "[h, w] or [frames, h, w]",
    )
    group.add_argument(
        "--strength",
        type=_float_in(0.0, 1.0, low_open=True),
        default=None,
        metavar="S",
        help="video-to-video: how much of --video is re-generated, in (0, 1] (default 0.6)",
    )
    group.add_argument(
        "--style",
        type=Path,
        default=None,
        metavar="PATH",
        help="a style fine-tune of the image model (image-model or STUNet directory), blended in with --alpha",
    )
    group.add_argument(
        "--alpha",
        type=_float_in(0.0, 1.0),
        default=None,
        metavar="A",
        help="style weight in [0, 1]: W = A * W_style + (1 - A) * W_orig over the image-model weights "
        "(default 0.5 with --style)",
    )


def _add_base_window_options(parser: argparse.ArgumentParser, what: str) -> None:
    """--window, --overlap: the base model's temporal MultiDiffusion, for clips longer than it was
    trained on (default: the whole clip in one pass)."""
    parser.add_argument(
        "--window",
        type=_int_at_least(1),
        default=None,
        metavar="N",
        help=f"{what}generate in overlapping N-frame windows (MultiDiffusion) to go beyond the training "
        "length; coherent within a window, only continuous across windows (default: the whole clip at once)",
    )
    parser.add_argument(
        "--overlap",
        type=_int_at_least(0),
        default=None,
        metavar="N",
        help=f"{what}frames shared by neighbouring windows, < --window (default: half the window)",
    )


def _add_ssr_window_options(parser: argparse.ArgumentParser, prefix: str, what: str) -> None:
    """--[ssr-]window, --[ssr-]overlap, --[ssr-]chunk-size of the SSR's MultiDiffusion."""
    # fmt: off
    for name, minimum, default, text in (
        ("window", 1, SSR_DEFAULTS.window, "frames per temporal window, >= 1 (memory is that of one window, whatever the length)"),
        ("overlap", 0, SSR_DEFAULTS.overlap, "frames shared by neighbouring windows, < the window (paper: 2)"),
        ("chunk-size", 1, SSR_DEFAULTS.chunk_size, "windows per network call, >= 1 (more: faster on a GPU, more memory)"),
    ):
        parser.add_argument(f"--{prefix}{name}", type=_int_at_least(minimum), default=default, metavar="N", help=what + text)
    # fmt: on


def _run_generate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import torch

    from lumiere.data.video_io import make_grid, write_video

    if args.alpha is not None and args.style is None:
        parser.error("argument --alpha: needs --style")
    if args.seed + args.num_videos - 1 > MAX_SEED:
        parser.error(f"argument --seed: clip i uses seed + i, so --seed must be <= {MAX_SEED - args.num_videos + 1} "
                     f"with --num-videos {args.num_videos}, got {args.seed}")  # fmt: skip
    check_writable(args.output, "argument -o/--output")  # before minutes of sampling, not after
    pipe = _load_pipeline(args, parser)
    if isinstance(pipe, int):
        return pipe
    if pipe.stunet is None:
        return _fail(parser, "this model has no base stunet (it can only upsample): use `lumiere upsample`")
    if args.style is not None:
        from lumiere.models.blend import blend_weights, load_style

        try:
            styled = load_style(args.style)
            pipe.stunet = blend_weights(pipe.stunet, styled, 0.5 if args.alpha is None else args.alpha)
        except _MODEL_LOAD_ERRORS as err:
            return _fail(parser, f"--style {args.style}: {err}")
        if getattr(pipe, "long_stunet", None) is not None:
            # A style fine-tune is made from the base model: long clips take the styled base model too.
            logger.info("--style: the styled base model makes clips of every length (the long-clip model is set aside)")
            pipe.long_stunet = None

    _place(pipe, args)
    _check_time(parser, args, pipe, _generate_runs(pipe, args))
    # One CPU generator per clip: clip i is reproducible alone with --seed seed + i.
    generators = [torch.Generator().manual_seed(args.seed + i) for i in range(args.num_videos)]
    ssr_options = SSROptions(args.ssr_window, args.ssr_overlap, args.ssr_chunk_size, steps=args.ssr_steps,
                             cache_interval=args.ssr_cache_interval, strength=args.ssr_strength,
                             draws=args.ssr_draws)  # fmt: skip
    # Options map one to one onto the pipeline's keywords (here and in upsample's call): the two
    # calls share their shape (keyword=args.option), not logic. What the model cannot take (a window
    # not a multiple of its temporal factor, a mask that does not fit, too little memory) the
    # pipeline refuses before any work: an error that main reports in one line.
    frames = pipe(
        args.prompt,
        image=args.image,
        video=args.video,
        mask=args.mask,
        strength=args.strength,
        num_frames=args.frames,
        height=args.height,
        width=args.width,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        negative_prompt=args.negative_prompt,
        num_videos_per_prompt=args.num_videos,
        generator=generators,
        output_type="np",
        window=args.window,
        overlap=args.overlap,
        upsample=not args.no_upsample,
        ssr_options=ssr_options,
        cache_interval=args.cache_interval,
        guidance_end=args.guidance_end,
    ).frames  # [n, f, h, w, 3] in [0, 1]

    video = (
        frames[0] if args.num_videos == 1 else make_grid(frames, nrow=math.ceil(math.sqrt(args.num_videos)))
    )
    path = write_video(args.output, video, fps=args.fps)  # atomic: the file is complete or absent
    _, num_frames, height, width, _ = frames.shape
    logger.info(
        "wrote %d clip(s) of %d frames (%dx%d) to %s", args.num_videos, num_frames, width, height, path
    )
    return 0


def _generate_runs(pipe: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The sampling runs of ``lumiere generate`` (base, then SSR), as ``_check_time`` takes them;
    sizes the pipeline resolves later are taken at their defaults here (an estimate)."""
    num_frames = args.frames or 16
    # The networks run on pixels, or on latents vae_scale_factor times smaller (a latent pipeline).
    factor = getattr(pipe, "vae_scale_factor", 1)
    side = pipe.stunet.config.unet_config.get("sample_size") or 32
    side_height, side_width = (side, side) if isinstance(side, int) else side
    height = args.height // factor if args.height else side_height
    width = args.width // factor if args.width else side_width
    guided = args.guidance > 1.0
    base = pipe.base_model(num_frames, args.window) if hasattr(pipe, "base_model") else pipe.stunet
    runs = [dict(stunet=base, batch=args.num_videos, num_frames=num_frames, height=height, width=width,
                 guidance=guided, steps=args.steps, window=args.window, overlap=args.overlap)]  # fmt: skip
    if pipe.ssr is not None and not args.no_upsample:
        ssr_factor = pipe.ssr_scale * factor // (factor if getattr(pipe, "ssr_latent", False) else 1)
        runs.append(dict(stunet=pipe.ssr, batch=args.num_videos, num_frames=num_frames,
                         height=height * ssr_factor, width=width * ssr_factor, guidance=guided,
                         steps=_ssr_calls(pipe, args.ssr_steps or pipe.ssr_steps or args.steps, args.ssr_strength,
                                          args.ssr_draws),
                         window=args.ssr_window, overlap=args.ssr_overlap,
                         chunk_size=args.ssr_chunk_size))  # fmt: skip
    return runs


def _ssr_calls(pipe: Any, steps: int, strength: float | None, draws: int | None) -> int:
    """Network calls per window of an SSR pass of ``steps`` at ``strength``, ``draws`` times (None:
    the model's)."""
    from lumiere.pipelines.lumiere import sdedit_step_count

    draws = pipe.ssr_draws if draws is None else draws
    return sdedit_step_count(steps, pipe.ssr_strength if strength is None else strength) * draws


def _check_time(parser: argparse.ArgumentParser, args: argparse.Namespace, pipe: Any, runs: list[dict[str, Any]]) -> None:
    """Log the estimated time of ``runs`` before any work; refuse it (exit code 2) when it is over
    ``--time-limit``. A rough figure (``lumiere.pipelines.memory.estimate_sampling_seconds``)."""
    from lumiere.pipelines.memory import estimate_sampling_seconds, format_seconds

    if any(run["num_frames"] < 1 or run["height"] < 1 or run["width"] < 1 for run in runs):
        return  # the pipeline refuses these, naming the option
    try:
        estimates = [
            estimate_sampling_seconds(**run, device=pipe._execution_device, text_tokens=pipe.text_encoder.max_length)
            for run in runs
        ]
    except (ValueError, RuntimeError) as err:  # sizes the network cannot take: the pipeline says which
        logger.debug("no time estimate: %s", err)
        return
    seconds, calls = sum(e[0] for e in estimates), sum(e[1] for e in estimates)
    estimate = f"about {format_seconds(seconds)} ({calls} network calls)"
    if args.time_limit is not None and seconds > args.time_limit * 60:
        parser.error(f"argument --time-limit: the request needs {estimate}, more than {args.time_limit:g} min; "
                     "use fewer frames or steps, a smaller size, or raise --time-limit")  # fmt: skip
    # Shown from a minute on (a warning past LONG_RUN_S): a quick run, or a refused one, stays quiet.
    level = logging.WARNING if seconds > LONG_RUN_S else logging.INFO if seconds >= 60 else logging.DEBUG
    logger.log(level, "estimated time: %s", estimate)


# ---------------------------------------------------------------------------------------------
# lumiere upsample
# ---------------------------------------------------------------------------------------------


def _add_upsample(parser: argparse.ArgumentParser) -> None:
    """Spatial super-resolution of a video file with a Lumiere pipeline's SSR model: overlapping
    temporal windows, averaged where they overlap, so any length fits in memory."""
    parser.add_argument("input", type=Path, metavar="IN", help="input video file (low resolution)")
    parser.add_argument(
        "-o",
        "--output",
        type=_video_path,
        required=True,
        metavar="OUT",
        help=f"output video file; the format follows the extension ({', '.join(VIDEO_EXTENSIONS)})",
    )
    parser.add_argument(
        "--prompt", type=_nonempty_text, required=True, help="text describing the video (non-empty)"
    )
    _add_model_option(parser, "pipeline directory with an ssr/ model")
    _add_ssr_window_options(parser, prefix="", what="")
    _add_sampling_options(
        parser, SSR_DEFAULTS.guidance_scale, "(<= 1: no guidance; the input fixes the content)",
        steps=None, steps_help=" (default: the model's, 1 for the shipped one; else 25)",
    )  # fmt: skip
    _add_ssr_strength_option(parser, "--strength", "the schedule", "the input")
    _add_ssr_draws_option(parser, "--draws")
    parser.add_argument(
        "--noise-level",
        type=_int_at_least(0),
        default=SSR_DEFAULTS.noise_level,
        metavar="T",
        help="noise augmentation of the input, a timestep of the noise schedule (0: none)",
    )
    parser.add_argument("--seed", type=_seed, default=0, metavar="S", help="random seed in [0, 2**64 - 1]")
    parser.add_argument(
        "--fps",
        type=_float_at_least(0.0, strict=True),
        default=None,
        metavar="N",
        help="frame rate of the output file, > 0 (default: the input's)",
    )
    _add_device_option(parser)


def _run_upsample(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import torch

    from lumiere.data.video_io import probe_video, read_video, write_video
    from lumiere.pipelines.memory import available_bytes, check_memory

    if not args.input.is_file():
        parser.error(f"argument IN: no such file: {str(args.input)!r}")
    check_writable(args.output, "argument -o/--output")  # before minutes of sampling, not after
    pipe = _load_pipeline(args, parser)
    if isinstance(pipe, int):
        return pipe
    if pipe.ssr is None:
        return _fail(parser, "this model has no SSR model (no ssr/ folder); pass --model with one")
    _place(pipe, args)
    # The decoded clip must fit before it is decoded: its size is in the file's header.
    try:
        num_frames, height, width = probe_video(args.input)
    except ValueError as err:  # not a video, or a damaged one (names the file): bad input, exit 2
        return _fail(parser, str(err), 2)
    check_memory(num_frames * height * width * 3 * DECODED_BYTES, available_bytes("cpu"),
                 f"decoding the {num_frames} frames of {width}x{height} of {args.input}")  # fmt: skip
    _check_time(parser, args, pipe, [dict(
        stunet=pipe.ssr, batch=1, num_frames=num_frames, height=height * pipe.ssr_scale,
        width=width * pipe.ssr_scale, guidance=args.guidance > 1.0,
        steps=_ssr_calls(pipe, args.steps or pipe.ssr_steps or 25, args.strength, args.draws), window=args.window,
        overlap=args.overlap, chunk_size=args.chunk_size,
    )])  # fmt: skip
    try:
        frames, fps = read_video(args.input)  # uint8 [f, h, w, 3]
    except ValueError as err:  # not a video, or a damaged one (names the file): bad input, exit 2
        return _fail(parser, str(err), 2)
    # The pipeline checks windows, frame size, noise level and memory before any work.
    video = pipe.upsample(
        frames[None],
        args.prompt,
        window=args.window,
        overlap=args.overlap,
        chunk_size=args.chunk_size,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        noise_level=args.noise_level,
        strength=args.strength,
        draws=args.draws,
        generator=torch.Generator().manual_seed(args.seed),
        output_type="np",
    ).frames[0]  # [f, H, W, 3] in [0, 1]
    path = write_video(args.output, video, fps=args.fps or fps or 8.0)  # atomic
    (num_frames, height, width), (out_height, out_width) = frames.shape[:3], video.shape[1:3]
    logger.info(
        "upsampled %d frames from %dx%d to %dx%d into %s",
        num_frames,
        width,
        height,
        out_width,
        out_height,
        path,
    )
    return 0


# ---------------------------------------------------------------------------------------------
# lumiere train
# ---------------------------------------------------------------------------------------------


def _add_train(parser: argparse.ArgumentParser) -> None:
    """Train one Lumiere stage (Accelerate; also under `accelerate launch`) from a YAML config."""
    parser.add_argument("config", type=Path, metavar="CONFIG", help="YAML training config (an existing file)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest checkpoint in the config's output directory",
    )
    parser.add_argument(
        "--time-limit",
        type=_float_at_least(0.0, strict=True),
        default=None,
        metavar="MINUTES",
        help="stop with a checkpoint after this many minutes, > 0 (continue later with --resume)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="set one config key over the file's value, dotted, the value read as YAML (e.g. "
        "--set optim.max_steps=400 --set model.init_from=runs/a/model); repeatable. The run's "
        "folder keeps the config it ran (config.json)",
    )
    parser.add_argument(
        "--export",
        type=Path,
        default=None,
        metavar="DIR",
        help="do not train: export the EMA model of one of the run's checkpoints (the newest, or "
        "--step's) into DIR, as the run's end would; the run may go on meanwhile",
    )
    parser.add_argument(
        "--step",
        type=_int_at_least(1),
        default=None,
        metavar="N",
        help="with --export: the checkpoint of step N (>= 1) rather than the newest",
    )


def _run_train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if not args.config.is_file():
        parser.error(f"argument config: no such file: {str(args.config)!r}")
    from lumiere.config import load_config
    from lumiere.train import export_checkpoint, train

    if args.export is None and args.step is not None:
        parser.error("argument --step: needs --export DIR (the checkpoint of step N to export)")
    if args.export is not None and (args.resume or args.time_limit is not None):
        parser.error("argument --export: exports without training; drop --resume and --time-limit")
    # A ValueError naming the file and key, or the malformed --set (exit code 2).
    config = load_config(args.config, args.overrides)
    if args.export is not None:
        check_writable(args.export, "argument --export", folder=True)
        # No checkpoint, or none of that step: a ValueError naming the folder (exit code 2).
        export_checkpoint(config, args.export, step=args.step)
        return 0
    check_writable(config.output_dir, f"config key output_dir in {args.config}", folder=True)
    time_limit_s = None if args.time_limit is None else args.time_limit * 60
    # Disk faults while training (a full disk, a read-only folder) are an OutputError naming the
    # folder, with the last good checkpoint intact (exit code 1); --resume continues from it.
    train(config, resume=args.resume, time_limit_s=time_limit_s)
    return 0


# ---------------------------------------------------------------------------------------------
# lumiere inflate
# ---------------------------------------------------------------------------------------------


def _add_inflate(parser: argparse.ArgumentParser) -> None:
    """Inflate a local diffusers folder into a Lumiere pipeline folder. DeepFloyd IF (the paper's
    cascade, Sec. 3): the base STUNet from stage I with temporal down/up-sampling, an SSR STUNet
    from stage II (--ssr) without it, the T5 encoder referred to by its path (not copied), and
    stage I's noise schedule. Stable Diffusion 1.x/2.x and SDXL (latent space): the STUNet from
    the U-Net, the VAE copied, the CLIP encoder(s) referred to by path, the folder's schedule;
    --conditional widens it for image-to-video and inpainting. Nothing is downloaded. Fine-tune it
    with `lumiere train` (stage stunet, model.init_from: OUT)."""
    parser.add_argument(
        "source", type=Path, help="local diffusers folder: IF stage I, SD 1.x/2.x or SDXL (model_index.json, unet/, ...)"
    )
    parser.add_argument("--out", type=Path, required=True, help="Lumiere pipeline folder to write")
    parser.add_argument("--ssr", type=Path, default=None, help="IF only: local diffusers IF stage II folder (its unet/)")
    parser.add_argument(
        "--conditional", action="store_true",
        help="SD/SDXL: widen the STUNet for image-to-video, inpainting and cinemagraphs (zero-initialised)",
    )  # fmt: skip


def _run_inflate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from lumiere.pipelines.convert import inflate_pipeline

    check_writable(args.out, "argument --out", folder=True)
    try:
        out = inflate_pipeline(args.source, args.out, ssr_source=args.ssr, conditional=args.conditional)
    except (FileNotFoundError, RuntimeError) as err:  # no source folder, damaged weights: exit code 1
        return _fail(parser, str(err))
    except ValueError as err:  # a source folder of the wrong kind (naming the component): input to change
        return _fail(parser, _one_line(str(err)), 2)
    logger.info("wrote %s", out)
    return 0


# ---------------------------------------------------------------------------------------------
# lumiere eval
# ---------------------------------------------------------------------------------------------


def _add_eval(parser: argparse.ArgumentParser) -> None:
    """Generate clips for prompts drawn from the moving-shapes grammar and print JSON scores."""
    parser.add_argument("--count", type=_int_at_least(2), default=100, metavar="N", help="clips, >= 2")
    parser.add_argument(
        "--seed",
        type=_int_at_least(0, 2**40),  # clip i's noise seed is seed * 100003 + i (lumiere.eval), a 64-bit seed
        default=0,
        metavar="S",
        help="prompt and noise seed in [0, 2**40]",
    )
    _add_model_option(parser, "pipeline directory")
    parser.add_argument(
        "--frames", type=_int_at_least(1), default=16, metavar="N", help="frames per clip, >= 1"
    )
    parser.add_argument(
        "--steps", type=_int_at_least(1), default=25, metavar="N", help="denoising steps, >= 1"
    )
    parser.add_argument(
        "--guidance", type=_float_at_least(0.0), default=5.0, metavar="G", help="guidance scale, >= 0"
    )
    parser.add_argument(
        "--batch-size", type=_int_at_least(1), default=8, metavar="N", help="clips per batch, >= 1"
    )
    parser.add_argument(
        "--task",
        choices=("t2v", "i2v", "inpaint", "cinemagraph", "sdedit", "style"),
        default="t2v",
        help="what to evaluate: text-to-video, a conditional task (lumiere.eval.conditional), or weight "
        "blending with --style (lumiere.eval.style)",
    )
    parser.add_argument(
        "--style",
        type=Path,
        default=None,
        metavar="PATH",
        help="--task style: the style fine-tune (image-model or STUNet directory)",
    )
    parser.add_argument(
        "--alphas",
        type=_float_list_in(0.0, 1.0),
        default=(0.0, 0.25, 0.5, 0.75, 1.0),
        metavar="A,B,...",
        help="--task style: blend weights to compare, each in [0, 1]",
    )
    _add_base_window_options(parser, what="--task t2v: ")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="JSON",
        help="also write the JSON here, with per-clip readings (t2v)",
    )


def _run_eval(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import json

    from lumiere.eval.evaluate import evaluate

    if args.out is not None:
        check_writable(args.out, "argument --out")  # before the clips are generated and scored
    pipe = _load_pipeline(args, parser)
    if isinstance(pipe, int):
        return pipe
    if pipe.stunet is None:
        return _fail(parser, "this model has no base stunet (it can only upsample); eval needs one")
    if (args.window is not None or args.overlap is not None) and args.task != "t2v":
        parser.error("argument --window/--overlap: only with --task t2v")
    pipe.set_progress_bar_config(disable=True)
    common = dict(
        count=args.count,
        seed=args.seed,
        num_frames=args.frames,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
    )
    if (args.task == "style") != (args.style is not None):
        parser.error("argument --style: give it with --task style, and only then")
    if args.task == "t2v":
        scores = evaluate(
            pipe, batch_size=args.batch_size, window=args.window, overlap=args.overlap, **common
        )
    elif args.task == "style":
        from lumiere.eval.style import evaluate_style
        from lumiere.models.blend import load_style

        try:
            styled = load_style(args.style)
        except FileNotFoundError as err:
            return _fail(parser, str(err))
        scores = evaluate_style(pipe, styled, alphas=args.alphas, batch_size=args.batch_size, **common)
    else:
        from lumiere.eval.conditional import evaluate_conditional
        from lumiere.models.conditional import is_conditional_stunet

        if args.task != "sdedit" and not is_conditional_stunet(pipe.stunet):
            return _fail(parser, f"--task {args.task} needs a conditional model (stage 'conditional')")
        scores = evaluate_conditional(pipe, args.task, **common)
    # Per-clip readings go to --out only: a hundred of them would bury the summary on the terminal.
    summary = {key: value for key, value in scores.items() if key != "clip_readings"}
    print(json.dumps(summary, indent=2))
    if args.out is not None:
        write_text_atomic(args.out, json.dumps(scores, indent=2) + "\n")
    elif "clip_readings" in scores:
        print("per-clip readings: pass --out FILE to keep them", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------
# lumiere data
# ---------------------------------------------------------------------------------------------


def _add_data(parser: argparse.ArgumentParser) -> None:
    """Write data sets."""
    data_commands = parser.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    shapes = _subcommand(
        data_commands,
        "shapes",
        _run_data_shapes,
        "write the synthetic moving-shapes data set (mp4 + caption txt pairs)",
        "Write clip_NNNNNN.mp4 videos of moving shapes, each with its caption in clip_NNNNNN.txt.",
    )
    shapes.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="output directory (created if missing)"
    )
    shapes.add_argument(
        "--count", type=_int_at_least(1), required=True, metavar="N", help="number of clips, >= 1"
    )
    shapes.add_argument(
        "--frames", type=_int_at_least(1), default=16, metavar="F", help="frames per clip, >= 1"
    )
    shapes.add_argument(
        "--resolution",
        type=_int_at_least(8),
        default=32,
        metavar="R",
        help="height and width in pixels, >= 8",
    )
    shapes.add_argument(
        "--seed",
        type=_seed,
        default=0,
        metavar="S",
        help="random seed in [0, 2**64 - 1]; a seed always writes the same clips",
    )
    shapes.add_argument(
        "--fps",
        type=_float_at_least(0.0, strict=True),
        default=8.0,
        metavar="N",
        help="frame rate of the files, > 0",
    )
    _add_data_cache(data_commands)
    _add_data_shard(data_commands)


def _run_data_shapes(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from lumiere.data.shapes import write_shapes_dataset

    check_writable(args.out, "argument --out", folder=True)
    # Written into a staging folder and moved into --out once complete: a disk that fills up
    # part-way leaves --out as it was, not a data set cut short.
    with staged_folder(args.out) as staging:
        paths = write_shapes_dataset(
            staging, args.count, num_frames=args.frames, resolution=args.resolution, seed=args.seed, fps=args.fps
        )
    logger.info("wrote %d clips with captions to %s", len(paths), args.out)
    return 0


def _add_data_cache(data_commands: argparse._SubParsersAction) -> None:
    cache = _subcommand(
        data_commands,
        "cache",
        _run_data_cache,
        "encode a latent training config's clips and captions once (its data.cache_dir)",
        "Encode every training clip to VAE latents and every caption to its text embedding, into "
        "safetensors shards under the config's data.cache_dir; resumes where a stopped run left off.",
    )
    cache.add_argument("config", type=Path, metavar="CONFIG", help="YAML training config (an existing file)")


def _run_data_cache(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if not args.config.is_file():
        parser.error(f"argument config: no such file: {str(args.config)!r}")
    from lumiere.config import load_config
    from lumiere.data.latent_cache import build_caches

    config = load_config(args.config)
    if config.data.cache_dir:
        check_writable(config.data.cache_dir, f"config key data.cache_dir in {args.config}", folder=True)
    build_caches(config)
    return 0


def _add_data_shard(data_commands: argparse._SubParsersAction) -> None:
    shard = _subcommand(
        data_commands,
        "shard",
        _run_data_shard,
        "write a folder of captioned videos as WebDataset tar shards (data.kind: shards)",
        "Write the videos of SRC (a folder with a .txt caption beside each video, or a CSV/JSONL "
        "manifest of path, caption[, start, end]) into WebDataset tar shards of bounded size, with a "
        "manifest.json of counts, totals and every skipped file with its reason. Resumes after a kill "
        "without writing a finished shard again (lumiere.data.shards).",
    )
    shard.add_argument("src", type=Path, metavar="SRC", help="a folder of videos or a .csv/.jsonl manifest")
    shard.add_argument("--out", type=Path, required=True, metavar="DIR", help="the shard folder")
    shard.add_argument(
        "--shard-size-mb", type=_float_at_least(0.0, strict=True), default=256.0, metavar="N",
        help="a shard closes before the clip that would take it past N MB, > 0",
    )  # fmt: skip
    shard.add_argument(
        "--workers", type=_int_at_least(1), default=4, metavar="K", help="processes reading files, >= 1"
    )


def _run_data_shard(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if not args.src.exists():
        parser.error(f"argument SRC: no such folder or manifest: {str(args.src)!r}")
    from lumiere.data.shards import write_shards

    check_writable(args.out, "argument --out", folder=True)
    write_shards(args.src, args.out, shard_size_mb=args.shard_size_mb, workers=args.workers)
    return 0


# ---------------------------------------------------------------------------------------------
# lumiere estimate
# ---------------------------------------------------------------------------------------------


def _add_estimate(parser: argparse.ArgumentParser) -> None:
    """Estimate a STUNet's parameters, FLOPs per denoising and training step, and memory (weights,
    AdamW, activations with and without gradient checkpointing, training and inference peaks) in
    fp32 and bf16, by running it on the meta device: nothing is allocated and no weight is read."""
    parser.add_argument(
        "source",
        metavar="CONFIG|DIR|paper",
        help="a YAML training config (its stage's network), a saved pipeline / STUNet / image-model "
        "folder (its config.json only), or 'paper' (the paper's cascade on DeepFloyd IF widths)",
    )
    for option, what, fallback in (
        ("--batch", "clips per network call (a guided denoising step: 2 per clip)", 1),
        ("--frames", "frames per clip", 80),
        ("--height", "height in pixels", 128),
        ("--width", "width in pixels", 128),
    ):
        parser.add_argument(
            option,
            type=_int_at_least(1),
            default=None,
            metavar="N",
            help=f"{what}, >= 1 (default: the config's, else {fallback})",
        )
    parser.add_argument("--dtype", choices=("fp32", "bf16", "both"), default="both", help="precision")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


def _run_estimate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import json

    from lumiere.models.estimate import check_workload, estimate, format_estimate, models_to_estimate

    models = models_to_estimate(
        args.source, batch=args.batch, num_frames=args.frames, height=args.height, width=args.width
    )
    for measured in models:
        check_workload(measured)
    dtypes = ("fp32", "bf16") if args.dtype == "both" else (args.dtype,)
    results = [estimate(measured, dtypes) for measured in models]
    if args.json:
        print(json.dumps([result.to_dict() for result in results], indent=2))
    else:
        print("\n\n".join(format_estimate(result) for result in results))
    return 0


# ---------------------------------------------------------------------------------------------
# lumiere serve
# ---------------------------------------------------------------------------------------------


def _add_serve(parser: argparse.ArgumentParser) -> None:
    """Serve a Gradio page with tabs for text-to-video, image-to-video, cinemagraphs, inpainting
    and video-to-video. One generation at a time; requests beyond the caps are refused."""
    from lumiere.web.app import Caps  # plain Python: the caps' defaults, without Gradio

    caps = Caps()
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on; 0.0.0.0 opens the page to the network (anyone who can reach it can use it)",
    )
    parser.add_argument("--port", type=_int_at_least(1), default=7860, metavar="N", help="port, 1-65535")
    _add_model_option(parser)
    _add_device_option(parser)
    for option, default, metavar, what in (
        ("--max-frames", caps.max_frames, "N", "frames per clip"),
        ("--max-steps", caps.max_steps, "N", "denoising steps"),
        ("--max-size", caps.max_size, "PX", "the base height and width in pixels"),
        ("--max-queued-per-client", caps.max_queued_per_client, "N", "requests one address may have in line"),
    ):
        parser.add_argument(
            option, type=_int_at_least(1), default=default, metavar=metavar, help=f"cap on {what}"
        )
    parser.add_argument(
        "--max-upload-mb",
        type=_float_at_least(0.0, strict=True),
        default=caps.max_upload_bytes / 2**20,
        metavar="MB",
        help="cap on the size of one uploaded file",
    )
    parser.add_argument(
        "--timeout",
        type=_float_at_least(0.0, strict=True),
        default=caps.timeout_s,
        metavar="SECONDS",
        help="stop a generation that runs longer (checked at every denoising step)",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where results are written (default: a new temporary directory)",
    )


def _run_serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from lumiere.web.app import Caps

    if args.port > 65535:
        parser.error(f"argument --port: must be at most 65535, got {args.port}")
    if args.model is not None and args.model.is_dir():
        from lumiere.checkpoint import check_model_folder

        check_model_folder(args.model)  # before the server starts
    try:
        from lumiere.web.ui import serve
    except ImportError as err:
        return _fail(parser, f"the web page needs Gradio ({err}): pip install 'lumiere-video[web]'")
    caps = Caps(
        max_frames=args.max_frames,
        max_steps=args.max_steps,
        max_size=args.max_size,
        max_upload_bytes=max(1, int(args.max_upload_mb * 2**20)),
        timeout_s=args.timeout,
        max_queued_per_client=args.max_queued_per_client,
    )
    try:
        serve(
            args.model,
            host=args.host,
            port=args.port,
            caps=caps,
            device=args.device,
            output_dir=args.output_dir,
        )
    except FileNotFoundError as err:  # a --model folder that is not there: bad input, as for generate
        return _fail(parser, str(err), 2)
    return 0


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def _load_pipeline(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Any:
    """``LumierePipeline.from_pretrained(args.model)``, or the exit code of a model that does not
    load, reported: 2 for a ``--model`` folder that is not there (bad input), 1 for a damaged one
    (corrupted, or a config that does not fit the weights: a fault of the files) or the shipped one."""
    from lumiere.checkpoint import check_model_folder
    from lumiere.pipelines import LumierePipeline

    try:
        if args.model is not None and args.model.is_dir():
            check_model_folder(args.model)  # malformed JSON named by file and key, not a TypeError
        return LumierePipeline.from_pretrained(args.model)
    except _MODEL_LOAD_ERRORS as err:
        missing = isinstance(err, FileNotFoundError) and args.model is not None
        return _fail(parser, str(err), 2 if missing else 1)
    except (TypeError, AttributeError, KeyError) as err:  # a file the checks above let through
        logger.debug("loading %s failed", args.model, exc_info=True)
        return _fail(parser, f"the model folder {args.model} holds a malformed file ({type(err).__name__}: {err})")


def _place(pipe: Any, args: argparse.Namespace) -> None:
    """``--scheduler`` over the model's noise schedule; the networks on ``--device``."""
    import torch

    from lumiere.pipelines import make_sampling_scheduler

    pipe.scheduler = make_sampling_scheduler(args.scheduler, pipe.scheduler.config)
    pipe.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if getattr(args, "dtype", "fp32") == "bf16":
        pipe.to(torch.bfloat16)  # the networks only: the text encoder keeps its precision
    if getattr(pipe, "ssr", None) is not None and pipe._execution_device.type == "cpu":
        # oneDNN's native layout: the SSR's 64x64 convolutions run ~1.08x faster, the same clip up to
        # float rounding (docs/speed.md); the base model at 32x32 gains nothing.
        pipe.ssr.to(memory_format=torch.channels_last)


def _fail(parser: argparse.ArgumentParser, message: str, code: int = 1) -> int:
    """Report a failure of the work itself (not of the options): exit code 1."""
    sys.stderr.write(f"{parser.prog}: error: {message}\n")
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="lumiere",
        description="Lumiere: space-time diffusion for video generation (Bar-Tal et al. 2024).",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="logging verbosity"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # fmt: off
    for name, add_options, run, summary in (  # the description of each is its _add_ function's docstring
        ("generate", _add_generate, _run_generate, "generate a video from a text prompt"),
        ("upsample", _add_upsample, _run_upsample, "upsample a video spatially with the SSR model (MultiDiffusion over temporal windows)"),
        ("train", _add_train, _run_train, "train one stage from a YAML config"),
        ("inflate", _add_inflate, _run_inflate, "inflate a local DeepFloyd IF, Stable Diffusion or SDXL folder into a Lumiere pipeline folder"),
        ("data", _add_data, None, "write data sets"),
        ("eval", _add_eval, _run_eval, "score a model on moving-shapes prompts (probe accuracy, consistency, Frechet distance)"),
        ("estimate", _add_estimate, _run_estimate, "estimate parameters, FLOPs and memory of a STUNet (meta device)"),
        ("serve", _add_serve, _run_serve, "serve a web page for generation (needs the web extra: pip install 'lumiere-video[web]')"),
    ):
        add_options(_subcommand(commands, name, run, summary, add_options.__doc__))
    # fmt: on
    return parser


def _refusal(err: Exception) -> str:
    """The library's refusal in the command's words: an ``InvalidArgument`` of an argument an
    option sets names the option, as argparse does; anything else is the library's message."""
    if not isinstance(err, InvalidArgument) or err.argument not in OPTION_OF_ARGUMENT:
        return str(err)
    got = f", got {err.value}" if err.has_value else ""
    return f"argument {OPTION_OF_ARGUMENT[err.argument]}: {err.requirement_for(OPTION_OF_ARGUMENT)}{got}"


def classify(err: BaseException) -> tuple[int, str]:
    """(exit code, one-line message) of an error that ends a command: 2 for input to change (a
    value, a file, an output path), 1 for a fault of the machine or of the work (a full disk, a
    read-only file system, too little memory, a damaged checkpoint, a run that diverged), 130 for
    Ctrl-C. Unexpected errors are 1 with their type, the traceback under ``--log-level DEBUG``."""
    import PIL.Image
    import torch

    from lumiere.checkpoint import CheckpointError

    if isinstance(err, KeyboardInterrupt):
        return 130, "interrupted"
    if isinstance(err, OSError) and err.errno is not None and err.strerror:  # errno: the OS's word
        return (1 if is_machine_fault(err) else 2), describe_os_error(err)
    if isinstance(err, (ValueError, FileNotFoundError)):  # values, files and configs refused
        return 2, _refusal(err)
    if isinstance(err, PIL.Image.DecompressionBombError):
        return 2, f"an input image is too large to decode safely: {err}"
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return 1, f"the device ran out of memory: {str(err).splitlines()[0]}"
    if isinstance(err, (MemoryError, CheckpointError, OSError)):  # InsufficientMemoryError included
        return 1, str(err) or type(err).__name__
    from lumiere.train import TrainingStopped

    if isinstance(err, TrainingStopped):
        return 1, str(err)
    return 1, f"unexpected {type(err).__name__}: {err} (run with --log-level DEBUG for the traceback)"


def _one_line(message: str) -> str:
    """``message`` on one line: a library message spread over lines joined with "; "."""
    return "; ".join(line.strip() for line in message.splitlines() if line.strip())


def _quiet_loading_bars() -> None:
    """Hide the weight-loading progress bars of transformers and diffusers (a bar per component
    on stderr, before the one line an error or success should be); the sampler's bar stays."""
    import diffusers
    import transformers

    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()


def _close_progress_bars() -> None:
    """Close the progress bars an error left open (a sampler's, training's), so the error line
    starts on a line of its own instead of after the bar's last frame."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``lumiere`` command; returns the exit code (argparse exits with 2 on bad options).

    The one error boundary of every subcommand: whatever ends it is one line on stderr (``classify``),
    no traceback unless ``--log-level DEBUG``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    if args.log_level == "DEBUG":  # tracebacks also where logging was configured before (an embedding program)
        logger.setLevel(logging.DEBUG)
    keep_freed_memory()  # 1.3-1.4x on CPU: no page faults for every activation (lumiere.runtime)
    # The subcommand's own parser, so errors found later name it.
    parser = args.command_parser
    try:
        if args.log_level != "DEBUG":
            _quiet_loading_bars()
        return args.func(args, parser)
    except (Exception, KeyboardInterrupt) as err:
        code, message = classify(err)
        logger.debug("%s failed", parser.prog, exc_info=True)
        _close_progress_bars()
        if code == 2:
            parser.exit(2, f"{parser.prog}: error: {_one_line(message)}\n")
        return _fail(parser, _one_line(message), code)


if __name__ == "__main__":
    sys.exit(main())
