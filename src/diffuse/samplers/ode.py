"""Euler and Heun on the probability-flow ODE.

In y = x/alpha and rho = sigma/alpha every Gaussian path has the same probability-flow ODE,
dy/drho = (y - D(y, rho)) / rho = eps_hat (Karras et al. 2022, eq. 4 after rescaling), so one pair
of integrators serves every process. Writing the derivative as eps_hat = (x - alpha D)/sigma keeps
it finite where alpha = 0 (a zero-SNR start, e.g. the flow process at t = 1).

Euler in these coordinates, y_{i+1} = D_i + rho_{i+1} eps_i, is DDIM with eta = 0. Heun is EDM's
second-order method (Algorithm 1): it averages the derivative at both ends of the step, except on
a step that starts at rho = inf (an unbounded interval) or ends at rho = 0 (where the derivative
is undefined); those steps stay first order.
"""

from __future__ import annotations

from .base import Grid, eps_from_x0


def _euler_step(x, x0, grid: Grid, i: int):
    eps = eps_from_x0(x, x0, grid, i)
    return grid.a(i + 1) * x0 + grid.s(i + 1) * eps, eps


def euler(denoise, x, grid: Grid, generator=None):
    for i in range(grid.steps):
        x, _ = _euler_step(x, denoise(x, i), grid, i)
    return x


def heun(denoise, x, grid: Grid, generator=None):
    for i in range(grid.steps):
        x0 = denoise(x, i)
        x_next, eps = _euler_step(x, x0, grid, i)
        if grid.s(i + 1) > 0 and grid.a(i) > 0:
            eps_next = eps_from_x0(x_next, denoise(x_next, i + 1), grid, i + 1)
            # y_{i+1} = y_i + (rho_{i+1} - rho_i) (eps_i + eps_{i+1}) / 2, with y_i = D_i + rho_i eps_i
            y = x0 + grid.rho(i) * eps + (grid.rho(i + 1) - grid.rho(i)) * (eps + eps_next) / 2
            x_next = grid.a(i + 1) * y
        x = x_next
    return x
