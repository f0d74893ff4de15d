"""diffusers' attention caching hooks apply to the STUNet as they do to the image U-Net (issue 29).

Pyramid Attention Broadcast (``diffusers.hooks``) hooks attention modules by name and, inside its
skip range, returns the attention output cached by the previous call instead of recomputing it.
"""

from __future__ import annotations

import torch
from diffusers.hooks import PyramidAttentionBroadcastConfig, apply_pyramid_attention_broadcast

from lumiere import STUNet
from lumiere.models.presets import build_unet2d


def _broadcast_config() -> PyramidAttentionBroadcastConfig:
    return PyramidAttentionBroadcastConfig(
        spatial_attention_block_skip_range=2,  # every second call reuses the cached attention output
        spatial_attention_timestep_skip_range=(-1, 1001),  # at every timestep
        spatial_attention_block_identifiers=("attn1",),
        current_timestep_callback=lambda: 500,
    )


def _hooked(module: torch.nn.Module) -> int:
    return sum(getattr(m, "_diffusers_hook", None) is not None for m in module.modules())


def test_pyramid_attention_broadcast_hooks_the_stunet_like_the_image_model():
    torch.manual_seed(0)
    unet2d = build_unet2d("tiny")
    stunet = STUNet.from_unet2d(unet2d).eval()
    reference = STUNet.from_unet2d(unet2d).eval()
    apply_pyramid_attention_broadcast(unet2d, _broadcast_config())
    apply_pyramid_attention_broadcast(stunet, _broadcast_config())
    assert _hooked(stunet) == _hooked(unet2d) > 0  # the same image attentions, no more, no fewer

    text = torch.randn(1, 8, unet2d.config.cross_attention_dim)
    first, second = torch.randn(2, 1, 3, 4, 16, 16).unbind(0)  # [b, c, f, h, w] each
    with torch.no_grad():
        torch.testing.assert_close(stunet(first, 500, text).sample, reference(first, 500, text).sample)
        cached = stunet(second, 500, text).sample  # the second call reuses the first one's attention
        fresh = reference(second, 500, text).sample
    assert cached.shape == fresh.shape
    assert not torch.allclose(cached, fresh)  # the cache was used, so the output differs
