"""Decoupled annealing posterior sampling (Zhang et al. 2024, Algorithm 1).

Each step at noise level rho_i (VE units, rho = sigma / alpha) decouples the chain: it
1. solves the probability-flow ODE from x_i to a clean estimate x0_hat (`ode_steps` Euler steps
   in rho, the model's one-call Tweedie estimate when 1);
2. draws x0 from p(x0 | x_i, y) ~ N(x0; x0_hat, r_i^2 I) p(y | x0), with r_i^2 = rho_i^2 s_d^2 /
   (rho_i^2 + s_d^2), the posterior variance of x0 given x_i for data of standard deviation s_d
   (`data_std`, 0.5 as EDM assumes): for a linear A this product of Gaussians is drawn exactly
   in the SVD's basis; for a nonlinear A by `langevin_steps` of Langevin dynamics;
3. noises that x0 afresh to the next level, x_{i+1} = alpha_{i+1} x0 + sigma_{i+1} z,
so an error at one level is not carried to the next (the decoupling that lets it fix large
structure). Model calls: `ode_steps` per step.
"""

from __future__ import annotations

import math

import torch

from .base import Grid, gaussian_like


def _ode_estimate(denoise, x, grid: Grid, i: int, steps: int) -> torch.Tensor:
    """x0_hat of x at grid time t_i: Euler steps of du/drho = (u - D)/rho in u = x / alpha (DDIM's
    steps, u' = D + rho' eps), on log-spaced levels from rho_i to the grid's smallest, then to 0."""
    process = grid.process
    rho_min = grid.rho(grid.steps - 1)
    steps = steps if grid.rho(i) > rho_min else 1  # already at the lowest level: one call
    top = min(grid.rho(i), 1e4 * max(rho_min, 1e-3))  # where alpha = 0 (rho = inf) the next level is finite
    levels = torch.logspace(math.log10(top), math.log10(rho_min), steps, dtype=torch.float64)
    x0, alpha, sigma = denoise(x, i), grid.a(i), grid.s(i)
    for rho in levels[1:].tolist():
        eps = (x - alpha * x0) / sigma
        t = process.t_from_sigma_ratio(torch.tensor(rho, dtype=torch.float64))
        alpha, sigma = (float(c) for c in process.alpha_sigma(t))
        x = alpha * (x0 + rho * eps)
        x0 = denoise.at(x, t)
    return x0


def _draw_linear(x0_hat, r: float, measurement, generator) -> torch.Tensor:
    """An exact draw of N(x0_hat, r^2 I) N(y; A x0, s_y^2 I), normalised, through A's SVD: per
    seen component, precision 1/r^2 + s_j^2/s_y^2; unseen components keep the prior."""
    operator = measurement.linear("daps")
    s = operator.svd[1].to(x0_hat.device)
    noise_var, prior_var = measurement.noise_std**2, r**2
    c0, cy = operator.spectral(x0_hat), operator.measured(measurement.y).to(x0_hat.device)
    denominator = noise_var + prior_var * s**2
    mean = (noise_var * c0 + prior_var * s * cy) / denominator
    std = (prior_var * noise_var / denominator).sqrt()
    z = gaussian_like(x0_hat, generator)
    return operator.null_part(x0_hat + r * z) + operator.from_spectral(mean + std * operator.spectral(z), x0_hat)


def _draw_langevin(x0_hat, r: float, measurement, generator, steps: int, rate: float) -> torch.Tensor:
    """Langevin dynamics on log N(x0; x0_hat, r^2) + log p(y | x0), the step `rate` times the
    inverse of the log-density's curvature bound (1/r^2 + L^2/s_y^2) so it stays stable."""
    noise_var = max(measurement.noise_std, 1e-3) ** 2
    step = rate / (1 / r**2 + measurement.operator.lipschitz**2 / noise_var)
    x0 = x0_hat.clone()
    for _ in range(steps):
        with torch.enable_grad():
            x_in = x0.detach().requires_grad_(True)
            log_p = -(x_in - x0_hat).pow(2).sum() / (2 * r**2) \
                - measurement.residual(x_in).pow(2).sum() / (2 * noise_var)
            gradient, = torch.autograd.grad(log_p, x_in)
        x0 = x0 + step * gradient + math.sqrt(2 * step) * gaussian_like(x0, generator)
    return x0


def daps(denoise, x, grid: Grid, generator=None, *, measurement, ode_steps: int = 5, data_std: float = 0.5,
         langevin_steps: int = 50, langevin_rate: float = 0.1):
    if ode_steps < 1 or langevin_steps < 1 or data_std <= 0 or langevin_rate <= 0:
        raise ValueError("ode_steps and langevin_steps must be >= 1, data_std and langevin_rate positive")
    for i in range(grid.steps):
        x = denoise.begin(x, i)
        x0_hat = _ode_estimate(denoise, x, grid, i, ode_steps)
        rho = grid.rho(i)  # infinite where alpha = 0: then r is the data's own spread
        r = data_std if math.isinf(rho) else rho * data_std / math.sqrt(rho**2 + data_std**2)
        if measurement.operator.linear:
            x0 = _draw_linear(x0_hat, r, measurement, generator)
        else:
            x0 = _draw_langevin(x0_hat, r, measurement, generator, langevin_steps, langevin_rate)
        x = grid.a(i + 1) * x0 + grid.s(i + 1) * gaussian_like(x, generator)
    return x
