"""Likelihoods through the probability-flow ODE, against Gaussian mixtures' exact noised densities.

A Gaussian mixture has an exact denoiser and an exact marginal log p_t at every t, so the ODE
estimate of log p_{t_start}(x) can be compared with the truth; the terminal term is made exact
too (`prior_log_prob` = the mixture's own log p_{t_max}), so what is left is the solver's error.
"""

import math

import pytest
import torch

from diffuse import EDM, VP, Flow, GaussianMixture, convert
from diffuse.likelihood import bits_per_dim, log_likelihood

PROCESSES = [pytest.param(VP("linear"), id="vp-linear"), pytest.param(EDM(), id="edm"),
             pytest.param(Flow(), id="flow")]


def mixture(dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(3, dim, generator=g, dtype=torch.float64)
    return GaussianMixture(means, [0.3, 0.4, 0.5], [0.2, 0.3, 0.5])


def noised_points(mix, process, n, seed=1):
    """Draws of the noised marginal at t_min, where the density is evaluated."""
    g = torch.Generator().manual_seed(seed)
    x0, _ = mix.sample(n, g)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    return process.add_noise(x0, torch.tensor(process.t_min), eps)


def exact_prior(mix, process):
    return lambda x_T: mix.log_prob_t(x_T, process.t_max, process)


@pytest.mark.parametrize("dim", [2, 8])
@pytest.mark.parametrize("process", PROCESSES)
def test_exact_divergence_matches_the_analytic_density(process, dim):
    mix = mixture(dim)
    x = noised_points(mix, process, 8)
    out = log_likelihood(mix.denoiser(process), process, x, divergence="exact",
                         prior_log_prob=exact_prior(mix, process))
    truth = mix.log_prob_t(x, process.t_min, process)
    per_dim = (out["log_prob"] - truth).abs().max() / dim
    assert per_dim < 0.01, per_dim
    assert out["stderr"] is None and isinstance(out["nfe"], int) and out["nfe"] > 0
    assert out["x_T"].shape == x.shape


def test_error_falls_with_the_tolerance():
    process, mix = VP("linear"), mixture(8)
    x = noised_points(mix, process, 4)
    truth = mix.log_prob_t(x, process.t_min, process)
    errors, nfes = [], []
    for tol in (1e-3, 1e-5, 1e-7):
        out = log_likelihood(mix.denoiser(process), process, x, divergence="exact", rtol=tol,
                             atol=tol, prior_log_prob=exact_prior(mix, process))
        errors.append(float((out["log_prob"] - truth).abs().max()))
        nfes.append(out["nfe"])
    assert errors[2] < errors[1] / 20 < errors[0] / 400, errors
    assert errors[2] < 1e-5 and nfes[0] < nfes[1] < nfes[2], (errors, nfes)


def test_default_prior_is_exact_for_flow():
    # The flow process reaches N(0, I) exactly at t = 1, so the default terminal term is exact.
    process, mix = Flow(), mixture(2)
    x = noised_points(mix, process, 8)
    out = log_likelihood(mix.denoiser(process), process, x, divergence="exact")
    truth = mix.log_prob_t(x, process.t_min, process)
    assert (out["log_prob"] - truth).abs().max() / 2 < 1e-3


def test_single_gaussian_against_its_closed_form():
    process = EDM()
    mu, s, dim = torch.tensor([0.5, -1.0, 0.25, 2.0], dtype=torch.float64), 0.4, 4
    model = GaussianMixture(mu[None], [s]).denoiser(process)

    def closed_form(x, t):  # x_t ~ N(alpha mu, (alpha^2 s^2 + sigma^2) I)
        a, sig = float(process.alpha(t)), float(process.sigma(t))
        normal = torch.distributions.Normal(a * mu, math.sqrt(a**2 * s**2 + sig**2))
        return normal.log_prob(x).sum(-1)

    x = torch.tensor([[0.5, -1.0, 0.25, 2.0], [0.0, 0.0, 0.0, 0.0], [1.0, -0.5, 0.8, 1.5]],
                     dtype=torch.float64)
    t0 = 0.01
    out = log_likelihood(model, process, x, divergence="exact", t_start=t0,
                         prior_log_prob=lambda x_T: closed_form(x_T, process.t_max))
    assert torch.allclose(out["log_prob"], closed_form(x, t0), atol=1e-3 * dim)


@pytest.mark.parametrize("kind", ["eps", "v", "velocity", "score"])
def test_every_prediction_gives_the_same_likelihood(kind):
    process, mix = VP("linear"), mixture(2)
    denoise = mix.denoiser(process)

    def model(x, t):
        return convert(denoise(x, t), "x0", kind, x, t, process)

    x = noised_points(mix, process, 4)
    ref = log_likelihood(denoise, process, x, divergence="exact")
    out = log_likelihood(model, process, x, kind, divergence="exact")
    assert torch.allclose(out["log_prob"], ref["log_prob"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_agrees_with_exact_within_its_standard_error(noise):
    process, mix = VP("linear"), mixture(8)
    x = noised_points(mix, process, 6)
    prior = exact_prior(mix, process)
    exact = log_likelihood(mix.denoiser(process), process, x, divergence="exact", prior_log_prob=prior)
    stderr = {}
    for k in (4, 32):
        g = torch.Generator().manual_seed(2)
        out = log_likelihood(mix.denoiser(process), process, x, hutchinson_samples=k, noise=noise,
                             prior_log_prob=prior, generator=g)
        assert (out["stderr"] > 0).all()
        stderr[k] = out["stderr"]
        if k == 32:
            z = (out["log_prob"] - exact["log_prob"]) / out["stderr"]
            assert z.abs().max() < 3, z
    # the standard error falls like 1/sqrt(k): by sqrt(8) ~ 2.8 from 4 to 32 draws
    assert stderr[32].mean() < stderr[4].mean() / 1.5, stderr


def test_hutchinson_is_reproducible_and_single_draw_has_no_stderr():
    process, mix = Flow(), mixture(2)
    x = noised_points(mix, process, 3)
    runs = [log_likelihood(mix.denoiser(process), process, x,
                           generator=torch.Generator().manual_seed(5)) for _ in range(2)]
    assert torch.equal(runs[0]["log_prob"], runs[1]["log_prob"])
    assert runs[0]["stderr"] is None


def test_a_sample_does_not_depend_on_its_batch():
    # One step size per sample: a point's trajectory and error control are its own.
    process, mix = EDM(), mixture(2)
    x = noised_points(mix, process, 6)
    together = log_likelihood(mix.denoiser(process), process, x, divergence="exact")["log_prob"]
    alone = torch.cat([log_likelihood(mix.denoiser(process), process, x[i:i + 1],
                                      divergence="exact")["log_prob"] for i in range(3)])
    assert torch.allclose(together[:3], alone, atol=1e-10, rtol=0)


def test_images_shaped_input():
    process, mix = VP("linear"), mixture(4)
    denoise = mix.denoiser(process)

    def model(x, t):  # [B, 1, 2, 2] images around the flat mixture
        return denoise(x.flatten(1), t).reshape(x.shape)

    x = noised_points(mix, process, 3)
    flat = log_likelihood(denoise, process, x, divergence="exact")
    image = log_likelihood(model, process, x.reshape(3, 1, 2, 2), "x0", divergence="exact")
    assert torch.allclose(flat["log_prob"], image["log_prob"], atol=1e-10, rtol=0)
    assert image["x_T"].shape == (3, 1, 2, 2)


def test_bits_per_dim_convention():
    # A uniform density on [-1, 1]^D is 256 equally likely 8-bit values per dimension: 8 bits.
    d = 3 * 32 * 32
    assert torch.isclose(bits_per_dim(-d * math.log(2), d), torch.tensor(8.0, dtype=torch.float64))
    assert torch.isclose(bits_per_dim(-d * math.log(2), (3, 32, 32)), torch.tensor(8.0, dtype=torch.float64))
    # log p = 0 leaves the cell-width term alone: log2(256 / 2) = 7 bits
    assert float(bits_per_dim(0.0, 10)) == pytest.approx(7.0)
    # data in [0, 1] with 256 bins: the uniform density is 0 nats and 8 bits
    assert float(bits_per_dim(0.0, 10, data_range=1.0)) == pytest.approx(8.0)
    out = bits_per_dim(torch.tensor([-d * math.log(2), 0.0]), d)
    assert out.shape == (2,) and torch.allclose(out, torch.tensor([8.0, 7.0], dtype=torch.float64))


def _mixture_model():
    process, mix = VP("linear"), mixture(2)
    return process, mix.denoiser(process), noised_points(mix, process, 2)


@pytest.mark.parametrize("kwargs, match", [
    ({"divergence": "trace"}, "unknown divergence"),
    ({"noise": "uniform"}, "unknown noise"),
    ({"hutchinson_samples": 0}, "positive integer"),
    ({"hutchinson_samples": 2.0}, "positive integer"),
    ({"divergence": "exact", "hutchinson_samples": 4}, "hutchinson.? only"),
    ({"rtol": 0.0}, "rtol and atol"),
    ({"method": "rk4"}, "unknown method"),
    ({"t_start": 0.5, "t_end": 0.2}, "t_start < t_end"),
    ({"t_start": 0.0}, "singular"),
    ({"prior_log_prob": lambda x_T: x_T.sum()}, "prior_log_prob must return"),
    ({"prediction": "noise"}, "unknown prediction"),
])
def test_bad_arguments_raise(kwargs, match):
    process, model, x = _mixture_model()
    with pytest.raises(ValueError, match=match):
        log_likelihood(model, process, x, **kwargs)


def test_bad_models_and_inputs_raise():
    process, model, x = _mixture_model()
    with pytest.raises(ValueError, match="say what the model predicts"):
        log_likelihood(lambda x, t: x, process, x)
    with pytest.raises(ValueError, match="returned"):
        log_likelihood(lambda x, t: x[:, :1], process, x, "x0")
    with pytest.raises(ValueError, match="floating-point"):
        log_likelihood(model, process, torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="non-finite"):
        log_likelihood(model, process, torch.full((2, 2), float("nan"), dtype=torch.float64))
    with pytest.raises(ValueError, match="zero SNR"):
        log_likelihood(lambda x, t: x, Flow(), x, "eps")
    with pytest.raises(RuntimeError, match="non-finite"):
        log_likelihood(lambda x, t: x * float("nan"), process, x, "x0", divergence="exact")
    for bad in ({"dims": 0}, {"dims": 4, "bins": 1}, {"dims": 4, "data_range": 0.0},
                {"dims": "abc"}):
        with pytest.raises(ValueError):
            bits_per_dim(-1.0, **bad)
