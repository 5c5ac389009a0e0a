"""The feature network of the sample metrics: a small CNN classifier of clean images whose
penultimate layer is the feature space of the Fréchet distance and the k-NN metrics.

FID's Inception network was trained on ImageNet photographs; on 8x8 digits or 28x28 MNIST its
features mean little. The usual remedy for small data sets is a classifier trained on the data set
itself: its penultimate activations separate what matters for that data (class identity, stroke
shape), and its accuracy on generated images measures whether a class-conditional model draws the
class it was asked for. (Not to be confused with the noise-aware classifier of classifier
guidance, models/classifier.py, which reads noised images.) It is trained by the engine
(training/tasks/features.py) and cached per data set by diffuse.metrics.features.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from .validation import positive_int


@dataclass
class FeatureNetworkConfig:
    """image_shape: (C, H, W) of the inputs; num_classes: output classes; channels: width of the
    first conv stage (later stages and the last conv have twice that); features: width of the
    penultimate layer, the feature space of `features()`."""

    image_shape: tuple[int, int, int]
    num_classes: int
    channels: int = 32
    features: int = 128

    def __post_init__(self):
        self.image_shape = tuple(int(s) for s in self.image_shape)
        if len(self.image_shape) != 3 or min(self.image_shape) < 1:
            raise ValueError(f"image_shape must be (C, H, W), got {self.image_shape}")
        for name in ("num_classes", "channels", "features"):
            positive_int("FeatureNetworkConfig", name, getattr(self, name))
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {self.num_classes}")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "image_shape": list(self.image_shape)}


class FeatureNetwork(nn.Module):
    """Conv stages (two 3x3 convs and a 2x2 average pool each) until the image is at most 4
    pixels on a side, one more conv, then a fully connected layer (the features) and the
    class logits. 8x8 -> 4x4 takes one stage, 28x28 -> 14 -> 7 -> 3 three, 32x32 three.

    Average pooling rather than max pooling, no batch norm and no dropout: the outputs of one
    image never depend on the rest of its batch or on train/eval mode, and every op has a
    deterministic backward on CPU and GPU.
    """

    def __init__(self, config: FeatureNetworkConfig):
        super().__init__()
        self.config = config
        c, h, w = config.image_shape
        layers: list[nn.Module] = []
        width = config.channels
        while min(h, w) > 4:
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.SiLU(),
                       nn.Conv2d(width, width, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2)]
            c, h, w = width, h // 2, w // 2
            width = min(2 * width, 2 * config.channels)
        layers += [nn.Conv2d(c, width, 3, padding=1), nn.SiLU(), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.embed = nn.Sequential(nn.Linear(width * h * w, config.features), nn.SiLU())
        self.head = nn.Linear(config.features, config.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits [B, classes] for images [B, C, H, W] in [-1, 1]; differentiable."""
        return self.head(self.embed(self.body(x)))

    # -- batched inference ------------------------------------------------------------------

    def _check(self, x: Tensor) -> Tensor:
        x = torch.as_tensor(x)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.config.image_shape:
            raise ValueError(f"expected images [N, {', '.join(map(str, self.config.image_shape))}], "
                             f"got shape {tuple(x.shape)}")
        return x

    @torch.no_grad()
    def _batched(self, x: Tensor, fn: Callable[[Tensor], Tensor], batch_size: int) -> Tensor:
        x = self._check(x)
        device = next(self.parameters()).device
        out = [fn(x[i:i + batch_size].to(device, torch.float32)).float().cpu()
               for i in range(0, len(x), batch_size)]
        return torch.cat(out) if out else torch.empty(0)

    def features(self, x: Tensor, batch_size: int = 512) -> Tensor:
        """Penultimate activations [N, features] (float32, CPU) of images [N, C, H, W]."""
        return self._batched(x, lambda b: self.embed(self.body(b)), batch_size)

    def logits(self, x: Tensor, batch_size: int = 512) -> Tensor:
        """Class logits [N, classes] (float32, CPU)."""
        return self._batched(x, self, batch_size)

    def predict(self, x: Tensor, batch_size: int = 512) -> Tensor:
        return self.logits(x, batch_size).argmax(1)

    def accuracy(self, x: Tensor, labels: Tensor, batch_size: int = 512) -> float:
        """Fraction of images whose predicted class is `labels`."""
        labels = torch.as_tensor(labels).reshape(-1)
        if len(labels) != len(x):
            raise ValueError(f"{len(x)} images but {len(labels)} labels")
        return float((self.predict(x, batch_size) == labels.cpu()).double().mean())
