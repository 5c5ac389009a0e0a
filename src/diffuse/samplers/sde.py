"""The reverse SDE (Song et al. 2021): Euler-Maruyama, with an optional Langevin corrector.

For x_t = alpha x0 + sigma eps the forward SDE is dx = f x dt + g dw with f = alpha'/alpha and
g^2 = d sigma^2/dt - 2 f sigma^2 = -sigma^2 dlambda/dt. Its reverse, with the score
-eps_hat/sigma, is stepped from t_i down to t_{i+1} (dt = t_i - t_{i+1} > 0):

    x <- x - dt (f x + g^2 eps_hat / sigma) + g sqrt(dt) z.

With `corrector_steps` > 0 each predictor step is followed by Langevin MCMC at the new level
(predictor-corrector, Algorithm 1 of the paper), x <- x + e score + sqrt(2 e) z, with the step
e = 2 (snr sigma)^2 set from a target signal-to-noise ratio.
The last step to clean data returns the denoised estimate (Tweedie), and a step that starts
where alpha = 0 (f infinite) is taken as an exact ancestral step instead.
"""

from __future__ import annotations

import math

from .ancestral import ancestral_step, posterior_variance
from .base import Grid, eps_from_x0, gaussian_like


def sde(denoise, x, grid: Grid, generator=None, *, corrector_steps: int = 0, snr: float = 0.16):
    if corrector_steps < 0 or snr <= 0:
        raise ValueError("corrector_steps must be >= 0 and snr > 0")
    d_alpha, d_sigma = grid.process.derivatives(grid.t)
    for i in range(grid.steps):
        x = denoise.begin(x, i)
        x0 = denoise(x, i)
        if grid.s(i + 1) == 0:
            return x0
        if grid.a(i) == 0:  # zero SNR: f = alpha'/alpha is infinite; sample the posterior exactly
            var = posterior_variance(grid, i)
            x = ancestral_step(x, x0, grid, i, var, var, generator)
        else:
            a, s = grid.a(i), grid.s(i)
            f = float(d_alpha[i]) / a
            g2 = 2 * s * float(d_sigma[i]) - 2 * f * s**2
            dt = float(grid.t[i] - grid.t[i + 1])
            eps = eps_from_x0(x, x0, grid, i)
            x = x - dt * (f * x + g2 * eps / s) + math.sqrt(max(g2, 0.0) * dt) * gaussian_like(x, generator)
        # Langevin step e = 2 (snr |z| / |score|)^2, with the norms' typical values sqrt(D) and
        # sqrt(D)/sigma: per-sample norms blow up where the score vanishes (one-dimensional data
        # near a mode) and batch averages would make a sample depend on its batch
        step = 2 * (snr * grid.s(i + 1)) ** 2
        for _ in range(corrector_steps):
            score = -eps_from_x0(x, denoise(x, i + 1), grid, i + 1) / grid.s(i + 1)
            x = x + step * score + math.sqrt(2 * step) * gaussian_like(x, generator)
    return x


def pc(denoise, x, grid: Grid, generator=None, *, corrector_steps: int = 1, snr: float = 0.16):
    """Predictor-corrector: Euler-Maruyama with one Langevin corrector step per level."""
    return sde(denoise, x, grid, generator, corrector_steps=corrector_steps, snr=snr)
