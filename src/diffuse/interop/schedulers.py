"""A diffusers scheduler config as what it describes: our process, the model's prediction, the
timestep the network was trained to read, and the model's own step schedule.

This reads the JSON only (no diffusers import), so a folder's noise process is known before any
weights are. Two families:

  DDPM-family schedulers (DDPM, DDIM, PNDM, Euler, Heun, DPM-Solver, UniPC, DEIS, LMS, ...) all
  describe one discrete process: N betas (given, or named: linear, scaled_linear,
  squaredcos_cap_v2), optionally rescaled to zero terminal SNR. That is our DiscreteVP, whose
  t = (n + 1) / N sits exactly on training step n, so the network reads timestep n = N t - 1.
  Which scheduler class the folder names only chooses diffusers' sampler, not the process.
  flow-matching schedulers describe x_t = (1 - t) x0 + t eps (our Flow) with the network trained
  on timestep 1000 t and predicting the velocity eps - x0; their `shift` (fixed, or Flux-style
  dynamic, from the image's sequence length) is a step schedule, not another process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..process import DiscreteVP, Flow, GaussianPath, named_betas

PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0", "flow_prediction": "velocity"}
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")
class SchedulerError(ValueError):
    """A scheduler config that describes something we cannot sample exactly."""


@dataclass(frozen=True)
class FlowMatchSchedule:
    """diffusers' flow-matching step schedule as a schedule(process, steps, t_start) -> times.

    A base grid linspace(t_start, end, steps), end = the scheduler's smallest training sigma (or
    1/steps, as the Flux pipeline passes its own sigmas), then the resolution shift
    t -> s t / (1 + (s - 1) t) (SD3, eq. 23; Flux's exponential shift with mu is s = e^mu), then,
    where configured, the stretch that makes the last sigma `terminal`. The sampler's final step
    goes to t = 0, as diffusers' appended zero sigma.
    """

    shift: float = 1.0
    end: float | str = "training"   # "training": sigma_min of the scheduler; "steps": 1 / steps
    num_train_timesteps: int = 1000
    terminal: float | None = None
    shifted_training_sigmas: bool = True  # without dynamic shifting the training sigmas are shifted once already

    def shifted(self, t: np.ndarray) -> np.ndarray:
        return self.shift * t / (1 + (self.shift - 1) * t)

    def __call__(self, process: GaussianPath, steps: int, t_start: float) -> torch.Tensor:
        if self.end == "steps":
            end = 1.0 / steps
        else:
            end = 1.0 / self.num_train_timesteps
            end = float(self.shifted(np.float64(end))) if self.shifted_training_sigmas else end
        t = self.shifted(np.linspace(t_start, end, steps, dtype=np.float64)) if steps > 1 else \
            self.shifted(np.array([t_start], dtype=np.float64))
        if self.terminal is not None and t[-1] < 1:  # (one step at t = 1 has nothing to stretch)
            scale = (1 - t[-1]) / (1 - self.terminal)
            t = 1 - (1 - t) / scale
        return torch.from_numpy(t)


@dataclass(frozen=True)
class SchedulerSpec:
    """What a scheduler config means for sampling with our code."""

    name: str                      # the scheduler class the folder names
    process: GaussianPath
    prediction: str                # ours: eps, v, x0, velocity
    timestep_scale: float          # network timestep = timestep_scale * t + timestep_shift
    timestep_shift: float
    clip_sample: float | None      # clip the x0 estimate to [-c, c] (DDPM/DDIM's clip_sample)
    schedule: Callable | str       # the model's own step schedule, or "auto"

    def timestep(self, t: torch.Tensor) -> torch.Tensor:
        """Our time t -> the (fractional) timestep the diffusers network reads."""
        return t * self.timestep_scale + self.timestep_shift


def _prediction(config: dict, default: str) -> str:
    kind = config.get("prediction_type", default)
    if kind not in PREDICTIONS:
        raise SchedulerError(f"unknown prediction_type {kind!r}; diffusers' are {sorted(PREDICTIONS)}")
    return PREDICTIONS[kind]


def read_scheduler(config: dict, *, image_seq_len: int | None = None, pipeline: str = "") -> SchedulerSpec:
    """A scheduler_config.json (as a dict) -> SchedulerSpec. `image_seq_len` (the denoiser's
    tokens per image) sets the shift of a dynamically shifted flow schedule; `pipeline` (the class
    in model_index.json) says whose schedule conventions apply (the Flux pipeline's base grid)."""
    if not isinstance(config, dict) or "_class_name" not in config:
        raise SchedulerError("a scheduler config is a JSON object with a \"_class_name\"")
    name = config["_class_name"]
    n_train = int(config.get("num_train_timesteps", 1000))
    if name in FLOW_SCHEDULERS:
        return _flow(config, name, n_train, image_seq_len, pipeline)
    if config.get("thresholding"):
        raise SchedulerError(f"{name} uses dynamic thresholding, which our samplers do not apply; "
                             "set thresholding to false to sample without it")
    if "beta_schedule" not in config and "trained_betas" not in config:
        raise SchedulerError(f"{name} is neither a DDPM-family scheduler (no betas) nor flow matching; "
                             f"supported: DDPM-family schedulers and {', '.join(FLOW_SCHEDULERS)}")
    if config.get("trained_betas") is not None:
        betas = torch.tensor(config["trained_betas"], dtype=torch.float64)
    else:
        schedule = config.get("beta_schedule", "linear")
        try:
            betas = named_betas(schedule, n_train, config.get("beta_start", 1e-4), config.get("beta_end", 0.02))
        except ValueError as e:
            raise SchedulerError(f"{name}: {e}") from None
    rescale = bool(config.get("rescale_betas_zero_snr", False))
    process = DiscreteVP(betas, rescale_zero_terminal_snr=rescale)
    clip = float(config.get("clip_sample_range", 1.0)) if config.get("clip_sample", False) else None
    return SchedulerSpec(name, process, _prediction(config, "epsilon"), float(process.num_steps), -1.0, clip, "auto")


def _flow(config: dict, name: str, n_train: int, image_seq_len: int | None, pipeline: str) -> SchedulerSpec:
    for option in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas",
                   "stochastic_sampling"):
        if config.get(option):
            raise SchedulerError(f"{name} with {option}=true is not supported; sample with our schedules instead")
    dynamic = bool(config.get("use_dynamic_shifting", False))
    if dynamic:
        if image_seq_len is None:
            raise SchedulerError(f"{name} shifts its schedule by the image's sequence length; give image_seq_len")
        base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
        base_shift, max_shift = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
        mu = base_shift + (max_shift - base_shift) * (image_seq_len - base_len) / (max_len - base_len)
        shift = math.exp(mu) if config.get("time_shift_type", "exponential") == "exponential" else mu
    else:
        shift = float(config.get("shift", 1.0))
    schedule = FlowMatchSchedule(shift=shift, end="steps" if pipeline.startswith("Flux") else "training",
                                 num_train_timesteps=n_train, terminal=config.get("shift_terminal"),
                                 shifted_training_sigmas=not dynamic)
    return SchedulerSpec(name, Flow(), "velocity", float(n_train), 0.0, None, schedule)


def scheduler_times(process: DiscreteVP, timesteps) -> torch.Tensor:
    """A DDPM-family scheduler's integer `timesteps` (after set_timesteps) as our times
    t = (n + 1) / N: any diffusers schedule reproduced exactly, e.g. DDIM's own spacings."""
    return process.timestep_to_t(torch.as_tensor(timesteps).to(torch.float64))
