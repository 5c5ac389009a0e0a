"""DPM-Solver++ (Lu et al. 2022b), written in the data-prediction form.

With lambda = log(alpha/sigma) and h = lambda_{i+1} - lambda_i, the exact solution of the
probability-flow ODE over one step, with D held constant, is

    x_{i+1} = (sigma_{i+1}/sigma_i) x_i - alpha_{i+1} (exp(-h) - 1) D.

The multistep 2M variant replaces D by a linear extrapolation from the previous estimate,
D + (D - D_prev) / (2r) with r = h_prev / h. The first step and the last step to clean data
(h = inf) are first order.
"""

from __future__ import annotations

import math

from .base import Grid


def dpmpp_2m(denoise, x, grid: Grid, generator=None):
    previous = None  # (D_{i-1}, h_{i-1})
    for i in range(grid.steps):
        x0 = denoise(x, i)
        if grid.s(i + 1) == 0:  # last step: lambda = inf, the first-order update is x = D
            return x0
        h = grid.lam(i + 1) - grid.lam(i)
        d = x0
        if previous is not None:
            r = previous[1] / h
            d = x0 + (x0 - previous[0]) / (2 * r)
        x = (grid.s(i + 1) / grid.s(i)) * x - grid.a(i + 1) * math.expm1(-h) * d
        previous = (x0, h)
    return x
