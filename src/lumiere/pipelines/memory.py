"""Memory guard: refuse a generation that cannot fit, before anything is allocated.

A STUNet denoises the whole clip in one pass (Sec. 3.1), so its activations grow with frames x
height x width; a request far too large would otherwise run until the process is killed (CPU) or
fail deep inside the network (CUDA). ``check_sampling_memory`` compares an estimate of what the
request needs with what the device has, and raises ``InsufficientMemoryError`` saying both and
what to change.

    estimate_peak_bytes(stunet, batch, num_frames, height, width, guidance, dtype)
        -> peak bytes of one no-grad forward pass: weights + activations (a walk over the levels)
    available_bytes(device) -> free bytes on the device (None: unknown)
    check_memory(required, available, what) -> raises InsufficientMemoryError when required > available
    check_sampling_memory(stunet, batch, num_frames, height, width, guidance, device, ...)
        -> the check a pipeline makes before sampling (windows and chunks included)
    estimate_sampling_seconds(stunet, batch, num_frames, height, width, guidance, steps, device, ...)
        -> (rough seconds, network calls) of a sampling run, before it runs (``lumiere generate``,
           ``lumiere upsample``: logged, and refused past ``--time-limit``)

Set ``LUMIERE_SKIP_MEMORY_CHECK=1`` to turn ``check_sampling_memory`` off (e.g. with swap).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lumiere.models.stunet import STUNet

logger = logging.getLogger(__name__)

SKIP_ENV = "LUMIERE_SKIP_MEMORY_CHECK"

# Calibrated multipliers (bench/memory_calibration.py; the fit is in estimate_peak_bytes).
RESNET_WORK = 5.0  # copies of a conv layer's widest tensor: norm, activation, conv, frame reshapes
TRANSFORMER_WORK = 8.0  # copies of a level's activation in a transformer: GEGLU's 8c-wide hidden
TEXT_COPY_WORK = 1.0  # the text held once per pixel by temporal cross-attention (states, keys, values)
CLIP_BUFFERS = 5  # float32 clips the sampler keeps: sample, scaled input, guided output, two solver states


class InsufficientMemoryError(MemoryError):
    """A request that needs more memory than the device has; raised before anything is allocated."""


# ---------------------------------------------------------------------------------------------
# The estimate: walk the U-Net's levels, tracking the skips held and each layer's working set.
# ---------------------------------------------------------------------------------------------


@dataclass
class _Activation:
    channels: int
    frames: int
    pixels: int  # height x width at its level

    @property
    def size(self) -> int:  # elements per clip
        return self.channels * self.frames * self.pixels


def _text_width(stunet: STUNet) -> int:
    """Width of the text states the temporal cross-attention copies per pixel (0: none)."""
    for block in stunet.mid_block.temporal_attentions:
        if block.cross_attn is not None:
            return block.cross_attn.to_k.in_features
    return 0


def _activation_elements(stunet: STUNet, num_frames: int, height: int, width: int, text_tokens: int) -> int:
    """Peak elements of the activations of one clip in a forward pass (no weights)."""
    held: list[_Activation] = []  # skips waiting for the up path
    peak = 0

    def visit(working: float) -> None:
        nonlocal peak
        peak = max(peak, sum(a.size for a in held) + int(working))

    frames, pixels = num_frames, height * width
    channels = stunet.down_blocks[0].spatial.resnets[0].in_channels
    held.append(_Activation(channels, frames, pixels))  # conv_in output
    # 1. Down: every layer's output and every resized tensor is a skip.
    for block in stunet.down_blocks:
        attention = getattr(block.spatial, "attentions", None) is not None
        for resnet in block.spatial.resnets:
            widest = max(resnet.in_channels, resnet.out_channels) * frames * pixels
            visit(RESNET_WORK * widest)
            if attention:
                visit(TRANSFORMER_WORK * resnet.out_channels * frames * pixels)
            channels = resnet.out_channels
            held.append(_Activation(channels, frames, pixels))
        if block.spatial.downsamplers is not None:
            pixels = max(1, pixels // 4)
            if block.temporal_downsampler is not None:
                frames = max(1, frames // 2)
            held.append(_Activation(channels, frames, pixels))
    # 2. Coarsest level: image mid block, then temporal attention with the text copied per pixel.
    current = channels * frames * pixels
    visit(RESNET_WORK * current)
    if stunet.mid_block.temporal_attentions or stunet.mid_block.spatial.attentions:
        text_width = _text_width(stunet)
        text_copy = pixels * text_tokens * (text_width + 2 * channels) if text_width else 0
        visit(TRANSFORMER_WORK * current + TEXT_COPY_WORK * text_copy)
    # 3. Up: each layer concatenates one skip.
    for block in stunet.up_blocks:
        attention = getattr(block.spatial, "attentions", None) is not None
        for resnet in block.spatial.resnets:
            skip = held.pop()
            visit(RESNET_WORK * (channels + skip.channels) * skip.frames * skip.pixels)
            channels, frames, pixels = resnet.out_channels, skip.frames, skip.pixels
            if attention:
                visit(TRANSFORMER_WORK * channels * frames * pixels)
        if block.spatial.upsamplers is not None:
            pixels *= 4
            if block.temporal_upsampler is not None:
                frames *= 2
            visit(RESNET_WORK * channels * frames * pixels)
    return peak


def weight_bytes(stunet: STUNet) -> int:
    """Bytes of the STUNet's parameters and buffers."""
    tensors = [*stunet.parameters(), *stunet.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def estimate_peak_bytes(
    stunet: STUNet,
    batch: int,  # clips per network call
    num_frames: int,  # frames per call (a window's, when sampling with windows)
    height: int,
    width: int,
    guidance: bool = False,  # classifier-free guidance runs both branches in one call: 2x batch
    dtype: torch.dtype | None = None,  # activation dtype; default the STUNet's
    text_tokens: int = 77,  # the text encoder's max_length (MiniLM: 32, CLIP: 77)
    include_weights: bool = True,  # False: activations only (the weights are already in memory)
) -> int:
    """Estimated peak memory in bytes of one no-grad forward pass of ``stunet``.

    Weights, plus a walk over the U-Net's levels (channels, frames after temporal downsampling,
    pixels after spatial downsampling): at each layer, the skips held for the up path plus that
    layer's working set: ``RESNET_WORK`` copies of its widest tensor (the up path's concatenation
    included), ``TRANSFORMER_WORK`` copies at levels with spatial attention, and at the coarsest
    level the text copied once per pixel by the temporal cross-attention. Attention matrices are
    not counted: PyTorch's fused attention (CPU flash attention, CUDA flash / memory-efficient)
    does not materialise them. Pure arithmetic: nothing is allocated.

    Calibration (``bench/memory_calibration.py``, CPU, float32, one thread): peak RSS above the
    resident model and inputs, with ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed tensors leave
    RSS, over 21 forward passes of the tiny, default, a 3x wider tiny and a 4-level default STUNet
    (1-2 clips, 4-64 frames, 32x32 to 128x128, peaks of 21 MB to 455 MB). The three multipliers
    were fitted to minimise the largest relative error: the estimate is within -12% .. +13% of the
    measured peak (median +9%); without the text-copy term, the tiny model at 128x128 would be
    underestimated tenfold.
    With glibc's default allocator an exploratory run of the same shapes measured 1.2x to 2.8x the
    live tensors (freed blocks under glibc's 32 MiB mmap threshold stay resident); the tensors of
    requests large enough to matter are above it and leave RSS when freed. CUDA is not calibrated
    here: its fused attention and caching allocator hold the same tensors.
    """
    if batch < 1 or num_frames < 1 or height < 1 or width < 1:
        raise ValueError(
            f"batch={batch}, num_frames={num_frames}, height={height}, width={width}: each must be >= 1"
        )
    dtype = stunet.dtype if dtype is None else dtype
    itemsize = torch.empty((), dtype=dtype, device="meta").element_size()
    clips = batch * (2 if guidance else 1)
    activations = clips * _activation_elements(stunet, num_frames, height, width, text_tokens) * itemsize
    return activations + (weight_bytes(stunet) if include_weights else 0)


# ---------------------------------------------------------------------------------------------
# What the device has.
# ---------------------------------------------------------------------------------------------


def _meminfo_available() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (Linux), or None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_available() -> int | None:
    """Bytes left under this process's cgroup memory limit (v2, then v1), or None if unlimited."""
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            limit_text = Path(limit_file).read_text().strip()
            if limit_text == "max":
                return None
            limit, usage = int(limit_text), int(Path(usage_file).read_text())
        except (OSError, ValueError):
            continue
        if limit >= 1 << 60:  # v1 writes a huge number for "no limit"
            return None
        return max(0, limit - usage)
    return None


def available_bytes(device: torch.device | str | None = None) -> int | None:
    """Free memory on ``device`` in bytes; None where it cannot be told (then nothing is checked).

    CUDA: ``torch.cuda.mem_get_info`` plus what PyTorch's caching allocator holds unused. CPU:
    psutil's available memory (else /proc/meminfo MemAvailable), capped by a cgroup limit.
    """
    device = torch.device("cpu" if device is None else device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
    if device.type != "cpu":
        return None
    try:
        import psutil

        system = int(psutil.virtual_memory().available)
    except ImportError:
        system = _meminfo_available()
    cgroup = _cgroup_available()
    candidates = [x for x in (system, cgroup) if x is not None]
    return min(candidates) if candidates else None


# ---------------------------------------------------------------------------------------------
# The check.
# ---------------------------------------------------------------------------------------------

SUGGESTIONS = (
    "fewer frames (num_frames), a smaller height/width, fewer clips per call (num_videos_per_prompt, "
    "prompts), base windows (window=, MultiDiffusion over time) or a smaller ssr_window / ssr_chunk_size"
)


def format_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(count) < 1024 or unit == "PiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    raise AssertionError  # unreachable


def check_memory(required: int, available: int | None, what: str) -> None:
    """Raise ``InsufficientMemoryError`` when ``required`` bytes exceed ``available``.

    ``what`` names the request in the message (e.g. "the base model for 2 clips of 16 frames at
    64x64"). ``available`` None (unknown) passes.
    """
    if available is None or required <= available:
        return
    raise InsufficientMemoryError(
        f"{what} needs about {format_bytes(required)} but {format_bytes(available)} is available; "
        f"use {SUGGESTIONS} (set {SKIP_ENV}=1 to skip this check)"
    )


def check_sampling_memory(
    stunet: STUNet,
    batch: int,  # clips
    num_frames: int,  # frames of the whole clip
    height: int,
    width: int,
    guidance: bool,
    device: torch.device | str,
    window: int | None = None,  # frames per temporal window; None: the whole clip in one call
    chunk_size: int = 1,  # windows per network call
    text_tokens: int = 77,
    name: str = "the base model",
) -> None:
    """Refuse a sampling request that cannot fit on ``device``, before anything is allocated.

    Needed: one network call's activations (``estimate_peak_bytes`` of ``window x chunk_size``
    frames, or the whole clip) plus ``CLIP_BUFFERS`` float32 copies of the whole clip; the
    weights are already resident. Available: ``available_bytes(device)``.
    """
    if os.environ.get(SKIP_ENV, "") not in ("", "0"):
        return
    windowed = window is not None and window < num_frames
    call_frames = window if windowed else num_frames
    windows_per_call = chunk_size if windowed else 1
    activations = estimate_peak_bytes(
        stunet,
        batch * windows_per_call,
        call_frames,
        height,
        width,
        guidance=guidance,
        text_tokens=text_tokens,
        include_weights=False,
    )
    clip = batch * stunet.out_channels * num_frames * height * width * 4  # float32 [b, c, f, h, w]
    required = activations + CLIP_BUFFERS * clip
    what = f"{name} for {batch} clip(s) of {num_frames} frames at {height}x{width}" + (
        f" in windows of {window}" if windowed else ""
    )
    available = available_bytes(device)
    logger.debug("%s: needs about %s, %s available", what, format_bytes(required), available)
    check_memory(required, available, what)


# ---------------------------------------------------------------------------------------------
# Time: FLOPs of the request (counted on the meta device) over the speed measured on the device.
# ---------------------------------------------------------------------------------------------

# Share of the float32 matrix-multiply speed a STUNet's forward reaches (convolutions, norms,
# attention). Measured on a 2-core CPU, float32, one forward timed against device_flops_per_second
# in the same minute: 0.34 (tiny, 2 x 16 x 32 x 32), 0.51 (shipped SSR), 0.60 / 0.63 (shipped base at
# 32 and 64 px); the estimate is good to about 2x (CUDA not measured).
FORWARD_EFFICIENCY = 0.5


def network_calls(
    num_frames: int, steps: int, window: int | None, overlap: int | None, chunk_size: int
) -> int:
    """Network calls of a sampling run: ``steps`` x the calls per step (windows / ``chunk_size``)."""
    from lumiere.pipelines.multidiffusion import temporal_windows

    if window is None or window >= num_frames:
        return steps
    overlap = window // 2 if overlap is None else overlap
    windows = len(temporal_windows(num_frames, window, overlap))
    return steps * -(-windows // max(1, chunk_size))


def forward_flops(
    stunet: STUNet, batch: int, num_frames: int, height: int, width: int, text_tokens: int
) -> int:
    """FLOPs of one forward of ``stunet`` on ``[batch, c, num_frames, height, width]``, counted on a
    copy on the meta device (no weight is read, nothing is allocated; well under a second)."""
    from torch.utils.flop_counter import FlopCounterMode

    from lumiere.models.estimate import Workload, example_inputs

    with torch.device("meta"):
        meta = STUNet.from_config(stunet.config)
    workload = Workload(
        batch=batch, num_frames=num_frames, height=height, width=width, text_tokens=text_tokens
    )
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        meta(**example_inputs(meta, workload, torch.float32))
    return counter.get_total_flops()


def device_flops_per_second(device: torch.device | str, seconds: float = 0.05) -> float:
    """float32 matrix-multiply speed of ``device``, timed for about ``seconds``."""
    device = torch.device(device)
    size = 512
    a = torch.randn(size, size, device=device)
    count, start = 0, time.perf_counter()
    while True:
        a @ a
        count += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return count * 2 * size**3 / elapsed


def estimate_sampling_seconds(
    stunet: STUNet,
    batch: int,  # clips
    num_frames: int,
    height: int,
    width: int,
    guidance: bool,
    steps: int,
    device: torch.device | str,
    window: int | None = None,
    overlap: int | None = None,
    chunk_size: int = 1,
    text_tokens: int = 77,
    flops_per_second: float | None = None,  # default: measured on ``device``
) -> tuple[float, int]:
    """(estimated seconds, network calls) of sampling ``batch`` clips with ``stunet``: the calls
    (``network_calls``) times one call's FLOPs, over ``FORWARD_EFFICIENCY`` of the device's
    measured matrix-multiply speed. A rough figure (within about 2x): for telling minutes from
    hours before any work, not for benchmarks."""
    windowed = window is not None and window < num_frames
    call_frames = window if windowed else num_frames
    call_batch = batch * (2 if guidance else 1) * (chunk_size if windowed else 1)
    calls = network_calls(num_frames, steps, window, overlap, chunk_size)
    flops = forward_flops(stunet, call_batch, call_frames, height, width, text_tokens) * calls
    speed = flops_per_second if flops_per_second is not None else device_flops_per_second(device)
    return flops / (speed * FORWARD_EFFICIENCY), calls


def format_seconds(seconds: float) -> str:
    """``42 s``, ``3.5 min``, ``2.1 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
