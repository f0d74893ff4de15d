"""Sampling-speed work of issue 34 on tiny models: exact speed-ups keep the output, switches that
trade quality keep it at their defaults and refuse bad values by name (``docs/speed.md``)."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange

from lumiere.cli import main
from lumiere.models.presets import STUNET_PRESETS, TEXT_DIM, build_unet2d
from lumiere.models.ssr import build_ssr_stunet
from lumiere.models.stunet import DeepFeatureCache, STUNet, TemporalAttentionBlock
from lumiere.pipelines import LumierePipeline, SSROptions
from lumiere.pipelines.speed import DeepCaches, guided_step_count

PROMPT = "a red circle moving left on a black background"
CALL = dict(num_frames=4, num_inference_steps=4, output_type="pt")


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randomise_inserted(model: torch.nn.Module) -> None:
    """Non-zero weights in every inserted module, so the temporal layers shape the output (at
    inflation their output projections are zero and would hide any change there)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, TemporalAttentionBlock):
                module.proj_out.weight.normal_(0, 0.2)
            proj = getattr(module, "proj_out", None)
            if isinstance(proj, torch.nn.Conv2d):
                proj.weight.normal_(0, 0.2)


def tiny_stunet() -> STUNet:
    torch.manual_seed(0)
    model = STUNet.from_unet2d(build_unet2d("tiny"), **STUNET_PRESETS["tiny"]).eval()
    _randomise_inserted(model)
    return model


@pytest.fixture(scope="module")
def pipe() -> LumierePipeline:
    torch.manual_seed(1)
    ssr = build_ssr_stunet(build_unet2d("tiny"), **STUNET_PRESETS["tiny"]).eval()
    _randomise_inserted(ssr)
    with torch.no_grad():  # weight on the low-res clip, so the SSR settings show in the output
        ssr.conv_in.weight[:, 3:].normal_(0, 0.1, generator=seeded(1))
    pipe = LumierePipeline.from_stunet(tiny_stunet(), ssr=ssr)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ----- exact: the temporal cross-attention reads each clip's text once ------------------------


def test_temporal_cross_attention_equals_one_text_copy_per_pixel():
    """[b, (h w f), c] queries against the clip's text give what [(b h w), f, c] queries against
    one copy of the text per pixel gave before issue 34 (masked tokens included)."""
    torch.manual_seed(0)
    block = TemporalAttentionBlock(32, num_heads=4, norm_groups=8, text_dim=TEXT_DIM).eval()
    with torch.no_grad():
        block.proj_out.weight.normal_(0, 0.2)
    batch, frames, height, width = 2, 4, 3, 5
    hidden = torch.randn(batch * frames, 32, height, width)
    text = torch.randn(batch, 7, TEXT_DIM).repeat_interleave(frames, 0)  # [(b f), n, d]
    mask = torch.zeros(batch, 1, 7)
    mask[1, :, 4:] = -10000.0  # the second clip's last tokens are padding
    mask = mask.repeat_interleave(frames, 0)  # [(b f), 1, n]
    with torch.no_grad():
        output = block(hidden, frames, text, mask)
        # The same block, text copied per pixel.
        tokens = rearrange(block.norm_in(hidden), "(b f) c h w -> (b h w) f c", f=frames)
        tokens = tokens + block.frame_positions(frames, tokens)
        tokens = tokens + block.attn(block.norm_attn(tokens))
        pixels = height * width
        tokens = tokens + block.cross_attn(
            block.norm_cross(tokens),
            encoder_hidden_states=text[::frames].repeat_interleave(pixels, 0),
            attention_mask=mask[::frames].repeat_interleave(pixels, 0),
        )
        tokens = block.proj_out(tokens + block.ff(block.norm_ff(tokens)))
        expected = hidden + rearrange(tokens, "(b h w) f c -> (b f) c h w", h=height, w=width)
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-5)


# ----- DeepCache in the network ---------------------------------------------------------------


def _call_inputs(model: STUNet, batch: int = 2) -> dict:
    return dict(
        sample=torch.randn(batch, model.in_channels, 4, 16, 16, generator=seeded(2)),
        timestep=torch.tensor(500),
        encoder_hidden_states=torch.randn(batch, 5, TEXT_DIM, generator=seeded(3)),
    )


def test_deep_cache_full_call_is_unchanged_and_reuse_of_the_same_step_is_exact():
    model = tiny_stunet()
    inputs = _call_inputs(model)
    cache = DeepFeatureCache()
    with torch.no_grad():
        plain = model(**inputs).sample
        full = model(**inputs, deep_cache=cache).sample
        assert cache.features is not None and cache.features.shape[0] == 2 * 4  # [(b f), c, h, w]
        cache.reuse = True
        reused = model(**inputs, deep_cache=cache).sample  # the same deep features as the full call
        other = model(**(inputs | dict(timestep=torch.tensor(900))), deep_cache=cache).sample
        other_full = model(**(inputs | dict(timestep=torch.tensor(900)))).sample
    torch.testing.assert_close(full, plain, rtol=0, atol=0)
    torch.testing.assert_close(reused, plain, rtol=1e-6, atol=1e-6)
    assert (other - other_full).abs().max() > 1e-4  # another step: the kept features are stale


def test_deep_cache_refuses_an_empty_cache_and_another_batch():
    model = tiny_stunet()
    with torch.no_grad(), pytest.raises(ValueError, match="deep_cache.reuse is True but the cache is empty"):
        model(**_call_inputs(model), deep_cache=DeepFeatureCache(reuse=True))
    cache = DeepFeatureCache()
    with torch.no_grad():
        model(**_call_inputs(model, batch=2), deep_cache=cache)
        cache.reuse = True
        with pytest.raises(ValueError, match="another batch or size"):
            model(**_call_inputs(model, batch=1), deep_cache=cache)


def test_deep_caches_keep_one_cache_per_window_and_branch():
    caches = DeepCaches(2)
    first, second = [slice(0, 4)], [slice(2, 6)]
    assert caches.cache(first, guided=True) is caches.cache(first, guided=True)
    assert caches.cache(first, guided=True) is not caches.cache(second, guided=True)
    assert caches.cache(first, guided=True) is not caches.cache(first, guided=False)
    caches.reuse = True
    assert not caches.cache(first, guided=True).reuse  # nothing kept yet: a full call
    caches.cache(first, guided=True).features = torch.zeros(1)
    assert caches.cache(first, guided=True).reuse


# ----- switches in the pipeline ---------------------------------------------------------------


def test_switch_defaults_give_the_plain_clip(pipe):
    plain = pipe(PROMPT, generator=seeded(0), **CALL).frames
    explicit = pipe(PROMPT, generator=seeded(0), cache_interval=1, guidance_end=1.0, ssr_cache_interval=1,
                    **CALL).frames  # fmt: skip
    torch.testing.assert_close(explicit, plain, rtol=0, atol=0)


def test_cache_interval_changes_the_clip_deterministically(pipe):
    plain = pipe(PROMPT, generator=seeded(0), upsample=False, **CALL).frames
    cached = pipe(PROMPT, generator=seeded(0), upsample=False, cache_interval=2, **CALL).frames
    again = pipe(PROMPT, generator=seeded(0), upsample=False, cache_interval=2, **CALL).frames
    torch.testing.assert_close(cached, again, rtol=0, atol=0)
    assert (cached - plain).abs().max() > 1e-4
    # An interval beyond the step count: the first step is full, every later one reuses it.
    assert pipe(PROMPT, generator=seeded(0), upsample=False, cache_interval=99, **CALL).frames.shape == plain.shape


def test_ssr_cache_interval_with_windows(pipe):
    call = CALL | dict(num_frames=6, ssr_window=4, ssr_overlap=2, ssr_steps=3)
    plain = pipe(PROMPT, generator=seeded(0), **call).frames
    cached = pipe(PROMPT, generator=seeded(0), ssr_cache_interval=2, **call).frames
    grouped = pipe(PROMPT, generator=seeded(0), ssr_options=SSROptions(window=4, overlap=2, steps=3, cache_interval=2),
                   **CALL | dict(num_frames=6)).frames  # fmt: skip
    assert cached.shape == plain.shape == (1, 6, 32, 32, 3)
    assert (cached - plain).abs().max() > 1e-4
    torch.testing.assert_close(grouped, cached, rtol=0, atol=0)


def test_guidance_end_zero_is_no_guidance_and_between_is_between(pipe):
    call = CALL | dict(upsample=False)
    unguided = pipe(PROMPT, generator=seeded(0), guidance_scale=1.0, **call).frames
    ended = pipe(PROMPT, generator=seeded(0), guidance_end=0.0, **call).frames
    half = pipe(PROMPT, generator=seeded(0), guidance_end=0.5, **call).frames
    guided = pipe(PROMPT, generator=seeded(0), **call).frames
    torch.testing.assert_close(ended, unguided, rtol=0, atol=0)
    assert (half - guided).abs().max() > 1e-4 and (half - unguided).abs().max() > 1e-4
    assert [guided_step_count(25, f) for f in (0.0, 0.6, 1.0)] == [0, 15, 25]


def test_channels_last_ssr_gives_the_same_clip(pipe):
    plain = pipe(PROMPT, generator=seeded(0), **CALL).frames
    pipe.ssr.to(memory_format=torch.channels_last)
    try:
        fast = pipe(PROMPT, generator=seeded(0), **CALL).frames
    finally:
        pipe.ssr.to(memory_format=torch.contiguous_format)
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)


def test_bf16_networks_give_a_close_clip():
    """``pipe.to(torch.bfloat16)`` (``lumiere generate --dtype bf16``): the same clip up to bfloat16 rounding."""
    pipe = LumierePipeline.from_stunet(tiny_stunet())
    pipe.set_progress_bar_config(disable=True)
    call = CALL | dict(upsample=False)
    full = pipe(PROMPT, generator=seeded(0), **call).frames
    half = pipe.to(torch.bfloat16)(PROMPT, generator=seeded(0), **call).frames
    assert half.dtype == torch.float32
    assert 0 < (half - full).abs().mean() < 0.02


@pytest.mark.parametrize(
    "keywords, name",
    [
        (dict(cache_interval=0), "cache_interval=0"),
        (dict(cache_interval=1.5), "cache_interval=1.5"),
        (dict(cache_interval=True), "cache_interval=True"),
        (dict(guidance_end=1.5), "guidance_end=1.5"),
        (dict(guidance_end=-0.1), "guidance_end=-0.1"),
        (dict(ssr_cache_interval=0), "ssr_cache_interval=0"),
    ],
)
def test_bad_values_name_the_argument(pipe, keywords, name):
    with pytest.raises(ValueError, match=name):
        pipe(PROMPT, **CALL, **keywords)


@pytest.mark.parametrize(
    "options, option_name",
    [(["--cache-interval", "0"], "--cache-interval"), (["--ssr-cache-interval", "0"], "--ssr-cache-interval"),
     (["--guidance-end", "2"], "--guidance-end"), (["--dtype", "fp16"], "--dtype")],  # fmt: skip
)
def test_cli_refuses_bad_speed_options_by_name(tmp_path, capsys, options, option_name):
    with pytest.raises(SystemExit) as info:
        main(["generate", "a red circle", "-o", str(tmp_path / "a.mp4"), *options])
    assert info.value.code == 2
    assert option_name in capsys.readouterr().err


def test_cli_generate_with_every_speed_switch(pipe, tmp_path):
    """The options reach the pipeline: a tiny pipeline with an SSR (channels_last on CPU) in bf16."""
    from lumiere.data.video_io import read_video

    pipe.save_pretrained(tmp_path / "model")
    out = tmp_path / "a.mp4"
    argv = ["generate", PROMPT, "--model", str(tmp_path / "model"), "-o", str(out), "--frames", "4",
            "--steps", "3", "--cache-interval", "2", "--ssr-cache-interval", "2", "--guidance-end", "0.5",
            "--ssr-window", "4", "--dtype", "bf16"]  # fmt: skip
    assert main(argv) == 0
    frames, _ = read_video(out)
    assert frames.shape == (4, 32, 32, 3)
