"""Noise-aware classifiers for classifier guidance: ``net(x, noise_level) -> logits [B, K]``.

Classifier guidance (Dhariwal & Nichol 2021, section 4) needs grad_x log p(y | x_t) at every
noise level a sampler visits, so the classifier is trained on noised inputs and told the noise
level, exactly as a denoiser is. ``x`` and ``noise_level`` arrive as a denoiser's do (see
``diffuse.models``): x scaled to about unit variance, the noise level as c_noise [B]; the wrapper
that does this for a process is :class:`diffuse.classifier.NoiseAwareClassifier`.

- ``unet_classifier`` is the U-Net's encoder half (input conv, the down path and the middle
  block, built by the same functions as the U-Net's), then GroupNorm, SiLU, a global average
  pool and a linear head: Dhariwal & Nichol's classifier with mean instead of attention pooling.
- ``mlp_classifier`` is the residual MLP's trunk with a linear head, for vectors (toy sets).

These are kept out of the denoiser registry (``build_network``) because their output is not
shaped like their input; ``build_classifier`` / ``classifier_config`` are their registry.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from .embeddings import ConditionEmbedding
from .mlp import ResidualBlock
from .unet import (Stage, UNetConfig, check_image, condition_embedding, down_path, embedding_dim, group_norm,
                   make_stage)
from .validation import int_tuple, positive_int


@dataclass
class UNetClassifierConfig:
    """Shape of a :class:`UNetClassifier`: ``num_classes`` logits out, the rest as in
    :class:`~diffuse.models.UNetConfig` (whose checks it shares)."""

    num_classes: int
    in_channels: int = 1
    channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 2
    attention_levels: tuple[int, ...] = (1,)
    num_heads: int = 4
    dropout: float = 0.0
    norm_groups: int = 32

    def __post_init__(self) -> None:
        positive_int("UNetClassifierConfig", "num_classes", self.num_classes)
        self.channel_mults = int_tuple("UNetClassifierConfig", "channel_mults", self.channel_mults)
        self.attention_levels = int_tuple("UNetClassifierConfig", "attention_levels", self.attention_levels)
        self.dropout = self.encoder().dropout  # validated (and made a float) by UNetConfig

    def encoder(self) -> UNetConfig:
        """The U-Net config whose encoder half this classifier is (unconditional: the class is
        what it predicts, not what it is told)."""
        return UNetConfig(in_channels=self.in_channels, channels=self.channels, channel_mults=self.channel_mults,
                          num_res_blocks=self.num_res_blocks, attention_levels=self.attention_levels,
                          num_heads=self.num_heads, dropout=self.dropout, norm_groups=self.norm_groups)


class UNetClassifier(nn.Module):
    """Classifier for [B, C, H, W] inputs, called as ``net(x, noise_level) -> logits [B, K]``."""

    def __init__(self, config: UNetClassifierConfig):
        super().__init__()
        self.config = config
        c = self.encoder_config = config.encoder()
        emb_dim = embedding_dim(c)
        self.condition = condition_embedding(c)
        self.input = nn.Conv2d(c.in_channels, c.channels, 3, padding=1)
        self.down, widths = down_path(c, emb_dim)
        width = widths[-1]
        self.middle = make_stage(c, width, width, len(c.channel_mults) - 1, emb_dim)
        self.output_norm = group_norm(width, c.groups)
        self.head = nn.Linear(width, config.num_classes)
        # A fresh classifier says log K nats everywhere: uniform over the classes.
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor, noise_level: Tensor) -> Tensor:
        check_image(self.encoder_config, x, "UNetClassifier")
        emb = self.condition(noise_level, None, x.shape[0])
        h = self.input(x)
        for module in self.down:
            h = module(h, emb) if isinstance(module, Stage) else module(h)
        h = self.middle(h, emb)
        return self.head(F.silu(self.output_norm(h)).mean(dim=(2, 3)))


@dataclass
class MLPClassifierConfig:
    """Shape of an :class:`MLPClassifier`: vectors of size ``dim`` to ``num_classes`` logits;
    hidden, depth and time_dim as in :class:`~diffuse.models.MLPConfig`."""

    dim: int
    num_classes: int
    hidden: int = 128
    depth: int = 3
    time_dim: int = 64

    def __post_init__(self) -> None:
        for name in ("dim", "num_classes", "hidden", "depth", "time_dim"):
            positive_int("MLPClassifierConfig", name, getattr(self, name))
        if self.time_dim % 2:
            raise ValueError(f"MLPClassifierConfig.time_dim must be even (cos/sin pairs), got {self.time_dim}")


class MLPClassifier(nn.Module):
    """Classifier for [B, dim] inputs, called as ``net(x, noise_level) -> logits [B, K]``."""

    def __init__(self, config: MLPClassifierConfig):
        super().__init__()
        self.config = config
        c = config
        self.condition = ConditionEmbedding(c.time_dim, c.hidden, None)
        self.input = nn.Linear(c.dim, c.hidden)
        self.blocks = nn.ModuleList(ResidualBlock(c.hidden) for _ in range(c.depth))
        self.output_norm = nn.LayerNorm(c.hidden)
        self.head = nn.Linear(c.hidden, c.num_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor, noise_level: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.config.dim:
            raise ValueError(f"MLPClassifier expects x of shape [B, {self.config.dim}], got {tuple(x.shape)}")
        emb = self.condition(noise_level, None, x.shape[0])
        h = self.input(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.head(self.output_norm(h))


def default_classifier(modality: str, shape: tuple[int, ...], num_classes: int) -> dict:
    """A classifier sized for the data, the counterpart of the diffusion task's default network:
    the encoder half of the default U-Net for images, a residual MLP for vectors."""
    if modality == "vector":
        return {"kind": "mlp_classifier", "dim": shape[0], "num_classes": num_classes}
    if modality != "image":
        raise ValueError(f"no default classifier for {modality} data; give one (--network)")
    channels, height, width = shape
    mults = [1, 2] if min(height, width) <= 16 else [1, 2, 2]
    while len(mults) > 1 and (height % 2 ** (len(mults) - 1) or width % 2 ** (len(mults) - 1)):
        mults.pop()
    return {"kind": "unet_classifier", "num_classes": num_classes, "in_channels": channels, "channels": 32,
            "channel_mults": mults, "num_res_blocks": 2, "attention_levels": [len(mults) - 1]}
