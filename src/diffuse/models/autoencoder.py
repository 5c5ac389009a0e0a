"""A convolutional variational autoencoder with a diagonal Gaussian posterior (a "KL autoencoder").

Latent diffusion (Rombach et al. 2022, section 3.1) trains the diffusion model on the latents of
an autoencoder rather than on pixels. The encoder maps x [B, C, H, W] to the mean and log-variance
of q(z | x) = N(mean, diag(exp(logvar))) over z [B, latent_channels, H/f, W/f]; the decoder maps z
back to pixels. A small weight on KL(q(z | x) || N(0, I)) keeps the latent space from drifting to
arbitrary scales without blurring reconstructions the way a full VAE objective would.

Layout: an input conv, then one *level* per entry of ``channel_mults``: ``num_res_blocks``
residual blocks and, except after the last level, a stride-2 conv that halves the resolution;
so the downsampling factor is f = 2 ** (len(channel_mults) - 1): (1, 2) gives f = 2, (1, 2, 2)
f = 4, (1, 2, 2, 2) f = 8. A middle block (residual, optional self-attention, residual) sits at
the lowest resolution. The decoder mirrors this with one more residual block per level and
nearest-neighbour upsampling plus a conv between levels.

Sizes: height and width must be divisible by f. We raise rather than pad, as the U-Net does:
padding 28x28 to 32x32 for f = 8 would make the latent describe pixels that are not there, and
every decode would need the original size to crop back to. For 28x28 use f = 2 (14x14) or
f = 4 (7x7); 8x8 takes f = 2, 4 or 8; 32x32 any of them.

Like the denoisers in this package, an autoencoder is described by a JSON-able dict
(``autoencoder_config``) and rebuilt from it (``build_autoencoder``). It is kept out of the
denoiser registry (``build_network``) on purpose: it does not have the denoiser call signature
``net(x, noise_level, labels)``, and a registry entry would let it be picked as a denoiser.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .unet import SelfAttention, Upsample, group_norm
from .validation import int_tuple, positive_int

# exp(logvar) is clamped into [e^-30, e^20]: an untrained or over-confident encoder can otherwise
# produce a variance that underflows to zero (log 0 in the KL) or overflows in the sample.
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


@dataclass
class AutoencoderConfig:
    """Shape of an :class:`AutoencoderKL`. Every field is a plain JSON value.

    in_channels: image channels. channels: width of the first level; level i has
    ``channels * channel_mults[i]``; the downsampling factor is 2 ** (len(channel_mults) - 1).
    num_res_blocks: residual blocks per level in the encoder (one more in the decoder).
    latent_channels: channels of the latent z. norm_groups: GroupNorm groups, capped at
    ``channels``; ``min(norm_groups, channels)`` must divide ``channels``. mid_attention: a
    single-head self-attention layer in the middle block (cheap at the lowest resolution).
    """

    in_channels: int = 1
    channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    latent_channels: int = 4
    norm_groups: int = 8
    mid_attention: bool = True

    def __post_init__(self) -> None:
        owner = "AutoencoderConfig"
        self.channel_mults = int_tuple(owner, "channel_mults", self.channel_mults)
        for name in ("in_channels", "channels", "num_res_blocks", "latent_channels", "norm_groups"):
            positive_int(owner, name, getattr(self, name))
        if not self.channel_mults:
            raise ValueError(f"{owner}.channel_mults must have at least one level")
        for mult in self.channel_mults:
            positive_int(owner, "channel_mults entry", mult)
        if not isinstance(self.mid_attention, bool):
            raise ValueError(f"{owner}.mid_attention must be true or false, got {self.mid_attention!r}")
        # Every width is a multiple of `channels`, so one group count that divides it fits all.
        if self.channels % self.groups:
            raise ValueError(
                f"{owner}: channels={self.channels} is not divisible by {self.groups} GroupNorm "
                f"groups (min(norm_groups, channels)); change channels or norm_groups"
            )

    @property
    def groups(self) -> int:
        return min(self.norm_groups, self.channels)

    @property
    def factor(self) -> int:
        """How many pixels one latent position spans along each side."""
        return 2 ** (len(self.channel_mults) - 1)

    @property
    def level_widths(self) -> list[int]:
        return [self.channels * m for m in self.channel_mults]

    def latent_shape(self, image_shape) -> tuple[int, int, int]:
        """(latent_channels, H/f, W/f) for images of shape (C, H, W); raises if f does not divide."""
        image_shape = tuple(image_shape)
        if len(image_shape) != 3:
            raise ValueError(f"the autoencoder takes images (C, H, W), not data of shape {image_shape}")
        channels, height, width = image_shape
        if channels != self.in_channels:
            raise ValueError(f"the autoencoder takes {self.in_channels}-channel images, "
                             f"got {channels} channels (shape {image_shape})")
        f = self.factor
        if height % f or width % f:
            fits = [2 ** k for k in range(5) if height % 2 ** k == 0 and width % 2 ** k == 0]
            raise ValueError(
                f"{height}x{width} images are not divisible by the autoencoder's downsampling factor "
                f"{f}; images of this size take factors {fits} (we do not pad: see "
                f"diffuse.models.autoencoder)")
        return self.latent_channels, height // f, width // f

    def to_dict(self) -> dict[str, Any]:
        fields = dataclasses.asdict(self)
        # Lists, not tuples, so the dict equals what json.loads gives back.
        return {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AutoencoderConfig":
        if not isinstance(d, dict):
            raise ValueError(f"autoencoder config must be a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown autoencoder field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**d)

    @classmethod
    def for_factor(cls, factor: int, **fields) -> "AutoencoderConfig":
        """A config with downsampling factor `factor` (a power of two): mults (1, 2, 2, ...)."""
        if not isinstance(factor, int) or isinstance(factor, bool) or factor < 1 or factor & (factor - 1):
            raise ValueError(f"the downsampling factor must be a power of two (1, 2, 4, 8, ...), got {factor!r}")
        levels = int(math.log2(factor))
        return cls(channel_mults=(1, *([2] * levels)), **fields)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with a residual path; a 1x1 conv when the width changes."""

    def __init__(self, in_width: int, out_width: int, groups: int):
        super().__init__()
        self.norm1 = group_norm(in_width, groups)
        self.conv1 = nn.Conv2d(in_width, out_width, 3, padding=1)
        self.norm2 = group_norm(out_width, groups)
        self.conv2 = nn.Conv2d(out_width, out_width, 3, padding=1)
        self.skip = nn.Conv2d(in_width, out_width, 1) if in_width != out_width else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


def _middle(width: int, config: AutoencoderConfig) -> nn.Sequential:
    attention = SelfAttention(width, 1, config.groups) if config.mid_attention else nn.Identity()
    return nn.Sequential(ResBlock(width, width, config.groups), attention,
                         ResBlock(width, width, config.groups))


class Encoder(nn.Module):
    """x [B, C, H, W] -> the posterior's parameters [B, 2 * latent_channels, H/f, W/f]."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        c = config
        widths = c.level_widths
        layers: list[nn.Module] = [nn.Conv2d(c.in_channels, c.channels, 3, padding=1)]
        width = c.channels
        for level, out_width in enumerate(widths):
            for _ in range(c.num_res_blocks):
                layers.append(ResBlock(width, out_width, c.groups))
                width = out_width
            if level != len(widths) - 1:
                layers.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
        layers += [_middle(width, c), group_norm(width, c.groups), nn.SiLU(),
                   nn.Conv2d(width, 2 * c.latent_channels, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class Decoder(nn.Module):
    """z [B, latent_channels, h, w] -> x [B, C, h*f, w*f]."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        c = config
        widths = c.level_widths
        width = widths[-1]
        layers: list[nn.Module] = [nn.Conv2d(c.latent_channels, width, 3, padding=1), _middle(width, c)]
        for level in reversed(range(len(widths))):
            for _ in range(c.num_res_blocks + 1):
                layers.append(ResBlock(width, widths[level], c.groups))
                width = widths[level]
            if level != 0:
                layers.append(Upsample(width))
        layers += [group_norm(width, c.groups), nn.SiLU(), nn.Conv2d(width, c.in_channels, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.layers(z)


class AutoencoderKL(nn.Module):
    """Encoder to a diagonal Gaussian posterior over latents, and a decoder back to pixels."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    @property
    def factor(self) -> int:
        return self.config.factor

    def latent_shape(self, image_shape) -> tuple[int, int, int]:
        """(latent_channels, H/f, W/f) for images of shape (C, H, W); raises if f does not divide."""
        return self.config.latent_shape(image_shape)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The posterior q(z | x) as (mean, logvar), each [B, latent_channels, H/f, W/f]."""
        if x.ndim != 4:
            raise ValueError(f"the autoencoder takes images [B, C, H, W], got shape {tuple(x.shape)}")
        self.latent_shape(x.shape[1:])
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)

    @staticmethod
    def sample_latent(mean: Tensor, logvar: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """z = mean + exp(logvar / 2) * noise: the reparameterisation (Kingma & Welling 2014),
        so gradients reach the encoder through a sample. The noise is drawn on the generator's
        device and moved, so a CPU generator gives the same latents on any device."""
        device = generator.device if generator is not None else mean.device
        noise = torch.randn(mean.shape, generator=generator, device=device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * logvar) * noise.to(mean.device)

    def decode(self, z: Tensor) -> Tensor:
        if z.ndim != 4 or z.shape[1] != self.config.latent_channels:
            raise ValueError(f"the decoder takes latents [B, {self.config.latent_channels}, h, w], "
                             f"got shape {tuple(z.shape)}")
        return self.decoder(z)

    @staticmethod
    def kl(mean: Tensor, logvar: Tensor) -> Tensor:
        """KL(N(mean, diag(exp(logvar))) || N(0, I)) per sample [B], summed over latent dimensions:
        1/2 sum(mean^2 + exp(logvar) - 1 - logvar) (Kingma & Welling 2014, appendix B)."""
        terms = mean.pow(2) + logvar.exp() - 1.0 - logvar
        return 0.5 * terms.flatten(1).sum(dim=1)

    def forward(self, x: Tensor, generator: torch.Generator | None = None,
                sample: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """(reconstruction, mean, logvar); decodes a posterior sample, or the mean if not `sample`."""
        mean, logvar = self.encode(x)
        z = self.sample_latent(mean, logvar, generator) if sample else mean
        return self.decode(z), mean, logvar


def build_autoencoder(config: dict[str, Any] | AutoencoderConfig) -> AutoencoderKL:
    """An autoencoder from its config or from the dict ``autoencoder_config`` gave."""
    if not isinstance(config, AutoencoderConfig):
        config = AutoencoderConfig.from_dict(config)
    return AutoencoderKL(config)


def autoencoder_config(model: AutoencoderKL) -> dict[str, Any]:
    """The JSON-serialisable description of `model`."""
    if not isinstance(model, AutoencoderKL):
        raise ValueError(f"{type(model).__name__} is not an AutoencoderKL")
    return model.config.to_dict()
