"""A residual MLP denoiser for vectors: 2-D toy distributions and other [B, dim] data."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from .embeddings import ConditionEmbedding
from .validation import optional_num_classes, positive_int


@dataclass
class MLPConfig:
    """Shape of an :class:`MLP`. Every field is a plain JSON value.

    dim: size of each data vector. hidden: width of the residual stream. depth: number of
    residual blocks. num_classes: classes for conditioning (None: unconditional); the
    embedding gets one extra row, index ``num_classes``, for the null class. time_dim:
    number of sinusoidal features of the noise level before its MLP.
    """

    dim: int
    hidden: int = 256
    depth: int = 4
    num_classes: int | None = None
    time_dim: int = 64

    def __post_init__(self) -> None:
        for name in ("dim", "hidden", "depth", "time_dim"):
            positive_int("MLPConfig", name, getattr(self, name))
        if self.time_dim % 2:
            raise ValueError(
                f"MLPConfig.time_dim must be even (cos/sin pairs), got {self.time_dim}"
            )
        optional_num_classes("MLPConfig", self.num_classes)


class ResidualBlock(nn.Module):
    """Pre-norm residual block whose normalised input is scaled and shifted by the conditioning.

    This is FiLM: the conditioning chooses a per-feature affine map, which lets the noise
    level change *how* features are used, not only add a bias to them. The scale is applied
    as ``1 + scale`` so a block with a zero projection is the identity modulation.
    """

    def __init__(self, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.film = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.body = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        scale, shift = self.film(emb).chunk(2, dim=1)
        return h + self.body(self.norm(h) * (1 + scale) + shift)


class MLP(nn.Module):
    """Denoiser for [B, dim] inputs, called as ``net(x, noise_level, labels=None)``."""

    def __init__(self, config: MLPConfig):
        super().__init__()
        self.config = config
        c = config
        self.condition = ConditionEmbedding(c.time_dim, c.hidden, c.num_classes)
        self.input = nn.Linear(c.dim, c.hidden)
        self.blocks = nn.ModuleList(ResidualBlock(c.hidden) for _ in range(c.depth))
        self.output_norm = nn.LayerNorm(c.hidden)
        self.output = nn.Linear(c.hidden, c.dim)
        # A fresh network predicts exactly zero, so training starts from the wrapper's skip
        # path alone instead of from a random function of the input.
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def forward(self, x: Tensor, noise_level: Tensor, labels: Tensor | None = None) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.config.dim:
            raise ValueError(f"MLP expects x of shape [B, {self.config.dim}], got {tuple(x.shape)}")
        emb = self.condition(noise_level, labels, x.shape[0])
        h = self.input(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.output(self.output_norm(h))
