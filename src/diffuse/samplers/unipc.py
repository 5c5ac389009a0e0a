"""UniPC (Zhao et al. 2023): a multistep predictor (UniP) and corrector (UniC), data-prediction form.

Notation of dpm_solver.py: lambda = log(alpha/sigma), h = lambda_{i+1} - lambda_i, D_j the denoiser's
estimate at grid point j. Predictor and corrector are one update, the exponential-integrator step
of the probability-flow ODE with D replaced by a polynomial in lambda through earlier estimates:

    x_{i+1} = (sigma_{i+1}/sigma_i) x_i - alpha_{i+1} (e^{-h} - 1) D_i
              - alpha_{i+1} sum_k w_k (D_{j_k} - D_i) / r_k,        r_k = (lambda_{j_k} - lambda_i) / h.

UniP-p uses the p - 1 most recent earlier estimates. UniC-p, run once D_{i+1} is known, redoes the
same step with those points plus D_{i+1} itself (r = 1) and replaces x_{i+1}; the model is not called
again, so a run costs one call per step, and D_{i+1} (taken at the predicted point) is what later
steps use. The weights (w = B(h) a in the paper's notation) solve the order conditions

    sum_k w_k r_k^(m-1) = m! phi_m(-h) - 1,    m = 1 .. K,
    phi_0(z) = e^z,  phi_{m+1}(z) = (phi_m(z) - 1/m!) / z,

in which B(h) cancels. It matters only where a single weight is set to w = B(h)/2 instead, the
h -> 0 limit of its exact value -h/2 + h^2/6 (UniP-2 and UniC-1; diffusers makes the same choice):
'bh1' is B(h) = -h, 'bh2' is B(h) = e^{-h} - 1 (the paper's B(h) = h and e^h - 1, written for noise
prediction, at -h).

Orders are lowered where the multistep history is short (the first steps) and, with
`lower_order_final`, on the last ones: step i of N uses at most order N - i. diffusers' UniPC does
so at any step count; its DPM-Solver lowers the second-to-last step only below 15 steps, and the
last one below 15 steps or whenever the final sigma is zero, which ours always is. The step to
clean data (sigma = 0, h = inf) is first order whatever the options, so it returns D: a polynomial
in lambda extrapolated to lambda = inf diverges.

A zero-SNR start (alpha_0 = 0, lambda_0 = -inf) gives h = inf on the first step. Its first-order
update x_1 = sigma_1 x_0 + alpha_1 D_0 is finite; its corrector uses the exact weight, -1 (the limit
of phi_1(-h) - 1, the same for both variants, where B(h)/2 is unbounded for bh1); and D_0 never
serves as an earlier point: it lies infinitely far away in lambda, where its weight vanishes.
"""

from __future__ import annotations

import math

import numpy as np

from .base import Grid

_B = {
    "bh1": lambda h: -h,
    "bh2": lambda h: math.expm1(-h),
}


def _conditions(h: float, count: int) -> np.ndarray:
    """m! phi_m(-h) - 1 for m = 1 .. count (finite for h = inf, where each is -1)."""
    z = -h
    out = []
    phi, factorial = math.expm1(z) / z, 1.0  # phi_1
    for m in range(1, count + 1):
        factorial *= m
        out.append(factorial * phi - 1)
        phi = (phi - 1 / factorial) / z  # phi_{m+1}
    return np.array(out)


def _weights(r: list[float], h: float, variant: str) -> np.ndarray:
    if len(r) == 1 and math.isfinite(h):
        return np.array([0.5 * _B[variant](h)])
    vandermonde = np.vander(np.array(r), len(r), increasing=True).T  # [m, k] = r_k^m
    return np.linalg.solve(vandermonde, _conditions(h, len(r)))


def _step(x, d, grid: Grid, i: int, h: float, points, variant: str):
    """The update above from grid point i to i + 1; points = [(r_k, D_{j_k})]."""
    a = grid.a(i + 1)
    out = (grid.s(i + 1) / grid.s(i)) * x - (a * math.expm1(-h)) * d
    if points:
        w = _weights([r for r, _ in points], h, variant)
        for (r, d_j), w_k in zip(points, w):
            out = out - (a * float(w_k) / r) * (d_j - d)
    return out


def unipc(denoise, x, grid: Grid, generator=None, *, order: int = 2, variant: str = "bh2",
          lower_order_final: bool = True):
    """UniPC: UniP-p then UniC-p at every step but the last, one model call per step.

    order              p, 1 to 3 (lowered while the history is short, see above)
    variant            'bh1' (B(h) = h) or 'bh2' (B(h) = e^h - 1)
    lower_order_final  lower the order on the last steps to at most the number of steps left
    """
    if isinstance(order, bool) or order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    if variant not in _B:
        raise ValueError(f"variant must be 'bh1' (B(h) = h) or 'bh2' (B(h) = e^h - 1), got {variant!r}")
    order = int(order)
    history = []   # (lambda_j, D_j) of earlier points with finite lambda, oldest first
    last = None    # the previous predictor step, (x_i, D_i, i, h, points), for the corrector
    for i in range(grid.steps):
        if last is None:
            x = denoise.begin(x, i)
        d = denoise(x, i)
        if grid.s(i + 1) == 0:
            return d  # sigma_{i+1} = 0: the step is x = D; a correction of x would be multiplied by 0
        if last is not None:
            x_prev, d_prev, j, h_prev, points = last
            x = _step(x_prev, d_prev, grid, j, h_prev, points + [(1.0, d)], variant)
            # the hook sees the corrected state, which the next step starts from; D_i stays the
            # evaluation at the predicted point, as UniC reuses it
            x = denoise.begin(x, i)
        lam, h = grid.lam(i), grid.lam(i + 1) - grid.lam(i)
        p = min(order, len(history) + 1)
        if lower_order_final:
            p = min(p, grid.steps - i)
        points = [((lam_j - lam) / h, d_j) for lam_j, d_j in reversed(history[len(history) - (p - 1):])]
        last = (x, d, i, h, points)
        x = _step(x, d, grid, i, h, points, variant)
        if math.isfinite(lam):
            history.append((lam, d))
            del history[:max(0, len(history) - (order - 1))]
    return x
