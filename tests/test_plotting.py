"""The Pillow-drawn pictures: image grids and line plots."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from diffuse.plotting import COLOURS, image_grid, save_curve, save_lines


def test_lines_are_drawn_in_their_colours_at_their_points(tmp_path):
    path = save_lines({"a": ([0, 1], [0, 1], ["p", "q"]), "b": ([0, 1], [1, 0])}, tmp_path / "lines.png",
                      xlabel="x", ylabel="y", size=(200, 140))
    pixels = np.asarray(Image.open(path).convert("RGB"))
    left, right, top, bottom = 60, 20, 30, 40
    corner = {"a": (left, 140 - bottom), "b": (left, top)}   # (0, 0) is bottom left, (0, 1) top left
    for i, (u, v) in enumerate(corner.values()):
        assert tuple(pixels[v, u + 1]) == COLOURS[i]
    mid = pixels[(top + 140 - bottom) // 2, (left + 200 - right) // 2]   # where the two lines cross
    assert tuple(mid) in (COLOURS[0], COLOURS[1])


def test_a_loss_curve_skips_values_a_log_axis_cannot_show(tmp_path):
    path = save_curve([1, 2, 3, 4], [1.0, float("nan"), 0.0, 0.1], tmp_path / "loss.png")
    assert Image.open(path).size == (640, 400)


def test_image_grid_lays_images_out_in_rows():
    images = torch.stack([torch.full((1, 2, 2), v) for v in (-1.0, 1.0, 1.0)])
    grid = image_grid(images, nrow=2, pad=1)
    assert grid.shape == (7, 7, 1)
    assert grid[1, 1, 0] == 0 and grid[1, 4, 0] == 255 and grid[4, 1, 0] == 255 and grid[4, 4, 0] == 0
