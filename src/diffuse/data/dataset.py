"""The one container every loader returns, and the pixel-range conventions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Dataset:
    """An in-memory data set.

    Images are float32 [N, C, H, W] in [-1, 1] (the range a diffusion model's
    noise is scaled against); toy sets are float32 [N, 2] of roughly unit scale.
    Labels, when present, are int64 [N] indexing ``class_names``; captions, when
    present, are one string per sample (the text a conditional model reads).
    """

    data: torch.Tensor
    labels: torch.Tensor | None
    class_names: list[str] | None
    name: str
    captions: list[str] | None = None

    def __post_init__(self) -> None:
        if self.data.ndim < 2:
            raise ValueError(f"{self.name}: data must be [N, ...], got shape {tuple(self.data.shape)}")
        if self.labels is not None and self.labels.shape != (len(self.data),):
            raise ValueError(
                f"{self.name}: {len(self.data)} samples but labels have shape {tuple(self.labels.shape)}"
            )
        if self.captions is not None and len(self.captions) != len(self.data):
            raise ValueError(f"{self.name}: {len(self.data)} samples but {len(self.captions)} captions")

    def __len__(self) -> int:
        return len(self.data)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. (1, 28, 28)."""
        return tuple(self.data.shape[1:])

    @property
    def num_classes(self) -> int | None:
        return None if self.class_names is None else len(self.class_names)

    def subset(self, index: np.ndarray | torch.Tensor, name: str) -> Dataset:
        index = torch.as_tensor(index, dtype=torch.long)
        labels = None if self.labels is None else self.labels[index]
        captions = None if self.captions is None else [self.captions[i] for i in index.tolist()]
        return Dataset(self.data[index], labels, self.class_names, name, captions)


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
