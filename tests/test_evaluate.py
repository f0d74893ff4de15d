"""lumiere eval: prompts, reference clips, Frechet distance and the end-to-end report."""

import numpy as np
import pytest
import torch

from lumiere.eval.evaluate import draw_prompts, evaluate, frechet_distance, probe_features, real_clips_for
from lumiere.eval.probe import probe_clip, score
from lumiere.models.presets import STUNET_PRESETS, build_unet2d
from lumiere.models.stunet import STUNet
from lumiere.pipelines import LumierePipeline


def test_prompts_are_a_function_of_the_seed():
    assert draw_prompts(5, 3) == draw_prompts(5, 3)
    assert draw_prompts(5, 3) != draw_prompts(5, 4)


def test_reference_clips_show_their_captions():
    prompts = draw_prompts(12, 0)
    clips = real_clips_for(prompts, num_frames=16, resolution=32, seed=1)
    assert all(score(clip, prompt)["all"] for clip, prompt in zip(clips, prompts, strict=True))


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 4))
    b = rng.normal(size=(400, 4))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, b) < 0.2
    assert frechet_distance(a, b + 3.0) == pytest.approx(36.0, rel=0.1)  # |mu difference|^2 = 4 * 9
    with pytest.raises(ValueError):
        frechet_distance(a, b[:, :3])


def test_probe_features_separate_real_from_noise():
    prompts = draw_prompts(16, 2)
    real = np.stack([probe_features(probe_clip(c)) for c in real_clips_for(prompts, 16, 32, 0)])
    other = np.stack([probe_features(probe_clip(c)) for c in real_clips_for(prompts, 16, 32, 5)])
    noise = np.stack(
        [probe_features(probe_clip(np.random.default_rng(i).random((16, 32, 32, 3)))) for i in range(16)]
    )
    assert frechet_distance(real, other) < frechet_distance(real, noise)


def test_evaluate_reports_every_figure():
    torch.manual_seed(0)
    stunet = STUNet.from_unet2d(build_unet2d("tiny"), **STUNET_PRESETS["tiny"])
    pipe = LumierePipeline.from_stunet(stunet)
    pipe.set_progress_bar_config(disable=True)
    report = evaluate(pipe, count=3, seed=0, num_frames=2, num_inference_steps=2, batch_size=2)
    assert report["count"] == 3 and report["resolution"] == 16
    assert set(report["accuracy"]) == {"object", "background", "shape", "colour", "motion", "all"}
    assert all(0.0 <= v <= 1.0 for v in report["accuracy"].values())
    assert np.isfinite(report["frechet_probe_distance"])
    with pytest.raises(ValueError, match="count"):
        evaluate(pipe, count=1)
