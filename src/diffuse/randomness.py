"""Reproducible random streams: each is a function of a seed and a few integer keys.

Training draws every step's times, noise and dropout from a generator keyed by (seed, purpose,
step, rank), the order of each epoch from (seed, purpose, epoch), and an example's augmentation
from (seed, purpose, epoch, index); sampling gives sample k of a run its own generator (seed, k).
Nothing random is carried from one step to the next, so the state at step s needs no storing and a
resumed run continues bit for bit.
"""

from __future__ import annotations

import torch

_MODULUS = 2**63 - 1


def mixed_seed(seed: int, *keys: int) -> int:
    """One integer for (seed, *keys): distinct, reproducible values for distinct tuples."""
    mixed = int(seed)
    for key in keys:
        mixed = (mixed * 1_000_003 + int(key) + 1) % _MODULUS
    return mixed


def seeded(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator seeded with mixed_seed(seed, *keys)."""
    return torch.Generator().manual_seed(mixed_seed(seed, *keys))
