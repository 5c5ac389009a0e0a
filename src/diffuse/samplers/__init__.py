"""Stateless samplers over any model `model(x, t, **cond)`.

`sample()` is the one call a user writes. It turns the model's prediction into the denoiser
D(x, i) that every sampler works with, builds the grid of noise levels from a step schedule, and
hands both to the sampler function named. Samplers keep no state between calls and take all
randomness from the generator given, so they can run in many threads at once.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch

from ..parameterization import PathCoefficients, check_prediction, to_x0_eps
from ..process import GaussianPath
from .ancestral import ddim, ddpm
from .base import Grid
from .dpm_solver import dpmpp_2m
from .ode import euler, heun
from .schedules import SCHEDULES, make_times

_SAMPLERS: dict[str, Callable] = {
    "ddpm": ddpm,
    "ddim": ddim,
    "euler": euler,
    "heun": heun,
    "dpmpp_2m": dpmpp_2m,
}


def available() -> list[str]:
    """Names accepted by `sample(sampler=...)`."""
    return sorted(_SAMPLERS)


def get(name: str) -> Callable:
    if name not in _SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; available: {', '.join(available())}")
    return _SAMPLERS[name]


def _options_of(fn: Callable) -> set[str]:
    return {p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY}


def make_denoiser(model, process: GaussianPath, grid: Grid, prediction: str, batch: int,
                  device: torch.device, cond: dict, clip_denoised: float | None = None,
                  callback: Callable | None = None) -> Callable:
    """D(x, i): call the model at grid time t_i and return its estimate of x0."""
    coefficients = [PathCoefficients.at(process, t, need_derivatives=prediction == "velocity")
                    for t in grid.t]

    def denoise(x: torch.Tensor, i: int) -> torch.Tensor:
        t = grid.t[i].to(device).expand(batch)
        out = model(x, t, **cond)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"the model returned {shape} for an input of shape {tuple(x.shape)}")
        x0, _ = to_x0_eps(prediction, out.to(x.dtype), x, coefficients[i])
        if clip_denoised is not None:
            x0 = x0.clamp(-clip_denoised, clip_denoised)
        if callback is not None:
            callback({"i": i, "t": float(grid.t[i]), "x": x, "denoised": x0})
        return x0

    return denoise


def sample(model, process: GaussianPath, noise: torch.Tensor, sampler: str = "dpmpp_2m",
           steps: int | None = None, prediction: str | None = None,
           generator: torch.Generator | None = None, *, schedule="auto", cond: dict | None = None,
           clip_denoised: float | None = None, callback: Callable | None = None,
           **options) -> torch.Tensor:
    """Draw samples by integrating the reverse process from `noise` to clean data.

    model       any callable model(x, t, **cond) -> prediction, t a float64 tensor [B] of process time
    process     the Gaussian path the model was trained on
    noise       standard normal, of the output's shape; scaled here to the prior at t_max
    sampler     one of `available()`
    steps       number of sampler steps (the number of model calls depends on the sampler);
                None means 10 for a named schedule, or the length of an explicit one
    prediction  what the model outputs ('eps', 'x0', 'v', 'score', 'velocity'); defaults to
                `model.prediction` when the model declares it
    schedule    a name from `diffuse.samplers.SCHEDULES` ('auto' = the process's default), or an
                explicit decreasing array of times
    cond        keyword arguments passed to every model call (labels, text embeddings, ...)
    options     the sampler's own options (e.g. eta for ddim)
    """
    fn = get(sampler)
    unknown = set(options) - _options_of(fn)
    if unknown:
        raise ValueError(f"sampler {sampler!r} has no option(s) {sorted(unknown)}; "
                         f"it accepts {sorted(_options_of(fn)) or 'none'}")
    if prediction is None:
        prediction = getattr(model, "prediction", None)
        if prediction is None:
            raise ValueError("say what the model predicts: prediction='eps' | 'x0' | 'v' | 'score' | 'velocity'")
    check_prediction(prediction)
    if not isinstance(noise, torch.Tensor) or not noise.is_floating_point() or noise.ndim < 1:
        raise ValueError("noise must be a floating-point tensor of shape [B, ...]")
    if steps is None and isinstance(schedule, str):
        steps = 10
    grid = Grid.from_times(process, make_times(process, schedule, steps))
    if grid.a(0) == 0 and prediction in ("eps", "score"):
        raise ValueError(f"at t={float(grid.t[0])} the process has zero SNR, where an {prediction!r} "
                         "prediction cannot recover x0; use a v, x0 or velocity model, or start at t < 1")
    denoise = make_denoiser(model, process, grid, prediction, noise.shape[0], noise.device,
                            cond or {}, clip_denoised, callback)
    x = noise * process.prior_std
    with torch.no_grad():
        return fn(denoise, x, grid, generator, **options)


__all__ = ["available", "get", "sample", "Grid", "SCHEDULES", "make_times",
           "ddpm", "ddim", "euler", "heun", "dpmpp_2m"]
