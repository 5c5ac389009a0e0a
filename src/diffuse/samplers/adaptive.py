"""An adaptive solver of the probability-flow ODE: tolerances in, model evaluations out.

The ODE is integrated in x and t, dx/dt = alpha'(t) D + sigma'(t) eps_hat (the expected velocity
of the path given x_t, finite where alpha = 0), from the schedule's first time to its last with
the Dormand-Prince 5(4) pair, one step size per sample; the final step to clean data returns D.
`steps` and the schedule only fix the two end times: the solver picks its own steps to meet rtol
and atol, and `sample(..., return_nfe=True)` reports how many evaluations that took.
"""

from __future__ import annotations

import torch

from ..odeint import dopri5
from ..parameterization import PathCoefficients, from_x0_eps
from ..process import expand
from .base import Grid


def adaptive(denoise, x, grid: Grid, generator=None, *, rtol: float = 1e-4, atol: float = 1e-4,
             max_steps: int = 10_000):
    process = grid.process
    t_start, t_end = float(grid.t[0]), float(grid.t[-1])
    da, ds = process.derivatives(torch.tensor([t_start], dtype=torch.float64))
    if not (torch.isfinite(da).all() and torch.isfinite(ds).all()):
        # a zero-SNR end can make alpha ~ sqrt(1 - t) there, with an infinite velocity at the
        # start itself: take one DDIM step (exact to first order) to a regular point close by
        t_next = t_start - 1e-3 * (t_start - t_end)
        x0 = denoise.at(x, t_start)
        eps = (x - float(process.alpha(t_start)) * x0) / float(process.sigma(t_start))
        x, t_start = float(process.alpha(t_next)) * x0 + float(process.sigma(t_next)) * eps, t_next

    def negative_velocity(s: torch.Tensor, state: tuple) -> tuple:
        # the integrator runs forward, so it integrates in s = -t
        (x_t,), t = state, -s
        x0 = denoise.at(x_t, t)
        c = PathCoefficients.at(process, t)
        eps = (x_t - expand(c.alpha, x_t) * x0) / expand(c.sigma, x_t)
        return (-from_x0_eps("velocity", x0, eps, c),)

    start = torch.full((x.shape[0],), -t_start, dtype=torch.float64, device=x.device)
    (x,), _ = dopri5(negative_velocity, (x,), start, -t_end, rtol, atol, max_steps)
    return denoise.at(x, t_end)
