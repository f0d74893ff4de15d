"""The work every benchmark times, the same for every model: one training step and one guided sample.

Both use the library's own pieces, so a model is timed as lumiere trains and samples:
``lumiere.diffusion.DiffusionObjective`` (v-prediction on the cosine DDPM schedule, min-SNR
weighting) and ``lumiere.pipelines.make_sampling_scheduler`` (DPM-Solver++, trailing spacing),
with classifier-free guidance done as ``LumierePipeline.predict`` does it (one batch of 2b).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch

from lumiere.diffusion import DiffusionObjective
from lumiere.pipelines.lumiere import make_sampling_scheduler

MIN_SNR_GAMMA = 5.0  # as configs/recipe/*.yaml train


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision as Accelerate's ``mixed_precision="bf16"`` does it; fp32 runs as is."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_training_step(
    model: torch.nn.Module,
    clip_shape: tuple[int, int, int, int, int],  # [b, c, f, h, w]
    device: torch.device,
    dtype: torch.dtype = torch.float32,  # autocast dtype; weights and optimizer stay fp32
    text: torch.Tensor | None = None,  # [b, n, d] text states
    seed: int = 0,
    inputs: Callable[[], tuple[torch.Tensor, torch.Tensor | None]] | None = None,  # per step: (x0, text)
) -> Callable[[], torch.Tensor]:
    """A closure doing one AdamW training step on a fixed clip; returns the loss (not synced).

    ``inputs``, when given, makes each step's clean clip ``[b, c, f, h, w]`` and text states
    itself (e.g. encoded in the step, as training without caches does); else the clip is fixed."""
    generator = torch.Generator(device=device).manual_seed(seed)
    x0 = torch.rand(clip_shape, generator=generator, device=device) * 2 - 1  # [b, c, f, h, w]
    objective = DiffusionObjective()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)  # as lumiere.train builds it

    def step() -> torch.Tensor:
        clean, states = inputs() if inputs is not None else (x0, text)

        def forward(noisy: torch.Tensor, timesteps: torch.Tensor, _) -> torch.Tensor:
            with autocast(device, dtype):
                return model(noisy, timesteps, states)

        loss = objective.training_loss(forward, clean, generator=generator, min_snr_gamma=MIN_SNR_GAMMA)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def forward_backward(model: torch.nn.Module, clip_shape, device, dtype=torch.float32, text=None) -> None:
    """The network part of a training step (what a FLOP counter sees; AdamW is elementwise)."""
    x0 = torch.rand(clip_shape, device=device) * 2 - 1

    def forward(noisy: torch.Tensor, timesteps: torch.Tensor, _) -> torch.Tensor:
        with autocast(device, dtype):
            return model(noisy, timesteps, text)

    DiffusionObjective().training_loss(forward, x0, min_snr_gamma=MIN_SNR_GAMMA).backward()
    model.zero_grad(set_to_none=True)


@torch.no_grad()
def guided_sample(
    model: torch.nn.Module,
    clip_shape: tuple[int, int, int, int, int],  # [b, c, f, h, w]
    text: torch.Tensor,  # [b, n, d] conditional text states
    null_text: torch.Tensor,  # [b, n, d] unconditional text states
    num_steps: int = 25,
    guidance_scale: float = 5.0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    sampler: str = "dpm++",
    model_kwargs: dict[str, torch.Tensor] | None = None,  # [b, ...] each, e.g. a TSR's keyframes
) -> torch.Tensor:
    """Denoise ``[b, c, f, h, w]`` from noise: the pipeline's scheduler and guidance, any model.

    ``model_kwargs`` go to every model call (doubled along the batch with guidance).
    """
    device = torch.device(device)
    scheduler = make_sampling_scheduler(sampler)
    scheduler.set_timesteps(num_steps, device=device)
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(clip_shape, generator=generator).to(device) * scheduler.init_noise_sigma
    guided = guidance_scale > 1.0
    states = torch.cat([null_text, text]) if guided else text  # [2b, n, d] or [b, n, d]
    kwargs = {k: torch.cat([v, v]) if guided else v for k, v in (model_kwargs or {}).items()}
    for timestep in scheduler.timesteps:
        model_input = scheduler.scale_model_input(sample, timestep)
        if guided:
            model_input = torch.cat([model_input, model_input])
        timesteps = timestep.expand(model_input.shape[0])
        with autocast(device, dtype):
            output = model(model_input, timesteps, states, **kwargs).float()
        if guided:
            uncond, cond = output.chunk(2)
            output = uncond + guidance_scale * (cond - uncond)
        sample = scheduler.step(output, timestep, sample).prev_sample
    return sample
