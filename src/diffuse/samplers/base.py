"""What every sampler shares: the grid of noise levels and the denoiser D(x, i).

A sampler is a pure function `sampler(denoise, x, grid, generator, **options) -> x0`:
- `grid` holds the times t_0 > ... > t_{N-1} at which the model may be called, and alpha, sigma
  (float64) at those times plus a final clean point (alpha = 1, sigma = 0);
- `denoise(x, i)` calls the model at grid time t_i and returns E[x0 | x_t], whatever the model
  predicts; `x = denoise.begin(x, i)` at the start of step i hands the state at t_i to the
  caller's step hook, which may replace it (RePaint, measurement guidance);
- `generator` is one generator for the whole batch, or one per sample (`Generators`), so that a
  sample's noise depends on its own stream only, not on the batch it is drawn in.
Everything a sampler derives (eps, y = x/alpha, rho = sigma/alpha, lambda) comes from these.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..process import GaussianPath
from ..randomness import seeded


@dataclass(frozen=True)
class Grid:
    t: torch.Tensor       # [N] model times, float64
    alpha: torch.Tensor   # [N + 1], last = 1
    sigma: torch.Tensor   # [N + 1], last = 0
    process: GaussianPath  # for samplers that step between grid points

    @classmethod
    def from_times(cls, process: GaussianPath, times: torch.Tensor) -> "Grid":
        one = torch.ones(1, dtype=torch.float64)
        alpha, sigma = process.alpha_sigma(times)
        alpha, sigma = torch.cat([alpha, one]), torch.cat([sigma, 0 * one])
        return cls(times, alpha, sigma, process)

    def __post_init__(self):
        # Samplers read these per step as Python floats: converting tensors element by element
        # would cost more than the arithmetic on small images.
        object.__setattr__(self, "_a", self.alpha.tolist())
        object.__setattr__(self, "_s", self.sigma.tolist())
        object.__setattr__(self, "_rho", (self.sigma / self.alpha).tolist())
        object.__setattr__(self, "_lam", (torch.log(self.alpha) - torch.log(self.sigma)).tolist())

    @property
    def steps(self) -> int:
        return self.t.numel()

    def a(self, i: int) -> float:
        return self._a[i]

    def s(self, i: int) -> float:
        return self._s[i]

    def rho(self, i: int) -> float:
        """sigma/alpha, the VE-equivalent noise level (0 at the clean end)."""
        return self._rho[i]

    def lam(self, i: int) -> float:
        """Half log-SNR, log(alpha/sigma) (+inf at the clean end), DPM-Solver's lambda."""
        return self._lam[i]


def eps_from_x0(x: torch.Tensor, x0: torch.Tensor, grid: Grid, i: int) -> torch.Tensor:
    return (x - grid.a(i) * x0) / grid.s(i)


class Generators(tuple):
    """One random generator per sample (EDM's per-sample generators): row k of every draw comes
    from generator k alone, so a sample is a function of its own seed, whatever its batch."""

    @classmethod
    def seeded(cls, seed: int, start: int, count: int) -> "Generators":
        """The generators of samples start .. start + count - 1 of a run seeded by `seed`."""
        return cls(seeded(seed, k) for k in range(start, start + count))

    def randn(self, shape, dtype=torch.float32) -> torch.Tensor:
        """[len(self), *shape] standard normal, row k from generator k (a batch's starting noise)."""
        return torch.stack([torch.randn(tuple(shape), generator=g, dtype=dtype) for g in self])


def gaussian_like(x: torch.Tensor, generator) -> torch.Tensor:
    """Standard normal noise of x's shape, drawn on the generator's device so that a seeded CPU
    generator gives the same numbers whatever device x lives on; with `Generators`, row k from
    generator k."""
    if isinstance(generator, Generators):
        rows = [torch.randn(x.shape[1:], generator=g, device=g.device, dtype=x.dtype) for g in generator]
        return torch.stack(rows).to(x.device)
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)
