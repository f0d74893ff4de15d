"""Memory guard: the estimate follows the request's size, and hopeless requests are refused up front."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from lumiere.models.presets import STUNET_PRESETS, build_unet2d
from lumiere.models.stunet import STUNet
from lumiere.pipelines.memory import (
    SKIP_ENV,
    InsufficientMemoryError,
    available_bytes,
    check_memory,
    check_sampling_memory,
    estimate_peak_bytes,
    weight_bytes,
)


def stunet(preset: str, device: str = "cpu") -> STUNet:
    with torch.device(device):
        return STUNet.from_unet2d(build_unet2d(preset), **STUNET_PRESETS[preset])


@pytest.fixture(scope="module")
def tiny() -> STUNet:
    return stunet("tiny")


@pytest.fixture(scope="module")
def default_meta() -> STUNet:
    return stunet("default", device="meta")  # shapes only: the estimate needs no weights in memory


@pytest.mark.parametrize("preset", ["tiny", "default"])
def test_estimate_grows_with_every_dimension(preset):
    model = stunet(preset, device="meta")
    factor = model.temporal_factor * 2
    base = dict(batch=1, num_frames=factor, height=32, width=32, guidance=False)
    reference = estimate_peak_bytes(model, **base)
    for key, bigger in [
        ("batch", 2),
        ("num_frames", 4 * factor),
        ("height", 64),
        ("width", 64),
        ("guidance", True),
    ]:
        assert estimate_peak_bytes(model, **{**base, key: bigger}) > reference, key
    frames = [estimate_peak_bytes(model, 1, factor * k, 32, 32) for k in (1, 2, 4, 8, 16)]
    sizes = [estimate_peak_bytes(model, 1, factor, side, side) for side in (16, 32, 64, 128, 256)]
    assert frames == sorted(frames) and len(set(frames)) == len(frames)
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)


def test_activations_scale_with_the_clip(default_meta):
    """Past small sizes, activations are proportional to frames and pixels (no fixed cost)."""

    def activations(frames, side):
        return estimate_peak_bytes(default_meta, 1, frames, side, side, include_weights=False)

    assert activations(64, 64) == pytest.approx(2 * activations(32, 64), rel=0.05)
    assert activations(32, 128) == pytest.approx(4 * activations(32, 64), rel=0.05)
    guided = estimate_peak_bytes(default_meta, 1, 32, 64, 64, guidance=True, include_weights=False)
    assert guided == 2 * activations(32, 64)  # both guidance branches in one batch


def test_weights_and_dtype(tiny):
    activations = estimate_peak_bytes(tiny, 1, 8, 32, 32, include_weights=False)
    assert estimate_peak_bytes(tiny, 1, 8, 32, 32) == activations + weight_bytes(tiny)
    assert weight_bytes(tiny) == sum(p.numel() * 4 for p in tiny.parameters())
    half = estimate_peak_bytes(tiny, 1, 8, 32, 32, dtype=torch.bfloat16, include_weights=False)
    assert half == activations // 2


def test_estimate_refuses_nonsense_sizes(tiny):
    with pytest.raises(ValueError, match="num_frames=0"):
        estimate_peak_bytes(tiny, 1, 0, 32, 32)


def test_available_bytes():
    cpu = available_bytes("cpu")
    assert cpu is None or 0 < cpu < 1 << 50
    if Path("/proc/meminfo").is_file():
        assert cpu is not None
    assert available_bytes("meta") is None  # unknown devices are not checked


def test_check_memory_message():
    check_memory(10, 10, "a request")  # fits
    check_memory(10**15, None, "a request")  # unknown: passes
    with pytest.raises(InsufficientMemoryError) as info:
        check_memory(3 * 2**30, 2**30, "the base model for 1 clip")
    assert isinstance(info.value, MemoryError)
    message = str(info.value)
    assert "the base model for 1 clip needs about 3.0 GiB but 1.0 GiB is available" in message
    for hint in ("fewer frames", "smaller height/width", "window=", "ssr_window", SKIP_ENV):
        assert hint in message


def _peak_rss_kib() -> int | None:
    status = Path("/proc/self/status")
    if not status.is_file():
        return None
    match = re.search(r"VmHWM:\s+(\d+)", status.read_text())
    return int(match.group(1)) if match else None


def test_far_too_large_request_is_refused_before_any_allocation(tiny, monkeypatch):
    monkeypatch.delenv(SKIP_ENV, raising=False)
    before = _peak_rss_kib()
    with pytest.raises(
        InsufficientMemoryError, match=r"100000 frames at 1024x1024 needs about [\d.]+ (TiB|PiB)"
    ):
        check_sampling_memory(tiny, 1, 100_000, 1024, 1024, guidance=True, device="cpu", text_tokens=32)
    after = _peak_rss_kib()
    if before is not None:
        assert after - before < 64 * 1024, "the refusal allocated memory"  # KiB: nothing clip-sized


def test_windows_bound_the_activations_not_the_clip(tiny, monkeypatch):
    """Windows cut a call's activations to a window's; the whole clip's buffers remain."""
    monkeypatch.delenv(SKIP_ENV, raising=False)
    whole = estimate_peak_bytes(tiny, 1, 4096, 64, 64, include_weights=False)
    window = estimate_peak_bytes(tiny, 1, 16, 64, 64, include_weights=False)
    clip_buffers = 5 * 3 * 4096 * 64 * 64 * 4
    budget = window + clip_buffers + 2**20
    monkeypatch.setattr("lumiere.pipelines.memory.available_bytes", lambda device: budget)
    check_sampling_memory(tiny, 1, 4096, 64, 64, False, "cpu", window=16, text_tokens=32)
    assert whole > budget
    with pytest.raises(InsufficientMemoryError, match="4096 frames at 64x64"):
        check_sampling_memory(tiny, 1, 4096, 64, 64, False, "cpu", text_tokens=32)
    with pytest.raises(InsufficientMemoryError, match="in windows of 16"):
        check_sampling_memory(tiny, 1, 4096, 64, 64, False, "cpu", window=16, chunk_size=8, text_tokens=32)


def test_ordinary_requests_pass_and_the_check_can_be_skipped(tiny, monkeypatch):
    monkeypatch.delenv(SKIP_ENV, raising=False)
    check_sampling_memory(tiny, 2, 16, 16, 16, guidance=True, device="cpu", text_tokens=32)
    monkeypatch.setenv(SKIP_ENV, "1")
    check_sampling_memory(tiny, 1, 100_000, 1024, 1024, guidance=True, device="cpu")


def test_pipeline_refuses_a_request_too_large_before_any_work():
    from lumiere.models.presets import STUNET_PRESETS, build_unet2d
    from lumiere.models.stunet import STUNet
    from lumiere.pipelines import LumierePipeline
    from lumiere.pipelines.memory import InsufficientMemoryError

    pipe = LumierePipeline.from_stunet(STUNet.from_unet2d(build_unet2d("tiny"), **STUNET_PRESETS["tiny"]))
    with pytest.raises(InsufficientMemoryError, match="window"):
        pipe("a red circle", num_frames=100_000, height=1024, width=1024, num_inference_steps=1)
