"""An adaptive Runge-Kutta integrator (Dormand & Prince 1980) with one step size per sample.

Used by the adaptive probability-flow sampler and by the likelihood computation. The state is a
tuple of tensors with the batch as dimension 0, and every sample keeps its own time and step
size, so a sample's trajectory does not depend on what else is in its batch.
"""

from __future__ import annotations

import torch

# Dormand & Prince (1980), RK5(4)7FM: nodes, stage weights, the fifth-order solution (which is
# also the last stage's point, "first same as last") and the difference to the embedded fourth-
# order solution, which is the local error estimate.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)


def _rms(parts, b: int) -> torch.Tensor:
    """Per-sample root mean square over all components of a tuple of tensors, each [B, ...]."""
    total = sum(p.reshape(b, -1).pow(2).sum(1) for p in parts)
    return torch.sqrt(total / sum(p[0].numel() for p in parts))


def _bcast(c: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return c.reshape(c.shape + (1,) * (y.ndim - 1))


def _combine(y, h, ks, weights):
    """y + h * sum_j w_j k_j for a tuple state y and stage derivatives ks (tuples like y)."""
    out = []
    for i, yi in enumerate(y):
        acc = yi.clone()
        for w, k in zip(weights, ks):
            if w != 0.0:
                acc = acc + _bcast(h * w, yi) * k[i]
        out.append(acc)
    return tuple(out)


def _where(mask, a, b):
    return tuple(torch.where(_bcast(mask, ai), ai, bi) for ai, bi in zip(a, b))


def dopri5(fn, y0: tuple, t0: torch.Tensor, t1: float, rtol: float, atol: float,
            max_steps: int = 10_000):
    """Integrate dy/dt = fn(t, y) from t0 [B] to t1 with the Dormand-Prince 5(4) pair.

    y is a tuple of float64 tensors, each with the batch as dimension 0. Every sample keeps its own
    time and step size, so its trajectory and error control do not depend on what else is in the
    batch; a finished sample rides along with a step of zero. Local error control as in Hairer,
    Norsett & Wanner, Solving ODEs I, II.4: err = rms(e / (atol + rtol max(|y0|, |y1|))) <= 1.
    Returns (y(t1), number of calls of fn).
    """
    b = t0.shape[0]
    t = t0.clone()
    y = y0
    k1 = fn(t, y)
    nfe = 1

    # Initial step (Hairer et al., II.4, "starting step size"): one Euler trial step.
    scale = tuple(atol + rtol * yi.abs() for yi in y)
    d0 = _rms(tuple(yi / s for yi, s in zip(y, scale)), b)
    d1 = _rms(tuple(ki / s for ki, s in zip(k1, scale)), b)
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1)
    h0 = torch.minimum(h0, t1 - t)
    trial = fn(t + h0, _combine(y, h0, (k1,), (1.0,)))
    nfe += 1
    d2 = _rms(tuple((ki - k) / s for ki, k, s in zip(trial, k1, scale)), b) / h0
    big = torch.maximum(d1, d2)
    h1 = torch.where(big <= 1e-15, torch.maximum(torch.full_like(h0, 1e-6), h0 * 1e-3),
                     (0.01 / big) ** (1 / 5))
    h = torch.minimum(100 * h0, h1)

    done = t >= t1
    for _ in range(max_steps):
        if bool(done.all()):
            return y, nfe
        remaining = t1 - t
        last = h >= remaining
        step = torch.where(done, torch.zeros_like(h), torch.minimum(h, remaining))
        ks = [k1]
        for i in range(1, 7):
            ks.append(fn(t + _C[i] * step, _combine(y, step, ks, _A[i])))
        nfe += 6
        y_new = _combine(y, step, ks[:6], _A[6])
        err = _combine(tuple(torch.zeros_like(yi) for yi in y), step, ks, _E)
        tol = tuple(atol + rtol * torch.maximum(a.abs(), c.abs()) for a, c in zip(y, y_new))
        norm = _rms(tuple(e / s for e, s in zip(err, tol)), b)
        if not bool(torch.isfinite(norm).all()):
            raise RuntimeError("the ODE's right-hand side became non-finite (check the model's "
                               "output and t_start / t_end)")
        accept = (norm <= 1) | done
        y = _where(accept, y_new, y)
        k1 = _where(accept, ks[6], k1)
        # Land exactly on t1 rather than a rounding error short of it.
        t = torch.where(accept, torch.where(last, torch.full_like(t, t1), t + step), t)
        factor = (0.9 * norm.clamp_min(1e-10) ** -0.2).clamp(0.2, 10.0)
        factor = torch.where(accept, factor, factor.clamp(max=1.0))
        h = torch.where(done, h, step * factor)
        done = done | (accept & last)
        if bool(((h <= 1e-14 * t.abs().clamp_min(1.0)) & ~done).any()):
            raise RuntimeError("the step size underflowed; the ODE is stiff or singular here "
                               "(check the model's output and t_start / t_end)")
    raise RuntimeError(f"the ODE solve did not finish in {max_steps} steps; loosen rtol/atol")
