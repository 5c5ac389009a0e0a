"""DDPM and DDIM: one update rule with a choice of noise (Song et al. 2021, eq. 12).

From x_t with estimates (x0, eps) to the next, cleaner level s:

    x_s = alpha_s x0 + sqrt(sigma_s^2 - c^2) eps + c' z,   z ~ N(0, I)

where c^2 = sigma_s^2 (1 - SNR_t / SNR_s) is the variance of the posterior q(x_s | x_t, x0)
(DDPM's beta-tilde on a VP path). DDIM takes c' = c = eta * that; DDPM takes the posterior mean
(c from eta = 1) and either the posterior variance ('small', c' = c) or the forward transition
variance ('large', c'^2 = sigma_t^2 - (alpha_t/alpha_s)^2 sigma_s^2, DDPM's beta).
"""

from __future__ import annotations

import math

from .base import Grid, eps_from_x0, gaussian_like


def posterior_variance(grid: Grid, i: int) -> float:
    """Var q(x_{i+1} | x_i, x0) on the grid; zero on the final step to clean data."""
    s_next = grid.s(i + 1)
    if s_next == 0:
        return 0.0
    snr_ratio = (grid.a(i) * s_next / (grid.a(i + 1) * grid.s(i))) ** 2  # SNR_i / SNR_{i+1}
    return s_next**2 * (1 - snr_ratio)


def ancestral_step(x, x0, grid: Grid, i: int, mean_var: float, noise_var: float, generator):
    eps = eps_from_x0(x, x0, grid, i)
    x_next = grid.a(i + 1) * x0 + math.sqrt(max(grid.s(i + 1) ** 2 - mean_var, 0.0)) * eps
    if noise_var > 0:
        x_next = x_next + math.sqrt(noise_var) * gaussian_like(x, generator)
    return x_next


def ddim(denoise, x, grid: Grid, generator=None, *, eta: float = 0.0):
    """DDIM; eta = 0 is the deterministic sampler (the Euler step of the probability-flow ODE in
    y = x/alpha, rho = sigma/alpha), eta = 1 is DDPM with the posterior variance."""
    if eta < 0:
        raise ValueError(f"eta must be non-negative, got {eta}")
    for i in range(grid.steps):
        # eta > 1 asks for more noise than the step has room for; cap it at sigma_{i+1}^2
        var = min(eta**2 * posterior_variance(grid, i), grid.s(i + 1) ** 2)
        x = denoise.begin(x, i)
        x = ancestral_step(x, denoise(x, i), grid, i, var, var, generator)
    return x


def euler_ancestral(denoise, x, grid: Grid, generator=None, *, eta: float = 1.0):
    """Euler ancestral: an Euler step of the probability-flow ODE down to sigma_down followed by
    fresh noise up to sigma_{i+1}, with sigma_up^2 = eta^2 x the posterior variance. In
    y = x/alpha coordinates that is exactly the DDIM update above, so it is DDIM with eta = 1
    by default."""
    return ddim(denoise, x, grid, generator, eta=eta)


def ddpm(denoise, x, grid: Grid, generator=None, *, variance: str = "small"):
    """Ancestral sampling of Ho et al. 2020 on any grid (strided steps included)."""
    if variance not in ("small", "large"):
        raise ValueError(f"variance must be 'small' or 'large', got {variance!r}")
    for i in range(grid.steps):
        var = posterior_variance(grid, i)
        noise_var = var
        if variance == "large" and grid.s(i + 1) > 0:
            noise_var = grid.s(i) ** 2 - (grid.a(i) / grid.a(i + 1) * grid.s(i + 1)) ** 2
        x = denoise.begin(x, i)
        x = ancestral_step(x, denoise(x, i), grid, i, var, noise_var, generator)
    return x
