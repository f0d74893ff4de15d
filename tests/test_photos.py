"""Camera moves over real photographs (``lumiere.data.photos``, data.kind "photos", issue 31):
clips are seeded, train photos are disjoint from the held-out benchmark photos, shapes mix in by
share, the config refuses misuse, and an SSR trains a few steps on them (bicubic residual)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lumiere.config import config_from_dict
from lumiere.data.photos import PHOTOS, TRAIN_PHOTOS, PhotoClips, camera_move, pan_zoom_clip, photo, soften
from lumiere.models.presets import build_unet2d
from lumiere.pipelines import LumierePipeline
from lumiere.train import train


def test_train_photos_are_held_apart_from_the_benchmark_photos():
    assert not set(TRAIN_PHOTOS) & set(PHOTOS)
    assert "cat" not in TRAIN_PHOTOS  # scikit-image's cat is the held-out "chelsea"
    train_images = [photo(name) for name in TRAIN_PHOTOS]
    for name in PHOTOS:
        held_out = photo(name)
        assert not any(image.shape == held_out.shape and np.array_equal(image, held_out) for image in train_images)


def test_photo_clips_are_seeded_real_and_in_range():
    clips = PhotoClips(length=20, num_frames=4, resolution=32, seed=3)
    first, again = clips[5], PhotoClips(length=20, num_frames=4, resolution=32, seed=3)[5]
    assert first["video"].shape == (3, 4, 32, 32) and first["video"].dtype == torch.float32
    torch.testing.assert_close(first["video"], again["video"], rtol=0, atol=0)
    assert first["caption"] == again["caption"] and first["caption"].startswith("a ")
    other = PhotoClips(length=20, num_frames=4, resolution=32, seed=4)[5]
    assert not torch.equal(first["video"], other["video"])
    videos = torch.stack([clips[i]["video"] for i in range(20)])
    assert videos.min() >= -1 and videos.max() <= 1
    assert videos.std() > 0.1  # textured, not flat
    captions = {clips[i]["caption"] for i in range(20)}
    assert len(captions) > 5
    assert all(any(desc in caption for desc in TRAIN_PHOTOS.values()) for caption in captions)


def test_a_pan_moves_the_content_and_a_still_shot_does_not():
    image = photo("brick")
    still = camera_move(image, 3, (32, 32), (256.0, 256.0), 0.3, (0.0, 0.0), (1.0, 1.0))
    assert np.array_equal(still[0], still[2])
    pan = camera_move(image, 3, (32, 32), (256.0, 256.0), 0.3, (0.0, 0.5), (1.0, 1.0))
    # The window moved right by half its width: the last frame's left half is the first's right half.
    np.testing.assert_allclose(pan[2][:, :12].astype(float), pan[0][:, 16:28].astype(float), atol=12)
    assert np.abs(pan[2].astype(float) - pan[0].astype(float)).mean() > 5
    with pytest.raises(ValueError, match="motion must be one of"):
        pan_zoom_clip(image, "spin")


def test_shapes_fraction_mixes_moving_shapes_in():
    mixed = PhotoClips(length=40, num_frames=4, resolution=32, seed=0, shapes_fraction=0.5)
    captions = [mixed[i]["caption"] for i in range(40)]
    shapes = [c for c in captions if "background" in c]
    assert 10 <= len(shapes) <= 30
    assert set(mixed[0]) == {"video", "caption"}  # one item layout whatever the source
    assert all(not any(d in c for d in TRAIN_PHOTOS.values()) for c in shapes)
    only_photos = PhotoClips(length=40, num_frames=4, resolution=32, seed=0)
    assert not any("background" in only_photos[i]["caption"] for i in range(40))


def detail(video: torch.Tensor) -> float:
    """Mean |difference between horizontal neighbours| of [3, f, h, w]: how much fine detail it holds."""
    return float(video.diff(dim=-1).abs().mean())


def test_soft_share_blurs_that_share_of_the_photo_clips_and_keeps_the_rest():
    sharp = PhotoClips(length=40, num_frames=4, resolution=32, seed=3)
    mixed = PhotoClips(length=40, num_frames=4, resolution=32, seed=3, soft_share=0.5)
    softened = 0
    for i in range(40):
        a, b = sharp[i]["video"], mixed[i]["video"]
        assert sharp[i]["caption"] == mixed[i]["caption"]  # the same clip, only its detail changes
        if torch.equal(a, b):
            continue
        softened += 1
        assert detail(b) < 0.9 * detail(a)
        assert (a.mean() - b.mean()).abs() < 0.02  # blurred, not darkened
    assert 10 <= softened <= 30
    frames = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    soft = soften(frames, 1.0)
    assert soft.shape == frames.shape and soft.dtype == np.uint8
    assert np.array_equal(soften(frames[:1], 1.0), soft[:1])  # frame by frame: no mixing over time
    with pytest.raises(ValueError, match="sigma must be > 0"):
        soften(frames, 0.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"shapes_fraction": 1.5}, "shapes_fraction must be in"),
        ({"soft_share": -0.1}, "soft_share must be in"),
        ({"photos": ["lena"]}, "photo name must be one of"),
        ({"photos": []}, "at least one"),
        ({"crop_range": (0.5, 0.2)}, "crop_range"),
    ],
)
def test_bad_photo_clip_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PhotoClips(**kwargs)


def ssr_photo_config(tmp_path, init_from, **data):
    return config_from_dict(
        {
            "stage": "ssr",
            "output_dir": str(tmp_path / "run"),
            "model": {"preset": "tiny", "init_from": str(init_from), "freeze_spatial": False, "ssr_scale": 2,
                      "ssr_residual": True, "ssr_upsample": "bicubic"},  # fmt: skip
            "data": {"kind": "photos", "resolution": 32, "num_frames": 4, "shapes_fraction": 0.3, **data},
            "optim": {"batch_size": 2, "max_steps": 2, "warmup_steps": 1, "lr": 1e-3},
            "log_every": 1,
            "checkpoint_every": 100,
            "sample_steps": 1,
        }
    )


def test_an_ssr_trains_on_photos_over_bicubic_and_exports_it(tmp_path):
    torch.manual_seed(0)
    build_unet2d("tiny").save_pretrained(tmp_path / "t2i" / "unet")
    result = train(ssr_photo_config(tmp_path, tmp_path / "t2i"))
    assert np.isfinite(result.final_loss)
    index = json.loads((result.model_dir / "model_index.json").read_text())
    assert index["ssr_upsample"] == "bicubic" and index["ssr_residual"] is True
    pipe = LumierePipeline.from_pretrained(result.model_dir)
    pipe.set_progress_bar_config(disable=True)
    low = np.random.default_rng(0).random((1, 4, 16, 16, 3), dtype=np.float32)
    frames = pipe.upsample(low, "a camera panning left over a brick wall", num_inference_steps=2).frames
    assert frames.shape == (1, 4, 32, 32, 3)


def test_photo_keys_are_refused_elsewhere(tmp_path):
    for key in ("shapes_fraction", "soft_share"):
        with pytest.raises(ValueError, match="data.soft_share apply to data.kind 'photos' only"):
            config_from_dict({"stage": "ssr", "output_dir": str(tmp_path), "model": {"init_from": str(tmp_path)},
                              "data": {"kind": "shapes", key: 0.2}})  # fmt: skip
    with pytest.raises(ValueError, match=r"data.soft_share must be in \[0, 1\]"):
        config_from_dict({"stage": "ssr", "output_dir": str(tmp_path), "model": {"init_from": str(tmp_path)},
                          "data": {"kind": "photos", "soft_share": 2}})  # fmt: skip
    with pytest.raises(ValueError, match="model.ssr_upsample and model.ssr_residual_scale apply to stage 'ssr' only"):
        config_from_dict({"stage": "stunet", "output_dir": str(tmp_path), "model": {"init_from": str(tmp_path),
                          "ssr_upsample": "bicubic"}})  # fmt: skip
