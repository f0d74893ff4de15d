"""Where a module computes, also under accelerate's CPU-offload hooks.

diffusers' ``enable_model_cpu_offload`` / ``enable_sequential_cpu_offload`` (accelerate's
``cpu_offload_with_hook`` / ``cpu_offload``) leave a network's weights on the CPU, or on the
``meta`` device, until a call moves them to the accelerator. The device of its weights then says
nothing about where its inputs must go; the hooks' ``execution_device`` does.
"""

from __future__ import annotations

import torch
from torch import nn


def _hooks(module: nn.Module) -> list:
    """accelerate's hooks on ``module`` itself (a ``SequentialHook`` holds several)."""
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return []
    return list(getattr(hook, "hooks", [hook]))


def is_offloaded(module: nn.Module) -> bool:
    """Whether accelerate's offload hooks run ``module`` (or any of its submodules)."""
    return any(_hooks(sub) for sub in module.modules())


def execution_device(module: nn.Module) -> torch.device:
    """The device ``module`` computes on: its offload hooks' execution device when it has them,
    else the device of its first weight (the CPU for a module without weights)."""
    for sub in module.modules():
        for hook in _hooks(sub):
            device = getattr(hook, "execution_device", None)
            if device is not None:
                return torch.device(device)
    weight = next(module.parameters(), None)
    return weight.device if weight is not None else torch.device("cpu")
