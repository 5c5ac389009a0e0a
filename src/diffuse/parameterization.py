"""What a network predicts, and exact conversions between the choices.

Given x_t = alpha x0 + sigma eps, a prediction of any one of these quantities determines the
other four (with x_t and t known):

  eps       the noise                                   (DDPM)
  x0        the clean data, i.e. E[x0 | x_t]            (the denoiser D of EDM)
  v         alpha eps - sigma x0                        (Salimans & Ho 2022)
  score     grad log p_t(x_t) = -E[eps | x_t] / sigma   (score SDE)
  velocity  dx_t/dt = alpha' x0 + sigma' eps            (flow matching's u_t)

Every conversion goes through the pair (x0, eps), solving the 2x2 linear system that relates
(x_t, prediction) to (x0, eps). The solutions are exact for any Gaussian path, so v is defined as
alpha eps - sigma x0 on every process (on VP paths it is the usual v).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .process import GaussianPath, _as_time, expand

PREDICTIONS = ("eps", "x0", "v", "score", "velocity")


def check_prediction(kind: str) -> str:
    if kind not in PREDICTIONS:
        raise ValueError(f"unknown prediction {kind!r}; choose one of {PREDICTIONS}")
    return kind


@dataclass(frozen=True)
class PathCoefficients:
    """alpha, sigma and their time derivatives at a batch of times (float64, shape [B] or [])."""

    alpha: torch.Tensor
    sigma: torch.Tensor
    d_alpha: torch.Tensor
    d_sigma: torch.Tensor

    @classmethod
    def at(cls, process: GaussianPath, t, need_derivatives: bool = True) -> "PathCoefficients":
        t = _as_time(t)
        a, s = process.alpha_sigma(t)
        if need_derivatives:
            da, ds = process.derivatives(t)
        else:
            da = ds = torch.full_like(t, float("nan"))
        return cls(a, s, da, ds)


def to_x0(kind: str, prediction: torch.Tensor, x_t: torch.Tensor, c: PathCoefficients) -> torch.Tensor:
    """E[x0 | x_t] from x_t and a prediction of `kind` (all a sampler needs)."""
    a, s = expand(c.alpha, x_t), expand(c.sigma, x_t)
    if kind == "eps":
        return (x_t - s * prediction) / a
    if kind == "x0":
        return prediction
    if kind == "v":
        return (a * x_t - s * prediction) / (a**2 + s**2)
    if kind == "score":
        return (x_t + s**2 * prediction) / a
    if kind == "velocity":
        da, ds = expand(c.d_alpha, x_t), expand(c.d_sigma, x_t)
        return (ds * x_t - s * prediction) / (a * ds - s * da)  # a ds - s da > 0: log-SNR decreases
    check_prediction(kind)


def to_x0_eps(kind: str, prediction: torch.Tensor, x_t: torch.Tensor, c: PathCoefficients):
    """Solve for (x0, eps) from x_t and a prediction of `kind`. eps comes from its own formula,
    not from x0, which would amplify x0's rounding by alpha/sigma at low noise."""
    x0 = to_x0(kind, prediction, x_t, c)
    a, s = expand(c.alpha, x_t), expand(c.sigma, x_t)
    if kind == "eps":
        return x0, prediction
    if kind == "x0":
        return x0, (x_t - a * x0) / s
    if kind == "v":
        return x0, (s * x_t + a * prediction) / (a**2 + s**2)
    if kind == "score":
        return x0, -s * prediction
    da, ds = expand(c.d_alpha, x_t), expand(c.d_sigma, x_t)
    return x0, (a * prediction - da * x_t) / (a * ds - s * da)


def from_x0_eps(kind: str, x0: torch.Tensor, eps: torch.Tensor, c: PathCoefficients) -> torch.Tensor:
    """The quantity `kind` for a given (x0, eps) pair: the training target of that prediction."""
    a, s = expand(c.alpha, x0), expand(c.sigma, x0)
    if kind == "eps":
        return eps
    if kind == "x0":
        return x0
    if kind == "v":
        return a * eps - s * x0
    if kind == "score":
        return -eps / s
    if kind == "velocity":
        return expand(c.d_alpha, x0) * x0 + expand(c.d_sigma, x0) * eps
    check_prediction(kind)


def convert(prediction: torch.Tensor, source: str, target: str, x_t: torch.Tensor, t,
            process: GaussianPath) -> torch.Tensor:
    """Convert a prediction of kind `source` made at (x_t, t) into kind `target`."""
    check_prediction(source), check_prediction(target)
    if source == target:
        return prediction
    needs = "velocity" in (source, target)
    c = PathCoefficients.at(process, t, need_derivatives=needs)
    return from_x0_eps(target, *to_x0_eps(source, prediction, x_t, c), c)


def x0_error_scale(kind: str, c: PathCoefficients) -> torch.Tensor:
    """|d x0 / d prediction| at fixed x_t: an error e in the prediction is an error
    x0_error_scale * e in x0. Converts a loss weighting stated on the x0 error into the
    weighting of the squared error in the prediction's own space."""
    a, s = c.alpha, c.sigma
    if kind == "eps":
        return s / a
    if kind == "x0":
        return torch.ones_like(a)
    if kind == "v":
        return s / (a**2 + s**2)
    if kind == "score":
        return s**2 / a
    if kind == "velocity":
        return s / (a * c.d_sigma - s * c.d_alpha)
    check_prediction(kind)
