"""A trainable network as a diffusion model: `model(x, t, **cond)` with a declared prediction.

`Denoiser` wraps a network `net(x, noise_level, labels=None)` (see `diffuse.models`) for a given
process. It feeds the network the noise level c_noise = log(sigma/alpha)/4 = -log_snr/8 (EDM's
convention, the same for every process), and optionally EDM's preconditioning generalised to any
Gaussian path. In the coordinates y = x/alpha, rho = sigma/alpha (where every path looks like VE):

    D(x, t) = c_skip y + c_out F(c_in y; c_noise),
    c_in = 1/sqrt(rho^2 + sd^2),  c_skip = sd^2/(rho^2 + sd^2),  c_out = rho sd/sqrt(rho^2 + sd^2)

which keeps the network's input and its effective training target at unit variance (Karras et al.
2022, section 5 and appendix B.6). With preconditioning the model predicts x0.

`noise_input="timestep"` tells the network the timestep a diffusers network reads instead: the
discrete timestep n = N t - 1 of a DDPM schedule, or 1000 t on the flow path (flow matching's
convention). With no preconditioning such a model is a diffusers UNet2DModel with a DDPM or a
flow-matching scheduler, exactly (diffuse export).
"""

from __future__ import annotations

import torch
from torch import nn

from .parameterization import check_prediction
from .process import DiscreteVP, Flow, GaussianPath, _as_time, expand

# Log-SNR is +-inf at the clean and zero-SNR ends; the network only needs a finite, monotone code.
_LOG_SNR_LIMIT = 40.0


NOISE_INPUTS = ("c_noise", "timestep")


def noise_level(process: GaussianPath, t) -> torch.Tensor:
    """c_noise = -log_snr(t)/8, the code every network of the package is told the noise level by."""
    return -process.log_snr(t).clamp(-_LOG_SNR_LIMIT, _LOG_SNR_LIMIT) / 8


FLOW_TIMESTEPS = 1000  # diffusers' flow-matching schedulers hand the network 1000 t


def diffusers_timestep(process: GaussianPath, t) -> torch.Tensor:
    """The timestep a diffusers network reads at time t: n = N t - 1 on a DDPM schedule, 1000 t on
    the flow path."""
    if isinstance(process, Flow):
        return _as_time(t) * FLOW_TIMESTEPS
    return process.t_to_timestep(t)


class Denoiser(nn.Module):
    def __init__(self, net: nn.Module, process: GaussianPath, prediction: str = "eps",
                 preconditioning: str = "none", sigma_data: float = 0.5, noise_input: str = "c_noise"):
        super().__init__()
        if preconditioning not in ("none", "edm"):
            raise ValueError(f"unknown preconditioning {preconditioning!r}; choose 'none' or 'edm'")
        if noise_input not in NOISE_INPUTS:
            raise ValueError(f"unknown noise_input {noise_input!r}; choose one of {NOISE_INPUTS}")
        if noise_input == "timestep" and not isinstance(process, (DiscreteVP, Flow)):
            raise ValueError(f"noise_input='timestep' needs a discrete process or the flow path (the two whose "
                             f"timesteps diffusers' schedulers define); got {process!r}")
        if preconditioning == "edm" and prediction != "x0":
            raise ValueError("EDM preconditioning makes the model predict x0; "
                             f"got prediction={prediction!r}")
        self.net = net
        self.process = process
        self.prediction = check_prediction(prediction)
        self.preconditioning = preconditioning
        self.sigma_data = float(sigma_data)
        self.noise_input = noise_input

    def noise_level(self, t) -> torch.Tensor:
        if self.noise_input == "timestep":
            return diffusers_timestep(self.process, t)
        return noise_level(self.process, t)

    def forward(self, x: torch.Tensor, t, labels: torch.Tensor | None = None, **cond) -> torch.Tensor:
        """`cond` (e.g. a text `context` and its `context_mask`) goes to the network as is."""
        t = _as_time(t).to(x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        c_noise = self.noise_level(t).to(x.dtype)
        if self.preconditioning == "none":
            return self.net(x, c_noise, labels, **cond)
        alpha = self.process.alpha(t)
        rho = self.process.sigma(t) / alpha
        sd2 = self.sigma_data**2
        y = x / expand(alpha, x)
        c_in = (rho**2 + sd2).rsqrt()
        c_skip = sd2 / (rho**2 + sd2)
        c_out = rho * self.sigma_data * c_in
        out = self.net(expand(c_in, x) * y, c_noise, labels, **cond)
        return expand(c_skip, x) * y + expand(c_out, x) * out.to(x.dtype)
