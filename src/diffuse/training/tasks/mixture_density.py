"""A mixture-density policy: an MLP from the observation history to a Gaussian mixture over the
action chunk, trained on its negative log-likelihood. The LSTM-GMM baseline of Diffusion Policy
(Chi et al. 2023, after robomimic, Mandlekar et al. 2021) without the recurrence: the chunk of
16 actions stands in for the LSTM's sequence, as the diffusion policy's does.

Unlike the MSE regressor it can represent two ways round the block, one component each; at run
time it draws a component from the mixture weights (from the planning call's seed) and executes
that component's mean (robomimic's low-noise evaluation: the spread within a component is
noise, not a choice).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...configs import option, whole_number
from ..task import register
from .behaviour_cloning import BehaviourCloningConfig, BehaviourCloningTask, flat_history, mlp

# robomimic's floor on a component's standard deviation: keeps the likelihood bounded.
MIN_STD = 1e-4


@dataclass
class MixtureDensityConfig(BehaviourCloningConfig):
    kind = "mdn"
    components: int = option(5, help="Gaussian components of the mixture (robomimic's GMM: 5)")

    def __post_init__(self):
        super().__post_init__()
        whole_number("components", self.components, 1)


class MixtureDensityPolicy(nn.Module):
    """obs [B, To, Do] -> (log-weights [B, K], means [B, K, T * D], stds [B, K, T * D])."""

    def __init__(self, obs_dim: int, action_shape: tuple[int, ...], hidden: int, depth: int, components: int):
        super().__init__()
        self.obs_dim, self.action_shape, self.components = obs_dim, tuple(action_shape), components
        self.size = math.prod(self.action_shape)
        self.net = mlp(obs_dim, hidden, depth, components * (1 + 2 * self.size))

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.net(flat_history(obs, self.obs_dim))
        k, d = self.components, self.size
        logits, means, raw = out.split([k, k * d, k * d], dim=1)
        stds = F.softplus(raw) + MIN_STD
        return F.log_softmax(logits, dim=1), means.reshape(-1, k, d), stds.reshape(-1, k, d)

    @torch.no_grad()
    def draw(self, obs: Tensor, generator: torch.Generator) -> Tensor:
        """A component per example, drawn from its weights; that component's mean, [B, T, D]."""
        log_weights, means, _ = self(obs)
        chosen = torch.multinomial(log_weights.exp().cpu(), 1, generator=generator).to(means.device)
        return means.gather(1, chosen[:, :, None].expand(-1, 1, self.size)).reshape(len(obs), *self.action_shape)


def mixture_nll(log_weights: Tensor, means: Tensor, stds: Tensor, actions: Tensor) -> Tensor:
    """The mixture's negative log-likelihood of the chunks [B, T, D], averaged over the batch and
    divided by the features of a chunk (a scale that does not grow with the horizon)."""
    x = actions.reshape(len(actions), 1, -1)
    log_normal = (-0.5 * ((x - means) / stds) ** 2 - stds.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    return -torch.logsumexp(log_weights + log_normal, dim=1).mean() / x.shape[-1]


@register
class MixtureDensityTask(BehaviourCloningTask):
    Config = MixtureDensityConfig

    def build(self) -> MixtureDensityPolicy:
        c = self.config
        if c.obs_dim is None:
            raise ValueError("obs_dim is decided by the data: call examples(data) before build()")
        return MixtureDensityPolicy(c.obs_dim, self.info.shape, c.hidden, c.depth, c.components)

    def loss(self, model, batch: dict, generator: torch.Generator) -> Tensor:
        return mixture_nll(*model(batch["obs"]), batch["x"])
