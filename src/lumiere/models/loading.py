"""Checks of a saved STUNet folder before diffusers reads it (``STUNet.from_pretrained``).

diffusers loads a weight file that lacks tensors, or one whose ``config.json`` was edited, with
random weights and only a warning. Here a folder is checked first: the weights' sha256 against
``checksums.json`` (``lumiere.checkpoint``), every safetensors file whole, and the tensors in
their headers (no tensor data is read) the ones ``config.json`` builds, naming the config key that
disagrees where the shapes tell it.

This module does not import the network: ``check_saved_stunet`` takes the model class, so the
dependency runs one way, ``models.stunet -> models.loading -> checkpoint``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin
from safetensors import SafetensorError, safe_open

from lumiere.checkpoint import CheckpointError, verify_checksums

_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def weight_files(directory: Path) -> list[Path]:
    """The weight files (and shard indexes) diffusers wrote into ``directory``."""
    return sorted(
        p
        for p in directory.iterdir()
        if p.is_file() and (p.name.endswith(_WEIGHT_SUFFIXES) or p.name.endswith(".index.json"))
    )


# Weight-file stems of diffusers models and transformers models, before any ".<variant>".
_WEIGHT_STEMS = ("diffusion_pytorch_model", "model", "pytorch_model")


def weights_variant(directory: str | os.PathLike) -> str | None:
    """The variant to load ``directory``'s weights with: None when plain weights are there, else the
    one variant present (e.g. "fp16": a folder downloaded with ``variant="fp16"`` holds only
    ``diffusion_pytorch_model.fp16.safetensors`` or ``model.fp16-00001-of-00002.safetensors``)."""
    names = [p.name for p in weight_files(Path(directory))]
    variants = set()
    for name in names:
        stem, _, rest = name.partition(".")
        if stem not in _WEIGHT_STEMS:
            continue
        if rest in ("safetensors", "bin", "safetensors.index.json", "bin.index.json"):
            return None  # plain weights (one file or a shard index): no variant needed
        variants.add(rest.split(".")[0].split("-")[0])  # "fp16.safetensors", "fp16-00001-of-00002.safetensors"
    if len(variants) > 1:
        raise ValueError(
            f"{directory} holds weights of several variants {sorted(variants)} and no plain ones; "
            "keep one variant"
        )
    return variants.pop() if variants else None


def _safetensors_files(directory: Path, variant: str | None) -> list[Path]:
    """The safetensors file(s) ``from_pretrained`` will read: one file, or the shards of an index."""
    name = "diffusion_pytorch_model" + (f".{variant}" if variant else "") + ".safetensors"
    if (directory / name).is_file():
        return [directory / name]
    index = directory / f"{name}.index.json"
    if index.is_file():
        try:
            shards = json.loads(index.read_text())["weight_map"].values()
        except (json.JSONDecodeError, KeyError, AttributeError) as error:
            raise CheckpointError(f"shard index {index} is corrupted: {error}") from error
        return [directory / shard for shard in sorted(set(shards))]
    return []  # .bin weights or none: diffusers reports what it finds


def _saved_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, read from the safetensors headers (no tensor data is loaded)."""
    shapes = {}
    for file in files:
        if not file.is_file():
            raise CheckpointError(f"weights file {file} is missing")
        try:
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():
                    shapes[key] = tuple(handle.get_slice(key).get_shape())
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointError(
                f"weights file {file} is truncated or corrupted ({error}); save or copy it again"
            ) from error
    return shapes


def _count(shapes: dict[str, tuple[int, ...]], pattern: str) -> int:
    """How many distinct indices ``(\\d+)`` in ``pattern`` occur among the tensor names."""
    regex = re.compile(pattern)
    return len({m.group(1) for key in shapes if (m := regex.fullmatch(key))})


def _config_from_shapes(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """Config values that the saved tensors fix, by config key (keys whose tensors are absent are
    left out): what names the key when a config.json and its weights disagree."""
    found: dict[str, Any] = {}
    levels = _count(shapes, r"down_blocks\.(\d+)\.spatial\.resnets\.0\.conv1\.weight")
    if levels:
        found["unet_config.block_out_channels"] = [
            shapes[f"down_blocks.{i}.spatial.resnets.0.conv1.weight"][0] for i in range(levels)
        ]
        found["unet_config.layers_per_block"] = _count(
            shapes, r"down_blocks\.0\.spatial\.resnets\.(\d+)\.conv1\.weight"
        )
    if "conv_in.weight" in shapes:
        found["unet_config.in_channels + extra_in_channels"] = shapes["conv_in.weight"][1]
    if "conv_out.weight" in shapes:
        found["unet_config.out_channels"] = shapes["conv_out.weight"][0]
    text = [shape[1] for key, shape in shapes.items() if key.endswith("attn2.to_k.weight")]
    if text:
        found["unet_config.cross_attention_dim"] = text[0]
    found["temporal_attention_layers"] = _count(
        shapes, r"mid_block\.temporal_attentions\.(\d+)\.proj_out\.weight"
    )
    kernel = shapes.get("down_blocks.0.temporal_convs.0.temporal_conv.weight")
    if kernel is not None:
        found["temporal_kernel_size"] = kernel[2]
    found["noise_level_conditioning"] = any(key.startswith("noise_level_embedding.") for key in shapes)
    return found


def _config_values(config: dict[str, Any]) -> dict[str, Any]:
    """The same keys as ``_config_from_shapes``, as ``config.json`` states them."""
    unet = config.get("unet_config", {})
    cross = unet.get("cross_attention_dim")
    input_channels = unet.get("in_channels", 4) + config.get("extra_in_channels", 0)
    layers = unet.get("layers_per_block")
    return {
        "unet_config.block_out_channels": list(unet.get("block_out_channels", ())),
        "unet_config.layers_per_block": layers[0] if isinstance(layers, (list, tuple)) else layers,
        "unet_config.in_channels + extra_in_channels": input_channels,
        "unet_config.out_channels": unet.get("out_channels"),
        "unet_config.cross_attention_dim": cross[0] if isinstance(cross, (list, tuple)) else cross,
        "temporal_attention_layers": config.get("temporal_attention_layers"),
        "temporal_kernel_size": config.get("temporal_kernel_size"),
        "noise_level_conditioning": bool(config.get("noise_level_conditioning")),
    }


def check_saved_stunet(
    directory: str | os.PathLike,
    model_cls: type[ConfigMixin],  # the STUNet class: builds the network config.json describes
    variant: str | None = None,  # diffusers' weight-file variant, e.g. "fp16"
) -> None:
    """Raise if a saved STUNet directory cannot give back the saved model.

    ``CheckpointError`` (naming the file) for a weight file that fails its checksum or is not a
    whole safetensors file; ``ValueError`` (naming the config key where it can tell, else the
    tensor) when ``config.json`` describes another network than the weights hold.
    """
    directory = Path(directory)
    verify_checksums(directory)
    files = _safetensors_files(directory, variant)
    config_path = directory / model_cls.config_name
    if not files or not config_path.is_file():
        return  # diffusers reports the missing file
    saved = _saved_shapes(files)
    config = model_cls.load_config(directory)  # diffusers names config.json if it is not valid JSON
    where = f"{config_path} does not match the weights in {files[0] if len(files) == 1 else directory}"
    stated, inferred = _config_values(config), _config_from_shapes(saved)
    for key, value in inferred.items():
        if stated.get(key) != value:
            raise ValueError(
                f"{where}: config key {key} is {stated.get(key)!r} but the weights were saved with {value!r}"
            )
    with torch.device("meta"):  # shapes only: no memory is allocated
        expected = {k: tuple(v.shape) for k, v in model_cls.from_config(config).state_dict().items()}
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    wrong = sorted(k for k in set(saved) & set(expected) if saved[k] != expected[k])
    if wrong:
        key = wrong[0]
        raise ValueError(
            f"{where}: tensor {key} is {saved[key]} in the weights but {expected[key]} in the network "
            f"config.json builds ({len(wrong)} tensors differ); was config.json edited or copied from another model?"
        )
    if missing or unexpected:
        raise ValueError(
            f"{where}: config.json builds {len(missing)} tensors the weights lack (e.g. {missing[:2]}) and the "
            f"weights hold {len(unexpected)} it does not build (e.g. {unexpected[:2]})"
        )
