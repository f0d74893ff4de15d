"""Lumiere in latent space (issue 30): Stable Diffusion 1.x/2.x and SDXL folders inflated with
``lumiere inflate``, sampled by ``LumierePipeline`` through their VAE, frame by frame.

The folders are tiny and random (``lumiere.testing.make_tiny_sd_folder``), laid out as the
published ones and written by diffusers' own pipelines. The strongest check: with the same noise
in every frame, the inflated model is the image model on every frame (Sec. 3.1), so each frame of
a Lumiere clip equals the image that diffusers' own ``StableDiffusionPipeline`` /
``StableDiffusionXLPipeline`` makes from that noise with the same sampler: text encoders, noise
schedule, prediction type, guidance, SDXL's micro-conditioning, latent scaling and decoding all
agree with the family's reference implementation.
"""

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from torch.testing import assert_close

from lumiere.cli import main
from lumiere.errors import InvalidArgument
from lumiere.models.ssr import build_ssr_stunet
from lumiere.models.vae import decode_latents, encode_video
from lumiere.pipelines import LumierePipeline
from lumiere.testing import make_tiny_sd_folder

PROMPT = "a red circle moving left"
FRAMES = 4  # the tiny STUNets halve time once: a multiple of 2
IMAGE_PIPELINES = {"sd1": StableDiffusionPipeline, "sd2": StableDiffusionPipeline, "sdxl": StableDiffusionXLPipeline}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """family -> (diffusers folder, inflated Lumiere folder), inflated through the CLI."""
    root = tmp_path_factory.mktemp("sd")
    made = {}
    for family in IMAGE_PIPELINES:
        source = make_tiny_sd_folder(root / family, family, seed=1)
        assert main(["inflate", str(source), "--out", str(root / f"{family}_lumiere")]) == 0
        made[family] = (source, root / f"{family}_lumiere")
    assert main(["inflate", str(made["sd1"][0]), "--out", str(root / "sd1_conditional"), "--conditional"]) == 0
    made["sd1_conditional"] = (made["sd1"][0], root / "sd1_conditional")
    return made


def _pipe(path) -> LumierePipeline:
    pipe = LumierePipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("family", list(IMAGE_PIPELINES))
def test_a_still_noise_clip_is_the_image_pipeline_on_every_frame(folders, family):
    source, inflated = folders[family]
    pipe = _pipe(inflated)
    assert pipe.vae is not None and pipe.vae_scale_factor == 8
    image_pipe = IMAGE_PIPELINES[family].from_pretrained(source)
    image_pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)  # the same sampler
    image_pipe.set_progress_bar_config(disable=True)

    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    still = latents[:, :, None].expand(1, 4, FRAMES, 8, 8).contiguous()  # the same noise in every frame
    clip = pipe(PROMPT, num_frames=FRAMES, num_inference_steps=3, guidance_scale=4.0, noise=still).frames
    image = image_pipe(PROMPT, num_inference_steps=3, guidance_scale=4.0, latents=latents.clone(),
                       height=64, width=64, output_type="np").images  # fmt: skip

    assert clip.shape == (1, FRAMES, 64, 64, 3)
    for frame in range(FRAMES):
        assert_close(torch.from_numpy(clip[0, frame]), torch.from_numpy(image[0]), atol=2e-4, rtol=0)


def test_decoding_in_chunks_equals_decoding_at_once(folders):
    vae = AutoencoderKL.from_pretrained(folders["sd1"][1] / "vae")
    video = torch.rand(2, 3, 5, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    latents = encode_video(vae, video, vae_batch_size=3)
    assert latents.shape == (2, 4, 5, 8, 8)
    assert_close(encode_video(vae, video, vae_batch_size=10), latents, atol=1e-4, rtol=0)
    assert_close(decode_latents(vae, latents, vae_batch_size=2), decode_latents(vae, latents, 10), atol=1e-4, rtol=0)
    pipe = _pipe(folders["sd1"][1])
    seeded = lambda n: pipe(PROMPT, num_frames=FRAMES, num_inference_steps=2, vae_batch_size=n,  # noqa: E731
                            generator=torch.Generator().manual_seed(0)).frames  # fmt: skip
    np.testing.assert_allclose(seeded(1), seeded(8), atol=1e-4)


def test_seeded_clips_repeat_and_latents_come_out_undecoded(folders):
    pipe = _pipe(folders["sdxl"][1])
    run = lambda **kw: pipe([PROMPT, "a blue square"], num_frames=FRAMES, num_inference_steps=2,  # noqa: E731
                            generator=[torch.Generator().manual_seed(i) for i in range(2)], **kw).frames  # fmt: skip
    np.testing.assert_array_equal(run(), run())
    latents = run(output_type="latent")
    assert latents.shape == (2, 4, FRAMES, 8, 8)
    other = run(micro_conditioning=(128, 128, 0, 0, 64, 64))  # SDXL's size conditioning reaches the U-Net
    assert np.abs(other - run()).max() > 1e-4


def test_image_to_video_inpainting_and_sdedit_through_the_vae(folders):
    pipe = _pipe(folders["sd1_conditional"][1])
    rng = np.random.default_rng(0)
    image = rng.random((64, 64, 3), dtype=np.float32)
    clip = pipe(PROMPT, image=image, num_frames=FRAMES, num_inference_steps=2).frames
    assert clip.shape == (1, FRAMES, 64, 64, 3)
    np.testing.assert_allclose(clip[0, 0], image, atol=1e-6)  # the given frame, exactly

    video = rng.random((FRAMES, 64, 64, 3), dtype=np.float32)
    mask = np.zeros((64, 64), np.float32)
    mask[20:44, 12:40] = 1  # not aligned to the 8-pixel latent grid
    inpainted = pipe(PROMPT, video=video, mask=mask, num_inference_steps=2).frames[0]
    np.testing.assert_allclose(inpainted[:, mask == 0], video[:, mask == 0], atol=1e-6)  # known pixels kept
    assert np.abs(inpainted[:, mask == 1] - video[:, mask == 1]).max() > 0.05  # the region is generated

    edited = pipe(PROMPT, video=video, strength=0.5, num_inference_steps=4).frames
    assert edited.shape == (1, FRAMES, 64, 64, 3)

    cinemagraph = pipe(PROMPT, image=image, mask=mask, num_frames=FRAMES, num_inference_steps=2).frames[0]
    still = np.broadcast_to(image, cinemagraph.shape)
    np.testing.assert_allclose(cinemagraph[:, mask == 0], still[:, mask == 0], atol=1e-6)  # the still part
    np.testing.assert_allclose(cinemagraph[0], image, atol=1e-6)  # and the first frame


def test_the_latent_pipeline_saves_and_loads(folders, tmp_path):
    pipe = _pipe(folders["sd2"][1])
    pipe.save_pretrained(tmp_path / "copy")
    index = json.loads((tmp_path / "copy" / "model_index.json").read_text())
    assert index["vae"] == ["diffusers", "AutoencoderKL"] and index["ssr_latent"] is False
    again = _pipe(tmp_path / "copy")
    seeded = lambda p: p(PROMPT, num_frames=FRAMES, num_inference_steps=2,  # noqa: E731
                         generator=torch.Generator().manual_seed(5)).frames  # fmt: skip
    np.testing.assert_array_equal(seeded(pipe), seeded(again))


def test_ssr_in_latent_space_and_in_pixel_space(folders):
    pipe = _pipe(folders["sd1"][1])
    image_model = UNet2DConditionModel.from_pretrained(folders["sd1"][0] / "unet")
    latent_ssr = build_ssr_stunet(image_model)  # 4 + 4 input channels: latents and their low-res copy
    upsampled = LumierePipeline(pipe.stunet, pipe.text_encoder, pipe.scheduler, ssr=latent_ssr, vae=pipe.vae,
                                ssr_latent=True)  # fmt: skip
    upsampled.set_progress_bar_config(disable=True)
    clip = upsampled(PROMPT, num_frames=FRAMES, num_inference_steps=2, ssr_window=None).frames
    assert clip.shape == (1, FRAMES, 128, 128, 3)
    low_res = np.random.default_rng(0).random((1, FRAMES, 64, 64, 3), dtype=np.float32)
    assert upsampled.upsample(low_res, PROMPT, window=None, num_inference_steps=2).frames.shape == clip.shape

    pixel_unet = UNet2DConditionModel(**{**image_model.config, "in_channels": 3, "out_channels": 3})
    pixel = LumierePipeline(pipe.stunet, pipe.text_encoder, pipe.scheduler, ssr=build_ssr_stunet(pixel_unet),
                            vae=pipe.vae)  # fmt: skip
    pixel.set_progress_bar_config(disable=True)
    assert pixel(PROMPT, num_frames=FRAMES, num_inference_steps=2, ssr_window=3, ssr_overlap=1).frames.shape == (1, FRAMES, 128, 128, 3)
    with pytest.raises(ValueError, match="ssr denoises 3 channels but works on the vae's 4 latent channels"):
        LumierePipeline(pipe.stunet, pipe.text_encoder, pipe.scheduler, ssr=build_ssr_stunet(pixel_unet),
                        vae=pipe.vae, ssr_latent=True)  # fmt: skip


def test_bad_sizes_and_arguments_are_refused_by_name(folders):
    pipe = _pipe(folders["sd1"][1])
    with pytest.raises(InvalidArgument, match="height.*multiple of 16"):
        pipe(PROMPT, num_frames=FRAMES, height=72)  # 9 latents: the U-Net halves space once
    with pytest.raises(InvalidArgument, match="vae_batch_size"):
        pipe(PROMPT, num_frames=FRAMES, vae_batch_size=0)
    with pytest.raises(InvalidArgument, match="micro_conditioning.*SDXL"):
        pipe(PROMPT, num_frames=FRAMES, micro_conditioning=(64, 64, 0, 0, 64, 64))
    with pytest.raises(InvalidArgument, match="micro_conditioning.*6 finite numbers"):
        _pipe(folders["sdxl"][1])(PROMPT, num_frames=FRAMES, num_inference_steps=1, micro_conditioning=(64, 64))


def test_bad_folders_name_the_component(folders, tmp_path):
    import shutil

    source = folders["sd1"][0]
    broken = tmp_path / "no_vae"
    shutil.copytree(source, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(ValueError, match="vae/"):
        from lumiere.pipelines.convert import inflate_pipeline

        inflate_pipeline(broken, tmp_path / "out")
    mismatched = tmp_path / "mismatch"
    shutil.copytree(source, mismatched)
    config = json.loads((mismatched / "unet" / "config.json").read_text())
    UNet2DConditionModel(**{**config, "in_channels": 9}).save_pretrained(mismatched / "unet")  # an inpainting U-Net
    with pytest.raises(ValueError, match="in_channels|input channels.*latent_channels=4"):
        inflate_pipeline(mismatched, tmp_path / "out2")
    assert main(["inflate", str(broken), "--out", str(tmp_path / "out3")]) == 2
