"""The shipped model gives the clips it gave before the redesign (issue 28), task by task.

``tests/reference/shipped_clips.npz`` was written by ``tests/reference/make_reference.py`` with the
code of main before the redesign (commit c9b3f65); the same calls must give the same frames now.
The tolerance leaves room for another CPU's float rounding (float16 storage alone is ~5e-4), far
below what a changed network, sampler, conditioning or SSR path moves (whole-frame changes).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from lumiere.pipelines import DEFAULT_MODEL_DIR, LumierePipeline

REFERENCE = Path(__file__).parent / "reference"

pytestmark = pytest.mark.skipif(
    not (DEFAULT_MODEL_DIR / "model_index.json").is_file(), reason="no default model shipped"
)


def _reference_module():
    spec = importlib.util.spec_from_file_location("make_reference", REFERENCE / "make_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def setup():
    module = _reference_module()
    pipe = LumierePipeline.from_pretrained()
    pipe.set_progress_bar_config(disable=True)
    calls = module.reference_calls(module.reference_inputs())
    return module, pipe, calls, np.load(REFERENCE / "shipped_clips.npz")


@pytest.mark.parametrize(
    "task", ["t2v_base", "t2v_ssr", "i2v", "cinemagraph", "inpaint", "sdedit", "window"]
)
def test_shipped_model_reproduces_reference_clip(setup, task):
    module, pipe, calls, reference = setup
    frames = module.generate(pipe, calls[task])
    expected = reference[task].astype(np.float32)
    assert frames.shape == expected.shape
    difference = np.abs(frames - expected)
    assert difference.mean() < 2e-3, f"{task}: mean abs difference {difference.mean():.2e}"
    assert difference.max() < 3e-2, f"{task}: max abs difference {difference.max():.2e}"
