"""Decoupled annealing posterior sampling (Zhang et al. 2024, Algorithm 1).

Each step at noise level rho_i (VE units, rho = sigma / alpha) decouples the chain: it
1. solves the probability-flow ODE from x_i to a clean estimate x0_hat (`ode_steps` Euler steps
   in rho, the model's one-call Tweedie estimate when 1);
2. draws x0 from p(x0 | x_i, y) ~ N(x0; x0_hat, r_i^2 I) p(y | x0): for a linear A this product
   of Gaussians is drawn exactly in the SVD's basis; for a nonlinear A by `langevin_steps` of
   Langevin dynamics. r_i^2 is the mean posterior variance of x0 given x_i (`prior_std`):
   - "tweedie" (the default), the model's own: Tweedie's second moment Cov[x0 | x_i] = rho_i^2
     dD/du (u = x / alpha), its trace by one random probe and a finite difference of the denoiser
     (one model call), per image. Images lie near a low-dimensional set, where the denoiser's
     error at small rho is far below rho, so a draw at r = rho (the paper's choice) adds noise
     off that set which the next ODE solve takes for detail;
   - "gaussian", the posterior variance for Gaussian data of std s_d (`data_std`, 0.5 as EDM
     assumes): rho^2 s_d^2 / (rho^2 + s_d^2). `data_std` also serves where alpha = 0 (rho
     infinite), where Tweedie's identity says nothing;
3. noises that x0 afresh to the next level, x_{i+1} = alpha_{i+1} x0 + sigma_{i+1} z,
so an error at one level is not carried to the next (the decoupling that lets it fix large
structure). Model calls: `ode_steps` per step, one more for "tweedie". The paper
solves the ODE in 5 steps; 2 is the default here because, for the same calls, more annealing
steps gain more than longer ODE solves (docs/inverse.md: Fashion-MNIST x2 super-resolution 19.1 dB at 50 x 3
against 19.2 at 50 x 2 and 17.9 at 20 x 5).

`likelihood_std` (in [0, 1] pixels, as sigma_y) is the std of the Gaussian likelihood the draw
uses; None takes the measurement's own sigma_y, the exact conditional. A smaller one trusts y more
than its noise warrants, which the reference code does too (its tau, 0.01 in [-1, 1], whatever the
noise): the chain's Gaussian stand-in for p(x0 | x_i) around an ODE endpoint loses part of y's
pull at each re-noising, and on held-out Fashion-MNIST super-resolution and deblurring half or a
quarter of the noise's std gained 1.1-1.6 dB (docs/inverse.md).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from .base import Grid, gaussian_like


def _ode_estimate(denoise, x, x0, grid: Grid, i: int, steps: int) -> torch.Tensor:
    """x0_hat of x at grid time t_i, from its one-call estimate x0 = D(x): Euler steps of du/drho =
    (u - D)/rho in u = x / alpha (DDIM's steps, u' = D + rho' eps), on log-spaced levels from rho_i
    to the grid's smallest, then to 0."""
    process = grid.process
    rho_min = grid.rho(grid.steps - 1)
    steps = steps if grid.rho(i) > rho_min else 1  # already at the lowest level: one call
    top = min(grid.rho(i), 1e4 * max(rho_min, 1e-3))  # where alpha = 0 (rho = inf) the next level is finite
    levels = torch.logspace(math.log10(top), math.log10(rho_min), steps, dtype=torch.float64)
    alpha, sigma = grid.a(i), grid.s(i)
    for rho in levels[1:].tolist():
        eps = (x - alpha * x0) / sigma
        t = process.t_from_sigma_ratio(torch.tensor(rho, dtype=torch.float64))
        alpha, sigma = (float(c) for c in process.alpha_sigma(t))
        x = alpha * (x0 + rho * eps)
        x0 = denoise.at(x, t)
    return x0


def _tweedie_std(denoise, x, x0, grid: Grid, i: int, generator) -> torch.Tensor:
    """r_i per image, [B, 1, ...]: sqrt(rho^2 tr(dD/du) / d) with tr(dD/du) = alpha tr(dD/dx) ~ alpha
    v . (D(x + h v) - D(x)) / h for a Rademacher probe v (Hutchinson's estimator), h a hundredth of
    the noise so the difference sees the denoiser's slope at that level. Floored at a thousandth of
    rho: one probe can undershoot where the trace is near 0, and an exact zero would leave a
    noiseless measurement's components 0 / 0."""
    alpha, sigma, rho = grid.a(i), grid.s(i), grid.rho(i)
    probe = torch.sign(gaussian_like(x, generator))
    h = 1e-2 * sigma
    slope = (denoise(x + h * probe, i) - x0) / h
    trace = alpha * (probe * slope).flatten(1).sum(1, keepdim=True)
    variance = (rho**2 * trace / x[0].numel()).clamp(min=(1e-3 * rho) ** 2)
    return variance.sqrt().view(-1, *[1] * (x.dim() - 1))


def _draw_linear(x0_hat, r, measurement, generator) -> torch.Tensor:
    """An exact draw of N(x0_hat, r^2 I) N(y; A x0, s_y^2 I), normalised, through A's SVD: per
    seen component, precision 1/r^2 + s_j^2/s_y^2; unseen components keep the prior. r is a float
    or one per image, shaped to broadcast over images ([B, 1, ...], as _tweedie_std gives it)."""
    operator = measurement.linear("daps")
    s = operator.svd[1].to(x0_hat.device)
    r_rows = torch.as_tensor(r, dtype=torch.float64, device=x0_hat.device).reshape(-1, 1)  # a float, or one per image
    noise_var, prior_var = measurement.noise_std**2, r_rows**2
    c0, cy = operator.spectral(x0_hat), operator.measured(measurement.y).to(x0_hat.device)
    denominator = noise_var + prior_var * s**2
    mean = (noise_var * c0 + prior_var * s * cy) / denominator
    std = (prior_var * noise_var / denominator).sqrt()
    z = gaussian_like(x0_hat, generator)
    return operator.null_part(x0_hat + r * z) + operator.from_spectral(mean + std * operator.spectral(z), x0_hat)


def _draw_langevin(x0_hat, r, measurement, generator, steps: int, rate: float) -> torch.Tensor:
    """Langevin dynamics on log N(x0; x0_hat, r^2) + log p(y | x0), the step `rate` times the
    inverse of the log-density's curvature bound (1/r^2 + L^2/s_y^2) so it stays stable."""
    noise_var = max(measurement.noise_std, 1e-3) ** 2
    r = torch.as_tensor(r, dtype=x0_hat.dtype, device=x0_hat.device).clamp(min=1e-4)
    step = rate / (1 / r**2 + measurement.operator.lipschitz**2 / noise_var)
    x0 = x0_hat.clone()
    for _ in range(steps):
        with torch.enable_grad():
            x_in = x0.detach().requires_grad_(True)
            log_p = -((x_in - x0_hat) / r).pow(2).sum() / 2 \
                - measurement.residual(x_in).pow(2).sum() / (2 * noise_var)
            gradient, = torch.autograd.grad(log_p, x_in)
        x0 = x0 + step * gradient + (2 * step).sqrt() * gaussian_like(x0, generator)
    return x0


PRIOR_STD = ("tweedie", "gaussian")


def daps(denoise, x, grid: Grid, generator=None, *, measurement, ode_steps: int = 2, prior_std: str = "tweedie",
         data_std: float = 0.5, langevin_steps: int = 50, langevin_rate: float = 0.1,
         likelihood_std: float | None = None):
    if ode_steps < 1 or langevin_steps < 1 or data_std <= 0 or langevin_rate <= 0:
        raise ValueError("ode_steps and langevin_steps must be >= 1, data_std and langevin_rate positive")
    if likelihood_std is not None and not likelihood_std > 0:
        raise ValueError(f"likelihood_std must be positive (or None for the measurement's sigma_y), got {likelihood_std}")
    likelihood = measurement if likelihood_std is None else dataclasses.replace(measurement, sigma_y=likelihood_std)
    if prior_std not in PRIOR_STD:
        raise ValueError(f"unknown prior_std {prior_std!r}; choose from {', '.join(PRIOR_STD)}")
    for i in range(grid.steps):
        x = denoise.begin(x, i)
        x0 = denoise(x, i)
        rho = grid.rho(i)  # infinite where alpha = 0: then r is the data's own spread
        if math.isinf(rho):
            r = data_std
        elif prior_std == "tweedie":
            r = _tweedie_std(denoise, x, x0, grid, i, generator)
        else:
            r = rho * data_std / math.sqrt(rho**2 + data_std**2)
        x0_hat = _ode_estimate(denoise, x, x0, grid, i, ode_steps)
        if measurement.operator.linear:
            x0 = _draw_linear(x0_hat, r, likelihood, generator)
        else:
            x0 = _draw_langevin(x0_hat, r, likelihood, generator, langevin_steps, langevin_rate)
        x = grid.a(i + 1) * x0 + grid.s(i + 1) * gaussian_like(x, generator)
    return x
