"""Text conditioning: a small transformer text encoder, trained jointly with the denoiser or kept
at its random initialisation (`TrainConfig.text_lr_scale`).

`TextConditioned` is a network like the others (``build_network({"kind": "text", ...})``): it
holds a `TextEncoder` and an image network built with cross-attention (a U-Net or DiT with
``context_dim`` = the encoder's width), and is called as ``net(x, noise_level, labels=None, *,
tokens=None)`` with token ids from `diffuse.text.WordTokenizer`. Padding (id 0) is masked out of
the cross-attention; a row of padding only is the null text of classifier-free guidance, and the
image network then gets no context at all, exactly as for ``tokens=None``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .validation import boolean, positive_int

PAD_ID = 0  # diffuse.text.WordTokenizer.pad_id
EMBEDDING_STD = 0.02  # initial scale of word and position embeddings alike


@dataclass
class TextConditionedConfig:
    """denoiser: the image network's description ({"kind": "unet" | "dit", ...}); its
    context_dim is set to ``width`` (stating another is an error). vocab_size: the tokenizer's.
    max_length: longest token sequence. width, layers, num_heads: the text transformer. causal:
    each token attends only to itself and the tokens before it (as CLIP's text encoder does), not to
    the whole caption; see TextEncoder for why that matters to relations."""

    vocab_size: int
    denoiser: dict = field(default_factory=dict)
    max_length: int = 16
    width: int = 64
    layers: int = 2
    num_heads: int = 4
    causal: bool = False

    def __post_init__(self) -> None:
        owner = "TextConditionedConfig"
        for name in ("vocab_size", "max_length", "width", "layers", "num_heads"):
            positive_int(owner, name, getattr(self, name))
        boolean(owner, "causal", self.causal)
        if self.width % self.num_heads:
            raise ValueError(f"{owner}: num_heads {self.num_heads} must divide width {self.width}")
        if not isinstance(self.denoiser, dict) or "kind" not in self.denoiser:
            raise ValueError(f"{owner}.denoiser must be a network description with a 'kind', got {self.denoiser!r}")
        stated = self.denoiser.get("context_dim")
        if stated is not None and stated != self.width:
            raise ValueError(f"{owner}: the denoiser's context_dim {stated} differs from the text width {self.width}")
        self.denoiser = {**copy.deepcopy(self.denoiser), "context_dim": self.width}


class TextEncoder(nn.Module):
    """Token and position embeddings, then pre-norm transformer layers over the unpadded tokens.

    Bidirectional by default. With ``causal`` a token sees only itself and what comes before it.
    That loses nothing a relation needs but breaks a symmetry: "A left of B" and "B right of A"
    show one picture, so the object named first is as often on the left as on the right, and an
    object's side is the product of the relation word and the object's place in the caption. Read
    causally, only the object named after the relation word has seen it, so its features carry the
    relation and the first object's do not, and a pixel's query can tell which is on its side
    from a difference that is linear in the features. On shapes a frozen random causal encoder
    gave the U-Net that difference to read (README, "Guidance"). Trained jointly, the causal
    encoder instead made "left" and "right" alike (their outputs 6% apart after 2000 steps) and
    the model did not learn the side; frozen and bidirectional, the U-Net learnt far less of it
    (relation-reversed loss rise +12% against +115% for frozen and causal, at 3000 steps).
    """

    def __init__(self, vocab_size: int, max_length: int, width: int, layers: int, num_heads: int,
                 causal: bool = False):
        super().__init__()
        self.max_length = max_length
        self.causal = causal
        # Words and positions start on one scale. nn.Embedding's default N(0, 1) made words ~50x
        # louder than positions, so "a red circle left of a blue square" and "a blue circle left
        # of a red square" (the same bag of words) reached the layers nearly alike, and a shapes
        # model trained for 7000 steps still scored the two captions alike on the same image.
        self.token = nn.Embedding(vocab_size, width, padding_idx=PAD_ID)
        nn.init.normal_(self.token.weight, std=EMBEDDING_STD)
        with torch.no_grad():
            self.token.weight[PAD_ID].zero_()
        self.position = nn.Parameter(torch.randn(max_length, width) * EMBEDDING_STD)
        layer = nn.TransformerEncoderLayer(width, num_heads, 4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """(context [B, L, width], mask [B, L], True at real tokens)."""
        if tokens.dtype != torch.long or tokens.ndim != 2:
            raise ValueError(f"tokens must be an int64 tensor [B, L], got {tokens.dtype} {tuple(tokens.shape)}")
        if tokens.shape[1] > self.max_length:
            raise ValueError(f"{tokens.shape[1]} tokens exceed the encoder's max_length {self.max_length}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.token.num_embeddings):
            raise ValueError(f"token ids must lie in 0..{self.token.num_embeddings - 1}")
        mask = tokens != PAD_ID
        # A row of padding only (the null text) would attend over no keys; let it attend to its
        # padding instead. Its outputs are finite and masked out downstream. Padding is on the
        # right, so the causal mask never leaves a real token without a key: it keeps its own.
        padding = ~(mask | ~mask.any(dim=1, keepdim=True))
        length = tokens.shape[1]
        later = torch.ones(length, length, dtype=torch.bool, device=tokens.device).triu(1) if self.causal else None
        h = self.token(tokens) + self.position[:length]
        return self.norm(self.layers(h, mask=later, src_key_padding_mask=padding)), mask


class TextConditioned(nn.Module):
    def __init__(self, config: TextConditionedConfig):
        super().__init__()
        from . import build_network  # the registry holds this class too

        self.config = config
        c = config
        self.text = TextEncoder(c.vocab_size, c.max_length, c.width, c.layers, c.num_heads, c.causal)
        self.denoiser = build_network(c.denoiser)

    def forward(self, x: Tensor, noise_level: Tensor, labels: Tensor | None = None, *,
                tokens: Tensor | None = None) -> Tensor:
        if tokens is None:
            return self.denoiser(x, noise_level, labels)
        if tokens.shape[0] != x.shape[0]:
            raise ValueError(f"{tokens.shape[0]} token rows for a batch of {x.shape[0]}")
        context, mask = self.text(tokens.to(x.device))
        return self.denoiser(x, noise_level, labels, context=context.to(x.dtype), context_mask=mask)


def text_network(denoiser: dict[str, Any], vocab_size: int, **text) -> dict[str, Any]:
    """The description of a text-conditioned network around image network `denoiser`."""
    return {"kind": "text", "vocab_size": vocab_size, "denoiser": denoiser, **text}
