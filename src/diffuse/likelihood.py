"""Exact log-likelihoods through the probability-flow ODE.

Along the probability-flow ODE dx/dt = f(x, t) of a Gaussian path x_t = alpha x0 + sigma eps,

    f(x, t) = E[alpha'(t) x0 + sigma'(t) eps | x_t = x] = alpha' x0_hat + sigma' eps_hat,

the conditional expectation of the path's own velocity, so the ODE carries p_t to p_t' for every
pair of times. The instantaneous change of variables (Chen et al. 2018, Theorem 1) gives
d log p_t(x_t)/dt = -div f(x_t, t), hence (Song et al. 2021, Appendix D.2)

    log p_{t0}(x) = log p_T(x_T) + int_{t0}^{T} div f(x_t, t) dt,

with x_T the end of the ODE started at x at time t0. One adaptive Dormand-Prince solve of the
augmented state (x_t, int div f) gives both terms. The divergence is either exact (one backward
pass per dimension: small data only) or Hutchinson's estimate E_z[z^T (df/dx) z] with one z per
estimator draw held fixed through the whole solve, as in FFJORD (Grathwohl et al. 2019): the
integral then stays a smooth function of t, which the adaptive solver needs, and each draw is an
unbiased estimate of the whole log-likelihood, so their spread gives a standard error.

What is computed is the density of x as a sample of the noised marginal p_{t0}, with t0 =
`process.t_min` by default: the ODE is singular at sigma = 0, so the data density itself is the
limit t0 -> 0 (Song et al. use t0 = 1e-5). The terminal term uses the prior N(0, prior_std^2 I)
that sampling starts from; on processes whose terminal SNR is not exactly zero that is a (tiny)
approximation of p_T, which `prior_log_prob` replaces where it matters (in tests, by the exact
marginal of a Gaussian mixture).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .odeint import dopri5
from .parameterization import check_prediction, convert
from .process import GaussianPath, _as_time

_f64 = torch.float64

DIVERGENCES = ("exact", "hutchinson")
NOISES = ("rademacher", "gaussian")


# ------------------------------------------------------------------------------------------------
# The probability-flow drift and its divergence
# ------------------------------------------------------------------------------------------------


def _drift(model, process: GaussianPath, prediction: str, cond: dict, dtype):
    """f(x, t) = alpha' x0_hat + sigma' eps_hat, from whatever the model predicts."""

    def f(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = model(x.to(dtype), t, **cond)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"the model returned {shape} for an input of shape {tuple(x.shape)}")
        return convert(out.to(_f64), prediction, "velocity", x, t, process)

    return f


def _augmented(f, probes: torch.Tensor | None):
    """The right-hand side of (x, I) with dI/dt = div f: exact when probes is None, otherwise one
    Hutchinson estimate z_j^T (df/dx) z_j per probe z_j (probes: [k, B, ...])."""

    def rhs(t: torch.Tensor, y: tuple) -> tuple:
        x = y[0].detach().requires_grad_(True)
        with torch.enable_grad():
            fx = f(x, t)
            b = x.shape[0]
            if probes is None:
                flat = fx.reshape(b, -1)
                d = flat.shape[1]
                div = torch.zeros(b, dtype=_f64, device=x.device)
                # Row i of the Jacobian of sample n depends on x_n only (the model must not mix
                # samples), so the gradient of the batch sum of f_i gives every sample's d f_i/d x_i.
                for i in range(d):
                    g, = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=i < d - 1)
                    div = div + g.reshape(b, -1)[:, i]
                div = div[None]
            else:
                k = probes.shape[0]
                est = []
                for j in range(k):
                    g, = torch.autograd.grad((fx * probes[j]).sum(), x, retain_graph=j < k - 1)
                    est.append((g * probes[j]).reshape(b, -1).sum(1))
                div = torch.stack(est)
        # The integral's state is [B, k] so that the batch is dimension 0, like x's.
        return fx.detach(), div.detach().T

    return rhs


def _probes(k: int, shape, noise: str, generator, device) -> torch.Tensor:
    z = torch.randn((k,) + tuple(shape), generator=generator, dtype=_f64, device=device)
    if noise == "rademacher":
        z = torch.sign(z)  # a fair coin per entry (a zero has probability zero)
    return z


# ------------------------------------------------------------------------------------------------
# Public API
# ------------------------------------------------------------------------------------------------


def log_likelihood(model, process: GaussianPath, x: torch.Tensor, prediction: str | None = None, *,
                   cond: dict | None = None, divergence: str = "hutchinson",
                   hutchinson_samples: int = 1, noise: str = "rademacher", rtol: float = 1e-5,
                   atol: float = 1e-5, t_start: float | None = None, t_end: float | None = None,
                   prior_log_prob: Callable | None = None,
                   generator: torch.Generator | None = None, method: str = "dopri5") -> dict:
    """log p_{t_start}(x) in nats, by the probability-flow ODE (Song et al. 2021, Appendix D.2).

    model        model(x, t, **cond) -> prediction, t a float64 tensor [B]; it must treat the
                 samples of a batch independently (no batch statistics) and be differentiable
                 in x
    process      the Gaussian path the model was trained on
    x            [B, ...] points at which to evaluate the density (of the noised marginal at
                 t_start; see the module docstring). The ODE state is float64; the model is
                 called in x's dtype.
    prediction   what the model outputs; defaults to `model.prediction`
    divergence   'exact' (D backward passes per evaluation, for small D) or 'hutchinson'
    hutchinson_samples, noise
                 number k of probes z and their law ('rademacher' or 'gaussian'), drawn once
                 from `generator` and fixed through the solve
    rtol, atol   the solver's local error tolerances, on x and on the divergence integral
    t_start      where the density is evaluated; default `process.t_min`; needs sigma > 0
    t_end        where the prior is applied; default `process.t_max`
    prior_log_prob
                 callable x_T -> [B] log p_{t_end}(x_T); default N(0, prior_std^2 I)
    method       only 'dopri5' (adaptive Dormand-Prince 5(4), one step size per sample)

    Returns a dict: 'log_prob' [B] (nats), 'nfe' (batched model calls, each followed by D
    backward passes for exact divergence or k for Hutchinson's), 'x_T' (the ODE's end
    point), 'stderr' [B] (standard error of the Hutchinson estimate, std over the k draws /
    sqrt(k); None for exact divergence or k = 1).
    """
    if prediction is None:
        prediction = getattr(model, "prediction", None)
        if prediction is None:
            raise ValueError("say what the model predicts: prediction='eps' | 'x0' | 'v' | 'score' | 'velocity'")
    check_prediction(prediction)
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; choose one of {DIVERGENCES}")
    if noise not in NOISES:
        raise ValueError(f"unknown noise {noise!r}; choose one of {NOISES}")
    if method != "dopri5":
        raise ValueError(f"unknown method {method!r}; only 'dopri5' is implemented")
    if isinstance(hutchinson_samples, bool) or not isinstance(hutchinson_samples, int) \
            or hutchinson_samples < 1:
        raise ValueError(f"hutchinson_samples must be a positive integer, got {hutchinson_samples!r}")
    if divergence == "exact" and hutchinson_samples != 1:
        raise ValueError("hutchinson_samples applies to divergence='hutchinson' only")
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be positive, got {rtol}, {atol}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 1 or x.shape[0] < 1:
        raise ValueError("x must be a floating-point tensor of shape [B, ...] with B >= 1")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x has non-finite entries")

    t0 = float(process.t_min if t_start is None else t_start)
    t1 = float(process.t_max if t_end is None else t_end)
    if not 0 <= t0 < t1 <= 1:
        raise ValueError(f"need 0 <= t_start < t_end <= 1, got t_start={t0}, t_end={t1}")
    if float(process.sigma(t0)) <= 0:
        raise ValueError(f"sigma(t_start={t0}) = 0: the probability-flow ODE is singular at clean "
                         "data; start at a small t > 0 (the noised marginal there is the density)")
    if float(process.alpha(t1)) == 0 and prediction in ("eps", "score"):
        raise ValueError(f"at t_end={t1} the process has zero SNR, where an {prediction!r} "
                         "prediction cannot recover x0; use a v, x0 or velocity model, or t_end < 1")

    b, device = x.shape[0], x.device
    probes = None
    if divergence == "hutchinson":
        probes = _probes(hutchinson_samples, x.shape, noise, generator, device)
    k = 1 if probes is None else hutchinson_samples

    rhs = _augmented(_drift(model, process, prediction, cond or {}, x.dtype), probes)
    y0 = (x.detach().to(_f64), torch.zeros(b, k, dtype=_f64, device=device))
    t = _as_time(t0).to(device).expand(b)
    (x_T, integral), nfe = dopri5(rhs, y0, t, t1, rtol, atol)

    if prior_log_prob is None:
        std = process.prior_std
        d = x_T[0].numel()
        prior = (-0.5 * x_T.reshape(b, -1).pow(2).sum(1) / std**2
                 - 0.5 * d * math.log(2 * math.pi * std**2))
    else:
        prior = torch.as_tensor(prior_log_prob(x_T)).to(device=device, dtype=_f64)
        if prior.shape != (b,):
            raise ValueError(f"prior_log_prob must return shape [{b}], got {tuple(prior.shape)}")
    draws = prior[:, None] + integral                                        # [B, k]
    stderr = draws.std(dim=1) / math.sqrt(k) if k > 1 else None
    return {"log_prob": draws.mean(dim=1), "nfe": nfe, "x_T": x_T, "stderr": stderr}


def bits_per_dim(log_prob_nats, dims, *, bins: int = 256, data_range: float = 2.0) -> torch.Tensor:
    """Bits per dimension of discrete data from a continuous log-density, the usual convention.

    Integer data in {0, ..., bins-1} is mapped affinely onto an interval of length `data_range`
    (for 8-bit images scaled to [-1, 1]: bins = 256, data_range = 2), so each discrete value owns
    a cell of width data_range / bins per dimension. With uniform dequantisation, log P(k) >=
    E_u[log p(x)] + D log(data_range / bins) (Jensen; Theis et al. 2016), hence

        bpd = -(log p(x) + D log(data_range / bins)) / (D ln 2)
            = (-log p(x) / D + log(bins / data_range)) / ln 2,

    i.e. -log p(x) / (D ln 2) + 7 for 256 bins on [-1, 1]. A uniform density on [-1, 1]^D gives
    exactly 8 bits. `dims` is D, or the shape of one sample.
    """
    if isinstance(dims, int) and not isinstance(dims, bool):
        d = dims
    else:
        try:
            d = math.prod(int(n) for n in dims)
        except (TypeError, ValueError):
            raise ValueError(f"dims must be an int or a shape, got {dims!r}") from None
    if d < 1:
        raise ValueError(f"dims must be positive, got {dims!r}")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range!r}")
    log_prob = torch.as_tensor(log_prob_nats, dtype=_f64)
    return (-log_prob / d + math.log(bins / data_range)) / math.log(2)


__all__ = ["log_likelihood", "bits_per_dim", "DIVERGENCES", "NOISES"]
