"""DPM-Solver++ (Lu et al. 2022b), in the data-prediction form.

With lambda = log(alpha/sigma) and h = lambda_{i+1} - lambda_i, the probability-flow ODE over one
step has the exact solution

    x_{i+1} = (sigma_{i+1}/sigma_i) x_i + alpha_{i+1} int_0^h e^{-(h - u)} D(lambda_i + u) du.

Expanding D in u around lambda_i gives the solvers: order 1 (D constant) is DDIM,
x_{i+1} = (sigma_{i+1}/sigma_i) x_i - alpha_{i+1} expm1(-h) D, and the higher orders add the
phi-function terms for the first and second derivatives of D, estimated from earlier steps
(multistep, '2M'/'3M') or from an intermediate evaluation (singlestep, '2S').
The SDE variant (Lu et al. 2022b, eq. 9 with eta = 1) integrates the reverse SDE the same way.

Every variant takes a first-order step when it has no history yet and on the final step to clean
data (lambda = inf, where the update is x = D); with `lower_order_final` short schedules (< 15
steps) also drop to at most second order on the step before, where multistep estimates of D's
derivatives are least reliable.
"""

from __future__ import annotations

import math

from .base import Grid, gaussian_like


def _phi(h: float) -> tuple[float, float, float]:
    """(1 - e^{-h}, phi_2, phi_3) for the data-prediction expansion, stable for h -> inf."""
    one = -math.expm1(-h)
    if math.isinf(h):
        return one, 1.0, -0.5
    phi2 = one / -h + 1 if h else 0.0
    phi3 = phi2 / h - 0.5 if h else 0.0
    return one, phi2, phi3


def _multistep_order(order: int, i: int, steps: int, lower_order_final: bool, step_ratio: float) -> int:
    """The order of step i: limited by the history available, lowered near the end of short
    schedules, and kept at two where the step is more than twice the last one (step_ratio =
    h_{i-1} / h_i < 1/2), where extrapolating the second derivative of D over the longer step
    loses more than it gains (uniform-in-t schedules end with such jumps in lambda)."""
    usable = min(order, i + 1)
    if i == steps - 1:
        return 1
    if lower_order_final and steps < 15 and i == steps - 2:
        usable = min(usable, 2)
    if usable == 3 and step_ratio < 0.5:
        usable = 2
    return usable


def _dpmpp_multistep(denoise, x, grid: Grid, order: int, lower_order_final: bool, eta: float, generator):
    history: list[tuple] = []  # (D_j, h_j) of the previous steps, newest last
    for i in range(grid.steps):
        x = denoise.begin(x, i)
        x0 = denoise(x, i)
        if grid.s(i + 1) == 0:  # the last step: lambda = inf, every order gives x = D
            return x0
        h = grid.lam(i + 1) - grid.lam(i)
        k = _multistep_order(order, i, grid.steps, lower_order_final, history[-1][1] / h if history else 1.0)
        # the SDE variant integrates over an effective (1 + eta) h and adds fresh noise
        one, phi2, phi3 = _phi((1 + eta) * h)
        decay = math.exp(-eta * h) if eta else 1.0  # (0 * inf is nan for a zero-SNR start)
        x_next = (grid.s(i + 1) / grid.s(i)) * decay * x + grid.a(i + 1) * one * x0
        if k >= 2:
            d_prev, h_prev = history[-1]
            r0 = h_prev / h
            d1_0 = (x0 - d_prev) / r0
            if k == 2:
                # the 'midpoint' correction of the paper's multistep 2M (Algorithm 2), which the
                # released implementations ship, rather than the Taylor term phi_2 D1
                x_next = x_next + grid.a(i + 1) * 0.5 * one * d1_0
            else:
                d_prev2, h_prev2 = history[-2]
                r1 = h_prev2 / h
                d1_1 = (d_prev - d_prev2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                x_next = x_next + grid.a(i + 1) * (phi2 * d1 - phi3 * d2)
        if eta:
            x_next = x_next + grid.s(i + 1) * math.sqrt(-math.expm1(-2 * eta * h)) * gaussian_like(x, generator)
        history.append((x0, h))
        x = x_next
    return x


def dpmpp_2m(denoise, x, grid: Grid, generator=None, *, lower_order_final: bool = True):
    return _dpmpp_multistep(denoise, x, grid, 2, lower_order_final, 0.0, generator)


def dpmpp_3m(denoise, x, grid: Grid, generator=None, *, lower_order_final: bool = True):
    return _dpmpp_multistep(denoise, x, grid, 3, lower_order_final, 0.0, generator)


def sde_dpmpp_2m(denoise, x, grid: Grid, generator=None, *, eta: float = 1.0, lower_order_final: bool = True):
    """SDE-DPM-Solver++(2M): eta = 1 is the reverse SDE, eta = 0 recovers dpmpp_2m."""
    if eta < 0:
        raise ValueError(f"eta must be non-negative, got {eta}")
    return _dpmpp_multistep(denoise, x, grid, 2, lower_order_final, eta, generator)


def sde_dpmpp_3m(denoise, x, grid: Grid, generator=None, *, eta: float = 1.0, lower_order_final: bool = True):
    """The third-order multistep solver of the same SDE."""
    if eta < 0:
        raise ValueError(f"eta must be non-negative, got {eta}")
    return _dpmpp_multistep(denoise, x, grid, 3, lower_order_final, eta, generator)


def dpmpp_2s(denoise, x, grid: Grid, generator=None, *, r: float = 0.5):
    """DPM-Solver++(2S): a second evaluation at lambda_i + r h per step (2 NFE per step)."""
    if not 0 < r < 1:
        raise ValueError(f"r must lie in (0, 1), got {r}")
    process = grid.process
    for i in range(grid.steps):
        x = denoise.begin(x, i)
        x0 = denoise(x, i)
        h = grid.lam(i + 1) - grid.lam(i)
        d = x0
        if not math.isinf(h):  # the last step and a zero-SNR start have no finite midpoint
            t_mid = float(process.t_from_log_snr(2 * (grid.lam(i) + r * h)))
            a_mid, s_mid = float(process.alpha(t_mid)), float(process.sigma(t_mid))
            x_mid = (s_mid / grid.s(i)) * x - a_mid * math.expm1(-r * h) * x0
            d = (1 - 1 / (2 * r)) * x0 + 1 / (2 * r) * denoise.at(x_mid, t_mid)
        x = (grid.s(i + 1) / grid.s(i)) * x - grid.a(i + 1) * math.expm1(-h) * d
    return x
