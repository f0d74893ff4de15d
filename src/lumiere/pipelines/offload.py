"""Memory options of ``LumierePipeline`` for big (latent) models on small machines (issue 30, item 5).

- **Model CPU offload** (``enable_model_cpu_offload``): every network waits on the CPU and moves
  whole to the accelerator when it runs, the previous one in ``model_cpu_offload_seq`` going back
  (accelerate's ``cpu_offload_with_hook``, as diffusers chains it). Peak: the largest network plus
  its activations. One copy per network per call: the STUNet stays put for all its steps.
- **Sequential CPU offload** (``enable_sequential_cpu_offload``): weights wait on the ``meta``
  device and each layer's are copied in for its own call (accelerate's ``cpu_offload``). Peak:
  about one layer plus the activations; every step streams the whole network over the bus.
- **VAE tiling / slicing** (``enable_vae_tiling`` / ``enable_vae_slicing``): ``AutoencoderKL``'s
  own switches. Slicing decodes one frame per call (the pipeline already decodes
  ``vae_batch_size`` frames per call); tiling cuts large frames into overlapping tiles (decoder
  memory of one tile; tile seams are blended, so the frames differ slightly from one pass).

Why not diffusers' own ``enable_*_cpu_offload`` as they are: they call ``self.to("cpu",
silence_dtype_warnings=True)``, which ``LumierePipeline.to`` does not take; they hook each
component's ``forward``, but the pipeline calls its text encoder through ``encode`` (a plain
``nn.Module``, whose transformers models are what runs) and would never fire the hook; and
diffusers finds the execution device from the first component in the config, which for an
upsampling-only pipeline is the unhooked text encoder. Here the hooks go on what runs (the STUNets,
the VAE, whose ``encode``/``decode`` diffusers routes through its hook, and the text encoder's
transformers models), with accelerate doing all the moving. Text encoders and ``lumiere.models.vae``
send their inputs to ``lumiere.models.placement.execution_device``, which reads the hooks.

The clip is the same with every option (``tests/test_latent_memory.py``; tiling: the same while
frames fit in one tile). Peak memory per option at SD 1.5's size: ``bench/latent_memory_gpu.py``,
``docs/latent.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch
from accelerate import cpu_offload, cpu_offload_with_hook
from accelerate.hooks import remove_hook_from_module
from torch import nn

from lumiere.models.placement import execution_device, is_offloaded
from lumiere.models.text import TextEncoder

logger = logging.getLogger(__name__)


class MemoryOptionsMixin:
    """Offload and VAE switches of a ``DiffusionPipeline`` whose components are STUNets, a lumiere
    ``TextEncoder`` and an optional diffusers ``AutoencoderKL``. Put it before
    ``DiffusionPipeline`` among the bases, so its methods replace diffusers' ones."""

    # ----- CPU offload ------------------------------------------------------------------------

    def enable_model_cpu_offload(
        self, gpu_id: int | None = None, device: torch.device | str | None = None
    ) -> None:
        """Keep every network on the CPU and move it whole to ``device`` (default: the
        accelerator, index ``gpu_id``) when it runs; the previous network in
        ``model_cpu_offload_seq`` goes back to the CPU then. ``device="cpu"`` runs the hooks
        without moving anything (tests). ``__call__`` re-arms the hooks at its end
        (``maybe_free_model_hooks``)."""
        self.remove_all_hooks()
        device = self._offload_target(gpu_id, device, "enable_model_cpu_offload")
        self.to("cpu")
        hooks, previous = [], None
        for module in self._offload_units(in_sequence=True):
            _, previous = cpu_offload_with_hook(module, device, prev_module_hook=previous)
            hooks.append(previous)
        for module in self._offload_units(in_sequence=False):
            _, hook = cpu_offload_with_hook(module, device)  # not chained: freed at the call's end
            hooks.append(hook)
        self._all_hooks = hooks  # what diffusers' maybe_free_model_hooks re-arms
        logger.info("model CPU offload to %s: %d networks", device, len(hooks))

    def enable_sequential_cpu_offload(
        self, gpu_id: int | None = None, device: torch.device | str | None = None
    ) -> None:
        """Keep the weights on the ``meta`` device (their values on the CPU) and copy each layer's
        to ``device`` for its own call only: the least accelerator memory, the slowest."""
        self.remove_all_hooks()
        device = self._offload_target(gpu_id, device, "enable_sequential_cpu_offload")
        self.to("cpu")
        units = [*self._offload_units(in_sequence=True), *self._offload_units(in_sequence=False)]
        for module in units:
            # Buffers travel with the weights when the module holds weights of its own (diffusers' rule).
            cpu_offload(module, device, offload_buffers=len(module._parameters) > 0)
        self._all_hooks = []  # nothing for maybe_free_model_hooks to re-arm
        logger.info("sequential CPU offload to %s: %d networks", device, len(units))

    def disable_cpu_offload(self) -> None:
        """Remove the offload hooks; the weights come back to the CPU (``pipe.to(device)`` next)."""
        self.remove_all_hooks()

    def remove_all_hooks(self) -> None:
        """Remove every accelerate hook, also those on a component's submodules (the text
        encoder's models); accelerate puts sequentially offloaded weights back on the CPU."""
        for component in self._modules_of_components():
            remove_hook_from_module(component, recurse=True)
        self._all_hooks = []

    @property
    def _execution_device(self) -> torch.device:
        """Where the networks run: the offload hooks' device, whichever component holds them."""
        for component in self._modules_of_components():
            if is_offloaded(component):
                return execution_device(component)
        return super()._execution_device

    def _offload_target(
        self, gpu_id: int | None, device: torch.device | str | None, caller: str
    ) -> torch.device:
        """The device the hooks run the networks on: ``device`` (its index or ``gpu_id``), by default
        the CUDA accelerator."""
        if device is None:
            if not torch.cuda.is_available():
                raise RuntimeError(
                    f"{caller} needs an accelerator and found none; pass device='cpu' to run the hooks anyway"
                )
            device = "cuda"
        device = torch.device(device)
        if gpu_id is not None:
            if device.type == "cpu" or device.index not in (None, gpu_id):
                raise ValueError(
                    f"gpu_id={gpu_id} does not name an index of device={device}; pass one of them"
                )
            device = torch.device(device.type, gpu_id)
        elif device.type != "cpu" and device.index is None:
            device = torch.device(device.type, 0)
        self._offload_device = device  # read by diffusers' maybe_free_model_hooks
        return device

    def _modules_of_components(self) -> Iterator[nn.Module]:
        for component in self.components.values():
            if isinstance(component, nn.Module):
                yield component

    def _offload_units(self, in_sequence: bool) -> Iterator[nn.Module]:
        """The modules that get a hook: those in ``model_cpu_offload_seq``, in its order, or the
        other components. A component is its own unit when the pipeline calls it (STUNets; the
        VAE's encode/decode fire its hook); a text encoder's units are the models it runs (its
        child modules with weights: one CLIP, two for SDXL)."""
        sequence = self.model_cpu_offload_seq.split("->")
        components = self.components
        names = sequence if in_sequence else [name for name in components if name not in sequence]
        for name in names:
            component = components.get(name)
            if not isinstance(component, nn.Module):
                continue
            if isinstance(component, TextEncoder):
                yield from (
                    child for child in component.children() if next(child.parameters(), None) is not None
                )
            else:
                yield component

    # ----- VAE --------------------------------------------------------------------------------

    def enable_vae_tiling(self, tile_size: int | None = None) -> None:
        """Decode (and encode) frames larger than a tile in overlapping tiles (``AutoencoderKL``'s
        tiling). ``tile_size``: the tile's side in pixels, a multiple of the VAE's 8; default the
        VAE's ``sample_size`` (512 for SD 1.x: frames up to 512x512 still go in one pass)."""
        vae = self._vae("enable_vae_tiling")
        if tile_size is not None:
            factor = 2 ** (len(vae.config.block_out_channels) - 1)
            if (
                isinstance(tile_size, bool)
                or not isinstance(tile_size, int)
                or tile_size < factor
                or tile_size % factor
            ):
                raise ValueError(f"tile_size={tile_size!r}: must be a positive multiple of {factor} pixels")
            vae.tile_sample_min_size = tile_size
            vae.tile_latent_min_size = tile_size // factor
        vae.enable_tiling()

    def disable_vae_tiling(self) -> None:
        self._vae("disable_vae_tiling").disable_tiling()

    def enable_vae_slicing(self) -> None:
        """Run the VAE on one frame at a time (``AutoencoderKL``'s slicing)."""
        self._vae("enable_vae_slicing").enable_slicing()

    def disable_vae_slicing(self) -> None:
        self._vae("disable_vae_slicing").disable_slicing()

    def _vae(self, caller: str) -> nn.Module:
        vae = getattr(self, "vae", None)
        if vae is None:
            raise ValueError(f"{caller}: this pipeline has no vae component (a pixel-space model)")
        return vae
