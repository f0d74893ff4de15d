"""Training objective on a diffusers noise schedule: noising, v/eps/x0 targets, (min-SNR) loss.

Knows nothing about the network: the network is any `model_fn(x_t, timesteps, cond) -> prediction`.
Tensors may have any rank (videos are `[b, c, f, h, w]`, images `[b, c, h, w]`); per-sample
coefficients broadcast with `append_dims`, as in k-diffusion.

Notation (Ho et al. 2020, DDPM; Salimans & Ho 2022, "Progressive Distillation", Sec. 4):
    alpha_t = sqrt(alphas_cumprod[t]),  sigma_t = sqrt(1 - alphas_cumprod[t]),  SNR_t = alpha_t^2 / sigma_t^2
    x_t = alpha_t * x0 + sigma_t * eps,  v = alpha_t * eps - sigma_t * x0,  x0 = alpha_t * x_t - sigma_t * v
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import DDPMScheduler

logger = logging.getLogger(__name__)

PREDICTION_TYPES = ("v_prediction", "epsilon", "sample")  # diffusers' names for v, eps and x0 targets


def append_dims(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """[b] -> [b, 1, ..., 1] with `ndim` dims, so per-sample scalars broadcast over any rank."""
    if x.ndim > ndim:
        raise ValueError(f"cannot append dims to a {x.ndim}-D tensor to make it {ndim}-D")
    return x[(...,) + (None,) * (ndim - x.ndim)]


def make_noise_scheduler(
    num_train_timesteps: int = 1000,  # discrete training noise levels
    beta_schedule: str = "squaredcos_cap_v2",  # cosine schedule (Nichol & Dhariwal 2021), good for pixels
    prediction_type: str = "v_prediction",  # v (Salimans & Ho 2022) is stable at low and high SNR
    **kwargs: Any,  # any other DDPMScheduler argument, e.g. rescale_betas_zero_snr=True
) -> DDPMScheduler:
    """The training noise schedule: a diffusers `DDPMScheduler`, cosine betas, v-prediction."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type={prediction_type!r}; expected one of {PREDICTION_TYPES}")
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule=beta_schedule,
        prediction_type=prediction_type,
        **kwargs,
    )


# What a saved scheduler config says about the noise schedule and the model's output (the rest,
# e.g. timestep spacing, is the sampler's own): carried over by `noise_scheduler_from_config`.
SCHEDULE_KEYS = (
    "num_train_timesteps",
    "beta_schedule",
    "beta_start",
    "beta_end",
    "trained_betas",
    "rescale_betas_zero_snr",
    "prediction_type",
    "variance_type",  # "learned_range": the model predicts a variance too (IF)
    "thresholding",
    "dynamic_thresholding_ratio",
    "sample_max_value",
)


def noise_scheduler_from_config(config: Mapping[str, Any]) -> DDPMScheduler:
    """The training noise schedule of a saved scheduler config (any diffusers scheduler's, e.g. a
    pipeline's sampler): ``make_noise_scheduler`` with the config's ``SCHEDULE_KEYS`` that are set.
    A config of the default schedule gives the default scheduler."""
    return make_noise_scheduler(**{key: config[key] for key in SCHEDULE_KEYS if config.get(key) is not None})


def _randn(shape: Sequence[int], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Standard normal float32 noise drawn on the generator's device, then moved to `device`."""
    if generator is None:
        return torch.randn(shape, device=device)
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


@dataclass
class DiffusionObjective:
    """Diffusion training loss on a diffusers scheduler (`alphas_cumprod`, `add_noise`, `get_velocity`).

    The target follows `scheduler.config.prediction_type`: "v_prediction" -> v, "epsilon" -> eps,
    "sample" -> x0.
    """

    scheduler: DDPMScheduler = field(default_factory=make_noise_scheduler)

    def __post_init__(self) -> None:
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"scheduler prediction_type={self.prediction_type!r}; expected one of {PREDICTION_TYPES}"
            )

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.prediction_type

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    # ---- schedule ----------------------------------------------------------------------------

    def alphas_cumprod(self, timesteps: torch.Tensor) -> torch.Tensor:
        """[b] integer timesteps -> [b] float32 alpha_t^2 = alphas_cumprod[t]."""
        if timesteps.ndim != 1 or timesteps.dtype.is_floating_point:
            raise ValueError(
                f"timesteps must be a 1-D integer tensor [b], got {tuple(timesteps.shape)} {timesteps.dtype}"
            )
        table = self.scheduler.alphas_cumprod.to(device=timesteps.device, dtype=torch.float32)
        return table[timesteps]

    def alpha_sigma(self, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[b] timesteps -> (alpha_t, sigma_t), each [b] float32."""
        alpha_bar = self.alphas_cumprod(timesteps)
        return alpha_bar.sqrt(), (1 - alpha_bar).sqrt()

    def snr(self, timesteps: torch.Tensor) -> torch.Tensor:
        """[b] timesteps -> [b] float32 SNR_t = alpha_t^2 / sigma_t^2."""
        alpha_bar = self.alphas_cumprod(timesteps)
        return alpha_bar / (1 - alpha_bar)

    def sample_timesteps(
        self,
        batch: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        bias_portion: float = 0.0,
        bias_begin: int = 700,
    ) -> torch.Tensor:
        """[batch] long timesteps, uniform over 0..num_train_timesteps-1; with ``bias_portion`` > 0,
        each one is instead drawn uniformly from ``bias_begin``..num_train_timesteps-1 with that
        probability (the "later" timestep bias of diffusers' SDXL training script).

        The bias puts more of the training signal on the high-noise steps, where a clip's layout and
        motion are decided; with ``bias_portion == 0`` the generator is consumed exactly as without it.
        """
        if not 0.0 <= bias_portion <= 1.0:
            raise ValueError(f"bias_portion must be in [0, 1], got {bias_portion}")
        if not 0 <= bias_begin < self.num_train_timesteps:
            raise ValueError(f"bias_begin must be in [0, {self.num_train_timesteps - 1}], got {bias_begin}")
        gen_device = generator.device if generator is not None else device
        timesteps = torch.randint(
            0, self.num_train_timesteps, (batch,), generator=generator, device=gen_device
        )
        if bias_portion > 0:
            late = torch.randint(
                bias_begin, self.num_train_timesteps, (batch,), generator=generator, device=gen_device
            )
            biased = torch.rand(batch, generator=generator, device=gen_device) < bias_portion
            timesteps = torch.where(biased, late, timesteps)
        return timesteps.to(device) if device is not None else timesteps

    # ---- forward process and targets ----------------------------------------------------------

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = alpha_t * x0 + sigma_t * noise; x0, noise [b, ...] (any rank), timesteps [b].

        Computed in float32 (diffusers would use x0's dtype for the coefficients), returned in x0's dtype.
        """
        x_t = self.scheduler.add_noise(x0.float(), noise.float(), timesteps.to(x0.device))
        return x_t.to(x0.dtype)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The regression target [b, ...], float32: v = alpha_t * eps - sigma_t * x0, eps, or x0."""
        if self.prediction_type == "v_prediction":
            return self.scheduler.get_velocity(x0.float(), noise.float(), timesteps.to(x0.device))
        if self.prediction_type == "epsilon":
            return noise.float()
        return x0.float()

    def predict_x0(
        self, model_output: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """Clean-sample estimate [b, ...] float32 from a prediction of the scheduler's type.

        v: x0 = alpha_t * x_t - sigma_t * v (Salimans & Ho 2022, Sec. 4); eps: x0 = (x_t - sigma_t * eps) / alpha_t.
        """
        alpha, sigma = self.alpha_sigma(timesteps.to(x_t.device))
        alpha, sigma = append_dims(alpha, x_t.ndim), append_dims(sigma, x_t.ndim)  # [b, 1, ..., 1]
        out, x_t = model_output.float(), x_t.float()
        if self.prediction_type == "v_prediction":
            return alpha * x_t - sigma * out
        if self.prediction_type == "epsilon":
            return (x_t - sigma * out) / alpha
        return out

    # ---- loss ----------------------------------------------------------------------------------

    def min_snr_weights(self, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
        """[b] Min-SNR-gamma loss weights (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR
        Weighting Strategy", Sec. 3.4): min(SNR, gamma) in x0 terms, i.e. min(SNR, gamma) / (SNR + 1)
        for v, min(SNR, gamma) / SNR for eps, min(SNR, gamma) for x0."""
        if gamma <= 0:
            raise ValueError(f"min_snr_gamma must be > 0, got {gamma}")
        snr = self.snr(timesteps)
        if self.prediction_type == "v_prediction":
            return snr.clamp(max=gamma) / (snr + 1)
        if self.prediction_type == "epsilon":
            return (gamma / snr).clamp(max=1.0)  # = min(SNR, gamma) / SNR, and 1 (not 0/0) at SNR = 0
        return snr.clamp(max=gamma)

    def loss(
        self,
        model_output: torch.Tensor,
        x0: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        min_snr_gamma: float | None = None,
        reduction: str = "mean",  # "mean": a scalar; "none": one loss per sample, [b] (as torch's losses)
    ) -> torch.Tensor:
        """Float32 mean squared error to the target over all non-batch dims, times min-SNR weights
        if gamma is set: ``[b]`` with ``reduction="none"``, else its batch mean (a scalar)."""
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        if model_output.shape != x0.shape:
            raise ValueError(
                f"model output shape {tuple(model_output.shape)} != sample shape {tuple(x0.shape)}"
            )
        target = self.target(x0, noise, timesteps)
        per_sample = (model_output.float() - target).square().mean(dim=tuple(range(1, x0.ndim)))  # [b]
        if min_snr_gamma is not None:
            per_sample = per_sample * self.min_snr_weights(timesteps.to(x0.device), min_snr_gamma)
        return per_sample if reduction == "none" else per_sample.mean()

    # ---- the training step ---------------------------------------------------------------------

    def training_loss(
        self,
        model_fn: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor],  # (x_t, timesteps, cond)
        x0: torch.Tensor,  # [b, ...] the clean sample that is diffused
        cond: Any = None,  # passed to model_fn as is (unless draw_cond is given)
        generator: torch.Generator | None = None,  # every random draw of the step
        min_snr_gamma: float | None = None,  # min-SNR loss weighting; None: plain MSE
        bias_portion: float = 0.0,  # share of timesteps drawn from [bias_begin, T) (sample_timesteps)
        bias_begin: int = 700,
        draw_cond: Callable[[torch.Generator | None], Any] | None = None,  # draws cond from generator
    ) -> torch.Tensor:
        """The one training step of every model (``lumiere.train``, ``bench/``, the ablation): draw
        timesteps and noise, noise x0 [b, ...], call ``model_fn(x_t, timesteps, cond)``, and return
        the (min-SNR weighted) scalar loss against the target (Ho et al. 2020, Algorithm 1).

        The draws from ``generator`` come in a fixed order, so a step is a pure function of it:
        timesteps, then noise, then (with ``draw_cond``) the stage's conditioning, e.g. the SSR
        stage's augmentation level and noise. Keep this order: resumed runs rely on it.
        """
        # 1. Noise level and noise, both from `generator`.
        timesteps = self.sample_timesteps(
            x0.shape[0],
            generator=generator,
            device=x0.device,
            bias_portion=bias_portion,
            bias_begin=bias_begin,
        )  # [b]
        noise = _randn(x0.shape, generator, x0.device).to(x0.dtype)  # [b, ...]
        # 2. Forward process.
        x_t = self.add_noise(x0, noise, timesteps)  # [b, ...]
        # 3. The stage's conditioning, drawn last.
        if draw_cond is not None:
            cond = draw_cond(generator)
        # 4. Prediction and loss.
        model_output = model_fn(x_t, timesteps, cond)
        if not isinstance(model_output, torch.Tensor):
            raise TypeError(
                f"model_fn must return a tensor, got {type(model_output).__name__}; for a diffusers-style "
                "model wrap it, e.g. lambda x, t, c: model(x, t, c).sample"
            )
        return self.loss(model_output, x0, noise, timesteps, min_snr_gamma)


def drop_captions(
    captions: Sequence[str],
    p: float = 0.1,  # Ho & Salimans 2022 ("Classifier-Free Diffusion Guidance") use 0.1-0.2
    generator: torch.Generator | None = None,
    null_prompt: str = "",  # the unconditional input, lumiere.models.text.NULL_PROMPT
) -> list[str]:
    """Replace each caption by `null_prompt` with probability p, for classifier-free guidance."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"caption drop probability must be in [0, 1], got {p}")
    device = generator.device if generator is not None else None
    drop = (torch.rand(len(captions), generator=generator, device=device) < p).tolist()
    return [null_prompt if d else c for c, d in zip(captions, drop, strict=True)]
