"""The Pillow-drawn pictures: image grids, class grids, line plots with ticked axes, scatter plots."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from diffuse.plotting import (COLOURS, MARGINS, PAD_GREY, REFERENCE_GREY, SEPARATOR_COLOUR, SEPARATOR_WIDTH,
                              TICK_LENGTH, class_grid, image_grid, log_ticks, nice_ticks, save_class_grid, save_curve,
                              save_image_grid, save_lines, save_scatter)


def read(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def plot_area(size):
    """(left, top, right, bottom) pixel coordinates of the frame of a plot of this size."""
    width, height = size
    return MARGINS.left, MARGINS.top, width - MARGINS.right, height - MARGINS.bottom


def dark(pixels: np.ndarray) -> np.ndarray:
    """Black-ish pixels: text and ticks, never one of the line colours."""
    return pixels.max(axis=-1) < 100


def test_lines_are_drawn_in_their_colours_at_their_points(tmp_path):
    path = save_lines({"a": ([0, 1], [0, 1], ["p", "q"]), "b": ([0, 1], [1, 0])}, tmp_path / "lines.png",
                      xlabel="x", ylabel="y", size=(200, 140))
    pixels = read(path)
    left, top, right, bottom = plot_area((200, 140))
    corner = {"a": (left, bottom), "b": (left, top)}   # (0, 0) is bottom left, (0, 1) top left
    for i, (u, v) in enumerate(corner.values()):
        assert tuple(pixels[v, u + 1]) == COLOURS[i]
    mid = pixels[(top + bottom) // 2, (left + right) // 2]   # where the two lines cross
    assert tuple(mid) in (COLOURS[0], COLOURS[1])


def test_a_loss_curve_skips_values_a_log_axis_cannot_show(tmp_path):
    path = save_curve([1, 2, 3, 4], [1.0, float("nan"), 0.0, 0.1], tmp_path / "loss.png")
    assert Image.open(path).size == (640, 400)


def test_image_grid_lays_images_out_in_rows():
    images = torch.stack([torch.full((1, 2, 2), v) for v in (-1.0, 1.0, 1.0)])
    grid = image_grid(images, nrow=2, pad=1)
    assert grid.shape == (7, 7, 1)
    assert grid[1, 1, 0] == 0 and grid[1, 4, 0] == 255 and grid[4, 1, 0] == 255 and grid[4, 4, 0] == 0
    for line in (0, 3, 6):   # the padding is grey, visible against black and white cells alike
        assert (grid[line, :, 0] == PAD_GREY).all() and (grid[:, line, 0] == PAD_GREY).all()


# --- ticks ---

def test_linear_ticks_are_round_values_one_two_or_five_apart():
    assert nice_ticks(0, 1, 5) == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert nice_ticks(0.3, 0.35, 5) == pytest.approx([0.3, 0.31, 0.32, 0.33, 0.34, 0.35])
    assert nice_ticks(-7, 23, 5) == pytest.approx([0, 10, 20])      # steps of 5 would make 6 intervals
    assert nice_ticks(0, 1000, 8) == pytest.approx([0, 200, 400, 600, 800, 1000])
    assert nice_ticks(-1.5, 1.5, 4) == pytest.approx([-1, 0, 1])


def test_log_ticks_are_decades_with_twos_and_fives_over_a_short_range():
    assert log_ticks(0.01, 10, 4) == pytest.approx([0.01, 0.1, 1, 10])           # 3 decades: decades only
    assert log_ticks(0.03, 2, 4) == pytest.approx([0.05, 0.1, 0.2, 0.5, 1, 2])   # under 2 decades
    assert log_ticks(1e-6, 1, 5) == pytest.approx([1e-6, 1e-4, 1e-2, 1])          # 6 decades: every other one
    assert log_ticks(0.3, 0.45, 5) == pytest.approx([0.3, 0.35, 0.4, 0.45])       # no 1, 2 or 5 inside


def tick_columns(pixels, size) -> set[int]:
    """Columns of the dark pixels in a row just below the x-axis, where along the axis only tick
    marks are (the y-axis labels end further left)."""
    left, top, right, bottom = plot_area(size)
    return set((left + np.flatnonzero(dark(pixels[bottom + TICK_LENGTH - 2, left:right + 1]))).tolist())


def tick_rows(pixels, size) -> set[int]:
    """Rows of the dark pixels in a column just left of the y-axis, where along the axis only tick
    marks are (the x-axis labels begin further down)."""
    left, top, right, bottom = plot_area(size)
    return set((top + np.flatnonzero(dark(pixels[top:bottom + 1, left - TICK_LENGTH + 2]))).tolist())


def test_linear_axes_are_ticked_at_round_values(tmp_path):
    size = (640, 400)
    pixels = read(save_lines({"a": ([0, 10], [0, 10])}, tmp_path / "lines.png", size=size))
    left, top, right, bottom = plot_area(size)
    # 560 pixels across and 330 up leave room for ticks every 2 and every 5
    assert tick_columns(pixels, size) == {round(left + v / 10 * (right - left)) for v in (0, 2, 4, 6, 8, 10)}
    assert tick_rows(pixels, size) == {round(bottom - v / 10 * (bottom - top)) for v in (0, 5, 10)}
    labels = pixels[bottom + TICK_LENGTH + 1:, left - 10:right + 10]
    assert dark(labels).any()


def test_a_log_axis_is_ticked_at_decades(tmp_path):
    size = (640, 400)
    pixels = read(save_curve([0, 1], [0.01, 10], tmp_path / "loss.png", size=size))
    left, top, right, bottom = plot_area(size)
    decades = (0.01, 0.1, 1, 10)
    assert tick_rows(pixels, size) == {round(bottom - (math.log10(v) + 2) / 3 * (bottom - top)) for v in decades}


# --- the note on a curve with too few points ---

def interior(pixels, size) -> np.ndarray:
    left, top, right, bottom = plot_area(size)
    return pixels[top + 1:bottom, left + 1:right]


@pytest.mark.parametrize("steps, values", [([], []), ([5], [0.3]), ([1, 2, 3], [float("nan"), 0.0, 0.2])])
def test_a_curve_with_fewer_than_two_drawable_points_says_so(tmp_path, steps, values):
    pixels = read(save_curve(steps, values, tmp_path / "loss.png"))
    inside = interior(pixels, (640, 400))
    assert (inside != 255).any() and dark(inside).any()


def test_a_curve_with_many_points_has_no_note(tmp_path):
    steps = np.arange(100)
    pixels = read(save_curve(steps, np.exp(-steps / 30), tmp_path / "loss.png"))
    inside = interior(pixels, (640, 400))
    assert not dark(inside).any() and (np.abs(inside.astype(int) - COLOURS[0]).sum(-1) == 0).any()


# --- class grids ---

def constant_images(labels, classes: int) -> torch.Tensor:
    """A 2 x 2 image per label, all of it the label's own grey level."""
    return torch.stack([torch.full((1, 2, 2), -1 + 2 * int(k) / (classes - 1)) for k in labels])


def grey(label: int, classes: int) -> int:
    return round(label * 255 / (classes - 1))


def test_ten_classes_of_ten_make_one_row_a_class():
    labels = np.arange(100) % 10   # interleaved, so the grid has to group them
    grid = class_grid(constant_images(labels, 10), labels)
    block = 2 + 2 * 1   # one row of 2-pixel cells with 1 pixel of padding above and below
    assert grid.shape == (10 * block + 9 * SEPARATOR_WIDTH, 10 * 3 + 1, 3)
    for k in range(10):
        top = k * (block + SEPARATOR_WIDTH)
        for j in range(10):
            assert (grid[top + 1:top + 3, 1 + 3 * j:3 + 3 * j] == grey(k, 10)).all()
        assert (grid[top, :] == PAD_GREY).all() and (grid[top + 3, :] == PAD_GREY).all()
        if k < 9:
            assert (grid[top + block:top + block + SEPARATOR_WIDTH] == SEPARATOR_COLOUR).all()


def test_two_classes_of_fifty_wrap_into_wide_blocks():
    labels = np.arange(100) % 2
    grid = class_grid(constant_images(labels, 2), labels)
    block = 4 * 3 + 1   # 13 columns, so each class takes 4 rows
    assert grid.shape == (2 * block + SEPARATOR_WIDTH, 13 * 3 + 1, 3)
    assert (grid[1, 1] == 0).all() and (grid[block - 3, 1] == 0).all()          # class 0: rows 1 to 4
    assert (grid[block:block + SEPARATOR_WIDTH] == SEPARATOR_COLOUR).all()
    assert (grid[block + SEPARATOR_WIDTH + 1, 1] == 255).all()                      # class 1 starts a row
    assert (grid[-3, 1 + 3 * 10] == 255).all() and (grid[-3, 1 + 3 * 11] == 0).all()  # 50 = 3 x 13 + 11


def test_many_classes_with_few_samples_are_packed_near_square_in_class_order():
    labels = np.random.default_rng(0).permutation(1000)
    assert class_grid(torch.zeros(1000, 1, 2, 2), labels).shape == (32 * 3 + 1, 32 * 3 + 1, 3)
    labels = np.arange(200) % 100
    grid = class_grid(constant_images(labels, 100), labels)
    assert grid.shape == (14 * 3 + 1, 15 * 3 + 1, 3)
    assert not (grid == SEPARATOR_COLOUR).all(axis=-1).any()
    for i in range(200):
        r, k = divmod(i, 15)
        assert (grid[1 + 3 * r, 1 + 3 * k] == grey(i // 2, 100)).all()


def test_a_class_keeps_its_images_in_their_order():
    images = torch.stack([torch.full((1, 2, 2), v) for v in (-1.0, -0.5, 0.5, 1.0)])
    grid = class_grid(images, torch.tensor([1, 0, 1, 0]))
    second_row = 4 + SEPARATOR_WIDTH + 1
    cells = [[grid[1, 1, 0], grid[1, 4, 0]], [grid[second_row, 1, 0], grid[second_row, 4, 0]]]
    assert cells == [[64, 255], [0, 191]]   # class 0 is images 1 and 3, class 1 images 0 and 2


def test_a_saved_class_grid_is_enlarged_for_reading(tmp_path):
    labels = [0, 1, 0, 1]
    path = save_class_grid(constant_images(labels, 2), labels, tmp_path / "classes.png")
    grid = class_grid(constant_images(labels, 2), labels, scale=32)   # 2-pixel images become 64 pixels
    assert np.array_equal(read(path), grid)


# --- scatter plots ---

def test_a_scatter_point_lands_at_its_place_over_grey_reference_points(tmp_path):
    size = (480, 480)
    corners = [[-1, -1], [1, 1], [-1, 1], [1, -1]]
    pixels = read(save_scatter(torch.zeros(1, 2), tmp_path / "scatter.png", reference=torch.tensor(corners)))
    left, top, right, bottom = plot_area(size)
    assert tuple(pixels[(top + bottom) // 2, (left + right) // 2]) == COLOURS[0]
    inside = interior(pixels, size)
    is_grey = (inside == REFERENCE_GREY).all(-1)
    h, w = is_grey.shape
    assert all(quadrant.any() for quadrant in (is_grey[:h // 2, :w // 2], is_grey[:h // 2, w // 2:],
                                               is_grey[h // 2:, :w // 2], is_grey[h // 2:, w // 2:]))
    is_blue = (inside == COLOURS[0]).all(-1)
    assert ((inside == 255).all(-1) | is_grey | is_blue).all()


def test_a_scatter_plot_has_equal_scales(tmp_path):
    pixels = read(save_scatter(np.array([[1.0, 0.0], [0.0, 1.0]]), tmp_path / "scatter.png",
                               reference=np.zeros((1, 2)), size=(480, 300)))
    grey_rows, grey_cols = np.nonzero((pixels == REFERENCE_GREY).all(-1))
    origin = grey_cols.mean(), grey_rows.mean()
    rows, cols = np.nonzero((pixels == COLOURS[0]).all(-1))
    right = cols[cols > origin[0] + 5].mean() - origin[0]
    up = origin[1] - rows[rows < origin[1] - 5].mean()
    assert up > 20 and abs(right - up) <= 1


def test_a_scatter_plot_skips_points_that_are_not_finite(tmp_path):
    points = np.array([[0.0, 0.0], [1.0, 2.0]])
    clean = read(save_scatter(points, tmp_path / "clean.png"))
    messy = np.concatenate([points, [[np.nan, 0.0], [np.inf, 1.0], [0.0, -np.inf]]])
    assert np.array_equal(read(save_scatter(torch.tensor(messy), tmp_path / "messy.png")), clean)


# --- atomic saves ---

@pytest.mark.parametrize("save", [
    lambda path: save_image_grid(torch.zeros(4, 1, 2, 2), path),
    lambda path: save_class_grid(torch.zeros(4, 1, 2, 2), [0, 1, 0, 1], path),
    lambda path: save_lines({"a": ([0, 1], [0, 1])}, path),
    lambda path: save_curve([0, 1], [1.0, 0.5], path),
    lambda path: save_scatter(np.zeros((3, 2)), path),
], ids=["image_grid", "class_grid", "lines", "curve", "scatter"])
def test_a_failed_save_leaves_the_old_picture_and_no_temporary_file(tmp_path, monkeypatch, save):
    path = tmp_path / "picture.png"
    path.write_bytes(b"the old picture")

    def disk_full(*args, **kwargs):
        raise OSError("no space left on device")

    monkeypatch.setattr(Image.Image, "save", disk_full)
    with pytest.raises(OSError):
        save(path)
    assert path.read_bytes() == b"the old picture"
    assert [p.name for p in tmp_path.iterdir()] == ["picture.png"]
