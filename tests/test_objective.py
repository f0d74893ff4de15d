"""Diffusion objective: v/eps/x0 targets, noising, min-SNR weights, caption dropout. Any rank."""

import pytest
import torch
from diffusers import DDPMScheduler
from torch.testing import assert_close

from lumiere.diffusion import (
    DiffusionObjective,
    append_dims,
    drop_captions,
    make_noise_scheduler,
)

SHAPES = [(3, 3, 8, 4, 4), (3, 3, 4, 4), (3, 16)]  # video [b, c, f, h, w], image, flat
TIMESTEPS = torch.tensor([0, 500, 999])


def _objective(prediction_type="v_prediction"):
    return DiffusionObjective(make_noise_scheduler(prediction_type=prediction_type))


def _alpha_sigma(scheduler, timesteps, ndim):
    """Independent reference: alpha_t, sigma_t from alphas_cumprod, shaped [b, 1, ..., 1]."""
    alpha_bar = scheduler.alphas_cumprod.double()[timesteps].view(-1, *([1] * (ndim - 1)))
    return alpha_bar.sqrt().float(), (1 - alpha_bar).sqrt().float()


def _data(shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)


def test_make_noise_scheduler():
    scheduler = make_noise_scheduler()
    assert isinstance(scheduler, DDPMScheduler)
    assert scheduler.config.beta_schedule == "squaredcos_cap_v2"
    assert scheduler.config.prediction_type == "v_prediction"
    assert scheduler.config.num_train_timesteps == 1000
    assert scheduler.alphas_cumprod[0] > 0.999 and scheduler.alphas_cumprod[-1] < 1e-6  # cosine ends
    with pytest.raises(ValueError, match="prediction_type"):
        make_noise_scheduler(prediction_type="flow")


def test_append_dims():
    x = torch.arange(3.0)
    assert append_dims(x, 5).shape == (3, 1, 1, 1, 1)
    assert append_dims(x, 1).shape == (3,)
    with pytest.raises(ValueError):
        append_dims(torch.zeros(3, 4), 1)


@pytest.mark.parametrize("shape", SHAPES)
def test_add_noise_matches_formula(shape):
    objective = _objective()
    x0, noise = _data(shape)
    alpha, sigma = _alpha_sigma(objective.scheduler, TIMESTEPS, len(shape))
    x_t = objective.add_noise(x0, noise, TIMESTEPS)
    assert_close(x_t, alpha * x0 + sigma * noise)
    assert objective.add_noise(x0.bfloat16(), noise.bfloat16(), TIMESTEPS).dtype == torch.bfloat16


@pytest.mark.parametrize("shape", SHAPES)
def test_v_target_recovers_x0(shape):
    """Salimans & Ho 2022: v = alpha*eps - sigma*x0 and x0 = alpha*x_t - sigma*v."""
    objective = _objective()
    x0, noise = _data(shape)
    alpha, sigma = _alpha_sigma(objective.scheduler, TIMESTEPS, len(shape))
    v = objective.target(x0, noise, TIMESTEPS)
    x_t = objective.add_noise(x0, noise, TIMESTEPS)
    assert v.shape == x0.shape and v.dtype == torch.float32
    assert_close(v, alpha * noise - sigma * x0)
    assert_close(alpha * x_t - sigma * v, x0, rtol=1e-5, atol=1e-5)
    assert_close(objective.predict_x0(v, x_t, TIMESTEPS), x0, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
def test_other_targets_recover_x0(prediction_type):
    objective = _objective(prediction_type)
    x0, noise = _data(SHAPES[0])
    timesteps = torch.tensor([0, 300, 800])  # eps -> x0 divides by alpha_t: stay away from t=999
    x_t = objective.add_noise(x0, noise, timesteps)
    target = objective.target(x0, noise, timesteps)
    assert_close(target, noise if prediction_type == "epsilon" else x0)
    assert_close(objective.predict_x0(target, x_t, timesteps), x0, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon", "sample"])
@pytest.mark.parametrize("shape", SHAPES)
def test_loss_zero_at_target_positive_otherwise(prediction_type, shape):
    objective = _objective(prediction_type)
    x0, noise = _data(shape)
    target = objective.target(x0, noise, TIMESTEPS)
    for gamma in (None, 5.0):
        exact = objective.loss(target, x0, noise, TIMESTEPS, min_snr_gamma=gamma)
        assert exact.shape == () and exact.dtype == torch.float32
        assert exact.item() == 0.0
        off = objective.loss(target + 0.1, x0, noise, TIMESTEPS, min_snr_gamma=gamma)
        assert off.item() > 0
    # unweighted: plain mean squared error over everything
    assert_close(objective.loss(target + 0.1, x0, noise, TIMESTEPS), torch.tensor(0.01))
    # bf16 model output: the loss is still computed in float32
    assert objective.loss(target.bfloat16(), x0, noise, TIMESTEPS).dtype == torch.float32
    with pytest.raises(ValueError, match="shape"):
        objective.loss(target[:, :1], x0, noise, TIMESTEPS)


def test_min_snr_weights_follow_the_formula():
    """Hang et al. 2023: weight = min(SNR, gamma) / (SNR + 1) for v-prediction."""
    objective, gamma = _objective(), 5.0
    timesteps = torch.arange(1000)
    weights = objective.min_snr_weights(timesteps, gamma)
    assert weights.shape == (1000,) and (weights <= 1).all() and (weights >= 0).all()
    alpha_bar = objective.scheduler.alphas_cumprod.double()
    snr = alpha_bar / (1 - alpha_bar)
    for step in (0, 100, 400, 600, 999):
        expected = min(snr[step].item(), gamma) / (snr[step].item() + 1)
        assert weights[step].item() == pytest.approx(expected, rel=1e-4, abs=1e-9)
    # high SNR (t=0): clipped at gamma, so the weight is small; SNR < gamma: weight = SNR / (SNR + 1)
    assert weights[0] < 1e-3
    low = int((snr < gamma).nonzero()[0])
    assert weights[low].item() == pytest.approx(snr[low].item() / (snr[low].item() + 1), rel=1e-4)
    assert weights[999] < 1e-6
    # eps: min(SNR, gamma) / SNR <= 1, and exactly 1 where SNR <= gamma
    eps_weights = _objective("epsilon").min_snr_weights(timesteps, gamma)
    assert (eps_weights <= 1).all() and eps_weights[low:].eq(1).all() and torch.isfinite(eps_weights).all()
    with pytest.raises(ValueError):
        objective.min_snr_weights(timesteps, 0.0)


@pytest.mark.parametrize("shape", SHAPES[:2])
def test_min_snr_v_loss_is_min_snr_x0_loss(shape):
    """Weighted v-loss == min(SNR, gamma) * ||x0_hat - x0||^2, the paper's definition in x0 terms."""
    objective, gamma = _objective(), 5.0
    x0, noise = _data(shape)
    timesteps = torch.tensor([50, 400, 900])
    x_t = objective.add_noise(x0, noise, timesteps)
    output = objective.target(x0, noise, timesteps) + 0.3 * torch.randn(shape)
    per_sample = objective.loss(output, x0, noise, timesteps, min_snr_gamma=gamma, reduction="none")
    x0_error = (objective.predict_x0(output, x_t, timesteps) - x0).square().flatten(1).mean(1)
    assert_close(per_sample, objective.snr(timesteps).clamp(max=gamma) * x0_error, rtol=1e-4, atol=1e-6)
    unweighted = objective.loss(output, x0, noise, timesteps, reduction="none")
    assert_close(per_sample, unweighted * objective.min_snr_weights(timesteps, gamma))


def test_sample_timesteps():
    objective = _objective()
    timesteps = objective.sample_timesteps(4096, torch.Generator().manual_seed(0))
    assert timesteps.shape == (4096,) and timesteps.dtype == torch.long
    assert timesteps.min() >= 0 and timesteps.max() <= 999 and timesteps.float().std() > 250
    assert torch.equal(timesteps, objective.sample_timesteps(4096, torch.Generator().manual_seed(0)))


def test_sample_timesteps_bias_towards_high_noise():
    objective = _objective()
    # portion 0 draws exactly what the unbiased sampler draws (old configs reproduce)
    unbiased = objective.sample_timesteps(4096, torch.Generator().manual_seed(0))
    assert torch.equal(
        unbiased, objective.sample_timesteps(4096, torch.Generator().manual_seed(0), bias_portion=0.0)
    )
    # portion p: p of the draws from [begin, 1000) plus (1 - p) uniform, so P(t >= begin) = p + (1 - p) * 0.2
    biased = objective.sample_timesteps(
        8192, torch.Generator().manual_seed(1), bias_portion=0.5, bias_begin=800
    )
    assert biased.dtype == torch.long and biased.min() >= 0 and biased.max() <= 999
    assert abs((biased >= 800).float().mean().item() - 0.6) < 0.03
    everything_late = objective.sample_timesteps(
        512, torch.Generator().manual_seed(2), bias_portion=1.0, bias_begin=950
    )
    assert everything_late.min() >= 950
    with pytest.raises(ValueError, match=r"bias_portion must be in \[0, 1\]"):
        objective.sample_timesteps(4, bias_portion=1.5)
    with pytest.raises(ValueError, match=r"bias_begin must be in \[0, 999\]"):
        objective.sample_timesteps(4, bias_portion=0.5, bias_begin=1000)


@pytest.mark.parametrize("shape", SHAPES)
def test_training_loss_with_an_oracle_model(shape):
    """A model that knows x0 predicts v = (alpha*x_t - x0) / sigma exactly: loss ~ 0."""
    objective = _objective()
    x0, _ = _data(shape)
    seen = {}

    def oracle(x_t, timesteps, cond):
        seen.update(x_t=x_t, timesteps=timesteps)
        alpha, sigma = _alpha_sigma(objective.scheduler, timesteps, x_t.ndim)
        return (alpha * x_t - cond) / sigma

    loss = objective.training_loss(oracle, x0, x0, torch.Generator().manual_seed(1))
    assert seen["x_t"].shape == x0.shape and seen["timesteps"].shape == (shape[0],)
    assert loss.shape == () and loss.item() < 1e-6

    def constant(x_t, timesteps, cond):
        return torch.zeros_like(x_t)

    first = objective.training_loss(constant, x0, None, torch.Generator().manual_seed(2), min_snr_gamma=5.0)
    again = objective.training_loss(constant, x0, None, torch.Generator().manual_seed(2), min_snr_gamma=5.0)
    assert first.item() > 0 and first.item() == again.item()


def test_training_loss_draws_timesteps_then_noise_then_the_condition():
    """The one training step's draw order, which exact resume relies on, spelled out by hand."""
    objective, gamma = _objective(), 5.0
    x0, _ = _data((3, 3, 4, 8, 8))
    manual = torch.Generator().manual_seed(7)
    timesteps = objective.sample_timesteps(3, manual, bias_portion=0.5, bias_begin=600)
    noise = torch.randn(x0.shape, generator=manual)
    cond = torch.rand(3, generator=manual)
    x_t = objective.add_noise(x0, noise, timesteps)
    expected = objective.loss(
        x_t * cond[:, None, None, None, None], x0, noise, timesteps, min_snr_gamma=gamma
    )

    def model_fn(x_t, timesteps, cond):
        return x_t * cond[:, None, None, None, None]

    loss = objective.training_loss(
        model_fn,
        x0,
        generator=torch.Generator().manual_seed(7),
        min_snr_gamma=gamma,
        bias_portion=0.5,
        bias_begin=600,
        draw_cond=lambda generator: torch.rand(3, generator=generator),
    )
    assert loss.item() == expected.item()


def test_training_loss_rejects_non_tensor_outputs():
    with pytest.raises(TypeError, match="sample"):
        _objective().training_loss(lambda x, t, c: {"sample": x}, torch.zeros(2, 3, 4, 4, 4), None)


def test_drop_captions():
    captions = [f"caption {i}" for i in range(20000)]
    dropped = drop_captions(captions, 0.1, torch.Generator().manual_seed(0))
    rate = sum(c == "" for c in dropped) / len(captions)
    assert abs(rate - 0.1) < 0.01
    assert all(d in ("", c) for d, c in zip(dropped, captions, strict=True))
    assert dropped == drop_captions(captions, 0.1, torch.Generator().manual_seed(0))
    assert dropped != drop_captions(captions, 0.1, torch.Generator().manual_seed(1))
    assert drop_captions(captions[:50], 0.0) == captions[:50]
    assert drop_captions(captions[:50], 1.0, null_prompt="<null>") == ["<null>"] * 50
    with pytest.raises(ValueError):
        drop_captions(captions, 1.5)
