"""The web page (`lumiere serve`): request handlers in plain Python, the Gradio app, and one
end-to-end run in headless Chromium (Debian's /usr/bin/chromium driven by Playwright).

The handlers are tested on the tiny pipelines (text-to-video, and conditional: image, mask and
video arguments) and, for what reaches the pipeline, on a stand-in that records its calls.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest
import torch

from lumiere.data.video_io import read_video, write_video
from lumiere.models.conditional import build_conditional_stunet
from lumiere.models.presets import STUNET_PRESETS, build_unet2d
from lumiere.models.stunet import STUNet
from lumiere.pipelines import LumierePipeline
from lumiere.web import app
from lumiere.web.app import (
    MODES,
    Caps,
    Gallery,
    GenerationTimeout,
    InputError,
    Result,
    Settings,
    Studio,
    first_frame,
    fit_image,
    load_video,
    mode_support,
    sdedit_steps,
)

PROMPT = "a red circle moving right on a black background"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def tiny_pipe(conditional: bool = False) -> LumierePipeline:
    """The tiny text-to-video pipeline (16x16, frames in multiples of 2), or its conditional model
    (widened to take the masked clip and the mask, Sec. 4)."""
    torch.manual_seed(0)
    stunet = STUNet.from_unet2d(build_unet2d("tiny"), **STUNET_PRESETS["tiny"]).eval()
    if conditional:
        stunet = build_conditional_stunet(stunet)
    pipe = LumierePipeline.from_stunet(stunet)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe() -> LumierePipeline:
    return tiny_pipe()


@pytest.fixture(scope="module")
def conditional_pipe() -> LumierePipeline:
    return tiny_pipe(conditional=True)


class ConditionalPipe:
    """Stands in for a LumierePipeline with image / mask / video conditioning and a 7-channel
    STUNet (16x16, frames in multiples of 2): records its calls, returns grey clips."""

    def __init__(self, fail: Exception | None = None):
        self.stunet = SimpleNamespace(
            in_channels=7,
            out_channels=3,
            noise_level_embedding=None,
            temporal_factor=2,
            spatial_factor=2,
            config=SimpleNamespace(unet_config={"sample_size": 16}),
        )
        self.ssr = None
        self.config = SimpleNamespace(_name_or_path="conditional stand-in")
        self.calls: list[dict] = []
        self.fail = fail

    def __call__(self, prompt, num_frames=16, height=None, width=None, num_inference_steps=25,
                 guidance_scale=5.0, negative_prompt=None, generator=None, callback=None,
                 output_type="np", image=None, video=None, mask=None, strength=None):  # fmt: skip
        self.calls.append(dict(prompt=prompt, num_frames=num_frames, height=height, width=width,
                               image=image, video=video, mask=mask, strength=strength,
                               negative_prompt=negative_prompt))  # fmt: skip
        if self.fail is not None:
            raise self.fail
        for step in range(num_inference_steps):
            callback(step, torch.tensor(999 - step), torch.zeros(1))
        return SimpleNamespace(frames=np.full((1, num_frames, height, width, 3), 0.5, np.float32))


def settings(studio: Studio, frames=2, steps=2, guidance=1.0, seed=0) -> Settings:
    return studio.settings(frames, steps, guidance, seed)


def png(path: Path, size=(40, 20), color=(255, 0, 0), mode="RGB") -> Path:
    PIL.Image.new(mode, size, color).save(path)
    return path


def mp4(path: Path, frames=6, size=(24, 32)) -> Path:
    clip = np.random.default_rng(0).random((frames, *size, 3)).astype(np.float32)
    return write_video(path, clip, fps=8)


def painted_layer(path: Path, size=(40, 20), box=(0, 0, 20, 20)) -> Path:
    """A transparent layer with one opaque rectangle (what the image editor's brush leaves)."""
    layer = PIL.Image.new("RGBA", size, (0, 0, 0, 0))
    layer.paste((255, 106, 0, 255), box)
    layer.save(path)
    return path


# ----- text-to-video through the handlers -----------------------------------------------------


def test_text_to_video_writes_mp4_with_progress_and_gallery(pipe, tmp_path):
    studio = Studio(pipe, Caps(gallery_size=2), output_dir=tmp_path)
    seen = []
    result = studio.text_to_video(PROMPT, "", settings(studio, frames=4), progress=lambda *a: seen.append(a))
    assert seen == [(0, 2), (1, 2), (2, 2)]  # (steps done, total), once before and after each step
    frames, fps = read_video(result.path)
    assert frames.shape == (4, 16, 16, 3) and result.shape == (4, 16, 16)
    assert fps == pytest.approx(8.0)
    assert result.path.parent == tmp_path and result.path.name.endswith(
        "a-red-circle-moving-right-on-a-black.mp4"
    )
    assert studio.gallery.items() == [(str(result.path), result.caption)]
    assert "4 frames at 16×16" in result.summary and "seed 0" in result.summary


def test_seed_fixes_the_clip(pipe, tmp_path):
    studio = Studio(pipe, Caps(), output_dir=tmp_path)
    clips = [
        read_video(studio.text_to_video(PROMPT, None, settings(studio, seed=s)).path)[0] for s in (3, 3, 4)
    ]
    np.testing.assert_array_equal(clips[0], clips[1])
    assert np.abs(clips[0].astype(int) - clips[2].astype(int)).max() > 2


def test_time_out_stops_generation_and_the_next_request_runs(pipe, tmp_path):
    studio = Studio(pipe, Caps(timeout_s=1e-9), output_dir=tmp_path)
    with pytest.raises(GenerationTimeout, match="longer than 1e-09 s.*after 1 of 2 steps"):
        studio.text_to_video(PROMPT, None, settings(studio))
    assert len(studio.gallery) == 0 and not list(tmp_path.iterdir())
    patient = Studio(pipe, Caps(), output_dir=tmp_path)  # same pipeline, still usable
    assert patient.text_to_video(PROMPT, None, settings(patient)).path.is_file()


# ----- caps and checks ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, match",
    [
        (dict(num_frames=3), "Frames must be a multiple of 2 from 2 to 8; got 3"),
        (dict(num_frames=10), "Frames must be a multiple of 2 from 2 to 8; got 10"),
        (dict(num_frames=2.5), "Frames must be a whole number"),
        (dict(num_inference_steps=0), "Steps must be from 1 to 5; got 0"),
        (dict(num_inference_steps=6), "Steps must be from 1 to 5; got 6"),
        (dict(guidance_scale=-1), "Guidance must be from 0 to 20"),
        (dict(guidance_scale=float("nan")), "Guidance must be from 0 to 20"),
        (dict(seed=-1), "Seed must be from 0"),
        (dict(seed="x"), "Seed must be a whole number"),
        (dict(height=15), "Height must be a multiple of 2 from 2 to 32; got 15"),
        (dict(width=34), "Width must be a multiple of 2 from 2 to 32; got 34"),
    ],
)
def test_settings_outside_the_caps_are_refused(values, match, tmp_path):
    studio = Studio(ConditionalPipe(), Caps(max_frames=9, max_steps=5, max_size=33), output_dir=tmp_path)
    request = dict(num_frames=2, num_inference_steps=2, guidance_scale=5.0, seed=0) | values
    with pytest.raises(InputError, match=match):
        studio.settings(**request)


def test_settings_defaults_follow_the_model_and_the_caps(tmp_path):
    studio = Studio(ConditionalPipe(), Caps(max_frames=9, max_steps=5, max_size=12), output_dir=tmp_path)
    assert (studio.max_frames, studio.default_frames, studio.default_steps) == (8, 8, 5)
    assert (studio.default_height, studio.default_width, studio.max_size) == (12, 12, 12)  # 16 capped
    assert studio.settings(4.0, 2.0, 3, None) == Settings(4, 2, 3.0, 0, 12, 12)  # widgets send floats


@pytest.mark.parametrize("prompt, match", [("", "Write a prompt"), ("   ", "Write a prompt"),
                                           (None, "Write a prompt"), ("x" * 11, "11 characters; the limit is 10")])  # fmt: skip
def test_prompts_are_checked(prompt, match, tmp_path):
    pipe = ConditionalPipe()
    studio = Studio(pipe, Caps(max_prompt_chars=10), output_dir=tmp_path)
    with pytest.raises(InputError, match=match):
        studio.text_to_video(prompt, None, settings(studio))
    assert pipe.calls == []


def test_caps_reject_nonsense():
    with pytest.raises(ValueError, match="max_frames=0"):
        Caps(max_frames=0)
    with pytest.raises(ValueError, match="timeout_s=0"):
        Caps(timeout_s=0)


def test_pipeline_value_errors_reach_the_page(tmp_path):
    studio = Studio(
        ConditionalPipe(fail=ValueError("num_frames=2: too short for this model")), output_dir=tmp_path
    )
    with pytest.raises(InputError, match="too short for this model"):
        studio.text_to_video(PROMPT, None, settings(studio))


# ----- gallery --------------------------------------------------------------------------------


def test_gallery_keeps_the_newest_and_deletes_older_files(tmp_path):
    gallery = Gallery(capacity=2)
    results = []
    for i in range(3):
        path = tmp_path / f"{i}.mp4"
        path.write_bytes(b"clip")
        results.append(Result(path, "text", f"prompt {i}", Settings(2, 2, 1.0, i, 16, 16), (2, 16, 16), 0.1))
        gallery.add(results[-1])
    assert [r.prompt for r in gallery.results()] == ["prompt 2", "prompt 1"]
    assert not results[0].path.exists() and results[1].path.exists()
    assert gallery.items()[0] == (str(results[2].path), "Text to video: prompt 2 (seed 2)")


# ----- which modes the pipeline supports ------------------------------------------------------


def test_mode_support_of_a_text_to_video_model(pipe, tmp_path):
    support = mode_support(pipe)
    assert support["text"] is None and support["video"] is None  # SDEdit needs no conditioning channels
    for mode in ("image", "cinemagraph", "inpaint"):
        assert support[mode].startswith(f"{MODES[mode]} needs a conditional model")
        assert "--model" in support[mode]
    studio = Studio(pipe, output_dir=tmp_path)
    with pytest.raises(InputError, match="Image to video needs a conditional model"):
        studio.image_to_video(PROMPT, None, np.zeros((16, 16, 3)), settings(studio))
    assert len(studio.gallery) == 0


def test_mode_support_of_a_conditional_model(conditional_pipe):
    assert set(mode_support(conditional_pipe).values()) == {None}
    assert set(mode_support(ConditionalPipe()).values()) == {None}
    widened = ConditionalPipe()
    widened.stunet.in_channels = 6  # an SSR-like input (clip + low-res clip), not (C, M)
    assert mode_support(widened)["inpaint"] is not None


# ----- conditional modes: what reaches the pipeline -------------------------------------------


def test_image_to_video_centre_crops_and_resizes(tmp_path):
    pipe = ConditionalPipe()
    studio = Studio(pipe, output_dir=tmp_path / "out")
    wide = PIL.Image.new("RGB", (40, 20), (0, 0, 255))
    wide.paste((0, 255, 0), (10, 0, 30, 20))  # the centred square is green, the sides blue
    wide.save(tmp_path / "wide.png")
    studio.image_to_video(PROMPT, None, str(tmp_path / "wide.png"), settings(studio, frames=4))
    image = pipe.calls[-1]["image"]
    assert image.shape == (16, 16, 3) and image.dtype == np.float32
    np.testing.assert_allclose(image[..., 1], 1.0, atol=0.02)  # only the green centre is kept
    assert pipe.calls[-1]["num_frames"] == 4


def test_transparent_pixels_become_white(tmp_path):
    clear = png(tmp_path / "clear.png", size=(16, 16), color=(0, 0, 0, 0), mode="RGBA")
    pipe = ConditionalPipe()
    studio = Studio(pipe, output_dir=tmp_path / "out")
    studio.image_to_video(PROMPT, None, clear, settings(studio))
    np.testing.assert_allclose(pipe.calls[-1]["image"], 1.0)


def test_cinemagraph_mask_is_the_painted_region(tmp_path):
    pipe = ConditionalPipe()
    studio = Studio(pipe, output_dir=tmp_path / "out")
    editor = {
        "background": str(png(tmp_path / "still.png", size=(40, 20))),
        "layers": [
            str(painted_layer(tmp_path / "paint.png", box=(10, 0, 20, 20)))
        ],  # left half of the centre
        "composite": None,
    }
    studio.cinemagraph(PROMPT, None, editor, settings(studio))
    call = pipe.calls[-1]
    assert call["image"].shape == (16, 16, 3) and call["mask"].shape == (16, 16)
    assert set(np.unique(call["mask"])) == {0.0, 1.0}
    np.testing.assert_array_equal(call["mask"][:, :8], 1.0)
    np.testing.assert_array_equal(call["mask"][:, 8:], 0.0)


def test_inpainting_and_video_to_video_take_the_first_frames(tmp_path):
    pipe = ConditionalPipe()
    studio = Studio(pipe, output_dir=tmp_path / "out")
    video = mp4(tmp_path / "in.mp4", frames=6)
    editor = {"background": str(png(tmp_path / "first.png", size=(32, 24))),  # the video's first frame
              "layers": [str(painted_layer(tmp_path / "hole.png", size=(32, 24), box=(0, 0, 32, 12)))]}  # fmt: skip
    studio.inpaint(PROMPT, None, str(video), editor, settings(studio, frames=4))
    call = pipe.calls[-1]
    assert call["video"].shape == (4, 16, 16, 3) and call["mask"].shape == (4, 16, 16)
    np.testing.assert_array_equal(call["mask"][:, :8], 1.0)  # the top half, in every frame
    np.testing.assert_array_equal(call["mask"][:, 8:], 0.0)

    studio.video_to_video(PROMPT, "blurry", str(video), 0.6, settings(studio, frames=6))
    call = pipe.calls[-1]
    assert call["video"].shape == (6, 16, 16, 3) and call["strength"] == 0.6
    assert call["negative_prompt"] == "blurry"
    assert [r.mode for r in studio.gallery.results()] == ["video", "inpaint"]


# ----- bad uploads: a message, and the next request still works ------------------------------


def bad_uploads(tmp_path: Path) -> list[tuple[str, dict, str]]:
    """(handler, arguments, message) for uploads the server must refuse."""
    text = tmp_path / "notes.png"
    text.write_text("not an image at all")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(mp4(tmp_path / "good.mp4").read_bytes()[:300])  # a truncated file
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(np.random.default_rng(1).bytes(5000))
    big = png(tmp_path / "big.png", size=(300, 300))  # over the 1 kB cap below once noisy
    PIL.Image.fromarray(np.random.default_rng(2).integers(0, 255, (300, 300, 3), np.uint8)).save(big)
    wide = png(tmp_path / "wide.png", size=(200, 100))  # over the pixel cap below
    short = mp4(tmp_path / "short.mp4", frames=2)
    good = str(tmp_path / "good.mp4")
    still = str(png(tmp_path / "still.png"))
    paint = [str(painted_layer(tmp_path / "paint.png"))]
    blank = [str(painted_layer(tmp_path / "blank.png", box=(0, 0, 0, 0)))]
    full = [str(painted_layer(tmp_path / "full.png", box=(0, 0, 40, 20)))]
    whole = "covers the whole image, so nothing of it would be kept; leave part of it unpainted or use"
    return [
        ("image_to_video", dict(image=str(text)), "not an image this server can read"),
        ("image_to_video", dict(image=str(big)), "this server takes files up to"),
        ("image_to_video", dict(image=str(wide)), "200×100 pixels; this server takes images up to 10,000"),
        ("image_to_video", dict(image=None), "Upload an image first"),
        ("image_to_video", dict(image=str(tmp_path / "gone.png")), "upload is missing"),
        ("cinemagraph", dict(editor=None), "Upload an image first"),
        ("cinemagraph", dict(editor={"background": still, "layers": []}), "Paint the region to animate"),
        ("cinemagraph", dict(editor={"background": still, "layers": blank}), "Paint the region to animate"),
        ("cinemagraph", dict(editor={"background": str(text), "layers": paint}), "not an image"),
        (
            "inpaint",
            dict(video=str(broken), editor={"background": still, "layers": paint}),
            "cannot be decoded",
        ),
        (
            "inpaint",
            dict(video=str(short), editor={"background": still, "layers": paint}),
            "has 2 frames, fewer than the 4",
        ),
        ("cinemagraph", dict(editor={"background": still, "layers": full}), whole + " Image to video"),
        ("inpaint", dict(video=good, editor={"background": still, "layers": []}), "Paint the region to fill"),
        (
            "inpaint",
            dict(video=good, editor={"background": still, "layers": full}),
            whole + " Video to video",
        ),
        ("video_to_video", dict(video=str(noise), strength=0.5), "cannot be decoded"),
        ("video_to_video", dict(video=str(text), strength=0.5), "cannot be decoded"),
        ("video_to_video", dict(video=None, strength=0.5), "Upload a video first"),
        ("video_to_video", dict(video=str(short), strength=0.0), "Strength must be in"),
    ]


def test_bad_uploads_give_a_message_and_the_server_goes_on(tmp_path):
    pipe = ConditionalPipe()
    studio = Studio(
        pipe, Caps(max_upload_bytes=100_000, max_upload_pixels=10_000), output_dir=tmp_path / "out"
    )
    for handler, arguments, match in bad_uploads(tmp_path):
        with pytest.raises(InputError, match=match) as refused:
            getattr(studio, handler)(PROMPT, None, settings=settings(studio, frames=4), **arguments)
        assert str(tmp_path) not in str(refused.value)  # no server paths on the page
    assert pipe.calls == []  # refused before any generation
    good = studio.image_to_video(PROMPT, None, str(png(tmp_path / "ok.png")), settings(studio))
    assert good.path.is_file() and len(pipe.calls) == 1


def test_fit_image_mask_is_binary():
    mask = PIL.Image.fromarray(np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (32, 1)))
    fitted = fit_image(mask, 8, 8, mask=True)
    assert fitted.shape == (8, 8) and set(np.unique(fitted)) == {0.0, 1.0}


# ----- conditional modes on the tiny conditional model ----------------------------------------


@pytest.fixture
def written(monkeypatch) -> list[np.ndarray]:
    """The clips the handlers write, as handed to write_video (before mp4 compression)."""
    clips = []

    def spy(path, video, fps=8.0):
        clips.append(np.asarray(video))
        return write_video(path, video, fps=fps)

    monkeypatch.setattr(app, "write_video", spy)
    return clips


def test_image_to_video_starts_with_the_uploaded_image(conditional_pipe, written, tmp_path):
    picture = PIL.Image.new("RGB", (16, 16), (200, 40, 0))
    picture.paste((0, 60, 220), (0, 8, 16, 16))  # orange top, blue bottom
    picture.save(tmp_path / "first.png")
    expected = np.asarray(picture, dtype=np.float32) / 255
    studio = Studio(conditional_pipe, output_dir=tmp_path / "out")
    seen = []
    result = studio.image_to_video(PROMPT, None, str(tmp_path / "first.png"), settings(studio, frames=4),
                                   progress=lambda *a: seen.append(a))  # fmt: skip
    assert seen == [(0, 2), (1, 2), (2, 2)]
    (clip,) = written
    assert clip.shape == (4, 16, 16, 3) and result.shape == (4, 16, 16)
    torch.testing.assert_close(clip[0], expected, atol=1e-6, rtol=0)  # the image itself
    assert np.abs(clip[1:] - expected).max() > 0.1  # the following frames are generated
    played, _ = read_video(result.path)
    assert played.shape == (4, 16, 16, 3)
    assert np.abs(played[0] / 255 - expected).mean() < 0.03  # through H.264
    assert studio.gallery.items()[0][1].startswith("Image to video: ")


def test_cinemagraph_moves_only_the_painted_region(conditional_pipe, written, tmp_path):
    still = png(tmp_path / "still.png", size=(16, 16), color=(30, 90, 200))
    expected = np.asarray(PIL.Image.open(still), dtype=np.float32) / 255
    layer = painted_layer(tmp_path / "paint.png", size=(16, 16), box=(0, 0, 8, 16))  # the left half
    studio = Studio(conditional_pipe, output_dir=tmp_path / "out")
    studio.cinemagraph(PROMPT, None, {"background": str(still), "layers": [str(layer)], "composite": None},
                       settings(studio, frames=4))  # fmt: skip
    (clip,) = written
    assert clip.shape == (4, 16, 16, 3)
    torch.testing.assert_close(clip[0], expected, atol=1e-6, rtol=0)  # the first frame is the image
    right = np.repeat(expected[None, :, 8:], 4, axis=0)
    torch.testing.assert_close(clip[:, :, 8:], right, atol=1e-6, rtol=0)  # unpainted: still in every frame
    assert np.abs(clip[1:, :, :8] - expected[:, :8]).max() > 0.1  # painted: animated


def test_inpainting_keeps_the_unpainted_region(conditional_pipe, written, tmp_path):
    video = mp4(tmp_path / "in.mp4", frames=6, size=(16, 16))
    PIL.Image.fromarray(first_frame(video, Caps())).save(tmp_path / "first.png")  # what the editor shows
    hole = painted_layer(tmp_path / "hole.png", size=(16, 16), box=(0, 0, 16, 8))  # the top half
    studio = Studio(conditional_pipe, output_dir=tmp_path / "out")
    editor = {"background": str(tmp_path / "first.png"), "layers": [str(hole)], "composite": None}
    result = studio.inpaint(PROMPT, None, str(video), editor, settings(studio, frames=4))
    (clip,) = written
    known = load_video(video, 4, 16, 16, Caps())  # the 4 frames the handler read
    assert clip.shape == (4, 16, 16, 3) and result.mode == "inpaint"
    torch.testing.assert_close(clip[:, 8:], known[:, 8:], atol=1e-6, rtol=0)  # kept, in every frame
    assert np.abs(clip[:, :8] - known[:, :8]).max() > 0.1  # filled


def test_video_to_video_runs_on_a_text_only_model(pipe, written, tmp_path):
    studio = Studio(pipe, output_dir=tmp_path / "out")
    videos = [mp4(tmp_path / "a.mp4", frames=6, size=(16, 16)), tmp_path / "b.mp4"]
    write_video(videos[1], np.zeros((6, 16, 16, 3), np.float32), fps=8)
    seen = []
    result = studio.video_to_video(PROMPT, None, str(videos[0]), 0.5, settings(studio, frames=4, steps=4),
                                   progress=lambda *a: seen.append(a))  # fmt: skip
    assert seen == [(0, 2), (1, 2), (2, 2)]  # SDEdit runs the last half of the 4 steps
    assert result.shape == (4, 16, 16) and "4 steps · strength 0.5 ·" in result.summary
    seen.clear()
    studio.video_to_video(PROMPT, None, str(videos[1]), 0.3, settings(studio, frames=4, steps=4),
                          progress=lambda *a: seen.append(a))  # fmt: skip
    assert seen == [(0, 1), (1, 1)] and sdedit_steps(4, 0.3) == 1
    assert np.abs(written[0] - written[1]).max() > 0.1  # same seed, another video: another clip


def test_conditional_model_refuses_bad_uploads_and_goes_on(conditional_pipe, tmp_path):
    studio = Studio(
        conditional_pipe,
        Caps(max_upload_bytes=100_000, max_upload_pixels=10_000),
        output_dir=tmp_path / "out",
    )
    for handler, arguments, match in bad_uploads(tmp_path):
        with pytest.raises(InputError, match=match):
            getattr(studio, handler)(PROMPT, None, settings=settings(studio, frames=4), **arguments)
    assert len(studio.gallery) == 0 and not list((tmp_path / "out").iterdir())
    paint = {"background": str(tmp_path / "still.png"), "layers": [str(tmp_path / "paint.png")]}
    assert studio.cinemagraph(PROMPT, None, paint, settings(studio)).path.is_file()


# ----- the Gradio app -------------------------------------------------------------------------


def test_build_app_disables_tabs_the_model_cannot_run(pipe, tmp_path):
    gr = pytest.importorskip("gradio", reason="the web extra is not installed: pip install -e '.[web]'")
    from lumiere.web.ui import _errors_on_page, build_app

    demo = build_app(pipe, Caps(max_frames=8), output_dir=tmp_path)
    assert isinstance(demo, gr.Blocks)
    buttons = {b.elem_id: b for b in demo.blocks.values() if isinstance(b, gr.Button)}
    assert buttons["generate-text"].interactive is True
    for mode in ("image", "cinemagraph", "inpaint"):
        assert buttons[f"generate-{mode}"].interactive is False
    frames = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "frames")
    assert (frames.minimum, frames.maximum, frames.step) == (2, 8, 2)
    with pytest.raises(gr.Error, match="Write a prompt"), _errors_on_page():
        demo.studio.check_prompt("")
    assert "text-to-video only" in next(
        b.value for b in demo.blocks.values() if b.elem_id == "lumiere-header"
    )


def test_image_editor_values_reach_the_handlers(conditional_pipe, tmp_path, monkeypatch):
    """What Gradio's ImageEditor hands over (paths of PNGs whose alpha is the brush) is a mask."""
    gr = pytest.importorskip("gradio", reason="the web extra is not installed: pip install -e '.[web]'")
    from gradio.components.image_editor import EditorData
    from gradio.data_classes import FileData

    from lumiere.web.ui import _handlers, _show_first_frame, build_app

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    demo = build_app(conditional_pipe, Caps(max_frames=8), output_dir=tmp_path / "out")
    blocks = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    assert all(blocks[f"generate-{mode}"].interactive for mode in MODES)
    handlers = _handlers(demo.studio)
    numbers = (4, 2, 1.0, 0, 16, 16)  # frames, steps, guidance, seed, height, width

    # Cinemagraph: an uploaded image, a stroke on the canvas (a blob without a file name).
    still = FileData(path=str(png(tmp_path / "still.png", size=(32, 32))), orig_name="still.png")
    stroke = FileData(path=str(painted_layer(tmp_path / "stroke.png", size=(32, 32), box=(0, 0, 16, 32))))
    value = blocks["cinemagraph-input"].preprocess(
        EditorData(background=still, layers=[stroke], composite=still)
    )
    assert value["layers"][0].endswith(".png")  # lossless: format="png"
    path, summary, gallery = handlers["cinemagraph"](PROMPT, "", *numbers, value)
    assert (
        Path(path).is_file() and summary.startswith("Cinemagraph · 4 frames at 16×16") and len(gallery) == 1
    )
    unpainted = blocks["cinemagraph-input"].preprocess(
        EditorData(background=still, layers=[], composite=still)
    )
    with pytest.raises(gr.Error, match="Paint the region to animate"):
        handlers["cinemagraph"](PROMPT, "", *numbers, unpainted)

    # Inpainting: the video's first frame is put in the editor, the region painted on it.
    video = str(mp4(tmp_path / "in.mp4", frames=6, size=(32, 32)))
    shown = blocks["inpaint-mask"].postprocess(_show_first_frame(demo.studio)(video))
    value = blocks["inpaint-mask"].preprocess(EditorData(background=shown.background, layers=[stroke]))
    path, summary, _ = handlers["inpaint"](PROMPT, "", *numbers, video, value)
    assert summary.startswith("Inpainting · 4 frames at 16×16")
    (tmp_path / "notes.mp4").write_text("not a video")
    with pytest.raises(gr.Error, match="cannot be decoded"):
        handlers["inpaint"](PROMPT, "", *numbers, str(tmp_path / "notes.mp4"), value)


def test_cli_serve_options(tmp_path):
    from lumiere.cli import build_parser, main

    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.model, args.max_frames) == ("127.0.0.1", 7860, None, Caps().max_frames)
    with pytest.raises(SystemExit) as info:
        main(["serve", "--port", "70000"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["serve", "--help"])
    assert info.value.code == 0
    pytest.importorskip("gradio", reason="the web extra is not installed: pip install -e '.[web]'")
    assert main(["serve", "--model", str(tmp_path / "nowhere")]) == 2  # a message, not a traceback


# ----- end to end in headless Chromium --------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def lumiere_serve(model: Path, workdir: Path, *options: str):
    """``lumiere serve`` in a subprocess on a free loopback port; yields its URL."""
    port = _free_port()
    log = workdir / "server.log"
    env = os.environ | {"GRADIO_TEMP_DIR": str(workdir / "gradio"), "GRADIO_ANALYTICS_ENABLED": "False"}
    command = [sys.executable, "-m", "lumiere.cli", "serve", "--model", str(model), "--port", str(port),
               "--output-dir", str(workdir / "results"), *options]  # fmt: skip
    with open(log, "w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 240  # imports of torch, diffusers and gradio on a busy CPU
        while True:
            if server.poll() is not None:
                pytest.fail(f"lumiere serve exited with {server.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"lumiere serve did not answer on {url}:\n{log.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def save_artifact(path: Path) -> None:
    """Copy a file to $LUMIERE_TEST_ARTIFACTS (when set), where CI keeps it."""
    directory = os.environ.get("LUMIERE_TEST_ARTIFACTS")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(directory) / path.name)


@pytest.mark.slow
def test_browser_generates_a_video(tmp_path):
    if not CHROMIUM.is_file():
        pytest.skip(
            f"no Chromium at {CHROMIUM} (Debian's chromium package; .ci/run installs it with apt-get)"
        )
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
    )
    pytest.importorskip("gradio", reason="the web extra is not installed: pip install -e '.[web]'")
    model = tmp_path / "tiny"
    tiny_pipe(conditional=True).save_pretrained(model)
    screenshot = tmp_path / "web-image-to-video.png"
    start, timings = time.monotonic(), {}  # seconds from the start, printed for slow CI runs

    with lumiere_serve(model, tmp_path, "--max-frames", "8", "--max-steps", "4", "--max-upload-mb", "0.05") as url, \
            sync_api.sync_playwright() as playwright:  # fmt: skip
        timings["server up"] = time.monotonic() - start
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # a fresh --user-data-dir
            executable_path=str(CHROMIUM),
            headless=True,  # --headless
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            page.goto(url)
            page.wait_for_selector("#prompt textarea")
            timings["page loaded"] = time.monotonic() - start
            assert "conditional (image, mask)" in page.inner_text("#lumiere-header")

            # Generate without a prompt: a message, and the page keeps working.
            page.click("#generate-text")
            page.get_by_text("Write a prompt first").wait_for()

            for slider, value in (("frames", "4"), ("steps", "2")):
                box = page.locator(f"#{slider} input[type=number]")
                box.fill(value)
                box.press("Enter")
            page.fill("#prompt textarea", PROMPT)
            page.click("#generate-text")
            page.wait_for_function(
                "() => { const v = document.querySelector('#result-video video');"
                " return v && v.readyState >= 1 && v.duration > 0; }",
                timeout=180_000,
            )
            timings["video shown"] = time.monotonic() - start
            assert "4 frames at 16×16 · 2 steps" in page.inner_text("#result-summary")
            duration = page.evaluate("document.querySelector('#result-video video').duration")
            assert duration == pytest.approx(4 / 8, abs=0.13)  # 4 frames at 8 fps
            page.locator("#gallery").locator("video, img").first.wait_for()

            # The clip the page plays, as a file: 4 frames of 16x16.
            source = page.evaluate("document.querySelector('#result-video video').src")
            response = browser.request.get(source)
            assert response.ok
            (tmp_path / "played.mp4").write_bytes(response.body())
            frames, _ = read_video(tmp_path / "played.mp4")
            assert frames.shape == (4, 16, 16, 3)

            # An upload over the cap is refused; the page still answers.
            upload = browser.request.post(
                url + "gradio_api/upload",
                multipart={"files": {"name": "big.png", "mimeType": "image/png", "buffer": b"0" * 100_000}},
            )
            assert upload.status == 413
            assert browser.request.get(url).ok

            # Image to video: the uploaded image is the clip's first frame.
            first = png(tmp_path / "first.png", size=(16, 16), color=(255, 106, 0))
            page.get_by_role("tab", name=MODES["image"]).click()
            page.set_input_files("#image-input input[type=file]", str(first))
            page.locator("#image-input img").wait_for()
            assert list((tmp_path / "gradio").rglob("first.png")), "the upload is not where Gradio keeps uploads"
            page.click("#generate-image")
            page.wait_for_function(
                "() => document.querySelector('#result-summary').innerText.startsWith('Image to video')",
                timeout=180_000,
            )
            timings["image-to-video shown"] = time.monotonic() - start
            assert "4 frames at 16×16 · 2 steps" in page.inner_text("#result-summary")
            source = page.evaluate("document.querySelector('#result-video video').src")
            (tmp_path / "played-i2v.mp4").write_bytes(browser.request.get(source).body())
            frames, _ = read_video(tmp_path / "played-i2v.mp4")
            assert frames.shape == (4, 16, 16, 3)
            np.testing.assert_allclose(frames[0], np.full((16, 16, 3), (255, 106, 0)), atol=12)
            # The upload went with its request (not hours later with Gradio's cache sweep).
            assert not list((tmp_path / "gradio").rglob("first.png")), "the upload outlived its request"

            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    timings["done"] = time.monotonic() - start
    print("browser test timings (s):", {k: round(v, 1) for k, v in timings.items()})
    assert screenshot.stat().st_size > 10_000
    save_artifact(screenshot)
