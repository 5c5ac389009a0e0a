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


COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)]


def save_lines(series: dict, path, title: str = "", xlabel: str = "", ylabel: str = "", log_y: bool = False,
               size=(640, 400)) -> Path:
    """Line plots on shared axes: `series` maps a name to (x, y) or (x, y, point_labels); each
    line gets its own colour and a legend entry, and its points are marked and labelled."""
    from PIL import Image, ImageDraw
    cleaned = {}
    for name, (x, y, *labels) in series.items():
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        keep = np.isfinite(x) & np.isfinite(y) & ((y > 0) if log_y else True)
        point_labels = [str(v) for v, k in zip(labels[0], keep) if k] if labels else None
        cleaned[name] = (x[keep], np.log10(y[keep]) if log_y else y[keep], point_labels)
    width, height = size
    left, right, top, bottom = 60, 20, 30, 40
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    draw.text((left, 8), title, fill="black")
    draw.text((width // 2 - 40, height - 16), xlabel, fill="black")
    draw.text((4, 8), ylabel, fill="black")
    xs = np.concatenate([x for x, _, _ in cleaned.values()]) if cleaned else np.zeros(0)
    ys = np.concatenate([y for _, y, _ in cleaned.values()]) if cleaned else np.zeros(0)
    if len(xs) >= 2:
        x0, x1 = xs.min(), max(xs.max(), xs.min() + 1e-6)
        y0, y1 = ys.min(), max(ys.max(), ys.min() + 1e-6)
        value = (lambda v: f"{10 ** v:.3g}") if log_y else (lambda v: f"{v:.3g}")
        draw.text((4, top - 6), value(y1), fill="black")
        draw.text((4, height - bottom - 6), value(y0), fill="black")
        draw.text((left, height - bottom + 8), f"{x0:.3g}", fill="black")
        draw.text((width - right - 40, height - bottom + 8), f"{x1:.3g}", fill="black")
        for i, (name, (x, y, labels)) in enumerate(cleaned.items()):
            colour = COLOURS[i % len(COLOURS)]
            px = (left + (x - x0) / (x1 - x0) * (width - left - right)).tolist()
            py = (height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)).tolist()
            if len(px) >= 2:
                draw.line(list(zip(px, py)), fill=colour, width=2)
            for k, (u, v) in enumerate(zip(px, py)):
                if len(cleaned) > 1 or labels:
                    draw.ellipse([u - 3, v - 3, u + 3, v + 3], fill=colour)
                if labels:
                    draw.text((u + 4, v - 12), labels[k], fill=colour)
            if len(cleaned) > 1:
                draw.text((width - right - 150, top + 6 + 14 * i), name, fill=colour)
    image.save(path)
    return Path(path)


def save_curve(steps, values, path, title: str = "loss", size=(640, 400)) -> Path:
    """A line plot of `values` against `steps` on a log y-axis."""
    return save_lines({title: (steps, values)}, path, title=title, xlabel="step", log_y=True, size=size)
