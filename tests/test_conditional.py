"""Conditional generation (Sec. 4) on the tiny STUNet: the widened model, the training mix, the
pipeline's image / video / mask / strength inputs, weight blending and the style fine-tune path."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from lumiere.data.shapes import MovingShapes
from lumiere.data.styles import StyledDataset, complement_colours
from lumiere.models.blend import blend_weights, load_style
from lumiere.models.conditional import (
    MASK_CONDITION_CHANNELS,
    build_conditional_stunet,
    empty_condition,
    is_conditional_stunet,
    make_mask_condition,
    motion_region,
)
from lumiere.models.inflate import extract_image_model, stunet_key
from lumiere.models.presets import STUNET_PRESETS, build_unet2d
from lumiere.models.ssr import ssr_model_input
from lumiere.models.stunet import STUNet
from lumiere.pipelines import LumierePipeline
from lumiere.pipelines.inputs import load_image, load_mask, load_video
from lumiere.stages.conditional import sample_tasks, training_condition

PROMPT = "a red circle moving right on a black background"
SIZE = dict(height=16, width=16, num_inference_steps=2)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_stunet(seed: int = 0) -> STUNet:
    torch.manual_seed(seed)
    return STUNet.from_unet2d(build_unet2d("tiny"), **STUNET_PRESETS["tiny"]).eval()


def randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-zero weights everywhere, so zero-initialised paths do not hide differences."""
    generator = seeded(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return model


@pytest.fixture(scope="module")
def pipe() -> LumierePipeline:
    stunet = randomise(build_conditional_stunet(tiny_stunet()), 1)
    pipe = LumierePipeline.from_stunet(stunet)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).random((16, 16, 3), dtype=np.float32)


@pytest.fixture(scope="module")
def video() -> np.ndarray:
    return np.random.default_rng(1).random((4, 16, 16, 3), dtype=np.float32)


def box_mask() -> np.ndarray:
    mask = np.zeros((16, 16), dtype=np.float32)
    mask[4:12, 3:10] = 1
    return mask


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1 / mse)


# ----- the conditional network ----------------------------------------------------------------


def test_widened_model_starts_as_the_base_model():
    base = randomise(tiny_stunet(), 2)
    conditional = build_conditional_stunet(randomise(tiny_stunet(), 2))
    assert is_conditional_stunet(conditional) and not is_conditional_stunet(base)
    assert conditional.in_channels == 3 + MASK_CONDITION_CHANNELS
    noisy = torch.randn(1, 3, 4, 16, 16, generator=seeded(0))
    text = torch.randn(1, 5, 384, generator=seeded(1))
    clip = torch.randn(1, 3, 4, 16, 16, generator=seeded(2))
    known = (torch.rand(1, 1, 4, 16, 16, generator=seeded(3)) > 0.5).float()
    condition = make_mask_condition(clip, known)
    with torch.no_grad():
        expected = base(noisy, torch.tensor([500]), text).sample
        got = conditional(ssr_model_input(noisy, condition.video), torch.tensor([500]), text).sample
    torch.testing.assert_close(got, expected)  # zero weights on C and M: any conditioning, same output


def test_conditional_model_cannot_be_built_from_a_widened_one():
    model = tiny_stunet()
    model.widen_input(3)  # an SSR-like input
    with pytest.raises(ValueError, match="text-to-video STUNet"):
        build_conditional_stunet(model)


def test_mask_condition_zeroes_unknown_pixels_and_checks_shapes():
    clip = torch.ones(2, 3, 4, 8, 8)
    known = torch.zeros(2, 1, 4, 8, 8)
    known[:, :, 0] = 1
    condition = make_mask_condition(clip, known)
    assert condition.video.shape == (2, 4, 4, 8, 8)
    assert condition.clip[:, :, 1:].abs().sum() == 0 and condition.clip[:, :, 0].min() == 1
    torch.testing.assert_close(condition.known, known)
    assert empty_condition((2, 3, 4, 8, 8)).video.abs().sum() == 0
    with pytest.raises(ValueError, match=r"known-mask has shape \(2, 1, 3, 8, 8\)"):
        make_mask_condition(clip, torch.zeros(2, 1, 3, 8, 8))


# ----- training mix -----------------------------------------------------------------------------


def test_task_mix_follows_the_probabilities_and_rejects_unknown_tasks():
    tasks = sample_tasks(4000, seeded(0), {"t2v": 0.5, "i2v": 0.5})
    assert set(tasks) == {"t2v", "i2v"} and abs(tasks.count("i2v") / 4000 - 0.5) < 0.05
    with pytest.raises(ValueError, match="tasks are"):
        sample_tasks(4, seeded(0), {"outpaint": 1.0})


def test_training_condition_per_task():
    shapes = MovingShapes(length=4, num_frames=8, resolution=16, seed=0, mode="video")
    x0 = torch.stack([shapes[i]["video"] for i in range(4)])  # [4, 3, 8, 16, 16]
    for task in ("t2v", "i2v", "inpaint", "cinemagraph"):
        condition, tasks = training_condition(x0, seeded(5), {task: 1.0})
        known = condition.known  # [4, 1, 8, 16, 16]
        assert tasks == [task] * 4 and set(known.unique().tolist()) <= {0.0, 1.0}
        if task == "t2v":
            assert known.sum() == 0
        if task == "i2v":
            assert known[:, :, 0].min() == 1 and known[:, :, 1:].sum() == 0
            torch.testing.assert_close(condition.clip[:, :, 0], x0[:, :, 0])
        if task == "inpaint":  # one static region to generate, some of the frame kept
            assert (known == known[:, :, :1]).all() and 0 < known.mean() < 1
        if task == "cinemagraph":  # the first frame repeated; what moves is to be generated
            assert known[:, :, 0].min() == 1 and known[:, :, 1:].mean() < 1
            first = x0[:, :, :1].expand_as(x0)
            torch.testing.assert_close(condition.clip, first * known)
            # Outside the region, the clip really is static: the conditioning equals the target there.
            torch.testing.assert_close(condition.clip * known, x0 * known)
    again, _ = training_condition(x0, seeded(5), {"inpaint": 1.0})
    other, _ = training_condition(x0, seeded(6), {"inpaint": 1.0})
    torch.testing.assert_close(again.video, training_condition(x0, seeded(5), {"inpaint": 1.0})[0].video)
    assert not torch.equal(again.video, other.video)


def test_keyframes_task_knows_every_kth_frame_from_a_random_phase():
    """The training condition of a cascade's TSR (issue 33): keyframes known, the frames between generated."""
    shapes = MovingShapes(length=8, num_frames=16, resolution=8, seed=0, mode="video")
    x0 = torch.stack([shapes[i]["video"] for i in range(8)])  # [8, 3, 16, 8, 8]
    condition, tasks = training_condition(x0, seeded(3), {"keyframes": 1.0}, keyframe_step=5)
    known = condition.known[:, 0, :, 0, 0]  # [8, 16]: a frame is known whole or not at all
    assert tasks == ["keyframes"] * 8 and (condition.known == known[:, None, :, None, None]).all()
    phases = set()
    for row in known:
        frames = row.nonzero().flatten().tolist()
        assert frames == list(range(frames[0], 16, 5)) and frames[0] < 5
        phases.add(frames[0])
    assert len(phases) > 1  # windows of a keyframed clip start anywhere between two keyframes
    torch.testing.assert_close(condition.clip, x0 * condition.known)
    with pytest.raises(ValueError, match="keyframe_step must be an integer >= 2"):
        training_condition(x0, seeded(3), {"keyframes": 1.0}, keyframe_step=1)
    # Four shares (a config written before the task existed) draw exactly as before.
    four = dict(zip(("t2v", "i2v", "inpaint", "cinemagraph"), (0.4, 0.25, 0.2, 0.15), strict=True))
    assert "keyframes" not in sample_tasks(500, seeded(1), four)
    five = {**four, "keyframes": 0.5}
    assert 0.2 < sample_tasks(500, seeded(1), five).count("keyframes") / 500 < 0.4


def test_motion_region_covers_the_moving_object():
    clip = -torch.ones(3, 4, 16, 16)
    for frame in range(4):
        clip[0, frame, 6:9, 2 + 3 * frame : 5 + 3 * frame] = 1  # a red square moving right
    region = motion_region(clip, dilation=0)
    assert region[7, 2:14].min() == 1 and region[0].sum() == 0


# ----- pipeline --------------------------------------------------------------------------------


def test_image_to_video_keeps_the_first_frame(pipe, image):
    frames = pipe(PROMPT, image=image, num_frames=4, generator=seeded(0), **SIZE).frames
    assert frames.shape == (1, 4, 16, 16, 3)
    assert psnr(frames[0, 0], image) > 60
    free = pipe(PROMPT, image=image, num_frames=4, generator=seeded(0), keep_known=False, **SIZE).frames
    assert not np.allclose(free[0, 0], image)  # without pasting, the (untrained) model does not copy it


@pytest.mark.parametrize("sampler", ["dpm++", "ddim", "euler"])
def test_known_pixels_are_imposed_with_every_sampler(pipe, video, sampler):
    from lumiere.pipelines import make_sampling_scheduler

    other = LumierePipeline(
        pipe.stunet, pipe.text_encoder, make_sampling_scheduler(sampler, pipe.scheduler.config)
    )
    other.set_progress_bar_config(disable=True)
    mask = box_mask()
    seen = []
    frames = other(
        PROMPT, video=video, mask=mask, generator=seeded(0), callback=lambda i, t, x: seen.append(x), **SIZE
    ).frames
    kept = mask == 0
    assert np.isfinite(frames).all() and psnr(frames[0][:, kept], video[:, kept]) > 60
    # Between steps the known region holds the video noised to the current level, not the clean video.
    clean = torch.from_numpy(video).permute(3, 0, 1, 2) * 2 - 1  # [3, f, h, w]
    first = seen[0][0][:, :, torch.from_numpy(kept)]
    assert (first - clean[:, :, torch.from_numpy(kept)]).abs().mean() > 0.05


def test_inpainting_keeps_the_unmasked_region(pipe, video):
    mask = box_mask()
    frames = pipe(PROMPT, video=video, mask=mask, generator=seeded(0), **SIZE).frames
    assert frames.shape == (1, 4, 16, 16, 3)
    kept = mask == 0
    assert psnr(frames[0][:, kept], video[:, kept]) > 60
    assert psnr(frames[0][:, ~kept], video[:, ~kept]) < 30  # the masked region is generated


def test_cinemagraph_keeps_the_image_outside_the_mask(pipe, image):
    mask = box_mask()
    frames = pipe(PROMPT, image=image, mask=mask, num_frames=4, generator=seeded(0), **SIZE).frames
    still = mask == 0
    for frame in frames[0]:
        assert psnr(frame[still], image[still]) > 60
    assert psnr(frames[0, 0], image) > 60  # the first frame is the image itself
    assert np.abs(frames[0, 1:][:, ~still] - image[~still]).mean() > 0.05  # inside: generated


def test_sdedit_distance_grows_with_strength(pipe, video):
    distances = [
        np.abs(
            pipe(
                PROMPT,
                video=video,
                strength=s,
                generator=seeded(0),
                height=16,
                width=16,
                num_inference_steps=10,
            ).frames[0]
            - video
        ).mean()
        for s in (0.1, 0.5, 1.0)
    ]
    assert distances[0] < distances[1] < distances[2]


def test_sdedit_works_with_a_text_to_video_model(video):
    pipe = LumierePipeline.from_stunet(tiny_stunet())
    pipe.set_progress_bar_config(disable=True)
    frames = pipe(PROMPT, video=video, strength=0.5, generator=seeded(0), **SIZE).frames
    assert frames.shape == (1, 4, 16, 16, 3)
    with pytest.raises(ValueError, match="needs a conditional model"):
        pipe(PROMPT, image=video[0], num_frames=4, generator=seeded(0), **SIZE)


def test_conditioning_is_deterministic_and_batch_invariant(pipe, image):
    one = pipe(PROMPT, image=image, num_frames=4, generator=seeded(3), **SIZE).frames
    two = pipe(
        [PROMPT, "a blue square"], image=image, num_frames=4, generator=[seeded(3), seeded(4)], **SIZE
    ).frames
    np.testing.assert_allclose(two[0], one[0], atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mask=box_mask()), "mask: needs video \\(inpainting\\) or image \\(cinemagraph\\)"),
        (dict(image="IMAGE", video="VIDEO"), "video: not allowed with image: give one"),
        (dict(image="IMAGE", strength=0.5), "strength: applies to video-to-video only: video without mask"),
        (dict(video="VIDEO", strength=1.5), r"strength=1.5: must be in \(0, 1\]"),
        (dict(video="VIDEO", strength=0.0), r"strength=0.0: must be in \(0, 1\]"),
        (dict(video="VIDEO", mask=np.zeros((3, 16, 16))), r"mask has shape \(3, 16, 16\).*\(4, 16, 16\)"),
        (dict(video="VIDEO", mask=np.zeros((8, 8))), r"mask has shape \(8, 8\).*\(16, 16\)"),
        (dict(video="VIDEO", mask=np.zeros((16, 16))), "mask is all zero"),
        (dict(video="VIDEO", mask=np.ones((16, 16))), "mask is all one"),
        (dict(image="IMAGE", mask=np.ones((16, 16))), "mask is all one"),
        (dict(video="VIDEO", num_frames=8), "num_frames=8: must match the video, which has 4 frames"),
        (dict(image=np.zeros((16, 16, 5))), r"image must be \[h, w\]"),
        (dict(video=np.zeros((16, 16, 3))), r"video must be \[f, h, w, 3\]"),
        (dict(image=np.full((16, 16, 3), 2.0)), r"values in \[0, 1\]"),
    ],
)
def test_bad_conditioning_inputs(pipe, image, video, kwargs, match):
    named = {"IMAGE": image, "VIDEO": video}
    kwargs = {k: named[v] if isinstance(v, str) else v for k, v in kwargs.items()}
    kwargs.setdefault("num_frames", None)
    with pytest.raises(ValueError, match=match):
        pipe(PROMPT, generator=seeded(0), **SIZE, **kwargs)


def test_input_forms_and_conversions(tmp_path, image):
    uint8 = (image * 255).round().astype(np.uint8)
    reference = load_image(uint8, 16, 16)
    PIL.Image.fromarray(uint8).save(tmp_path / "image.png")
    for form in (PIL.Image.fromarray(uint8), tmp_path / "image.png", str(tmp_path / "image.png")):
        torch.testing.assert_close(load_image(form, 16, 16), reference)
    rgba = np.concatenate([uint8, np.full((16, 16, 1), 7, np.uint8)], axis=-1)
    torch.testing.assert_close(load_image(rgba, 16, 16), reference)  # alpha dropped
    gray = load_image(uint8[..., 0], 16, 16)
    torch.testing.assert_close(gray[1], gray[0])  # grayscale repeated to RGB
    with pytest.warns(UserWarning, match="resized to 16x16"):
        assert load_image(np.zeros((20, 24, 3), np.uint8), 16, 16).shape == (3, 16, 16)
    frames = [PIL.Image.fromarray(uint8)] * 3
    assert load_video(frames, 16, 16).shape == (3, 3, 16, 16)
    soft = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    mask = load_mask(soft, 3, 16, 16)
    assert mask.shape == (3, 16, 16) and set(mask.unique().tolist()) == {0.0, 1.0}
    assert mask[0].flatten()[127] == 0 and mask[0].flatten()[128] == 1  # thresholded at 0.5
    np.save(tmp_path / "mask.npy", np.stack([soft] * 3))
    torch.testing.assert_close(load_mask(tmp_path / "mask.npy", 3, 16, 16), mask)
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    with pytest.raises(ValueError, match="not a readable video"):
        load_video(tmp_path / "broken.mp4", 16, 16)
    with pytest.raises(ValueError, match="not a readable image"):
        load_image(tmp_path / "broken.mp4", 16, 16)


# ----- stylised generation (Sec. 4.1) ------------------------------------------------------------


def test_blend_weights_interpolates_the_spatial_weights_only():
    original = randomise(build_conditional_stunet(tiny_stunet()), 3)
    styled = randomise(build_unet2d("tiny"), 4)
    before = {k: v.clone() for k, v in original.state_dict().items()}
    temporal = {id(p) for p in original.temporal_parameters()}
    temporal_names = {n for n, p in original.named_parameters() if id(p) in temporal}
    styled_state = {stunet_key(k): v for k, v in styled.state_dict().items()}
    for alpha in (0.0, 0.5, 1.0):
        blended = blend_weights(original, styled, alpha).state_dict()
        for key, value in blended.items():
            if key == "conv_in.weight":
                continue  # widened: checked below
            if key in temporal_names or key not in styled_state:
                torch.testing.assert_close(value, before[key])
            else:
                expected = alpha * styled_state[key] + (1 - alpha) * before[key]
                torch.testing.assert_close(value, expected)
        conv = blended["conv_in.weight"]
        torch.testing.assert_close(
            conv[:, :3],
            alpha * styled_state["conv_in.weight"] + (1 - alpha) * before["conv_in.weight"][:, :3],
        )
        torch.testing.assert_close(conv[:, 3:], before["conv_in.weight"][:, 3:])  # conditioning channels kept
    for key, value in original.state_dict().items():
        torch.testing.assert_close(value, before[key])  # the original is untouched
    with pytest.raises(ValueError, match=r"alpha=1.5: must be in \[0, 1\]"):
        blend_weights(original, styled, 1.5)
    with pytest.raises(ValueError, match="same image U-Net"):
        blend_weights(original, build_unet2d("tiny", block_out_channels=(16, 24)), 0.5)


def test_extract_image_model_inverts_inflation(tmp_path):
    unet = randomise(build_unet2d("tiny"), 5)
    stunet = build_conditional_stunet(STUNet.from_unet2d(unet, **STUNET_PRESETS["tiny"]))
    extracted = extract_image_model(stunet)
    for key, value in unet.state_dict().items():
        torch.testing.assert_close(extracted.state_dict()[key], value)
    extracted.save_pretrained(tmp_path / "style" / "unet")
    loaded = load_style(tmp_path / "style")
    torch.testing.assert_close(loaded.state_dict()["conv_out.weight"], unet.state_dict()["conv_out.weight"])
    with pytest.raises(FileNotFoundError, match="holds no styled model"):
        load_style(tmp_path)


def test_complement_style():
    pixels = torch.tensor([[1.0, -1.0, -1.0], [-1.0, -1.0, -1.0], [0.2, 0.2, 0.2], [1.0, 1.0, -1.0]]).T
    styled = complement_colours(pixels[:, :, None, None])[:, :, 0, 0].T
    torch.testing.assert_close(styled[0], torch.tensor([-1.0, 1.0, 1.0]))  # red -> cyan
    torch.testing.assert_close(styled[1:3], pixels.T[1:3])  # greys unchanged
    torch.testing.assert_close(styled[3], torch.tensor([-1.0, -1.0, 1.0]))  # yellow -> blue
    shapes = MovingShapes(length=2, num_frames=1, resolution=16, seed=0, mode="image")
    item = StyledDataset(shapes, "complement")[0]
    torch.testing.assert_close(complement_colours(item["video"]), shapes[0]["video"])  # an involution
    assert item["caption"] == shapes[0]["caption"]
    with pytest.raises(ValueError, match="unknown style"):
        StyledDataset(shapes, "sepia")


# ----- training stages ----------------------------------------------------------------------------


def test_conditional_stage_and_style_fine_tune_train_and_export(tmp_path, image):
    from lumiere.config import config_from_dict
    from lumiere.train import train

    def config(stage: str, name: str, **extra):
        data = {
            "stage": stage,
            "output_dir": str(tmp_path / name),
            "model": {"preset": "tiny", **extra.pop("model", {})},
            "data": {"resolution": 16, "num_frames": 4, **extra.pop("data", {})},
            "optim": {"batch_size": 4, "max_steps": 2, "warmup_steps": 1},
            "log_every": 1,
            "checkpoint_every": 100,
            "sample_steps": 2,
        }
        return config_from_dict({**data, **extra})

    image_model = train(config("t2i", "t2i")).model_dir
    conditional = train(
        config("conditional", "cond", model={"init_from": str(image_model), "freeze_spatial": False})
    ).model_dir
    pipe = LumierePipeline.from_pretrained(conditional)
    pipe.set_progress_bar_config(disable=True)
    assert is_conditional_stunet(pipe.stunet)
    frames = pipe(PROMPT, image=image, num_frames=4, generator=seeded(0), **SIZE).frames
    assert frames.shape == (1, 4, 16, 16, 3) and psnr(frames[0, 0], image) > 60

    # Style fine-tune of the conditional STUNet's own image model, then blended back in.
    style = train(
        config("t2i", "style", model={"init_from": str(conditional)}, data={"style": "complement"})
    ).model_dir
    styled = load_style(style)
    for alpha in (0.0, 1.0):
        blended = blend_weights(pipe.stunet, styled, alpha)
        assert is_conditional_stunet(blended)
    same = blend_weights(pipe.stunet, styled, 0.0)
    for (name, a), b in zip(pipe.stunet.state_dict().items(), same.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    with pytest.raises(ValueError, match="data.style must be null or one of"):
        config("t2i", "bad", data={"style": "sepia"})


# ----- command line ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_conditional(tmp_path_factory, pipe):
    path = tmp_path_factory.mktemp("conditional_pipeline")
    pipe.save_pretrained(path)
    files = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    PIL.Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(files / "image.png")
    PIL.Image.fromarray((box_mask() * 255).astype(np.uint8)).save(files / "mask.png")
    from lumiere.data.video_io import write_video

    write_video(files / "video.mp4", rng.random((4, 16, 16, 3)).astype(np.float32), fps=8)
    extract_image_model(pipe.stunet).save_pretrained(files / "style" / "unet")
    return path, files


@pytest.mark.parametrize(
    "options",
    [
        ["--image", "{image.png}"],
        ["--image", "{image.png}", "--mask", "{mask.png}"],
        ["--video", "{video.mp4}", "--mask", "{mask.png}"],
        ["--video", "{video.mp4}", "--strength", "0.5"],
        ["--style", "{style}", "--alpha", "0.5"],
    ],
)
def test_cli_conditioning_options(saved_conditional, tmp_path, options):
    from lumiere.cli import main
    from lumiere.data.video_io import read_video

    model, files = saved_conditional
    options = [str(files / o[1:-1]) if o.startswith("{") else o for o in options]
    out = tmp_path / "out.mp4"
    argv = ["generate", PROMPT, "--model", str(model), "-o", str(out), "--steps", "2", *options]
    if "--video" not in options:
        argv += ["--frames", "4"]
    assert main(argv) == 0
    frames, _ = read_video(out)
    assert frames.shape == (4, 16, 16, 3)


@pytest.mark.parametrize(
    "options, message",
    [
        (["--alpha", "0.5"], "--alpha: needs --style"),
        (
            ["--mask", "{mask.png}"],
            r"argument --mask: needs --video \(inpainting\) or --image \(cinemagraph\)$",
        ),
        (["--video", "{video.mp4}", "--strength", "1.5"], r"--strength: must be in \(0, 1\]"),
        (
            ["--image", "{image.png}", "--strength", "0.5"],
            "argument --strength: applies to video-to-video only: --video without --mask$",
        ),
        (
            ["--image", "{image.png}", "--video", "{video.mp4}"],
            "argument --video: not allowed with --image: give one",
        ),
        (["--image", "{nothing.png}"], "--image: no file"),
        (
            ["--video", "{video.mp4}", "--frames", "8"],
            r"argument --frames: must match the video, which has 4 frames \(leave --frames out .*\), got 8",
        ),
    ],
)
def test_cli_bad_conditioning_options_exit_2(saved_conditional, tmp_path, capsys, options, message):
    import re

    from lumiere.cli import main

    model, files = saved_conditional
    options = [str(files / o[1:-1]) if o.startswith("{") else o for o in options]
    out = tmp_path / "out.mp4"
    with pytest.raises(SystemExit) as info:
        main(["generate", PROMPT, "--model", str(model), "-o", str(out), "--steps", "2", *options])
    assert info.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not out.exists()


@pytest.mark.parametrize("task", ["i2v", "inpaint", "cinemagraph", "sdedit"])
def test_evaluate_conditional_reports_each_task(pipe, task):
    from lumiere.eval.conditional import SDEDIT_STRENGTHS, evaluate_conditional

    result = evaluate_conditional(pipe, task, count=2, num_frames=4, num_inference_steps=2)
    assert result["task"] == task and result["count"] == 2
    if task == "sdedit":
        assert [float(s) for s in result["strengths"]] == list(SDEDIT_STRENGTHS)
        assert all(0 <= r["distance_to_input"] <= 1 for r in result["strengths"].values())
    else:
        psnr_key = next(k for k in result if k.startswith("psnr_"))
        # The random untrained model reproduces nothing: its own PSNR (no pasting) is low.
        assert result[psnr_key]["mean"] < 30 and result[psnr_key]["share_at_least_30"] == 0
    with pytest.raises(ValueError, match="task='t2v'"):
        evaluate_conditional(pipe, "t2v", count=2)


def test_evaluate_style_rows_per_alpha(pipe):
    from lumiere.eval.style import evaluate_style

    itself = extract_image_model(pipe.stunet)  # blending a model with its own weights changes nothing
    result = evaluate_style(pipe, itself, alphas=(0.0, 1.0), count=2, num_frames=4, num_inference_steps=2)
    rows = result["alphas"]
    assert list(rows) == ["0.0", "1.0"]
    assert rows["0.0"] == rows["1.0"]
    original = pipe.stunet
    evaluate_style(
        pipe, randomise(build_unet2d("tiny"), 9), alphas=(1.0,), count=1, num_frames=4, num_inference_steps=1
    )
    assert pipe.stunet is original  # the pipeline gets its own weights back
