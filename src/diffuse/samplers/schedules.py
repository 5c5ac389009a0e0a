"""Step schedules: which times a sampler visits.

A schedule turns (process, steps) into `steps` strictly decreasing times t_0 = t_max > ... >= t_min,
in float64. The sampler then takes one last step from t_{steps-1} to clean data (alpha = 1,
sigma = 0), so `steps` is the number of sampler steps. Given a start time t_start < t_max (a
partly noised start, as SDEdit's), a named schedule spaces its steps over [t_min, t_start] the same
way and begins exactly at t_start.

  uniform   uniform in t
  log_snr   uniform in log-SNR (DPM-Solver's 'logSNR' spacing)
  karras    uniform in rho^(1/r), rho = sigma/alpha, r = 7 (Karras et al. 2022, eq. 5)
  leading, trailing, linspace
            the integer timestep spacings of discrete DDPM schedules, as diffusers' multistep
            solvers space them (Lin et al. 2024, table 2), mapped to t = (n + 1) / N
  a callable schedule(process, steps, t_start) -> times (e.g. a pretrained model's own,
            diffuse.interop), or an explicit array of times
"""

from __future__ import annotations

import numpy as np
import torch

from ..process import DiscreteVP, GaussianPath

_f64 = torch.float64


def uniform(process: GaussianPath, steps: int, t_start: float) -> torch.Tensor:
    return torch.linspace(t_start, process.t_min, steps, dtype=_f64)


def log_snr(process: GaussianPath, steps: int, t_start: float) -> torch.Tensor:
    ends = process.log_snr(torch.tensor([t_start, process.t_min], dtype=_f64))
    if not torch.isfinite(ends).all():
        raise ValueError(f"log-SNR is not finite at the ends of {process!r}: {ends.tolist()}; "
                         "use a schedule in t ('uniform', 'trailing') or an explicit array")
    return process.t_from_log_snr(torch.linspace(ends[0], ends[1], steps, dtype=_f64))


def karras(process: GaussianPath, steps: int, t_start: float, rho: float = 7.0) -> torch.Tensor:
    ends = torch.tensor([t_start, process.t_min], dtype=_f64)
    ends = process.sigma(ends) / process.alpha(ends)
    if not torch.isfinite(ends).all():
        raise ValueError(f"sigma/alpha is not finite at the ends of {process!r}; "
                         "use a schedule in t ('uniform', 'trailing') or an explicit array")
    ramp = torch.linspace(0, 1, steps, dtype=_f64)
    hi, lo = ends[0] ** (1 / rho), ends[1] ** (1 / rho)
    return process.t_from_sigma_ratio((hi + ramp * (lo - hi)) ** rho)


def discrete_timesteps(num_train_steps: int, steps: int, spacing: str, offset: int = 0) -> np.ndarray:
    """Integer DDPM timesteps, descending, for the three spacings in common use.

    As in diffusers' multistep solvers (DPMSolverMultistepScheduler, UniPC, DEIS), whose loops
    end, like every sampler here, with a step to clean data: 'leading' and 'linspace' space
    steps + 1 points down to timestep 0 and drop that last one, which the final step replaces;
    'trailing' counts down from the last training step in strides of N / steps. (diffusers'
    DDIM and Euler schedulers space `steps` points and keep timestep 0, spending their last
    evaluation at alpha_bar = 1 - beta_0; pass their timesteps as explicit times to reproduce
    them: diffuse.interop.scheduler_times.)
    """
    if spacing not in ("leading", "trailing", "linspace"):
        raise ValueError(f"unknown spacing {spacing!r}")
    most = num_train_steps if spacing == "trailing" else num_train_steps - 1
    if steps > most:
        raise ValueError(f"{steps} steps exceed the {most} that the {spacing!r} spacing of a "
                         f"{num_train_steps}-step discrete schedule has")
    if spacing == "leading":
        n = np.arange(1, steps + 1) * (num_train_steps // (steps + 1)) + offset
    elif spacing == "trailing":
        n = np.round(np.arange(num_train_steps, 0, -num_train_steps / steps))[::-1] - 1
    else:
        n = np.round(np.linspace(0, num_train_steps - 1, steps + 1))[1:]
    return n[::-1].astype(np.int64).copy()


def _discrete(spacing: str):
    def schedule(process: GaussianPath, steps: int, t_start: float, offset: int = 0) -> torch.Tensor:
        if not isinstance(process, DiscreteVP):
            raise ValueError(f"the {spacing!r} spacing needs a discrete process (VP.from_betas), "
                             f"got {process!r}")
        # the spacing over the training steps up to the start: 0 .. n_start
        top = float(process.t_to_timestep(t_start))
        if abs(top - round(top)) > 1e-9:
            raise ValueError(f"t_start={t_start} is not one of the discrete process's steps t = (n + 1)/"
                             f"{process.num_steps}; use a continuous schedule or start on a step")
        n = discrete_timesteps(round(top) + 1, steps, spacing, offset)
        times = process.timestep_to_t(torch.from_numpy(n))
        if t_start < process.t_max and float(times[0]) != t_start:
            raise ValueError(f"the {spacing!r} spacing does not begin at the top of its range, so it cannot "
                             "start at a given t_start; use 'trailing', 'linspace' or a continuous schedule")
        return times
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


def make_times(process: GaussianPath, schedule="auto", steps: int | None = None, t_start: float | None = None,
               **options) -> torch.Tensor:
    """The sampling times for a named schedule (from t_start, by default the process's t_max), or a
    validated explicit array of times."""
    if t_start is not None:
        t_start = float(t_start)
        if not process.t_min < t_start <= process.t_max:
            raise ValueError(f"t_start must lie in ({process.t_min:g}, {process.t_max:g}], the process's "
                             f"sampling range, got {t_start}")
    if isinstance(schedule, str) or callable(schedule):
        name = process.default_schedule if schedule == "auto" else schedule
        if isinstance(name, str) and name not in SCHEDULES:
            raise ValueError(f"unknown schedule {name!r}; choose one of {sorted(SCHEDULES)} "
                             "or pass an array of times")
        if isinstance(steps, bool) or steps is None or int(steps) != steps or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        start = process.t_max if t_start is None else t_start
        times = torch.as_tensor((SCHEDULES.get(name) if isinstance(name, str) else name)(
            process, int(steps), start, **options)).to(_f64)
        if t_start is not None:  # exactly where the given state is, not its round trip through sigma/alpha
            times[0] = t_start
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
    if t_start is not None and float(times[0]) != t_start:
        raise ValueError(f"an explicit schedule starting at t={float(times[0])} was given with t_start={t_start}; "
                         "its first time is where sampling starts")
    return times
