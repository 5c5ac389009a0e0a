"""Pictures without a plotting library: image grids and a loss curve, drawn with Pillow."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .data import to_unit


def image_grid(images: torch.Tensor, nrow: int | None = None, scale: int = 1, pad: int = 1) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> one uint8 picture [rows*H, cols*W, C] with `pad` pixels between."""
    if images.ndim != 4:
        raise ValueError(f"expected images [N, C, H, W], got shape {tuple(images.shape)}")
    n, c, h, w = images.shape
    cols = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    pixels = (to_unit(images.detach().float().cpu()) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    if scale > 1:
        pixels = pixels.repeat(scale, axis=1).repeat(scale, axis=2)
        h, w = h * scale, w * scale
    grid = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + k * (w + pad): pad + k * (w + pad) + w] = pixels[i]
    return grid


def save_image_grid(images: torch.Tensor, path, nrow: int | None = None, scale: int | None = None) -> Path:
    from PIL import Image
    if scale is None:  # small images are enlarged so that a grid is readable on screen
        scale = max(1, 64 // images.shape[-1])
    grid = image_grid(images, nrow, scale)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
    return Path(path)


def save_curve(steps, values, path, title: str = "loss", size=(640, 400)) -> Path:
    """A line plot of `values` against `steps` on a log y-axis, with min/max labels."""
    from PIL import Image, ImageDraw
    steps = np.asarray(steps, dtype=float)
    values = np.asarray(values, dtype=float)
    keep = np.isfinite(values) & (values > 0)
    steps, values = steps[keep], values[keep]
    width, height = size
    left, right, top, bottom = 60, 20, 30, 40
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    draw.text((left, 8), title, fill="black")
    if len(values) >= 2:
        y = np.log10(values)
        x0, x1 = steps.min(), max(steps.max(), steps.min() + 1)
        y0, y1 = y.min(), max(y.max(), y.min() + 1e-6)
        px = left + (steps - x0) / (x1 - x0) * (width - left - right)
        py = height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)
        draw.line(list(zip(px.tolist(), py.tolist())), fill=(31, 119, 180), width=2)
        draw.text((4, top - 6), f"{10 ** y1:.3g}", fill="black")
        draw.text((4, height - bottom - 6), f"{10 ** y0:.3g}", fill="black")
        draw.text((left, height - bottom + 8), f"{x0:.0f}", fill="black")
        draw.text((width - right - 60, height - bottom + 8), f"step {x1:.0f}", fill="black")
    image.save(path)
    return Path(path)
