"""A diffusion transformer (DiT) denoiser for images [B, C, H, W] (Peebles & Xie, 2023).

The image is cut into ``patch_size`` x ``patch_size`` patches; each patch becomes one token
through a linear map (the same as a conv with kernel and stride equal to the patch size),
and a fixed 2-D sinusoidal code of the patch's row and column is added. A stack of
transformer blocks mixes the tokens; a final layer maps every token back to its patch's
pixels and the patches are laid back into an image.

Conditioning is adaLN-Zero (the paper's section 3.2, its best variant): the noise level and
class are embedded and summed into one vector ``c``, and per block a linear map of ``c``
gives the shift and scale applied after each (non-affine) LayerNorm and a gate that
multiplies each residual branch. That linear map starts at zero, so every gate starts at
zero and every block starts as the identity; the final projection also starts at zero, so a
fresh network outputs exactly zero, like the other networks here.

With ``context_dim`` set, each block also cross-attends from the image tokens to a sequence
of context vectors (e.g. a text encoder's output), as a third residual branch gated the same
way. ``context=None`` means "no context", which is also what a sample whose tokens are all
masked out gets; that branch then adds exactly nothing.

Named sizes, scaled for a CPU rather than the paper's GPUs, are in :data:`DIT_CONFIGS`;
:func:`dit_config` turns one into a full network description for ``build_network``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from .attention import CrossAttention, check_context, merge_heads, split_heads
from .embeddings import ConditionEmbedding, position_embedding
from .validation import optional_num_classes, pooled_context_needs_context, positive_int

# Sinusoidal features of the noise level fed to the conditioning MLP. The input is one
# scalar; 64 log-spaced frequencies over the range chosen in embeddings.py resolve it finely.
NOISE_FREQUENCY_DIM = 128


@dataclass
class DiTConfig:
    """Shape of a :class:`DiT`. Every field is a plain JSON value (tuples travel as lists).

    in_channels / out_channels: image channels in and out (out None: same as in).
    image_size: the one input size, an int (square) or (height, width); the position code
    is computed for its grid of patches. patch_size: side of a patch; must divide both
    image sides. hidden: token width; divisible by num_heads and by 4 (the position code
    spends half the width on rows and half on columns, each as cos/sin pairs).
    depth: transformer blocks. num_heads: attention heads. mlp_ratio: MLP width / hidden.
    num_classes: classes for conditioning (None: unconditional); row ``num_classes`` of
    the class table is the null class. context_dim: width of the cross-attention context
    (None: no cross-attention). pooled_context: also add the context's mean over its real
    tokens, projected, to the conditioning vector. dropout: dropout on the attention and MLP
    branches.
    """

    in_channels: int = 1
    image_size: int | tuple[int, int] = 8
    patch_size: int = 2
    hidden: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    num_classes: int | None = None
    out_channels: int | None = None
    context_dim: int | None = None
    pooled_context: bool = False
    dropout: float = 0.0

    def __post_init__(self) -> None:
        owner = "DiTConfig"
        if isinstance(self.image_size, (list, tuple)):
            # JSON brings a tuple back as a list; normalise so every way in gives equal configs.
            if len(self.image_size) != 2:
                raise ValueError(
                    f"{owner}.image_size must be an int or (height, width), got {self.image_size!r}"
                )
            self.image_size = tuple(self.image_size)
            for side in self.image_size:
                positive_int(owner, "image_size entry", side)
        else:
            positive_int(owner, "image_size", self.image_size)
        if self.out_channels is None:
            self.out_channels = self.in_channels
        for name in ("in_channels", "out_channels", "patch_size", "hidden", "depth", "num_heads"):
            positive_int(owner, name, getattr(self, name))
        optional_num_classes(owner, self.num_classes)
        if self.context_dim is not None:
            positive_int(owner, "context_dim", self.context_dim)
        pooled_context_needs_context(owner, self.pooled_context, self.context_dim)
        height, width = self.image_hw
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"{owner}: image_size {height}x{width} is not divisible by "
                f"patch_size={self.patch_size}; pick a patch size that divides both sides"
            )
        if self.hidden % self.num_heads:
            raise ValueError(
                f"{owner}: hidden={self.hidden} is not divisible by num_heads={self.num_heads}"
            )
        if self.hidden % 4:
            raise ValueError(
                f"{owner}: hidden={self.hidden} must be divisible by 4 for the 2-D position code "
                f"(cos/sin pairs for rows and for columns)"
            )
        number = isinstance(self.mlp_ratio, (int, float)) and not isinstance(self.mlp_ratio, bool)
        if not number or self.mlp_ratio <= 0 or int(self.hidden * self.mlp_ratio) < 1:
            raise ValueError(f"{owner}.mlp_ratio must be a positive number, got {self.mlp_ratio!r}")
        self.mlp_ratio = float(self.mlp_ratio)
        number = isinstance(self.dropout, (int, float)) and not isinstance(self.dropout, bool)
        if not number or not 0 <= self.dropout < 1:
            raise ValueError(f"{owner}.dropout must be a number in [0, 1), got {self.dropout!r}")
        self.dropout = float(self.dropout)

    @property
    def image_hw(self) -> tuple[int, int]:
        size = self.image_size
        return (size, size) if isinstance(size, int) else size

    @property
    def grid(self) -> tuple[int, int]:
        """Patches per column and per row."""
        height, width = self.image_hw
        return height // self.patch_size, width // self.patch_size


# Named sizes. The paper's S/B/L/XL have widths 384..1152 and depths 12..28; these are cut
# down to train on a CPU within minutes to hours. Heads are 32 wide in XS and 64 wide (the
# paper's choice) in S and B. Patch size, channels, image size and classes depend on the data
# and are left to the caller. Parameter counts (1 channel, 8x8, patch 2, unconditional):
# DiT-XS 0.71M, DiT-S 4.1M, DiT-B 21.8M; a test pins these.
DIT_CONFIGS: dict[str, dict[str, Any]] = {
    "DiT-XS": {"hidden": 96, "depth": 4, "num_heads": 3},
    "DiT-S": {"hidden": 192, "depth": 6, "num_heads": 3},
    "DiT-B": {"hidden": 384, "depth": 8, "num_heads": 6},
}


def dit_config(name: str, **overrides: Any) -> dict[str, Any]:
    """The full description ``{"kind": "dit", ...}`` of the named size with ``overrides``.

    The result lists every field, so a saved model does not depend on this table staying the
    same, and it can be passed to ``build_network`` or used as a training config's network:
    ``dit_config("DiT-S", in_channels=3, image_size=32, patch_size=4, num_classes=10)``.
    """
    if name not in DIT_CONFIGS:
        raise ValueError(f"unknown DiT size {name!r}; known sizes: {sorted(DIT_CONFIGS)}")
    known = {f.name for f in dataclasses.fields(DiTConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown field(s) for 'dit': {unknown}; known fields: {sorted(known)}")
    config = DiTConfig(**{**DIT_CONFIGS[name], **overrides})
    fields = dataclasses.asdict(config)
    return {"kind": "dit", **{k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}}


# ------------------------------------------------------------------ patches and positions


def patchify(x: Tensor, patch_size: int) -> Tensor:
    """[B, C, H, W] -> [B, (H/p)(W/p), C p p]: row-major patches, each flattened as (C, p, p).

    That flattening order matches a conv weight of shape [out, C, p, p], so a linear map of
    these vectors is exactly a conv with kernel and stride p.
    """
    b, c, h, w = x.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image {h}x{w} is not divisible by patch_size={p}")
    x = x.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), c * p * p)


def unpatchify(tokens: Tensor, patch_size: int, height: int, width: int) -> Tensor:
    """The inverse of :func:`patchify`: [B, (H/p)(W/p), C p p] -> [B, C, H, W]."""
    b, n, d = tokens.shape
    p = patch_size
    gh, gw = height // p, width // p
    if height % p or width % p or n != gh * gw or d % (p * p):
        raise ValueError(
            f"tokens of shape {tuple(tokens.shape)} are not the {p}x{p} patches of a "
            f"{height}x{width} image"
        )
    c = d // (p * p)
    x = tokens.reshape(b, gh, gw, c, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, height, width)


# ------------------------------------------------------------------------------ blocks


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    # 1 + scale: a zero conditioning leaves the normalised tokens as they are.
    return x * (1 + scale[:, None]) + shift[:, None]


class SelfAttention(nn.Module):
    def __init__(self, hidden: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = (split_heads(t, self.num_heads) for t in self.qkv(x).chunk(3, dim=-1))
        return self.proj(merge_heads(F.scaled_dot_product_attention(q, k, v)))


class DiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero conditioning.

    Each branch is ``x + gate * branch(norm(x) * (1 + scale) + shift)`` with shift, scale
    and gate from a linear map of the conditioning vector. That map starts at zero, so the
    block starts as exactly the identity and learns how far to depart from it.
    """

    def __init__(self, hidden: int, num_heads: int, mlp_ratio: float, dropout: float,
                 cross_attention: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attention = SelfAttention(hidden, num_heads)
        if cross_attention:
            self.norm_cross = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
            self.cross_attention = CrossAttention(hidden, num_heads)
        else:
            self.cross_attention = None
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        width = int(hidden * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, width), nn.GELU(approximate="tanh"), nn.Dropout(dropout),
            nn.Linear(width, hidden),
        )
        self.dropout = nn.Dropout(dropout)
        # shift, scale, gate for each branch: attention, (cross-attention,) MLP.
        self.branches = 3 if cross_attention else 2
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 3 * self.branches * hidden))
        nn.init.zeros_(self.modulation[1].weight)
        nn.init.zeros_(self.modulation[1].bias)

    def forward(self, x: Tensor, cond: Tensor, context: Tensor | None = None,
                context_mask: Tensor | None = None) -> Tensor:
        mod = self.modulation(cond).chunk(3 * self.branches, dim=1)
        shift, scale, gate = mod[0:3]
        x = x + gate[:, None] * self.dropout(self.attention(modulate(self.norm1(x), shift, scale)))
        if self.cross_attention is not None and context is not None and context.shape[1] > 0:
            shift, scale, gate = mod[3:6]
            h = modulate(self.norm_cross(x), shift, scale)
            x = x + gate[:, None] * self.dropout(self.cross_attention(h, context, context_mask))
        shift, scale, gate = mod[-3:]
        return x + gate[:, None] * self.mlp(modulate(self.norm2(x), shift, scale))


class FinalLayer(nn.Module):
    """adaLN (shift and scale, no gate) then a linear map from each token to its patch's pixels."""

    def __init__(self, hidden: int, patch_pixels: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.output = nn.Linear(hidden, patch_pixels)
        # A fresh network predicts exactly zero, so training starts from the wrapper's skip
        # path alone instead of from a random function of the input.
        for layer in (self.modulation[1], self.output):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        shift, scale = self.modulation(cond).chunk(2, dim=1)
        return self.output(modulate(self.norm(x), shift, scale))


# ------------------------------------------------------------------------------ network


class DiT(nn.Module):
    """Denoiser for [B, C, H, W] inputs, called as
    ``net(x, noise_level, labels=None, *, context=None, context_mask=None)``.

    ``context`` is [B, L, context_dim] (only when the config has ``context_dim``);
    ``context_mask`` is a bool [B, L], True for tokens to attend to (None: all of them).
    """

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        c = config
        p = c.patch_size
        self.condition = ConditionEmbedding(NOISE_FREQUENCY_DIM, c.hidden, c.num_classes,
                                            c.context_dim if c.pooled_context else None)
        self.patch_embed = nn.Linear(c.in_channels * p * p, c.hidden)
        # Derived from the config, not learned, so it is not saved with the weights.
        self.register_buffer("position", position_embedding(*c.grid, c.hidden), persistent=False)
        if c.context_dim is not None:
            self.context_embed = nn.Sequential(
                nn.LayerNorm(c.context_dim), nn.Linear(c.context_dim, c.hidden)
            )
        else:
            self.context_embed = None
        self.blocks = nn.ModuleList(
            DiTBlock(c.hidden, c.num_heads, c.mlp_ratio, c.dropout, c.context_dim is not None)
            for _ in range(c.depth)
        )
        self.final = FinalLayer(c.hidden, c.out_channels * p * p)
        self._init_linears()

    def _init_linears(self) -> None:
        # Xavier-uniform for the token maps (the paper's choice, as for a ViT); the zero
        # initialisations of the modulations and the output are left in place.
        zeroed = {id(b.modulation[1]) for b in self.blocks}
        zeroed |= {id(self.final.modulation[1]), id(self.final.output)}
        for module in [self.patch_embed, *self.blocks.modules()]:
            if isinstance(module, nn.Linear) and id(module) not in zeroed:
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def check_input(self, x: Tensor) -> None:
        c = self.config
        height, width = c.image_hw
        if x.ndim != 4 or tuple(x.shape[1:]) != (c.in_channels, height, width):
            raise ValueError(
                f"DiT expects x of shape [B, {c.in_channels}, {height}, {width}] (the config's "
                f"image_size), got {tuple(x.shape)}"
            )

    def forward(self, x: Tensor, noise_level: Tensor, labels: Tensor | None = None, *,
                context: Tensor | None = None, context_mask: Tensor | None = None) -> Tensor:
        self.check_input(x)
        check_context(self.config.context_dim, context, context_mask, x.shape[0])
        cond = self.condition(noise_level, labels, x.shape[0], context, context_mask)
        h = self.patch_embed(patchify(x, self.config.patch_size)) + self.position.to(x.dtype)
        if context is not None:
            context = self.context_embed(context)
        for block in self.blocks:
            h = block(h, cond, context, context_mask)
        out = self.final(h, cond)
        return unpatchify(out, self.config.patch_size, *self.config.image_hw)
