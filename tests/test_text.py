"""Text encoders: MiniLM default, T5/CLIP from a local directory, cache, save/load. Offline."""

import json
import logging

import pytest
import torch
from torch.testing import assert_close

from lumiere.models.text import (
    CONFIG_NAME,
    NULL_PROMPT,
    HFTextEncoder,
    MiniLMTextEncoder,
    TextEncoder,
    load_text_encoder,
)

PROMPTS = ["a red circle moving left on a black background", "a blue square growing on a white background"]


@pytest.fixture(scope="module")
def minilm():
    return MiniLMTextEncoder(cache_size=0)


def _n_tokens(encoder, prompt):
    return len(encoder.tokenizer(prompt)["input_ids"])


# ---- MiniLM ---------------------------------------------------------------------------------


def test_minilm_shapes_and_dtypes(minilm):
    states, mask = minilm.encode(PROMPTS)
    assert minilm.dim == 384 and minilm.max_length == 32
    assert states.shape == (2, 32, 384) and states.dtype == torch.float32
    assert mask.shape == (2, 32) and mask.dtype == torch.long
    assert torch.isfinite(states).all()
    # forward / __call__ and a single string are the same as encode
    assert_close(minilm(PROMPTS).states, states)
    assert minilm.encode(PROMPTS[0]).states.shape == (1, 32, 384)


def test_minilm_deterministic(minilm):
    first, second = minilm.encode(PROMPTS), minilm.encode(PROMPTS)
    assert_close(first.states, second.states, rtol=0, atol=0)
    assert torch.equal(first.mask, second.mask)


def test_batch_composition_does_not_change_states(minilm):
    alone = minilm.encode(PROMPTS[:1]).states[0]
    batched = minilm.encode([PROMPTS[0], PROMPTS[1], NULL_PROMPT]).states[0]
    assert_close(alone, batched, rtol=1e-4, atol=1e-5)


def test_different_prompts_give_different_states(minilm):
    states, _ = minilm.encode(["a red circle", "a green triangle"])
    assert (states[0] - states[1]).abs().max() > 1e-2


def test_mask_marks_padding(minilm):
    _, mask = minilm.encode(PROMPTS)
    for row, prompt in zip(mask, PROMPTS, strict=True):
        n = _n_tokens(minilm, prompt)
        assert 2 < n < 32
        assert row[:n].eq(1).all() and row[n:].eq(0).all()


def test_empty_prompt_is_a_valid_unconditional_input(minilm):
    assert NULL_PROMPT == ""
    states, mask = minilm.encode([PROMPTS[0], NULL_PROMPT])  # cond and uncond stack in one batch
    assert states.shape == (2, 32, 384)
    assert mask[1].sum() == 2  # [CLS] [SEP]
    assert torch.isfinite(states[1]).all()
    assert (states[0] - states[1]).abs().max() > 1e-2


def test_over_long_prompt_is_truncated_with_a_warning(minilm, caplog):
    prompt = " ".join(["red circle"] * 40)
    with caplog.at_level(logging.WARNING, logger="lumiere.models.text"):
        states, mask = minilm.encode([prompt])
    assert states.shape == (1, 32, 384) and mask.all()
    assert any("truncated" in r.message for r in caplog.records)


def test_bad_prompts_raise(minilm):
    with pytest.raises(TypeError, match="strings"):
        minilm.encode(["ok", None])
    with pytest.raises(ValueError, match="at least one"):
        minilm.encode([])


def test_frozen_but_states_feed_autograd(minilm):
    assert not any(p.requires_grad for p in minilm.parameters())
    minilm.train()
    assert not minilm.training and not minilm.model.training  # no dropout, ever
    states, _ = minilm.encode(PROMPTS)
    assert not states.requires_grad
    weight = torch.ones(384, requires_grad=True)
    (states * weight).sum().backward()  # would fail on inference-mode tensors
    assert weight.grad is not None


def test_cache_hits_match_and_evict_lru():
    encoder = MiniLMTextEncoder(cache_size=2)
    fresh = encoder.encode(PROMPTS)
    assert list(encoder._cache) == PROMPTS
    cached = encoder.encode(PROMPTS)
    assert_close(cached.states, fresh.states, rtol=0, atol=0)
    cached.states.zero_()  # callers get copies, never the cache itself
    assert_close(encoder.encode(PROMPTS).states, fresh.states, rtol=0, atol=0)
    encoder.encode([PROMPTS[0], "a new prompt"])  # PROMPTS[0] refreshed, PROMPTS[1] evicted
    assert list(encoder._cache) == [PROMPTS[0], "a new prompt"]
    encoder.clear_cache()
    assert not encoder._cache


def test_minilm_save_load_round_trip(minilm, tmp_path):
    minilm.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_NAME]  # weights stay in the package
    assert json.loads((tmp_path / CONFIG_NAME).read_text()) == {"kind": "minilm", "max_length": 32}
    for loaded in (TextEncoder.from_pretrained(tmp_path), load_text_encoder(tmp_path)):
        assert isinstance(loaded, MiniLMTextEncoder) and loaded.max_length == 32
        assert_close(loaded.encode(PROMPTS).states, minilm.encode(PROMPTS).states)


def test_max_length_is_configurable():
    encoder = load_text_encoder("minilm", max_length=8)
    assert encoder.encode(PROMPTS).states.shape == (2, 8, 384)
    with pytest.raises(ValueError, match="max_length"):
        MiniLMTextEncoder(max_length=1000)  # BERT has 512 positions


def test_factory_refuses_hub_ids(tmp_path):
    assert isinstance(load_text_encoder(), MiniLMTextEncoder)
    with pytest.raises(ValueError, match="local paths only"):
        load_text_encoder("google/t5-v1_1-xxl")
    with pytest.raises(ValueError, match="local paths only"):
        load_text_encoder(tmp_path / "missing")
    with pytest.raises(FileNotFoundError):
        TextEncoder.from_pretrained(tmp_path)


# ---- T5 / CLIP from a local directory (tiny random models, MiniLM's BERT tokenizer) -------------


def _save_tiny(kind, directory, tokenizer):
    import transformers

    vocab = len(tokenizer)
    if kind == "t5":
        config = transformers.T5Config(
            vocab_size=vocab, d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4
        )
        model = transformers.T5EncoderModel(config)
    elif kind == "clip":
        config = transformers.CLIPTextConfig(
            vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=77,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=101, eos_token_id=102,
        )  # fmt: skip
        model = transformers.CLIPTextModel(config)
    else:  # an architecture we do not support as a text encoder
        config = transformers.BertConfig(
            vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4
        )
        model = transformers.BertModel(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory, minilm):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny_text")
    return {kind: _save_tiny(kind, root / kind, minilm.tokenizer) for kind in ("t5", "clip", "bert")}


@pytest.mark.parametrize("kind", ["t5", "clip"])
def test_hf_encoder_from_local_dir(kind, tiny_dirs):
    encoder = load_text_encoder(tiny_dirs[kind], max_length=16)
    assert isinstance(encoder, HFTextEncoder)
    assert encoder.model_type == {"t5": "t5", "clip": "clip_text_model"}[kind]
    assert encoder.dim == 32 and encoder.max_length == 16
    states, mask = encoder.encode([PROMPTS[0], NULL_PROMPT])
    assert states.shape == (2, 16, 32) and states.dtype == torch.float32
    assert mask[1].sum() == 2 and mask[0].sum() == _n_tokens(encoder, PROMPTS[0])
    assert (states[0] - states[1]).abs().max() > 1e-3
    assert HFTextEncoder(tiny_dirs[kind]).max_length == 77  # default: CLIP's context length


@pytest.mark.parametrize("kind", ["t5", "clip"])
def test_hf_encoder_save_load_round_trip(kind, tiny_dirs, tmp_path):
    encoder = HFTextEncoder(tiny_dirs[kind], max_length=16, cache_size=0)
    encoder.save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["kind"] == "hf" and config["max_length"] == 16
    loaded = TextEncoder.from_pretrained(tmp_path)
    assert isinstance(loaded, HFTextEncoder) and loaded.max_length == 16
    assert_close(loaded.encode(PROMPTS).states, encoder.encode(PROMPTS).states, rtol=0, atol=0)
    with pytest.raises(ValueError, match="not a MiniLMTextEncoder"):
        MiniLMTextEncoder.from_pretrained(tmp_path)


def test_hf_encoder_diffusers_layout(tiny_dirs, tmp_path):
    import shutil

    shutil.copytree(tiny_dirs["clip"], tmp_path / "text_encoder")
    shutil.copytree(tiny_dirs["clip"], tmp_path / "tokenizer")
    encoder = load_text_encoder(tmp_path, max_length=16)
    assert encoder.model_type == "clip_text_model"
    assert encoder.encode(PROMPTS).states.shape == (2, 16, 32)


def test_hf_encoder_rejects_other_architectures(tiny_dirs):
    with pytest.raises(ValueError, match="not a supported text encoder"):
        HFTextEncoder(tiny_dirs["bert"])
    with pytest.raises(ValueError, match="max_length"):
        HFTextEncoder(tiny_dirs["clip"], max_length=78)  # CLIP has 77 positions
