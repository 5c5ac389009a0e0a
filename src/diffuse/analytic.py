"""Exact diffusion models for data whose noised marginals are known in closed form.

A mixture of isotropic Gaussians stays a mixture of isotropic Gaussians under any Gaussian path:
if x0 ~ sum_k w_k N(mu_k, s_k^2 I) then x_t ~ sum_k w_k N(alpha mu_k, (alpha^2 s_k^2 + sigma^2) I),
so the exact denoiser E[x0 | x_t] and the exact score are a few lines. Such a model has no
training error, which makes it the reference for testing and benchmarking samplers.
"""

from __future__ import annotations

import math

import torch

from .process import GaussianPath, _as_time


class GaussianMixture:
    """sum_k weights_k N(means_k, stds_k^2 I) in `dim` dimensions (all arithmetic in float64)."""

    def __init__(self, means, stds, weights=None):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        if self.means.ndim != 2:
            raise ValueError(f"means must be [K, dim], got shape {tuple(self.means.shape)}")
        k = self.means.shape[0]
        self.stds = torch.as_tensor(stds, dtype=torch.float64).expand(k).clone()
        if (self.stds < 0).any():
            raise ValueError("stds must be non-negative")
        w = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else \
            torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (k,) or (w < 0).any() or w.sum() <= 0:
            raise ValueError("weights must be K non-negative numbers with a positive sum")
        self.weights = w / w.sum()

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0 [n, dim], component index [n])."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k, None] * eps, k

    def _noised(self, x: torch.Tensor, t, process: GaussianPath):
        """alpha, per-component variances, x in float64 and log joint densities at (x_t, t)."""
        t = _as_time(t).to(x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        a = process.alpha(t)[:, None]                                       # [B, 1]
        s = process.sigma(t)[:, None]
        var = a**2 * self.stds[None] ** 2 + s**2                            # [B, K]
        x64 = x.to(torch.float64).flatten(1)
        sq = ((x64[:, None, :] - a[:, :, None] * self.means[None]) ** 2).sum(-1)  # [B, K]
        log_joint = torch.log(self.weights)[None] - 0.5 * sq / var - 0.5 * self.dim * torch.log(2 * math.pi * var)
        return a, var, x64, log_joint

    def log_prob_t(self, x: torch.Tensor, t, process: GaussianPath) -> torch.Tensor:
        """log p_t(x) of the noised marginal (t = 0 with sigma(0) = 0 is the data density)."""
        return torch.logsumexp(self._noised(x, t, process)[3], dim=1)

    def posterior(self, matrix: torch.Tensor, y: torch.Tensor, noise_std: float) -> "GaussianMixturePosterior":
        """p(x0 | y) for y = A x0 + noise_std n, A a [m, dim] matrix: again a mixture, of
        N(m_k, C_k) with C_k = (I / s_k^2 + A^T A / s_y^2)^-1, m_k = C_k (mu_k / s_k^2 + A^T y / s_y^2),
        weighted by w_k N(y; A mu_k, s_k^2 A A^T + s_y^2 I) (Bayes' rule per component)."""
        a = torch.as_tensor(matrix, dtype=torch.float64)
        y = torch.as_tensor(y, dtype=torch.float64).reshape(-1)
        if a.ndim != 2 or a.shape[1] != self.dim or a.shape[0] != y.numel():
            raise ValueError(f"A must be [m, {self.dim}] for y of m values; got A {tuple(a.shape)}, y {y.numel()}")
        if noise_std <= 0 or (self.stds <= 0).any():
            raise ValueError("the exact posterior needs noise_std > 0 and components of positive std")
        var_y, eye = noise_std**2, torch.eye(self.dim, dtype=torch.float64)
        means, covariances, log_weights = [], [], []
        for mu, s, w in zip(self.means, self.stds, self.weights):
            covariance = torch.linalg.inv(eye / s**2 + a.T @ a / var_y)
            means.append(covariance @ (mu / s**2 + a.T @ y / var_y))
            covariances.append(covariance)
            evidence = torch.distributions.MultivariateNormal(a @ mu, s**2 * a @ a.T + var_y * torch.eye(len(y)))
            log_weights.append(torch.log(w) + evidence.log_prob(y))
        return GaussianMixturePosterior(torch.stack(means), torch.stack(covariances),
                                        torch.softmax(torch.stack(log_weights), 0))

    def denoiser(self, process: GaussianPath) -> "MixtureDenoiser":
        return MixtureDenoiser(self, process)


class MixtureDenoiser:
    """model(x, t) = E[x0 | x_t] for a Gaussian mixture; declares prediction = 'x0'."""

    prediction = "x0"

    def __init__(self, mixture: GaussianMixture, process: GaussianPath):
        self.mixture, self.process = mixture, process

    def __call__(self, x: torch.Tensor, t, **cond) -> torch.Tensor:
        m = self.mixture
        a, var, x64, log_joint = m._noised(x, t, self.process)
        resp = torch.softmax(log_joint, dim=1)                              # [B, K]
        gain = a * m.stds[None] ** 2 / var                                  # [B, K]
        # E[x0 | x_t, k] = mu_k + alpha s_k^2 / var_k (x_t - alpha mu_k)
        per_k = m.means[None] + gain[:, :, None] * (x64[:, None, :] - a[:, :, None] * m.means[None])
        return (resp[:, :, None] * per_k).sum(1).reshape(x.shape).to(x.dtype)


class GaussianMixturePosterior:
    """sum_k weights_k N(means_k, covariances_k): the exact posterior of a GaussianMixture."""

    def __init__(self, means: torch.Tensor, covariances: torch.Tensor, weights: torch.Tensor):
        self.means, self.covariances, self.weights = means, covariances, weights

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        factors = torch.linalg.cholesky(self.covariances)
        return self.means[k] + (factors[k] @ z[:, :, None])[:, :, 0]
