"""Diffusion posterior sampling (Chung et al. 2023, Algorithm 1).

Each step is an ancestral (DDPM, eta = 1) step followed by a move of x_t against the gradient of
the measurement residual at the model's estimate of x0:

    x_{i+1} = step(x_i, x0_hat(x_i)) - scale (alpha_i^2 + sigma_i^2) grad_{x_i} || y - A(x0_hat(x_i)) ||

The residual norm is not squared: the paper writes zeta_i grad ||.||^2 with zeta_i = zeta' /
||y - A(x0_hat)||, which is 2 zeta' grad ||.||, and its code takes the gradient of the norm
itself; `scale` is that code's step size. That code works on a variance-preserving path (alpha^2 +
sigma^2 = 1); the factor alpha^2 + sigma^2 makes the step the same on any path: it is the paper's
step taken in the variance-preserving coordinates x / sqrt(alpha^2 + sigma^2) and mapped back
(the gradient scales by the square root going in, the step by it coming out). Without it an EDM
path at sigma = 80 would take steps 6400 times shorter than the same model on VP. The gradient
runs back through the model, so every step costs one forward and one backward pass. A may be
nonlinear.

With `discrepancy` (the default) the gradient is of max(||r|| - sigma_y sqrt(m), 0) instead:
Morozov's discrepancy principle, no pull once the residual is down to the norm the noise alone
has. The unsquared norm's gradient keeps its length however small the residual, so the paper's
step drives the fit below the noise (on Fashion-MNIST super-resolution to a tenth of it) and the
image takes on the noise; with the floor the residual stays at the noise's size, as a posterior
sample's does (docs/inverse.md: PSNR up on 8 of 10 tasks measured, by up to 0.8 dB, and down on
two, by 0.1 and 0.4 dB). `discrepancy=False` is the paper's step.
"""

from __future__ import annotations

import torch

from .ancestral import ancestral_step, posterior_variance
from .base import Grid


def dps(denoise, x, grid: Grid, generator=None, *, measurement, scale: float = 1.0, eta: float = 1.0,
        discrepancy: bool = True):
    if scale < 0 or eta < 0:
        raise ValueError(f"scale and eta must be non-negative, got {scale} and {eta}")
    for i in range(grid.steps):
        x = denoise.begin(x, i)
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            x0 = denoise(x_in, i)
            distance = measurement.residual(x0).flatten(1).norm(dim=1)
            if discrepancy:
                distance = (distance - measurement.noise_std * measurement.y[0].numel() ** 0.5).clamp(min=0)
            gradient, = torch.autograd.grad(distance.sum(), x_in)
        variance = min(eta**2 * posterior_variance(grid, i), grid.s(i + 1) ** 2)
        step = scale * (grid.a(i) ** 2 + grid.s(i) ** 2)
        x = ancestral_step(x, x0.detach(), grid, i, variance, variance, generator) - step * gradient
    return x
