"""A trainable network as a noise-aware classifier: `classifier(x, t) -> logits [B, K]`.

This is what :class:`diffuse.guidance.ClassifierGuidance` calls: x is x_t of the process, t its
time. `NoiseAwareClassifier` wraps a network `net(x, noise_level) -> logits` (see
`diffuse.models.classifier`) for a process and feeds it exactly what `Denoiser` feeds a denoiser:
the noise level c_noise = -log_snr/8 and the input scaled by EDM's c_in in the coordinates
y = x/alpha, rho = sigma/alpha,

    c_in y = x / (alpha sqrt(rho^2 + sd^2)) = x / sqrt(sigma^2 + alpha^2 sd^2),

the reciprocal of the standard deviation of x_t for data of standard deviation sd, so the network
sees unit-variance inputs at every noise level on every process (Karras et al. 2022, appendix
B.6). The right-hand form stays finite where alpha = 0 (Flow at t = 1).
"""

from __future__ import annotations

import torch
from torch import nn

from .denoiser import noise_level
from .process import GaussianPath, _as_time, expand


class NoiseAwareClassifier(nn.Module):
    """classifier(x, t) -> logits [B, K] of p(y | x_t) for process time t ([B], or one for all).

    `shape` is the shape of one example it was trained on, when known; `generate` refuses to
    guide a model whose samples have another.
    """

    def __init__(self, net: nn.Module, process: GaussianPath, sigma_data: float = 0.5,
                 shape: tuple[int, ...] | None = None):
        super().__init__()
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}")
        self.net = net
        self.process = process
        self.sigma_data = float(sigma_data)
        self.shape = None if shape is None else tuple(shape)

    @property
    def num_classes(self) -> int:
        return self.net.config.num_classes

    def input_scale(self, t) -> torch.Tensor:
        """c_in(t) / alpha(t) = 1 / sqrt(sigma^2 + alpha^2 sd^2), float64."""
        alpha, sigma = self.process.alpha_sigma(t)
        return (sigma**2 + (alpha * self.sigma_data) ** 2).rsqrt()

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        t = _as_time(t).to(x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        return self.net(expand(self.input_scale(t), x) * x, noise_level(self.process, t).to(x.dtype))
