"""Trained runs as policies: an observation history in, an action chunk out.

`load_policy(run)` opens a diffusion run trained with cond="obs" (Diffusion Policy: `diffuse train
--recipe pusht`), a behaviour-cloning run (`diffuse train --task bc --data pusht`) or a
mixture-density run (`--task mdn`) as a `Policy`:

    policy = load_policy("runs/pusht", sampler="ddim", steps=10)
    actions = policy.chunk(history)           # [To, 5] raw observations -> [Tp, 2] pixels
    results = rollout(policy, seeds, policy.horizons.obs, policy.horizons.action)

Both normalise the observations and un-normalise the actions with the statistics their run kept
(the data's `normaliser`), and clamp the model's actions to the training range [-1, 1] first (as
the original clips its samples). A diffusion policy draws each chunk with the given sampler in
`steps` steps from the noise of `seed` (`Pipeline.sample`), so a rollout is a function of its
seeds; a mixture-density policy draws its component from the seed; a regressor ignores it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from . import checkpoint as ckpt
from .data.pusht import Horizons, Normaliser
from .envs.rollout import rollout
from .randomness import seeded
from .runs import restore

# The kinds of run that act: a diffusion model of action chunks, and the baselines (regression, mixture density).
POLICY_KINDS = ("diffusion", "bc", "mdn")


@dataclass
class Policy:
    """`act(obs [B, To, Do], seed) -> actions [B, Tp, D]`, both normalised, with the statistics and
    horizons of its training data; called as the rollout's `policy(history, key)`."""

    act: Callable[[torch.Tensor, int], torch.Tensor]
    normaliser: Normaliser
    horizons: Horizons
    kind: str

    @torch.no_grad()
    def chunk(self, history, seed: int = 0) -> np.ndarray:
        """Raw observations [To, Do] (or a batch [B, To, Do]) -> raw actions [Tp, D] ([B, Tp, D])."""
        history = np.asarray(history, dtype=np.float64)
        single = history.ndim == 2
        batch = history[None] if single else history
        if batch.ndim != 3 or batch.shape[1] != self.horizons.obs:
            raise ValueError(f"a policy takes the last {self.horizons.obs} observations [To, Do] (or a batch "
                             f"[B, To, Do]), got shape {history.shape}")
        obs = torch.from_numpy(self.normaliser.obs.normalise(batch)).float()
        actions = self.act(obs, seed).clamp(-1, 1).double().numpy()
        actions = self.normaliser.action.unnormalise(actions)
        return actions[0] if single else actions

    def __call__(self, history, key: int) -> np.ndarray:
        return self.chunk(history, key)


def load_policy(run, *, sampler: str = "ddim", steps: int | None = None, ema: bool = True,
                device="cpu") -> Policy:
    """A diffusion-policy or behaviour-cloning run (a run folder or a checkpoint) as a Policy;
    `sampler` and `steps` (default: the run's) are a diffusion policy's."""
    stored = ckpt.read_run(run)
    if stored.kind not in POLICY_KINDS:
        raise ckpt.CheckpointError(f"{stored.folder} is a {stored.kind} run; a policy is a diffusion run trained "
                                   "with --cond obs (diffuse train --recipe pusht), a bc or an mdn run")
    if "normaliser" not in stored.state or "horizons" not in stored.state:
        raise ckpt.CheckpointError(f"{stored.folder} was not trained on demonstrations (its state keeps no "
                                   "normaliser and horizons): it is no policy")
    normaliser = Normaliser.from_dict(stored.state["normaliser"])
    horizons = Horizons(**stored.state["horizons"])
    task, model, config, _ = restore(stored, ema=ema, device=device, kind=stored.kind)
    if stored.kind == "bc":
        return Policy(lambda obs, seed: model(obs.to(device)).float().cpu(), normaliser, horizons, "bc")
    if stored.kind == "mdn":
        return Policy(lambda obs, seed: model.draw(obs.to(device), seeded(seed)).float().cpu(), normaliser, horizons,
                      "mdn")
    if config.task.cond != "obs":
        raise ckpt.CheckpointError(f"{stored.folder} is a diffusion model with cond={config.task.cond!r}, not a "
                                   "policy (cond='obs')")
    pipeline = task.pipeline(model)
    steps = pipeline.steps if steps is None else steps

    def act(obs: torch.Tensor, seed: int) -> torch.Tensor:
        return pipeline.sample(len(obs), cond={"obs": obs}, sampler=sampler, steps=steps, seed=seed, device=device)

    return Policy(act, normaliser, horizons, "diffusion")


__all__ = ["Policy", "load_policy", "rollout", "POLICY_KINDS"]
