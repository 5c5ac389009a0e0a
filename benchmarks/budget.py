"""Training under a CPU-time budget: the clock every quality-per-CPU-minute benchmark uses.

The budget is the process's CPU time (user + system, all threads together), so a run that
shares the machine with other work gets the same compute, only later; wall time is reported
beside it. With torch on 2 threads, 10 CPU-minutes is about 5 wall minutes when run alone.

Import this module before torch: it makes OpenMP's idle threads sleep instead of spinning. When
the machine is shared, a spinning thread that waits for a descheduled sibling burns CPU time
for nothing; on 2 busy cores we measured 5.2 CPU-seconds per training step spinning against
0.42 sleeping, the same step.
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import time  # noqa: E402
from dataclasses import dataclass

import torch  # noqa: E402


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass


@dataclass
class Spent:
    steps: int
    cpu_seconds: float
    wall_seconds: float


def train_for(step, cpu_minutes: float, max_steps: int | None = None) -> Spent:
    """Call `step()` until the process has used `cpu_minutes` of CPU time (or max_steps)."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    steps = 0
    while time.process_time() - cpu0 < cpu_minutes * 60 and (max_steps is None or steps < max_steps):
        step()
        steps += 1
    return Spent(steps, time.process_time() - cpu0, time.perf_counter() - wall0)


CALIBRATION_STEPS = 10


def train_budgeted(step, cpu_minutes: float, set_horizon, fixed_steps: int | None = None) -> Spent:
    """Train for `cpu_minutes` of CPU time, telling `set_horizon(steps)` how many steps that will be
    (estimated from the first CALIBRATION_STEPS, which count toward the budget) so that a
    learning-rate decay ends with the budget; or exactly `fixed_steps` steps when given."""
    if fixed_steps is not None:
        set_horizon(fixed_steps)
        return train_for(step, math.inf, max_steps=fixed_steps)
    first = train_for(step, cpu_minutes, max_steps=CALIBRATION_STEPS)
    set_horizon(max(first.steps, int(cpu_minutes * 60 * first.steps / first.cpu_seconds)))
    rest = train_for(step, cpu_minutes - first.cpu_seconds / 60)
    return Spent(first.steps + rest.steps, first.cpu_seconds + rest.cpu_seconds, first.wall_seconds + rest.wall_seconds)


def timed(fn):
    """(fn(), CPU seconds, wall seconds)."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - cpu0, time.perf_counter() - wall0
