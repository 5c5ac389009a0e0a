"""Classical restorations, the baselines a diffusion prior has to beat, and the nearest training image.

Each takes a `Measurement` and returns images [B, C, H, W] in [-1, 1]:
- inpainting: `mean_fill` (each image's missing pixels set to the mean of its seen ones) and
  `nearest_fill` (each missing pixel copies its nearest seen pixel);
- super-resolution: `bicubic` upsampling of the low-resolution image;
- any linear operator, deblurring first: the `Wiener` filter with a white prior around the
  training mean, x = mu + V diag(s / (s^2 + sigma_y^2 / P)) U^T (y - A mu), P the training set's
  pixel variance (with sigma_y = 0 the pseudo-inverse);
- colourisation: `PixelRegression`, per pixel and channel the least-squares line from grey to colour
  fitted on training images;
- `nearest_consistent`: the training image whose measurement is closest to y (what memorising the
  training set would give).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .operators import Downsample, Grayscale, Inpaint, Measurement


def _expect(measurement: Measurement, kind: type, baseline: str):
    if not isinstance(measurement.operator, kind):
        raise ValueError(f"{baseline} restores a {kind.name} measurement, not {measurement.operator.name}")
    return measurement.operator


def mean_fill(measurement: Measurement) -> torch.Tensor:
    op = _expect(measurement, Inpaint, "mean_fill")
    mask, y = op.mask.to(measurement.y.dtype), measurement.y
    mean = (y * mask).sum((2, 3), keepdim=True) / mask.sum((1, 2))[None, :, None, None].clamp_min(1)
    return y * mask + mean * (1 - mask)


def nearest_fill(measurement: Measurement) -> torch.Tensor:
    op = _expect(measurement, Inpaint, "nearest_fill")
    c, h, w = op.shape
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    where = torch.stack([rows.flatten(), cols.flatten()], 1).double()
    out = measurement.y.clone().reshape(len(measurement), c, h * w)
    for channel in range(c):
        seen = op.mask[channel].flatten() > 0
        if not seen.any():
            continue
        nearest = torch.cdist(where, where[seen]).argmin(1)       # for every pixel, its nearest seen one
        out[:, channel] = out[:, channel, seen][:, nearest]
    return out.reshape(measurement.y.shape)


def bicubic(measurement: Measurement) -> torch.Tensor:
    op = _expect(measurement, Downsample, "bicubic")
    return F.interpolate(measurement.y, scale_factor=op.factor, mode="bicubic", align_corners=False).clamp(-1, 1)


class Wiener:
    """The linear MMSE restoration under a white Gaussian prior N(mean, variance I) of images."""

    def __init__(self, mean: torch.Tensor, variance: float):
        self.mean, self.variance = mean, float(variance)

    @classmethod
    def fit(cls, images: torch.Tensor) -> "Wiener":
        return cls(images.double().mean(0), float(images.double().var(0).mean()))

    def __call__(self, measurement: Measurement) -> torch.Tensor:
        op = measurement.linear("the Wiener filter")
        u, s, v = op.svd
        mean = self.mean.to(measurement.y.dtype).expand(len(measurement), *op.shape)
        gain = s / (s**2 + measurement.noise_std**2 / self.variance)
        return mean + op.from_spectral(op.measured(measurement.residual(mean)) * gain, mean)


class PixelRegression:
    """Colourisation by a least-squares line per pixel and channel, colour = a grey + b."""

    def __init__(self, slope: torch.Tensor, intercept: torch.Tensor):
        self.slope, self.intercept = slope, intercept

    @classmethod
    def fit(cls, images: torch.Tensor) -> "PixelRegression":
        if images.shape[1] != 3:
            raise ValueError("colour regression fits RGB images")
        grey = Grayscale(images.shape[1:])(images.double())                  # [N, 1, H, W]
        g, x = grey - grey.mean(0), images.double() - images.double().mean(0)
        slope = (g * x).mean(0) / g.pow(2).mean(0).clamp_min(1e-12)         # [3, H, W]
        return cls(slope, images.double().mean(0) - slope * grey.mean(0))

    def __call__(self, measurement: Measurement) -> torch.Tensor:
        _expect(measurement, Grayscale, "colour regression")
        return (self.slope * measurement.y.double() + self.intercept).clamp(-1, 1).float()


def nearest_consistent(measurement: Measurement, images: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """For each measurement, the image of `images` (a training set) with the smallest ||y - A(x)||."""
    y = measurement.y.flatten(1).double()
    best_distance = torch.full((len(y),), float("inf"), dtype=torch.float64)
    best = torch.zeros(len(y), dtype=torch.long)
    for start in range(0, len(images), batch_size):
        seen = measurement.operator(images[start:start + batch_size].double()).flatten(1)
        distance, index = torch.cdist(y, seen).min(1)
        better = distance < best_distance
        best_distance, best = torch.where(better, distance, best_distance), torch.where(better, index + start, best)
    return images[best]
