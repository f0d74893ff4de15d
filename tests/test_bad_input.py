"""Bad input matrix: each bad value is refused up front with an error naming it and what is accepted.

Pipeline arguments on a tiny STUNet built in-process; prompts the text encoder must cope with;
files (corrupted video, YAML configs) and the command line (argparse: exit code 2). Image and mask
conditioning inputs are tested with their own feature.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import torch
import yaml

from lumiere.cli import main
from lumiere.config import load_config
from lumiere.data.video_io import read_video, read_video_timed, write_video
from lumiere.errors import InvalidArgument
from lumiere.models.presets import STUNET_PRESETS, build_unet2d
from lumiere.models.stunet import STUNet
from lumiere.pipelines import LumierePipeline

PROMPT = "a red circle moving left on a black background"
FAST = dict(num_frames=2, num_inference_steps=1)  # the cheapest call the tiny model takes


@pytest.fixture(scope="module")
def pipe() -> LumierePipeline:
    torch.manual_seed(0)
    stunet = STUNet.from_unet2d(build_unet2d("tiny"), **STUNET_PRESETS["tiny"]).eval()
    pipe = LumierePipeline.from_stunet(stunet)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----- pipeline arguments: ValueError naming the argument and the accepted range ----------------

# (keyword arguments, what the message must say): the tiny STUNet halves time once (frames: a
# multiple of 2) and space once (height and width: multiples of 2).
BAD_CALLS = [
    (dict(prompt=""), r"prompt '' is empty; use a non-empty prompt"),
    (dict(prompt="  \n\t"), r"prompt .* is empty; use a non-empty prompt"),
    (dict(prompt=[PROMPT, " "]), r"prompt ' ' is empty"),
    (dict(prompt=[]), r"prompt is an empty list"),
    (dict(num_frames=0), r"num_frames=0: must be a positive multiple of 2 for this model"),
    (dict(num_frames=-4), r"num_frames=-4: must be a positive multiple of 2 for this model"),
    (dict(num_frames=3), r"num_frames=3: must be a positive multiple of 2 for this model"),
    (dict(height=9), r"height=9: must be a positive multiple of 2 for this model"),
    (dict(width=7), r"width=7: must be a positive multiple of 2 for this model"),
    (dict(height=0), r"height=0: must be a positive multiple of 2 for this model"),
    (dict(width=-16), r"width=-16: must be a positive multiple of 2 for this model"),
    (dict(num_inference_steps=0), r"num_inference_steps=0: must be >= 1"),
    (dict(num_inference_steps=-3), r"num_inference_steps=-3: must be >= 1"),
    (dict(guidance_scale=-1.0), r"guidance_scale=-1.0: must be >= 0"),
    (dict(num_videos_per_prompt=0), r"num_videos_per_prompt=0: must be >= 1"),
    (dict(output_type="mp4"), r"output_type='mp4': choose one of np, pt, pil"),
    (dict(window=3), r"window=3: must be a positive multiple of 2 for this model"),
    (dict(negative_prompt=["a", "b"]), r"negative_prompt has 2 entries for 1 prompts"),
    (dict(generator=[seeded(0), seeded(1)]), r"generator is a list of 2; give one generator per clip"),
]


@pytest.mark.parametrize("kwargs, message", BAD_CALLS, ids=[",".join(k) for k, _ in BAD_CALLS])
def test_bad_pipeline_argument_is_refused_before_any_work(pipe, kwargs, message, monkeypatch):
    def no_work(*args, **kw):
        raise AssertionError("the text encoder ran: the bad input was not refused up front")

    monkeypatch.setattr(pipe.text_encoder, "encode", no_work)
    call = {"prompt": PROMPT, **FAST, **kwargs}
    with pytest.raises(ValueError, match=message):
        pipe(**call)


# Not refused yet: a TypeError deep inside, a silent conversion, or garbage frames (inf guidance).
# The checks belong in lumiere/pipelines/lumiere.py (check_inputs, _check_prompts); see
# docs/reliability.md. Strict: once they are refused, these pass and the marker must go.
GAPS = [
    (dict(prompt=None), "prompt"),
    (dict(prompt=5), "prompt"),
    (dict(height=16.0), "height"),
    (dict(num_inference_steps=1.5), "num_inference_steps"),
    (dict(num_videos_per_prompt=1.5), "num_videos_per_prompt"),
    (dict(guidance_scale=float("nan")), "guidance_scale"),
    (dict(guidance_scale=float("inf")), "guidance_scale"),
]


@pytest.mark.parametrize("kwargs, name", GAPS, ids=[",".join(k) for k, _ in GAPS])
def test_bad_pipeline_argument_type_is_refused(pipe, kwargs, name):
    with pytest.raises(ValueError, match=name):
        pipe(**{"prompt": PROMPT, **FAST, "generator": seeded(), **kwargs})


def test_refusals_name_the_argument_for_every_front_end(pipe):
    """An InvalidArgument carries the Python name and what it accepts; the CLI spells it as its option."""
    with pytest.raises(InvalidArgument) as info:
        pipe(PROMPT, num_frames=8, window=4, overlap=4, num_inference_steps=1)
    err = info.value
    assert (err.argument, err.value, err.has_value) == ("overlap", 4, True)
    assert str(err) == "overlap=4: must be an integer >= 0 and < window (4)"
    assert err.requirement_for({"window": "--window"}) == "must be an integer >= 0 and < --window (4)"
    with pytest.raises(InvalidArgument) as info:
        pipe(PROMPT, mask=np.ones((16, 16)), **FAST)
    assert (info.value.argument, info.value.has_value) == ("mask", False)
    assert str(info.value) == "mask: needs video (inpainting) or image (cinemagraph)"


def test_whole_clip_frames_are_not_rounded(pipe):
    """Frames are never silently changed: 3 fails (above), 4 gives 4."""
    frames = pipe(PROMPT, num_frames=4, num_inference_steps=1, generator=seeded()).frames
    assert frames.shape[1] == 4


def test_guidance_at_most_one_means_no_guidance(pipe):
    """Documented conversion: 0 <= guidance_scale <= 1 skips the unconditional branch (same clip)."""
    none = pipe(PROMPT, guidance_scale=1.0, generator=seeded(), **FAST).frames
    zero = pipe(PROMPT, guidance_scale=0.0, generator=seeded(), **FAST).frames
    np.testing.assert_array_equal(none, zero)


# ----- prompts ---------------------------------------------------------------------------------


def test_over_long_prompt_is_truncated_with_a_warning(pipe, caplog):
    pipe.text_encoder.clear_cache()
    long_prompt = " ".join(["a red circle moving left"] * 40)  # ~200 tokens; MiniLM keeps 32
    with caplog.at_level(logging.WARNING, logger="lumiere.models.text"):
        frames = pipe(long_prompt, generator=seeded(), **FAST).frames
    assert np.isfinite(frames).all()
    assert re.search(r"prompt of \d+ tokens truncated to max_length=32", caplog.text)
    states, mask = pipe.text_encoder.encode([long_prompt])  # cut to max_length, every token real
    assert int(mask.sum()) == pipe.text_encoder.max_length


@pytest.mark.parametrize(
    "prompt",
    [
        "un cercle rouge qui va à gauche",
        "赤い円が左に動く",
        "a 🔴 moving ⬅️",
        "ＦＵＬＬ　ＷＩＤＴＨ",
        "e\u0301 combining",
    ],
)
def test_non_ascii_prompt_works(pipe, prompt):
    frames = pipe(prompt, generator=seeded(), **FAST).frames
    assert frames.shape == (1, 2, 16, 16, 3) and np.isfinite(frames).all()
    states, mask = pipe.text_encoder.encode([prompt])
    assert int(mask.sum()) > 2  # more than [CLS] [SEP]: the text was not dropped as unknown


# ----- files -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def video_bytes(tmp_path_factory) -> bytes:
    frames = np.random.default_rng(0).random((8, 32, 32, 3)).astype(np.float32)
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4", frames).read_bytes()


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: b"",
        lambda data: b"not a video at all " * 50,
        lambda data: data[: len(data) // 2],
        # the sample index (the 'moov' box, after the frame data here) zeroed. Zeroing frame data
        # instead is not a test: H.264 decoders conceal damaged slices, and whether one raises
        # depended on the run (a clean-CI run once decoded such a file without an error).
        lambda data: data[: data.find(b"moov") - 4] + b"\0" * 500 + data[data.find(b"moov") + 496 :],
    ],
    ids=["empty", "garbage", "truncated", "zeroed-index"],
)
@pytest.mark.parametrize("reader", [read_video, read_video_timed])
def test_corrupted_video_file_names_the_file(tmp_path, video_bytes, damage, reader):
    path = tmp_path / "broken.mp4"
    path.write_bytes(damage(video_bytes))
    with pytest.raises(ValueError, match=re.escape(repr(str(path))) + " could not be decoded"):
        reader(path)


def test_missing_video_file(tmp_path):
    for reader in (read_video, read_video_timed):
        with pytest.raises(FileNotFoundError, match="missing.mp4"):
            reader(tmp_path / "missing.mp4")


def write_yaml(tmp_path, data) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return str(path)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"learning_rate": 1e-4}, r"unknown config key learning_rate; known keys: .*optim"),
        (
            {"optim": {"lr": 1e-4, "batchsize": 4}},
            r"unknown config key optim.batchsize; did you mean optim.batch_size\? known keys: .*batch_size",
        ),
        ({"data": {"resolution": "large"}}, r"config key data.resolution must be an integer, got text 'large'"),
        ({"data": {"num_frames": 0}}, r"config key data.num_frames must be >= 1"),
        ({"optim": {"lr": -1.0}}, r"config key optim.lr must be > 0"),
        (
            {"optim": {"timestep_bias_portion": 2.0}},
            r"config key optim.timestep_bias_portion must be in \[0, 1\]",
        ),
        (
            {"optim": {"timestep_bias_begin": 1000}},
            r"config key optim.timestep_bias_begin must be in \[0, 999\]",
        ),
        ({"data": {"motion_mix": [1, 1]}}, r"config key data.motion_mix must have 7 entries, got 2"),
        (
            {"stage": "stunet", "data": {"motion_mix": [1, 1, 1, 1, 1, 1, -1]}},
            r"config key data.motion_mix must be None or 7 shares >= 0",
        ),
        (
            {"data": {"motion_mix": [1, 1, 1, 1, 1, 1, 1]}},  # stage t2i: single frames, no motion
            r"config key data.motion_mix applies to shapes data in video stages only",
        ),
        ("- a\n- list\n", r"a training config must be a mapping of keys to values, got a list"),
    ],
)
def test_bad_config_file_names_the_key(tmp_path, data, message):
    with pytest.raises(ValueError, match=message):
        load_config(write_yaml(tmp_path, data))


# ----- command line: argparse errors exit with code 2, naming the option -------------------------


def exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--bogus", "generate", "x", "-o", "a.mp4"], "--bogus"),
        (["generate", "x", "-o", "a.mp4", "--frames", "-2"], "--frames"),
        (["generate", "x", "-o", "a.mp4", "--guidance", "nan"], "--guidance"),
        (["generate", "x", "-o", "a.mp4", "--steps", "ten"], "--steps"),
        (["generate", "", "-o", "a.mp4"], "prompt"),
        (["generate", "x", "-o", "a.mov"], "-o/--output"),
        (["train", "CONFIG", "--bogus"], "--bogus"),
        (["train", "CONFIG", "--time-limit", "0"], "--time-limit"),
        (["train", "CONFIG", "--step", "2"], "--step"),
        (["train", "CONFIG", "--export", "out", "--step", "0"], "--step"),
        (["train", "CONFIG", "--export", "out", "--resume"], "--export"),
        (["upsample", "in.mp4", "-o", "out.mp4", "--prompt", "x", "--noise-level", "-1"], "--noise-level"),
        (["data", "shapes", "--out", "d", "--count", "1", "--resolution", "4"], "--resolution"),
    ],
)
def test_unknown_or_out_of_range_cli_option_exits_2(tmp_path, capsys, argv, named):
    config = write_yaml(tmp_path, {"optim": {"max_steps": 1}})
    argv = [config if a == "CONFIG" else a for a in argv]
    assert exit_code(argv) == 2
    assert named in capsys.readouterr().err
