"""The `lumiere` command, run in-process through `main(argv)` on a saved tiny pipeline."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import yaml

from lumiere.checkpoint import list_checkpoints
from lumiere.cli import main
from lumiere.data.video_io import read_video
from lumiere.models.presets import STUNET_PRESETS, build_unet2d
from lumiere.models.stunet import STUNet
from lumiere.pipelines import LumierePipeline


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    stunet = STUNet.from_unet2d(build_unet2d("tiny"), **STUNET_PRESETS["tiny"])
    path = tmp_path_factory.mktemp("tiny_pipeline")
    LumierePipeline.from_stunet(stunet).save_pretrained(path)
    return path


def exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code


def test_generate_writes_mp4(tiny_model, tmp_path, caplog):
    out = tmp_path / "a.mp4"
    with caplog.at_level(logging.INFO, logger="lumiere"):
        code = main(["generate", "a red circle", "--model", str(tiny_model), "-o", str(out),
                     "--steps", "2", "--frames", "2"])  # fmt: skip
    assert code == 0
    frames, fps = read_video(out)
    assert frames.shape == (2, 16, 16, 3)  # the model's sample size
    assert fps == pytest.approx(8.0)
    assert str(out) in caplog.text


def test_generate_grid_of_videos(tiny_model, tmp_path):
    out = tmp_path / "grid.gif"
    argv = ["generate", "a blue square", "--model", str(tiny_model), "-o", str(out), "--steps", "2",
            "--frames", "4", "--num-videos", "3", "--scheduler", "ddim", "--guidance", "1",
            "--height", "8", "--width", "12", "--fps", "4"]  # fmt: skip
    assert main(argv) == 0
    frames, _ = read_video(out)
    # make_grid: 2 clips per row, 2 rows, 2 px padding: [4, 2 * (8 + 2) + 2, 2 * (12 + 2) + 2, 3]
    assert frames.shape == (4, 22, 30, 3)


@pytest.mark.parametrize(
    "options, option_name",
    [
        (["--frames", "0"], "--frames"),
        (["--frames", "3"], "--frames"),  # the tiny model takes multiples of 2
        (["--steps", "0"], "--steps"),
        (["--guidance", "-1"], "--guidance"),
        (["--fps", "0"], "--fps"),
        (["--height", "9"], "--height"),
        (["--scheduler", "heun"], "--scheduler"),
        (["--bogus"], "--bogus"),
    ],
)
def test_generate_bad_options_exit_2(tiny_model, tmp_path, capsys, options, option_name):
    out = tmp_path / "a.mp4"
    argv = ["generate", "a red circle", "--model", str(tiny_model), "-o", str(out), "--steps", "2", *options]
    assert exit_code(argv) == 2
    assert option_name in capsys.readouterr().err
    assert not out.exists()


def test_generate_bad_output_and_prompt_exit_2(tmp_path):
    assert exit_code(["generate", "a red circle", "-o", str(tmp_path / "a.avi")]) == 2
    assert exit_code(["generate", "  ", "-o", str(tmp_path / "a.mp4")]) == 2


def test_generate_missing_model_exits_2(tmp_path, capsys):
    out = tmp_path / "a.mp4"
    assert main(["generate", "a red circle", "--model", str(tmp_path / "none"), "-o", str(out)]) == 2
    assert "model_index.json" in capsys.readouterr().err
    assert not out.exists()


def test_library_value_errors_are_one_line_and_exit_2(tiny_model, tmp_path, capsys):
    """A value the library refuses reaches the user at one boundary: one line, exit 2, no traceback."""
    import numpy as np

    from lumiere.data.video_io import write_video

    clip = write_video(tmp_path / "in.mp4", np.zeros((4, 16, 16, 3), dtype=np.uint8))
    mask = tmp_path / "mask.npy"
    np.save(mask, np.ones((5, 5), dtype=np.float32))
    out = tmp_path / "a.mp4"
    base = ["generate", "a red circle", "--model", str(tiny_model), "-o", str(out), "--steps", "1"]
    for extra, message in (
        (
            ["--video", str(clip), "--frames", "8"],
            "argument --frames: must match the video, which has 4 frames",
        ),
        (["--video", str(clip), "--mask", str(mask)], "mask has shape (5, 5), which does not fit the clip"),
    ):
        assert exit_code([*base, *extra]) == 2
        err = capsys.readouterr().err  # diffusers' loading bar may come first (\r-separated)
        errors = [line for line in err.splitlines() if "error" in line.lower()]
        assert len(errors) == 1 and errors[0].startswith("lumiere generate: error: ") and message in errors[0]
        assert "Traceback" not in err and "usage:" not in err
    assert not out.exists()


@pytest.mark.parametrize("argv", [[], ["generate"], ["train"], ["data"], ["data", "shapes"]])
def test_incomplete_commands_exit_2(argv):
    assert exit_code(argv) == 2


@pytest.mark.parametrize("command", [[], ["generate"], ["train"], ["data"], ["data", "shapes"]])
def test_help(command, capsys):
    assert exit_code([*command, "--help"]) == 0
    assert "usage: lumiere" in capsys.readouterr().out


def test_help_states_defaults(capsys):
    exit_code(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for fragment in ("(default: 16, or the length of --video)", "(default: 25)", "(default: 5.0)", "(default: dpm++)",
                     "default: the model's sample size", "default: the model shipped in the package"):  # fmt: skip
        assert fragment in text


def test_train_missing_config_exits_2(tmp_path, capsys):
    assert exit_code(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "config" in capsys.readouterr().err


def write_tiny_t2i_config(tmp_path, output_dir, max_steps: int, **keys) -> Path:
    """A config of the tiny preset's t2i stage (seconds a step), a checkpoint every step, in tmp_path."""
    config = {
        "stage": "t2i",
        "output_dir": str(output_dir),
        "model": {"preset": "tiny"},
        "data": {"resolution": 16, "num_frames": 4},
        "optim": {"batch_size": 1, "max_steps": max_steps, "warmup_steps": 1},
        "checkpoint_every": 1,
        "sample_steps": 1,
        **keys,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_train_exports_a_checkpoint_without_training(tmp_path, capsys):
    path = write_tiny_t2i_config(tmp_path, tmp_path / "run", max_steps=2)
    assert exit_code(["train", str(path), "--export", str(tmp_path / "none")]) == 2
    assert "no checkpoint to export" in capsys.readouterr().err
    assert main(["train", str(path)]) == 0
    assert main(["train", str(path), "--export", str(tmp_path / "step_1"), "--step", "1"]) == 0
    assert sorted(p.name for p in (tmp_path / "step_1").iterdir()) == ["unet"]  # as the run exports
    assert exit_code(["train", str(path), "--export", str(tmp_path / "x"), "--step", "7"]) == 2
    assert "holds steps 1, 2" in capsys.readouterr().err


def test_train_set_overrides_config_keys_and_the_run_keeps_them(tmp_path, capsys):
    path = write_tiny_t2i_config(tmp_path, tmp_path / "from_file", max_steps=5, keep_checkpoints=10)
    run = tmp_path / "from_set"
    argv = ["train", str(path), "--set", "optim.max_steps=2", "--set", f"output_dir={run}", "--set", "optim.lr=3.0e-4"]
    assert main(argv) == 0
    assert not (tmp_path / "from_file").exists()  # the file's output_dir was overridden
    kept = json.loads((run / "config.json").read_text())
    assert (kept["optim"]["max_steps"], kept["optim"]["lr"], kept["optim"]["batch_size"]) == (2, 3.0e-4, 1)
    assert [p.name[-2:] for p in list_checkpoints(run / "checkpoints")] == ["01", "02"]  # 2 steps, not 5
    # A malformed override, an unknown key and a value of the wrong type name what is wrong.
    assert exit_code(["train", str(path), "--set", "optim.max_steps"]) == 2
    assert "--set 'optim.max_steps' must be KEY=VALUE" in capsys.readouterr().err
    assert exit_code(["train", str(path), "--set", "optim.max_step=3"]) == 2
    assert "unknown config key optim.max_step; did you mean optim.max_steps?" in capsys.readouterr().err
    assert exit_code(["train", str(path), "--set", "optim.max_steps=many"]) == 2
    assert "config key optim.max_steps must be an integer, got text 'many'" in capsys.readouterr().err
    assert exit_code(["train", str(path), "--set", "stage.name=t2i"]) == 2
    assert "config key stage is a value, not a section" in capsys.readouterr().err


def test_data_shapes_writes_pairs(tmp_path):
    out = tmp_path / "shapes"
    argv = ["data", "shapes", "--out", str(out), "--count", "3", "--frames", "4", "--resolution", "16"]
    assert main(argv) == 0
    videos = sorted(out.glob("*.mp4"))
    captions = sorted(out.glob("*.txt"))
    assert len(videos) == 3 and len(captions) == 3
    assert [v.stem for v in videos] == [c.stem for c in captions]
    frames, _ = read_video(videos[0])
    assert frames.shape == (4, 16, 16, 3)
    assert captions[0].read_text().strip()
    assert exit_code(["data", "shapes", "--out", str(out), "--count", "0"]) == 2
