"""Text encoders of the Stable Diffusion families against diffusers' own `encode_prompt`. Offline.

Tiny SD 1.x / 2.x / SDXL folders written by diffusers' pipelines (`lumiere.testing.make_tiny_sd_folder`);
each encoder must give exactly what diffusers gives for the same folder.
"""

import json
import shutil
import types

import pytest
import torch
from torch.testing import assert_close

from lumiere.models.text import (
    CONFIG_NAME,
    NULL_PROMPT,
    SDTextEncoder,
    SDXLTextEncoder,
    TextEncoder,
    TextEncoding,
    load_text_encoder,
    text_encoder_for_sd_folder,
)
from lumiere.testing import make_tiny_sd_folder

# different lengths; the last is longer than CLIP's 77 tokens and is truncated
PROMPTS = [
    "a red circle moving left on a black background",
    "dog",
    "a cat photo and a dog video in the blue square " + "growing star " * 40,
]
NEGATIVES = ["a green triangle", NULL_PROMPT, "white"]
EXACT = dict(rtol=0, atol=0)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd")
    return {family: make_tiny_sd_folder(root / family, family) for family in ("sd1", "sd2", "sdxl")}


@pytest.fixture(scope="module")
def diffusers_pipes(folders):
    """diffusers' own pipelines over the same folders (the reference)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    pipes = {f: StableDiffusionPipeline.from_pretrained(folders[f]) for f in ("sd1", "sd2")}
    pipes["sdxl"] = StableDiffusionXLPipeline.from_pretrained(folders["sdxl"])
    for family in ("sd1", "sd2"):
        text_encoder = pipes[family].text_encoder
        if not hasattr(text_encoder, "text_model"):
            # diffusers' clip_skip path reads `text_encoder.text_model.final_layer_norm`, which
            # transformers 5 moved to `text_encoder.final_layer_norm` (huggingface/diffusers#14124)
            text_encoder.text_model = types.SimpleNamespace(final_layer_norm=text_encoder.final_layer_norm)
    return pipes


# ---- SD 1.x / 2.x ------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["sd1", "sd2"])
@pytest.mark.parametrize("clip_skip", [None, 1])
def test_sd_matches_diffusers_encode_prompt(family, clip_skip, folders, diffusers_pipes):
    pipe = diffusers_pipes[family]
    encoder = text_encoder_for_sd_folder(folders[family], clip_skip=clip_skip)
    assert type(encoder) is SDTextEncoder and encoder.clip_skip == clip_skip
    assert encoder.dim == 32 and encoder.max_length == 77 and encoder.pooled_dim is None
    expected, expected_negative = pipe.encode_prompt(
        PROMPTS, "cpu", 1, True, negative_prompt=NEGATIVES, clip_skip=clip_skip
    )
    states, mask = encoded = encoder.encode(PROMPTS)
    assert states.shape == (3, 77, 32) and states.dtype == torch.float32 and encoded.pooled is None
    assert_close(states, expected, **EXACT)
    assert mask.dtype == torch.long and mask.eq(1).all()  # SD attends to all 77 tokens, padding too
    negative = encoder.encode(NEGATIVES).states
    if clip_skip is None:
        assert_close(negative, expected_negative, **EXACT)
    else:  # diffusers encodes negatives from the last layer whatever clip_skip; ours read the same layer
        same_layer, _ = pipe.encode_prompt(NEGATIVES, "cpu", 1, False, clip_skip=clip_skip)
        assert_close(negative, same_layer, **EXACT)
        last_layer = text_encoder_for_sd_folder(folders[family]).encode(PROMPTS).states
        assert (states - last_layer).abs().max() > 1e-2  # clip_skip reads another layer


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_batch_of_different_lengths_equals_prompts_alone(family, folders):
    encoder = text_encoder_for_sd_folder(folders[family], cache_size=0)
    prompts = PROMPTS + [NULL_PROMPT]
    batched = encoder.encode(prompts)
    for i, prompt in enumerate(prompts):
        alone = encoder.encode(prompt)
        assert_close(batched.states[i : i + 1], alone.states, rtol=1e-5, atol=1e-6)
        if family == "sdxl":
            assert_close(batched.pooled[i : i + 1], alone.pooled, rtol=1e-5, atol=1e-6)
    assert (batched.states[0] - batched.states[1]).abs().max() > 1e-2


def test_over_long_prompt_warns(folders, caplog):
    encoder = text_encoder_for_sd_folder(folders["sd1"], cache_size=0)
    with caplog.at_level("WARNING", logger="lumiere.models.text"):
        encoder.encode(PROMPTS[2])
    assert any("truncated to max_length=77" in r.message for r in caplog.records)


# ---- SDXL --------------------------------------------------------------------------------------


@pytest.mark.parametrize("clip_skip", [None, 1])
def test_sdxl_matches_diffusers_encode_prompt(clip_skip, folders, diffusers_pipes):
    pipe = diffusers_pipes["sdxl"]
    encoder = load_text_encoder(folders["sdxl"], clip_skip=clip_skip)
    assert type(encoder) is SDXLTextEncoder and encoder.force_zeros_for_empty_prompt
    assert encoder.dim == 16 + 32 and encoder.pooled_dim == 16
    embeds, zeros, pooled, pooled_zeros = pipe.encode_prompt(
        PROMPTS, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True, clip_skip=clip_skip
    )
    encoded = encoder.encode(PROMPTS)
    assert encoded.states.shape == (3, 77, 48) and encoded.pooled.shape == (3, 16)
    assert_close(encoded.states, embeds, **EXACT)
    assert_close(encoded.pooled, pooled, **EXACT)
    assert encoded.mask.eq(1).all()
    # no negative prompt: diffusers uses zeros, as the empty prompt gives here
    unconditional = encoder.encode([NULL_PROMPT] * 3)
    assert zeros.abs().max() == 0 and pooled_zeros.abs().max() == 0
    assert_close(unconditional.states, zeros, **EXACT)
    assert_close(unconditional.pooled, pooled_zeros, **EXACT)
    assert unconditional.mask.eq(1).all()
    # a negative prompt is a prompt (diffusers reads its penultimate layer whatever clip_skip)
    negatives = ["a green triangle", "white", "cyan star"]
    if clip_skip is None:
        _, negative, _, negative_pooled = pipe.encode_prompt(
            PROMPTS, device="cpu", do_classifier_free_guidance=True, negative_prompt=negatives
        )
    else:
        negative, _, negative_pooled, _ = pipe.encode_prompt(
            negatives, device="cpu", do_classifier_free_guidance=False, clip_skip=clip_skip
        )
    encoded_negative = encoder.encode(negatives)
    assert_close(encoded_negative.states, negative, **EXACT)
    assert_close(encoded_negative.pooled, negative_pooled, **EXACT)


def test_sdxl_without_forced_zeros_encodes_the_empty_prompt(folders, diffusers_pipes, tmp_path):
    pipe = diffusers_pipes["sdxl"]
    encoder = SDXLTextEncoder(folders["sdxl"], force_zeros_for_empty_prompt=False)
    _, negative, _, negative_pooled = pipe.encode_prompt(
        PROMPTS[:1], device="cpu", do_classifier_free_guidance=True, negative_prompt=NULL_PROMPT
    )
    encoded = encoder.encode(NULL_PROMPT)
    assert encoded.states.abs().max() > 0
    assert_close(encoded.states, negative, **EXACT)
    assert_close(encoded.pooled, negative_pooled, **EXACT)
    encoder.save_pretrained(tmp_path)
    assert not TextEncoder.from_pretrained(tmp_path).force_zeros_for_empty_prompt


def test_cache_returns_identical_tensors_with_pooled(folders):
    encoder = text_encoder_for_sd_folder(folders["sdxl"], cache_size=2)
    fresh = encoder.encode(PROMPTS[:2])
    assert list(encoder._cache) == PROMPTS[:2]
    assert all(row.pooled.shape == (16,) for row in encoder._cache.values())
    cached = encoder.encode(PROMPTS[:2])
    for name in ("states", "mask", "pooled"):
        assert torch.equal(getattr(cached, name), getattr(fresh, name))
    cached.pooled.zero_()  # callers get copies, never the cache itself
    assert torch.equal(encoder.encode(PROMPTS[:2]).pooled, fresh.pooled)
    # cached and fresh rows mix in one call, in prompt order
    mixed = encoder.encode([PROMPTS[1], NULL_PROMPT, PROMPTS[0]])
    assert torch.equal(mixed.pooled[0], fresh.pooled[1]) and torch.equal(mixed.pooled[2], fresh.pooled[0])
    assert mixed.pooled[1].abs().max() == 0
    both = TextEncoding.cat([fresh, mixed])  # the pipeline stacks cond and uncond like this
    assert both.states.shape == (5, 77, 48) and both.pooled.shape == (5, 16)


def test_frozen(folders):
    encoder = text_encoder_for_sd_folder(folders["sdxl"])
    encoder.train()
    assert not encoder.training and not encoder.model.training and not encoder.model_2.training
    assert not any(p.requires_grad for p in encoder.parameters())
    assert {id(p) for p in encoder.model_2.parameters()} <= {id(p) for p in encoder.parameters()}


# ---- save / load, factory, errors -----------------------------------------------------------------


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_save_load_by_reference(family, folders, tmp_path):
    encoder = text_encoder_for_sd_folder(folders[family], clip_skip=1, cache_size=0)
    encoder.save_pretrained(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [CONFIG_NAME]  # the weights stay in the SD folder
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["kind"] == family.replace("sd2", "sd") and config["clip_skip"] == 1
    assert config["path"] == str(folders[family].resolve()) and config["max_length"] == 77
    for loaded in (TextEncoder.from_pretrained(tmp_path), load_text_encoder(tmp_path)):
        assert type(loaded) is type(encoder) and loaded.clip_skip == 1 and loaded.reference
        want, got = encoder.encode(PROMPTS), loaded.encode(PROMPTS)
        assert_close(got.states, want.states, **EXACT)
        if family == "sdxl":
            assert loaded.force_zeros_for_empty_prompt
            assert_close(got.pooled, want.pooled, **EXACT)


def test_save_load_by_copy(folders, tmp_path):
    encoder = SDXLTextEncoder(folders["sdxl"], reference=False, cache_size=0)
    encoder.save_pretrained(tmp_path / "copy")
    names = {p.name for p in (tmp_path / "copy").iterdir()}
    assert names == {CONFIG_NAME, "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"}
    loaded = load_text_encoder(tmp_path / "copy")
    assert type(loaded) is SDXLTextEncoder and not loaded.reference
    assert_close(loaded.encode(PROMPTS).states, encoder.encode(PROMPTS).states, **EXACT)
    assert_close(loaded.encode(PROMPTS).pooled, encoder.encode(PROMPTS).pooled, **EXACT)


def test_load_text_encoder_picks_the_family(folders):
    assert type(load_text_encoder(folders["sdxl"])) is SDXLTextEncoder
    for family in ("sd1", "sd2"):
        assert type(load_text_encoder(folders[family], cache_size=0)) is SDTextEncoder


def test_fp16_variant_folder_loads(folders, tmp_path):
    from transformers import CLIPTextModel

    folder = tmp_path / "fp16"
    shutil.copytree(folders["sd1"] / "tokenizer", folder / "tokenizer")
    shutil.copy(folders["sd1"] / "model_index.json", folder)
    CLIPTextModel.from_pretrained(folders["sd1"] / "text_encoder").half().save_pretrained(
        folder / "text_encoder", variant="fp16"
    )
    assert sorted(p.name for p in (folder / "text_encoder").iterdir()) == [
        "config.json",
        "model.fp16.safetensors",
    ]
    encoder = text_encoder_for_sd_folder(folder)
    assert next(encoder.model.parameters()).dtype == torch.float32
    states = encoder.encode(PROMPTS).states
    assert states.dtype == torch.float32
    reference = text_encoder_for_sd_folder(folders["sd1"]).encode(PROMPTS).states
    assert_close(states, reference, rtol=0, atol=2e-2)  # the weights were rounded to fp16


@pytest.mark.parametrize(
    ("family", "removed"),
    [("sd1", "text_encoder"), ("sd1", "tokenizer"), ("sdxl", "text_encoder_2"), ("sdxl", "tokenizer_2")],
)
def test_missing_component_is_named(family, removed, folders, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(folders[family], folder, ignore=shutil.ignore_patterns("unet", "vae"))
    shutil.rmtree(folder / removed)
    with pytest.raises(FileNotFoundError, match=f"component folder {removed}/ is missing"):
        text_encoder_for_sd_folder(folder)


def test_bad_folder_and_arguments(folders, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        text_encoder_for_sd_folder(tmp_path / "missing")
    for clip_skip in (2, -1, 1.0):  # the tiny text models have 2 layers
        with pytest.raises(ValueError, match="clip_skip"):
            text_encoder_for_sd_folder(folders["sd1"], clip_skip=clip_skip)
    # a saved reference whose SD folder moved away
    moved = tmp_path / "moved"
    shutil.copytree(folders["sd1"], moved, ignore=shutil.ignore_patterns("unet", "vae"))
    text_encoder_for_sd_folder(moved).save_pretrained(tmp_path / "saved")
    shutil.rmtree(moved)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TextEncoder.from_pretrained(tmp_path / "saved")
