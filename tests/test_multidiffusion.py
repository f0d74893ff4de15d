"""MultiDiffusion along time (Lumiere Sec. 3.2): windows, the least-squares average, and the pipeline.

The three properties the SSR relies on: windows cover every frame exactly; one window over the
whole clip is a plain pass bit for bit; a model that acts on each frame independently gives the
same clip windowed or not.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler
from hypothesis import given, settings
from hypothesis import strategies as st

from lumiere.models.presets import STUNET_PRESETS, build_unet2d
from lumiere.models.ssr import build_ssr_stunet
from lumiere.models.stunet import STUNet
from lumiere.pipelines import LumierePipeline
from lumiere.pipelines.multidiffusion import (
    multidiffusion_predict,
    temporal_windows,
    window_coverage,
)

PROMPT = "a red circle moving left on a black background"


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def perturb_temporal_layers(model: STUNet, seed: int = 1) -> STUNet:
    """Random weights in every inserted module, so frames interact (the zero init is per-frame)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.temporal_parameters():
            param.add_(0.2 * torch.randn(param.shape, generator=generator))
    return model


# ----- temporal_windows -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "num_frames, window, overlap, starts",
    [
        (16, 8, 2, [0, 6, 8]),  # stride 6; the last window is shifted back to end at frame 16
        (14, 8, 2, [0, 6]),  # tiles exactly
        (10, 8, 2, [0, 2]),
        (8, 8, 2, [0]),  # one window is the whole clip
        (5, 1, 0, [0, 1, 2, 3, 4]),  # frame by frame
        (7, 4, 0, [0, 3]),  # no overlap asked; the shifted last window overlaps anyway
        (128, 8, 2, list(range(0, 121, 6))),
    ],
)
def test_temporal_windows_examples(num_frames, window, overlap, starts):
    windows = temporal_windows(num_frames, window, overlap)
    assert windows == [slice(s, s + window) for s in starts]


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_temporal_windows_cover_every_frame(data):
    num_frames = data.draw(st.integers(1, 300), label="num_frames")
    window = data.draw(st.integers(1, num_frames), label="window")
    overlap = data.draw(st.integers(0, window - 1), label="overlap")
    windows = temporal_windows(num_frames, window, overlap)
    stride = window - overlap

    # every window has the length asked for and lies in the clip
    assert all(w.stop - w.start == window and 0 <= w.start and w.stop <= num_frames for w in windows)
    # first at frame 0, last ends at the last frame, strictly increasing starts
    assert windows[0].start == 0 and windows[-1].stop == num_frames
    starts = [w.start for w in windows]
    assert starts == sorted(set(starts))
    # neighbours share at least `overlap` frames (the stride is never longer than asked)
    assert all(b - a <= stride for a, b in zip(starts, starts[1:], strict=False))
    # every frame covered; frames covered more than needed only where windows overlap
    coverage = window_coverage(num_frames, windows)
    assert bool((coverage >= 1).all())
    # as few windows as the stride allows
    assert len(windows) == max(1, math.ceil((num_frames - window) / stride) + 1)


@pytest.mark.parametrize(
    "num_frames, window, overlap, match",
    [
        (16, 0, 0, r"window=0: must be an integer >= 1"),
        (16, -3, 0, r"window=-3"),
        (16, 8, -1, r"overlap=-1: must be an integer >= 0 and < window \(8\)"),
        (16, 8, 8, r"overlap=8: must be an integer >= 0 and < window \(8\)"),
        (16, 8, 9, r"overlap=9"),
        (4, 8, 2, r"window=8 is longer than the clip \(num_frames=4\); use a window in \[1, 4\]"),
        (0, 1, 0, r"num_frames=0: must be an integer >= 1"),
        (16, 2.5, 0, r"window=2.5"),
        (16, True, 0, r"window=True"),
        (16, 8, 1.0, r"overlap=1.0"),
    ],
)
def test_temporal_windows_refuse_what_cannot_tile(num_frames, window, overlap, match):
    with pytest.raises(ValueError, match=match):
        temporal_windows(num_frames, window, overlap)


# ----- multidiffusion_predict ------------------------------------------------------------------


def mixing_fn(chunk, windows):
    """A frame-mixing "model": running sum over frames, then a nonlinearity (not per-frame)."""
    return torch.tanh(chunk.cumsum(dim=2)) * 3 + chunk.mean(dim=2, keepdim=True)


def test_one_window_over_the_clip_is_a_plain_pass_bit_for_bit():
    sample = torch.randn(2, 3, 7, 4, 5)
    result = multidiffusion_predict(mixing_fn, sample, [slice(0, 7)], chunk_size=3)
    assert torch.equal(result, mixing_fn(sample, [slice(0, 7)]))


def test_average_is_the_least_squares_solution():
    """Reference: per frame, the mean of the predictions of the windows that cover it (Eq. 5);
    it zeroes the gradient of sum_i ||F_i(J) - Phi(J_i)||^2."""
    sample = torch.randn(2, 3, 11, 4, 4)
    windows = temporal_windows(11, 4, 2)
    result = multidiffusion_predict(mixing_fn, sample, windows, chunk_size=2)

    predictions = [(w, mixing_fn(sample[:, :, w], [w])) for w in windows]
    for frame in range(11):
        covering = [p[:, :, frame - w.start] for w, p in predictions if w.start <= frame < w.stop]
        torch.testing.assert_close(result[:, :, frame], torch.stack(covering).mean(0))
    J = result.clone().requires_grad_(True)
    objective = sum((J[:, :, w] - p).square().sum() for w, p in predictions)
    (gradient,) = torch.autograd.grad(objective, J)
    torch.testing.assert_close(gradient, torch.zeros_like(gradient), atol=1e-4, rtol=0)
    # and it is not a plain pass: the mixing model sees different context in each window
    assert not torch.allclose(result, mixing_fn(sample, [slice(0, 11)]), atol=1e-3)


def test_per_frame_model_windowed_equals_full_pass():
    sample = torch.randn(1, 3, 13, 4, 4)
    per_frame = lambda chunk, windows: torch.sin(chunk) * 2 - chunk  # noqa: E731
    result = multidiffusion_predict(per_frame, sample, temporal_windows(13, 5, 2), chunk_size=2)
    torch.testing.assert_close(result, per_frame(sample, None))


def test_chunks_batch_windows_and_do_not_change_the_result():
    sample = torch.randn(2, 3, 16, 4, 4)
    windows = temporal_windows(16, 4, 2)  # 7 windows
    calls = []

    def recording_fn(chunk, chunk_windows):
        calls.append((chunk.shape[0], list(chunk_windows)))
        for index, window in enumerate(chunk_windows):  # window-major layout along the batch
            assert torch.equal(chunk[index * 2 : (index + 1) * 2], sample[:, :, window])
        return mixing_fn(chunk, chunk_windows)

    results = {}
    for chunk_size in (1, 3, 7, 100):
        calls.clear()
        results[chunk_size] = multidiffusion_predict(recording_fn, sample, windows, chunk_size)
        sizes = [min(chunk_size, 7 - i) for i in range(0, 7, chunk_size)]
        assert [c[0] for c in calls] == [2 * s for s in sizes]
        assert [w for c in calls for w in c[1]] == windows
    for chunk_size in (3, 7, 100):
        assert torch.equal(results[chunk_size], results[1])


def test_output_channels_may_differ_from_input():
    sample = torch.randn(1, 6, 10, 4, 4)  # e.g. noisy clip + conditioning
    result = multidiffusion_predict(lambda c, w: c[:, :3] * 2, sample, temporal_windows(10, 4, 2))
    assert result.shape == (1, 3, 10, 4, 4) and result.dtype == torch.float32
    torch.testing.assert_close(result, sample[:, :3] * 2)


@pytest.mark.parametrize(
    "windows, chunk_size, match",
    [
        ([], 1, "windows is empty"),
        ([slice(0, 4)], 1, "uncovered"),
        ([slice(0, 4), slice(4, 10)], 1, "same length"),
        ([slice(0, 10, 2)], 1, "consecutive frames"),
        ([slice(0, 10)], 0, "chunk_size=0"),
    ],
)
def test_multidiffusion_predict_refuses_bad_windows(windows, chunk_size, match):
    with pytest.raises(ValueError, match=match):
        multidiffusion_predict(mixing_fn, torch.randn(1, 3, 10, 2, 2), windows, chunk_size)


def test_model_fn_must_keep_batch_and_frames():
    with pytest.raises(ValueError, match="keep the batch and frame axes"):
        multidiffusion_predict(
            lambda c, w: c[:, :, :1], torch.randn(1, 3, 10, 2, 2), temporal_windows(10, 4, 2)
        )


# ----- in the pipeline ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def frame_mixing_pipe() -> LumierePipeline:
    """Base and SSR with random temporal layers: windows see different context than a full pass."""
    torch.manual_seed(0)
    base = perturb_temporal_layers(STUNet.from_unet2d(build_unet2d("tiny"), **STUNET_PRESETS["tiny"]))
    ssr = perturb_temporal_layers(build_ssr_stunet(build_unet2d("tiny"), **STUNET_PRESETS["tiny"]))
    with torch.no_grad():  # let the conditioning channels matter
        ssr.conv_in.weight[:, 3:].normal_(0, 0.1, generator=seeded(2))
    pipe = LumierePipeline.from_stunet(base.eval(), ssr=ssr.eval())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def per_frame_pipe() -> LumierePipeline:
    """An SSR STUNet whose inserted temporal layers are still zero-initialised: exactly per-frame."""
    torch.manual_seed(0)
    ssr = build_ssr_stunet(build_unet2d("tiny"), **STUNET_PRESETS["tiny"])
    with torch.no_grad():
        ssr.conv_in.weight[:, 3:].normal_(0, 0.1, generator=seeded(2))
    base = STUNet.from_unet2d(build_unet2d("tiny"), **STUNET_PRESETS["tiny"])
    pipe = LumierePipeline.from_stunet(base.eval(), ssr=ssr.eval())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def low_res_clip(num_frames: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((1, num_frames, 16, 16, 3), dtype=np.float32)


def test_ssr_one_window_is_a_plain_pass_bit_for_bit(frame_mixing_pipe):
    clip = low_res_clip(6)
    call = dict(num_inference_steps=2, output_type="pt")
    plain = frame_mixing_pipe.upsample(clip, PROMPT, window=None, generator=seeded(0), **call).frames
    one_window = frame_mixing_pipe.upsample(clip, PROMPT, window=6, generator=seeded(0), **call).frames
    longer = frame_mixing_pipe.upsample(clip, PROMPT, window=32, generator=seeded(0), **call).frames
    assert torch.equal(one_window, plain)
    assert torch.equal(longer, plain)
    # windows that do split the clip give another result with these frame-mixing weights
    split = frame_mixing_pipe.upsample(clip, PROMPT, window=4, overlap=2, generator=seeded(0), **call).frames
    assert (split - plain).abs().max() > 1e-3


def test_base_one_window_is_a_plain_pass_bit_for_bit(frame_mixing_pipe):
    call = dict(num_frames=4, num_inference_steps=2, output_type="pt", upsample=False)
    plain = frame_mixing_pipe(PROMPT, generator=seeded(3), **call).frames
    one_window = frame_mixing_pipe(PROMPT, window=4, generator=seeded(3), **call).frames
    assert torch.equal(one_window, plain)


def test_per_frame_ssr_windowed_equals_full_pass(per_frame_pipe):
    clip = low_res_clip(11)
    call = dict(num_inference_steps=3, output_type="pt", guidance_scale=3.0)
    full = per_frame_pipe.upsample(clip, PROMPT, window=None, generator=seeded(0), **call).frames
    for window, overlap, chunk_size in ((4, 2, 1), (5, 1, 3), (3, 0, 2)):
        windowed = per_frame_pipe.upsample(
            clip, PROMPT, window=window, overlap=overlap, chunk_size=chunk_size, generator=seeded(0), **call
        ).frames
        torch.testing.assert_close(windowed, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("scheduler_cls", [DDIMScheduler, EulerDiscreteScheduler])
def test_windows_work_with_other_schedulers(per_frame_pipe, scheduler_cls):
    pipe = LumierePipeline(
        stunet=per_frame_pipe.stunet,
        text_encoder=per_frame_pipe.text_encoder,
        scheduler=scheduler_cls.from_config(per_frame_pipe.scheduler.config, timestep_spacing="trailing"),
        ssr=per_frame_pipe.ssr,
    )
    pipe.set_progress_bar_config(disable=True)
    clip = low_res_clip(7)
    call = dict(num_inference_steps=2, output_type="pt")
    full = pipe.upsample(clip, PROMPT, window=None, generator=seeded(0), **call).frames
    windowed = pipe.upsample(clip, PROMPT, window=3, overlap=1, generator=seeded(0), **call).frames
    assert windowed.shape == (1, 7, 32, 32, 3) and bool(torch.isfinite(windowed).all())
    # Euler starts at sigma ~ 150: the last-bit differences of convolutions over batches of other
    # sizes (3-frame windows vs 7 frames) are amplified in x0 = x - sigma * eps.
    atol = 2e-3 if scheduler_cls is EulerDiscreteScheduler else 1e-5
    torch.testing.assert_close(windowed, full, atol=atol, rtol=0)


def test_base_windows_make_clips_longer_than_a_window(frame_mixing_pipe):
    frames = frame_mixing_pipe(
        PROMPT, num_frames=7, window=4, overlap=2, num_inference_steps=2, upsample=False, generator=seeded(0)
    ).frames
    assert frames.shape == (1, 7, 16, 16, 3)  # 7 is not a multiple of the temporal factor 2: fine windowed


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_frames=8, window=3), r"window=3: must be a positive multiple of 2 for this model"),
        (dict(num_frames=8, window=4, overlap=4), r"overlap=4: must be an integer >= 0 and < window \(4\)"),
        (dict(num_frames=8, window=0), r"window=0"),
        (dict(num_frames=8, overlap=2), r"overlap: applies to base windows only: give window too"),
        (
            dict(num_frames=7, window=8),
            r"num_frames=7",
        ),  # one window over the clip: the clip must suit the model
    ],
)
def test_base_bad_windows_raise(frame_mixing_pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        frame_mixing_pipe(PROMPT, num_inference_steps=1, upsample=False, **kwargs)
