"""What a model is conditioned on, each condition declaring itself once.

A `Condition` names where its value sits in a batch (`key`), the keyword the model takes it by
(`argument`), and its null value: what a dropped entry is filled with in training (the label
dropout of classifier-free guidance) and what the unconditional half of guidance is given. So the
training task, classifier-free guidance and the sampling pipeline treat class labels, text tokens
and later conditions (an image, an observation) alike, with no branch per kind.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Condition:
    key: str          # the field of a batch that holds it ("label", "tokens")
    argument: str     # the model's keyword for it ("labels", "tokens")
    null: int | float | torch.Tensor  # fills a dropped entry: the null class, the padding id, the
    #                                   embedding of the empty prompt (one row, broadcast)

    def drop(self, value: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
        """`value` [B, ...] with the rows where `dropped` [B] is True set to the null value."""
        where = dropped.to(value.device).reshape((-1,) + (1,) * (value.ndim - 1))
        return torch.where(where, null_like(self.null, value), value)


def null_like(null, value: torch.Tensor) -> torch.Tensor:
    """The null value filling a batch shaped as `value`: a number, or one row broadcast to it."""
    if isinstance(null, torch.Tensor):
        return null.to(value.device, value.dtype).expand_as(value)
    return torch.full_like(value, null)


def class_label(num_classes: int) -> Condition:
    """A class label in 0..num_classes-1; the null class is the extra row num_classes."""
    return Condition("label", "labels", num_classes)


def text_tokens(pad_id: int = 0) -> Condition:
    """Token ids of a caption; the null text is all padding, which the network reads as no text."""
    return Condition("tokens", "tokens", pad_id)


def observation_history() -> Condition:
    """A policy's recent observations [To, Do] (normalised to [-1, 1]); the null observation is all
    zeros, the middle of the range (a policy is trained without dropout, so it is never used
    there, but guidance against it is defined)."""
    return Condition("obs", "obs", 0.0)


def nulls(conditions) -> dict:
    """{model keyword: null value}: the unconditional model that guidance subtracts."""
    return {c.argument: c.null for c in conditions}
