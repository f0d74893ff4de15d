"""LoRA on a STUNet's spatial layers, in diffusers' LoRA format (peft).

Lumiere trains the inserted temporal layers on a frozen image model (Sec. 3.1). Low-rank adapters
(Hu et al. 2021, "LoRA") on the image model's own layers let the frames adapt too (a new look,
a new domain) at a small cost, beside the temporal layers. They are peft ``LoraLayer``s injected
into the STUNet's spatial modules (by default the projections of every spatial attention,
``to_q``, ``to_k``, ``to_v``, ``to_out.0``; never the temporal ones).

Saved, they are the *image* U-Net's LoRA: ``pytorch_lora_weights.safetensors`` written by
diffusers' own writer, keys ``unet.<image-model module>.lora_A.weight`` / ``lora_B.weight``
(mapped back through ``lumiere.models.inflate``'s key mapping) and the adapter's ``LoraConfig``
as metadata, so ``StableDiffusionPipeline.load_lora_weights`` (or the SDXL one) loads the file into
the U-Net the STUNet was inflated from, and ``load_lora_weights`` here loads it onto a STUNet.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from torch import nn

from lumiere.models.inflate import stunet_key
from lumiere.models.stunet import STUNet

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' file name
DEFAULT_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")  # diffusers' LoRA training scripts' choice
ADAPTER = "default"  # peft's adapter name on the STUNet

_SPATIAL_PREFIX = re.compile(r"^(down_blocks\.\d+|mid_block|up_blocks\.\d+)\.spatial\.")


def image_key(key: str) -> str:
    """The image-model name of a STUNet spatial module or weight (the inverse of ``stunet_key``)."""
    image = _SPATIAL_PREFIX.sub(lambda m: f"{m.group(1)}.", key, count=1)
    if stunet_key(image) != key:
        raise ValueError(f"{key!r} is not a weight of the STUNet's image model")
    return image


def spatial_target_modules(stunet: STUNet, suffixes: Sequence[str] = DEFAULT_TARGET_MODULES) -> list[str]:
    """Full names of the STUNet's spatial (image-model) ``nn.Linear`` / ``nn.Conv2d`` modules whose
    name ends with one of ``suffixes``; ``ValueError`` when none does."""
    inserted_modules = set(stunet.inserted_modules())
    inserted = [name for name, module in stunet.named_modules() if module in inserted_modules]
    names = [
        name
        for name, module in stunet.named_modules()
        if isinstance(module, (nn.Linear, nn.Conv2d))
        and any(name == s or name.endswith(f".{s}") for s in suffixes)
        and not any(name.startswith(f"{prefix}.") for prefix in inserted)
    ]
    if not names:
        raise ValueError(f"lora_target_modules {list(suffixes)} name no spatial layer of the STUNet")
    return names


def add_spatial_lora(
    stunet: STUNet,
    rank: int,  # the adapters' rank r
    alpha: float | None = None,  # scale numerator (scale alpha / r); None: r
    target_modules: Sequence[str] = DEFAULT_TARGET_MODULES,  # name suffixes of spatial modules
) -> LoraConfig:
    """Inject LoRA adapters into the STUNet's spatial layers, in place (B = 0: the model is
    unchanged until trained). Whether each existing weight trains is kept; the adapters train."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA rank must be an integer >= 1, got {rank!r}")
    config = LoraConfig(
        r=rank,
        lora_alpha=rank if alpha is None else alpha,
        target_modules=spatial_target_modules(stunet, target_modules),
        init_lora_weights=True,
    )
    trains = {name: p.requires_grad for name, p in stunet.named_parameters()}
    inject_adapter_in_model(config, stunet, adapter_name=ADAPTER)
    for name, param in stunet.named_parameters():  # peft freezes all but the adapters: undo that
        base = name.replace(".base_layer", "")
        param.requires_grad_(trains.get(base, trains.get(name, False)) or "lora_" in name)
    return config


def lora_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """The LoRA adapters' parameters (``lora_A`` / ``lora_B``)."""
    for name, param in model.named_parameters():
        if "lora_" in name:
            yield param


def _lora_config(model: nn.Module) -> LoraConfig:
    for module in model.modules():
        if isinstance(module, LoraLayer):
            # Rebuild the config from a layer (the injected model keeps none of its own).
            return LoraConfig(r=module.r[ADAPTER], lora_alpha=module.lora_alpha[ADAPTER])
    raise ValueError("the model has no LoRA adapters")


def lora_state_dict(stunet: nn.Module) -> dict[str, torch.Tensor]:
    """The STUNet's LoRA weights under the image U-Net's names (``<module>.lora_A.weight``, ...)."""
    state = get_peft_model_state_dict(stunet, adapter_name=ADAPTER)
    return {image_key(key): value.detach().clone() for key, value in state.items()}


def save_lora_weights(stunet: nn.Module, directory: str | os.PathLike) -> Path:
    """Write ``directory/pytorch_lora_weights.safetensors`` in diffusers' format for the image U-Net
    (``StableDiffusionPipeline.load_lora_weights(directory)`` loads it); returns the file."""
    from diffusers import StableDiffusionPipeline

    state = lora_state_dict(stunet)
    layer = _lora_config(stunet)
    modules = sorted({key.rsplit(".lora_", 1)[0] for key in state})
    metadata = LoraConfig(r=layer.r, lora_alpha=layer.lora_alpha, target_modules=modules).to_dict()
    StableDiffusionPipeline.save_lora_weights(
        directory, unet_lora_layers=state, unet_lora_adapter_metadata=metadata, weight_name=LORA_WEIGHT_NAME
    )
    return Path(directory) / LORA_WEIGHT_NAME


def load_lora_weights(stunet: STUNet, path: str | os.PathLike) -> STUNet:
    """Load a diffusers LoRA file of the image U-Net (a folder holding ``pytorch_lora_weights.safetensors``
    or the file) onto the STUNet's spatial layers, in place. ``ValueError`` naming a weight that
    has no place in the STUNet."""
    from diffusers import StableDiffusionPipeline

    path = Path(path)
    source = (str(path.parent), path.name) if path.is_file() else (str(path), LORA_WEIGHT_NAME)
    state, alphas, metadata = StableDiffusionPipeline.lora_state_dict(
        source[0], weight_name=source[1], return_lora_metadata=True
    )
    if alphas is not None:
        raise ValueError(f"{path}: a kohya-format LoRA; save it in diffusers' (peft) format first")
    prefix = "unet."
    weights = {stunet_key(k[len(prefix) :]): v for k, v in state.items() if k.startswith(prefix)}
    if not weights:
        raise ValueError(f"{path} holds no LoRA weights of the U-Net (keys starting with {prefix!r})")
    modules = sorted({key.rsplit(".lora_", 1)[0] for key in weights})
    known = dict(stunet.named_modules())
    unknown = [m for m in modules if m not in known]
    if unknown:
        raise ValueError(f"{path}: LoRA weights for {unknown[:3]} have no module in the STUNet")
    options = {k[len(prefix) :]: v for k, v in (metadata or {}).items() if k.startswith(prefix)}
    rank = int(next(v for k, v in weights.items() if "lora_A" in k).shape[0])
    config = LoraConfig(
        r=int(options.get("r", rank)),
        lora_alpha=options.get("lora_alpha", rank),
        target_modules=modules,
    )
    inject_adapter_in_model(config, stunet, adapter_name=ADAPTER)
    result = set_peft_model_state_dict(stunet, weights, adapter_name=ADAPTER)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"{path}: LoRA weights {unexpected[:3]} were not loaded")
    return stunet


def without_lora(model: nn.Module, fuse: bool = False) -> Any:
    """A copy of ``model`` with every LoRA layer replaced by its base layer: merged into it
    (``fuse``: W + scale * B A) or left out (the base weights as they are)."""
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            if fuse:
                module.merge(adapter_names=[ADAPTER])
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, module.get_base_layer())
    return model
