"""Two-dimensional toy distributions, deterministic given a seed.

Each is scaled to roughly unit variance per coordinate, the scale diffusion noise
schedules assume for data.
"""

from __future__ import annotations

import math

import torch

from .dataset import TensorDataset

RING_MODES = 8
RING_RADIUS = math.sqrt(2)  # a point on this circle has variance 1 per coordinate
RING_STD = 0.1

# Points in float64 (cast at the end) and labels where the set has them.
Sample = tuple[torch.Tensor, torch.Tensor | None]


def _ring(n: int, gen: torch.Generator) -> Sample:
    mode = torch.randint(RING_MODES, (n,), generator=gen)
    angle = mode.double() * (2 * math.pi / RING_MODES)
    centres = RING_RADIUS * torch.stack([angle.cos(), angle.sin()], dim=1)
    return centres + RING_STD * torch.randn(n, 2, generator=gen, dtype=torch.float64), mode


def _moons(n: int, gen: torch.Generator) -> Sample:
    t = math.pi * torch.rand(n, generator=gen, dtype=torch.float64)
    lower = torch.rand(n, generator=gen) < 0.5
    # The lower moon is the upper one turned over and shifted into its gap.
    x = torch.where(lower, 1 - t.cos(), t.cos())
    y = torch.where(lower, 0.5 - t.sin(), t.sin())
    points = torch.stack([x - 0.5, y - 0.25], dim=1) / 0.75
    return points + 0.05 * torch.randn(n, 2, generator=gen, dtype=torch.float64), None


def _swissroll(n: int, gen: torch.Generator) -> Sample:
    # Angle from 1.5 pi to 4.5 pi: one and a half turns of a spiral whose radius is its angle.
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=gen, dtype=torch.float64))
    points = torch.stack([t * t.cos(), t * t.sin()], dim=1) / 7
    return points + 0.05 * torch.randn(n, 2, generator=gen, dtype=torch.float64), None


def _checkerboard(n: int, gen: torch.Generator) -> Sample:
    """Uniform on the 8 cells of a 4x4 board on [-2, 2]^2 whose row + column is even."""
    x = 4 * torch.rand(n, generator=gen, dtype=torch.float64) - 2
    column = (x + 2).floor()
    row = 2 * torch.randint(2, (n,), generator=gen) + column % 2
    y = row + torch.rand(n, generator=gen, dtype=torch.float64) - 2
    return torch.stack([x, y], dim=1), None


def _gaussian(n: int, gen: torch.Generator) -> Sample:
    return torch.randn(n, 2, generator=gen, dtype=torch.float64), None


TOYS = {
    "ring": _ring,
    "moons": _moons,
    "swissroll": _swissroll,
    "checkerboard": _checkerboard,
    "gaussian": _gaussian,
}


def load_toy(name: str, n: int = 10_000, seed: int = 0) -> TensorDataset:
    """``n`` points [n, 2] of a toy distribution; "ring" is labelled by its mode index."""
    if name not in TOYS:
        raise ValueError(f"unknown toy data set {name!r}; choose from {sorted(TOYS)}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    gen = torch.Generator().manual_seed(seed)
    points, labels = TOYS[name](n, gen)
    class_names = [f"mode {k}" for k in range(RING_MODES)] if labels is not None else None
    return TensorDataset(points.float(), labels, class_names, name, modality="vector")
