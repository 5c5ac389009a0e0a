"""Step schedules: which times a sampler visits.

A schedule turns (process, steps) into `steps` strictly decreasing times t_0 = t_max > ... >= t_min,
in float64. The sampler then takes one last step from t_{steps-1} to clean data (alpha = 1,
sigma = 0), so `steps` is the number of sampler steps.

  uniform   uniform in t
  log_snr   uniform in log-SNR (DPM-Solver's 'logSNR' spacing)
  karras    uniform in rho^(1/r), rho = sigma/alpha, r = 7 (Karras et al. 2022, eq. 5)
  leading, trailing, linspace
            the integer timestep spacings of discrete DDPM schedules (as in DDIM and Lin et al.
            2024, table 2), mapped to t = (n + 1) / N
  an explicit array of times
"""

from __future__ import annotations

import numpy as np
import torch

from ..process import DiscreteVP, GaussianPath

_f64 = torch.float64


def uniform(process: GaussianPath, steps: int) -> torch.Tensor:
    return torch.linspace(process.t_max, process.t_min, steps, dtype=_f64)


def log_snr(process: GaussianPath, steps: int) -> torch.Tensor:
    ends = process.log_snr(torch.tensor([process.t_max, process.t_min], dtype=_f64))
    if not torch.isfinite(ends).all():
        raise ValueError(f"log-SNR is not finite at the ends of {process!r}: {ends.tolist()}; "
                         "use a schedule in t ('uniform', 'trailing') or an explicit array")
    return process.t_from_log_snr(torch.linspace(ends[0], ends[1], steps, dtype=_f64))


def karras(process: GaussianPath, steps: int, rho: float = 7.0) -> torch.Tensor:
    ends = process.sigma(torch.tensor([process.t_max, process.t_min], dtype=_f64)) / \
        process.alpha(torch.tensor([process.t_max, process.t_min], dtype=_f64))
    if not torch.isfinite(ends).all():
        raise ValueError(f"sigma/alpha is not finite at the ends of {process!r}; "
                         "use a schedule in t ('uniform', 'trailing') or an explicit array")
    ramp = torch.linspace(0, 1, steps, dtype=_f64)
    hi, lo = ends[0] ** (1 / rho), ends[1] ** (1 / rho)
    return process.t_from_sigma_ratio((hi + ramp * (lo - hi)) ** rho)


def discrete_timesteps(num_train_steps: int, steps: int, spacing: str, offset: int = 0) -> np.ndarray:
    """Integer DDPM timesteps, descending, for the three spacings in common use."""
    if steps > num_train_steps:
        raise ValueError(f"{steps} steps exceed the {num_train_steps} steps of the discrete schedule")
    if spacing == "leading":
        n = np.arange(steps) * (num_train_steps // steps) + offset
    elif spacing == "trailing":
        n = np.round(np.arange(num_train_steps, 0, -num_train_steps / steps))[::-1] - 1
    elif spacing == "linspace":
        n = np.round(np.linspace(0, num_train_steps - 1, steps))
    else:
        raise ValueError(f"unknown spacing {spacing!r}")
    return n[::-1].astype(np.int64).copy()


def _discrete(spacing: str):
    def schedule(process: GaussianPath, steps: int, offset: int = 0) -> torch.Tensor:
        if not isinstance(process, DiscreteVP):
            raise ValueError(f"the {spacing!r} spacing needs a discrete process (VP.from_betas), "
                             f"got {process!r}")
        n = discrete_timesteps(process.num_steps, steps, spacing, offset)
        return process.timestep_to_t(torch.from_numpy(n))
    schedule.__name__ = spacing
    return schedule


SCHEDULES = {
    "uniform": uniform,
    "log_snr": log_snr,
    "karras": karras,
    "leading": _discrete("leading"),
    "trailing": _discrete("trailing"),
    "linspace": _discrete("linspace"),
}


def make_times(process: GaussianPath, schedule="auto", steps: int | None = None, **options) -> torch.Tensor:
    """The sampling times for a named schedule, or a validated explicit array of times."""
    if isinstance(schedule, str):
        name = process.default_schedule if schedule == "auto" else schedule
        if name not in SCHEDULES:
            raise ValueError(f"unknown schedule {name!r}; choose one of {sorted(SCHEDULES)} "
                             "or pass an array of times")
        if steps is None or int(steps) != steps or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        times = SCHEDULES[name](process, int(steps), **options)
    else:
        times = torch.as_tensor(np.asarray(schedule, dtype=np.float64))
        if steps is not None and times.numel() != steps:
            raise ValueError(f"an explicit schedule of {times.numel()} times was given with steps={steps}")
    times = times.to(_f64).flatten()
    if times.numel() < 1:
        raise ValueError("a schedule needs at least one time")
    if not torch.isfinite(times).all() or (times < 0).any() or (times > 1).any():
        raise ValueError(f"schedule times must lie in [0, 1], got {times.tolist()}")
    if (times[1:] >= times[:-1]).any():
        raise ValueError(f"schedule times must be strictly decreasing, got {times.tolist()}")
    return times
