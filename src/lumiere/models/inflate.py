"""Explicit key mapping from a diffusers ``UNet2DConditionModel`` into a ``STUNet`` (Sec. 3.1).

Lumiere inflates a pretrained text-to-image U-Net: every image-model weight is copied unchanged,
and only the inserted temporal modules start fresh (identity / zero, see ``stunet.py``).

This module maps state-dict keys and copies tensors; it does not import ``stunet``
(``STUNet.from_unet2d`` calls ``load_image_weights`` here), so the dependency runs one way.

The mapping is a rename of each block prefix, because the STUNet wraps each image-model block as
``.spatial`` beside its temporal modules:

    down_blocks.{i}.X  ->  down_blocks.{i}.spatial.X
    mid_block.X        ->  mid_block.spatial.X
    up_blocks.{i}.X    ->  up_blocks.{i}.spatial.X
    everything else    ->  unchanged (conv_in, time_embedding, conv_out, ...)
"""

from __future__ import annotations

import re
from collections.abc import Collection

import torch
from diffusers import UNet2DConditionModel

_BLOCK_PREFIX = re.compile(r"^(down_blocks\.\d+|mid_block|up_blocks\.\d+)\.")


def stunet_key(image_key: str) -> str:
    """The STUNet state-dict key holding the image-model weight ``image_key``."""
    return _BLOCK_PREFIX.sub(lambda m: f"{m.group(1)}.spatial.", image_key, count=1)


def load_image_weights(stunet: torch.nn.Module, unet2d: torch.nn.Module, fresh_keys: Collection[str]) -> None:
    """Copy every weight of ``unet2d`` into ``stunet`` under its mapped key.

    ``fresh_keys``: the STUNet's state-dict keys of its inserted (temporal) modules, which keep
    their own initialisation. A widened input conv takes the image weights in its first channels
    and keeps zeros for the extra ones. Raises ``ValueError`` naming any image weight with no place
    in the STUNet, or any STUNet weight outside ``fresh_keys`` that the image model did not provide.
    """
    target = stunet.state_dict()
    filled = set()
    with torch.no_grad():
        for key, value in unet2d.state_dict().items():
            new_key = stunet_key(key)
            if new_key not in target:
                raise ValueError(
                    f"image-model weight {key!r} has no place in the STUNet (looked for {new_key!r})"
                )
            dest = target[new_key]
            if dest.shape == value.shape:
                dest.copy_(value)
            elif (
                key == "conv_in.weight"
                and dest.shape[1] > value.shape[1]
                and dest.shape[2:] == value.shape[2:]
            ):
                dest[:, : value.shape[1]].copy_(value)  # widened input: extra channels stay zero
            else:
                raise ValueError(
                    f"image-model weight {key!r} has shape {tuple(value.shape)}, STUNet expects {tuple(dest.shape)}"
                )
            filled.add(new_key)
    missing = [k for k in target if k not in filled and k not in fresh_keys]
    if missing:
        raise ValueError(f"STUNet weights not provided by the image model: {missing[:5]}")


def extract_image_model(stunet: torch.nn.Module) -> UNet2DConditionModel:
    """The image model inside a STUNet: a ``UNet2DConditionModel`` of its ``unet_config`` holding the
    STUNet's spatial weights (the inverse of ``load_image_weights``). A widened input conv gives its
    first ``in_channels`` input channels (the noisy-sample ones). Used to fine-tune the spatial
    weights alone, e.g. for a style (Sec. 4.1), and blend them back (``lumiere.models.blend``)."""
    image_model = UNet2DConditionModel.from_config(dict(stunet.config.unet_config))
    source = stunet.state_dict()
    weights = {}
    for key, dest in image_model.state_dict().items():
        value = source[stunet_key(key)]
        if key == "conv_in.weight" and value.shape[1] > dest.shape[1]:
            value = value[:, : dest.shape[1]]
        weights[key] = value.detach().clone()
    image_model.load_state_dict(weights)
    return image_model.to(dtype=next(stunet.parameters()).dtype)
