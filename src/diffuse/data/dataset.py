"""What every data set is: examples as dicts, a declared modality and shape, and a source.

An example is a dict: "x" (float32 of the declared `shape`) and, where the set has them, "label"
(int64 scalar, an index into `class_names`), "caption" (a string), "mask" (True at real elements,
for padded data). A set declares its `modality` ("image": [C, H, W] in [-1, 1]; "vector": [D];
"sequence": [T, D], e.g. a robot's action chunk; "points": [P, D], a padded point cloud such as a
molecule's atom positions, with its "mask"; later "video", ...) rather than
leaving it to be guessed from a tensor's rank, and its `source`: the data description
(`DataConfig`) that loads it again, with absolute paths, or {"name": "python", ...} for a set
built in Python.

`examples[key]` takes an index, or (index, seed) for a training draw: a set with augmentations
(random flips, random crops) applies them with a generator of that seed, and never without one,
so a test split and metrics see every example as it is, and the engine decides the randomness.
`examples[[k1, k2, ...]]`-style batch reads go through `__getitems__`, which the DataLoader calls
and which in-memory sets answer with one indexing operation instead of one dict per example.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.utils.data

MODALITIES = ("image", "vector", "sequence", "points")


def check_modality(modality: str, name: str) -> str:
    if modality not in MODALITIES:
        raise ValueError(f"{name}: modality must be one of {MODALITIES}, got {modality!r}")
    return modality


@dataclass(frozen=True)
class DataInfo:
    """What a model needs to know of its data, stored with every run."""

    name: str
    modality: str
    shape: tuple[int, ...]
    class_names: list[str] | None
    fields: tuple[str, ...]      # the keys of an example
    source: dict                 # a DataConfig dict that loads the set again, or {"name": "python", ...}

    @property
    def num_classes(self) -> int | None:
        return None if self.class_names is None else len(self.class_names)

    def to_dict(self) -> dict:
        return {"name": self.name, "modality": self.modality, "shape": list(self.shape),
                "class_names": self.class_names, "num_classes": self.num_classes,
                "fields": list(self.fields), "source": self.source}

    @classmethod
    def from_dict(cls, d: dict) -> "DataInfo":
        """The description a run stored, checked: a damaged one is a ValueError naming the field."""
        if not isinstance(d, dict):
            raise ValueError(f"the data description must be a JSON object, got {type(d).__name__}")
        missing = sorted({"name", "modality", "shape", "class_names", "fields", "source"} - set(d))
        if missing:
            raise ValueError(f"the data description lacks {missing}")
        shape, names, fields = d["shape"], d["class_names"], d["fields"]
        if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0
                                                  for s in shape):
            raise ValueError(f"the data description's shape must be a list of positive integers, got {shape!r}")
        if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise ValueError(f"the data description's class_names must be a list of strings or null, got {names!r}")
        if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
            raise ValueError(f"the data description's fields must be a list of strings, got {fields!r}")
        if not isinstance(d["source"], dict) or not isinstance(d["name"], str):
            raise ValueError("the data description's name must be a string and its source an object")
        return cls(d["name"], check_modality(d["modality"], d["name"]), tuple(shape), names, tuple(fields), d["source"])


class Dataset(torch.utils.data.Dataset):
    """Base class: subclasses set `name`, `modality`, `shape`, `class_names`, `source` and
    implement `__len__`, `example(index, seed)`, `labels` (all labels, or None, known without
    reading the examples) and `subset`."""

    name: str
    modality: str
    shape: tuple[int, ...]
    class_names: list[str] | None = None
    captions: list[str] | None = None
    source: dict
    in_memory = False  # whether every example is held in memory (reading them all is free)

    def __len__(self) -> int:
        raise NotImplementedError

    def example(self, index: int, seed: int | None = None) -> dict:
        raise NotImplementedError

    @property
    def labels(self) -> torch.Tensor | None:
        raise NotImplementedError

    def subset(self, index, name: str) -> "Dataset":
        raise NotImplementedError

    def __getitem__(self, key) -> dict:
        index, seed = key if isinstance(key, tuple) else (key, None)
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range for {len(self)} examples")
        return self.example(int(index) % len(self), seed)

    def __getitems__(self, keys: list) -> dict:
        return collate([self[k] for k in keys])

    @property
    def num_classes(self) -> int | None:
        return None if self.class_names is None else len(self.class_names)

    @property
    def fields(self) -> tuple[str, ...]:
        return ("x",) + (("label",) if self.labels is not None else ()) + \
            (("caption",) if self.captions is not None else ())

    @property
    def data(self) -> torch.Tensor:
        """Every example's x as one tensor [N, *shape] (read from disk for a set that streams)."""
        return self.__getitems__(list(range(len(self))))["x"]

    def info(self) -> DataInfo:
        return DataInfo(self.name, self.modality, tuple(self.shape), self.class_names, self.fields, self.source)


# Examples a data set that streams from disk is measured on (a fixed, evenly spread subset).
SPREAD_EXAMPLES = 10_000


def spread(data: Dataset) -> float:
    """The standard deviation of the examples' x, all elements pooled: over every example of an
    in-memory set, over an evenly spaced SPREAD_EXAMPLES of one that streams from disk."""
    if data.in_memory:
        return float(data.data.std())
    index = np.linspace(0, len(data) - 1, min(len(data), SPREAD_EXAMPLES)).round().astype(int).tolist()
    return float(data.__getitems__(index)["x"].std())


def key_indices(keys: list) -> torch.Tensor:
    """The example indices of a batch's keys (an index, or an (index, augmentation seed) pair)."""
    return torch.tensor([k[0] if isinstance(k, tuple) else k for k in keys], dtype=torch.long)


def collate(examples) -> dict:
    """A batch dict from a list of examples, or a batch a set already assembled (`__getitems__`)."""
    if isinstance(examples, dict):
        return examples
    return torch.utils.data.default_collate(examples)


class TensorDataset(Dataset):
    """An in-memory data set: x [N, *shape], optional labels [N] and captions (one per example).

    Images are float32 [N, C, H, W] in [-1, 1] (the range a diffusion model's noise is scaled
    against); toy sets are float32 [N, 2] of roughly unit scale. `random_flip` mirrors an image
    left to right in half of the training draws.
    """

    in_memory = True

    def __init__(self, data: torch.Tensor, labels: torch.Tensor | None = None, class_names: list[str] | None = None,
                 name: str = "tensors", captions: list[str] | None = None, *, modality: str,
                 source: dict | None = None, random_flip: bool = False):
        self.name, self.modality = name, check_modality(modality, name)
        self.tensor, self._labels, self.class_names, self.captions = data, labels, class_names, captions
        self.source = source if source is not None else {"name": "python", "description": name}
        self.random_flip = bool(random_flip)
        if data.ndim < 2:
            raise ValueError(f"{name}: data must be [N, ...], got shape {tuple(data.shape)}")
        if modality == "image" and data.ndim != 4:
            raise ValueError(f"{name}: images must be [N, C, H, W], got shape {tuple(data.shape)}")
        if modality == "vector" and data.ndim != 2:
            raise ValueError(f"{name}: vectors must be [N, D], got shape {tuple(data.shape)}")
        if modality == "sequence" and data.ndim != 3:
            raise ValueError(f"{name}: sequences must be [N, T, D], got shape {tuple(data.shape)}")
        if modality == "points" and data.ndim != 3:
            raise ValueError(f"{name}: point clouds must be [N, P, D], got shape {tuple(data.shape)}")
        if labels is not None and labels.shape != (len(data),):
            raise ValueError(f"{name}: {len(data)} samples but labels have shape {tuple(labels.shape)}")
        if captions is not None and len(captions) != len(data):
            raise ValueError(f"{name}: {len(data)} samples but {len(captions)} captions")
        if self.random_flip and modality != "image":
            raise ValueError(f"{name}: random_flip mirrors images; this set holds {modality}s")
        self.shape = tuple(data.shape[1:])

    def __len__(self) -> int:
        return len(self.tensor)

    @property
    def labels(self) -> torch.Tensor | None:
        return self._labels

    @property
    def data(self) -> torch.Tensor:
        return self.tensor

    def example(self, index: int, seed: int | None = None) -> dict:
        return {k: v[0] for k, v in self.__getitems__([index if seed is None else (index, seed)]).items()}

    def __getitems__(self, keys: list) -> dict:
        index = key_indices(keys)
        x = self.tensor[index]
        if self.random_flip:
            seeds = [k[1] if isinstance(k, tuple) else None for k in keys]
            flip = torch.tensor([s is not None and flips(s) for s in seeds])
            x = torch.where(flip.reshape(-1, 1, 1, 1), x.flip(-1), x)
        batch = {"x": x}
        if self._labels is not None:
            batch["label"] = self._labels[index]
        if self.captions is not None:
            batch["caption"] = [self.captions[i] for i in index.tolist()]
        return batch

    def subset(self, index, name: str) -> "TensorDataset":
        index = torch.as_tensor(np.asarray(index), dtype=torch.long)
        labels = None if self._labels is None else self._labels[index]
        captions = None if self.captions is None else [self.captions[i] for i in index.tolist()]
        return TensorDataset(self.tensor[index], labels, self.class_names, name, captions, modality=self.modality,
                             source=self.source, random_flip=self.random_flip)


def flips(seed: int) -> bool:
    """Whether a training draw with this augmentation seed is mirrored (half of them are)."""
    return bool(torch.randint(2, (1,), generator=torch.Generator().manual_seed(seed)))


class WithColumns(Dataset):
    """A data set with extra per-example columns, e.g. the token ids of its captions."""

    def __init__(self, base: Dataset, **columns: torch.Tensor):
        for key, column in columns.items():
            if len(column) != len(base):
                raise ValueError(f"{base.name}: column {key!r} has {len(column)} rows for {len(base)} examples")
        self.base, self.columns = base, columns
        self.name, self.modality, self.shape = base.name, base.modality, base.shape
        self.class_names, self.captions, self.source = base.class_names, base.captions, base.source

    def __len__(self) -> int:
        return len(self.base)

    @property
    def in_memory(self) -> bool:
        return self.base.in_memory

    @property
    def labels(self):
        return self.base.labels

    @property
    def fields(self) -> tuple[str, ...]:
        return self.base.fields + tuple(self.columns)

    def example(self, index: int, seed: int | None = None) -> dict:
        return {**self.base.example(index, seed), **{k: v[index] for k, v in self.columns.items()}}

    def __getitems__(self, keys: list) -> dict:
        index = key_indices(keys)
        return {**self.base.__getitems__(keys), **{k: v[index] for k, v in self.columns.items()}}

    def subset(self, index, name: str) -> "WithColumns":
        index = torch.as_tensor(np.asarray(index), dtype=torch.long)
        return WithColumns(self.base.subset(index, name), **{k: v[index] for k, v in self.columns.items()})


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1]; clamped because model samples overshoot the range."""
    return ((x + 1) / 2).clamp(0, 1)


def from_unit(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1]."""
    return x * 2 - 1


def pixels_to_signed(pixels: np.ndarray, max_value: int) -> torch.Tensor:
    """Integer pixel levels 0..max_value -> float32 tensor in [-1, 1].

    A lookup table computed in float64 makes every level the correctly rounded
    float32 of level / max_value * 2 - 1, without a float64 copy of the images.
    """
    levels = np.asarray(pixels)
    if levels.size and (levels.min() < 0 or levels.max() > max_value):
        raise ValueError(f"pixel values must lie in 0..{max_value}, found {levels.min()}..{levels.max()}")
    table = (np.arange(max_value + 1) * (2.0 / max_value) - 1.0).astype(np.float32)
    return torch.from_numpy(table[levels.astype(np.intp)])


def labels_tensor(labels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(labels, dtype=np.int64))
