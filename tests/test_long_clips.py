"""Long clips (issue 33): long-motion data, the long-clip probe (on rendered truth and on
counter-examples), the deepened STUNet (identity at init, save/load) and the 80-frame configs."""

import copy
import hashlib
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors import safe_open

from lumiere.checkpoint import CheckpointError
from lumiere.config import config_from_dict, load_config
from lumiere.data.shapes import (
    BOUNCE_PERIOD_QUICK,
    LONG_MOTION_PHRASES,
    LONG_MOTIONS,
    MOTIONS,
    MovingShapes,
    make_caption,
    parse_caption,
    render_clip,
)
from lumiere.eval.long_clips import (
    MAX_COLOUR_DRIFT,
    OSCILLATING,
    draw_long_prompts,
    long_clip_metrics,
    read_long_clip,
    score_long,
    summarise_clip_lines,
)
from lumiere.eval.probe import to_frames
from lumiere.models.presets import STUNET_PRESETS, build_unet2d
from lumiere.models.shared_weights import SHARED_FILE, load_beyond_base
from lumiere.models.stunet import STUNet
from lumiere.models.text import load_text_encoder
from lumiere.pipelines import LumierePipeline, make_sampling_scheduler

REPO = Path(__file__).resolve().parents[1]
ATTRS = {"background": "black", "shape": "circle", "colour": "red"}


# ---- data ------------------------------------------------------------------------------------


def test_older_clips_are_unchanged():
    """The 16-frame data streams of the recipe's stages: the same bytes as before long motions."""
    digest = hashlib.sha256()
    for data in (
        MovingShapes(length=40, seed=0),
        MovingShapes(length=40, seed=12, motion_mix=[3, 3, 1, 1, 1, 1, 1]),
    ):
        for i in range(0, 40, 4):
            frames, caption, attributes = data.sample(i)
            digest.update(np.round(frames * 255).astype(np.uint8).tobytes())
            digest.update(f"{caption}|{sorted(attributes.items())}".encode())
    # Computed with the code of commit a1af198, before long motions existed.
    assert digest.hexdigest() == "90f0f9dbe049a1a607ac554d21e5853dfd1c7acbab5254ea083bab7ea8bb8696"
    same = MovingShapes(length=40, seed=0, long_share=0.0)
    for i in (0, 5):
        a, b = MovingShapes(length=40, seed=0).sample(i), same.sample(i)
        assert np.array_equal(a[0], b[0]) and a[1:] == b[1:]


def test_long_share_and_mix_draw_long_motions():
    data = MovingShapes(length=200, num_frames=80, seed=3, long_share=0.6)
    motions = [data.sample(i)[2]["motion"] for i in range(200)]
    long = sum(m in LONG_MOTIONS for m in motions)
    assert 90 <= long <= 150 and set(motions) <= set(MOTIONS) | set(LONG_MOTIONS)
    only_quick = MovingShapes(length=20, num_frames=80, seed=3, long_share=1.0, long_mix=[0] * 7 + [1])
    assert {only_quick.sample(i)[2]["motion"] for i in range(20)} == {"bouncing quickly"}
    with pytest.raises(ValueError, match="long_share must be in"):
        MovingShapes(long_share=1.5)
    with pytest.raises(ValueError, match="long_mix must be None or 8 shares"):
        MovingShapes(long_share=0.5, long_mix=[1, 1])
    with pytest.raises(ValueError, match="mode 'video' only"):
        MovingShapes(long_share=0.5, mode="image")


def test_source_frames_gives_windows_of_the_long_clip():
    """A cascade's TSR trains on windows of the long clips (data.source_frames)."""
    long = MovingShapes(length=6, num_frames=80, resolution=16, seed=3, long_share=0.6)
    windows = MovingShapes(length=6, num_frames=16, resolution=16, seed=3, long_share=0.6, source_frames=80)
    starts = set()
    for i in range(6):
        clip, caption, _ = long.sample(i)
        window, window_caption, _ = windows.sample(i)
        assert window.shape[0] == 16 and window_caption == caption
        matches = [s for s in range(65) if np.array_equal(clip[s : s + 16], window)]
        assert matches
        starts.add(matches[0])
    assert len(starts) > 1
    for bad in (dict(source_frames=8), dict(source_frames=80, frame_step=2)):
        with pytest.raises(ValueError, match="source_frames must be >= num_frames"):
            MovingShapes(num_frames=16, **bad)


def test_frame_step_gives_the_keyframes_of_the_long_clip():
    long = MovingShapes(length=30, num_frames=80, seed=4, long_share=0.6)
    keys = MovingShapes(length=30, num_frames=16, seed=4, long_share=0.6, frame_step=5)
    for i in range(0, 30, 3):
        frames, caption, _ = long.sample(i)
        key_frames, key_caption, _ = keys.sample(i)
        assert key_caption == caption and np.array_equal(key_frames, frames[::5])


def test_long_prompts_are_a_function_of_the_seed():
    prompts = draw_long_prompts(60, seed=0)
    assert prompts == draw_long_prompts(60, seed=0) and prompts != draw_long_prompts(60, seed=1)
    motions = [parse_caption(p)["motion"] for p in prompts]
    assert 20 <= sum(m in LONG_MOTIONS for m in motions) <= 50
    assert set(motions) <= set(MOTIONS) | set(LONG_MOTIONS)


def test_long_prompts_can_ask_for_given_motions_in_turn():
    asked = ["bouncing slowly", "bouncing quickly", "moving right"]
    prompts = draw_long_prompts(9, seed=0, motions=asked)
    assert [parse_caption(p)["motion"] for p in prompts] == asked * 3
    assert prompts[4:] == draw_long_prompts(9, seed=0, motions=asked)[4:]  # a slice is the whole list's
    assert len({p.split(" bouncing")[0].split(" moving")[0] for p in prompts}) > 3  # the rest is drawn
    for bad in ([], ["bouncing sideways"]):
        with pytest.raises(ValueError, match="motions must be a non-empty list of"):
            draw_long_prompts(4, seed=0, motions=bad)


def test_long_captions_parse_back_and_older_captions_do_not_change():
    for motion, phrases in LONG_MOTION_PHRASES.items():
        for phrase in range(len(phrases)):
            caption = make_caption({**ATTRS, "motion": motion}, template=phrase % 5, phrase=phrase)
            assert parse_caption(caption) == {**ATTRS, "motion": motion}, caption
    assert parse_caption("a red circle bouncing up and down on a black background")["motion"] == "bouncing"
    assert parse_caption("a red circle moving to the left on a black background")["motion"] == "moving left"


def test_long_motion_config_keys(tmp_path):
    base = {"stage": "stunet", "output_dir": str(tmp_path), "model": {"init_from": "x"}}
    config = config_from_dict({**base, "data": {"long_motion_share": 0.5, "long_motion_mix": [1] * 8}})
    assert config.data.long_motion_share == 0.5
    with pytest.raises(ValueError, match="data.long_motion_share must be in"):
        config_from_dict({**base, "data": {"long_motion_share": 2.0}})
    with pytest.raises(ValueError, match="video stages only"):
        config_from_dict({"stage": "t2i", "output_dir": str(tmp_path), "data": {"long_motion_share": 0.5}})
    with pytest.raises(ValueError, match="coarse_temporal_halvings applies to stages"):
        config_from_dict(
            {"stage": "t2i", "output_dir": str(tmp_path), "model": {"coarse_temporal_halvings": 2}}
        )


# ---- the probe on the truth ------------------------------------------------------------------


def test_probe_reads_rendered_long_clips():
    """80-frame clips of every long motion and every older motion read as their captions."""
    clips, captions = [], []
    for seed, share in ((1, 1.0), (2, 0.0)):
        data = MovingShapes(length=48, num_frames=80, resolution=32, seed=seed, long_share=share)
        for i in range(48):
            frames, caption, _ = data.sample(i)
            clips.append(frames)
            captions.append(caption)
    metrics = long_clip_metrics(clips, captions)
    assert metrics["accuracy"]["all"] >= 0.95, [c for c in metrics["clips"] if not c["scores"]["all"]][:3]
    assert metrics["accuracy"]["present"] == 1.0 and metrics["accuracy"]["colour"] == 1.0
    assert metrics["bouncing"]["motion_accuracy"] >= 0.95 and metrics["bouncing"]["periodic_clips"] >= 6
    assert metrics["bouncing"]["steady"] == 1.0 and metrics["bouncing"]["median_period_spread"] < 0.05
    assert metrics["drift"]["colour_median"] < 0.01 and metrics["drift"]["size_median"] < 0.01
    by_asked = metrics["motion_by_asked"]  # every clip in one group; each motion reads on the truth
    assert sum(g["clips"] for g in by_asked.values()) == len(clips) and len(by_asked) >= 14
    assert all(g["motion_accuracy"] >= 0.75 for g in by_asked.values()), by_asked
    # the figures come back from the clip lines alone, after a JSON round trip (NaN kept as null)
    assert summarise_clip_lines(json.loads(json.dumps(metrics["clips"]))) == metrics


def _bounce(periods: np.ndarray, frames: int = 80) -> np.ndarray:
    """cy [f] of a bounce whose period (frames) may change from bounce to bounce."""
    phase = np.cumsum(np.pi / np.interp(np.arange(frames), np.linspace(0, frames - 1, len(periods)), periods))
    return 26 - 14 * np.abs(np.sin(phase))


def test_steady_bounce_period_and_speed():
    size, cx = np.full(80, 9.0), np.full(80, 16.0)
    quick = read_long_clip(render_clip(ATTRS, cx, _bounce(np.full(2, 9.0)), size, 32, 32))
    assert quick.motion == "bouncing" and quick.speed == "quickly" and quick.steady
    assert abs(quick.bounce_period - 9.0) < 0.5 and quick.period_spread < 0.05
    slow = read_long_clip(render_clip(ATTRS, cx, _bounce(np.full(2, 22.0)), size, 32, 32))
    assert slow.speed == "slowly" and slow.steady
    assert score_long(slow, "a red circle bouncing slowly on a black background")["motion"]
    assert not score_long(slow, "a red circle bouncing quickly on a black background")["motion"]
    assert score_long(slow, "a red circle bouncing on a black background")["motion"]


# ---- counter-examples: what the probe must flag -------------------------------------------------


def test_flags_an_irregular_bounce():
    size, cx = np.full(80, 9.0), np.full(80, 16.0)
    irregular = read_long_clip(
        render_clip(ATTRS, cx, _bounce(np.array([8.0, 20.0, 8.0, 20.0])), size, 32, 32)
    )
    assert irregular.motion == "bouncing" and not irregular.steady


def test_flags_a_vanishing_object():
    data = MovingShapes(length=4, num_frames=80, seed=1, long_share=1.0, long_mix=[0, 1, 0, 0, 0, 0, 0, 0])
    frames, caption, _ = data.sample(0)
    assert score_long(frames, caption)["all"]
    gone = frames.copy()
    gone[40:43] = gone[40:43, :1, :1]  # three frames of background only
    scores = score_long(gone, caption)
    assert not scores["present"] and not scores["all"]
    assert int((~read_long_clip(gone).present).sum()) == 3


def test_flags_colour_drift_and_a_colour_that_changes():
    cx, cy, size = np.full(80, 16.0), np.linspace(10, 22, 80), np.full(80, 9.0)
    red = render_clip(ATTRS, cx, cy, size, 32, 32)
    orange = render_clip({**ATTRS, "colour": "orange"}, cx, cy, size, 32, 32)
    drifting = np.concatenate([red[:40], orange[40:]])
    reading = read_long_clip(drifting)
    assert reading.colour_drift > MAX_COLOUR_DRIFT and reading.second_colours[0] == "red"
    assert not score_long(reading, "a red circle moving down on a black background")["colour"]
    assert score_long(red, "a red circle moving down on a black background")["all"]


def test_flags_motion_that_does_not_hold():
    """Asked to move right for the whole clip, it comes back; asked to come back, it does not."""
    size, cy = np.full(80, 9.0), np.full(80, 16.0)
    back = 8 + 16 * np.sin(np.pi * np.linspace(0, 1, 80)) ** 2
    clip = render_clip(ATTRS, back, cy, size, 32, 32)
    assert not score_long(clip, "a red circle moving right on a black background")["motion"]
    assert score_long(clip, "a red circle moving right and back on a black background")["motion"]
    once = render_clip(ATTRS, np.linspace(8, 24, 80), cy, size, 32, 32)
    assert not score_long(once, "a red circle moving right and back on a black background")["motion"]
    wobble = render_clip(ATTRS, 16 + 8 * np.sin(np.linspace(0, 6 * np.pi, 80)), cy, size, 32, 32)
    assert read_long_clip(wobble).motion == OSCILLATING


# ---- the deepened STUNet -----------------------------------------------------------------------


def _tiny_stunet() -> STUNet:
    torch.manual_seed(0)
    model = STUNet.from_unet2d(build_unet2d("tiny"), **STUNET_PRESETS.get("tiny", {})).eval()
    # Trained-looking temporal weights, so "equal at init" is not equality of two identities.
    with torch.no_grad():
        for module in model.inserted_modules():
            for p in module.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return model


def test_deepened_stunet_starts_as_the_model_and_round_trips(tmp_path):
    model = _tiny_stunet()
    sample = torch.randn(2, model.in_channels, 16, 16, 16)
    text = torch.randn(2, 5, model.image_config.cross_attention_dim)
    timestep = torch.tensor([10, 700])
    with torch.no_grad():
        before = model(sample, timestep, text).sample
    factor = model.temporal_factor
    model.deepen_time(halvings=2, num_layers=1)
    assert model.temporal_factor == 4 * factor
    with torch.no_grad():
        after = model(sample, timestep, text).sample
    torch.testing.assert_close(after, before, rtol=0, atol=0)  # a moving clip, not only a still one
    with pytest.raises(ValueError, match="cannot be halved"):
        model(torch.randn(1, model.in_channels, 2 * factor, 16, 16), timestep[:1], text[:1])
    with pytest.raises(ValueError, match="already has a coarse temporal level"):
        model.deepen_time()
    model.freeze_spatial(True)
    assert all(p.requires_grad for p in model.coarse_level.parameters())

    model.save_pretrained(tmp_path)
    loaded = STUNet.from_pretrained(tmp_path).eval()
    assert loaded.config.coarse_temporal_halvings == 2 and loaded.config.coarse_temporal_layers == 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(sample, timestep, text).sample, after)


def test_temporal_convs_that_read_the_text_start_as_the_model_and_round_trip(tmp_path):
    model = _tiny_stunet()
    sample = torch.randn(2, model.in_channels, 8, 16, 16)
    text = torch.randn(2, 5, model.image_config.cross_attention_dim)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    timestep = torch.tensor([10, 700])
    with torch.no_grad():
        before = model(sample, timestep, text, mask).sample
    model.add_text_to_temporal_convs()
    with torch.no_grad():
        torch.testing.assert_close(model(sample, timestep, text, mask).sample, before, rtol=0, atol=0)
    with pytest.raises(ValueError, match="read the text already"):
        model.add_text_to_temporal_convs()
    model.freeze_spatial(True)
    convs = [conv for block in (*model.down_blocks, *model.up_blocks) for conv in block.temporal_convs]
    assert all(conv.text_modulation.weight.requires_grad for conv in convs)

    model.train()  # the zero FiLM gets a gradient, so training can switch it on
    model(sample, timestep, text, mask).sample.square().mean().backward()
    assert all(conv.text_modulation.weight.grad.abs().sum() > 0 for conv in convs)
    model.zero_grad()
    model.eval()
    with torch.no_grad():  # a trained FiLM: the temporal convs now follow the text
        for conv in convs:
            conv.text_modulation.weight.normal_(0, 0.05)
        after = model(sample, timestep, text, mask).sample
        other_text = text.clone()
        other_text[1, 2] += 1.0
        changed = model(sample, timestep, other_text, mask).sample
        padding = text.clone()
        padding[0, 3:] += 1.0  # tokens the mask drops: neither the attention nor the FiLM reads them
        padded = model(sample, timestep, padding, mask).sample
    assert (after - before).abs().max() > 1e-3
    assert (changed[1] - after[1]).abs().max() > 1e-3
    torch.testing.assert_close(padded, after)
    with pytest.raises(ValueError, match="pass text_summary"):
        convs[0](torch.randn(8, convs[0].norm.num_channels, 4, 4), 8)

    model.save_pretrained(tmp_path)
    loaded = STUNet.from_pretrained(tmp_path).eval()
    assert loaded.config.temporal_conv_text
    with torch.no_grad():
        torch.testing.assert_close(loaded(sample, timestep, text, mask).sample, after)


def test_temporal_conv_text_is_refused_where_there_are_no_temporal_convs_to_train(tmp_path):
    with pytest.raises(ValueError, match="temporal_conv_text applies to stages"):
        config_from_dict({"stage": "ssr", "output_dir": str(tmp_path), "model": {"temporal_conv_text": True}})


def test_the_coarse_level_learns():
    """Its zero projection gets a gradient, so training can switch the level on."""
    model = _tiny_stunet()
    model.deepen_time(halvings=1, num_layers=1)
    model.enable_gradient_checkpointing()
    model.train()
    sample = torch.randn(1, model.in_channels, 16, 16, 16)
    text = torch.randn(1, 5, model.image_config.cross_attention_dim)
    model(sample, torch.tensor([500]), text).sample.square().mean().backward()
    assert model.coarse_level.proj_out.conv.weight.grad.abs().sum() > 0


# ---- a pipeline with a long-clip model -----------------------------------------------------------


def _long_clip_pipelines():
    """A pipeline whose long clips go to a deepened copy of its base model, and a pipeline of each model alone."""
    short = _tiny_stunet()
    long = copy.deepcopy(short)
    long.deepen_time(halvings=1, num_layers=1)
    with torch.no_grad():  # a fine-tuned coarse level: the long model no longer equals the short one
        for p in long.coarse_level.parameters():
            p.add_(0.05 * torch.randn_like(p))
    encoder = load_text_encoder(None)
    pipes = (
        LumierePipeline(short, encoder, make_sampling_scheduler(), long_stunet=long, long_clip_frames=8),
        LumierePipeline(short, encoder, make_sampling_scheduler()),
        LumierePipeline(long, encoder, make_sampling_scheduler()),
    )
    for pipe in pipes:
        pipe.set_progress_bar_config(disable=True)
    return pipes


def _clip(pipe, frames, **kwargs):
    generator = torch.Generator().manual_seed(4)
    return pipe(ATTRS_PROMPT, num_frames=frames, num_inference_steps=2, generator=generator, output_type="pt",
                **kwargs).frames  # fmt: skip


ATTRS_PROMPT = "a red circle bouncing slowly on a black background"


def test_long_clips_go_to_the_long_model_and_round_trip(tmp_path):
    both, short_only, long_only = _long_clip_pipelines()
    short, long = both.stunet, both.long_stunet
    factor = long.temporal_factor  # 4: frames of the long model are multiples of it
    assert both.base_model(4) is short and both.base_model(8) is long and both.base_model(12) is long
    assert both.base_model(10) is short  # not a multiple of the long model's factor: the base model takes it
    assert both.base_model(8, window=4) is short  # base windows are for the base model's length
    assert factor == 4 and short.temporal_factor == 2

    long_clip = _clip(both, 8)
    torch.testing.assert_close(long_clip, _clip(long_only, 8), rtol=0, atol=0)
    assert (long_clip - _clip(short_only, 8)).abs().max() > 1e-3  # the other model would differ
    torch.testing.assert_close(_clip(both, 4), _clip(short_only, 4), rtol=0, atol=0)
    torch.testing.assert_close(_clip(both, 10), _clip(short_only, 10), rtol=0, atol=0)

    both.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["long_stunet"] == ["lumiere.models.stunet", "STUNet"] and index["long_clip_frames"] == 8
    loaded = LumierePipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.long_clip_frames == 8 and loaded.long_stunet.temporal_factor == factor
    torch.testing.assert_close(_clip(loaded, 8), long_clip, rtol=0, atol=0)
    short_only.save_pretrained(tmp_path / "short")  # a pipeline without one saves and loads without one
    assert LumierePipeline.from_pretrained(tmp_path / "short").long_stunet is None


def test_long_model_is_saved_as_what_it_changed(tmp_path):
    """``long_stunet/`` stores only the tensors that differ from ``stunet``'s (here the coarse level);
    a base model changed since is refused, and the loaded long model saves and loads on its own."""
    both, _, _ = _long_clip_pipelines()
    both.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "long_stunet" / SHARED_FILE), framework="pt") as handle:
        stored = set(handle.keys())
    whole = set(both.long_stunet.state_dict())
    assert stored and stored < whole and all(name.startswith("coarse_level.") for name in stored)
    mask = os.umask(0)
    os.umask(mask)  # an ordinary file (readable by all once installed), not a temporary file's 0o600
    assert (tmp_path / "long_stunet" / SHARED_FILE).stat().st_mode & 0o777 == 0o666 & ~mask
    loaded = LumierePipeline.from_pretrained(tmp_path).long_stunet
    alone = STUNet.from_pretrained(tmp_path / "long_stunet")  # as model.init_from reads it: with ../stunet
    for name, tensor in both.long_stunet.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0)
        torch.testing.assert_close(alone.state_dict()[name], tensor, rtol=0, atol=0)

    half = LumierePipeline.from_pretrained(tmp_path, torch_dtype=torch.bfloat16).long_stunet
    assert half.dtype == torch.bfloat16  # the shared tensors checked in the dtype they were saved in
    for name, tensor in both.long_stunet.state_dict().items():
        torch.testing.assert_close(half.state_dict()[name], tensor.to(torch.bfloat16), rtol=0, atol=0)

    loaded.save_pretrained(tmp_path / "alone")  # a whole model again
    alone = STUNet.from_pretrained(tmp_path / "alone")
    torch.testing.assert_close(alone.coarse_level.state_dict(), both.long_stunet.coarse_level.state_dict())

    changed = copy.deepcopy(both.stunet)
    with torch.no_grad():
        changed.conv_in.weight.add_(0.01)
    with pytest.raises(CheckpointError, match="saved against another stunet"):
        load_beyond_base(STUNet, tmp_path / "long_stunet", changed)
    moved = tmp_path / "elsewhere" / "long_stunet"  # away from the stunet/ it was saved beside
    moved.parent.mkdir()
    (tmp_path / "long_stunet").rename(moved)
    with pytest.raises(FileNotFoundError, match="load the pipeline folder"):
        STUNet.from_pretrained(moved)
    moved.rename(tmp_path / "long_stunet")
    (tmp_path / "long_stunet" / SHARED_FILE).write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        LumierePipeline.from_pretrained(tmp_path)


def test_long_model_must_fit_the_base_model():
    both, _, _ = _long_clip_pipelines()
    parts = (both.text_encoder, make_sampling_scheduler())
    for bad in (1, True, 8.0):
        with pytest.raises(ValueError, match="long_clip_frames"):
            LumierePipeline(both.stunet, *parts, long_stunet=both.long_stunet, long_clip_frames=bad)
    torch.manual_seed(0)
    wider = STUNet.from_unet2d(build_unet2d("tiny", in_channels=4), **STUNET_PRESETS["tiny"])
    with pytest.raises(ValueError, match="long_stunet has in_channels 4 but stunet has 3"):
        LumierePipeline(both.stunet, *parts, long_stunet=wider)
    with pytest.raises(ValueError, match="needs a base stunet"):
        LumierePipeline(None, *parts, ssr=both.stunet, long_stunet=both.long_stunet)


# ---- configs -----------------------------------------------------------------------------------


def test_long_configs_validate():
    tsr = load_config(REPO / "configs/long/tsr_keyframes.yaml")
    assert tsr.data.source_frames == 80 and tsr.data.task_mix[4] > 0 and tsr.data.keyframe_step == 5
    for bad in ({"task_mix": [1, 0, 0]}, {"source_frames": 8}, {"keyframe_step": 1}):
        data = {"kind": "shapes", "num_frames": 16, **bad}
        with pytest.raises(ValueError, match="|".join(f"data.{key}" for key in bad)):
            config_from_dict({"stage": "conditional", "model": {"init_from": "x"}, "data": data})
    config = load_config(REPO / "configs/long/80_frames.yaml")
    assert config.data.num_frames == 80 and config.model.coarse_temporal_halvings == 2
    assert config.data.num_frames % 16 == 0 and 0 < config.data.long_motion_share < 1
    assert BOUNCE_PERIOD_QUICK[1] * 4 < config.data.num_frames  # quick bounces: several per clip


def test_smoke_config_trains_exports_and_resumes(tmp_path):
    from lumiere.train import train

    config = load_config(REPO / "configs/smoke/long_tiny.yaml")
    config.output_dir = str(tmp_path / "run")
    first = train(config, stop_after_steps=2)
    assert first.step == 2 and first.model_dir is None
    result = train(config, resume=True)
    assert result.step == 3
    exported = STUNet.from_pretrained(Path(result.model_dir) / "stunet")
    assert exported.config.coarse_temporal_halvings == 2 and exported.temporal_factor == 16
    assert exported.config.temporal_conv_text  # the surgery of model.temporal_conv_text, saved
    assert exported.down_blocks[0].temporal_convs[0].text_modulation.weight.abs().sum() > 0  # and trained


# ---- the comparison run in slices (bench/long_clip_compare.py) -------------------------------


@pytest.fixture(scope="module")
def compare():
    bench = str(REPO / "bench")
    sys.path.insert(0, bench)
    try:
        import long_clip_compare

        yield long_clip_compare
    finally:
        sys.path.remove(bench)


def test_a_slice_of_the_prompts_gives_the_whole_runs_clips():
    """Clip i is seeded by its place in the whole prompt list, so a run over prompts 1..2 makes
    clips 1..2 of the run over 0..2 (the comparison's 200 prompts run in slices)."""
    from lumiere.eval.evaluate import generate_clips
    from lumiere.pipelines import LumierePipeline

    pipe = LumierePipeline.from_pretrained()
    pipe.set_progress_bar_config(disable=True)
    prompts = draw_long_prompts(3, seed=0)
    settings = dict(seed=5, num_frames=16, num_inference_steps=1, guidance_scale=5.0, batch_size=2)
    whole = generate_clips(pipe, prompts, **settings)
    part = generate_clips(pipe, prompts[1:], **settings, first_index=1)
    for a, b in zip(whole[1:], part, strict=True):  # batched differently: float rounding only
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert not np.array_equal(whole[0], whole[1])  # the seeds differ from clip to clip


def test_compare_baseline_is_the_16_frame_model(compare):
    """The baselines (``shipped_one_pass``, windows, keyframes) are the 16-frame model's even when
    the shipped pipeline holds a long-clip model; ``one_pass`` by default is the shipped long one."""
    short, shipped = compare.load_short_pipeline(None), compare.load_pipeline(None)
    assert short.base_model(80) is short.stunet and short.long_stunet is None
    if shipped.long_stunet is not None:
        assert shipped.base_model(80) is shipped.long_stunet


def test_compare_merges_slices_in_order_and_refuses_gaps(compare, tmp_path):
    prompts = draw_long_prompts(4, seed=3)
    rendered = MovingShapes(length=4, num_frames=16, resolution=32, seed=3, long_share=1.0)
    clips = [to_frames(rendered.sample(i)[0]) for i in range(4)]  # clips the probe can read
    model = build_unet2d("tiny")

    def recipe(seed: int = 3, motions=None, model=model) -> dict:
        args = SimpleNamespace(seed=seed, long_share=0.6, motions=motions, frames=16, steps=2, guidance=5.0,
                               window=16, overlap=8, stride=5)  # fmt: skip
        return compare.method_recipe("windows", args, {"shipped": SimpleNamespace(stunet=model)})

    def save(name: str, start: int, stop: int, prompts=prompts, **changed):
        args = SimpleNamespace(start=start)
        made = recipe(**changed)
        compare.save_clips(str(tmp_path / name), "windows", clips[start:stop], prompts[start:stop], args, 2.0, made)
        return str(tmp_path / name)

    first, last = save("a", 0, 3), save("b", 3, 4)
    merged = compare.merge_saved([last, first])["windows"]  # any order of the folders
    assert merged["prompts"] == prompts and merged["recipe"] == recipe()
    quantised = [np.round(clip * 255) / 255 for clip in clips]  # as saved: uint8
    assert merged["lines"] == long_clip_metrics(quantised, prompts)["clips"]
    # a slice kept as its results JSON (--clips: the clip lines, no clips) merges with a folder
    figures = {**long_clip_metrics(quantised[:3], prompts[:3]), "seconds_per_clip": 4.0, "recipe": recipe()}
    (tmp_path / "first.json").write_text(json.dumps({"args": {"start": 0}, "methods": {"windows": figures}}))
    mixed = compare.merge_saved([str(tmp_path / "first.json"), last])["windows"]
    assert mixed["lines"] == merged["lines"] and mixed["seconds"] == (3 * 4.0 + 2.0) / 4
    figures.pop("clips")
    (tmp_path / "bare.json").write_text(json.dumps({"args": {"start": 0}, "methods": {"windows": figures}}))
    with pytest.raises(SystemExit, match="without --clips"):
        compare.merge_saved([str(tmp_path / "bare.json"), last])
    with pytest.raises(SystemExit, match="after prompt 1 the next slice starts at prompt 3"):
        compare.merge_saved([save("c", 0, 2), last])
    with pytest.raises(SystemExit, match="made differently"):
        compare.merge_saved([first, save("d", 3, 4, seed=4)])
    other = build_unet2d("tiny")  # another model's weights (same shapes): its slices are another column
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    assert compare.fingerprint(other) != compare.fingerprint(model) == compare.fingerprint(copy.deepcopy(model))
    with pytest.raises(SystemExit, match="made differently"):
        compare.merge_saved([first, save("m", 3, 4, model=other)])
    asked = ["bouncing slowly", "bouncing quickly"]  # --motions: recorded, and merged slices must agree
    chosen = draw_long_prompts(4, seed=3, motions=asked)
    halves = [save("e", 0, 2, motions=asked, prompts=chosen), save("f", 2, 4, motions=asked, prompts=chosen)]
    assert compare.merge_saved(halves)["windows"]["prompts"] == chosen
    with pytest.raises(SystemExit, match="made differently"):
        compare.merge_saved([halves[0], save("g", 2, 4, prompts=chosen)])
