"""Attention pieces shared by the networks: head layout, cross-attention to a context sequence
(a text encoder's output), and the check of what a caller passes as context."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """[B, N, width] -> [B, heads, N, width / heads], the layout attention wants."""
    b, n, width = x.shape
    return x.reshape(b, n, num_heads, width // num_heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    b, heads, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, heads * d)


class CrossAttention(nn.Module):
    """Image tokens (queries) attend to context tokens (keys and values)."""

    def __init__(self, hidden: int, num_heads: int, context_dim: int | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(hidden, hidden)
        self.kv = nn.Linear(context_dim or hidden, 2 * hidden)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None) -> Tensor:
        q = split_heads(self.q(x), self.num_heads)
        k, v = (split_heads(t, self.num_heads) for t in self.kv(context).chunk(2, dim=-1))
        if mask is None:
            return self.proj(merge_heads(F.scaled_dot_product_attention(q, k, v)))
        # A sample with every token masked has nothing to attend to; softmax over no keys is
        # 0/0. Let it attend to everything (finite, discarded) and then zero its branch, so it
        # gets the same "no context" as context=None.
        present = mask.any(dim=1)
        attend = (mask | ~present[:, None])[:, None, None, :]
        out = self.proj(merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=attend)))
        return out * present[:, None, None].to(out.dtype)


def check_context(context_dim: int | None, context: Tensor | None, mask: Tensor | None, batch_size: int) -> None:
    """Raise unless (context, mask) suits a network built with `context_dim`: context None or a
    float [B, L, context_dim], mask None or a bool [B, L] beside a context."""
    if context_dim is None:
        if context is not None or mask is not None:
            raise ValueError("context was given but the network was built with context_dim=None")
        return
    if context is None:
        if mask is not None:
            raise ValueError("context_mask was given without a context")
        return
    if (not context.is_floating_point() or context.ndim != 3 or context.shape[0] != batch_size
            or context.shape[2] != context_dim):
        raise ValueError(f"context must be a float tensor [{batch_size}, L, {context_dim}], "
                         f"got {context.dtype} {tuple(context.shape)}")
    if mask is not None and (mask.dtype != torch.bool or mask.shape != context.shape[:2]):
        raise ValueError(f"context_mask must be a bool tensor {list(context.shape[:2])}, "
                         f"got {mask.dtype} {tuple(mask.shape)}")
