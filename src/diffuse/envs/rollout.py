"""Running a policy in Push-T with receding-horizon execution, and what each episode scored.

A policy here is any callable `policy(history, key) -> actions`: `history` the last `obs_horizon`
raw observations [To, 5] (the oldest first; at the start of an episode the first observation
repeated, as the training windows pad), `key` an integer naming this planning call (so a
stochastic policy draws from a stream of (episode seed, call) alone), and `actions` a chunk
[Tp, 2] of raw targets in pixels whose rows x[To - 1 : To - 1 + Ta] belong to the latest
observation and the Ta steps after it (Chi et al. 2023: plan 16, execute 8, plan again).

`rollout(policy, seeds, ...)` plays one episode per environment seed and returns an
`EpisodeResult` each: the maximum coverage, success (coverage >= SUCCESS_COVERAGE at any step;
the episode ends there), the length and the approach mode `experts.approach_mode` reads off the
trajectory (None when the agent never touched the block). `summarise` gives the table's numbers;
`write_gif` an animation of frames from `PushT.render`.
"""

from __future__ import annotations

import io
from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..files import write_bytes_atomic
from ..randomness import mixed_seed
from .experts import MODES, approach_mode
from .pusht import MAX_STEPS, SUCCESS_COVERAGE, PushT

Policy = Callable[[np.ndarray, int], np.ndarray]


@dataclass(frozen=True)
class EpisodeResult:
    seed: int
    max_coverage: float
    success: bool
    steps: int
    mode: int | None             # 0 clockwise, 1 counter-clockwise, None: never touched the block
    observations: np.ndarray     # [steps + 1, 5]


def play(policy: Policy, seed: int, obs_horizon: int, action_horizon: int, max_steps: int = MAX_STEPS,
         frames: list | None = None, frame_size: int = 256) -> EpisodeResult:
    """One episode of environment seed `seed`; with `frames` a list, each state's picture is
    appended to it."""
    if min(obs_horizon, action_horizon, max_steps) < 1:
        raise ValueError(f"obs_horizon, action_horizon and max_steps must be positive, got "
                         f"{obs_horizon}, {action_horizon}, {max_steps}")
    env = PushT(max_steps)
    observation = env.reset(seed)
    history = deque([observation] * obs_horizon, maxlen=obs_horizon)
    observations, best, success, plan = [observation], 0.0, False, 0
    if frames is not None:
        frames.append(env.render(frame_size))
    while not success and env.steps < max_steps:
        chunk = np.asarray(policy(np.stack(history), mixed_seed(seed, plan)), dtype=float)
        plan += 1
        if chunk.ndim != 2 or chunk.shape[1] != 2 or len(chunk) < obs_horizon - 1 + action_horizon:
            raise ValueError(f"a policy returns actions [T, 2] with T >= obs_horizon - 1 + action_horizon = "
                             f"{obs_horizon - 1 + action_horizon}, got shape {chunk.shape}")
        for action in chunk[obs_horizon - 1: obs_horizon - 1 + action_horizon]:
            step = env.step(action)
            observation = step.observation
            history.append(observation)
            observations.append(observation)
            best = max(best, step.info["coverage"])
            success = step.info["success"]
            if frames is not None:
                frames.append(env.render(frame_size))
            if step.done:
                break
    trajectory = np.array(observations)
    return EpisodeResult(int(seed), float(best), bool(success), env.steps, approach_mode(trajectory), trajectory)


def rollout(policy: Policy, seeds: Sequence[int], obs_horizon: int, action_horizon: int,
            max_steps: int = MAX_STEPS, gif=None, frame_size: int = 256) -> list[EpisodeResult]:
    """An episode per seed (see `play`); with `gif` a path, the first episode is also written there
    as an animated GIF."""
    results = []
    for k, seed in enumerate(seeds):
        frames = [] if gif is not None and k == 0 else None
        results.append(play(policy, seed, obs_horizon, action_horizon, max_steps, frames, frame_size))
        if frames is not None:
            write_gif(frames, gif)
    return results


def summarise(results: Sequence[EpisodeResult]) -> dict:
    """Success rate, mean maximum coverage, mean length, and the share of episodes in each approach
    mode (and in none: never touched the block)."""
    if not results:
        raise ValueError("no episodes to summarise")
    modes = [r.mode for r in results]
    shares = {name: modes.count(k) / len(modes) for k, name in enumerate(MODES)}
    return {"episodes": len(results), "success_rate": float(np.mean([r.success for r in results])),
            "mean_max_coverage": float(np.mean([r.max_coverage for r in results])),
            "mean_steps": float(np.mean([r.steps for r in results])),
            "mode_shares": {**shares, "none": modes.count(None) / len(modes)},
            "success_coverage": SUCCESS_COVERAGE}


def write_gif(frames: Sequence[np.ndarray], path, frame_ms: int = 100) -> None:
    """An animated GIF of RGB frames [H, W, 3] uint8 (100 ms a frame: the control rate), written
    atomically."""
    from PIL import Image

    if not frames:
        raise ValueError("no frames to write")
    images = [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=frame_ms, loop=0)
    write_bytes_atomic(path, buffer.getvalue())
