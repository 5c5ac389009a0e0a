"""Denoising diffusion restoration models (Kawar et al. 2022, eq. 7-8): exact through the SVD.

In the VE coordinates of any path, u = x / alpha = x0 + rho eps, and in the basis of the
operator's SVD A = U S V^T, the measurement of component j is y_bar_j = (U^T y)_j / s_j, an
observation of (V^T x0)_j with noise sigma_y / s_j. A step from rho to rho' moves each component
of V^T u on its own:
- unseen (the null space of A): the DDIM step with eta, x0_hat + sqrt(1 - eta^2) rho'/rho
  (u - x0_hat) + eta rho' z;
- seen, measurement noisier than rho' (rho' < sigma_y / s_j): towards y_bar,
  x0_hat + sqrt(1 - eta^2) rho' (y_bar - x0_hat) / (sigma_y / s_j) + eta rho' z;
- seen, measurement cleaner: (1 - eta_b) x0_hat + eta_b y_bar + sqrt(rho'^2 - eta_b^2 sigma_y^2 / s_j^2) z.
The paper's defaults are eta = 0.85, eta_b = 1; one model call per step.
"""

from __future__ import annotations

import math

import torch

from .base import Grid, eps_from_x0, gaussian_like


def ddrm(denoise, x, grid: Grid, generator=None, *, measurement, eta: float = 0.85, eta_b: float = 1.0):
    if not 0 <= eta <= 1 or not 0 <= eta_b <= 1:
        raise ValueError(f"eta and eta_b must lie in [0, 1], got {eta} and {eta_b}")
    operator = measurement.linear("ddrm")
    s = operator.svd[1]
    level = (measurement.noise_std / s).to(x.device)                  # the noise of each y_bar_j
    seen = (operator.measured(measurement.y) / s).to(x.device)        # y_bar [B, r]
    keep = math.sqrt(1 - eta**2)
    for i in range(grid.steps):
        x = denoise.begin(x, i)
        x0 = denoise(x, i)
        # (u - x0_hat) / rho is the model's eps, finite also where alpha = 0 (rho = inf)
        rho_next, eps, z = grid.rho(i + 1), eps_from_x0(x, x0, grid, i), gaussian_like(x, generator)
        unseen = operator.null_part(x0 + keep * rho_next * eps + eta * rho_next * z)
        c0, cz = operator.spectral(x0), operator.spectral(z)
        noisier = c0 + keep * rho_next * (seen - c0) / level.clamp_min(1e-30) + eta * rho_next * cz
        cleaner = (1 - eta_b) * c0 + eta_b * seen + (rho_next**2 - (eta_b * level) ** 2).clamp_min(0).sqrt() * cz
        row = torch.where(rho_next < level, noisier, cleaner)
        x = grid.a(i + 1) * (unseen + operator.from_spectral(row, x))
    return x
