"""Operators, measurements, the posterior samplers against the exact posterior of a Gaussian
mixture, and DDIM inversion."""

import dataclasses
import math

import pytest
import torch

from diffuse import EDM, VP, Flow, GaussianMixture
from diffuse.inverse import (MASKS, Blur, Downsample, Grayscale, Inpaint, Measurement, Saturation, gaussian_kernel,
                             measure, motion_kernel)
from diffuse.metrics.distances import sliced_wasserstein
from diffuse.samplers import GridDenoiser, _grid, invert, posterior_samplers, sample
from diffuse.samplers.daps import _tweedie_std

LINEAR = {
    **{f"inpaint-{name}": (lambda name=name: Inpaint(make((8, 8)))) for name, make in MASKS.items()},
    "superres-x2": lambda: Downsample((1, 8, 8), 2),
    "superres-x4": lambda: Downsample((2, 8, 8), 4),
    "blur-gaussian": lambda: Blur((1, 8, 8), gaussian_kernel(5, 1.0)),
    "blur-motion": lambda: Blur((1, 8, 8), motion_kernel(5, 30)),
    "colorize": lambda: Grayscale((3, 4, 4)),
}


@pytest.mark.parametrize("name", LINEAR)
def test_every_linear_operator_is_its_svd(name):
    op = LINEAR[name]()
    u, s, v = op.svd
    assert torch.allclose((u * s) @ v.T, op.matrix, atol=1e-12)
    assert torch.allclose(u.T @ u, torch.eye(len(s), dtype=torch.float64), atol=1e-12)
    assert torch.allclose(v.T @ v, torch.eye(len(s), dtype=torch.float64), atol=1e-12)
    x = torch.randn(3, *op.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = op(x)
    assert torch.allclose(y.reshape(3, -1), x.reshape(3, -1) @ op.matrix.T, atol=1e-12)
    # the transpose is the adjoint: <A x, y'> = <x, A^T y'>
    other = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.allclose((y * other).sum(), (x * op.transpose(other)).sum(), atol=1e-10)
    # A A^+ y = y on the range, and A never sees the null part
    assert torch.allclose(op(op.pinv(y)), y, atol=1e-10)
    assert op(op.null_part(x)).abs().max() < 1e-10


def test_masks_and_their_ranks():
    shape = (8, 8)
    assert int(MASKS["box"](shape).sum()) == 64 - 16
    assert int(MASKS["random"](shape, missing=0.75).sum()) == 16
    assert torch.equal(MASKS["random"](shape, seed=3), MASKS["random"](shape, seed=3))
    assert int(MASKS["lines"](shape)[1::2].sum()) == 0 and int(MASKS["half"](shape)[:, 4:].sum()) == 0
    assert len(Inpaint(MASKS["box"](shape)).svd[1]) == 48       # the seen pixels only
    assert len(Downsample((1, 8, 8), 4).svd[1]) == 4


def test_operators_refuse_bad_input():
    with pytest.raises(ValueError, match="0 .missing. and 1"):
        Inpaint(torch.full((4, 4), 0.5))
    with pytest.raises(ValueError, match="RGB"):
        Grayscale((1, 8, 8))
    with pytest.raises(ValueError, match="must divide"):
        Downsample((1, 8, 8), 3)
    with pytest.raises(ValueError, match="odd side"):
        Blur((1, 8, 8), torch.ones(4, 4))
    with pytest.raises(ValueError, match=r"images \[B, 1, 8, 8\]"):
        Downsample((1, 8, 8), 2)(torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="NaN"):
        Measurement(torch.full((1, 4), float("nan")), Downsample((1, 4, 4), 2))
    with pytest.raises(ValueError, match="sigma_y"):
        Measurement(torch.zeros(1, 4), Downsample((1, 4, 4), 2), -0.1)


def test_sigma_y_is_stated_in_pixel_units():
    op = Downsample((1, 16, 16), 2)
    x = torch.zeros(200, 1, 16, 16)
    m = measure(op, x, sigma_y=0.05, seed=0)
    # in the model's range [-1, 1] the noise is twice as large ...
    assert m.noise_std == 0.1 and abs(float(m.y.std()) - 0.1) < 0.003
    # ... and the consistency is reported back in pixel units
    assert abs(float(m.consistency(x).mean()) - 0.05 * math.sqrt(64)) < 0.02


def test_exact_posterior_of_one_gaussian_is_the_textbook_one():
    prior = GaussianMixture([[0.5, -0.5]], 0.3)
    y, noise = torch.tensor([1.0, 0.0]), 0.2
    post = prior.posterior(torch.eye(2), y, noise)
    gain = 0.3**2 / (0.3**2 + noise**2)
    assert torch.allclose(post.means[0], prior.means[0] + gain * (y - prior.means[0]))
    assert torch.allclose(post.covariances[0], (1 - gain) * 0.3**2 * torch.eye(2, dtype=torch.float64))
    draws = post.sample(20000, torch.Generator().manual_seed(0))
    assert torch.allclose(draws.mean(0), post.means[0], atol=0.01)


# A mixture of 3 well-separated modes on 2x2 images; the mask sees the diagonal.
SHAPE = (1, 2, 2)
MIXTURE = GaussianMixture(torch.tensor([[1.0, 1.0, -1.0, 0.5], [-1.0, 0.5, 1.0, -1.0], [0.5, -1.0, 0.5, 1.0]]) * 0.8,
                          0.2, [0.5, 0.3, 0.2])
# Sliced-W2 to the exact posterior (2000 draws each; two exact draws are 0.01 apart, the prior
# is 1.0 away). DDRM, RePaint with resampling and DAPS are close to exact (DAPS 0.04 on both
# paths); so is DPS at scale 0.3 (0.017 on VP, 0.016 on EDM: its step is taken in variance-
# preserving coordinates, so one scale serves both; with the raw gradient on EDM it read 0.11).
TOLERANCE = {"ddrm": 0.06, "repaint": 0.07, "daps": 0.07, "dps": 0.04}
OPTIONS = {"dps": {"scale": 0.3}, "repaint": {"resamplings": 5}}


@pytest.mark.parametrize("process", [VP("linear"), EDM()], ids=["vp", "edm"])
def test_posterior_samplers_draw_the_exact_posterior_of_a_mixture(process):
    op = Inpaint(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    m = measure(op, MIXTURE.means[1].reshape(1, *SHAPE).float(), sigma_y=0.05, seed=1)
    post = MIXTURE.posterior(op.matrix, m.y.reshape(-1), m.noise_std)
    n = 2000
    exact = post.sample(n, torch.Generator().manual_seed(2))
    batch = Measurement(m.y.expand(n, *SHAPE), op, m.sigma_y)
    noise = torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(5))
    assert set(posterior_samplers()) == set(TOLERANCE)
    for name, tolerance in TOLERANCE.items():
        x = sample(MIXTURE.denoiser(process), process, noise, sampler=name, steps=200 if name == "dps" else 50,
                   measurement=batch, generator=torch.Generator().manual_seed(6), **OPTIONS.get(name, {}))
        distance = sliced_wasserstein(exact, x.reshape(n, -1).double())
        assert distance < tolerance, (name, distance)


@pytest.mark.parametrize("name", ["superres", "blur"])
def test_svd_samplers_find_a_gaussian_posteriors_mean(name):
    """With one Gaussian component the posterior is Gaussian; DDRM and DAPS put their samples'
    mean on its mean (their spread is the approximation: DDRM's eta = 0.85 steps lose some). Both
    operators are well conditioned here (sigma_y / s_j below the prior's std for every j); where a
    component is measured through a tiny singular value (a wide blur on 2x2), DDRM's mean leans
    towards the measurement (0.14 off with a std-0.8 kernel), the method's approximation."""
    prior = GaussianMixture([[0.6, 0.2, -0.4, 0.3]], 0.3)
    op = Downsample(SHAPE, 2) if name == "superres" else Blur(SHAPE, gaussian_kernel(3, 0.5))
    m = measure(op, torch.tensor([[[[0.9, 0.1], [-0.5, 0.6]]]]), sigma_y=0.02, seed=0)
    post = prior.posterior(op.matrix, m.y.reshape(-1), m.noise_std)
    n, process = 4000, Flow()
    batch = Measurement(m.y.expand(n, *m.y.shape[1:]), op, m.sigma_y)
    for sampler in ("ddrm", "daps"):
        x = sample(prior.denoiser(process), process, torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(0)),
                   sampler=sampler, steps=50, measurement=batch, generator=torch.Generator().manual_seed(1))
        assert torch.allclose(x.reshape(n, -1).double().mean(0), post.means[0], atol=0.03), sampler


def test_gradient_samplers_handle_a_nonlinear_sensor():
    op = Saturation(SHAPE, gain=2.0)
    truth = MIXTURE.means[0].reshape(1, *SHAPE).float()
    n, process = 500, VP("linear")
    batch = Measurement(op(truth).expand(n, *SHAPE) + 0.0, op, 0.01)
    noise = torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(0))
    model = MIXTURE.denoiser(process)
    free = sample(model, process, noise, sampler="ddpm", steps=100, generator=torch.Generator().manual_seed(1))
    for name, options in {"dps": {"scale": 0.3}, "daps": {"ode_steps": 2, "langevin_steps": 20}}.items():
        x = sample(model, process, noise, sampler=name, steps=100, measurement=batch,
                   generator=torch.Generator().manual_seed(1), **options)
        assert batch.consistency(x).median() < batch.consistency(free).median() / 5, name
    with pytest.raises(ValueError, match="needs a linear operator"):
        sample(model, process, noise, sampler="ddrm", measurement=batch)


def test_posterior_samplers_refuse_a_missing_or_mismatched_measurement():
    process = VP("linear")
    model = MIXTURE.denoiser(process)
    op = Downsample(SHAPE, 2)
    with pytest.raises(ValueError, match="given a measurement"):
        sample(model, process, torch.randn(4, *SHAPE), sampler="ddrm")
    with pytest.raises(ValueError, match="a measurement of 2 for a batch of 4"):
        sample(model, process, torch.randn(4, *SHAPE), sampler="ddrm", measurement=measure(op, torch.zeros(2, *SHAPE)))


@pytest.mark.parametrize("process", [VP("linear"), EDM(), Flow(), VP.from_betas("linear", 1000)],
                         ids=["vp", "edm", "flow", "ddpm"])
def test_ddim_inversion_round_trips(process):
    model = MIXTURE.denoiser(process)
    x0 = MIXTURE.sample(200, torch.Generator().manual_seed(0))[0].float().reshape(200, *SHAPE)
    errors = {}
    for fixed_point in (0, 2):
        noise, nfe = invert(model, process, x0, 200, fixed_point=fixed_point, return_nfe=True)
        assert nfe == 200 * (1 + fixed_point)
        back = sample(model, process, noise, sampler="ddim", steps=200)
        errors[fixed_point] = float((back - x0).pow(2).mean().sqrt())
    # the noise found is standard normal, and the round trip is close; re-reading eps makes it exact
    assert abs(float(noise.std()) - 1) < 0.15
    assert errors[0] < 0.02 and errors[2] < 0.01 and errors[2] < errors[0] / 1.4, errors


def test_classical_baselines():
    from diffuse.inverse import PixelRegression, Wiener, bicubic, mean_fill, nearest_consistent, nearest_fill
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    mask = torch.ones(8, 8)
    mask[:, 4:] = 0
    m = measure(Inpaint(mask), x)
    filled = nearest_fill(m)
    assert torch.equal(filled[..., :4], x[..., :4]) and torch.equal(filled[..., 4:], x[..., 3:4].expand(-1, -1, -1, 4))
    assert torch.allclose(mean_fill(m)[..., 4:], x[..., :4].mean((2, 3), keepdim=True).expand(-1, -1, 8, 4))
    smooth = torch.linspace(-1, 1, 8).expand(1, 1, 8, 8)
    assert torch.allclose(bicubic(measure(Downsample((1, 8, 8), 2), smooth)), smooth, atol=0.15)
    # the Wiener filter is the exact posterior mean under its own Gaussian prior
    prior = GaussianMixture(torch.zeros(1, 64) + 0.1, 0.4)
    op = Blur((1, 8, 8), gaussian_kernel(5, 1.0))
    blurred = measure(op, x[:1], sigma_y=0.05, seed=3)
    exact = prior.posterior(op.matrix, blurred.y.reshape(-1), blurred.noise_std).means[0]
    restored = Wiener(torch.full((1, 8, 8), 0.1, dtype=torch.float64), 0.16)(blurred)
    assert torch.allclose(restored.reshape(-1).double(), exact, atol=1e-4)
    # colour that is a per-pixel line of grey is regressed exactly; the nearest image is found
    grey = torch.rand(50, 1, 4, 4, generator=torch.Generator().manual_seed(1)) - 0.5
    rgb = torch.cat([0.8 * grey + 0.1, -0.5 * grey, 1.2 * grey - 0.1], 1)
    recovered = PixelRegression.fit(rgb)(measure(Grayscale((3, 4, 4)), rgb[:5]))
    assert torch.allclose(recovered, rgb[:5], atol=1e-5)
    assert torch.equal(nearest_consistent(measure(op, x[2:3]), x), x[2:3])


def test_repaint_keeps_the_seen_pixels_exactly_without_noise():
    process = VP("linear")
    op = Inpaint(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    truth = MIXTURE.means[2].reshape(1, *SHAPE).float().expand(8, *SHAPE)
    x = sample(MIXTURE.denoiser(process), process, torch.randn(8, *SHAPE), sampler="repaint", steps=20,
               measurement=measure(op, truth), jump_length=5, resamplings=2)
    assert torch.allclose(op(x), op(truth), atol=1e-6)


@pytest.mark.parametrize("process", [VP("linear"), EDM()], ids=["vp", "edm"])
def test_daps_reads_the_posterior_spread_of_gaussian_data_from_the_denoiser(process):
    """For Gaussian data of std s the posterior std of x0 given x_t is rho s / sqrt(rho^2 + s^2);
    DAPS's "tweedie" r_t (Tweedie's second moment, its trace by one probe) finds it from the model
    alone: the denoiser is linear there, so one Rademacher probe gives the trace exactly."""
    s, shape = 0.3, (1, 4, 4)
    prior = GaussianMixture([[0.2] * 16], s)
    grid = _grid(process, "auto", 12)
    denoise = GridDenoiser(prior.denoiser(process), process, grid, "x0", 3, torch.device("cpu"), {})
    generator = torch.Generator().manual_seed(0)
    for i in range(grid.steps):
        x = grid.a(i) * prior.sample(3, generator)[0].float().reshape(3, *shape) + grid.s(i) * torch.randn(3, *shape)
        r = _tweedie_std(denoise, x, denoise(x, i), grid, i, generator).flatten()
        rho = grid.rho(i)
        assert torch.allclose(r.double(), torch.full((3,), rho * s / math.sqrt(rho**2 + s**2), dtype=torch.float64), rtol=0.01), (i, r)


def test_dps_discrepancy_principle_stops_fitting_at_the_noise():
    """The unsquared norm's gradient keeps its length as the residual shrinks, so the paper's step
    fits y below its noise; with `discrepancy` (the default) the pull stops at sigma_y sqrt(m)."""
    op = Inpaint(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    n, process = 500, EDM()
    m = measure(op, MIXTURE.means[1].reshape(1, *SHAPE).float().expand(n, *SHAPE), sigma_y=0.05, seed=1)
    noise_norm = 0.05 * 2**0.5  # sigma_y sqrt(m) in pixel units: two pixels seen
    noise = torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(5))
    residual = {}
    for discrepancy in (True, False):
        x = sample(MIXTURE.denoiser(process), process, noise, sampler="dps", steps=200, measurement=m, scale=0.1,
                   generator=torch.Generator().manual_seed(6), discrepancy=discrepancy)
        residual[discrepancy] = float(m.consistency(x).median()) / noise_norm
    assert residual[True] > 1.0 > 0.9 > residual[False], residual  # measured 1.15 and 0.83


def test_daps_likelihood_std_trusts_y_as_a_measurement_of_that_noise_would():
    """likelihood_std replaces sigma_y in DAPS's draw only: the chain is the one a measurement of
    that noise would get (same y, same seeds), it fits y closer the smaller it is, and None is the
    measurement's own sigma_y."""
    op, process = Inpaint(torch.tensor([[1.0, 0.0], [0.0, 1.0]])), EDM()
    m = measure(op, MIXTURE.means[1].reshape(1, *SHAPE).float().expand(200, *SHAPE), sigma_y=0.1, seed=1)
    noise = torch.randn(200, *SHAPE, generator=torch.Generator().manual_seed(5))

    def daps(measurement, **options):
        return sample(MIXTURE.denoiser(process), process, noise, sampler="daps", steps=20, measurement=measurement,
                      generator=torch.Generator().manual_seed(6), **options)

    tighter = daps(m, likelihood_std=0.02)
    assert torch.equal(tighter, daps(dataclasses.replace(m, sigma_y=0.02)))
    assert torch.equal(daps(m), daps(m, likelihood_std=None))
    assert float(m.consistency(tighter).median()) < 0.8 * float(m.consistency(daps(m)).median())  # 0.12 against 0.18
    with pytest.raises(ValueError, match="likelihood_std"):
        daps(m, likelihood_std=0.0)
