"""Property-based tests (hypothesis) over frame counts and data-pipeline shapes (issue 8)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lumiere.data.shapes import MovingShapes
from lumiere.models.presets import STUNET_PRESETS, build_unet2d
from lumiere.models.stunet import STUNet
from lumiere.pipelines.inputs import load_mask, load_video
from lumiere.stages.conditional import training_condition

_STUNET = STUNet.from_unet2d(build_unet2d("tiny"), **STUNET_PRESETS["tiny"]).eval()


@settings(max_examples=25, deadline=None)
@given(num_frames=st.integers(min_value=-3, max_value=40))
def test_frame_counts_are_accepted_exactly_when_the_temporal_factor_divides_them(num_frames):
    factor = _STUNET.temporal_factor
    if num_frames >= 1 and num_frames % factor == 0:
        _STUNET.check_input(torch.zeros(1, 3, num_frames, 16, 16))
    else:
        shape = (1, 3, max(num_frames, 0), 16, 16)
        with pytest.raises(ValueError, match="frame"):
            _STUNET.check_input(torch.zeros(shape))


@settings(max_examples=15, deadline=None)
@given(
    num_frames=st.integers(min_value=1, max_value=12),
    height=st.integers(min_value=8, max_value=40),
    width=st.integers(min_value=8, max_value=40),
    index=st.integers(min_value=0, max_value=1000),
)
def test_moving_shapes_items_have_the_requested_shape_and_range(num_frames, height, width, index):
    data = MovingShapes(length=1001, num_frames=num_frames, resolution=(height, width), seed=3)
    video = data[index]["video"]
    assert video.shape == (3, num_frames, height, width)
    assert video.min() >= -1 and video.max() <= 1
    torch.testing.assert_close(data[index]["video"], video)  # item i is a pure function of (seed, i)


@settings(max_examples=15, deadline=None)
@given(
    batch=st.integers(min_value=1, max_value=3),
    num_frames=st.integers(min_value=1, max_value=6),
    size=st.integers(min_value=4, max_value=20),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_training_conditions_fit_any_clip(batch, num_frames, size, seed):
    x0 = torch.rand(batch, 3, num_frames, size, size) * 2 - 1
    condition, tasks = training_condition(x0, torch.Generator().manual_seed(seed))
    assert condition.video.shape == (batch, 4, num_frames, size, size) and len(tasks) == batch
    assert set(condition.known.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(condition.clip, condition.clip * condition.known)  # unknown pixels are zero


@settings(max_examples=15, deadline=None)
@given(
    num_frames=st.integers(min_value=1, max_value=5),
    height=st.integers(min_value=2, max_value=24),
    width=st.integers(min_value=2, max_value=24),
    per_frame=st.booleans(),
)
def test_masks_and_videos_load_at_any_fitting_shape(num_frames, height, width, per_frame):
    rng = np.random.default_rng(num_frames * 1000 + height * 31 + width)
    mask = rng.random((num_frames, height, width) if per_frame else (height, width)).astype(np.float32)
    loaded = load_mask(mask, num_frames, height, width)
    assert loaded.shape == (num_frames, height, width)
    np.testing.assert_array_equal(
        loaded.numpy(), np.broadcast_to(mask > 0.5, loaded.shape).astype(np.float32)
    )
    video = rng.integers(0, 256, (num_frames, height, width, 3), dtype=np.uint8)
    tensor = load_video(video, height, width)
    assert tensor.shape == (3, num_frames, height, width) and tensor.min() >= -1 and tensor.max() <= 1
