"""One input module (lumiere.pipelines.inputs) for the pipeline, the CLI and the web page (issue 28).

Masks follow diffusers' mask-processor convention: a mask of the size of the image / video given is
resized with it (nearest, binarised at 0.5); a mask of any other size is a ValueError naming them.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from lumiere.models.conditional import MASK_CONDITION_CHANNELS, is_conditional_stunet
from lumiere.models.presets import STUNET_PRESETS, build_unet2d
from lumiere.models.stunet import STUNet
from lumiere.pipelines import DEFAULT_MODEL_DIR, LumierePipeline, SSROptions, prepare_conditioning
from lumiere.pipelines.inputs import (
    OversizedInputError,
    UnreadableInputError,
    decode_image,
    fit_frames,
    load_image,
    load_mask,
    read_video_file,
)

PROMPT = "a red circle moving right on a black background"


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def conditional_pipe() -> LumierePipeline:
    torch.manual_seed(0)
    stunet = STUNet.from_unet2d(build_unet2d("tiny"), **STUNET_PRESETS["tiny"]).eval()
    stunet.widen_input(MASK_CONDITION_CHANNELS)
    generator = seeded(1)
    with torch.no_grad():  # non-zero weights, so the mask channels matter
        for param in stunet.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    assert is_conditional_stunet(stunet)
    pipe = LumierePipeline.from_stunet(stunet)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ----- masks ---------------------------------------------------------------------------------


def test_mask_of_the_given_size_is_resized_nearest_and_binarised():
    mask = np.zeros((32, 32), dtype=np.float32)
    mask[:, :16] = 0.7  # soft values above the threshold become 1
    mask[:, 16:] = 0.3
    resized = load_mask(mask, 3, 16, 16, given_size=(32, 32))
    assert resized.shape == (3, 16, 16) and resized.dtype == torch.float32
    torch.testing.assert_close(resized[:, :, :8], torch.ones(3, 16, 8))
    torch.testing.assert_close(resized[:, :, 8:], torch.zeros(3, 16, 8))


def test_per_frame_mask_of_the_given_size_keeps_its_frames():
    mask = np.zeros((2, 8, 8), dtype=bool)
    mask[1, 2:6, 2:6] = True
    resized = load_mask(mask, 2, 4, 4, given_size=(8, 8))
    assert resized[0].sum() == 0 and resized[1, 1:3, 1:3].sum() == 4


def test_mask_of_neither_size_names_both_shapes():
    with pytest.raises(ValueError, match=r"shape \(20, 20\).*\(16, 16\).*32x32 of the image / video given"):
        load_mask(np.zeros((20, 20)), 4, 16, 16, given_size=(32, 32))
    with pytest.raises(ValueError, match=r"mask has shape \(32, 32\), which does not fit the clip"):
        load_mask(np.zeros((32, 32)), 4, 16, 16)  # no image size given: only the clip's fits
    with pytest.raises(ValueError, match=r"shape \(3, 16, 16\)"):
        load_mask(np.zeros((3, 16, 16)), 4, 16, 16)  # wrong frame count


def test_cropped_mask_follows_the_cropped_image():
    mask = np.zeros((20, 40), dtype=np.float32)  # wide: the centre 20x20 (columns 10-29) is kept
    mask[:, 10:20] = 1
    resized = load_mask(mask, 1, 10, 10, given_size=(20, 40), crop=True)
    torch.testing.assert_close(resized[0, :, :5], torch.ones(10, 5))
    torch.testing.assert_close(resized[0, :, 5:], torch.zeros(10, 5))


# ----- images and videos ---------------------------------------------------------------------


def test_crop_keeps_the_centre_and_stretch_warns():
    wide = np.zeros((20, 40, 3), dtype=np.float32)
    wide[:, 10:30, 1] = 1.0  # green centre, black sides
    cropped = load_image(wide, 8, 8, crop=True)
    torch.testing.assert_close(cropped[1], torch.ones(8, 8), atol=0.02, rtol=0)
    with pytest.warns(UserWarning, match="resized to 8x8"):
        stretched = load_image(wide, 8, 8)
    assert stretched[1].min() < 0  # the black sides squeezed in


def test_transparent_file_pixels_become_white_and_limits_are_read_from_the_header(tmp_path):
    path = tmp_path / "clear.png"
    PIL.Image.new("RGBA", (12, 10), (0, 0, 0, 0)).save(path)
    torch.testing.assert_close(decode_image(path), torch.ones(1, 3, 10, 12))
    with pytest.raises(OversizedInputError, match="12x10 pixels") as refused:
        decode_image(path, max_pixels=100)
    assert (refused.value.width, refused.value.height) == (12, 10)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(UnreadableInputError, match="not a readable image"):
        decode_image(text)
    with pytest.raises(FileNotFoundError, match="gone.png"):
        decode_image(tmp_path / "gone.png")


def test_read_video_file_stops_at_max_frames(tmp_path):
    from lumiere.data.video_io import write_video

    path = write_video(tmp_path / "clip.mp4", np.zeros((6, 16, 16, 3), dtype=np.uint8))
    assert read_video_file(path).shape == (6, 16, 16, 3)
    assert read_video_file(path, max_frames=2).shape == (2, 16, 16, 3)
    with pytest.raises(OversizedInputError):
        read_video_file(path, max_pixels=100)


def test_fit_frames_mask_mode_stays_binary():
    mask = (torch.rand(1, 1, 33, 17, generator=seeded(0)) > 0.5).float()
    fitted = fit_frames(mask, 8, 8, "mask", crop=True, mask=True)
    assert fitted.shape == (1, 1, 8, 8) and set(fitted.unique().tolist()) <= {0.0, 1.0}


# ----- the pipeline: masks drawn on the image or video given ---------------------------------


def test_conditioning_takes_a_mask_of_the_image_size():
    image = np.random.default_rng(0).random((64, 64, 3), dtype=np.float32)
    mask = np.zeros((64, 64), dtype=np.float32)
    mask[16:48, 16:48] = 1
    with pytest.warns(UserWarning, match="resized to 32x32"):
        conditioning = prepare_conditioning(image, None, mask, None, True, 4, 32, 32)
    assert conditioning.task == "cinemagraph" and conditioning.clip.shape == (3, 4, 32, 32)
    known = conditioning.known
    torch.testing.assert_close(known[0], torch.ones(32, 32))  # the first frame is the image
    assert known[1:, 8:24, 8:24].sum() == 0 and known[1:].sum() == 3 * (32 * 32 - 16 * 16)


def test_cinemagraph_from_a_larger_frame_with_its_mask(conditional_pipe):
    """A frame at twice the base size (as an SSR pipeline writes them) and its own mask."""
    image = np.random.default_rng(2).random((32, 32, 3), dtype=np.float32)
    mask = np.zeros((32, 32), dtype=np.float32)
    mask[8:24, 8:24] = 1
    call = dict(num_frames=4, height=16, width=16, num_inference_steps=2, output_type="pt")
    with pytest.warns(UserWarning, match="resized to 16x16"):
        frames = conditional_pipe(PROMPT, image=image, mask=mask, generator=seeded(0), **call).frames
    small_mask = mask[::2, ::2]
    with pytest.warns(UserWarning, match="resized to 16x16"):
        same = conditional_pipe(PROMPT, image=image, mask=small_mask, generator=seeded(0), **call).frames
    torch.testing.assert_close(frames, same)  # the big mask resized is the small one
    still = frames[0, 1:, 0:4, 0:4]  # outside the region: kept from the (resized) image
    torch.testing.assert_close(still, frames[0, :1, 0:4, 0:4].expand_as(still))


@pytest.mark.skipif(not (DEFAULT_MODEL_DIR / "model_index.json").is_file(), reason="no default model shipped")
def test_shipped_model_cinemagraph_from_its_own_64px_frame():
    """Issue 28: a frame of lumiere's own (SSR) output, 64x64, with a 64x64 mask makes a cinemagraph."""
    pipe = LumierePipeline.from_pretrained()
    pipe.set_progress_bar_config(disable=True)
    steps = dict(num_inference_steps=2, generator=seeded(0))
    frame = pipe(PROMPT, num_frames=8, ssr_options=SSROptions(window=8, steps=1), **steps).frames[0][0]
    assert frame.shape == (64, 64, 3)
    mask = np.zeros((64, 64), dtype=np.float32)
    mask[16:48, 16:48] = 1
    with pytest.warns(UserWarning, match="resized to 32x32"):
        clip = pipe(PROMPT, image=frame, mask=mask, num_frames=8, upsample=False, **steps).frames[0]
    assert clip.shape == (8, 32, 32, 3) and np.isfinite(clip).all()
    corner = clip[:, :6, :6]  # outside the region to animate: the frame, still
    np.testing.assert_allclose(corner, np.broadcast_to(corner[:1], corner.shape), atol=1e-5)
