"""Euler and Heun on the probability-flow ODE, with EDM's optional churn.

In y = x/alpha and rho = sigma/alpha every Gaussian path has the same probability-flow ODE,
dy/drho = (y - D(y, rho)) / rho = eps_hat (Karras et al. 2022, eq. 4 after rescaling), so one
pair of integrators serves every process. Writing the derivative as eps_hat = (x - alpha D)/sigma keeps
it finite where alpha = 0 (a zero-SNR start, e.g. the flow process at t = 1).

Euler in these coordinates, y_{i+1} = D_i + rho_{i+1} eps_i, is DDIM with eta = 0. Heun is EDM's
second-order method: it averages the derivative at both ends of the step, except on a step that
starts at rho = inf (an unbounded interval) or at least at PRIOR_RHO (where the state is the prior
and the derivative constant until rho nears the data's scale) or ends at rho = 0 (where the
derivative is undefined); those steps stay first order. With churn > 0 it is EDM's stochastic sampler
(Algorithm 2): before each step with S_tmin <= rho_i <= S_tmax, noise is added to raise the
level to rho_hat = (1 + gamma) rho_i, gamma = min(churn / N, sqrt(2) - 1), and the step starts
from there.
"""

from __future__ import annotations

import math

from .base import Grid, eps_from_x0, gaussian_like


# Heun's step from sigma/alpha above this (log-SNR below -9.2, where x_t is the prior to within
# 1e-4 of its variance) stays first order, as EDM's from rho = inf: the trajectory's derivative is
# constant until rho nears the data's scale, so Euler is exact there, while the trapezoid would weight
# the end point's derivative over an interval spanning orders of magnitude of rho (a discrete VP
# schedule's first step, e.g. 2e4 -> 158 on cosine betas).
PRIOR_RHO = 100.0


def _euler_step(x, x0, grid: Grid, i: int):
    eps = eps_from_x0(x, x0, grid, i)
    return grid.a(i + 1) * x0 + grid.s(i + 1) * eps, eps


def euler(denoise, x, grid: Grid, generator=None):
    for i in range(grid.steps):
        x = denoise.begin(x, i)
        x, _ = _euler_step(x, denoise(x, i), grid, i)
    return x


def _churn(denoise, x, grid: Grid, i: int, gamma: float, s_noise: float, generator):
    """Raise the noise level of x from rho_i to (1 + gamma) rho_i; returns (y_hat, rho_hat, D)."""
    process = grid.process
    rho = grid.rho(i)
    rho_max = float(process.sigma(process.t_max) / process.alpha(process.t_max))
    rho_hat = min((1 + gamma) * rho, rho_max)  # the process has no level above its start
    y = x / grid.a(i) + math.sqrt(max(rho_hat**2 - rho**2, 0.0)) * s_noise * gaussian_like(x, generator)
    t_hat = float(process.t_from_sigma_ratio(rho_hat))
    a_hat = float(process.alpha(t_hat))
    return y, rho_hat, denoise.at(a_hat * y, t_hat)


def heun(denoise, x, grid: Grid, generator=None, *, churn: float = 0.0, s_tmin: float = 0.0,
         s_tmax: float = math.inf, s_noise: float = 1.0):
    if churn < 0:
        raise ValueError(f"churn must be non-negative, got {churn}")
    for i in range(grid.steps):
        x = denoise.begin(x, i)
        gamma = min(churn / grid.steps, math.sqrt(2) - 1) if churn and grid.a(i) > 0 and \
            s_tmin <= grid.rho(i) <= s_tmax else 0.0
        if gamma > 0:
            y, rho, x0 = _churn(denoise, x, grid, i, gamma, s_noise, generator)
            eps = (y - x0) / rho
        else:
            x0 = denoise(x, i)
            eps = eps_from_x0(x, x0, grid, i)
            rho = grid.rho(i)
        a_next = grid.a(i + 1)
        # Euler: y_{i+1} = D + rho_{i+1} eps, i.e. x_{i+1} = alpha_{i+1} D + sigma_{i+1} eps
        x_next = a_next * x0 + grid.s(i + 1) * eps
        if grid.s(i + 1) > 0 and rho < PRIOR_RHO:
            eps_next = eps_from_x0(x_next, denoise(x_next, i + 1), grid, i + 1)
            # y_{i+1} = y_hat + (rho_{i+1} - rho_hat) (eps + eps_next) / 2, with y_hat = D + rho_hat eps
            half = (grid.rho(i + 1) - rho) / 2
            x_next = a_next * x0 + (a_next * (rho + half)) * eps + (a_next * half) * eps_next
        x = x_next
    return x
