"""Lumiere's Space-Time U-Net (STUNet), Bar-Tal et al. 2024, Sec. 3.1 and App. B.

The STUNet keeps the blocks of a diffusers ``UNet2DConditionModel`` (the "image model") and calls
their resnets, attentions and resizers explicitly, with Lumiere's temporal modules interleaved as
visible submodules (``print(stunet)`` shows the whole architecture):

- ``FactorizedSpaceTimeConv`` after every spatial layer of every level except the coarsest;
- ``TemporalAttentionBlock`` stacked at the coarsest level (the mid block);
- ``TemporalDownsample`` after each spatial downsampler and ``TemporalUpsample`` after each
  spatial upsampler, so the network compresses time as well as space;
- optionally (long clips), a ``CoarseTemporalLevel`` below the mid block that halves time further
  and attends over the whole clip there (``coarse_temporal_halvings``, ``deepen_time``).

Every inserted block is residual with a zero-initialised output, and the temporal resizers are
initialised to nearest-neighbour resampling (App. B), so on a video whose frames are all the same
image the inflated model gives exactly the image model's output on every frame.

Image models it inflates: the block types, embeddings and attention options of the published
diffusers configs of Stable Diffusion 1.x / 2.x, SDXL base and refiner, the SD x4 upscaler and
DeepFloyd IF stages I and II (the paper's Imagen is a pixel cascade like IF). The image model's
embeddings (timestep, class labels, SDXL's added text/time conditions, IF's pooled text, the text
projection) are its own modules, called through its own helper methods, once per clip.

Axis legend (einops):
    b  batch            c  channels
    f  frames           h, w  height, width
    n  tokens of the text encoder      d  text width
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from diffusers import UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import AttentionMixin, FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import TimestepEmbedding, get_timestep_embedding
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import ResnetBlock2D
from diffusers.utils import BaseOutput
from einops import rearrange
from torch import nn

from lumiere.checkpoint import write_checksums
from lumiere.models.inflate import load_image_weights
from lumiere.models.loading import check_saved_stunet, weight_files
from lumiere.models.shared_weights import load_beyond_base, stores_beyond_base

# Blocks whose internals (resnets / attentions / resizers) the STUNet knows how to call. The
# "Resnet*" and "Simple*" ones are DeepFloyd IF's: resizing by a ResnetBlock2D, attention by
# diffusers' Attention with the text as added keys/values.
SUPPORTED_DOWN_BLOCKS = (
    "DownBlock2D",
    "CrossAttnDownBlock2D",
    "ResnetDownsampleBlock2D",
    "SimpleCrossAttnDownBlock2D",
)
SUPPORTED_UP_BLOCKS = (
    "UpBlock2D",
    "CrossAttnUpBlock2D",
    "ResnetUpsampleBlock2D",
    "SimpleCrossAttnUpBlock2D",
)
SUPPORTED_MID_BLOCKS = ("UNetMidBlock2DCrossAttn", "UNetMidBlock2DSimpleCrossAttn")
# Added embeddings: IF's pooled text ("text") and SDXL's text/time conditions ("text_time"). The
# Kandinsky ones ("text_image", "image", "image_hint") need image embeddings and are refused.
SUPPORTED_ADDITION_EMBEDS = (None, "text", "text_time")
SUPPORTED_ENCODER_HID_DIM_TYPES = (None, "text_proj")


@dataclass
class STUNetOutput(BaseOutput):
    """Output of the STUNet.

    sample: ``[b, c_out, f, h, w]`` the network's prediction (what it predicts is the objective's
        business: the network knows nothing of diffusion).
    """

    sample: torch.Tensor


def _group_count(channels: int, preferred: int = 32) -> int:
    """Largest divisor of ``channels`` not above ``preferred``: GroupNorm groups for any width."""
    for groups in range(min(preferred, channels), 0, -1):
        if channels % groups == 0:
            return groups
    return 1


# ---------------------------------------------------------------------------------------------
# Inserted (temporal) modules. Each subclasses InsertedModule so the STUNet can list them.
# ---------------------------------------------------------------------------------------------


class InsertedModule(nn.Module):
    """Base class of every module that inflation adds to the image model (Sec. 3.1)."""


class FactorizedSpaceTimeConv(InsertedModule):
    """Factorized space-time convolution block (Sec. 3.1, "Conv-based blocks").

    GroupNorm -> SiLU -> 3x3 spatial conv -> SiLU -> 1-D temporal conv (kernel ``k`` along frames)
    -> zero-initialised 1x1 output projection, added to the input. Starts as the identity.

    With ``text_dim`` (``STUNet.add_text_to_temporal_convs``, our addition for long clips), the
    normalised input is scaled and shifted by a zero-initialised linear map of the clip's mean text
    state (FiLM, Perez et al. 2018), so the convolutions that draw the motion frame by frame read
    the prompt ("and back", "slowly") directly; with zero weights the block computes what it did.

    Input and output: ``[(b f), c, h, w]``; text summary ``[(b f), d]``.
    """

    def __init__(
        self, channels: int, kernel_size: int = 3, norm_groups: int = 32, text_dim: int | None = None
    ):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"temporal_kernel_size must be odd (1, 3, 5, ...), got {kernel_size}")
        self.norm = nn.GroupNorm(_group_count(channels, norm_groups), channels, eps=1e-6)
        self.spatial_conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.temporal_conv = temporal_conv1d(channels, kernel_size)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)
        self.text_modulation: nn.Linear | None = None
        self.initialize_weights()
        if text_dim:
            self.add_text_modulation(text_dim)

    def initialize_weights(self) -> None:
        # Zero output projection: the block is the identity at inflation (Sec. 3.1).
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def add_text_modulation(self, text_dim: int) -> None:
        """A zero-initialised ``Linear(text_dim, 2 c)`` giving (scale, shift) of the normalised input."""
        channels = self.norm.num_channels
        parameter = self.proj_out.weight
        self.text_modulation = nn.Linear(text_dim, 2 * channels).to(parameter.device, parameter.dtype)
        nn.init.zeros_(self.text_modulation.weight)
        nn.init.zeros_(self.text_modulation.bias)

    def forward(
        self, hidden_states: torch.Tensor, num_frames: int, text_summary: torch.Tensor | None = None
    ) -> torch.Tensor:
        residual = hidden_states
        normed = self.norm(hidden_states)
        if self.text_modulation is not None:
            if text_summary is None:
                raise ValueError(
                    "this temporal conv reads the text (temporal_conv_text); pass text_summary [(b f), d]"
                )
            scale, shift = self.text_modulation(text_summary.to(normed.dtype)).chunk(2, dim=1)
            normed = normed * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
        hidden_states = self.spatial_conv(F.silu(normed))
        hidden_states = over_frames(self.temporal_conv, F.silu(hidden_states), num_frames)
        return residual + self.proj_out(hidden_states)


class TemporalAttentionBlock(InsertedModule):
    """Temporal self-attention over frames at each pixel (Sec. 3.1, coarsest level only).

    Tokens are the ``f`` frames of one pixel; a sinusoidal frame-position encoding is added after
    the input norm so any frame count works. Pre-norm self-attention over frames, optional
    cross-attention to the text (``text_dim``), feed-forward, each with an inner residual, then a
    zero-initialised output projection added to the input: starts as the identity.

    The cross-attention is our addition (the paper does not detail its temporal blocks): with the
    image model frozen, its cross-attention was only ever trained on captions without motion words,
    so the temporal path needs its own view of the prompt to follow "moving left" or "bouncing".

    Input and output: ``[(b f), c, h, w]``; text ``[(b f), n, d]``, mask bias ``[(b f), 1, n]``.
    """

    def __init__(self, channels: int, num_heads: int = 4, norm_groups: int = 32, text_dim: int | None = None):
        super().__init__()
        if channels % num_heads != 0:
            raise ValueError(
                f"temporal_attention_heads={num_heads} must divide the coarsest width {channels}"
            )
        self.channels = channels
        self.norm_in = nn.GroupNorm(_group_count(channels, norm_groups), channels, eps=1e-6)
        self.norm_attn = nn.LayerNorm(channels)
        self.attn = Attention(query_dim=channels, heads=num_heads, dim_head=channels // num_heads, bias=True)
        self.norm_cross = nn.LayerNorm(channels) if text_dim else None
        self.cross_attn = (
            Attention(
                query_dim=channels,
                cross_attention_dim=text_dim,
                heads=num_heads,
                dim_head=channels // num_heads,
                bias=True,
            )
            if text_dim
            else None
        )
        self.norm_ff = nn.LayerNorm(channels)
        self.ff = FeedForward(channels, mult=4, activation_fn="geglu")
        self.proj_out = nn.Linear(channels, channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        # Zero output projection: the block is the identity at inflation (Sec. 3.1).
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def frame_positions(self, num_frames: int, like: torch.Tensor) -> torch.Tensor:
        """Sinusoidal encoding of frame indices: ``[f, c]``."""
        positions = torch.arange(num_frames, device=like.device)
        return get_timestep_embedding(
            positions, self.channels, flip_sin_to_cos=True, downscale_freq_shift=0
        ).to(like.dtype)

    def forward(
        self,
        hidden_states: torch.Tensor,
        num_frames: int,
        text: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        height, width = hidden_states.shape[-2:]
        residual = hidden_states
        tokens = rearrange(self.norm_in(hidden_states), "(b f) c h w -> (b h w) f c", f=num_frames)
        tokens = tokens + self.frame_positions(num_frames, tokens)
        tokens = tokens + self.attn(self.norm_attn(tokens))
        if self.cross_attn is not None:
            # Each query attends to the text on its own (one softmax per query), so every token of
            # a clip can query the clip's text in one sequence, [(b h w), f, c] -> [b, (h w f), c]:
            # the same result as one copy of the text per pixel, without h*w copies of the text
            # and of its keys and values (issue 34: ~7% of the SSR's FLOPs at 64x64).
            pixels = height * width
            queries = rearrange(self.norm_cross(tokens), "(b p) f c -> b (p f) c", p=pixels)
            attended = self.cross_attn(
                queries,
                encoder_hidden_states=text[::num_frames],  # [b, n, d]: the clip's text, once
                attention_mask=None if text_mask is None else text_mask[::num_frames],  # [b, 1, n]
            )
            tokens = tokens + rearrange(attended, "b (p f) c -> (b p) f c", p=pixels)
        tokens = tokens + self.ff(self.norm_ff(tokens))
        tokens = self.proj_out(tokens)
        delta = rearrange(tokens, "(b h w) f c -> (b f) c h w", h=height, w=width)
        return residual + delta


def temporal_conv1d(channels: int, kernel_size: int, stride: int = 1) -> nn.Conv2d:
    """A 1-D convolution along frames, as a ``(k, 1)`` Conv2d over ``[b, c, f, h*w]``.

    Mathematically a Conv1d over ``[(b h w), c, f]``, but it needs no transpose and runs on the
    fast 2-D convolution kernels (a ``(k, 1, 1)`` Conv3d takes a slow path on CPU, ~3x slower).
    """
    return nn.Conv2d(
        channels, channels, kernel_size=(kernel_size, 1), stride=(stride, 1), padding=(kernel_size // 2, 0)
    )


def over_frames(conv: nn.Conv2d, hidden_states: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Apply a ``temporal_conv1d`` to ``[(b f), c, h, w]``; returns ``[(b f'), c, h, w]``."""
    height, width = hidden_states.shape[-2:]
    hidden_states = rearrange(hidden_states, "(b f) c h w -> b c f (h w)", f=num_frames)
    hidden_states = conv(hidden_states)
    return rearrange(hidden_states, "b c f (h w) -> (b f) c h w", h=height, w=width)


def _identity_temporal_kernel(conv: nn.Conv2d) -> None:
    """Set a temporal conv to pass the centre frame through unchanged (App. B)."""
    if conv.weight.is_meta:  # weights come from a checkpoint (from_pretrained)
        return
    channels, kernel = conv.out_channels, conv.kernel_size[0]
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, :, kernel // 2, 0].copy_(torch.eye(channels, dtype=conv.weight.dtype))
        conv.bias.zero_()


class TemporalDownsample(InsertedModule):
    """Halve the frame count: a 1-D temporal conv initialised as identity, with stride 2 (App. B).

    At initialisation it keeps frames 0, 2, 4, ... (nearest neighbour).
    Input ``[(b f), c, h, w]`` -> output ``[(b f/2), c, h, w]``.
    """

    def __init__(self, channels: int, kernel_size: int = 3):
        super().__init__()
        self.conv = temporal_conv1d(channels, kernel_size, stride=2)
        _identity_temporal_kernel(self.conv)

    def forward(self, hidden_states: torch.Tensor, num_frames: int) -> torch.Tensor:
        return over_frames(self.conv, hidden_states, num_frames)


class TemporalUpsample(InsertedModule):
    """Double the frame count: frame duplication, then a 1-D temporal conv initialised as identity.

    Input ``[(b f), c, h, w]`` -> output ``[(b 2f), c, h, w]``.
    """

    def __init__(self, channels: int, kernel_size: int = 3):
        super().__init__()
        self.conv = temporal_conv1d(channels, kernel_size)
        _identity_temporal_kernel(self.conv)

    def forward(self, hidden_states: torch.Tensor, num_frames: int) -> torch.Tensor:
        hidden_states = rearrange(hidden_states, "(b f) c h w -> b f c h w", f=num_frames)
        hidden_states = rearrange(hidden_states.repeat_interleave(2, dim=1), "b f c h w -> (b f) c h w")
        return over_frames(self.conv, hidden_states, 2 * num_frames)


class NoiseLevelEmbedding(InsertedModule):
    """Embedding of the conditioning-augmentation noise level (cascaded diffusion, Ho et al. 2021).

    Used by the SSR model; added to the timestep embedding. Its last layer is zero-initialised so
    the model starts as the image model. ``[b] -> [b, d]``.
    """

    def __init__(self, proj_channels: int, embed_dim: int):
        super().__init__()
        self.proj_channels = proj_channels
        self.embedding = TimestepEmbedding(proj_channels, embed_dim)
        nn.init.zeros_(self.embedding.linear_2.weight)
        nn.init.zeros_(self.embedding.linear_2.bias)

    def forward(self, noise_level: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        features = get_timestep_embedding(
            noise_level, self.proj_channels, flip_sin_to_cos=True, downscale_freq_shift=0
        )
        return self.embedding(features.to(dtype))


# ---------------------------------------------------------------------------------------------
# Per-frame conditioning, broadcast to whatever frame count a level runs at.
# ---------------------------------------------------------------------------------------------


class FrameConditioning:
    """Timestep embedding ``[b, d_t]`` and text states ``[b, n, d]``, repeated per frame on demand.

    Levels run at different frame counts once time is downsampled; ``at(f)`` returns the
    ``[(b f), ...]`` tensors for ``f`` frames, computed once per count (``summary_at(f)``: the mean
    text state ``[(b f), d]`` over the kept tokens, for temporal convs that read the text).
    ``attention_kwargs`` are the caller's ``cross_attention_kwargs``, passed unchanged to the image
    model's attentions.
    """

    def __init__(
        self,
        temb: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor | None,
        attention_kwargs: dict[str, Any] | None = None,
        token_mask: torch.Tensor | None = None,  # [b, n], 1 keeps a token (for the text summary)
    ):
        self.temb, self.text, self.text_mask = temb, text, text_mask
        self.attention_kwargs = attention_kwargs
        self.token_mask = token_mask
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}
        self._summaries: dict[int, torch.Tensor] = {}

    def summary_at(self, num_frames: int) -> torch.Tensor:
        """The mean of the kept text states, ``[(b f), d]``."""
        if num_frames not in self._summaries:
            if self.token_mask is None:
                summary = self.text.mean(dim=1)
            else:
                weights = self.token_mask.to(self.text.dtype).unsqueeze(-1)  # [b, n, 1]
                summary = (self.text * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
            self._summaries[num_frames] = summary.repeat_interleave(num_frames, 0)
        return self._summaries[num_frames]

    def at(self, num_frames: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if num_frames not in self._cache:
            mask = None if self.text_mask is None else self.text_mask.repeat_interleave(num_frames, 0)
            self._cache[num_frames] = (
                self.temb.repeat_interleave(num_frames, 0),
                self.text.repeat_interleave(num_frames, 0),
                mask,
            )
        return self._cache[num_frames]


# ---------------------------------------------------------------------------------------------
# Space-time blocks: one image-model block with its inserted temporal modules.
# ---------------------------------------------------------------------------------------------


def _run_step(owner: nn.Module, step: Any, *args: Any) -> Any:
    """``step(*args)``, under activation checkpointing when ``owner`` has it switched on."""
    if owner.gradient_checkpointing and torch.is_grad_enabled():
        # diffusers' ModelMixin.enable_gradient_checkpointing sets this function; it calls
        # ``step.__call__``, which a bound method has.
        return owner._gradient_checkpointing_func(step, *args)
    return step(*args)


class _CheckpointedLayers(nn.Module):
    """A module whose steps run under activation checkpointing when it is switched on
    (``STUNet.enable_gradient_checkpointing``): the backward keeps each step's inputs only and
    recomputes the rest. Steps are ``self.layer(index, ...)`` and the block's resizing."""

    gradient_checkpointing = False

    def checkpointed(self, step: Any, *args: Any) -> Any:
        return _run_step(self, step, *args)

    def run_layer(self, *args: Any) -> torch.Tensor:
        return self.checkpointed(self.layer, *args)


def _spatial_attention(
    attention: nn.Module, hidden_states: torch.Tensor, conditioning: FrameConditioning, num_frames: int
) -> torch.Tensor:
    """One image-model attention over ``[(b f), c, h, w]``, called as its block calls it.

    A ``Transformer2DModel`` (SD 1.x/2.x, SDXL, x4 upscaler) takes the mask as
    ``encoder_attention_mask``; IF's ``Simple*CrossAttn`` blocks hold a bare ``Attention`` whose
    keys/values include the text, and pass the text mask as its ``attention_mask``.
    """
    _, text, text_mask = conditioning.at(num_frames)
    if isinstance(attention, Attention):
        return attention(
            hidden_states,
            encoder_hidden_states=text,
            attention_mask=text_mask,
            **(conditioning.attention_kwargs or {}),
        )
    return attention(
        hidden_states,
        encoder_hidden_states=text,
        encoder_attention_mask=text_mask,
        cross_attention_kwargs=conditioning.attention_kwargs,
        return_dict=False,
    )[0]


def _spatial_resize(
    resizer: nn.Module, hidden_states: torch.Tensor, conditioning: FrameConditioning, num_frames: int
) -> torch.Tensor:
    """One image-model spatial down/upsampler: IF's are ``ResnetBlock2D``s that also take the
    timestep embedding; ``Downsample2D`` / ``Upsample2D`` take the activations alone."""
    if isinstance(resizer, ResnetBlock2D):
        return resizer(hidden_states, conditioning.at(num_frames)[0])
    return resizer(hidden_states)


def _spatial_layer(
    spatial: nn.Module,
    index: int,
    hidden_states: torch.Tensor,
    conditioning: FrameConditioning,
    num_frames: int,
) -> torch.Tensor:
    """The image model's resnet ``index`` (and its cross-attention, if the block has one)."""
    hidden_states = spatial.resnets[index](hidden_states, conditioning.at(num_frames)[0])
    attentions = getattr(spatial, "attentions", None)
    if attentions is not None:
        hidden_states = _spatial_attention(attentions[index], hidden_states, conditioning, num_frames)
    return hidden_states


class _SpaceTimeLevel(_CheckpointedLayers):
    """An image-model down or up block (``spatial``) with a factorized space-time conv after each
    of its layers; the subclass adds its temporal resizer (``channels`` wide)."""

    def __init__(self, spatial: nn.Module, kernel_size: int, norm_groups: int, text_dim: int | None):
        super().__init__()
        self.spatial = spatial
        self.channels = spatial.resnets[0].out_channels
        self.temporal_convs = nn.ModuleList(
            FactorizedSpaceTimeConv(self.channels, kernel_size, norm_groups, text_dim)
            for _ in spatial.resnets
        )

    def temporal_conv(
        self, index: int, hidden_states: torch.Tensor, conditioning: FrameConditioning, num_frames: int
    ) -> torch.Tensor:
        """Temporal conv ``index`` over ``[(b f), c, h, w]`` (with the text summary where it reads it)."""
        conv = self.temporal_convs[index]
        summary = conditioning.summary_at(num_frames) if conv.text_modulation is not None else None
        return conv(hidden_states, num_frames, summary)

    def resizers(self) -> tuple[nn.ModuleList, InsertedModule | None]:
        """The image model's spatial resizers of this level and the inserted temporal one (or None)."""
        raise NotImplementedError

    def resize(self, hidden_states: torch.Tensor, conditioning: FrameConditioning, num_frames: int):
        """The level's spatial resizing, then (where configured) its temporal resizing: one
        checkpointed step. ``[(b f), c, h, w] -> [(b f'), c, h', w']``."""
        spatial, temporal = self.resizers()
        for resizer in spatial:
            hidden_states = _spatial_resize(resizer, hidden_states, conditioning, num_frames)
        if temporal is not None:
            hidden_states = temporal(hidden_states, num_frames)
        return hidden_states


class SpaceTimeDownBlock(_SpaceTimeLevel):
    """An image-model down block (``spatial``) with a factorized space-time conv after each of its
    layers and an optional temporal downsampler after its spatial downsampler.

    ``[(b f), c_in, h, w] -> [(b f'), c_out, h', w']`` plus the skip activations.
    """

    def __init__(
        self,
        spatial: nn.Module,
        temporal_downsample: bool,
        kernel_size: int,
        norm_groups: int,
        text_dim: int | None = None,  # temporal convs read the text summary (None: they do not)
    ):
        super().__init__(spatial, kernel_size, norm_groups, text_dim)
        resizes = temporal_downsample and spatial.downsamplers is not None
        self.temporal_downsampler = TemporalDownsample(self.channels, kernel_size) if resizes else None

    def layer(
        self, index: int, hidden_states: torch.Tensor, conditioning: FrameConditioning, num_frames: int
    ):
        hidden_states = _spatial_layer(self.spatial, index, hidden_states, conditioning, num_frames)
        return self.temporal_conv(index, hidden_states, conditioning, num_frames)

    def resizers(self) -> tuple[nn.ModuleList, InsertedModule | None]:
        return self.spatial.downsamplers, self.temporal_downsampler

    def layers(self, hidden_states, conditioning: FrameConditioning, num_frames: int):
        """The level's layers without its resizing: ``[(b f), c_in, h, w] -> [(b f), c_out, h, w]``
        and the skip activation of each layer."""
        skips = []
        for index in range(len(self.spatial.resnets)):
            hidden_states = self.run_layer(index, hidden_states, conditioning, num_frames)
            skips.append(hidden_states)
        return hidden_states, skips

    def forward(self, hidden_states, conditioning: FrameConditioning, num_frames: int):
        hidden_states, skips = self.layers(hidden_states, conditioning, num_frames)
        if self.spatial.downsamplers is not None:
            hidden_states = self.checkpointed(self.resize, hidden_states, conditioning, num_frames)
            if self.temporal_downsampler is not None:
                num_frames //= 2
            skips.append(hidden_states)
        return hidden_states, num_frames, skips


class SpaceTimeMidBlock(_CheckpointedLayers):
    """The image model's mid block, then a stack of temporal attention blocks: the coarsest level.

    ``[(b f), c, h, w] -> [(b f), c, h, w]``.
    """

    def __init__(
        self, spatial: nn.Module, num_layers: int, num_heads: int, norm_groups: int, text_dim: int | None
    ):
        super().__init__()
        self.spatial = spatial
        channels = spatial.resnets[0].out_channels
        self.temporal_attentions = nn.ModuleList(
            TemporalAttentionBlock(channels, num_heads, norm_groups, text_dim) for _ in range(num_layers)
        )

    def layer(
        self, index: int, hidden_states: torch.Tensor, conditioning: FrameConditioning, num_frames: int
    ):
        temb, text, text_mask = conditioning.at(num_frames)
        if index == 0:
            return self.spatial.resnets[0](hidden_states, temb)
        if index <= len(self.spatial.attentions):
            attention = self.spatial.attentions[index - 1]
            hidden_states = _spatial_attention(attention, hidden_states, conditioning, num_frames)
            return self.spatial.resnets[index](hidden_states, temb)
        block = self.temporal_attentions[index - 1 - len(self.spatial.attentions)]
        return block(hidden_states, num_frames, text, text_mask)

    def forward(self, hidden_states, conditioning: FrameConditioning, num_frames: int):
        num_layers = len(self.spatial.resnets) + len(self.temporal_attentions)
        for index in range(num_layers):
            hidden_states = self.run_layer(index, hidden_states, conditioning, num_frames)
        return hidden_states


class ZeroProjection(InsertedModule):
    """A 1x1 conv with zero weights: the output of a residual branch that starts switched off
    (Sec. 3.1). ``[(b f), c, h, w] -> [(b f), c, h, w]``."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.conv(hidden_states)


class CoarseTemporalLevel(_CheckpointedLayers):
    """A temporal-only level below the mid block, for long clips (our addition; Sec. 3.1's modules).

    The paper halves time at every spatial resizing of its base U-Net, so the coarsest level sees
    its 80 frames compactly. Our 32x32 U-Net has two spatial resizings: 80 frames reach the mid
    block as 20. This level halves time ``halvings`` more times (``TemporalDownsample``, nearest
    neighbour at init, App. B), runs temporal attention over what is left (5 frames of 80, one a
    second at 16 fps), doubles time back (``TemporalUpsample``) and adds the result to the mid
    block's output through a ``ZeroProjection``: at initialisation the level adds exactly zero, so
    a deepened model is the model it was made from, on any clip.

    ``[(b f), c, h, w] -> [(b f), c, h, w]``; ``f`` must be a multiple of ``2 ** halvings``.
    """

    def __init__(
        self,
        channels: int,  # the mid block's width
        halvings: int,  # extra halvings of time below the mid block
        num_layers: int,  # temporal attention blocks at the coarsest frame count
        num_heads: int,
        kernel_size: int,
        norm_groups: int,
        text_dim: int | None,  # width of the text states the attention reads (None: no text)
    ):
        super().__init__()
        if halvings < 1:
            raise ValueError(f"coarse_temporal_halvings must be >= 1 for a coarse level, got {halvings}")
        self.downsamplers = nn.ModuleList(TemporalDownsample(channels, kernel_size) for _ in range(halvings))
        self.temporal_attentions = nn.ModuleList(
            TemporalAttentionBlock(channels, num_heads, norm_groups, text_dim) for _ in range(num_layers)
        )
        self.upsamplers = nn.ModuleList(TemporalUpsample(channels, kernel_size) for _ in range(halvings))
        self.proj_out = ZeroProjection(channels)

    def attend(self, hidden_states: torch.Tensor, conditioning: FrameConditioning, num_frames: int):
        """Down in time, temporal attention, up again: ``[(b f), c, h, w] -> [(b f), c, h, w]``."""
        for downsample in self.downsamplers:
            hidden_states = downsample(hidden_states, num_frames)
            num_frames //= 2
        _, text, text_mask = conditioning.at(num_frames)
        for block in self.temporal_attentions:
            hidden_states = block(hidden_states, num_frames, text, text_mask)
        for upsample in self.upsamplers:
            hidden_states = upsample(hidden_states, num_frames)
            num_frames *= 2
        return self.proj_out(hidden_states)

    def forward(self, hidden_states, conditioning: FrameConditioning, num_frames: int):
        return hidden_states + self.checkpointed(self.attend, hidden_states, conditioning, num_frames)


class SpaceTimeUpBlock(_SpaceTimeLevel):
    """An image-model up block (``spatial``) with a factorized space-time conv after each layer and
    an optional temporal upsampler after its spatial upsampler. Each layer concatenates one skip,
    which has the same frame count because resizing is mirrored.

    ``[(b f), c_in, h, w] -> [(b f''), c_out, h'', w'']``.
    """

    def __init__(
        self,
        spatial: nn.Module,
        temporal_upsample: bool,
        kernel_size: int,
        norm_groups: int,
        text_dim: int | None = None,  # temporal convs read the text summary (None: they do not)
    ):
        super().__init__(spatial, kernel_size, norm_groups, text_dim)
        resizes = temporal_upsample and spatial.upsamplers is not None
        self.temporal_upsampler = TemporalUpsample(self.channels, kernel_size) if resizes else None

    def layer(self, index, hidden_states, skip, conditioning: FrameConditioning, num_frames: int):
        hidden_states = torch.cat([hidden_states, skip], dim=1)
        hidden_states = _spatial_layer(self.spatial, index, hidden_states, conditioning, num_frames)
        return self.temporal_conv(index, hidden_states, conditioning, num_frames)

    def forward(
        self, hidden_states, skips: list[torch.Tensor], conditioning: FrameConditioning, num_frames: int
    ):
        for index in range(len(self.spatial.resnets)):
            hidden_states = self.run_layer(index, hidden_states, skips.pop(), conditioning, num_frames)
        if self.spatial.upsamplers is not None:
            hidden_states = self.checkpointed(self.resize, hidden_states, conditioning, num_frames)
            if self.temporal_upsampler is not None:
                num_frames *= 2
        return hidden_states, num_frames

    def resizers(self) -> tuple[nn.ModuleList, InsertedModule | None]:
        return self.spatial.upsamplers, self.temporal_upsampler


# ---------------------------------------------------------------------------------------------
# The STUNet.
# ---------------------------------------------------------------------------------------------


def _text_width(image_config: Any) -> int:
    """Width of the text states the temporal modules read: the image model's cross-attention width
    (the mid block's, where it is given per block)."""
    width = image_config.cross_attention_dim
    return width[-1] if isinstance(width, (list, tuple)) else width


def check_unet_config(unet_config: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming what the STUNet cannot inflate in a UNet2DConditionModel config,
    and listing what it can."""
    for key, allowed in (
        ("down_block_types", SUPPORTED_DOWN_BLOCKS),
        ("up_block_types", SUPPORTED_UP_BLOCKS),
    ):
        for block_type in unet_config.get(key, ()):
            if block_type not in allowed:
                raise ValueError(
                    f"cannot inflate {key} entry {block_type!r}; supported: {', '.join(allowed)}"
                )
    mid = unet_config.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    if mid not in SUPPORTED_MID_BLOCKS:
        raise ValueError(
            f"cannot inflate mid_block_type={mid!r} (the temporal attention sits at the mid block); "
            f"supported: {', '.join(SUPPORTED_MID_BLOCKS)}"
        )
    for key, allowed in (
        ("addition_embed_type", SUPPORTED_ADDITION_EMBEDS),
        ("encoder_hid_dim_type", SUPPORTED_ENCODER_HID_DIM_TYPES),
    ):
        value = unet_config.get(key)
        if value not in allowed:
            raise ValueError(f"cannot inflate {key}={value!r}; supported: {', '.join(map(repr, allowed))}")
    # Their layers take other arguments than the image model's blocks pass here (GLIGEN's grounding
    # tokens, DualTransformer2DModel's two text streams).
    if unet_config.get("attention_type", "default") != "default":
        raise ValueError(
            f"cannot inflate attention_type={unet_config['attention_type']!r}; supported: 'default'"
        )
    if unet_config.get("dual_cross_attention"):
        raise ValueError("cannot inflate dual_cross_attention=True; supported: False")


def _resolve_temporal_downsample(
    temporal_resizing: bool | Sequence[bool], num_down_blocks: int
) -> tuple[bool, ...]:
    """Per spatial downsampler (``num_down_blocks - 1`` of them): whether time is halved there too."""
    levels = num_down_blocks - 1
    if isinstance(temporal_resizing, bool):
        return (temporal_resizing,) * levels
    flags = tuple(bool(x) for x in temporal_resizing)
    if len(flags) != levels:
        raise ValueError(
            f"temporal_resizing has {len(flags)} entries; the image model has {levels} spatial downsamplers, "
            f"give one bool per downsampler (or a single bool)"
        )
    return flags


class STUNet(ModelMixin, AttentionMixin, ConfigMixin):
    """Space-Time U-Net (Lumiere Sec. 3.1): an inflated diffusers ``UNet2DConditionModel``.

    Build it with ``STUNet.from_unet2d(unet2d)`` to keep the image model's weights; the constructor
    itself (the saved config) takes the image model's config.

    diffusers' attention interface (``AttentionMixin``: ``attn_processors``,
    ``set_attn_processor``, ``fuse_qkv_projections``) reaches every attention, the image model's
    and the temporal ones, as it does on the image U-Net.

    Call: ``sample [b, c, f, h, w]``, ``timestep`` scalar or ``[b]``, ``encoder_hidden_states
    [b, n, d]`` (shared by all frames), and per clip what the image model takes (``class_labels``,
    ``added_cond_kwargs``, ``timestep_cond``, ``encoder_attention_mask``, ...) ->
    ``STUNetOutput.sample [b, c_out, f, h, w]``.
    """

    _supports_gradient_checkpointing = True
    gradient_checkpointing = False  # the output head's (each level holds its own switch)

    @register_to_config
    def __init__(
        self,
        unet_config: dict[str, Any],  # config of the inflated UNet2DConditionModel
        temporal_resizing: bool
        | Sequence[bool] = True,  # halve time at each spatial downsampler (False: SSR)
        temporal_attention_layers: int = 2,  # temporal self-attention blocks at the coarsest level
        temporal_attention_heads: int = 4,  # heads of those blocks
        temporal_kernel_size: int = 3,  # kernel of every 1-D temporal conv
        extra_in_channels: int = 0,  # conditioning channels added to the input by widen_input
        noise_level_conditioning: bool = False,  # embed a conditioning-augmentation level (SSR)
        temporal_cross_attention: bool = True,  # temporal attention blocks also attend to the text
        coarse_temporal_halvings: int = 0,  # long clips: halvings of time below the mid block (CoarseTemporalLevel); 0: none
        coarse_temporal_layers: int = 2,  # temporal attention blocks of that level
        temporal_conv_text: bool = False,  # long clips: temporal convs read the mean text state (FiLM)
    ):
        super().__init__()
        unet_config = {k: v for k, v in dict(unet_config).items() if not k.startswith("_")}
        check_unet_config(unet_config)
        if temporal_attention_layers < 0:
            raise ValueError(f"temporal_attention_layers must be >= 0, got {temporal_attention_layers}")
        # Build the image model from its config and adopt its modules; from_unet2d copies weights.
        image_model = UNet2DConditionModel(**unet_config)
        image_config = image_model.config
        norm_groups = image_config.norm_num_groups or 32
        flags = _resolve_temporal_downsample(temporal_resizing, len(image_model.down_blocks))
        self.temporal_downsample_flags = flags

        self.conv_in = image_model.conv_in
        if extra_in_channels:
            self.conv_in = _widened_conv(self.conv_in, extra_in_channels)
        # The image model's embeddings, under its own names (so its weights keep their keys), and
        # its config, which its embedding helpers read (see _ImageEmbeddings).
        self.image_config = image_config
        self.time_proj = image_model.time_proj
        self.time_embedding = image_model.time_embedding
        self.time_embed_act = image_model.time_embed_act
        self.encoder_hid_proj = image_model.encoder_hid_proj
        self.class_embedding = image_model.class_embedding
        self.add_embedding = getattr(image_model, "add_embedding", None)
        self.add_time_proj = getattr(image_model, "add_time_proj", None)
        if noise_level_conditioning and image_config.class_embeddings_concat:
            raise ValueError(
                "noise_level_conditioning adds to the timestep embedding, but this image model "
                "concatenates its class embedding (class_embeddings_concat=True); pass the noise level "
                "as class_labels instead"
            )
        self.noise_level_embedding = (
            NoiseLevelEmbedding(
                self.time_embedding.linear_1.in_features, self.time_embedding.linear_1.out_features
            )
            if noise_level_conditioning
            else None
        )
        text_dim = _text_width(image_config)
        conv_text_dim = text_dim if temporal_conv_text else None
        self.down_blocks = nn.ModuleList(
            SpaceTimeDownBlock(
                block, flags[i] if i < len(flags) else False, temporal_kernel_size, norm_groups, conv_text_dim
            )
            for i, block in enumerate(image_model.down_blocks)
        )
        self.mid_block = SpaceTimeMidBlock(
            image_model.mid_block,
            temporal_attention_layers,
            temporal_attention_heads,
            norm_groups,
            text_dim if temporal_cross_attention else None,
        )
        self.coarse_level = (
            self.make_coarse_level(coarse_temporal_halvings, coarse_temporal_layers)
            if coarse_temporal_halvings
            else None
        )
        # Up block k's upsampler undoes down block (n - 2 - k)'s downsampler.
        n = len(image_model.up_blocks)
        self.up_blocks = nn.ModuleList(
            SpaceTimeUpBlock(
                block,
                flags[n - 2 - k] if k < n - 1 else False,
                temporal_kernel_size,
                norm_groups,
                conv_text_dim,
            )
            for k, block in enumerate(image_model.up_blocks)
        )
        self.conv_norm_out = image_model.conv_norm_out
        self.conv_act = image_model.conv_act
        self.conv_out = image_model.conv_out

    def make_coarse_level(self, halvings: int, num_layers: int) -> CoarseTemporalLevel:
        """A ``CoarseTemporalLevel`` at the mid block's width, with the heads, kernel and text width
        of the model's other temporal modules (``config``: registered before ``__init__`` runs)."""
        text_dim = _text_width(self.image_config)
        return CoarseTemporalLevel(
            self.mid_block.spatial.resnets[0].out_channels,
            halvings,
            num_layers,
            self.config.temporal_attention_heads,
            self.config.temporal_kernel_size,
            self.image_config.norm_num_groups or 32,
            text_dim if self.config.temporal_cross_attention else None,
        )

    # ----- inflation ------------------------------------------------------------------------

    @classmethod
    def from_unet2d(cls, unet2d: UNet2DConditionModel, **temporal_options: Any) -> STUNet:
        """Inflate an image model: keep its blocks and weights, insert Lumiere's temporal modules.

        ``unet2d``: any layout of the published SD 1.x / 2.x, SDXL (base, refiner), SD x4 upscaler
        and DeepFloyd IF (I, II) configs (block types in ``SUPPORTED_DOWN_BLOCKS`` /
        ``SUPPORTED_UP_BLOCKS`` / ``SUPPORTED_MID_BLOCKS``); another layout is a ``ValueError``
        naming what is not supported. ``temporal_options`` are the constructor's own
        (``temporal_resizing``: by default time is halved at every spatial downsampler, the
        paper's choice; ``temporal_attention_layers``, ``noise_level_conditioning``, ...), with its
        defaults. The weights are copied by ``lumiere.models.inflate``'s key mapping, which knows
        nothing of this class (the import runs one way: stunet -> inflate).
        """
        unet_config = {k: v for k, v in unet2d.config.items() if not k.startswith("_")}
        stunet = cls(unet_config=unet_config, **temporal_options)
        fresh = {
            f"{name}.{key}"
            for name, module in stunet.named_modules()
            if isinstance(module, InsertedModule)
            for key in module.state_dict()
        }
        load_image_weights(stunet, unet2d, fresh_keys=fresh)
        stunet.to(unet2d.device)
        if unet2d.dtype != torch.float32:
            stunet.to(dtype=unet2d.dtype)
        return stunet

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> STUNet:
        """diffusers' loader, after checking the files; then every tensor copied into fresh memory.

        Checks first (a local directory): the weights' sha256 against ``checksums.json`` (written
        by ``save_pretrained``), that each weight file is a whole safetensors file, and that its
        tensors are the ones ``config.json`` builds. Failures raise ``CheckpointError`` naming the
        file, or ``ValueError`` naming the config key (diffusers would load missing tensors as
        random weights with only a warning). A pipeline's ``long_stunet/``, saved as what it changed
        from ``stunet/`` (``lumiere.models.shared_weights``), is read with that sibling folder.

        safetensors maps the file, leaving tensors at unaligned addresses; CPU kernels then take
        other vector paths and outputs drift by ~1e-6 from the saved model. A copy makes a loaded
        model reproduce the saved one bit for bit (and run at full speed).
        """
        directory = Path(pretrained_model_name_or_path) / (kwargs.get("subfolder") or "")
        if stores_beyond_base(directory):  # a pipeline's long_stunet/: what it changed from stunet/
            return load_beyond_base(cls, directory, torch_dtype=kwargs.get("torch_dtype"))
        if directory.is_dir():
            check_saved_stunet(directory, cls, variant=kwargs.get("variant"))
        model = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        with torch.no_grad():
            for tensor in (*model.parameters(), *model.buffers()):
                tensor.data = tensor.data.clone()
        return model

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """diffusers' writer, then ``checksums.json`` with the sha256 of the weight files, so a
        later load detects a corrupted or truncated file (``from_pretrained``)."""
        super().save_pretrained(save_directory, **kwargs)
        if kwargs.get("is_main_process", True):
            write_checksums(save_directory, [p.name for p in weight_files(Path(save_directory))])

    def widen_input(self, extra_channels: int) -> None:
        """Grow the first conv by ``extra_channels`` input channels with zero weights (Sec. 4).

        The conditional model takes concat(noisy video, masked video C, mask M); with zero weights
        on C and M it starts out as the unconditional model.
        """
        if extra_channels < 1:
            raise ValueError(f"extra_channels must be >= 1, got {extra_channels}")
        self.conv_in = _widened_conv(self.conv_in, extra_channels)
        self.register_to_config(extra_in_channels=self.config.extra_in_channels + extra_channels)

    def deepen_time(self, halvings: int = 2, num_layers: int = 2) -> None:
        """Model surgery for long clips: add a ``CoarseTemporalLevel`` below the mid block (time
        halved ``halvings`` more times, ``num_layers`` temporal attention blocks there). Its output
        projection is zero, so the model gives exactly the same output as before on every clip; the
        frame count must then be a multiple of the new ``temporal_factor``. Saved in the config
        (``coarse_temporal_halvings``), so ``from_pretrained`` builds the deepened model."""
        if self.coarse_level is not None:
            raise ValueError(
                f"this STUNet already has a coarse temporal level ({len(self.coarse_level.downsamplers)} halvings)"
            )
        if halvings < 1 or num_layers < 0:
            raise ValueError(f"need halvings >= 1 and num_layers >= 0, got {halvings} and {num_layers}")
        parameter = next(self.parameters())
        self.coarse_level = self.make_coarse_level(halvings, num_layers).to(parameter.device, parameter.dtype)
        if self.gradient_checkpointing:
            self.coarse_level._gradient_checkpointing_func = self._gradient_checkpointing_func
            self.coarse_level.gradient_checkpointing = True
        self.register_to_config(coarse_temporal_halvings=halvings, coarse_temporal_layers=num_layers)

    def add_text_to_temporal_convs(self) -> None:
        """Model surgery for long clips: every factorized space-time conv reads the clip's mean text
        state through a zero-initialised FiLM (``FactorizedSpaceTimeConv.add_text_modulation``), so
        the model gives exactly the same output as before. Saved in the config
        (``temporal_conv_text``), so ``from_pretrained`` builds it."""
        if self.config.get("temporal_conv_text", False):
            raise ValueError("this STUNet's temporal convs read the text already (temporal_conv_text)")
        text_dim = _text_width(self.image_config)
        for block in (*self.down_blocks, *self.up_blocks):
            for conv in block.temporal_convs:
                conv.add_text_modulation(text_dim)
        self.register_to_config(temporal_conv_text=True)

    # ----- attention interface --------------------------------------------------------------

    def fuse_qkv_projections(self) -> None:
        """Fuse the query/key/value projections of every attention (key/value for cross-attention)
        exactly as diffusers fuses the image U-Net's: ``AttentionMixin``'s version reaches only
        diffusers' newer attention classes, not the ``Attention`` both models use. Refused, as
        there, for attentions with added key/value projections (DeepFloyd IF's)."""
        UNet2DConditionModel.fuse_qkv_projections(self)

    def unfuse_qkv_projections(self) -> None:
        """Go back to the processors used before ``fuse_qkv_projections``."""
        UNet2DConditionModel.unfuse_qkv_projections(self)

    # ----- parameter groups -----------------------------------------------------------------

    def inserted_modules(self) -> Iterator[InsertedModule]:
        """Every module added by inflation (temporal convs, attention, resizers, noise level)."""
        for module in self.modules():
            if isinstance(module, InsertedModule):
                yield module

    def temporal_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the inserted modules only: what Lumiere trains on a frozen image model."""
        for module in self.inserted_modules():
            yield from module.parameters()

    def spatial_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters that came from the image model."""
        inserted = {id(p) for p in self.temporal_parameters()}
        for param in self.parameters():
            if id(param) not in inserted:
                yield param

    def freeze_spatial(self, frozen: bool = True) -> None:
        """Freeze (or unfreeze) the image model's weights; inserted modules stay trainable."""
        for param in self.spatial_parameters():
            param.requires_grad_(not frozen)

    # ----- shapes ---------------------------------------------------------------------------

    @property
    def in_channels(self) -> int:
        return self.conv_in.in_channels

    @property
    def out_channels(self) -> int:
        return self.conv_out.out_channels

    @property
    def temporal_factor(self) -> int:
        """Frames must be a multiple of this: 2 ** (number of temporal downsamplings, the coarse
        level's included)."""
        halvings = sum(block.temporal_downsampler is not None for block in self.down_blocks)
        if self.coarse_level is not None:
            halvings += len(self.coarse_level.downsamplers)
        return 2**halvings

    @property
    def spatial_factor(self) -> int:
        """Height and width must be multiples of this: 2 ** (number of spatial downsamplings)."""
        return 2 ** sum(block.spatial.downsamplers is not None for block in self.down_blocks)

    def check_input(self, sample: torch.Tensor) -> None:
        """Raise ``ValueError`` for a sample the network cannot take, saying what works."""
        if sample.ndim != 5:
            raise ValueError(f"sample must be [b, c, f, h, w] (5-D), got shape {tuple(sample.shape)}")
        _, channels, num_frames, height, width = sample.shape
        if channels != self.in_channels:
            raise ValueError(
                f"sample has {channels} channels; this STUNet takes in_channels={self.in_channels}"
            )
        factor = self.temporal_factor
        if num_frames < 1 or num_frames % factor != 0:
            examples = ", ".join(str(factor * k) for k in (1, 2, 3))
            raise ValueError(
                f"num_frames={num_frames} cannot be halved {int(math.log2(factor))} times by the temporal "
                f"downsampling; use a positive multiple of {factor} (e.g. {examples})"
            )
        s = self.spatial_factor
        if height % s or width % s:
            raise ValueError(
                f"height={height} and width={width} must be multiples of {s} (the U-Net's spatial factor)"
            )

    # ----- activation checkpointing ---------------------------------------------------------

    def _set_gradient_checkpointing(
        self, enable: bool = True, gradient_checkpointing_func: Any = torch.utils.checkpoint.checkpoint
    ) -> None:
        """Switch checkpointing of every STUNet step (``enable_gradient_checkpointing`` calls this):
        each layer of every level (image-model resnet + attention + its inserted temporal module,
        or a temporal attention block), each level's spatial + temporal resizing, the output head.

        Only these: the image model's block objects never run their own ``forward`` here, and its
        ``Transformer2DModel``s run inside a checkpointed layer, where their own checkpointing
        would recompute every transformer block a second time in the backward (3 forwards, not 2).
        """
        for module in self.modules():
            if module is self or isinstance(module, _CheckpointedLayers):
                module._gradient_checkpointing_func = gradient_checkpointing_func
                module.gradient_checkpointing = enable

    def _output_head(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """norm -> act -> conv_out: ``[(b f), c, h, w] -> [(b f), c_out, h, w]``."""
        if self.conv_norm_out is not None:
            hidden_states = self.conv_act(self.conv_norm_out(hidden_states))
        return self.conv_out(hidden_states)

    # ----- forward --------------------------------------------------------------------------

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        noise_level: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
        deep_cache: DeepFeatureCache | None = None,
    ) -> STUNetOutput | tuple[torch.Tensor]:
        """Predict from a noisy video.

        sample ``[b, c, f, h, w]``; timestep scalar or ``[b]``; encoder_hidden_states ``[b, n, d]``;
        encoder_attention_mask ``[b, n]`` (1 keeps a token); noise_level ``[b]`` (our SSR's
        ``noise_level_conditioning`` only). What the image model takes, per clip, with its meaning
        there: class_labels ``[b]`` (e.g. the noise level of IF stage II or the x4 upscaler),
        timestep_cond ``[b, time_cond_proj_dim]``, added_cond_kwargs (SDXL: ``text_embeds [b, d]``,
        ``time_ids [b, k]``), cross_attention_kwargs (passed to the image model's attentions).
        deep_cache: sampling only, a ``DeepFeatureCache`` whose deep features the call keeps, or
        reuses (then only the first level runs; DeepCache, Ma et al. 2024).
        """
        self.check_input(sample)
        batch, _, num_frames = sample.shape[:3]
        if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[0] != batch:
            raise ValueError(
                f"encoder_hidden_states must be [b={batch}, n, d], got {tuple(encoder_hidden_states.shape)}"
            )
        added_cond_kwargs = added_cond_kwargs or {}
        if self.image_config.center_input_sample:
            sample = 2 * sample - 1.0

        # 1. Embedding [b, d_t] of the timestep and of what else the image model embeds (class
        #    labels, added conditions), by its own modules and helpers; shared by a clip's frames.
        image = _ImageEmbeddings(self)
        timestep = torch.as_tensor(timestep, device=sample.device)
        temb = self.time_embedding(
            UNet2DConditionModel.get_time_embed(image, sample, timestep), timestep_cond
        )
        class_emb = UNet2DConditionModel.get_class_embed(image, sample, class_labels)
        if class_emb is not None:
            concat = self.image_config.class_embeddings_concat
            temb = torch.cat([temb, class_emb], dim=-1) if concat else temb + class_emb
        aug_emb = UNet2DConditionModel.get_aug_embed(image, temb, encoder_hidden_states, added_cond_kwargs)
        if aug_emb is not None:
            temb = temb + aug_emb
        if self.noise_level_embedding is not None:
            if noise_level is None:
                raise ValueError("this STUNet is conditioned on noise_level ([b]); pass noise_level")
            level = torch.as_tensor(noise_level, device=sample.device).expand(batch)
            temb = temb + self.noise_level_embedding(level, sample.dtype)
        if self.time_embed_act is not None:
            temb = self.time_embed_act(temb)

        # 2. Text states [b, n, d] (projected, e.g. IF's T5 width to its cross-attention width) and
        #    mask as an additive bias [b, 1, n] (diffusers convention).
        encoder_hidden_states = UNet2DConditionModel.process_encoder_hidden_states(
            image, encoder_hidden_states, added_cond_kwargs
        )
        mask_bias = None
        if encoder_attention_mask is not None:
            mask_bias = ((1 - encoder_attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)
        conditioning = FrameConditioning(
            temb, encoder_hidden_states, mask_bias, cross_attention_kwargs, encoder_attention_mask
        )

        # 3. Frames become batch entries for the image model's 2-D layers: [(b f), c, h, w].
        hidden_states = self.conv_in(rearrange(sample, "b c f h w -> (b f) c h w"))
        skips = [hidden_states]

        up_blocks = list(self.up_blocks)
        if deep_cache is not None and deep_cache.reuse:
            # 4-5 (DeepCache). The first level's layers only; the deep path's output is the kept one.
            hidden_states, level_skips = self.down_blocks[0].layers(hidden_states, conditioning, num_frames)
            skips.extend(level_skips)
            hidden_states, up_blocks = deep_cache.take(hidden_states), up_blocks[-1:]
        else:
            # 4. Down: space and (where configured) time are halved.
            for block in self.down_blocks:
                hidden_states, num_frames, block_skips = block(hidden_states, conditioning, num_frames)
                skips.extend(block_skips)

            # 5. Coarsest level: image mid block, then temporal attention (and, in a deepened model,
            #    the temporal-only level below it, added as a residual).
            hidden_states = self.mid_block(hidden_states, conditioning, num_frames)
            if self.coarse_level is not None:
                hidden_states = self.coarse_level(hidden_states, conditioning, num_frames)

        # 6. Up: each layer takes the skip at its own space-time resolution.
        for block in up_blocks:
            if deep_cache is not None and not deep_cache.reuse and block is up_blocks[-1]:
                deep_cache.features = hidden_states  # [(b f), c, h, w] what the last up block takes
            # The block gets its own skips (the last ones) as a list of their own: a wrapper that
            # copies a module's arguments (FSDP's fully_shard) would hide its pops from ``skips``.
            count = len(block.spatial.resnets)
            block_skips, skips = skips[-count:], skips[:-count]
            hidden_states, num_frames = block(hidden_states, block_skips, conditioning, num_frames)

        # 7. Output head, back to [b, c_out, f, h, w].
        hidden_states = _run_step(self, self._output_head, hidden_states)
        output = rearrange(hidden_states, "(b f) c h w -> b c f h w", b=batch)
        if not return_dict:
            return (output,)
        return STUNetOutput(sample=output)


@dataclass
class DeepFeatureCache:
    """DeepCache (Ma et al. 2024, "DeepCache: Accelerating Diffusion Models for Free") for a STUNet.

    A U-Net's deep features change little between adjacent denoising steps, while the first,
    full-resolution level is cheap on its own (the SSR at 64x64: ~14% of a call; the base: ~33%).
    A call with ``reuse=False`` runs the whole network and keeps the input of its last up block;
    a call with ``reuse=True`` runs only the first level (``conv_in``, the first down block's
    layers, the last up block, the output head) on the kept features. One cache per stream of
    calls on the same clip and batch (per MultiDiffusion window). An approximation: outputs of
    reused calls differ from full calls (a quality switch, ``cache_interval`` of the pipeline).
    """

    reuse: bool = False  # this call: reuse the kept features (True), or run all and keep them
    features: torch.Tensor | None = None  # [(b f), c, h, w] the last up block's input, from a full call

    def take(self, first_level: torch.Tensor) -> torch.Tensor:
        """The kept features, checked against the first level's activations ``[(b f), c, h, w]``."""
        if self.features is None:
            raise ValueError("deep_cache.reuse is True but the cache is empty: run a full call (reuse=False) first")
        if self.features.shape[0] != first_level.shape[0] or self.features.shape[2:] != first_level.shape[2:]:
            raise ValueError(
                f"deep_cache holds features of shape {tuple(self.features.shape)}, from another batch or size "
                f"than this call's [(b f), c, h, w] = {tuple(first_level.shape)}; use one cache per stream of calls"
            )
        return self.features


class _ImageEmbeddings:
    """The STUNet seen as its image model by ``UNet2DConditionModel``'s embedding helpers
    (``get_time_embed``, ``get_class_embed``, ``get_aug_embed``, ``process_encoder_hidden_states``).

    Those helpers read the embedding modules (``time_proj``, ``class_embedding``,
    ``add_embedding``, ``add_time_proj``, ``encoder_hid_proj``), which the STUNet holds under the
    same names, and ``config``, which must be the image model's. Calling them keeps every embedding
    exactly the image model's without re-implementing diffusers' logic.
    """

    def __init__(self, stunet: STUNet):
        self._stunet = stunet
        self.config = stunet.image_config

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stunet, name)


def _widened_conv(conv: nn.Conv2d, extra_channels: int) -> nn.Conv2d:
    """A copy of ``conv`` with ``extra_channels`` more input channels whose weights are zero."""
    wider = nn.Conv2d(
        conv.in_channels + extra_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        bias=conv.bias is not None,
    ).to(device=conv.weight.device, dtype=conv.weight.dtype)
    if not conv.weight.is_meta:
        with torch.no_grad():
            wider.weight.zero_()
            wider.weight[:, : conv.in_channels].copy_(conv.weight)
            if conv.bias is not None:
                wider.bias.copy_(conv.bias)
    return wider
