"""lumiere eval: prompts, reference clips, Frechet distance and the end-to-end report."""

import dataclasses
import json
from collections import Counter

import numpy as np
import pytest
import torch

from lumiere.data.shapes import parse_caption
from lumiere.eval.evaluate import (
    NO_OBJECT,
    confusion,
    draw_prompts,
    evaluate,
    frechet_distance,
    probe_features,
    real_clips_for,
)
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


def test_confusion_counts_what_the_probe_read_for_each_prompted_value():
    prompts = draw_prompts(12, 0)
    real = [probe_clip(c) for c in real_clips_for(prompts, num_frames=16, resolution=32, seed=1)]
    table = confusion(real, prompts)
    for name in ("background", "shape", "colour", "motion"):
        wanted = [parse_caption(p)[name] for p in prompts if parse_caption(p)[name] is not None]
        assert sum(sum(row.values()) for row in table[name].values()) == len(wanted)
        for value, row in table[name].items():  # real clips are read as prompted: the table is diagonal
            assert row == {value: wanted.count(value)}
    noise = [probe_clip(np.random.default_rng(i).random((16, 32, 32, 3))) for i in range(len(prompts))]
    assert all(set(row) == {NO_OBJECT} for row in confusion(noise, prompts)["shape"].values())
    # a clip read with another shape lands off the diagonal
    swapped = dataclasses.replace(real[0], shape="square" if real[0].shape != "square" else "circle")
    wanted_shape = parse_caption(prompts[0])["shape"]
    assert confusion([swapped], prompts[:1])["shape"] == {wanted_shape: {swapped.shape: 1}}


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
    assert sum(sum(row.values()) for row in report["confusion"]["colour"].values()) == 3
    # One reading per clip, in prompt order, agreeing with the confusion counts.
    readings = report["clip_readings"]
    assert [r["prompt"] for r in readings] == draw_prompts(3, 0)
    for name in ("shape", "colour"):
        read = Counter(r["read"][name] if r["is_object"] else NO_OBJECT for r in readings)
        counted = Counter()
        for row in report["confusion"][name].values():
            counted.update(row)
        assert read == counted
    assert all(np.isfinite(r["fill_ratio"]) and np.isfinite(r["travel_x"]) for r in readings)
    with pytest.raises(ValueError, match="count"):
        evaluate(pipe, count=1)


def test_cli_eval_prints_the_summary_and_writes_per_clip_readings(tmp_path, capsys):
    from lumiere.cli import main

    torch.manual_seed(0)
    path = tmp_path / "tiny"
    LumierePipeline.from_stunet(
        STUNet.from_unet2d(build_unet2d("tiny"), **STUNET_PRESETS["tiny"])
    ).save_pretrained(path)
    out = tmp_path / "eval.json"
    args = ["eval", "--model", str(path), "--count", "2", "--frames", "2", "--steps", "1", "--out", str(out)]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads(out.read_text())
    assert "clip_readings" not in printed and len(written["clip_readings"]) == 2
    assert printed == {key: value for key, value in written.items() if key != "clip_readings"}


def test_evaluate_in_windows_measures_longer_clips(monkeypatch):
    torch.manual_seed(0)
    stunet = STUNet.from_unet2d(build_unet2d("tiny"), **STUNET_PRESETS["tiny"])
    pipe = LumierePipeline.from_stunet(stunet)
    pipe.set_progress_bar_config(disable=True)
    seen = []
    original = LumierePipeline.__call__

    def spy(self, *args, **kwargs):
        seen.append((kwargs["window"], kwargs["overlap"]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LumierePipeline, "__call__", spy)
    report = evaluate(pipe, count=2, num_frames=6, num_inference_steps=1, window=4, overlap=2)
    assert seen == [(4, 2)] and report["num_frames"] == 6 and report["window"] == 4
    with pytest.raises(ValueError, match="overlap"):
        evaluate(pipe, count=2, num_frames=6, num_inference_steps=1, window=4, overlap=4)


@pytest.mark.parametrize(
    "options, message",
    [
        (["--task", "i2v", "--window", "4"], "only with --task t2v"),
        (["--overlap", "2"], "give --window too"),
        (
            ["--window", "4", "--overlap", "4"],
            "argument --overlap: must be an integer >= 0 and < --window (4), got 4",
        ),
        (["--window", "3"], "argument --window: must be a positive multiple of 2 for this model"),
    ],
)
def test_cli_eval_window_options_exit_2(tmp_path, capsys, options, message):
    from lumiere.cli import main

    torch.manual_seed(0)
    path = tmp_path / "tiny"
    LumierePipeline.from_stunet(
        STUNet.from_unet2d(build_unet2d("tiny"), **STUNET_PRESETS["tiny"])
    ).save_pretrained(path)
    with pytest.raises(SystemExit) as info:
        main(["eval", "--model", str(path), "--count", "2", "--frames", "6", *options])
    assert info.value.code == 2 and message in capsys.readouterr().err
