"""Caption sensitivity (`lumiere.eval.sensitivity`) on the tiny STUNet: swaps change exactly one
attribute, a text-blind model shows no sensitivity, a model that reads the text does."""

from __future__ import annotations

import json

import pytest
import torch

from lumiere.data.shapes import MovingShapes, parse_caption
from lumiere.eval.sensitivity import SWAPS, _clips, caption_sensitivity, swapped_attributes
from lumiere.models.conditional import build_conditional_stunet
from lumiere.models.presets import STUNET_PRESETS, build_unet2d
from lumiere.models.ssr import build_ssr_stunet
from lumiere.models.stunet import STUNet
from lumiere.models.text import load_text_encoder

SMALL = dict(num_frames=4, resolution=16, count=4, batch_size=2, timesteps=(600, 950))


def tiny_stunet() -> STUNet:
    torch.manual_seed(0)
    stunet = STUNet.from_unet2d(build_unet2d("tiny"), **STUNET_PRESETS["tiny"]).eval()
    with (
        torch.no_grad()
    ):  # non-zero weights everywhere, so the zero-initialised inserted paths read the text too
        generator = torch.Generator().manual_seed(1)
        for param in stunet.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return stunet


@pytest.fixture(scope="module")
def encoder():
    return load_text_encoder(None)


@pytest.mark.parametrize("attribute", list(SWAPS))
def test_swapped_captions_differ_in_exactly_that_attribute(attribute):
    key = SWAPS[attribute][0]
    _, true, swapped = _clips(attribute, 6, num_frames=2, resolution=16, seed=3)
    for a, b in zip(true, swapped, strict=True):
        read_a, read_b = parse_caption(a), parse_caption(b)
        assert read_a[key] != read_b[key]
        assert {k: v for k, v in read_a.items() if k != key} == {k: v for k, v in read_b.items() if k != key}


def test_direction_swap_applies_only_to_translations():
    item = MovingShapes(length=1, seed=0)[0]["attributes"]
    assert swapped_attributes({**item, "motion": "growing"}, "direction") is None
    assert swapped_attributes({**item, "motion": "moving up"}, "direction")["motion"] == "moving down"
    assert swapped_attributes({**item, "motion": "moving up"}, "axis")["motion"] == "moving left"
    assert swapped_attributes({**item, "motion": "moving up"}, "left_right") is None
    assert swapped_attributes({**item, "motion": "moving left"}, "left_right")["motion"] == "moving right"
    assert swapped_attributes({**item, "motion": "moving left"}, "up_down") is None
    assert swapped_attributes({**item, "motion": "moving down"}, "up_down")["motion"] == "moving up"


def test_long_motion_swaps_go_both_ways():
    """ "and_back" turns long moves into one-way ones and one-way moves into long ones; "bounce_speed"
    swaps the two speeds, on clips that all bounce with a speed word."""
    _, true, swapped = _clips("and_back", 12, num_frames=8, resolution=16, seed=0)
    long_first = ["and back" in parse_caption(c)["motion"] for c in true]
    assert any(long_first) and not all(long_first)
    assert all(
        ("and back" in parse_caption(c)["motion"]) != first
        for c, first in zip(swapped, long_first, strict=True)
    )
    _, true, swapped = _clips("bounce_speed", 6, num_frames=8, resolution=16, seed=0)
    speeds = [parse_caption(c)["motion"] for c in true]
    assert set(speeds) == {"bouncing slowly", "bouncing quickly"}
    swap = {"bouncing slowly": "bouncing quickly", "bouncing quickly": "bouncing slowly"}
    assert [parse_caption(c)["motion"] for c in swapped] == [swap[m] for m in speeds]
    item = MovingShapes(length=1, seed=0)[0]["attributes"]
    assert swapped_attributes({**item, "motion": "bouncing"}, "bounce_speed") is None
    assert swapped_attributes({**item, "motion": "growing"}, "then")["motion"] == "growing then shrinking"


def test_text_blind_model_has_no_sensitivity(encoder):
    stunet = tiny_stunet()
    with torch.no_grad():  # zero every cross-attention output: the text can no longer reach the output
        for name, module in stunet.named_modules():
            if name.endswith(("attn2.to_out.0", "cross_attn.to_out.0")):
                module.weight.zero_()
                module.bias.zero_()
    result = caption_sensitivity(stunet, encoder, "colour", **SMALL)
    assert result["loss_true"] == result["loss_swapped"] == result["loss_empty"]
    assert result["share"] == [None, None]
    json.dumps(result)  # JSON-ready (no NaN)


@pytest.mark.parametrize("conditional", [False, True])
def test_model_that_reads_the_text_is_sensitive(encoder, conditional):
    stunet = tiny_stunet()
    if conditional:
        stunet = build_conditional_stunet(stunet)
    result = caption_sensitivity(stunet, encoder, "direction", **SMALL)
    assert result["timesteps"] == [600, 950] and result["count"] == 4
    assert all(a != b for a, b in zip(result["loss_true"], result["loss_swapped"], strict=True))
    assert all(a != b for a, b in zip(result["loss_true"], result["loss_empty"], strict=True))
    again = caption_sensitivity(stunet, encoder, "direction", **SMALL)
    assert again == result  # deterministic under the seed


def test_bad_arguments_are_named(encoder):
    stunet = tiny_stunet()
    with pytest.raises(ValueError, match=r"attribute must be one of \['colour'"):
        caption_sensitivity(stunet, encoder, "size")
    with pytest.raises(ValueError, match=r"timesteps must be a non-empty list of ints in \[0, 999\]"):
        caption_sensitivity(stunet, encoder, "colour", timesteps=(1000,))
    with pytest.raises(ValueError, match="count and batch_size must be >= 1"):
        caption_sensitivity(stunet, encoder, "colour", count=0)
    with pytest.raises(ValueError, match="not an SSR model"):
        caption_sensitivity(build_ssr_stunet(build_unet2d("tiny")), encoder, "colour", **SMALL)


def test_cli_names_a_frame_count_the_model_cannot_take(capsys):
    from lumiere.eval.sensitivity import main

    with pytest.raises(SystemExit):
        main(["--frames", "81", "--count", "1", "--attribute", "bounce_speed"])
    assert "--frames must be a multiple of" in capsys.readouterr().err
