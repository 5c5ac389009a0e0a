"""A 1-D temporal U-Net over sequences [B, T, D]: Diffusion Policy's action denoiser.

Chi et al. (2023), section III-B and their ConditionalUnet1D: the sequence is convolved along
time (Conv1d, GroupNorm, Mish), halved at each level and doubled back with skip connections, and
every residual block is modulated (FiLM, Perez et al. 2018) by one global conditioning vector:
the noise level's embedding joined with the flattened observation history. Conditioning every
block, rather than feeding the observation as input channels, is what the paper found to train
best on position control.

Called as ``net(x [B, T, dim], noise_level [B], labels=None, obs=[B, To, Do])``, the same
signature as every network of the package (``labels`` must be None: a policy has no classes)
plus the observation, the keyword the diffusion task's "obs" condition passes. The output is
shaped like x and starts at zero (the last convolution is zero-initialised), so an untrained
eps model predicts no noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .embeddings import TIME_FEATURES, NoiseLevelEmbedding
from .validation import int_tuple, positive_int


@dataclass
class TemporalUNetConfig:
    """Shape of a :class:`TemporalUNet`; every field is a plain JSON value.

    dim: features per step of the sequence (an action's dimension).
    obs_dim: features of the flattened observation history (obs_horizon x observation size);
    0 for an unconditional sequence model.
    channels: width of each level (the paper: 256, 512, 1024); the sequence length must be
    divisible by 2 ** (levels - 1).
    kernel_size: of every temporal convolution (odd, so a step sees as many steps either side).
    norm_groups: GroupNorm groups, which must divide every level's width.
    time_dim: width of the noise level's embedding. time_features: as UNetConfig's.
    """

    dim: int = 2
    obs_dim: int = 0
    channels: tuple[int, ...] = (64, 128, 256)
    kernel_size: int = 5
    norm_groups: int = 8
    time_dim: int = 128
    time_features: str = "log_spaced"

    def __post_init__(self) -> None:
        owner = "TemporalUNetConfig"
        self.channels = int_tuple(owner, "channels", self.channels)
        if not self.channels:
            raise ValueError(f"{owner}.channels must have at least one level")
        for name in ("dim", "kernel_size", "norm_groups", "time_dim"):
            positive_int(owner, name, getattr(self, name))
        if isinstance(self.obs_dim, bool) or not isinstance(self.obs_dim, int) or self.obs_dim < 0:
            raise ValueError(f"{owner}.obs_dim must be a non-negative integer, got {self.obs_dim!r}")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"{owner}.kernel_size must be odd, got {self.kernel_size}")
        if self.time_dim % 2:
            raise ValueError(f"{owner}.time_dim must be even (cos/sin pairs), got {self.time_dim}")
        if self.time_features not in TIME_FEATURES:
            raise ValueError(f"{owner}.time_features must be one of {sorted(TIME_FEATURES)}, "
                             f"got {self.time_features!r}")
        for width in self.channels:
            positive_int(owner, "channels entry", width)
            if width % self.norm_groups:
                raise ValueError(f"{owner}: width {width} is not divisible by norm_groups={self.norm_groups}")


class ConvBlock(nn.Sequential):
    """Conv1d -> GroupNorm -> Mish, the paper's unit."""

    def __init__(self, in_width: int, out_width: int, kernel_size: int, groups: int):
        super().__init__(nn.Conv1d(in_width, out_width, kernel_size, padding=kernel_size // 2),
                         nn.GroupNorm(groups, out_width), nn.Mish())


class FiLMResBlock(nn.Module):
    """Two ConvBlocks, the first's output scaled and shifted by the conditioning vector (FiLM), and
    a 1x1 convolution on the skip path when the width changes."""

    def __init__(self, in_width: int, out_width: int, cond_dim: int, kernel_size: int, groups: int):
        super().__init__()
        self.block1 = ConvBlock(in_width, out_width, kernel_size, groups)
        self.block2 = ConvBlock(out_width, out_width, kernel_size, groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * out_width))
        self.skip = nn.Conv1d(in_width, out_width, 1) if in_width != out_width else nn.Identity()

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        scale, shift = self.film(cond)[:, :, None].chunk(2, dim=1)
        # 1 + scale: a zero conditioning leaves the features as they are.
        h = self.block1(x) * (1 + scale) + shift
        return self.block2(h) + self.skip(x)


class TemporalUNet(nn.Module):
    def __init__(self, config: TemporalUNetConfig):
        super().__init__()
        self.config = c = config
        self.time = NoiseLevelEmbedding(c.time_dim, c.time_dim, c.time_features)
        cond_dim = c.time_dim + c.obs_dim
        block = lambda i, o: FiLMResBlock(i, o, cond_dim, c.kernel_size, c.norm_groups)  # noqa: E731
        widths = [c.dim, *c.channels]
        last = len(c.channels) - 1
        self.down = nn.ModuleList()
        for level, (i, o) in enumerate(zip(widths[:-1], widths[1:])):
            resample = nn.Conv1d(o, o, 3, stride=2, padding=1) if level < last else nn.Identity()
            self.down.append(nn.ModuleList([block(i, o), block(o, o), resample]))
        self.middle = nn.ModuleList([block(c.channels[-1], c.channels[-1]) for _ in range(2)])
        self.up = nn.ModuleList()
        for level in reversed(range(1, len(c.channels))):
            o, i = c.channels[level], c.channels[level - 1]
            # Back up one halving per level; the first level's skip is not used (as in the original).
            upsample = nn.ConvTranspose1d(i, i, 4, stride=2, padding=1)
            self.up.append(nn.ModuleList([block(2 * o, i), block(i, i), upsample]))
        self.head = ConvBlock(c.channels[0], c.channels[0], c.kernel_size, c.norm_groups)
        self.out = nn.Conv1d(c.channels[0], c.dim, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, noise_level: Tensor, labels: Tensor | None = None,
                obs: Tensor | None = None) -> Tensor:
        c = self.config
        if x.ndim != 3 or x.shape[2] != c.dim:
            raise ValueError(f"TemporalUNet expects x of shape [B, T, {c.dim}], got {tuple(x.shape)}")
        if x.shape[1] % 2 ** (len(c.channels) - 1):
            raise ValueError(f"the sequence length {x.shape[1]} must be divisible by 2 ** {len(c.channels) - 1} "
                             f"(one halving per level after the first)")
        if labels is not None:
            raise ValueError("TemporalUNet takes no class labels")
        cond = self.time(noise_level)
        if c.obs_dim:
            if obs is None or obs[0].numel() != c.obs_dim or len(obs) != len(x):
                raise ValueError(f"TemporalUNet needs obs [B, ...] with {c.obs_dim} features per example, "
                                 f"got {None if obs is None else tuple(obs.shape)}")
            cond = torch.cat([cond, obs.reshape(len(obs), -1).to(cond.dtype)], dim=1)
        elif obs is not None:
            raise ValueError("this TemporalUNet has obs_dim=0: it takes no observation")
        h = x.transpose(1, 2).to(cond.dtype)
        skips = []
        for first, second, downsample in self.down:
            h = second(first(h, cond), cond)
            skips.append(h)
            h = downsample(h)
        for middle in self.middle:
            h = middle(h, cond)
        for first, second, upsample in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            h = upsample(second(first(h, cond), cond))
        out = self.out(self.head(h)).transpose(1, 2)
        return out.to(x.dtype)

