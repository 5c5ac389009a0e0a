"""Fixed, deterministic train/test splits.

The permutations come from numpy's legacy ``RandomState``, whose streams numpy
promises never to change, so a split is the same on every machine and version.
"""

from __future__ import annotations

import numpy as np

from .dataset import Dataset

SPLITS = ("train", "test")

# A third split for data sets whose captions are compositions of attributes: images of
# attribute combinations that never occur in training (see shapes.py).
HELDOUT = "heldout"

# Seed shared by every split in this package; changing it changes published splits.
SPLIT_SEED = 0

HOLDOUT_FRACTION = 0.1


def check_split(split: str, heldout: bool = False) -> None:
    """Reject an unknown split; ``heldout`` says whether the data set offers "heldout"."""
    if split == HELDOUT and not heldout:
        raise ValueError(
            f"split {HELDOUT!r} exists only for data sets with held-out attribute combinations "
            f"(shapes); this one offers {SPLITS}"
        )
    allowed = (*SPLITS, HELDOUT) if heldout else SPLITS
    if split not in allowed:
        raise ValueError(f"split must be one of {allowed}, got {split!r}")


def stratified_order(labels: np.ndarray | None, n: int, seed: int = SPLIT_SEED) -> np.ndarray:
    """A permutation of range(n) in which every prefix is class-balanced.

    Each class is shuffled on its own, and sample j of a class of size m gets the
    key (rank_j + 0.5) / m. Sorting by that key interleaves the classes in
    proportion to their sizes, so the first k indices hold about k * m / n of
    each class. Without labels it is a plain permutation.
    """
    rng = np.random.RandomState(seed)
    if labels is None:
        return rng.permutation(n)
    labels = np.asarray(labels)
    key = np.empty(n)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        key[members] = (rng.permutation(len(members)) + 0.5) / len(members)
    tiebreak = rng.permutation(n)
    return np.lexsort((tiebreak, key))


def take_split(ds: Dataset, split: str, n_test: int, seed: int = SPLIT_SEED) -> Dataset:
    """The first n_test samples of the stratified order are the test split; the rest train.

    Both splits keep the original sample order, so they are easy to compare.
    """
    check_split(split)
    if not 0 < n_test < len(ds):
        raise ValueError(f"{ds.name}: cannot hold out {n_test} of {len(ds)} samples for testing")
    labels = None if ds.labels is None else ds.labels.numpy()
    order = stratified_order(labels, len(ds), seed)
    chosen = order[:n_test] if split == "test" else order[n_test:]
    return ds.subset(np.sort(chosen), f"{ds.name}-{split}")


def first_examples(ds: Dataset, n: int, seed: int = SPLIT_SEED) -> Dataset:
    """The first n examples of the stratified order (class-balanced when labelled), in their original
    order: a small training set that is the same on every machine. n >= len(ds) keeps them all."""
    if n >= len(ds):
        return ds
    labels = None if ds.labels is None else ds.labels.numpy()
    return ds.subset(np.sort(stratified_order(labels, len(ds), seed)[:n]), f"{ds.name}-first{n}")


def holdout_split(ds: Dataset, split: str, fraction: float = HOLDOUT_FRACTION) -> Dataset:
    """Split a source that has no test set of its own: a fixed 10% (at least one sample) is test."""
    if len(ds) < 2:
        raise ValueError(f"{ds.name}: need at least 2 samples to hold out a test split, got {len(ds)}")
    n_test = min(max(1, round(len(ds) * fraction)), len(ds) - 1)
    return take_split(ds, split, n_test)
