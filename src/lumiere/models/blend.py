"""Stylised generation by weight blending (Bar-Tal et al. 2024, Sec. 4.1).

A text-to-image model fine-tuned for a style (``W_style``) is mixed with the STUNet's own spatial
weights (``W_orig``): ``W = alpha * W_style + (1 - alpha) * W_orig`` over every image-model
weight; the temporal (inserted) weights are kept. alpha = 0 is the original STUNet, alpha = 1 puts
the styled image model under the STUNet's temporal layers.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from lumiere.models.inflate import stunet_key
from lumiere.models.stunet import STUNet


def styled_spatial_weights(stunet: STUNet, styled: UNet2DConditionModel | STUNet) -> dict[str, torch.Tensor]:
    """The styled model's image-model weights under the STUNet's state-dict keys.

    ``styled`` is an image model (``UNet2DConditionModel``) or a STUNet (its spatial weights are
    taken). Raises ``ValueError`` naming the first weight that has no place or another shape.
    """
    if isinstance(styled, STUNet):
        spatial = {id(p) for p in styled.spatial_parameters()}
        named = {name: p for name, p in styled.named_parameters() if id(p) in spatial}
        mapped = {name: value.detach() for name, value in named.items()}
    elif isinstance(styled, UNet2DConditionModel):
        mapped = {stunet_key(key): value.detach() for key, value in styled.state_dict().items()}
    else:
        raise ValueError(f"styled must be a UNet2DConditionModel or a STUNet, got {type(styled).__name__}")
    target = stunet.state_dict()
    for key, value in mapped.items():
        if key not in target:
            raise ValueError(f"styled weight {key!r} has no place in the STUNet")
        dest = target[key]
        widened = (
            key == "conv_in.weight" and value.shape[1] < dest.shape[1] and value.shape[2:] == dest.shape[2:]
        )
        if dest.shape != value.shape and not widened:
            raise ValueError(
                f"styled weight {key!r} has shape {tuple(value.shape)}, the STUNet's has {tuple(dest.shape)}: "
                "the styled model must be a fine-tune of the same image U-Net"
            )
    return mapped


@torch.no_grad()
def blend_weights(original: STUNet, styled: UNet2DConditionModel | STUNet, alpha: float) -> STUNet:
    """A copy of ``original`` whose image-model weights are ``alpha * W_style + (1 - alpha) * W_orig``.

    ``alpha`` in [0, 1]. A widened input conv (the conditional model's) blends the channels the
    styled model has and keeps the conditioning channels. ``original`` is not modified.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(
            f"alpha={alpha!r}: must be in [0, 1] (0: original weights, 1: the styled image model)"
        )
    styled_weights = styled_spatial_weights(original, styled)
    blended = copy.deepcopy(original)
    state = blended.state_dict()
    for key, style in styled_weights.items():
        dest = state[key]
        part = dest[:, : style.shape[1]] if key == "conv_in.weight" else dest  # a view: blended in place
        part.copy_(torch.lerp(part, style.to(part.dtype), float(alpha)))
    return blended


def load_style(path: str | os.PathLike) -> UNet2DConditionModel | STUNet:
    """A styled model from a directory: an image model (``config.json`` of a UNet2DConditionModel,
    or a ``unet/`` folder, as stage t2i exports) or a STUNet (a ``stunet/`` folder or its own)."""
    directory = Path(path)
    for candidate in (directory, directory / "unet", directory / "stunet"):
        config = candidate / "config.json"
        if config.is_file():
            class_name = json.loads(config.read_text()).get("_class_name")
            if class_name == "UNet2DConditionModel":
                return UNet2DConditionModel.from_pretrained(candidate)
            if class_name == STUNet.__name__:
                return STUNet.from_pretrained(candidate)
    raise FileNotFoundError(
        f"{str(directory)!r} holds no styled model: expected an image model (config.json, or unet/) or a "
        "STUNet (stunet/), as `lumiere train` exports them"
    )
