"""Behaviour cloning by regression: an MLP from the observation history to the action chunk,
trained on the mean squared error. Diffusion Policy's simplest baseline (Chi et al. 2023).

The regressor predicts the conditional mean of the actions. Where the demonstrations take one of
two ways from the same observations (the Push-T expert circles the block either way), the mean
is neither: the policy heads between the modes, into the block. That is the failure a diffusion
policy, which draws one mode or the other, is meant to avoid (tests/test_policy.py shows it on a
1-D toy). Trained by the same engine on the same windows as the diffusion policy; the run keeps
the data's normaliser and horizons for `diffuse.policy`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...configs import option, whole_number
from ...data import Dataset
from ..task import Task, TaskConfig, register
from .demonstrations import policy_state


@dataclass
class BehaviourCloningConfig(TaskConfig):
    kind = "bc"
    hidden: int = option(256, help="width of the MLP's hidden layers")
    depth: int = option(3, help="hidden layers of the MLP")
    obs_dim: int | None = option(None, help="features of the flattened observation history; default: from the data")

    def __post_init__(self):
        whole_number("hidden", self.hidden, 1)
        whole_number("depth", self.depth, 1)
        if self.obs_dim is not None:
            whole_number("obs_dim", self.obs_dim, 1)


def mlp(in_dim: int, hidden: int, depth: int, out_dim: int) -> nn.Sequential:
    """`depth` Linear-Mish layers of width `hidden`, then a linear map to `out_dim`."""
    widths = [in_dim] + [hidden] * depth
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.Mish()]
    return nn.Sequential(*layers, nn.Linear(hidden, out_dim))


def flat_history(obs: Tensor, obs_dim: int) -> Tensor:
    """obs [B, To, Do] (or already [B, To * Do]) -> [B, obs_dim], checked."""
    flat = obs.reshape(len(obs), -1)
    if flat.shape[1] != obs_dim:
        raise ValueError(f"the policy takes observations of {obs_dim} features, got {tuple(obs.shape)}")
    return flat


class ActionRegressor(nn.Module):
    """obs [B, To, Do] -> actions [B, T, D]: an MLP on the flattened history."""

    def __init__(self, obs_dim: int, action_shape: tuple[int, ...], hidden: int, depth: int):
        super().__init__()
        self.obs_dim, self.action_shape = obs_dim, tuple(action_shape)
        self.net = mlp(obs_dim, hidden, depth, math.prod(self.action_shape))

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(flat_history(obs, self.obs_dim)).reshape(len(obs), *self.action_shape)


@register
class BehaviourCloningTask(Task):
    Config = BehaviourCloningConfig
    train_defaults = {"batch_size": 64, "lr": 1e-3, "weight_decay": 1e-6, "warmup_steps": 100, "steps": 3000}

    def __init__(self, config: BehaviourCloningConfig, info, state=None, device=None):
        super().__init__(config, info, state, device)
        if info.modality != "sequence" or "obs" not in info.fields:
            raise ValueError(f"behaviour cloning needs demonstrations (action sequences with observations, e.g. "
                             f"pusht); {info.name!r} holds {info.modality}s with fields {list(info.fields)}")

    def examples(self, data: Dataset) -> Dataset:
        if self.config.obs_dim is None:
            self.config.obs_dim = data.__getitems__([0])["obs"][0].numel()
        self.state.update(policy_state(data))
        return data

    def build(self) -> ActionRegressor:
        c = self.config
        if c.obs_dim is None:
            raise ValueError("obs_dim is decided by the data: call examples(data) before build()")
        return ActionRegressor(c.obs_dim, self.info.shape, c.hidden, c.depth)

    def loss(self, model, batch: dict, generator: torch.Generator) -> Tensor:
        return F.mse_loss(model(batch["obs"]), batch["x"])
