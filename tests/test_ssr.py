"""Spatial super-resolution (Lumiere Sec. 3.2): the SSR model and its conditioning, the ``ssr``
training stage, and SSR in the pipeline and the CLI. Tiny preset, 16x16 -> 32x32, CPU."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lumiere.cli import main
from lumiere.config import config_from_dict
from lumiere.data.video_io import read_video, write_video
from lumiere.diffusion import make_noise_scheduler
from lumiere.models.presets import STUNET_PRESETS, build_unet2d
from lumiere.models.ssr import (
    augment,
    build_ssr_stunet,
    check_ssr_stunet,
    downsample_video,
    make_condition,
    residual_over_upsample,
    ssr_model_input,
    upsample_video,
)
from lumiere.models.stunet import STUNet
from lumiere.pipelines import LumierePipeline, LumierePipelineOutput, SSROptions
from lumiere.stages.ssr import training_condition
from lumiere.train import train

PROMPT = "a red circle moving left on a black background"
ALPHAS_CUMPROD = make_noise_scheduler().alphas_cumprod


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_ssr(seed: int = 0) -> STUNet:
    torch.manual_seed(seed)
    ssr = build_ssr_stunet(build_unet2d("tiny"), **STUNET_PRESETS["tiny"])
    with torch.no_grad():  # a little weight on the conditioning channels, as after training
        ssr.conv_in.weight[:, 3:].normal_(0, 0.1, generator=seeded(seed + 1))
    return ssr.eval()


def tiny_base(seed: int = 0) -> STUNet:
    torch.manual_seed(seed)
    return STUNet.from_unet2d(build_unet2d("tiny"), **STUNET_PRESETS["tiny"]).eval()


@pytest.fixture(scope="module")
def pipe() -> LumierePipeline:
    pipe = LumierePipeline.from_stunet(tiny_base(), ssr=tiny_ssr())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def low_res_clip(batch: int = 1, num_frames: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, num_frames, 16, 16, 3), dtype=np.float32)


# ----- the SSR model and its input --------------------------------------------------------------


def test_ssr_stunet_is_inflated_without_temporal_resizing():
    ssr = tiny_ssr()
    assert ssr.temporal_factor == 1 and ssr.in_channels == 6 and ssr.out_channels == 3
    assert ssr.noise_level_embedding is not None
    assert ssr.config.extra_in_channels == 3 and ssr.config.noise_level_conditioning
    check_ssr_stunet(ssr)
    with pytest.raises(
        ValueError, match="not an SSR STUNet: it resizes time.*no noise-level.*input channels"
    ):
        check_ssr_stunet(tiny_base())
    # any frame count works: no temporal downsampling
    out = ssr(torch.randn(1, 6, 3, 32, 32), 10, torch.randn(1, 5, 384), noise_level=torch.tensor([20])).sample
    assert out.shape == (1, 3, 3, 32, 32)


def test_ssr_input_shapes_and_values():
    high = torch.rand(2, 3, 4, 32, 32) * 2 - 1
    low = downsample_video(high, 2)
    assert low.shape == (2, 3, 4, 16, 16)
    torch.testing.assert_close(low[0, :, 1, 0, 0], high[0, :, 1, :2, :2].mean((-1, -2)))  # area average
    up = upsample_video(low, (32, 32))
    assert up.shape == (2, 3, 4, 32, 32)
    flat = torch.full((1, 3, 2, 8, 8), 0.25)
    torch.testing.assert_close(upsample_video(flat, (16, 16)), torch.full((1, 3, 2, 16, 16), 0.25))

    condition = training_condition(high, 2, 250, ALPHAS_CUMPROD, generator=seeded(0))
    assert condition.video.shape == high.shape and condition.noise_level.shape == (2,)
    assert condition.noise_level.dtype == torch.long
    assert bool(((condition.noise_level >= 0) & (condition.noise_level <= 250)).all())
    again = training_condition(high, 2, 250, ALPHAS_CUMPROD, generator=seeded(0))
    assert torch.equal(condition.video, again.video)  # every draw comes from the generator
    assert ssr_model_input(torch.randn(2, 3, 4, 32, 32), condition.video).shape == (2, 6, 4, 32, 32)
    with pytest.raises(ValueError, match="does not match the noisy clip"):
        ssr_model_input(torch.randn(2, 3, 5, 32, 32), condition.video)
    with pytest.raises(ValueError, match="multiples of ssr_scale=3"):
        downsample_video(high, 3)


def test_augmentation_is_sqrt_a_x_plus_sqrt_1_minus_a_eps():
    video, noise = torch.randn(3, 3, 2, 4, 4), torch.randn(3, 3, 2, 4, 4)
    levels = torch.tensor([0, 100, 999])
    out = augment(video, noise, levels, ALPHAS_CUMPROD)
    for i, level in enumerate(levels.tolist()):
        a = ALPHAS_CUMPROD[level]
        torch.testing.assert_close(out[i], a.sqrt() * video[i] + (1 - a).sqrt() * noise[i])
    torch.testing.assert_close(out[0], video[0], atol=5e-2, rtol=0)  # level 0: noise std ~0.01
    assert (out[2] - noise[2]).abs().max() < 0.05  # level 999: (almost) pure noise
    condition = make_condition(video[:, :, :, :2, :2], (4, 4), levels, noise, ALPHAS_CUMPROD)
    assert condition.video.shape == (3, 3, 2, 4, 4)


# ----- the ssr training stage --------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_model_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("t2i") / "model" / "unet"
    build_unet2d("tiny").save_pretrained(path)
    return path.parent


def ssr_config(tmp_path, init_from, **optim):
    return config_from_dict(
        {
            "stage": "ssr",
            "output_dir": str(tmp_path / "run"),
            "model": {"preset": "tiny", "init_from": str(init_from), "freeze_spatial": False, "ssr_scale": 2},
            "data": {"resolution": 32, "num_frames": 4},
            "optim": {"batch_size": 2, "max_steps": 4, "warmup_steps": 1, "lr": 1e-3, **optim},
            "log_every": 2,
            "checkpoint_every": 100,
            "sample_steps": 1,
        }
    )


@pytest.fixture(scope="module")
def trained(image_model_dir, tmp_path_factory):
    return train(ssr_config(tmp_path_factory.mktemp("ssr"), image_model_dir))


def test_ssr_stage_trains_and_exports_an_upsampling_pipeline(trained):
    assert trained.step == 4 and np.isfinite(trained.final_loss)
    model_dir = trained.model_dir
    assert (model_dir / "ssr" / "diffusion_pytorch_model.safetensors").is_file()
    assert not (model_dir / "stunet").exists()
    index = json.loads((model_dir / "model_index.json").read_text())
    assert index["ssr"][1] == "STUNet" and index["stunet"] == [None, None] and index["ssr_scale"] == 2
    assert (model_dir.parent / "samples" / "final.mp4").is_file()

    loaded = LumierePipeline.from_pretrained(model_dir)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.stunet is None and loaded.ssr.temporal_factor == 1
    frames = loaded.upsample(low_res_clip(), PROMPT, window=2, overlap=1, num_inference_steps=1).frames
    assert frames.shape == (1, 4, 32, 32, 3)
    with pytest.raises(ValueError, match="no base stunet.*pipe.upsample"):
        loaded(PROMPT, num_inference_steps=1)


def test_noise_level_conditioning_changes_the_output_after_training(trained, image_model_dir):
    sample = torch.randn(1, 6, 4, 32, 32, generator=seeded(0))
    states = torch.randn(1, 5, 384, generator=seeded(1))

    def outputs(model):
        with torch.no_grad():
            return [
                model.eval()(sample, 500, states, noise_level=torch.tensor([level])).sample
                for level in (0, 250)
            ]

    fresh = build_ssr_stunet(build_unet2d("tiny"), **STUNET_PRESETS["tiny"])
    at_init = outputs(fresh)
    assert torch.equal(at_init[0], at_init[1])  # zero-initialised: the level is ignored at first
    after = outputs(trained.model)
    assert (after[0] - after[1]).abs().max() > 1e-4


def test_ssr_stage_continues_from_an_ssr_and_refuses_a_base(trained, tmp_path):
    result = train(ssr_config(tmp_path / "more", trained.model_dir, max_steps=1))
    assert result.step == 1 and isinstance(result.model, STUNet) and result.model.temporal_factor == 1

    base_dir = tmp_path / "base"
    LumierePipeline.from_stunet(tiny_base()).save_pretrained(base_dir)
    with pytest.raises(FileNotFoundError, match="holds no ssr model"):
        train(ssr_config(tmp_path / "from_base", base_dir, max_steps=1))
    tiny_base().save_pretrained(tmp_path / "base_stunet")
    with pytest.raises(ValueError, match="not an SSR STUNet"):
        train(ssr_config(tmp_path / "from_stunet", tmp_path / "base_stunet", max_steps=1))


def test_residual_over_bilinear_is_the_detail_bilinear_misses():
    flat = torch.full((1, 3, 2, 8, 8), 0.3)
    assert torch.equal(residual_over_upsample(flat, 2), torch.zeros_like(flat))  # bilinear keeps a flat clip

    edge = torch.full((1, 3, 2, 8, 8), -1.0)
    edge[..., 3:] = 1.0  # a vertical edge inside a 2x2 block: bilinear blurs it, the residual restores it
    residual = residual_over_upsample(edge, 2)
    assert residual.shape == edge.shape
    assert residual[..., [0, 5, 6, 7]].abs().max() < 1e-6  # bilinear is exact away from the edge
    assert residual[..., 1:5].abs().min() > 0.2  # and off by a quarter or more next to it
    torch.testing.assert_close(residual + upsample_video(downsample_video(edge, 2), (8, 8)), edge)


def test_residual_over_bicubic_is_the_detail_bicubic_misses():
    flat = torch.full((1, 3, 2, 8, 8), 0.3)
    torch.testing.assert_close(residual_over_upsample(flat, 2, "bicubic"), torch.zeros_like(flat))
    ramp = torch.linspace(-1, 1, 16).expand(1, 3, 2, 16, 16).contiguous()  # smooth: both are near exact
    edge = torch.where(ramp > 0.1, 1.0, -1.0)
    bicubic, bilinear = residual_over_upsample(edge, 2, "bicubic"), residual_over_upsample(edge, 2)
    assert not torch.allclose(bicubic, bilinear)
    torch.testing.assert_close(bicubic + upsample_video(downsample_video(edge, 2), (16, 16), "bicubic"), edge)
    with pytest.raises(ValueError, match="mode='nearest'"):
        upsample_video(edge, (32, 32), "nearest")


def test_ssr_upsample_mode_is_saved_and_used(pipe, tmp_path):
    bicubic = LumierePipeline(
        pipe.stunet, pipe.text_encoder, pipe.scheduler, ssr=pipe.ssr, ssr_residual=True, ssr_upsample="bicubic"
    )
    bicubic.save_pretrained(tmp_path / "bicubic")
    assert json.loads((tmp_path / "bicubic" / "model_index.json").read_text())["ssr_upsample"] == "bicubic"
    loaded = LumierePipeline.from_pretrained(tmp_path / "bicubic")
    assert loaded.ssr_upsample == "bicubic" and loaded.with_ssr(loaded).ssr_upsample == "bicubic"
    bilinear = LumierePipeline(pipe.stunet, pipe.text_encoder, pipe.scheduler, ssr=pipe.ssr, ssr_residual=True)
    assert bilinear.ssr_upsample == "bilinear"
    low = torch.from_numpy(low_res_clip(num_frames=4)).permute(0, 4, 1, 2, 3) * 2 - 1  # [b, 3, f, h, w]
    cond, _ = pipe.encode_prompt([PROMPT], None, 1, False, pipe.device)
    call = dict(options=SSROptions(guidance_scale=1.0, steps=2, noise_level=0), windows=None)
    outputs = [p.super_resolve(low, cond, None, generator=seeded(3), **call) for p in (loaded, bilinear)]
    assert (outputs[0] - outputs[1]).abs().max() > 1e-3  # both the input and the added base differ
    with pytest.raises(ValueError, match="ssr_upsample='area'"):
        LumierePipeline(pipe.stunet, pipe.text_encoder, pipe.scheduler, ssr=pipe.ssr, ssr_upsample="area")


def test_residual_ssr_stage_exports_a_residual_pipeline(image_model_dir, tmp_path):
    config = ssr_config(tmp_path, image_model_dir, max_steps=2)
    config.model.ssr_residual = True
    result = train(config)
    index = json.loads((result.model_dir / "model_index.json").read_text())
    assert index["ssr_residual"] is True
    loaded = LumierePipeline.from_pretrained(result.model_dir)
    assert loaded.ssr_residual is True

    plain = train(ssr_config(tmp_path / "plain", image_model_dir, max_steps=2))  # same seed and data
    assert json.loads((plain.model_dir / "model_index.json").read_text())["ssr_residual"] is False
    assert result.final_loss != plain.final_loss  # a different target


def test_residual_ssr_adds_the_bilinear_upsample_back(pipe):
    residual = LumierePipeline(
        pipe.stunet, pipe.text_encoder, pipe.scheduler, ssr=pipe.ssr, ssr_residual=True
    )
    residual.set_progress_bar_config(disable=True)
    low = torch.from_numpy(low_res_clip(num_frames=4)).permute(0, 4, 1, 2, 3) * 2 - 1  # [b, 3, f, h, w]
    cond, _ = pipe.encode_prompt([PROMPT], None, 1, False, pipe.device)
    call = dict(options=SSROptions(guidance_scale=1.0, steps=2, noise_level=20), windows=None)
    plain = pipe.super_resolve(low, cond, None, generator=seeded(3), **call)
    detail = residual.super_resolve(low, cond, None, generator=seeded(3), **call)
    torch.testing.assert_close(detail, plain + upsample_video(low, (32, 32)), rtol=0, atol=1e-6)


def test_with_ssr_joins_a_base_and_an_upsampler(pipe, tmp_path):
    base = LumierePipeline.from_stunet(pipe.stunet, text_encoder=pipe.text_encoder)
    upsampler = LumierePipeline.from_stunet(
        None, text_encoder=pipe.text_encoder, ssr=pipe.ssr, ssr_residual=True
    )
    joined = base.with_ssr(upsampler)
    assert joined.stunet is base.stunet and joined.ssr is pipe.ssr and base.ssr is None
    joined.save_pretrained(tmp_path)
    loaded = LumierePipeline.from_pretrained(tmp_path)
    assert loaded.ssr is not None and loaded.ssr_residual is True and loaded.ssr_scale == 2
    with pytest.raises(ValueError, match="upsampler has no SSR model"):
        base.with_ssr(base)
    with pytest.raises(ValueError, match="no base stunet"):
        upsampler.with_ssr(upsampler)


def test_ssr_residual_must_be_a_bool(pipe):
    with pytest.raises(ValueError, match="ssr_residual=1: must be True or False"):
        LumierePipeline(pipe.stunet, pipe.text_encoder, pipe.scheduler, ssr=pipe.ssr, ssr_residual=1)


def test_ssr_config_keys():
    base = {"stage": "ssr", "model": {"init_from": "x"}}
    with pytest.raises(
        ValueError, match=r"data.resolution \(30\) must be a multiple of model.ssr_scale \(4\)"
    ):
        config_from_dict({**base, "model": {"init_from": "x", "ssr_scale": 4}, "data": {"resolution": 30}})
    with pytest.raises(ValueError, match="optim.max_augmentation_level must be in"):
        config_from_dict({**base, "optim": {"max_augmentation_level": 1000}})
    with pytest.raises(ValueError, match="model.ssr_scale must be >= 1"):
        config_from_dict({**base, "model": {"init_from": "x", "ssr_scale": 0}})
    with pytest.raises(ValueError, match="model.ssr_residual applies to stage 'ssr' only, not 'stunet'"):
        config_from_dict({"stage": "stunet", "model": {"init_from": "x", "ssr_residual": True}})
    with pytest.raises(ValueError, match="model.ssr_residual"):
        config_from_dict({**base, "model": {"init_from": "x", "ssr_residual": "yes"}})


# ----- SSR in the pipeline -----------------------------------------------------------------------


def test_pipeline_runs_base_then_ssr(pipe):
    call = dict(num_frames=4, num_inference_steps=2, generator=seeded(0))
    frames = pipe(PROMPT, ssr_window=2, ssr_overlap=1, **call).frames
    assert frames.shape == (1, 4, 32, 32, 3)
    assert frames.min() >= 0 and frames.max() <= 1
    base_only = pipe(PROMPT, upsample=False, **{**call, "generator": seeded(0)}).frames
    assert base_only.shape == (1, 4, 16, 16, 3)
    # same seed: SSR of the base clip, as `upsample` does it (the generator continues after the base)
    generator = seeded(0)
    base = pipe(
        PROMPT, upsample=False, output_type="pt", num_frames=4, num_inference_steps=2, generator=generator
    )
    again = pipe.upsample(
        base.frames.numpy(),
        PROMPT,
        window=2,
        overlap=1,
        num_inference_steps=2,
        generator=generator,
        output_type="pt",
    ).frames
    torch.testing.assert_close(again, torch.from_numpy(frames), atol=1e-5, rtol=0)


def test_upsample_a_given_clip(pipe):
    clip = low_res_clip(batch=2, num_frames=5)
    out = pipe.upsample(clip, [PROMPT, "a blue square"], window=3, overlap=1, num_inference_steps=2)
    assert isinstance(out, LumierePipelineOutput)
    assert out.frames.shape == (2, 5, 32, 32, 3) and out.frames.dtype == np.float32
    uint8 = pipe.upsample((clip * 255).round().astype(np.uint8), PROMPT, num_inference_steps=1).frames
    assert uint8.shape == (2, 5, 32, 32, 3)
    pil = pipe.upsample(clip[:1], PROMPT, num_inference_steps=1, output_type="pil").frames
    assert len(pil) == 1 and len(pil[0]) == 5 and pil[0][0].size == (32, 32)
    (tuple_frames,) = pipe.upsample(
        torch.from_numpy(clip[:1]), PROMPT, num_inference_steps=1, return_dict=False
    )
    assert tuple_frames.shape == (1, 5, 32, 32, 3)


def test_upsample_clip_does_not_depend_on_the_batch(pipe):
    clips = low_res_clip(batch=2, num_frames=4)
    call = dict(window=2, overlap=1, num_inference_steps=2, output_type="pt")
    both = pipe.upsample(clips, PROMPT, generator=[seeded(5), seeded(6)], **call).frames
    second = pipe.upsample(clips[1:], PROMPT, generator=[seeded(6)], **call).frames
    torch.testing.assert_close(both[1:], second, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(window=0), r"window=0: must be an integer >= 1"),
        (dict(window=4, overlap=4), r"overlap=4: must be an integer >= 0 and < window \(4\)"),
        (dict(window=4, overlap=-1), r"overlap=-1"),
        (dict(chunk_size=0), r"chunk_size=0"),
        (dict(noise_level=-1), r"noise_level=-1: must be an integer timestep in \[0, 999\]"),
        (dict(noise_level=1000), r"noise_level=1000"),
        (dict(num_inference_steps=0), r"num_inference_steps=0"),
        (dict(guidance_scale=-1.0), r"guidance_scale=-1.0"),
        (dict(video=np.zeros((4, 16, 16, 3), np.float32)), r"video must be \[b, f, h, w, 3\].*video\[None\]"),
        (dict(video=np.full((1, 2, 16, 16, 3), 2.0, np.float32)), r"values in \[0, 1\]"),
        (dict(prompt=[PROMPT, PROMPT]), r"prompt has 2 entries for 1 clips"),
        (dict(prompt=""), r"empty"),
        (dict(generator=[seeded(0), seeded(1)]), r"generator is a list of 2"),
        (dict(output_type="gif"), r"output_type='gif'"),
    ],
)
def test_upsample_bad_inputs_raise(pipe, kwargs, match):
    call = {"video": low_res_clip(num_frames=4), "prompt": PROMPT, "num_inference_steps": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        pipe.upsample(**call)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(ssr_window=0), r"ssr_window=0"),
        (dict(ssr_window=4, ssr_overlap=4), r"ssr_overlap=4: must be an integer >= 0 and < ssr_window \(4\)"),
        (dict(ssr_chunk_size=0), r"ssr_chunk_size=0"),
        (dict(ssr_steps=0), r"ssr_steps=0"),
        (dict(ssr_noise_level=5000), r"ssr_noise_level=5000"),
    ],
)
def test_pipeline_bad_ssr_options_raise(pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipe(PROMPT, num_frames=4, num_inference_steps=1, **kwargs)


def test_upsample_output_size_must_suit_the_ssr(pipe):
    same_size = LumierePipeline(pipe.stunet, pipe.text_encoder, pipe.scheduler, ssr=pipe.ssr, ssr_scale=1)
    with pytest.raises(ValueError, match=r"height=15 upsampled x1 is 15.*positive multiple of 2"):
        same_size.upsample(np.zeros((1, 2, 15, 16, 3), np.float32), PROMPT)
    with pytest.raises(ValueError, match=r"ssr_scale=0: must be an integer >= 1"):
        LumierePipeline(pipe.stunet, pipe.text_encoder, pipe.scheduler, ssr=pipe.ssr, ssr_scale=0)


def test_upsample_needs_an_ssr_model():
    base_only = LumierePipeline.from_stunet(tiny_base())
    with pytest.raises(ValueError, match="no SSR model"):
        base_only.upsample(low_res_clip(), PROMPT)
    frames = base_only(PROMPT, num_frames=2, num_inference_steps=1).frames  # upsample=True: no SSR, no-op
    assert frames.shape == (1, 2, 16, 16, 3)
    with pytest.raises(ValueError, match="is not an SSR STUNet"):
        LumierePipeline.from_stunet(tiny_base(), ssr=tiny_base())
    with pytest.raises(ValueError, match="needs a base stunet, an ssr model, or both"):
        LumierePipeline.from_stunet(None)


def test_save_load_round_trip_with_ssr(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    for sub in ("stunet", "ssr", "text_encoder", "scheduler"):
        assert (tmp_path / sub).is_dir()
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["ssr"][1] == "STUNet" and index["ssr_scale"] == 2

    loaded = LumierePipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.ssr is not None and loaded.ssr_scale == 2 and loaded.ssr_residual is False
    pipe.text_encoder.clear_cache()
    call = dict(num_frames=4, num_inference_steps=2, output_type="pt", ssr_window=2, ssr_overlap=1)
    before = pipe(PROMPT, generator=seeded(4), **call).frames
    after = loaded(PROMPT, generator=seeded(4), **call).frames
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_directories_without_ssr_still_load(tmp_path):
    LumierePipeline.from_stunet(tiny_base()).save_pretrained(tmp_path)
    index_path = tmp_path / "model_index.json"
    index = json.loads(index_path.read_text())
    assert index["ssr"] == [None, None] and not (tmp_path / "ssr").exists()
    assert LumierePipeline.from_pretrained(tmp_path).ssr is None
    # a directory written before SSR existed: no "ssr" or "ssr_scale" key at all
    index_path.write_text(json.dumps({k: v for k, v in index.items() if k not in ("ssr", "ssr_scale")}))
    loaded = LumierePipeline.from_pretrained(tmp_path)
    assert loaded.ssr is None and loaded.stunet is not None and loaded.ssr_scale == 2


# ----- CLI ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_pipe(pipe, tmp_path_factory):
    path = tmp_path_factory.mktemp("ssr_pipeline")
    pipe.save_pretrained(path)
    return path


def test_cli_upsample_and_generate(saved_pipe, tmp_path):
    source = tmp_path / "low.mp4"
    write_video(source, low_res_clip(num_frames=5)[0], fps=4.0)
    out = tmp_path / "high.mp4"
    argv = ["upsample", str(source), "-o", str(out), "--prompt", PROMPT, "--model", str(saved_pipe),
            "--steps", "1", "--window", "3", "--overlap", "1", "--draws", "2"]  # fmt: skip
    assert main(argv) == 0
    frames, fps = read_video(out)
    assert frames.shape == (5, 32, 32, 3) and fps == pytest.approx(4.0)

    for extra, size in (([], 32), (["--no-upsample"], 16)):
        out = tmp_path / f"gen{size}.mp4"
        argv = ["generate", PROMPT, "--model", str(saved_pipe), "-o", str(out), "--steps", "1",
                "--frames", "4", "--ssr-window", "2", "--ssr-overlap", "1", *extra]  # fmt: skip
        assert main(argv) == 0
        assert read_video(out)[0].shape == (4, size, size, 3)


@pytest.mark.parametrize(
    "options, message",
    [
        (
            ["--window", "3"],
            "argument --window: must be a positive multiple of 2 for this model (e.g. 2, 4 or 16), got 3",
        ),
        (
            ["--window", "4", "--overlap", "4"],
            "argument --overlap: must be an integer >= 0 and < --window (4), got 4",
        ),
        (["--overlap", "1"], "argument --overlap: applies to base windows only: give --window too"),
        (
            ["--ssr-window", "4", "--ssr-overlap", "5"],
            "argument --ssr-overlap: must be an integer >= 0 and < --ssr-window (4), got 5",
        ),
        (
            ["--frames", "5"],
            "argument --frames: must be a positive multiple of 2 for this model (e.g. 2, 4 or 16), or longer than --window, got 5",
        ),
        (["--height", "9"], "argument --height: must be a positive multiple of 2 for this model, got 9"),
        (["--ssr-draws", "0"], "argument --ssr-draws: must be an integer >= 1, got 0"),
        (
            ["--no-upsample", "--ssr-window", "4", "--ssr-overlap", "4"],
            "argument --ssr-overlap: must be an integer >= 0 and < --ssr-window (4), got 4",
        ),
    ],
)
def test_cli_generate_bad_window_options_exit_2(saved_pipe, tmp_path, capsys, options, message):
    argv = ["generate", PROMPT, "--model", str(saved_pipe), "-o", str(tmp_path / "x.mp4"), *options]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "options, message",
    [
        (
            ["--window", "4", "--overlap", "4"],
            "argument --overlap: must be an integer >= 0 and < --window (4), got 4",
        ),
        (["--noise-level", "1000"], "argument --noise-level: must be an integer timestep in [0, 999]"),
        (["--draws", "0"], "argument --draws: must be an integer >= 1, got 0"),
    ],
)
def test_cli_upsample_bad_options_exit_2_naming_the_option(saved_pipe, tmp_path, capsys, options, message):
    """The pipeline's rule, in argparse's words: one line, the option and what it takes, before any work."""
    source = tmp_path / "low.mp4"
    write_video(source, low_res_clip(num_frames=5)[0], fps=4.0)
    out = tmp_path / "x.mp4"
    argv = ["upsample", str(source), "-o", str(out), "--prompt", PROMPT, "--model", str(saved_pipe), *options]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("lumiere upsample: error: ") and message in errors[0]
    assert not out.exists()


def test_cli_upsample_of_a_damaged_video_exits_2_naming_it(saved_pipe, tmp_path, capsys):
    source = tmp_path / "broken.mp4"
    source.write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    argv = [
        "upsample",
        str(source),
        "-o",
        str(tmp_path / "x.mp4"),
        "--prompt",
        PROMPT,
        "--model",
        str(saved_pipe),
    ]
    assert main(argv) == 2
    assert str(source) in capsys.readouterr().err


@pytest.mark.parametrize("command", ["generate", "upsample"])
def test_cli_request_too_large_for_memory_exits_1(saved_pipe, tmp_path, capsys, monkeypatch, command):
    from lumiere.pipelines.memory import SKIP_ENV

    monkeypatch.delenv(SKIP_ENV, raising=False)
    out = str(tmp_path / "x.mp4")
    if command == "generate":
        argv = ["generate", PROMPT, "--model", str(saved_pipe), "-o", out, "--frames", "100000",
                "--height", "4096", "--width", "4096", "--steps", "1"]  # fmt: skip
    else:
        source = tmp_path / "low.mp4"
        write_video(source, low_res_clip(num_frames=5)[0], fps=4.0)
        monkeypatch.setattr("lumiere.pipelines.memory.available_bytes", lambda device: 1024)
        argv = ["upsample", str(source), "-o", out, "--prompt", PROMPT, "--model", str(saved_pipe),
                "--steps", "1", "--window", "3", "--overlap", "1"]  # fmt: skip
    assert main(argv) == 1
    assert "needs about" in capsys.readouterr().err


def test_ssr_strength_runs_the_tail_of_the_schedule_from_the_noised_interpolation(pipe):
    residual = LumierePipeline(pipe.stunet, pipe.text_encoder, pipe.scheduler, ssr=pipe.ssr, ssr_residual=True)
    residual.set_progress_bar_config(disable=True)
    calls = []
    hook = residual.ssr.register_forward_hook(lambda *_: calls.append(1))
    low = low_res_clip(num_frames=4)
    full = residual.upsample(low, PROMPT, num_inference_steps=4, generator=seeded(0)).frames
    default_calls, calls[:] = len(calls), []
    same = residual.upsample(low, PROMPT, num_inference_steps=4, strength=1.0, generator=seeded(0)).frames
    np.testing.assert_array_equal(full, same)
    calls.clear()
    tail = residual.upsample(low, PROMPT, num_inference_steps=4, strength=0.5, generator=seeded(0)).frames
    hook.remove()
    assert default_calls == 4 and len(calls) == 2  # the last half of the steps only
    assert tail.shape == full.shape and np.abs(tail - full).max() > 1e-3
    # Starting near the end, the detail added is small: the output stays near the interpolation.
    tiny = residual.upsample(low, PROMPT, num_inference_steps=50, strength=0.02, generator=seeded(0)).frames
    bilinear = upsample_video(torch.from_numpy(low).permute(0, 4, 1, 2, 3), (32, 32)).permute(0, 2, 3, 4, 1)
    assert np.abs(tiny - bilinear.clamp(0, 1).numpy()).mean() < np.abs(full - bilinear.clamp(0, 1).numpy()).mean()
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="ssr_strength"):
            residual(PROMPT, num_frames=4, num_inference_steps=2, ssr_strength=bad)
        with pytest.raises(ValueError, match="strength"):
            residual.upsample(low, PROMPT, strength=bad)


def test_a_pipeline_keeps_its_ssr_sampling_defaults(pipe, tmp_path):
    tuned = LumierePipeline.from_stunet(pipe.stunet, text_encoder=pipe.text_encoder, ssr=pipe.ssr,
                                        ssr_residual=True, ssr_steps=3, ssr_strength=0.5)  # fmt: skip
    tuned.save_pretrained(tmp_path / "tuned")
    loaded = LumierePipeline.from_pretrained(tmp_path / "tuned")
    loaded.set_progress_bar_config(disable=True)
    assert (loaded.ssr_steps, loaded.ssr_strength) == (3, 0.5)
    assert loaded.ssr_settings() == tuned.ssr_settings()
    assert LumierePipeline.from_stunet(pipe.stunet).with_ssr(loaded).ssr_settings() == loaded.ssr_settings()
    calls = []
    hook = loaded.ssr.register_forward_hook(lambda *_: calls.append(1))
    low = low_res_clip(num_frames=4)
    default = loaded.upsample(low, PROMPT, generator=seeded(0)).frames
    assert len(calls) == 2  # round(3 x 0.5) of the 3 steps
    explicit = loaded.upsample(low, PROMPT, num_inference_steps=3, strength=0.5, generator=seeded(0)).frames
    np.testing.assert_array_equal(default, explicit)
    calls.clear()
    loaded(PROMPT, num_frames=4, num_inference_steps=2, generator=seeded(0))
    assert len(calls) == 2  # the SSR's own defaults, not the base model's 2 steps
    calls.clear()
    loaded(PROMPT, num_frames=4, num_inference_steps=2, ssr_steps=4, ssr_strength=1.0, generator=seeded(0))
    hook.remove()
    assert len(calls) == 4
    with pytest.raises(TypeError, match="unexpected SSR setting 'ssr_speed'"):
        LumierePipeline.from_stunet(pipe.stunet, ssr=pipe.ssr, ssr_speed=2)
    with pytest.raises(ValueError, match="ssr_strength=0"):
        LumierePipeline.from_stunet(pipe.stunet, ssr=pipe.ssr, ssr_strength=0)


def test_ssr_draws_average_samples_from_further_noise(pipe, tmp_path):
    residual = LumierePipeline(pipe.stunet, pipe.text_encoder, pipe.scheduler, ssr=pipe.ssr, ssr_residual=True)
    residual.set_progress_bar_config(disable=True)
    low = low_res_clip(num_frames=4)
    calls = []
    hook = residual.ssr.register_forward_hook(lambda *_: calls.append(1))
    one = residual.upsample(low, PROMPT, num_inference_steps=2, generator=seeded(0)).frames
    assert len(calls) == 2
    calls.clear()
    two = residual.upsample(low, PROMPT, num_inference_steps=2, draws=2, generator=seeded(0)).frames
    hook.remove()
    assert len(calls) == 4  # every draw runs the whole schedule, from a fresh solver state
    np.testing.assert_array_equal(two, residual.upsample(low, PROMPT, num_inference_steps=2, draws=2,
                                                         generator=seeded(0)).frames)  # fmt: skip
    assert np.abs(two - one).max() > 1e-3
    # The mean of 4 draws varies less from seed to seed than one draw does (Monte Carlo: ~1/2).
    spread = {
        draws: np.stack([residual.upsample(low, PROMPT, num_inference_steps=1, draws=draws, generator=seeded(seed),
                                           output_type="np").frames for seed in range(4)]).std(0).mean()  # fmt: skip
        for draws in (1, 4)
    }
    assert spread[4] < 0.75 * spread[1], spread
    # A pipeline's default number of draws is saved with it and used by its calls.
    tuned = LumierePipeline.from_stunet(pipe.stunet, text_encoder=pipe.text_encoder, ssr=pipe.ssr,
                                        ssr_residual=True, ssr_draws=2)  # fmt: skip
    tuned.save_pretrained(tmp_path / "tuned")
    loaded = LumierePipeline.from_pretrained(tmp_path / "tuned")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.ssr_draws == 2
    np.testing.assert_array_equal(loaded.upsample(low, PROMPT, num_inference_steps=2, generator=seeded(0)).frames, two)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="ssr_draws"):
            residual(PROMPT, num_frames=4, num_inference_steps=2, ssr_draws=bad)
        with pytest.raises(ValueError, match="draws"):
            residual.upsample(low, PROMPT, draws=bad)
    with pytest.raises(ValueError, match="ssr_draws=0"):
        LumierePipeline.from_stunet(pipe.stunet, ssr=pipe.ssr, ssr_draws=0)
