"""Denoising losses: one function, three independent choices.

    loss = E_{t ~ time sampling, eps ~ N(0, I)} [ w(t) || model(x_t, t) - target ||^2 ]

- `prediction`: what the model outputs and so the regression target (eps, x0, v, score, velocity).
- `weighting`: w(t). Weightings are stated on the x0 error, w_x0(t), and carried into the
  prediction's own space by the Jacobian of the conversion: the error in x0 is
  `x0_error_scale(prediction) * error in prediction`, so w = w_x0 * scale^2. The exception is
  'simple', the unweighted mean squared error in the prediction's own space (DDPM's L_simple for
  eps, plain flow matching for velocity).
    simple     w = 1 on the prediction itself
    min_snr    w_x0 = min(SNR, gamma)                  (Hang et al. 2023; = min(SNR, gamma)/SNR for eps)
    edm        w_x0 = (rho^2 + sd^2) / (rho sd)^2     (Karras et al. 2022, rho = sigma/alpha)
- `time_sampling`: how t is drawn.
    uniform       t ~ U(t_min, 1); discrete processes draw their integer steps uniformly
    log_normal    log rho ~ N(p_mean, p_std^2), EDM's noise-level distribution
    logit_normal  t = sigmoid(N(logit_mean, logit_std^2)), the flow-matching choice of Esser et al. 2024
    uniform_log_snr  log-SNR uniform over the process's range [t_min, t_max] (cut to |log-SNR| <= 15
                  where an end is infinite): every decade of noise gets the same share; the
                  noise-aware classifier's default (training/classifier.py says why)
  `time_options` sets those parameters; a larger p_mean or logit_mean trains more at high noise,
  where a sample's layout is decided.

A loss object holds only these choices; calling it is a pure function of (model, x0, cond, generator).
An optional `mask` (True or 1 at real elements, broadcastable to x0) leaves padding out: each
sample's squared error is averaged over its own real elements, so a short audio clip or a small
molecule in a padded batch is weighted as if it had been alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .parameterization import PathCoefficients, check_prediction, from_x0_eps, x0_error_scale
from .process import DiscreteVP, EDM, GaussianPath, expand

WEIGHTINGS = ("simple", "min_snr", "edm")
TIME_SAMPLINGS = ("uniform", "log_normal", "logit_normal", "uniform_log_snr")
# |log-SNR| beyond this is clean or pure noise for any data of about unit scale (sigma/alpha below
# e^-7.5 ~ 6e-4 or above e^7.5 ~ 1800); it bounds the infinite end of Flow's range (t = 1).
LOG_SNR_BOUND = 15.0


# Each time sampling's own parameters, which `time_options` may set (the defaults: EDM's -1.2
# and 1.2, and the standard logit-normal).
TIME_OPTIONS = {"uniform": (), "log_normal": ("p_mean", "p_std"), "logit_normal": ("logit_mean", "logit_std"),
                "uniform_log_snr": ()}


def check_time_options(method: str, options: object) -> None:
    """Raise unless `options` is a dict of the parameters `method` has, each a finite number
    (a standard deviation a positive one)."""
    if method not in TIME_SAMPLINGS:
        raise ValueError(f"unknown time sampling {method!r}; choose one of {TIME_SAMPLINGS}")
    if not isinstance(options, dict):
        raise ValueError(f"time_options must be a dict, got {options!r}")
    allowed = TIME_OPTIONS[method]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"time sampling {method!r} has no option(s) {unknown}; "
                         f"it takes {list(allowed) or 'none'}")
    for name, value in options.items():
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or (name.endswith("std") and value <= 0):
            kind = "a positive number" if name.endswith("std") else "a finite number"
            raise ValueError(f"time option {name} must be {kind}, got {value!r}")


def sample_times(process: GaussianPath, batch: int, method: str = "uniform",
                 generator: torch.Generator | None = None, *, p_mean: float = -1.2,
                 p_std: float = 1.2, logit_mean: float = 0.0, logit_std: float = 1.0) -> torch.Tensor:
    """Draw training times, float64 of shape [batch] on the generator's device (CPU by default)."""
    device = generator.device if generator is not None else "cpu"
    draw = lambda fn: fn(batch, generator=generator, device=device, dtype=torch.float64)  # noqa: E731
    if method == "uniform":
        if isinstance(process, DiscreteVP):
            n = torch.randint(0, process.num_steps, (batch,), generator=generator, device=device)
            return process.timestep_to_t(n).to(device)
        t_min = process.t_min
        return t_min + (process.t_max - t_min) * draw(torch.rand)
    if method == "log_normal":
        rho = torch.exp(p_mean + p_std * draw(torch.randn))
        return process.t_from_sigma_ratio(rho).clamp(1e-6, process.t_max)
    if method == "uniform_log_snr":
        ends = process.log_snr(torch.tensor([process.t_max, process.t_min], dtype=torch.float64))
        low, high = (float(v) for v in ends.clamp(-LOG_SNR_BOUND, LOG_SNR_BOUND))
        t = process.t_from_log_snr(low + (high - low) * draw(torch.rand))
        return t.clamp(process.t_min, process.t_max)
    if method == "logit_normal":
        t = torch.sigmoid(logit_mean + logit_std * draw(torch.randn))
        return t.clamp(1e-6, process.t_max)
    raise ValueError(f"unknown time sampling {method!r}; choose one of {TIME_SAMPLINGS}")


def x0_weight(weighting: str, c: PathCoefficients, gamma: float, sigma_data: float) -> torch.Tensor:
    """w_x0(t) for the weightings stated on the x0 error."""
    snr = (c.alpha / c.sigma) ** 2
    if weighting == "min_snr":
        return snr.clamp(max=gamma)
    if weighting == "edm":
        rho2 = 1 / snr
        return (rho2 + sigma_data**2) / (rho2 * sigma_data**2)
    raise ValueError(f"unknown weighting {weighting!r}; choose one of {WEIGHTINGS}")


@dataclass
class DenoisingLoss:
    """The denoising objective for one process and prediction (see the module docstring)."""

    process: GaussianPath
    prediction: str = "eps"
    weighting: str = "simple"
    time_sampling: str = "uniform"
    gamma: float = 5.0  # min-SNR's clamp
    sigma_data: float | None = None  # EDM weighting; defaults to the EDM process's, else 0.5
    time_options: dict = field(default_factory=dict)  # p_mean, p_std, logit_mean, logit_std

    def __post_init__(self):
        check_prediction(self.prediction)
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {self.weighting!r}; choose one of {WEIGHTINGS}")
        check_time_options(self.time_sampling, self.time_options)
        if self.sigma_data is None:
            self.sigma_data = self.process.sigma_data if isinstance(self.process, EDM) else 0.5

    def weight(self, c: PathCoefficients) -> torch.Tensor:
        """w(t) on the squared error of the prediction, float64 [B]."""
        if self.weighting == "simple":
            return torch.ones_like(c.alpha)
        scale = x0_error_scale(self.prediction, c)
        return x0_weight(self.weighting, c, self.gamma, self.sigma_data) * scale**2

    def __call__(self, model, x0: torch.Tensor, cond: dict | None = None,
                 generator: torch.Generator | None = None, *, mask: torch.Tensor | None = None,
                 per_sample: bool = False) -> torch.Tensor:
        """Mean weighted loss over the batch (or the per-sample losses [B]); `mask` as in the
        module docstring."""
        if x0.ndim < 2:
            raise ValueError(f"x0 must be batched [B, ...], got shape {tuple(x0.shape)}")
        if mask is not None:
            mask = check_mask(mask, x0)
        t = sample_times(self.process, x0.shape[0], self.time_sampling, generator, **self.time_options)
        t = t.to(x0.device)
        noise_device = generator.device if generator is not None else x0.device
        eps = torch.randn(x0.shape, generator=generator, device=noise_device, dtype=x0.dtype).to(x0.device)
        c = PathCoefficients.at(self.process, t, need_derivatives=self.prediction == "velocity")
        x_t = expand(c.alpha, x0) * x0 + expand(c.sigma, x0) * eps
        target = from_x0_eps(self.prediction, x0, eps, c)
        out = model(x_t, t, **(cond or {}))
        if out.shape != target.shape:
            raise ValueError(f"model output shape {tuple(out.shape)} != target shape {tuple(target.shape)}")
        # at least float32 (bf16 outputs), float64 when the data is
        dtype = torch.promote_types(out.dtype, torch.float32)
        squared = (out.to(dtype) - target.to(dtype)) ** 2
        if mask is None:
            error = squared.flatten(1).mean(1)
        else:
            real = mask.to(dtype).expand_as(squared).flatten(1)
            error = (squared.flatten(1) * real).sum(1) / real.sum(1)
        per = self.weight(c).to(squared.device, dtype) * error
        return per if per_sample else per.mean()


def check_mask(mask: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """A loss mask as given, once it is known to broadcast to x0 and to keep at least one element
    of every sample (a sample of padding only has no error to average)."""
    if not isinstance(mask, torch.Tensor) or mask.ndim != x0.ndim or mask.shape[0] != x0.shape[0]:
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"the loss mask must be a tensor [B, ...] of x0's rank, broadcastable to x0 "
                         f"{tuple(x0.shape)}; got {shape}")
    try:
        torch.broadcast_shapes(mask.shape, x0.shape)
    except RuntimeError:
        raise ValueError(f"the loss mask {tuple(mask.shape)} does not broadcast to x0 {tuple(x0.shape)}") from None
    if not (mask.flatten(1) != 0).any(1).all():
        raise ValueError("the loss mask leaves a sample with no real element")
    return mask.to(x0.device)
