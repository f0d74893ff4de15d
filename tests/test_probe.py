"""The analytic probe reads MovingShapes clips back, and refuses to see objects in noise."""

import numpy as np
import pytest
import torch

from lumiere.data.shapes import MOTIONS, STATIC, MovingShapes, render_clip
from lumiere.data.video_io import read_video, write_video
from lumiere.eval.probe import ATTRIBUTES, alignment_accuracy, probe_clip, score


def accuracy(data, count, transform=lambda frames: frames):
    """Per-attribute accuracy of the probe on the first ``count`` clips, and the object rate."""
    hits = {name: 0 for name in (*ATTRIBUTES, "object")}
    motions = set()
    for i in range(count):
        frames, _, truth = data.sample(i)
        reading = probe_clip(transform(frames))
        hits["object"] += reading.is_object
        for name in ATTRIBUTES:
            hits[name] += getattr(reading, name) == truth[name]
        motions.add(truth["motion"])
    return {name: n / count for name, n in hits.items()}, motions


@pytest.mark.parametrize(("resolution", "count"), [(32, 150), (64, 150), ((32, 48), 60)])
def test_probe_reads_moving_shapes(resolution, count):
    data = MovingShapes(length=count, num_frames=16, resolution=resolution, seed=123)
    result, motions = accuracy(data, count)
    assert motions == set(MOTIONS)  # every motion was exercised
    for name, value in result.items():
        assert value >= 0.98, (name, result)


def test_probe_reads_single_frames():
    data = MovingShapes(length=60, resolution=32, mode="image", seed=9)
    result, motions = accuracy(data, 60)
    assert motions == {STATIC}
    for name, value in result.items():
        assert value >= 0.98, (name, result)


@pytest.mark.parametrize("sigma", [0.05, 0.1])
def test_probe_survives_pixel_noise(sigma):
    data = MovingShapes(length=60, num_frames=16, resolution=32, seed=5)
    rng = np.random.default_rng(0)
    result, _ = accuracy(data, 60, lambda f: np.clip(f + rng.normal(0, sigma, f.shape), 0, 1))
    for name, value in result.items():
        assert value >= 0.95, (name, result)


def test_probe_survives_blur():
    data = MovingShapes(length=60, num_frames=16, resolution=32, seed=6)
    kernel = np.array([0.25, 0.5, 0.25])

    def blur(frames):  # separable [1, 2, 1] / 4 blur along height and width, edges replicated
        padded = np.pad(frames, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
        rows = sum(k * padded[:, i : i + frames.shape[1]] for i, k in enumerate(kernel))
        return sum(k * rows[:, :, i : i + frames.shape[2]] for i, k in enumerate(kernel))

    result, _ = accuracy(data, 60, blur)
    for name, value in result.items():
        assert value >= 0.95, (name, result)


def test_probe_survives_h264(tmp_path):
    data = MovingShapes(length=30, num_frames=16, resolution=32, seed=11)

    def round_trip(frames):
        return read_video(write_video(tmp_path / "clip.mp4", frames, fps=8))[0]

    result, _ = accuracy(data, 30, round_trip)
    for name, value in result.items():
        assert value >= 0.93, (name, result)


@pytest.mark.parametrize("resolution", [32, 64])
def test_noise_is_not_an_object(resolution):
    rng = np.random.default_rng(1)
    for _ in range(20):
        assert not probe_clip(rng.random((16, resolution, resolution, 3))).is_object
        gray_noise = np.clip(0.5 + rng.normal(0, 0.2, (16, resolution, resolution, 3)), 0, 1)
        assert not probe_clip(gray_noise).is_object
    assert not probe_clip(np.full((16, resolution, resolution, 3), 0.5)).is_object  # blank


def test_incoherent_objects_are_not_objects():
    rng = np.random.default_rng(0)
    red_square = {"background": "black", "shape": "square", "colour": "red", "motion": STATIC}
    # the same square at a random place in every frame
    jumping = render_clip(
        red_square, rng.uniform(8, 24, 16), rng.uniform(8, 24, 16), np.full(16, 9.0), 32, 32
    )
    assert "jumps" in probe_clip(jumping).reason
    # a clean moving clip with every other frame blank
    clip = MovingShapes(length=1, seed=3).sample(0)[0].copy()
    clip[::2] = clip[0, 0, 0]
    assert not probe_clip(clip).is_object
    # one frame from each of 16 unrelated images: colour changes every frame
    data = MovingShapes(length=200, mode="image", seed=0)
    black = [i for i in range(200) if data.sample(i)[2]["background"] == "black"]
    assert not probe_clip(np.concatenate([data.sample(i)[0] for i in black[:16]])).is_object
    # a square patch of red noise on a clean background: textured, full of holes
    patch = np.zeros((16, 32, 32, 3))
    patch[:, 8:24, 8:24] = rng.random((16, 16, 16, 1)) * np.array([1.0, 0.0, 0.0])
    assert "holes" in probe_clip(patch).reason
    # the control: the same square, still, is an object
    still = render_clip(red_square, np.full(16, 16.0), np.full(16, 16.0), np.full(16, 9.0), 32, 32)
    reading = probe_clip(still)
    assert reading.is_object and reading.motion == STATIC and reading.shape == "square"


def test_tensor_and_uint8_inputs_agree():
    data = MovingShapes(length=3, seed=2)
    item = data[0]
    frames = data.sample(0)[0]
    a, b = probe_clip(item["video"]), probe_clip(frames)
    c = probe_clip((frames * 255 + 0.5).astype(np.uint8))
    assert a.attributes() == b.attributes() == c.attributes() == item["attributes"]
    np.testing.assert_allclose(a.centroids, b.centroids, atol=1e-5)
    with pytest.raises(ValueError):
        probe_clip(torch.zeros(16, 3, 32, 32))
    with pytest.raises(ValueError):
        probe_clip(np.zeros((16, 32, 32)))


def test_readings_are_physical():
    data = MovingShapes(length=40, seed=4)
    for i in range(40):
        frames, _, truth = data.sample(i)
        reading = probe_clip(frames)
        assert reading.centroids.shape == (16, 2) and reading.areas.shape == (16,)
        assert reading.temporal_consistency == pytest.approx(1.0, abs=1e-6)  # the background never changes
        assert reading.colour_drift < 0.1
        if truth["motion"] == "moving right":
            assert reading.centroids[-1, 0] > reading.centroids[0, 0] + 0.1
        if truth["motion"] == "growing":
            assert reading.areas[-1] > 2 * reading.areas[0]
    rng = np.random.default_rng(0)
    noisy = probe_clip(np.clip(frames + rng.normal(0, 0.1, frames.shape), 0, 1))
    assert noisy.temporal_consistency < 0.95 and noisy.noise > 0.02
    assert reading.noise == 0


def test_score_against_captions():
    data = MovingShapes(length=2, seed=0)
    item = data[0]
    truth = item["attributes"]
    assert score(item["video"], item["caption"]) == {
        "object": True,
        **dict.fromkeys(ATTRIBUTES, True),
        "all": True,
    }
    other_colour = "blue" if truth["colour"] != "blue" else "red"
    wrong = f"a {other_colour} {truth['shape']} {truth['motion']} on a {truth['background']} background"
    result = score(item["video"], wrong)
    assert result["colour"] is False and result["shape"] is True and result["all"] is False
    noise = np.random.default_rng(0).random((16, 32, 32, 3))
    assert not any(score(noise, item["caption"]).values())
    # an attribute the caption does not name is not scored
    assert "background" not in score(item["video"], f"a {truth['colour']} {truth['shape']}")


def test_alignment_accuracy():
    data = MovingShapes(length=6, seed=1)
    clips = [data[i]["video"] for i in range(6)]
    captions = [data[i]["caption"] for i in range(6)]
    assert alignment_accuracy(clips, captions)["all"] == 1.0
    shuffled = alignment_accuracy(clips, captions[1:] + captions[:1])
    assert shuffled["all"] < 1.0
    with pytest.raises(ValueError):
        alignment_accuracy(clips, captions[:2])
