"""Stateless samplers over any model `model(x, t, **cond)`.

`sample()` is the one call a user writes. It turns the model's prediction into the denoiser
D(x, i) that every sampler works with, builds the grid of noise levels from a step schedule, and
hands both to the sampler function named. Sampling starts from pure noise at t_max, or from a given
state `x_start` at a given time `t_start` (a partly noised image: SDEdit, restarts); a step hook
may replace the state at the start of every step. Samplers keep no state between calls and take
all randomness from the generators given, so they can run in many threads at once.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Callable

import torch

from ..parameterization import PathCoefficients, check_prediction, to_x0
from ..process import GaussianPath
from .adaptive import adaptive
from .ancestral import ddim, ddpm, euler_ancestral
from .base import Generators, Grid, eps_from_x0
from .daps import daps
from .ddrm import ddrm
from .dps import dps
from .dpm_solver import dpmpp_2m, dpmpp_2s, dpmpp_3m, sde_dpmpp_2m, sde_dpmpp_3m
from .ode import euler, heun
from .repaint import repaint
from .sde import pc, sde
from .schedules import SCHEDULES, make_times
from .unipc import unipc

_SAMPLERS: dict[str, Callable] = {
    "ddpm": ddpm,
    "ddim": ddim,
    "euler": euler,
    "heun": heun,
    "dpmpp_2m": dpmpp_2m,
    "unipc": unipc,
    "dpmpp_3m": dpmpp_3m,
    "dpmpp_2s": dpmpp_2s,
    "sde_dpmpp_2m": sde_dpmpp_2m,
    "sde_dpmpp_3m": sde_dpmpp_3m,
    "euler_ancestral": euler_ancestral,
    "sde": sde,
    "pc": pc,
    "adaptive": adaptive,
}
# Samplers of the posterior p(x0 | y): each takes `measurement=` (diffuse.inverse.Measurement).
_POSTERIOR_SAMPLERS: dict[str, Callable] = {"repaint": repaint, "dps": dps, "ddrm": ddrm, "daps": daps}


def available() -> list[str]:
    """Names accepted by `sample(sampler=...)` that sample the model's own distribution."""
    return sorted(_SAMPLERS)


def posterior_samplers() -> list[str]:
    """Names accepted by `sample(sampler=..., measurement=...)`: samplers of p(x0 | y)."""
    return sorted(_POSTERIOR_SAMPLERS)


def get(name: str) -> Callable:
    fn = _SAMPLERS.get(name) or _POSTERIOR_SAMPLERS.get(name)
    if fn is None:
        raise ValueError(f"unknown sampler {name!r}; available: {', '.join(available())}, "
                         f"and given a measurement: {', '.join(posterior_samplers())}")
    return fn


@functools.lru_cache(maxsize=None)
def _options_of(fn: Callable) -> set[str]:
    return {p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY}


class GridDenoiser:
    """D(x, i): the model's estimate of x0 at grid time t_i, whatever it predicts.

    `at(x, t)` evaluates off the grid (intermediate stages, churned noise levels, adaptive
    solvers). `calls` counts model evaluations; it belongs to one `sample()` call only.
    """

    def __init__(self, model, process: GaussianPath, grid: Grid, prediction: str, batch: int,
                 device: torch.device, cond: dict, clip_denoised: float | None = None,
                 callback: Callable | None = None, hook: Callable | None = None):
        self.model, self.process, self.grid, self.prediction = model, process, grid, prediction
        self.batch, self.device, self.cond = batch, device, cond
        self.clip_denoised, self.callback, self.hook = clip_denoised, callback, hook
        # the grid's own alpha and sigma (and derivatives, once, if needed) as Python numbers
        if prediction == "velocity":
            d_alpha, d_sigma = (d.tolist() for d in process.derivatives(grid.t))
            infinite = [t for t, a, s in zip(grid.t.tolist(), d_alpha, d_sigma) if not math.isfinite(a + s)]
            if infinite:  # e.g. a zero-terminal-SNR DDPM schedule at t = 1, where alpha ~ sqrt(1 - t)
                raise ValueError(f"at t={infinite[0]} the path's velocity d x_t/dt is infinite, so a 'velocity' "
                                 "prediction cannot be evaluated there; start below it (t_start, or an explicit "
                                 "schedule) or use a v or x0 model")
        else:
            d_alpha = d_sigma = [float("nan")] * grid.steps
        columns = [grid.alpha[:-1].tolist(), grid.sigma[:-1].tolist(), d_alpha, d_sigma]
        self.coefficients = [PathCoefficients(*values) for values in zip(*columns)]
        self.times = list(grid.t.to(device).unsqueeze(1).expand(-1, batch))  # the model's t, per step
        self.calls = 0

    def _coefficients(self, t) -> PathCoefficients:
        return PathCoefficients.at(self.process, t, need_derivatives=self.prediction == "velocity")

    def __call__(self, x: torch.Tensor, i: int) -> torch.Tensor:
        return self._evaluate(x, self.times[i], self.coefficients[i], i)

    def begin(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """The state at grid time t_i as step i begins, after the step hook (if any) has seen it;
        i = grid.steps is the final clean sample (t = 0)."""
        if self.hook is None:
            return x
        t = float(self.grid.t[i]) if i < self.grid.steps else 0.0
        out = self.hook(x, i, t)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"the step hook returned {shape} for a state of shape {tuple(x.shape)}")
        return out.to(x.dtype)

    def at(self, x: torch.Tensor, t) -> torch.Tensor:
        """D at any time: a number, or a float64 tensor [B] of one time per sample."""
        t = torch.as_tensor(t, dtype=torch.float64).cpu()
        return self._evaluate(x, t, self._coefficients(t), None)

    def _evaluate(self, x, t, coefficients, i):
        if t.ndim == 0 or t.shape[0] != self.batch:
            t = t.to(self.device).expand(self.batch)
        out = self.model(x, t, **self.cond)
        self.calls += 1
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"the model returned {shape} for an input of shape {tuple(x.shape)}")
        x0 = to_x0(self.prediction, out.to(x.dtype), x, coefficients)
        if self.clip_denoised is not None:
            x0 = x0.clamp(-self.clip_denoised, self.clip_denoised)
        if self.callback is not None:
            time = float(self.grid.t[i]) if i is not None else (float(t) if t.ndim == 0 else t)
            self.callback({"i": i, "t": time, "x": x, "denoised": x0})
        return x0


def _prediction(model, prediction: str | None) -> str:
    """What the model predicts: as given, or as the model declares it."""
    if prediction is None:
        prediction = getattr(model, "prediction", None)
    if prediction is None:
        raise ValueError("say what the model predicts: prediction='eps' | 'x0' | 'v' | 'score' | 'velocity'")
    return check_prediction(prediction)


def _grid(process: GaussianPath, schedule, steps: int | None, t_start: float | None = None) -> Grid:
    """The grid of a schedule; steps None means 10 for a named or callable one, else its own length."""
    if steps is None and (isinstance(schedule, str) or callable(schedule)):
        steps = 10
    return Grid.from_times(process, make_times(process, schedule, steps, t_start=t_start))


def sample(model, process: GaussianPath, noise: torch.Tensor | None = None, sampler: str = "dpmpp_2m",
           steps: int | None = None, prediction: str | None = None, generator=None, *, schedule="auto",
           cond: dict | None = None, x_start: torch.Tensor | None = None, t_start: float | None = None,
           hook: Callable | None = None, clip_denoised: float | None = None, callback: Callable | None = None,
           return_nfe: bool = False, **options):
    """Draw samples by integrating the reverse process to clean data, from `noise` at t_max or from
    `x_start` at `t_start`.

    model       any callable model(x, t, **cond) -> prediction, t a float64 tensor [B] of process time
    process     the Gaussian path the model was trained on
    noise       standard normal, of the output's shape; scaled here to the prior at t_max
    x_start     instead of noise: a state x_t at time `t_start` (e.g. process.add_noise(image, t_start, eps)),
                used as it is; the schedule's steps then run from t_start down
    sampler     one of `available()`
    steps       number of sampler steps (the number of model calls depends on the sampler);
                None means 10 for a named schedule, or the length of an explicit one
    prediction  what the model outputs ('eps', 'x0', 'v', 'score', 'velocity'); defaults to
                `model.prediction` when the model declares it
    generator   a torch.Generator for the whole batch, or `Generators` (one per sample, e.g.
                Generators.seeded(seed, start, count)), so a sample does not depend on its batch
    schedule    a name from `diffuse.samplers.SCHEDULES` ('auto' = the process's default), a
                callable schedule(process, steps, t_start) -> times, or an explicit decreasing
                array of times (starting at t_start when one is given)
    cond        keyword arguments passed to every model call (labels, text embeddings, ...)
    hook        hook(x, i, t) -> x, called with the state at grid time t_i as step i begins (and with
                the final sample, i = steps, t = 0); what it returns replaces the state. A sampler
                that reuses an evaluation across steps (unipc's corrector) calls it after the correction
    callback    callback({"i", "t", "x", "denoised"}) after every model evaluation, read-only
    return_nfe  also return the number of model evaluations used: (x, nfe)
    options     the sampler's own options (e.g. eta for ddim)
    """
    fn = get(sampler)
    unknown = set(options) - _options_of(fn)
    if sampler in _POSTERIOR_SAMPLERS and options.get("measurement") is None:
        raise ValueError(f"{sampler!r} samples the posterior given a measurement: pass measurement="
                         "diffuse.inverse.measure(operator, images, sigma_y)")
    if unknown:
        raise ValueError(f"sampler {sampler!r} has no option(s) {sorted(unknown)}; "
                         f"it accepts {sorted(_options_of(fn)) or 'none'}")
    prediction = _prediction(model, prediction)
    if (noise is None) == (x_start is None):
        raise ValueError("give either noise (a start from the prior at t_max) or x_start with t_start")
    if (x_start is None) != (t_start is None):
        raise ValueError("x_start and t_start go together: the state and the time it is at")
    start = noise if x_start is None else x_start
    if not isinstance(start, torch.Tensor) or not start.is_floating_point() or start.ndim < 1:
        name = "noise" if x_start is None else "x_start"
        raise ValueError(f"{name} must be a floating-point tensor of shape [B, ...]")
    if isinstance(generator, Generators) and len(generator) != start.shape[0]:
        raise ValueError(f"{len(generator)} per-sample generators for a batch of {start.shape[0]}")
    if options.get("measurement") is not None and len(options["measurement"]) != start.shape[0]:
        raise ValueError(f"a measurement of {len(options['measurement'])} for a batch of {start.shape[0]}")
    if hook is not None and fn is adaptive:
        raise ValueError("the adaptive sampler chooses its own steps; it has no steps for a hook to run between")
    grid = _grid(process, schedule, steps, t_start)
    if grid.a(0) == 0 and prediction in ("eps", "score"):
        raise ValueError(f"at t={float(grid.t[0])} the process has zero SNR, where an {prediction!r} "
                         "prediction cannot recover x0; use a v, x0 or velocity model, or start at t < 1")
    denoise = GridDenoiser(model, process, grid, prediction, start.shape[0], start.device,
                           cond or {}, clip_denoised, callback, hook)
    x = noise * process.prior_std if x_start is None else x_start
    with torch.no_grad():
        x = denoise.begin(fn(denoise, x, grid, generator, **options), grid.steps)
    if not torch.isfinite(x).all():
        share = float((~torch.isfinite(x)).flatten(1).any(1).double().mean())
        narrow = f" in {x.dtype}, too narrow for it (use float32)" if x.dtype in (torch.float16, torch.bfloat16) else ""
        raise NonFiniteSampleError(f"{100 * share:.0f}% of the samples of {sampler!r} are NaN or infinite{narrow}; "
                                   "a model whose weights are not finite, or a guidance weight that blows the "
                                   "samples up, does this too", share)
    return (x, denoise.calls) if return_nfe else x


def invert(model, process: GaussianPath, x0: torch.Tensor, steps: int | None = None, prediction: str | None = None,
           *, schedule="auto", cond: dict | None = None, fixed_point: int = 0, return_nfe: bool = False):
    """DDIM inversion: the noise from which `sample(model, process, noise, sampler="ddim", steps=steps,
    schedule=schedule, cond=cond)` draws x0, found by running the deterministic DDIM steps backwards.

    Step i of DDIM maps x_i to x_{i+1} = alpha_{i+1} x0_hat + sigma_{i+1} eps_hat with (x0_hat, eps_hat) the
    model's at x_i, so going back, x_i = alpha_i (x_{i+1} - sigma_{i+1} eps_hat) / alpha_{i+1} + sigma_i eps_hat,
    needs eps_hat at the unknown x_i. The usual inversion reads it at the known x_{i+1} (at t_{i+1}; from the
    clean end, at the lowest grid time), which is exact only as steps -> infinity. `fixed_point` > 0
    re-reads it at the current x_i that many times (one model call each), the fixed-point iteration
    of exact inversion, which makes the round trip much closer at few steps where the model is smooth.
    """
    prediction = _prediction(model, prediction)
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point() or x0.ndim < 1:
        raise ValueError("x0 must be a floating-point tensor of shape [B, ...]")
    if fixed_point < 0:
        raise ValueError(f"fixed_point must be >= 0, got {fixed_point}")
    grid = _grid(process, schedule, steps)
    denoise = GridDenoiser(model, process, grid, prediction, x0.shape[0], x0.device, cond or {})
    last = grid.steps - 1
    x = x0
    with torch.no_grad():
        for i in reversed(range(grid.steps)):
            target, read, at = x, x, min(i + 1, last)
            for _ in range(1 + fixed_point):
                eps = eps_from_x0(read, denoise(read, at), grid, at)
                x = grid.a(i) * (target - grid.s(i + 1) * eps) / grid.a(i + 1) + grid.s(i) * eps
                read, at = x, i
    noise = x / process.prior_std
    return (noise, denoise.calls) if return_nfe else noise


class NonFiniteSampleError(ValueError):
    """Sampling produced NaN or infinity (the samples are not returned); `share` of them."""

    def __init__(self, message: str, share: float = 1.0):
        super().__init__(message)
        self.share = share


__all__ = ["available", "posterior_samplers", "get", "sample", "invert", "Grid", "GridDenoiser", "Generators",
           "NonFiniteSampleError", "SCHEDULES",
           "make_times", *_SAMPLERS, *_POSTERIOR_SAMPLERS]
