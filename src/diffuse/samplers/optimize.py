"""Step schedules fitted to one model: which times a deterministic sampler should visit.

With few steps a sampler's error depends as much on where it steps as on its update rule, and the
best places depend on the data (sharp modes want small steps where the noise level passes their
width). `optimize_schedule` fits the times directly: it minimises the RMS distance between the
sampler's output and the exact probability-flow ODE endpoint from the same starting noise,

    E(t_1 .. t_{N-2}) = sqrt(mean_i |sample_i(schedule) - ODE_i|^2),

over a training batch of noise, with the first and last times held fixed. ODE_i integrates the ODE
exactly from the first time to the last and then takes the sampler's own final step, x = D at the
last time: that is the limit every sampler with those ends converges to as its steps grow, so E
measures discretisation error only. With `free_last` the target stays the same but the sampler may
stop earlier (take its final step x = D at a noisier level): with very few steps the last model
call, at the least noisy level, removes only the little noise left there, and is better spent
where the trajectories still choose their modes.

Parametrisation. Between the fixed ends the N - 1 gaps in log-SNR are

    gaps = (lambda_last - lambda_first) softmax(log gaps_init + B theta),

so every theta is a strictly decreasing schedule with the same ends and theta = 0 is the initial
schedule. B has one column per free gap for short schedules and, past `max_params` of them,
piecewise-linear hat functions over the schedule (a smooth change of step density: fewer
parameters, and less to overfit on the training batch).

Optimiser. The sampler's times pass through float() in every update rule, so the error is not
differentiated; Nelder-Mead does the search, with the dimension-dependent coefficients of Gao & Han
(2012, Comput. Optim. Appl. 51) and restarts around the best point while evaluations are left. It is
deterministic: the same inputs give the same schedule.

Reference. `ode_endpoint` is the `adaptive` sampler at tight tolerances, which integrates
y = x/alpha against log rho, rho = sigma/alpha, dy / dlog(rho) = y - D(alpha y, t(rho)): the same
smooth ODE for every Gaussian path (Karras et al. 2022, eq. 4, rescaled).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..parameterization import check_prediction
from ..process import GaussianPath
from . import sample
from .schedules import make_times

_f64 = torch.float64

# Deterministic samplers whose output depends on the schedule alone, and the options that would
# make them stochastic (they must keep these values).
DETERMINISTIC = ("ddim", "euler", "heun", "dpmpp_2m", "dpmpp_3m", "dpmpp_2s", "unipc")
_DETERMINISTIC_OPTIONS = {"ddim": {"eta": 0.0}, "heun": {"churn": 0.0}}


def _prediction_of(model, prediction):
    if prediction is None:
        prediction = getattr(model, "prediction", None)
        if prediction is None:
            raise ValueError("say what the model predicts: prediction='eps' | 'x0' | 'v' | 'score' | 'velocity'")
    return check_prediction(prediction)


def ode_endpoint(model, process: GaussianPath, noise: torch.Tensor, first: float, last: float, *,
                 prediction: str | None = None, rtol: float = 1e-8, atol: float = 1e-8,
                 max_steps: int = 100_000) -> torch.Tensor:
    """The exact probability-flow ODE from x = prior_std * noise at time `first` to time `last`,
    followed by the final denoising step x = D(x, last) that every sampler takes: the adaptive
    sampler at tight tolerances, in float64. Returns a tensor of the noise's dtype."""
    first, last = float(first), float(last)
    if not first >= last:
        raise ValueError(f"the ODE runs from a later time to an earlier one, got first={first}, last={last}")
    schedule = [first] if first == last else [first, last]
    x = sample(model, process, noise.to(_f64), sampler="adaptive", schedule=schedule,
               prediction=_prediction_of(model, prediction), rtol=rtol, atol=atol, max_steps=max_steps)
    return x.to(noise.dtype)


def rms_distance(x: torch.Tensor, reference: torch.Tensor) -> float:
    """sqrt(mean over samples of |x_i - reference_i|^2), the Euclidean distance per sample."""
    if x.shape != reference.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} and {tuple(reference.shape)}")
    diff = (x.to(_f64) - reference.to(_f64)).reshape(x.shape[0], -1)
    return float(diff.pow(2).sum(1).mean().sqrt())


def _basis(gaps: int, max_params: int) -> np.ndarray:
    """[gaps, K] columns that move the log-gaps; the last gap is the fixed point of the softmax's
    shift invariance, so the columns are independent."""
    if gaps - 1 <= max_params:
        return np.eye(gaps)[:, : gaps - 1]
    k = max_params
    u = (np.arange(gaps) + 0.5) / gaps            # positions of the gaps along the schedule
    knots = np.linspace(0.0, 1.0, k + 1)[:k]      # hats at all knots but the last (held at 0)
    return np.clip(1 - np.abs(u[:, None] - knots[None, :]) * k, 0, None)


def _nelder_mead(f, x0: np.ndarray, evaluations: int, step: float = 1.0, restart_shrink: float = 0.7,
                 xtol: float = 1e-3, ftol: float = 1e-5):
    """Minimise f from x0 with at most `evaluations` calls; returns (best x, best f)."""
    n = x0.size
    a_reflect, a_expand, a_contract, a_shrink = 1.0, 1 + 2 / n, 0.75 - 1 / (2 * n), 1 - 1 / n
    used = 0

    def call(x):
        nonlocal used
        used += 1
        value = f(x)
        return value if math.isfinite(value) else math.inf

    best_x, best_f = x0.copy(), call(x0)
    while used < evaluations:
        if evaluations - used < n + 1:  # not enough left for a simplex and one move
            break
        simplex = [best_x.copy()] + [best_x + step * e for e in np.eye(n)]
        values = [best_f] + [call(x) for x in simplex[1:]]
        while used < evaluations:
            order = np.argsort(values, kind="stable")
            simplex = [simplex[j] for j in order]
            values = [values[j] for j in order]
            spread = max(np.abs(x - simplex[0]).max() for x in simplex[1:])
            if spread < xtol or values[-1] - values[0] < ftol:
                break
            centroid = np.mean(simplex[:-1], axis=0)
            worst = simplex[-1]
            reflected = centroid + a_reflect * (centroid - worst)
            f_r = call(reflected)
            if f_r < values[0]:
                expanded = centroid + a_expand * (reflected - centroid)
                f_e = call(expanded)
                simplex[-1], values[-1] = (expanded, f_e) if f_e < f_r else (reflected, f_r)
            elif f_r < values[-2]:
                simplex[-1], values[-1] = reflected, f_r
            else:
                outside = f_r < values[-1]
                contracted = centroid + a_contract * ((reflected if outside else worst) - centroid)
                f_c = call(contracted)
                if f_c < min(f_r, values[-1]):
                    simplex[-1], values[-1] = contracted, f_c
                else:
                    for j in range(1, n + 1):
                        if used >= evaluations:
                            break
                        simplex[j] = simplex[0] + a_shrink * (simplex[j] - simplex[0])
                        values[j] = call(simplex[j])
        j = int(np.argmin(values))
        if values[j] < best_f:
            best_x, best_f = simplex[j].copy(), values[j]
        step *= restart_shrink
        if step < xtol:
            break
    return best_x, best_f


def optimize_schedule(model, process: GaussianPath, sampler: str, steps: int, noise: torch.Tensor, *,
                      reference: torch.Tensor | None = None, init="log_snr", iterations: int = 200,
                      prediction: str | None = None, max_params: int = 8, free_last: bool = False,
                      rtol: float = 1e-8, atol: float = 1e-8, **sampler_options) -> torch.Tensor:
    """Times for `sample(model, process, ..., sampler=sampler, schedule=times)` that minimise the
    RMS distance to the exact ODE endpoint over the training batch `noise`.

    sampler     a deterministic sampler (`DETERMINISTIC`; ddim with eta = 0, heun without churn)
    steps       the sampler's steps (>= 3: the first and last times are fixed)
    noise       the training batch, standard normal as for `sample()`; judge the result on another
    reference   the ODE endpoints for `noise` (`ode_endpoint` with the initial schedule's ends),
                computed at rtol/atol when not given
    init        the starting schedule: a name from SCHEDULES or an explicit array of `steps` times;
                its first and last times are kept
    iterations  how many times the sampler is run on the training batch (the optimiser's budget)
    max_params  at most this many parameters; longer schedules change their step density smoothly
    free_last   also fit where the sampler stops: it may take its final step (x = D) at a noisier
                level than the initial last time, while the target stays the ODE endpoint with the
                initial ends. With fixed ends the last model call, at the least noisy level, only
                removes the little noise left there; a few-step sampler may do better to spend it
                earlier and stop where D is already close to the endpoint. One more parameter.
    sampler_options  passed to the sampler (e.g. order=3 for unipc)

    Returns `steps` strictly decreasing float64 times with the initial first time (and last time,
    unless free_last); with iterations = 0, the initial schedule.
    """
    if sampler not in DETERMINISTIC:
        raise ValueError(f"sampler {sampler!r} cannot be fitted: the fit needs a deterministic "
                         f"sampler, one of {DETERMINISTIC}")
    for name, required in _DETERMINISTIC_OPTIONS.get(sampler, {}).items():
        if name in sampler_options and sampler_options[name] != required:
            raise ValueError(f"{sampler} with {name}={sampler_options[name]} is stochastic; "
                             f"the fit needs {name}={required}")
    if isinstance(steps, bool) or int(steps) != steps or steps < 3:
        raise ValueError(f"steps must be an integer >= 3 (the ends are fixed), got {steps!r}")
    if isinstance(iterations, bool) or int(iterations) != iterations or iterations < 0:
        raise ValueError(f"iterations must be a non-negative integer, got {iterations!r}")
    if isinstance(max_params, bool) or int(max_params) != max_params or max_params < 1:
        raise ValueError(f"max_params must be a positive integer, got {max_params!r}")
    if not isinstance(noise, torch.Tensor) or not noise.is_floating_point() or noise.ndim < 1 \
            or noise.shape[0] < 1:
        raise ValueError("noise must be a floating-point tensor of shape [B, ...] with B >= 1")
    steps, iterations = int(steps), int(iterations)
    prediction = _prediction_of(model, prediction)
    init_times = make_times(process, init, steps)
    lam = process.log_snr(init_times)
    if not torch.isfinite(lam).all():
        raise ValueError(f"the log-SNR must be finite at every initial time (alpha, sigma > 0); "
                         f"got {lam.tolist()} for times {init_times.tolist()}")
    first, last = float(init_times[0]), float(init_times[-1])
    if reference is None:
        reference = ode_endpoint(model, process, noise, first, last, prediction=prediction,
                                 rtol=rtol, atol=atol)
    elif not isinstance(reference, torch.Tensor) or reference.shape != noise.shape:
        raise ValueError(f"reference must be a tensor of the noise's shape {tuple(noise.shape)}")

    log_gaps = torch.log(lam[1:] - lam[:-1]).numpy()
    span = float(lam[-1] - lam[0])
    basis = _basis(steps - 1, int(max_params))

    def times_of(theta: np.ndarray) -> torch.Tensor:
        theta = np.clip(theta, -6.0, 6.0)
        # the log-SNR left out at the clean end: 0 at theta = 0 and smooth there, up to half the span
        skip = span * min(0.1 * theta[-1] ** 2, 0.5) if free_last else 0.0
        logits = log_gaps + basis @ theta[: basis.shape[1]]
        weights = np.exp(logits - logits.max())
        gaps = (span - skip) * weights / weights.sum()
        lam_new = float(lam[0]) + np.concatenate([[0.0], np.cumsum(gaps)])
        times = process.t_from_log_snr(torch.from_numpy(lam_new)).to(_f64)
        times[0] = init_times[0]
        if skip == 0:
            times[-1] = init_times[-1]
        return times

    def error(theta: np.ndarray) -> float:
        times = times_of(theta)
        if (times[1:] >= times[:-1]).any():
            return math.inf
        x = sample(model, process, noise, sampler=sampler, schedule=times, prediction=prediction,
                   **sampler_options)
        value = rms_distance(x, reference)
        return math.log(value) if value > 0 else -math.inf

    theta0 = np.zeros(basis.shape[1] + bool(free_last))
    if iterations == 0:
        error(theta0)  # still validate the sampler and its options
        return init_times
    theta, _ = _nelder_mead(error, theta0, iterations)
    return times_of(theta)


__all__ = ["optimize_schedule", "ode_endpoint", "rms_distance", "DETERMINISTIC"]
