"""The model shipped in the package (``src/lumiere/weights/default``): loads with no path, and keeps
the conditional guarantees of issue 6 on real moving-shapes inputs.

Given pixels are kept by the pipeline (``keep_known``, the default, re-imposes them at every step),
so PSNR >= 30 dB holds there by construction and is checked end to end; the model's own
reproduction (``keep_known=False``) is checked against the unconditioned baseline. Probe-level
quality over many prompts is measured by ``lumiere eval --task``, not here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lumiere.eval.conditional import psnr
from lumiere.eval.evaluate import real_clips_for
from lumiere.eval.long_clips import score_long
from lumiere.models.conditional import is_conditional_stunet, motion_region
from lumiere.pipelines import DEFAULT_MODEL_DIR, LumierePipeline
from lumiere.testing.real_clips import real_clips as real_photo_clips

PROMPT = "a red circle moving right on a black background"
STEPS = 12
# Measured on the shipped SSR at STEPS (session 4, docs/default_model.md): the SSR clip averaged
# back down is 39.0 dB from the base clip; on the rendered clip it is 1.3 dB above bilinear (1.8 dB at
# 25 steps). The thresholds leave a margin for other CPUs' floating point.
SSR_CONSISTENCY_DB = 33.0
SSR_GAIN_DB = 0.5
# Measured on the SSR shipped since 2026-12-05 (recipe 17 at 3,000 steps, 2 draws, docs/data.md): on
# the 6 held-out photo clips it is 0.68 dB above bicubic on average and 0.39 dB above on its worst
# clip (bench/ssr_real.py).
SSR_REAL_GAIN_DB = 0.4
SSR_REAL_WORST_DB = 0.0

pytestmark = pytest.mark.skipif(
    not (DEFAULT_MODEL_DIR / "model_index.json").is_file(), reason="no default model shipped"
)


@pytest.fixture(scope="module")
def pipe() -> LumierePipeline:
    pipe = LumierePipeline.from_pretrained()
    pipe.set_progress_bar_config(disable=True)
    if not is_conditional_stunet(pipe.stunet):
        pytest.skip("the shipped model is text-to-video only (no conditional model shipped yet)")
    return pipe


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    """A rendered clip of PROMPT ``[16, 32, 32, 3]`` in [0, 1] (MovingShapes)."""
    return real_clips_for([PROMPT], 16, 32, seed=7)[0]


def run(pipe, **kwargs) -> np.ndarray:
    kwargs.setdefault("num_frames", None if "video" in kwargs else 16)
    kwargs.setdefault("upsample", False)  # the base model; the SSR stage has its own tests below
    return pipe(
        PROMPT, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0), **kwargs
    ).frames[0]


def test_shipped_model_loads_and_generates(pipe):
    assert is_conditional_stunet(pipe.stunet)
    frames = run(pipe)
    assert frames.shape == (16, 32, 32, 3) and np.isfinite(frames).all()


@pytest.fixture(scope="module")
def text_only(pipe) -> np.ndarray:
    """The same seed with no conditioning: the baseline the conditioned outputs must beat."""
    return run(pipe)


def test_image_to_video_reproduces_the_first_frame(pipe, clip, text_only):
    frames = run(pipe, image=clip[0])
    assert psnr(frames[0], clip[0]) >= 30  # given pixels are kept (keep_known, the default)
    assert np.abs(frames[-1] - frames[0]).mean() > 0.01  # and it moves
    # The model's own reproduction (no re-imposing) follows the image far better than chance.
    own = run(pipe, image=clip[0], keep_known=False)
    assert psnr(own[0], clip[0]) > psnr(text_only[0], clip[0]) + 3


def test_inpainting_keeps_the_known_region(pipe, clip, text_only):
    mask = np.zeros((32, 32), np.float32)
    mask[8:24, 16:32] = 1  # the right half, where the circle goes
    kept = mask == 0
    frames = run(pipe, video=clip, mask=mask)
    assert psnr(frames[:, kept], clip[:, kept]) >= 30
    own = run(pipe, video=clip, mask=mask, keep_known=False)
    assert psnr(own[:, kept], clip[:, kept]) > psnr(text_only[:, kept], clip[:, kept]) + 3


def test_cinemagraph_keeps_the_image_outside_the_mask(pipe, clip):
    region = motion_region(torch.from_numpy(clip).permute(3, 0, 1, 2) * 2 - 1).numpy()
    frames = run(pipe, image=clip[0], mask=region)
    still = region == 0
    for frame in frames:
        assert psnr(frame[still], clip[0][still]) >= 30
    change = np.abs(np.diff(frames, axis=0)).mean(axis=(0, 3))  # [h, w]
    assert change[~still].mean() > 2 * change[still].mean()  # inside the mask it moves


def test_sdedit_distance_grows_with_strength(pipe, clip):
    distances = [np.abs(run(pipe, video=clip, strength=s) - clip).mean() for s in (0.2, 0.6, 1.0)]
    assert distances[0] < distances[1] < distances[2]


# ----- the shipped SSR model (issue 5) --------------------------------------------------------------


@pytest.fixture(scope="module")
def ssr_pipe(pipe) -> LumierePipeline:
    if pipe.ssr is None:
        pytest.skip("no SSR model shipped")
    return pipe


def test_shipped_pipeline_runs_base_then_ssr(ssr_pipe):
    base = run(ssr_pipe)
    high = run(ssr_pipe, upsample=True)  # the same seed: the same base clip, then SSR
    assert high.shape == (16, 32 * ssr_pipe.ssr_scale, 32 * ssr_pipe.ssr_scale, 3)
    # SSR adds detail but keeps the content: averaged back down it matches the base clip
    down = torch.nn.functional.avg_pool2d(torch.from_numpy(high).permute(0, 3, 1, 2), ssr_pipe.ssr_scale)
    assert psnr(down.permute(0, 2, 3, 1).numpy(), base) >= SSR_CONSISTENCY_DB


def test_shipped_ssr_beats_bilinear_on_a_rendered_clip(ssr_pipe):
    scale = ssr_pipe.ssr_scale
    truth = real_clips_for([PROMPT], 16, 32 * scale, seed=11)[0]  # [16, 64, 64, 3], rendered shapes
    low = torch.nn.functional.avg_pool2d(
        torch.from_numpy(truth).permute(0, 3, 1, 2), scale
    )  # [16, 3, 32, 32]
    bilinear = torch.nn.functional.interpolate(low, scale_factor=scale, mode="bilinear", align_corners=False)
    bilinear = bilinear.permute(0, 2, 3, 1).clamp(0, 1).numpy()
    upsampled = ssr_pipe.upsample(
        low.permute(0, 2, 3, 1).numpy()[None],
        PROMPT,
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(0),
    ).frames[0]
    assert upsampled.shape == truth.shape
    assert psnr(upsampled, truth) > psnr(bilinear, truth) + SSR_GAIN_DB


def test_shipped_ssr_beats_bicubic_on_held_out_real_photographs(ssr_pipe):
    """Issue 31: pans and zooms over the held-out photographs (no model trained on them),
    area-downsampled and upsampled back by the SSR with its own schedule, against bicubic."""
    scale, gains = ssr_pipe.ssr_scale, []
    for frames, caption in real_photo_clips(6, 16, (32 * scale, 32 * scale), seed=7):
        truth = frames.astype(np.float32) / 255  # [16, 64, 64, 3]
        low = torch.nn.functional.avg_pool2d(torch.from_numpy(truth).permute(0, 3, 1, 2), scale)
        bicubic = torch.nn.functional.interpolate(low, scale_factor=scale, mode="bicubic", align_corners=False)
        bicubic = bicubic.clamp(0, 1).permute(0, 2, 3, 1).numpy()
        upsampled = ssr_pipe.upsample(
            low.permute(0, 2, 3, 1).numpy()[None], caption, generator=torch.Generator().manual_seed(0)
        ).frames[0]  # the pipeline's own SSR schedule (model_index.json: one call from noise, 2 draws averaged)
        gains.append(psnr(upsampled, truth) - psnr(bicubic, truth))
    assert np.mean(gains) > SSR_REAL_GAIN_DB, gains
    assert min(gains) > SSR_REAL_WORST_DB, gains


def test_shipped_long_model_makes_80_frames_in_one_pass(pipe):
    """Issue 33 (docs/long_clips.md): 80-frame clips go to the shipped long model, which keeps the
    object and its colour in every second; shorter clips stay with the 16-frame model."""
    if pipe.long_stunet is None:
        pytest.skip("no long-clip model shipped")
    assert pipe.base_model(80) is pipe.long_stunet and pipe.long_stunet.coarse_level is not None
    trained = [p.abs().max() for p in pipe.long_stunet.coarse_level.proj_out.parameters()]
    assert max(trained) > 0  # fine-tuned: the level's zero-initialised output projection has moved
    assert pipe.base_model(16) is pipe.stunet and pipe.base_model(32) is pipe.stunet  # long_clip_frames 80
    assert pipe.base_model(80, window=16) is pipe.stunet  # windows are the 16-frame model's
    frames = run(pipe, num_frames=80)
    assert frames.shape == (80, 32, 32, 3) and np.isfinite(frames).all()
    scores = score_long(frames, PROMPT)
    assert scores["present"] and scores["colour"], scores
