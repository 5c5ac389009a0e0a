"""Pretrained models from other libraries through our samplers, guidance and likelihoods.

from_diffusers(path)  a local diffusers pipeline folder, or a single-file checkpoint with its
                      config folder, -> Pipeline (diffusers imported on call)
read_scheduler        a diffusers scheduler config -> our process, prediction, timestep, schedule
scheduler_times       a DDPM-family scheduler's timesteps as our times
"""

from .diffusers import DiffusersCodec, DiffusersDenoiser, from_diffusers, is_diffusers_folder, is_pretrained
from .schedulers import FlowMatchSchedule, SchedulerError, SchedulerSpec, read_scheduler, scheduler_times

__all__ = ["DiffusersCodec", "DiffusersDenoiser", "FlowMatchSchedule", "SchedulerError", "SchedulerSpec",
           "from_diffusers", "is_diffusers_folder", "is_pretrained", "read_scheduler", "scheduler_times"]
