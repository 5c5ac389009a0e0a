"""A U-Net denoiser for images [B, C, H, W].

Layout: an input conv, then one *level* per entry of ``channel_mults``. Going down, each
level runs ``num_res_blocks`` residual blocks (with self-attention after each where the
level is in ``attention_levels``) and then halves the resolution with a stride-2 conv,
except the last level. A middle block works at the lowest resolution. Going up mirrors
this with one extra block per level, each block taking a skip connection from the
matching point on the way down, and nearest-neighbour upsampling followed by a conv
between levels.

Sizes: with L levels the input height and width must be divisible by 2**(L-1). We raise
rather than pad: padding would change what the border pixels mean to the network and
the output would have to be cropped back, which is easy to get subtly wrong. Pick
``channel_mults`` to suit the data: (1, 2) for 8x8 (8 -> 4), (1, 2, 2) for 28x28
(28 -> 14 -> 7), (1, 2, 2) or (1, 2, 2, 2) for 32x32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import CrossAttention, check_context
from .embeddings import TIME_FEATURES, ConditionEmbedding, position_embedding
from .validation import boolean, int_tuple, optional_num_classes, pooled_context_needs_context, positive_int


@dataclass
class UNetConfig:
    """Shape of a :class:`UNet`. Every field is a plain JSON value (tuples travel as lists).

    in_channels / out_channels: image channels in and out (out None: same as in).
    channels: width of the first level; level i has ``channels * channel_mults[i]``.
    num_res_blocks: residual blocks per level on the way down (one more on the way up).
    attention_levels: indices into ``channel_mults`` that get self-attention; attention
    costs grow with the square of the pixel count, so use it at the low resolutions.
    num_heads: attention heads; must divide the width of every attention level.
    dropout: dropout inside residual blocks. num_classes: classes for conditioning (None:
    unconditional); row ``num_classes`` of the class table is the null class.
    context_dim: width of a context sequence (a text encoder's output) that every attention
    level also cross-attends to (None: no cross-attention). pooled_context: also add the
    context's mean over its real tokens, projected, to the conditioning vector of every block.
    position_code: every attention layer adds a fixed sinusoidal code of each pixel's (row,
    column) to the normalised features it attends with, so attention, and the cross-attention
    to a caption's words, can tell where a pixel is, not only what is there; each attention
    level's width must then be divisible by 4.
    norm_groups: GroupNorm groups, capped at ``channels``; every norm layer uses
    ``min(norm_groups, channels)`` groups, which must divide ``channels``.
    middle_blocks: residual blocks at the lowest resolution, 1 or 2 (res-attention-res, the
    middle of DDPM's and diffusers' U-Nets). time_features: how the noise-level input becomes
    features, "log_spaced" (for EDM's c_noise) or "timestep" (DDPM's code of a timestep 0..N-1).
    With middle_blocks=2, time_features="timestep" and one attention width, the network is a
    diffusers UNet2DModel layer for layer (diffuse export).
    """

    in_channels: int = 1
    out_channels: int | None = None
    channels: int = 64
    channel_mults: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 2
    attention_levels: tuple[int, ...] = (1,)
    num_heads: int = 4
    dropout: float = 0.0
    num_classes: int | None = None
    norm_groups: int = 32
    context_dim: int | None = None
    pooled_context: bool = False
    position_code: bool = False
    middle_blocks: int = 1
    time_features: str = "log_spaced"

    def __post_init__(self) -> None:
        owner = "UNetConfig"
        if self.middle_blocks not in (1, 2) or isinstance(self.middle_blocks, bool):
            raise ValueError(f"{owner}.middle_blocks must be 1 or 2, got {self.middle_blocks!r}")
        if self.time_features not in TIME_FEATURES:
            raise ValueError(f"{owner}.time_features must be one of {sorted(TIME_FEATURES)}, got {self.time_features!r}")
        # JSON brings tuples back as lists; normalise here so every way in gives equal configs.
        self.channel_mults = int_tuple(owner, "channel_mults", self.channel_mults)
        self.attention_levels = int_tuple(owner, "attention_levels", self.attention_levels)
        if self.out_channels is None:
            self.out_channels = self.in_channels
        for name in (
            "in_channels", "out_channels", "channels", "num_res_blocks", "num_heads", "norm_groups"
        ):
            positive_int(owner, name, getattr(self, name))
        optional_num_classes(owner, self.num_classes)
        if self.context_dim is not None:
            positive_int(owner, "context_dim", self.context_dim)
            if not self.attention_levels:
                raise ValueError(f"{owner}: context_dim needs at least one attention level to cross-attend at")
        pooled_context_needs_context(owner, self.pooled_context, self.context_dim)
        boolean(owner, "position_code", self.position_code)
        if not self.channel_mults:
            raise ValueError(f"{owner}.channel_mults must have at least one level")
        for mult in self.channel_mults:
            positive_int(owner, "channel_mults entry", mult)
        levels = len(self.channel_mults)
        for level in self.attention_levels:
            if not 0 <= level < levels:
                raise ValueError(
                    f"{owner}.attention_levels entry {level} is not a level index; "
                    f"channel_mults has {levels} levels (0..{levels - 1})"
                )
        number = isinstance(self.dropout, (int, float)) and not isinstance(self.dropout, bool)
        if not number or not 0 <= self.dropout < 1:
            raise ValueError(f"{owner}.dropout must be a number in [0, 1), got {self.dropout!r}")
        self.dropout = float(self.dropout)
        # Every width in the network, including the concatenations on the up path, is a
        # multiple of `channels`, so one group count that divides `channels` fits them all.
        if self.channels % self.groups:
            raise ValueError(
                f"{owner}: channels={self.channels} is not divisible by {self.groups} GroupNorm "
                f"groups (min(norm_groups, channels)); change channels or norm_groups"
            )
        for level in self.attention_levels:
            width = self.level_widths[level]
            if width % self.num_heads:
                raise ValueError(
                    f"{owner}: attention level {level} has width {width}, "
                    f"not divisible by num_heads={self.num_heads}"
                )
            if self.position_code and width % 4:
                raise ValueError(
                    f"{owner}: attention level {level} has width {width}, not divisible by 4 as "
                    f"position_code needs (cos/sin pairs for rows and for columns)"
                )

    @property
    def groups(self) -> int:
        """GroupNorm groups used by every norm layer."""
        return min(self.norm_groups, self.channels)

    @property
    def level_widths(self) -> list[int]:
        return [self.channels * m for m in self.channel_mults]


def group_norm(width: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, width)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the conditioning applied as a scale and shift (FiLM)
    after the second norm, and a 1x1 conv on the skip path when the width changes."""

    def __init__(self, in_width: int, out_width: int, emb_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = group_norm(in_width, groups)
        self.conv1 = nn.Conv2d(in_width, out_width, 3, padding=1)
        self.film = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_width))
        self.norm2 = group_norm(out_width, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_width, out_width, 3, padding=1)
        self.skip = nn.Conv2d(in_width, out_width, 1) if in_width != out_width else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        # 1 + scale: a zero conditioning leaves the normalised features as they are.
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


def with_position_code(features: Tensor) -> Tensor:
    """features [B, C, H, W] plus the fixed code of each pixel's (row, column) in C features."""
    _, c, h, w = features.shape
    # Built where the features are: a U-Net takes any size, so the code is not a fixed buffer.
    code = position_embedding(h, w, c, features.device).to(features.dtype).transpose(0, 1).reshape(1, c, h, w)
    return features + code


def attention_features(norm: nn.GroupNorm, x: Tensor, position_code: bool) -> Tensor:
    """What an attention layer attends with: the normalised feature map, with the pixels'
    position code when the layer has one."""
    features = norm(x)
    return with_position_code(features) if position_code else features


class SelfAttention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, as a residual branch."""

    def __init__(self, width: int, num_heads: int, groups: int, position_code: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.position_code = position_code
        self.norm = group_norm(width, groups)
        self.qkv = nn.Conv2d(width, 3 * width, 1)
        self.proj = nn.Conv2d(width, width, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        features = attention_features(self.norm, x, self.position_code)
        qkv = self.qkv(features).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        # scaled_dot_product_attention wants [B, heads, tokens, head_dim].
        q, k, v = qkv.transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class PixelCrossAttention(nn.Module):
    """The pixels of a feature map attend to a context sequence, as a residual branch that
    starts at zero (its output projection is zero-initialised), so adding text to a network
    starts from the network without it."""

    def __init__(self, width: int, num_heads: int, groups: int, context_dim: int, position_code: bool = False):
        super().__init__()
        self.position_code = position_code
        self.norm = group_norm(width, groups)
        self.attention = CrossAttention(width, num_heads, context_dim)
        nn.init.zeros_(self.attention.proj.weight)
        nn.init.zeros_(self.attention.proj.bias)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None) -> Tensor:
        b, c, h, w = x.shape
        tokens = attention_features(self.norm, x, self.position_code).reshape(b, c, h * w).transpose(1, 2)
        out = self.attention(tokens, context, mask)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class Downsample(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    # Nearest-neighbour then conv, rather than a transposed conv, avoids checkerboard
    # artefacts from uneven kernel overlap.
    def __init__(self, width: int):
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Stage(nn.Module):
    """A residual block optionally followed by self-attention and cross-attention to a context:
    the unit both paths repeat."""

    def __init__(self, res: ResBlock, attention: SelfAttention | None, cross: PixelCrossAttention | None = None):
        super().__init__()
        self.res = res
        self.attention = attention if attention is not None else nn.Identity()
        self.cross = cross

    def forward(self, x: Tensor, emb: Tensor, context: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        x = self.attention(self.res(x, emb))
        if self.cross is None or context is None or context.shape[1] == 0:
            return x
        return self.cross(x, context, mask)


def embedding_dim(c: UNetConfig) -> int:
    # Twice the base width is ample for a scalar noise level plus a class; the common
    # choice of four times would add ~0.3M parameters of FiLM projections here.
    return 2 * c.channels


def condition_embedding(c: UNetConfig) -> ConditionEmbedding:
    # Sinusoidal features come in cos/sin pairs, hence the even count.
    frequency_dim = c.channels + c.channels % 2
    return ConditionEmbedding(frequency_dim, embedding_dim(c), c.num_classes,
                              c.context_dim if c.pooled_context else None, c.time_features)


def make_stage(c: UNetConfig, in_width: int, out_width: int, level: int, emb_dim: int) -> Stage:
    res = ResBlock(in_width, out_width, emb_dim, c.dropout, c.groups)
    if level not in c.attention_levels:
        return Stage(res, None)
    cross = None
    if c.context_dim is not None:
        cross = PixelCrossAttention(out_width, c.num_heads, c.groups, c.context_dim, c.position_code)
    return Stage(res, SelfAttention(out_width, c.num_heads, c.groups, c.position_code), cross)


def down_path(c: UNetConfig, emb_dim: int) -> tuple[nn.ModuleList, list[int]]:
    """The encoder half after the input conv: per level, ``num_res_blocks`` stages and (but
    for the last level) a Downsample. Also returns the width of every tensor pushed for the
    up path, the input conv's first; its last entry is the width at the lowest resolution.
    The noise-aware classifier (models/classifier.py) is this half with a pooled head."""
    widths = c.level_widths
    last = len(widths) - 1
    down = nn.ModuleList()
    skip_widths = [c.channels]
    width = c.channels
    for level, out_width in enumerate(widths):
        for _ in range(c.num_res_blocks):
            down.append(make_stage(c, width, out_width, level, emb_dim))
            width = out_width
            skip_widths.append(width)
        if level != last:
            down.append(Downsample(width))
            skip_widths.append(width)
    return down, skip_widths


def middle_path(c: UNetConfig, width: int, emb_dim: int) -> tuple[Stage, Stage | None]:
    """The block at the lowest resolution (with attention if the lowest level has it), and with
    ``middle_blocks=2`` a second, attention-free one. A single block keeps the default network
    under 4M parameters; at 8x8 the lowest level is 4x4, where one attention layer already sees
    every pixel."""
    last = len(c.channel_mults) - 1
    middle = make_stage(c, width, width, last, emb_dim)
    middle2 = Stage(ResBlock(width, width, emb_dim, c.dropout, c.groups), None) if c.middle_blocks == 2 else None
    return middle, middle2


def encode(net: nn.Module, x: Tensor, noise_level: Tensor, labels: Tensor | None, context: Tensor | None,
           context_mask: Tensor | None, hint: Tensor | None = None) -> tuple[Tensor, list[Tensor], Tensor]:
    """The encoder half of a U-Net: (the middle's output, every skip in the order pushed, the
    conditioning vector). `net` holds the modules of the half (``condition``, ``input``, ``down``,
    ``middle``, ``middle2``): a UNet, or the trainable copy of one in a control adapter
    (models/control.py), whose control image enters as ``hint``, added to the input conv's features."""
    check_image(net.config, x, type(net).__name__)
    check_context(net.config.context_dim, context, context_mask, x.shape[0])
    emb = net.condition(noise_level, labels, x.shape[0], context, context_mask)
    h = net.input(x)
    if hint is not None:
        h = h + hint
    skips = [h]
    for module in net.down:
        h = module(h, emb, context, context_mask) if isinstance(module, Stage) else module(h)
        skips.append(h)
    h = net.middle(h, emb, context, context_mask)
    if net.middle2 is not None:
        h = net.middle2(h, emb)
    return h, skips, emb


def check_image(c: UNetConfig, x: Tensor, owner: str) -> None:
    """Raise unless x is [B, in_channels, H, W] with H and W divisible at every level."""
    if x.ndim != 4 or x.shape[1] != c.in_channels:
        raise ValueError(
            f"{owner} expects x of shape [B, {c.in_channels}, H, W], got {tuple(x.shape)}"
        )
    for level in range(len(c.channel_mults) - 1):
        height, width = x.shape[2] >> level, x.shape[3] >> level
        if height % 2 or width % 2:
            raise ValueError(
                f"{owner} input {x.shape[2]}x{x.shape[3]}: level {level} would downsample an odd "
                f"size {height}x{width}; with {len(c.channel_mults)} levels height and width "
                f"must be divisible by {2 ** (len(c.channel_mults) - 1)} (change channel_mults)"
            )


class UNet(nn.Module):
    """Denoiser for [B, C, H, W] inputs, called as
    ``net(x, noise_level, labels=None, *, context=None, context_mask=None)``; the context
    arguments are DiT's (models/attention.py) and need ``context_dim`` in the config."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        c = config
        emb_dim = embedding_dim(c)
        self.condition = condition_embedding(c)
        self.input = nn.Conv2d(c.in_channels, c.channels, 3, padding=1)
        self.down, skip_widths = down_path(c, emb_dim)
        width = skip_widths[-1]
        widths = c.level_widths
        # Middle: one more block (or two) between the paths.
        self.middle, self.middle2 = middle_path(c, width, emb_dim)

        # Up path: one more block per level than going down, so that the skip pushed by
        # each downsample (and by the input conv) is consumed too.
        self.up = nn.ModuleList()
        for level in reversed(range(len(widths))):
            out_width = widths[level]
            for _ in range(c.num_res_blocks + 1):
                self.up.append(make_stage(c, width + skip_widths.pop(), out_width, level, emb_dim))
                width = out_width
            if level != 0:
                self.up.append(Upsample(width))

        self.output_norm = group_norm(width, c.groups)
        self.output = nn.Conv2d(width, c.out_channels, 3, padding=1)
        # A fresh network predicts exactly zero, so training starts from the wrapper's skip
        # path alone instead of from a random function of the input.
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def forward(self, x: Tensor, noise_level: Tensor, labels: Tensor | None = None, *,
                context: Tensor | None = None, context_mask: Tensor | None = None,
                skip_residuals: Sequence[Tensor] | None = None, middle_residual: Tensor | None = None) -> Tensor:
        """``skip_residuals`` (one per skip, in the order pushed: the input conv's first) and
        ``middle_residual`` are added to the skip connections and to the middle's output: where a
        control adapter steers the frozen network, as in ControlNet; the path into the middle
        stays the network's own."""
        h, skips, emb = encode(self, x, noise_level, labels, context, context_mask)
        if middle_residual is not None:
            h = h + middle_residual
        if skip_residuals is not None:
            if len(skip_residuals) != len(skips):
                raise ValueError(f"the UNet has {len(skips)} skip connections; got {len(skip_residuals)} residuals")
            skips = [skip + residual for skip, residual in zip(skips, skip_residuals)]
        for module in self.up:
            if isinstance(module, Stage):
                h = module(torch.cat([h, skips.pop()], dim=1), emb, context, context_mask)
            else:
                h = module(h)
        return self.output(F.silu(self.output_norm(h)))

