"""LumierePipeline on the tiny STUNet (16x16, frames a multiple of 2), 2-3 steps, CPU."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

from lumiere.models.presets import STUNET_PRESETS, build_unet2d
from lumiere.models.stunet import STUNet
from lumiere.pipelines import (
    DEFAULT_MODEL_DIR,
    LumierePipeline,
    LumierePipelineOutput,
    make_sampling_scheduler,
)

PROMPT = "a red circle moving left on a black background"
OTHER = "a blue square growing on a white background"
FAST = dict(num_frames=2, num_inference_steps=2)  # the cheapest call the tiny model takes


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_stunet(**overrides) -> STUNet:
    torch.manual_seed(0)
    return STUNet.from_unet2d(build_unet2d("tiny", **overrides), **STUNET_PRESETS["tiny"]).eval()


def with_scheduler(pipe: LumierePipeline, scheduler) -> LumierePipeline:
    """Same networks, another sampler (the shared fixture stays untouched)."""
    other = LumierePipeline(stunet=pipe.stunet, text_encoder=pipe.text_encoder, scheduler=scheduler)
    other.set_progress_bar_config(disable=True)
    return other


@pytest.fixture(scope="module")
def pipe() -> LumierePipeline:
    pipe = LumierePipeline.from_stunet(tiny_stunet())
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ----- outputs --------------------------------------------------------------------------------


def test_output_np_pt_pil(pipe):
    frames_np = pipe(PROMPT, generator=seeded(0), **FAST).frames
    assert isinstance(frames_np, np.ndarray)
    assert frames_np.shape == (1, 2, 16, 16, 3)  # [b, f, h, w, 3], size defaults to the model's
    assert frames_np.dtype == np.float32
    assert frames_np.min() >= 0.0 and frames_np.max() <= 1.0

    frames_pt = pipe(PROMPT, generator=seeded(0), output_type="pt", **FAST).frames
    assert isinstance(frames_pt, torch.Tensor)
    assert frames_pt.dtype == torch.float32 and frames_pt.shape == (1, 2, 16, 16, 3)
    torch.testing.assert_close(frames_pt, torch.from_numpy(frames_np))

    frames_pil = pipe(PROMPT, generator=seeded(0), output_type="pil", **FAST).frames
    assert len(frames_pil) == 1 and len(frames_pil[0]) == 2
    image = frames_pil[0][1]
    assert isinstance(image, PIL.Image.Image) and image.size == (16, 16) and image.mode == "RGB"
    np.testing.assert_allclose(np.asarray(image) / 255, frames_np[0, 1], atol=1 / 255 + 1e-6)


def test_return_tuple_and_size(pipe):
    out = pipe(PROMPT, height=8, width=12, generator=seeded(0), return_dict=False, **FAST)
    assert isinstance(out, tuple) and len(out) == 1
    assert out[0].shape == (1, 2, 8, 12, 3)
    result = pipe([PROMPT, OTHER], num_videos_per_prompt=2, num_frames=4, num_inference_steps=2)
    assert isinstance(result, LumierePipelineOutput)
    assert result.frames.shape == (4, 4, 16, 16, 3)


# ----- samplers -------------------------------------------------------------------------------


def test_default_sampler_is_dpm_solver_pp_on_training_schedule(pipe):
    scheduler = pipe.scheduler
    assert isinstance(scheduler, DPMSolverMultistepScheduler)
    assert scheduler.config.algorithm_type == "dpmsolver++"
    assert scheduler.config.prediction_type == "v_prediction"
    assert scheduler.config.beta_schedule == "squaredcos_cap_v2"
    scheduler.set_timesteps(3)
    assert int(scheduler.timesteps[0]) == 999  # sampling starts from pure noise


@pytest.mark.parametrize(
    "scheduler_cls", [DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler]
)
def test_runs_with_diffusers_schedulers(pipe, scheduler_cls):
    swapped = with_scheduler(pipe, scheduler_cls.from_config(pipe.scheduler.config))
    seen = []
    frames = swapped(
        PROMPT,
        num_frames=2,
        num_inference_steps=3,
        generator=seeded(0),
        output_type="pt",
        callback=lambda step, timestep, sample: seen.append((step, int(timestep), tuple(sample.shape))),
    ).frames
    assert frames.shape == (1, 2, 16, 16, 3) and torch.isfinite(frames).all()
    timesteps = [int(t) for t in swapped.scheduler.timesteps]
    assert seen == [(i, t, (1, 3, 2, 16, 16)) for i, t in enumerate(timesteps)]
    assert len(seen) == 3


@pytest.mark.parametrize("name, cls", [("dpm++", DPMSolverMultistepScheduler), ("ddim", DDIMScheduler),
                                       ("euler", EulerDiscreteScheduler)])  # fmt: skip
def test_make_sampling_scheduler(name, cls):
    scheduler = make_sampling_scheduler(name)
    assert type(scheduler) is cls
    assert scheduler.config.prediction_type == "v_prediction"
    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampling_scheduler("heun")


def test_named_samplers_solve_the_same_ode(pipe):
    """DDIM (eta 0), Euler and DPM-Solver++ integrate the same probability-flow ODE: from the same
    noise they must land close together. DDIM's default x0 clamp (clip_sample) would break this."""
    clips = {}
    for name in ("dpm++", "ddim", "euler"):
        swapped = with_scheduler(pipe, make_sampling_scheduler(name, pipe.scheduler.config))
        clips[name] = swapped(PROMPT, num_frames=2, num_inference_steps=30, generator=seeded(0)).frames
    assert np.abs(clips["ddim"] - clips["dpm++"]).mean() < 0.01
    assert np.abs(clips["euler"] - clips["dpm++"]).mean() < 0.01
    assert make_sampling_scheduler("ddim").config.clip_sample is False


# ----- seeds and batches ----------------------------------------------------------------------


def test_seed_reproduces_a_clip(pipe):
    first = pipe(PROMPT, generator=seeded(3), output_type="pt", **FAST).frames
    again = pipe(PROMPT, generator=seeded(3), output_type="pt", **FAST).frames
    other = pipe(PROMPT, generator=seeded(4), output_type="pt", **FAST).frames
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert (first - other).abs().max() > 1e-2


def test_clip_does_not_depend_on_the_batch(pipe):
    alone = pipe(PROMPT, generator=seeded(5), output_type="pt", **FAST).frames
    batch = pipe([PROMPT, OTHER], generator=seeded(5), output_type="pt", **FAST).frames
    torch.testing.assert_close(batch[0], alone[0], rtol=0, atol=1e-4)
    # one generator per clip: clip 1 of the batch is OTHER alone with its own generator
    per_clip = pipe([PROMPT, OTHER], generator=[seeded(6), seeded(7)], output_type="pt", **FAST).frames
    other_alone = pipe(OTHER, generator=seeded(7), output_type="pt", **FAST).frames
    torch.testing.assert_close(per_clip[1], other_alone[0], rtol=0, atol=1e-4)
    assert (per_clip[0] - per_clip[1]).abs().max() > 1e-2


def test_noise_argument_replaces_generator(pipe):
    noise = torch.randn((1, 3, 2, 16, 16), generator=seeded(8))
    from_noise = pipe(PROMPT, noise=noise, output_type="pt", **FAST).frames
    from_seed = pipe(PROMPT, generator=seeded(8), output_type="pt", **FAST).frames
    torch.testing.assert_close(from_noise, from_seed, rtol=0, atol=0)


# ----- guidance -------------------------------------------------------------------------------


def test_guidance(pipe):
    batch_sizes = []
    hook = pipe.stunet.register_forward_hook(
        lambda module, args, output: batch_sizes.append(args[0].shape[0])
    )
    try:
        plain = pipe(PROMPT, guidance_scale=1.0, generator=seeded(9), output_type="pt", **FAST).frames
        assert batch_sizes == [1, 1]  # no unconditional pass
        batch_sizes.clear()
        guided = pipe(PROMPT, guidance_scale=5.0, generator=seeded(9), output_type="pt", **FAST).frames
        assert batch_sizes == [2, 2]  # unconditional and conditional in one batch
    finally:
        hook.remove()
    assert (plain - guided).abs().max() > 1e-3
    zero = pipe(PROMPT, guidance_scale=0.0, generator=seeded(9), output_type="pt", **FAST).frames
    torch.testing.assert_close(zero, plain, rtol=0, atol=0)  # <= 1 means no guidance
    negative = pipe(PROMPT, negative_prompt=OTHER, generator=seeded(9), output_type="pt", **FAST).frames
    assert (negative - guided).abs().max() > 1e-4


# ----- input validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(prompt=""), "non-empty prompt"),
        (dict(prompt="   "), "non-empty prompt"),
        (dict(prompt=[]), "prompt"),
        (dict(prompt=[PROMPT, " "]), "non-empty prompt"),
        (dict(num_frames=0), "num_frames=0.*multiple of 2"),
        (dict(num_frames=3), "num_frames=3.*multiple of 2"),
        (dict(height=15), "height=15.*multiple of 2"),
        (dict(width=7), "width=7.*multiple of 2"),
        (dict(num_inference_steps=0), "num_inference_steps=0.*>= 1"),
        (dict(guidance_scale=-0.5), "guidance_scale=-0.5.*>= 0"),
        (dict(output_type="latent"), "output_type='latent'.*np, pt, pil"),
        (dict(num_videos_per_prompt=0), "num_videos_per_prompt=0"),
        (dict(prompt=[PROMPT, OTHER], generator=[torch.Generator()]), "generator is a list of 1.*2"),
        (dict(prompt=[PROMPT, OTHER], negative_prompt=["x"]), "negative_prompt has 1 entries for 2"),
        (dict(noise=torch.zeros(1, 3, 4, 16, 16)), "noise has shape"),
    ],
)
def test_bad_inputs_raise(pipe, kwargs, match):
    call = dict(prompt=PROMPT, **FAST)
    call.update(kwargs)
    with pytest.raises(ValueError, match=match):
        pipe(**call)


def test_text_width_must_match():
    narrow = tiny_stunet(cross_attention_dim=32)
    with pytest.raises(ValueError, match="384-d.*32-d"):
        LumierePipeline.from_stunet(narrow)


# ----- save / load ----------------------------------------------------------------------------


def test_save_load_round_trip(pipe, tmp_path):
    ddim = with_scheduler(pipe, DDIMScheduler.from_config(pipe.scheduler.config))
    ddim.save_pretrained(tmp_path)
    for sub in ("stunet", "text_encoder", "scheduler"):
        assert (tmp_path / sub).is_dir()
    assert (tmp_path / "stunet" / "diffusion_pytorch_model.safetensors").is_file()
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "LumierePipeline"
    assert index["scheduler"] == ["diffusers", "DDIMScheduler"]

    loaded = LumierePipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.scheduler) is DDIMScheduler
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.scheduler.config) == public(ddim.scheduler.config)
    ddim.text_encoder.clear_cache()  # both encode the same prompts in the same batches
    before = ddim(PROMPT, generator=seeded(10), output_type="pt", **FAST).frames
    after = loaded(PROMPT, generator=seeded(10), output_type="pt", **FAST).frames
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_from_pretrained_refuses_non_scheduler_class(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    config_path = tmp_path / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config["_class_name"] = "UNet2DModel"  # a diffusers class, but not a scheduler
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="not a diffusers scheduler"):
        LumierePipeline.from_pretrained(tmp_path)


def test_from_pretrained_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        LumierePipeline.from_pretrained(tmp_path / "nowhere")
    if (DEFAULT_MODEL_DIR / "model_index.json").is_file():
        pytest.skip("the default model is shipped")
    with pytest.raises(FileNotFoundError, match="not shipped yet.*pass the path"):
        LumierePipeline.from_pretrained()


def test_ssr_options_object_and_flat_keywords_give_the_same_clip():
    """``ssr_options=SSROptions(...)`` and the flat ``ssr_*`` keywords are one setting (issue 28)."""
    from lumiere.models.ssr import build_ssr_stunet
    from lumiere.pipelines import SSROptions

    torch.manual_seed(0)
    ssr = build_ssr_stunet(build_unet2d("tiny"), **STUNET_PRESETS["tiny"]).eval()
    with torch.no_grad():  # weight on the low-res clip, so the SSR settings show in the output
        ssr.conv_in.weight[:, 3:].normal_(0, 0.1, generator=seeded(1))
    pipe = LumierePipeline.from_stunet(tiny_stunet(), ssr=ssr)
    pipe.set_progress_bar_config(disable=True)
    call = dict(num_frames=4, num_inference_steps=2, output_type="pt")
    options = SSROptions(window=2, overlap=1, steps=1, noise_level=50)
    grouped = pipe("a red circle", ssr_options=options, generator=seeded(0), **call).frames
    flat = pipe("a red circle", ssr_window=2, ssr_overlap=1, ssr_steps=1, ssr_noise_level=50,
                generator=seeded(0), **call).frames  # fmt: skip
    default = pipe("a red circle", generator=seeded(0), **call).frames
    assert grouped.shape == (1, 4, 32, 32, 3)
    torch.testing.assert_close(grouped, flat, rtol=0, atol=0)
    assert (grouped - default).abs().max() > 1e-3  # the options change the clip
    with pytest.raises(TypeError, match="ssr_windw"):
        pipe("a red circle", ssr_windw=2, **call)
    with pytest.raises(ValueError, match="ssr_steps=0"):
        pipe("a red circle", ssr_options=SSROptions(steps=0), **call)
