"""What a policy trained on demonstrations must keep to act: how its data were normalised, and
its horizons. Shared by the diffusion task (with cond="obs") and the behaviour-cloning task, stored
in a run's task state, read back by `diffuse.policy`."""

from __future__ import annotations

import dataclasses

from ...data import Dataset


def policy_state(data: Dataset) -> dict:
    """{"normaliser": ..., "horizons": ...} of demonstrations (diffuse.data.pusht.Demonstrations),
    JSON-able; {} for any other data set."""
    normaliser, horizons = getattr(data, "normaliser", None), getattr(data, "horizons", None)
    if normaliser is None or horizons is None:
        return {}
    return {"normaliser": normaliser.to_dict(), "horizons": dataclasses.asdict(horizons)}
