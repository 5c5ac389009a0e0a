"""RePaint (Lugmayr et al. 2022): ancestral sampling with the seen part replaced, and resampling.

At every step the part of x_t that the measurement sees is replaced by the measurement noised to
that level, x_t <- (I - V V^T) x_t + V (alpha_t y_bar + sigma_t z), the rest taken from the
model's previous step. For an inpainting mask V V^T is the mask itself and this is the paper's
known-region replacement; for any other linear operator it is the same projection in the SVD's
row space (y_bar = S^-1 U^T y). Replacement alone leaves the unseen part inconsistent with the
seen one, so every chunk of `jump_length` steps is run `resamplings` times, going back up between
runs with the forward process q(x_i | x_{i+jump}) in one Gaussian draw (the composition of the
single-step forward transitions the paper takes one by one). The paper's setting is jump 10,
10 resamplings: about 10x the model calls of the steps.

The paper puts the noisy y in as it is. Here the measurement's noise is accounted for: component j
of y_bar carries noise sigma_y / s_j, so it replaces x_t's component only while that is below
x_t's own noise level rho_t (it is then noised the rest of the way up); below that level x_t knows
the component better than y does and keeps it. For an inpainting mask with sigma_y = 0 this is the
paper's rule at every step; without it, a blur's small singular values amplify the noise of y into
the image (the pseudo-inverse's failure).
"""

from __future__ import annotations

import math

import torch

from .ancestral import ancestral_step, posterior_variance
from .base import Grid, gaussian_like


def repaint(denoise, x, grid: Grid, generator=None, *, measurement, jump_length: int = 10, resamplings: int = 10):
    """Inpainting (and any linear measurement) by replacement with resampling."""
    if jump_length < 1 or resamplings < 1:
        raise ValueError(f"jump_length and resamplings must be >= 1, got {jump_length} and {resamplings}")
    operator = measurement.linear("repaint")
    s = operator.svd[1]
    seen = (operator.measured(measurement.y) / s).to(x.device)          # y_bar [B, r]
    level = (measurement.noise_std / s).to(x.device)                     # the noise already in y_bar_j

    def replace_seen(x, i):
        # Component j is known better from y than from x_t while its noise is below x_t's (rho_i);
        # y_bar_j is then noised up to rho_i, x_t's own noise level: alpha y_bar + sqrt(sigma^2 - alpha^2 level^2) z.
        a, sigma = grid.a(i), grid.s(i)
        z = operator.spectral(gaussian_like(x, generator))
        noised = a * seen + (sigma**2 - (a * level) ** 2).clamp_min(0).sqrt() * z
        row = torch.where(a * level <= sigma, noised, operator.spectral(x))
        return operator.null_part(x) + operator.from_spectral(row, x)

    start = 0
    while start < grid.steps:
        end = min(start + jump_length, grid.steps)
        for resampling in range(resamplings):
            for i in range(start, end):
                x = replace_seen(denoise.begin(x, i), i)
                variance = posterior_variance(grid, i)
                x = ancestral_step(x, denoise(x, i), grid, i, variance, variance, generator)
            if resampling < resamplings - 1:  # back up to the chunk's start: x_start ~ q(x_start | x_end)
                ratio = grid.a(start) / grid.a(end)
                spread = math.sqrt(max(grid.s(start) ** 2 - (ratio * grid.s(end)) ** 2, 0.0))
                x = ratio * x + spread * gaussian_like(x, generator)
        start = end
    return replace_seen(x, grid.steps)
