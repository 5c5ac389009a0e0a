"""Embeddings of the conditioning signals a denoiser receives: noise level, class label and,
optionally, a pooled summary of a text context.

The wrapper around a network passes ``c_noise = log(sigma / alpha) / 4``, a continuous
scalar that lies roughly in [-4, 3] for the schedules we use. Both networks turn it into a
vector with :func:`sinusoidal_embedding` followed by a small MLP, and add a learned class
vector when the model is class-conditional, and a projection of the context's mean over its
real tokens when built with ``pooled_context``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

# Frequency range of the sinusoidal embedding, in radians per unit of c_noise.
#
# The inputs span about ten units ([-5, 5] with margin). At the lowest frequency, 0.1, the
# phase moves by at most 0.5 rad over that whole span, so that pair of features is almost
# linear in the input and the embedding as a whole is one-to-one: the network can always
# read off the coarse noise level. At the highest frequency, 100, a change of 0.01 in
# c_noise (a 4 % change in sigma) moves the phase by one radian, finer than any sampler
# needs to distinguish. Frequencies in between are log-spaced so every scale gets the same
# number of features. The familiar range 1e-4..1 was designed for integer timesteps up to
# 1000; on inputs of size ~5 most of its channels would be nearly constant and wasted.
MIN_FREQUENCY = 0.1
MAX_FREQUENCY = 100.0


def sinusoidal_embedding(
    x: Tensor,
    dim: int,
    min_frequency: float = MIN_FREQUENCY,
    max_frequency: float = MAX_FREQUENCY,
) -> Tensor:
    """Embed each scalar of ``x`` (shape [B]) as ``dim`` features ``[cos(f_k x), sin(f_k x)]``.

    The ``dim // 2`` frequencies ``f_k`` are log-spaced from ``min_frequency`` to
    ``max_frequency``; see the module constants for why this range suits c_noise. The
    result is float32 whatever the input dtype, because half precision cannot represent
    ``100 * x`` finely enough for the phase to be meaningful.
    """
    if x.ndim != 1:
        raise ValueError(f"sinusoidal_embedding expects a 1-D tensor [B], got {tuple(x.shape)}")
    if dim < 2 or dim % 2 != 0:
        raise ValueError(f"embedding dim must be a positive even number, got {dim}")
    if not 0 < min_frequency <= max_frequency:
        raise ValueError(
            f"need 0 < min_frequency <= max_frequency, got {min_frequency} and {max_frequency}"
        )
    half = dim // 2
    exponents = torch.linspace(0.0, 1.0, half, dtype=torch.float32, device=x.device)
    ratio = math.log(max_frequency / min_frequency)
    frequencies = min_frequency * torch.exp(ratio * exponents)
    phase = x.to(torch.float32)[:, None] * frequencies[None, :]
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=1)


def timestep_embedding(x: Tensor, dim: int) -> Tensor:
    """DDPM's code of an integer timestep n (Ho et al. 2020, after Vaswani et al.): ``dim``
    features ``[cos(g_k n), sin(g_k n)]``, g_k = 10000^(-k / (dim / 2)), k = 0 .. dim/2 - 1.

    This is diffusers' ``Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0)``, so a
    network that reads it can be written as a diffusers model; its range of frequencies suits the
    timesteps 0..999 it was made for, not c_noise.
    """
    if x.ndim != 1:
        raise ValueError(f"timestep_embedding expects a 1-D tensor [B], got {tuple(x.shape)}")
    if dim < 2 or dim % 2 != 0:
        raise ValueError(f"embedding dim must be a positive even number, got {dim}")
    half = dim // 2
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=x.device) / half)
    phase = x.to(torch.float32)[:, None] * frequencies[None, :]
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=1)


# How a network's noise-level input becomes features: log-spaced frequencies for EDM's c_noise, or
# DDPM's code of an integer timestep (Denoiser(noise_input="timestep")).
TIME_FEATURES = {"log_spaced": sinusoidal_embedding, "timestep": timestep_embedding}


# Frequency range of the 2-D position code, in radians per grid cell (a DiT patch, a U-Net
# pixel). Positions are integers 0..n-1 with n at most a few dozen here, not the thousands of
# a text model, so the usual 1..1e-4 range would spend most features on phases that barely
# move across the image. At 1/64 rad per cell the slowest sine is still increasing at
# n = 100, so the code is one-to-one for any grid we use; at 1 rad per cell neighbouring
# cells differ by a radian, well below the aliasing limit of pi.
POSITION_MIN_FREQUENCY = 1 / 64
POSITION_MAX_FREQUENCY = 1.0


def position_embedding(grid_height: int, grid_width: int, dim: int, device: torch.device | str | None = None) -> Tensor:
    """Fixed code [gh * gw, dim] of each cell's (row, column), row-major order (as a
    feature map [H, W] flattens, and as DiT patchifies).

    The first half of the features is the sinusoidal code of the row, the second half that
    of the column, so attention can compare rows and columns separately.
    """
    if dim % 4:
        raise ValueError(f"position embedding dim must be divisible by 4, got {dim}")
    rows = torch.arange(grid_height, dtype=torch.float32, device=device).repeat_interleave(grid_width)
    cols = torch.arange(grid_width, dtype=torch.float32, device=device).repeat(grid_height)
    code = [
        sinusoidal_embedding(v, dim // 2, POSITION_MIN_FREQUENCY, POSITION_MAX_FREQUENCY)
        for v in (rows, cols)
    ]
    return torch.cat(code, dim=1)


class EmbeddingMLP(nn.Sequential):
    """Linear -> SiLU -> Linear: lifts fixed features into a learned conditioning vector."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__(nn.Linear(in_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))


class NoiseLevelEmbedding(nn.Module):
    """Sinusoidal features of the noise level (``features``: a key of TIME_FEATURES), projected
    by an MLP to ``out_dim``."""

    def __init__(self, frequency_dim: int, out_dim: int, features: str = "log_spaced"):
        super().__init__()
        if frequency_dim < 2 or frequency_dim % 2:
            raise ValueError(f"frequency_dim must be a positive even number, got {frequency_dim}")
        if features not in TIME_FEATURES:
            raise ValueError(f"unknown time features {features!r}; choose one of {sorted(TIME_FEATURES)}")
        self.frequency_dim, self.features = frequency_dim, TIME_FEATURES[features]
        self.mlp = EmbeddingMLP(frequency_dim, out_dim)

    def forward(self, noise_level: Tensor) -> Tensor:
        features = self.features(noise_level, self.frequency_dim)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class ClassEmbedding(nn.Module):
    """A learned vector per class plus one extra row, index ``num_classes``, for "no class".

    The extra row is what classifier-free guidance needs: training replaces some labels by
    ``num_classes`` so the same network also learns the unconditional denoiser, and
    ``labels=None`` at call time means every sample uses that null row.
    """

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def forward(self, labels: Tensor | None, batch_size: int, device: torch.device) -> Tensor:
        if labels is None:
            labels = torch.full((batch_size,), self.null_label, dtype=torch.long, device=device)
        check_labels(labels, batch_size, self.num_classes)
        return self.table(labels)


def check_labels(labels: Tensor, batch_size: int, num_classes: int | None) -> None:
    """Raise a clear error for labels a network cannot use, not an index error deep inside."""
    if num_classes is None:
        raise ValueError("labels were given but the network was built with num_classes=None")
    if labels.dtype != torch.long:
        raise ValueError(f"labels must be an int64 tensor, got dtype {labels.dtype}")
    if labels.shape != (batch_size,):
        raise ValueError(f"labels must have shape [{batch_size}], got {tuple(labels.shape)}")
    # Reading min/max synchronises with the device, a small price for an error that names
    # the bad value rather than a device-side assertion.
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}] ({num_classes} is the null class), "
            f"got values from {int(labels.min())} to {int(labels.max())}"
        )


def check_noise_level(noise_level: Tensor, batch_size: int) -> Tensor:
    """Return ``noise_level`` as shape [B]; a 0-d tensor is shared by the whole batch."""
    if not torch.is_tensor(noise_level) or not noise_level.is_floating_point():
        raise ValueError("noise_level must be a floating-point tensor of shape [B]")
    if noise_level.ndim == 0:
        return noise_level.expand(batch_size)
    if noise_level.shape != (batch_size,):
        raise ValueError(
            f"noise_level must have shape [{batch_size}] (or be 0-d), "
            f"got {tuple(noise_level.shape)}"
        )
    return noise_level


class PooledContextEmbedding(nn.Module):
    """The mean of a context sequence over its real tokens, projected to ``dim``: a summary of the
    whole caption that reaches every block through the conditioning vector (Imagen's pooled text
    embedding), beside cross-attention, which reaches only the attention levels. A row without
    real tokens (the null text of guidance) adds nothing, exactly as no context at all."""

    def __init__(self, context_dim: int, dim: int):
        super().__init__()
        self.project = nn.Linear(context_dim, dim)
        # Zero at first, like the cross-attention branches: text joins a working network smoothly.
        nn.init.zeros_(self.project.weight)
        nn.init.zeros_(self.project.bias)

    def forward(self, context: Tensor, mask: Tensor | None) -> Tensor:
        real = torch.ones(context.shape[:2], dtype=context.dtype, device=context.device) if mask is None \
            else mask.to(context.dtype)
        count = real.sum(dim=1, keepdim=True)
        pooled = (context * real[..., None]).sum(dim=1) / count.clamp(min=1)
        return self.project(pooled) * (count > 0).to(context.dtype)


class ConditionEmbedding(nn.Module):
    """Everything a denoiser is conditioned on, summed into one vector of size ``dim``.

    Summing (rather than concatenating) keeps the width fixed whether or not the model is
    class- or text-conditional, so the blocks downstream do not care.
    """

    def __init__(self, frequency_dim: int, dim: int, num_classes: int | None,
                 pooled_context_dim: int | None = None, time_features: str = "log_spaced"):
        super().__init__()
        self.noise = NoiseLevelEmbedding(frequency_dim, dim, time_features)
        self.classes = ClassEmbedding(num_classes, dim) if num_classes is not None else None
        self.pooled = PooledContextEmbedding(pooled_context_dim, dim) if pooled_context_dim is not None else None

    def forward(self, noise_level: Tensor, labels: Tensor | None, batch_size: int,
                context: Tensor | None = None, context_mask: Tensor | None = None) -> Tensor:
        noise_level = check_noise_level(noise_level, batch_size)
        emb = self.noise(noise_level)
        if self.classes is not None:
            emb = emb + self.classes(labels, batch_size, emb.device)
        elif labels is not None:
            check_labels(labels, batch_size, None)  # raises: this model has no classes
        if self.pooled is not None and context is not None:
            emb = emb + self.pooled(context, context_mask).to(emb.dtype)
        return emb
