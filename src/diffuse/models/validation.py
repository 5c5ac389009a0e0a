"""Checks shared by the network configs, so a bad config fails when it is built, by name."""

from __future__ import annotations


def positive_int(owner: str, name: str, value: object) -> None:
    # bool is an int subclass; `depth=True` is a mistake, not a depth of one.
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{owner}.{name} must be a positive integer, got {value!r}")


def optional_num_classes(owner: str, value: object) -> None:
    if value is not None:
        positive_int(owner, "num_classes", value)


def int_tuple(owner: str, name: str, value: object) -> tuple[int, ...]:
    """Accept a list or tuple of ints (JSON gives lists) and return it as a tuple."""
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{owner}.{name} must be a list or tuple of integers, got {value!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError(f"{owner}.{name} must contain only integers, got {value!r}")
    return tuple(value)


def boolean(owner: str, name: str, value: object) -> None:
    # JSON's true/false only; 1 or "yes" is a mistake, not a switch.
    if not isinstance(value, bool):
        raise ValueError(f"{owner}.{name} must be true or false, got {value!r}")


def pooled_context_needs_context(owner: str, pooled_context: object, context_dim: int | None) -> None:
    boolean(owner, "pooled_context", pooled_context)
    if pooled_context and context_dim is None:
        raise ValueError(f"{owner}: pooled_context needs a context (set context_dim)")
