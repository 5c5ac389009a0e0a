"""An adaptive solver of the probability-flow ODE: tolerances in, model evaluations out.

The ODE is solved in y = x/alpha against s = -log(rho), rho = sigma/alpha, where every Gaussian
path has the same smooth form dy/ds = D(y, rho) - y (EDM's ODE, Karras et al. 2022, eq. 4 after
rescaling; in t a discrete schedule's velocity jumps at each of its knots), from the schedule's
first time to its last with the Dormand-Prince 5(4) pair, one step size per sample; the final
step to clean data returns D. `steps` and the schedule only fix the two end times: the solver
picks its own steps to meet rtol and atol, and `sample(..., return_nfe=True)` reports how many
evaluations that took.
"""

from __future__ import annotations

import math

import torch

from ..odeint import dopri5
from ..process import expand
from .base import Grid, eps_from_x0


def adaptive(denoise, x, grid: Grid, generator=None, *, rtol: float = 1e-4, atol: float = 1e-4,
             max_steps: int = 10_000):
    if rtol <= 0 or atol <= 0:
        raise ValueError(f"tolerances must be positive, got rtol={rtol}, atol={atol}")
    process = grid.process
    t_start, t_end = float(grid.t[0]), float(grid.t[-1])
    if grid.steps == 1:  # nothing to integrate: only the final step to clean data
        return denoise(x, 0)
    if grid.a(0) == 0:
        # zero SNR: y = x/alpha is infinite there; one DDIM step (exact to first order) to a
        # nearby level with finite rho, from which the ODE in log(rho) is regular
        t_next = t_start - 1e-3 * (t_start - t_end)
        x0 = denoise(x, 0)
        a, s = (float(v) for v in process.alpha_sigma(torch.tensor(t_next, dtype=torch.float64)))
        x, t_start = a * x0 + s * eps_from_x0(x, x0, grid, 0), t_next
    rho = lambda t: float(process.sigma(t) / process.alpha(t))  # noqa: E731
    if not rho(t_end) > 0:
        raise ValueError(f"the adaptive solver must stop where sigma > 0, got t={t_end}")
    # the solver's state is float64 (its error control needs it); the model sees the sampler's dtype
    dtype = x.dtype
    y = x.double() / float(process.alpha(t_start))

    def slope(s: torch.Tensor, state: tuple) -> tuple:
        (y_s,) = state
        t = process.t_from_sigma_ratio(torch.exp(-s))
        return (denoise.at((expand(process.alpha(t), y_s) * y_s).to(dtype), t).double() - y_s,)

    start = torch.full((x.shape[0],), -math.log(rho(t_start)), dtype=torch.float64, device=x.device)
    (y,), _ = dopri5(slope, (y,), start, -math.log(rho(t_end)), rtol, atol, max_steps)
    return denoise.at((float(process.alpha(t_end)) * y).to(dtype), t_end)
