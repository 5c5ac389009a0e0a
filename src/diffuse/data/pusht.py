"""Push-T demonstrations from the scripted expert, as Diffusion Policy's training examples.

The expert (diffuse.envs.experts) plays the episodes of seeds 0 .. episodes-1; the last tenth
(HOLDOUT_FRACTION) of them is the test split, the rest the train split. Episodes are generated
once and cached as an .npz (arrays only, no pickles) under CACHE/pusht, where CACHE is `cache_dir`
if given, else $DIFFUSE_CACHE, else ~/.cache/diffuse; the file's name covers everything the
episodes depend on (the expert's version, the episode count, pymunk's version), so a stale cache
is never read.

An example is one window of an episode, as in Chi et al. (2023):
  "obs"     [obs_horizon, 5]      the observations at steps s .. s + To - 1
  "x"       [prediction_horizon, 2] the actions at steps s .. s + Tp - 1 (what the model predicts)
  "mode"    the expert's mode for the episode (0 clockwise, 1 counter-clockwise; see experts.py)
  "episode" the episode's seed
with windows starting from s = -(To - 1) to T - Tp + (Ta - 1) and indices outside the episode
clamped to its first or last step (the original's padding), so every step is a window's "now".
At run time a policy sees the last To observations and executes x[To - 1 : To - 1 + Ta] (the
action horizon) before it plans again: x[To - 1] is the action for the latest observation.

Both "obs" and "x" are min-max normalised per dimension to [-1, 1]; `data.normaliser` holds the
statistics (JSON-able), to un-normalise a policy's actions and normalise live observations. They
are fitted on all the demonstrations, so both splits lie in [-1, 1].
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..envs import experts
from ..envs.pusht import need_pymunk
from ..files import cache_folder, cached_arrays
from .dataset import TensorDataset, WithColumns
from .splits import HOLDOUT_FRACTION, check_split

# Bump when the expert or the environment changes what an episode of a given seed is.
EXPERT_VERSION = 1
DEFAULT_EPISODES = 200
# The original's horizons at 10 Hz: 2 observations in, 16 actions predicted, 8 executed.
OBS_HORIZON, PREDICTION_HORIZON, ACTION_HORIZON = 2, 16, 8
# Evaluation rollouts use seeds from here on, never a demonstration's.
EVALUATION_SEED = 1_000_000


def default_cache_dir() -> Path:
    return cache_folder("pusht")


@dataclass(frozen=True)
class MinMax:
    """Per-dimension min-max normalisation to [-1, 1]. A dimension that never varies maps to 0."""

    low: tuple[float, ...]
    high: tuple[float, ...]

    @classmethod
    def fit(cls, values: np.ndarray) -> "MinMax":
        values = np.asarray(values, dtype=np.float64).reshape(-1, np.shape(values)[-1])
        return cls(tuple(values.min(0).tolist()), tuple(values.max(0).tolist()))

    def _scale(self, like):
        low, high = (torch.tensor(v, dtype=torch.float64) if torch.is_tensor(like) else np.asarray(v)
                     for v in (self.low, self.high))
        where = torch.where if torch.is_tensor(like) else np.where
        # A constant dimension would divide by zero: give it a span of 2 centred on its value.
        constant = high <= low
        return where(constant, low - 1, low), where(constant, 2.0, high - low)

    def normalise(self, values):
        """values [..., D] (numpy or torch) -> [-1, 1] on the fitted range, same type and dtype."""
        self._check(values)
        low, span = self._scale(values)
        out = (values - low) / span * 2 - 1
        return out.to(values.dtype) if torch.is_tensor(values) else out

    def unnormalise(self, values):
        """The inverse of `normalise`."""
        self._check(values)
        low, span = self._scale(values)
        out = (values + 1) / 2 * span + low
        return out.to(values.dtype) if torch.is_tensor(values) else out

    def _check(self, values) -> None:
        if values.shape[-1] != len(self.low):
            raise ValueError(f"the normaliser has {len(self.low)} dimensions; values have shape {tuple(values.shape)}")

    def to_dict(self) -> dict:
        return {"low": list(self.low), "high": list(self.high)}

    @classmethod
    def from_dict(cls, d: dict) -> "MinMax":
        low, high = d.get("low"), d.get("high")
        if not isinstance(low, list) or not isinstance(high, list) or len(low) != len(high) or not low:
            raise ValueError(f"a min-max normaliser is {{'low': [...], 'high': [...]}} of equal length, got {d!r}")
        return cls(tuple(float(v) for v in low), tuple(float(v) for v in high))


@dataclass(frozen=True)
class Normaliser:
    """The statistics a policy needs: one MinMax for observations, one for actions."""

    obs: MinMax
    action: MinMax

    def to_dict(self) -> dict:
        return {"obs": self.obs.to_dict(), "action": self.action.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "Normaliser":
        if not isinstance(d, dict) or set(d) != {"obs", "action"}:
            raise ValueError(f"a normaliser is {{'obs': ..., 'action': ...}}, got {d!r}")
        return cls(MinMax.from_dict(d["obs"]), MinMax.from_dict(d["action"]))


@dataclass(frozen=True)
class Horizons:
    obs: int = OBS_HORIZON
    prediction: int = PREDICTION_HORIZON
    action: int = ACTION_HORIZON

    def __post_init__(self):
        if min(self.obs, self.prediction, self.action) < 1:
            raise ValueError(f"horizons must be positive, got {self}")
        if self.obs - 1 + self.action > self.prediction:
            raise ValueError(f"the executed actions x[obs - 1 : obs - 1 + action] must fit in the prediction: "
                             f"obs {self.obs} - 1 + action {self.action} > prediction {self.prediction}")


class Demonstrations(WithColumns):
    """Windows of expert episodes (see the module docstring), with their `normaliser` and
    `horizons`."""

    def __init__(self, base: TensorDataset, normaliser: Normaliser, horizons: Horizons, **columns: torch.Tensor):
        super().__init__(base, **columns)
        self.normaliser, self.horizons = normaliser, horizons

    def subset(self, index, name: str) -> "Demonstrations":
        part = super().subset(index, name)
        return Demonstrations(part.base, self.normaliser, self.horizons, **part.columns)


@dataclass(frozen=True)
class Recorded:
    """Raw expert episodes, concatenated: observations [sum(T + 1), 5] and actions [sum(T), 2]."""

    seeds: np.ndarray        # [E] int64
    modes: np.ndarray        # [E] int64
    lengths: np.ndarray      # [E] int64: actions per episode
    observations: np.ndarray
    actions: np.ndarray
    max_coverage: np.ndarray  # [E]

    def episode(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(observations [T + 1, 5], actions [T, 2]) of episode k."""
        a = int(self.lengths[:k].sum())
        t = int(self.lengths[k])
        return self.observations[a + k: a + k + t + 1], self.actions[a: a + t]


def record(seeds) -> Recorded:
    """The expert's episodes for these environment seeds."""
    episodes = [experts.expert_episode(int(s)) for s in seeds]
    return Recorded(np.asarray(seeds, dtype=np.int64), np.array([e.mode for e in episodes], dtype=np.int64),
                    np.array([len(e.actions) for e in episodes], dtype=np.int64),
                    np.concatenate([e.observations for e in episodes]), np.concatenate([e.actions for e in episodes]),
                    np.array([e.max_coverage for e in episodes]))


def cache_path(episodes: int, cache_dir=None) -> Path:
    key = f"pusht-expert-v{EXPERT_VERSION}-episodes{episodes}-pymunk{need_pymunk().version}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / f"demos-{episodes}-{digest}.npz"


def recorded_episodes(episodes: int = DEFAULT_EPISODES, cache_dir=None) -> Recorded:
    """The expert's episodes of seeds 0 .. episodes-1, from the cache or recorded into it."""
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 2:
        raise ValueError(f"episodes must be an integer of at least 2 (one for each split), got {episodes!r}")
    return cached_arrays(cache_path(episodes, cache_dir), Recorded, lambda: record(range(episodes)))


def windows(observations: np.ndarray, actions: np.ndarray, horizons: Horizons) -> tuple[np.ndarray, np.ndarray]:
    """All training windows of one episode: (obs [W, To, 5], actions [W, Tp, 2])."""
    steps = len(actions)
    starts = np.arange(-(horizons.obs - 1), steps - horizons.prediction + horizons.action)
    if len(starts) == 0:  # an episode shorter than a prediction: one window, padded at the end
        starts = np.array([-(horizons.obs - 1)])
    obs_index = np.clip(starts[:, None] + np.arange(horizons.obs), 0, steps - 1)
    action_index = np.clip(starts[:, None] + np.arange(horizons.prediction), 0, steps - 1)
    return observations[obs_index], actions[action_index]


def load_pusht(split: str = "train", episodes: int = DEFAULT_EPISODES, obs_horizon: int = OBS_HORIZON,
               prediction_horizon: int = PREDICTION_HORIZON, action_horizon: int = ACTION_HORIZON,
               cache_dir: str | None = None) -> Demonstrations:
    """The Push-T demonstrations of one split (see the module docstring)."""
    check_split(split)
    horizons = Horizons(obs_horizon, prediction_horizon, action_horizon)
    recorded = recorded_episodes(episodes, cache_dir)
    normaliser = Normaliser(MinMax.fit(recorded.observations), MinMax.fit(recorded.actions))
    n_test = max(1, round(episodes * HOLDOUT_FRACTION))
    chosen = range(episodes - n_test, episodes) if split == "test" else range(episodes - n_test)
    obs, acts, modes, seeds = [], [], [], []
    for k in chosen:
        o, a = windows(*recorded.episode(k), horizons)
        obs.append(o)
        acts.append(a)
        modes.append(np.full(len(a), recorded.modes[k]))
        seeds.append(np.full(len(a), recorded.seeds[k]))
    x = torch.from_numpy(normaliser.action.normalise(np.concatenate(acts)).astype(np.float32))
    obs = torch.from_numpy(normaliser.obs.normalise(np.concatenate(obs)).astype(np.float32))
    base = TensorDataset(x, name=f"pusht-{split}", modality="sequence")
    return Demonstrations(base, normaliser, horizons, obs=obs, mode=torch.from_numpy(np.concatenate(modes)),
                          episode=torch.from_numpy(np.concatenate(seeds)))
