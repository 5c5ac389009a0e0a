"""Pictures without a plotting library, drawn with Pillow: image grids (plain, or grouped by class),
line plots and loss curves with ticked axes, and 2-D scatter plots.

Every picture is written through `files.atomic_write`, so a reader (a browser refreshing
`samples.png` during training) sees the old picture or the new one, never half a PNG.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageDraw

from .data import to_unit
from .files import atomic_write

# Padding between grid cells: mid grey stands out against both black-background digits and
# white-background pictures, where black or white padding would vanish.
PAD_GREY = 128
# Between class blocks of a class grid: wider than the padding and in a colour no grey-level
# picture contains, so a class boundary cannot be mistaken for a cell boundary.
SEPARATOR_COLOUR = (255, 140, 0)
SEPARATOR_WIDTH = 3
# Class grids aim for a landscape picture (screens are wider than tall) and give up on one class
# per row once that would be more than three times taller than wide.
TARGET_ASPECT = 3 / 2
MIN_CLASS_MAJOR_ASPECT = 1 / 3

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)]
REFERENCE_GREY = (190, 190, 190)


class Margins(NamedTuple):
    left: int
    right: int
    top: int
    bottom: int


# Room outside the plot area for tick labels (left, bottom), the title (top) and the last x label
# centred on the right edge (right).
MARGINS = Margins(left=60, right=20, top=30, bottom=40)
TICK_LENGTH = 5
# Tick spacing is at least this many pixels, room for a label of about eight characters.
PIXELS_PER_TICK = 70
LINE_HEIGHT = 14
LABEL_GAP = 2
MARKER_RADIUS = 3
DOT_RADIUS = 2
# Scatter ranges are widened by this fraction on each side: a dot on the frame would be half hidden.
SCATTER_PADDING = 0.05


# --- image grids ---

def _to_pixels(images: torch.Tensor, scale: int) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> uint8 [N, H*scale, W*scale, C]."""
    if images.ndim != 4:
        raise ValueError(f"expected images [N, C, H, W], got shape {tuple(images.shape)}")
    if len(images) == 0:
        raise ValueError("no images to lay out")
    pixels = (to_unit(images.detach().float().cpu()) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return pixels.repeat(scale, axis=1).repeat(scale, axis=2)


def _tile(pixels: np.ndarray, cols: int, pad: int) -> np.ndarray:
    """[N, H, W, C] -> [rows*(H+pad)+pad, cols*(W+pad)+pad, C], row-major, with grey padding
    between and around the cells; cells past the last image stay black."""
    n, h, w, c = pixels.shape
    rows = math.ceil(n / cols)
    cells = np.zeros((rows * cols, h, w, c), dtype=np.uint8)
    cells[:n] = pixels
    framed = np.pad(cells.reshape(rows, cols, h, w, c), ((0, 0), (0, 0), (pad, 0), (pad, 0), (0, 0)),
                    constant_values=PAD_GREY)
    grid = framed.transpose(0, 2, 1, 3, 4).reshape(rows * (h + pad), cols * (w + pad), c)
    return np.pad(grid, ((0, pad), (0, pad), (0, 0)), constant_values=PAD_GREY)


def image_grid(images: torch.Tensor, nrow: int | None = None, scale: int = 1, pad: int = 1) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> one uint8 picture [rows*(H+pad)+pad, cols*(W+pad)+pad, C] (H and W
    after `scale`), `nrow` images a row (a near-square grid by default), PAD_GREY between them."""
    pixels = _to_pixels(images, scale)
    return _tile(pixels, nrow or math.ceil(math.sqrt(len(pixels))), pad)


def _class_columns(counts) -> int | None:
    """The column count of the class-major layout of classes with these sample counts, or None
    where even its widest form (one row a class) would be a strip; see class_grid."""
    widest = max(counts)
    best, best_cost, best_aspect = widest, math.inf, 0.0
    for rows_per_class in range(1, widest + 1):
        cols = math.ceil(widest / rows_per_class)
        aspect = cols / sum(math.ceil(n / cols) for n in counts)
        cost = abs(math.log(aspect / TARGET_ASPECT))
        if cost < best_cost:  # strict: on a tie the wider layout, with fewer rows a class, wins
            best, best_cost, best_aspect = cols, cost, aspect
    return best if best_aspect >= MIN_CLASS_MAJOR_ASPECT else None


def _as_rgb(pixels: np.ndarray) -> np.ndarray:
    if pixels.shape[-1] == 1:
        return pixels.repeat(3, axis=-1)
    if pixels.shape[-1] != 3:
        raise ValueError(f"a class grid needs 1 or 3 channels, got {pixels.shape[-1]}")
    return pixels


def _as_array(values) -> np.ndarray:
    return values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)


def class_grid(images: torch.Tensor, labels, scale: int = 1, pad: int = 1) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] and N labels -> one uint8 RGB picture of the images grouped by class.

    Classes come in ascending label order, a class's images in their given order. The layout is
    class-major: every class starts a new row and wraps onto further rows, all classes sharing one
    column count, with a SEPARATOR_WIDTH band of SEPARATOR_COLOUR between class blocks (inside the
    PAD_GREY padding). The column count is `ceil(largest class / r)` for the number r of rows of
    the largest class that brings the whole grid (cells counted, padding not) nearest
    TARGET_ASPECT, width over height; on a tie the smaller r. So 10 classes of 10 give 10 x 10, one
    class a row, and 2 classes of 50 give 13 columns, 4 rows a class.

    Where even one row a class is taller than wide by more than 1 / MIN_CLASS_MAJOR_ASPECT (many
    classes with few samples each: 1000 x 1, 100 x 2), the images are instead packed, still in
    class order, into a near-square grid of ceil(sqrt(N)) columns without separators, since class
    boundaries then fall mid-row.
    """
    pixels = _as_rgb(_to_pixels(images, scale))
    labels = _as_array(labels)
    if labels.shape != (len(pixels),):
        raise ValueError(f"expected {len(pixels)} labels, one per image, got shape {labels.shape}")
    pixels = pixels[np.argsort(labels, kind="stable")]
    counts = np.unique(labels, return_counts=True)[1]   # ascending labels, as sorted above
    cols = _class_columns(counts.tolist())
    if cols is None:
        return _tile(pixels, math.ceil(math.sqrt(len(pixels))), pad)
    blocks = [_tile(block, cols, pad) for block in np.split(pixels, np.cumsum(counts)[:-1])]
    separator = np.broadcast_to(np.array(SEPARATOR_COLOUR, dtype=np.uint8), (SEPARATOR_WIDTH, blocks[0].shape[1], 3))
    return np.concatenate([part for block in blocks for part in (separator, block)][1:])


def _readable_scale(images: torch.Tensor) -> int:
    """Small images are enlarged to about 64 pixels a side so that a grid is readable on screen."""
    return max(1, 64 // images.shape[-1])


def _save_png(image: Image.Image, path) -> Path:
    with atomic_write(path, "wb") as f:
        image.save(f, format="PNG")
    return Path(path)


def grid_picture(images: torch.Tensor, labels=None, nrow: int | None = None, scale: int | None = None,
                 pad: int = 1) -> Image.Image:
    """The picture `diffuse sample --out FILE.png` writes: image_grid, or class_grid when there are
    labels; by default small images are enlarged to about 64 pixels."""
    scale = _readable_scale(images) if scale is None else scale
    grid = image_grid(images, nrow, scale, pad) if labels is None else class_grid(images, list(labels), scale, pad)
    return Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)


def save_image_grid(images: torch.Tensor, path, nrow: int | None = None, scale: int | None = None) -> Path:
    """grid_picture of unlabelled images written as a PNG."""
    return _save_png(grid_picture(images, nrow=nrow, scale=scale), path)


def save_class_grid(images: torch.Tensor, labels, path, scale: int | None = None) -> Path:
    """grid_picture grouped by class written as a PNG."""
    return _save_png(grid_picture(images, labels, scale=scale), path)


# --- axes ---

def _clean(value: float) -> float:
    """Drop the float noise of k * step (0.30000000000000004 -> 0.3), so labels print short."""
    return float(f"{value:.12g}")


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """The multiples in [lo, hi] of the smallest step 1, 2 or 5 x 10^k giving at most `target`
    intervals over the range."""
    span = hi - lo
    if not span > 0:
        return [_clean(lo)]
    magnitude = 10.0 ** math.floor(math.log10(span / target))
    step = next((m * magnitude for m in (1, 2, 5) if span / (m * magnitude) <= target), 10 * magnitude)
    # the tolerance keeps an end of the range that is itself a multiple (0.3 / 0.1 = 2.9999...)
    first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
    return [_clean(k * step) for k in range(first, last + 1)]


def log_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Tick values on a log axis over [lo, hi] (0 < lo < hi, real values, not logarithms): the
    decades, thinned to every 2nd, 5th... when there are more than `target`; with fewer than 3
    decades spanned also the 2 and 5 multiples; over a range too short for two of those, the
    linear nice_ticks."""
    a, b = math.log10(lo), math.log10(hi)
    if b - a < 3:
        ticks = [_clean(m * 10.0 ** e) for e in range(math.floor(a), math.ceil(b) + 1) for m in (1, 2, 5)]
    else:
        ticks = [_clean(10.0 ** round(e)) for e in nice_ticks(a, b, target) if abs(e - round(e)) < 1e-9]
    ticks = [v for v in ticks if lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9)]   # lo, hi went through log10
    return ticks if len(ticks) >= 2 else nice_ticks(lo, hi, target)


def _widen(lo: float, hi: float) -> tuple[float, float]:
    """A range of one value (a single point) becomes one around it, so it has a scale."""
    if hi > lo:
        return lo, hi
    half = abs(lo) / 2 or 0.5
    return lo - half, hi + half


@dataclass(frozen=True)
class Axis:
    """The range [lo, hi] drawn from pixel `start` to pixel `end`; on a log axis lo and hi are
    log10 of the values at the ends."""
    lo: float
    hi: float
    start: float
    end: float
    log: bool = False

    @classmethod
    def fit(cls, values: np.ndarray, start: float, end: float, log: bool = False) -> Axis:
        """The axis just spanning `values` (finite, and positive on a log axis)."""
        t = np.log10(values) if log else values
        return cls(*_widen(float(t.min()), float(t.max())), start, end, log)

    def pixel(self, values) -> np.ndarray:
        t = np.log10(values) if self.log else np.asarray(values, dtype=float)
        return self.start + (t - self.lo) / (self.hi - self.lo) * (self.end - self.start)

    def ticks(self) -> list[float]:
        target = max(2, int(abs(self.end - self.start)) // PIXELS_PER_TICK)
        return log_ticks(10 ** self.lo, 10 ** self.hi, target) if self.log else nice_ticks(self.lo, self.hi, target)


def _text_box(draw: ImageDraw.ImageDraw, x: float, y: float, text: str, anchor: str):
    """Where to draw `text` so that its box's left/middle/right (anchor[0] = l/m/r) and top/middle
    (anchor[1] = t/m) sit at (x, y), and that box. Anchored by hand: PIL's own `anchor=` needs a
    TrueType font, and Pillow 9 may only have its bitmap default font."""
    x0, y0, x1, y1 = draw.textbbox((0, 0), text)
    u = round(x - {"l": x0, "m": (x0 + x1) / 2, "r": x1}[anchor[0]])
    v = round(y - {"t": y0, "m": (y0 + y1) / 2}[anchor[1]])
    return (u, v), (x0 + u, y0 + v, x1 + u, y1 + v)


def _text(draw: ImageDraw.ImageDraw, x: float, y: float, text: str, anchor: str = "lt", fill="black") -> None:
    origin, _ = _text_box(draw, x, y, text, anchor)
    draw.text(origin, text, fill=fill)


def _overlap(a, b) -> bool:
    return a[0] < b[2] + LABEL_GAP and b[0] < a[2] + LABEL_GAP and a[1] < b[3] + LABEL_GAP and b[1] < a[3] + LABEL_GAP


def _draw_ticks(draw: ImageDraw.ImageDraw, axis: Axis, box, horizontal: bool) -> None:
    """Tick marks outside the frame (so they never hide data) with their values as labels; a label
    that would overprint one already drawn is left out, decades first on a log axis."""
    left, top, right, bottom = box
    drawn = []
    for value in sorted(axis.ticks(), key=lambda v: axis.log and f"{v:e}"[0] != "1"):
        p = round(float(axis.pixel(value)))
        if horizontal:
            draw.line([(p, bottom), (p, bottom + TICK_LENGTH)], fill="black")
            origin, extent = _text_box(draw, p, bottom + TICK_LENGTH + LABEL_GAP, f"{value:g}", "mt")
        else:
            draw.line([(left - TICK_LENGTH, p), (left, p)], fill="black")
            origin, extent = _text_box(draw, left - TICK_LENGTH - LABEL_GAP, p, f"{value:g}", "rm")
        if not any(_overlap(extent, other) for other in drawn):
            draw.text(origin, f"{value:g}", fill="black")
            drawn.append(extent)


def _canvas(size, title: str, xlabel: str, ylabel: str):
    """A white picture with the frame of the plot area, the title centred above it, the x label
    centred below and the y label above the y-axis; returns it, its drawer and the frame box."""
    width, height = size
    box = (MARGINS.left, MARGINS.top, width - MARGINS.right, height - MARGINS.bottom)
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle(box, outline="black")
    _text(draw, (box[0] + box[2]) / 2, 8, title, "mt")
    _text(draw, (box[0] + box[2]) / 2, height - 4 - LINE_HEIGHT, xlabel, "mt")
    _text(draw, 4, 8, ylabel)
    return image, draw, box


def _draw_note(draw: ImageDraw.ImageDraw, box, lines: list[str]) -> None:
    """Say in the plot area why it is (nearly) empty; a third of the way down, clear of a single
    point, which sits in the middle."""
    left, top, right, bottom = box
    first = top + (bottom - top) / 3 - LINE_HEIGHT * len(lines) / 2
    for i, line in enumerate(lines):
        _text(draw, (left + right) / 2, first + i * LINE_HEIGHT, line, "mt")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


# --- line plots ---

def _draw_legend(draw: ImageDraw.ImageDraw, box, entries: list[tuple[str, tuple]], points: list[tuple]) -> None:
    """Names with colour swatches in a white box, in the corner of the plot area covering the
    fewest points (top right on a tie)."""
    left, top, right, bottom = box
    swatch = 16
    width = max(draw.textlength(name) for name, _ in entries) + swatch + 4 * LABEL_GAP
    height = LINE_HEIGHT * len(entries) + 2 * LABEL_GAP
    inset = 6
    corners = [(right - inset - width, top + inset), (left + inset, top + inset),
               (right - inset - width, bottom - inset - height), (left + inset, bottom - inset - height)]

    def covered(corner):
        x, y = corner
        r = MARKER_RADIUS
        return sum(x - r <= u <= x + width + r and y - r <= v <= y + height + r for u, v in points)

    x, y = min(corners, key=covered)
    draw.rectangle([x, y, x + width, y + height], fill="white", outline=REFERENCE_GREY)
    for i, (name, colour) in enumerate(entries):
        middle = y + LABEL_GAP + LINE_HEIGHT * (i + 0.5)
        draw.line([(x + LABEL_GAP, middle), (x + LABEL_GAP + swatch, middle)], fill=colour, width=2)
        _text(draw, x + 2 * LABEL_GAP + swatch, middle, name, "lm", fill=colour)


def save_lines(series: dict, path, title: str = "", xlabel: str = "", ylabel: str = "", log_y: bool = False,
               size=(640, 400)) -> Path:
    """Line plots on shared, ticked axes: `series` maps a name to (x, y) or (x, y, point_labels);
    each line gets its own colour from COLOURS and, with more than one series, a legend entry;
    its points are marked where there are several series, point labels or a lone point, and
    labelled with point_labels. Points a (log) axis cannot show are skipped; with fewer than two
    left, a note in the plot area says how many there were and how many could be drawn."""
    cleaned, given = {}, 0
    for name, (x, y, *labels) in series.items():
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        keep = np.isfinite(x) & np.isfinite(y) & ((y > 0) if log_y else True)
        point_labels = [str(v) for v, k in zip(labels[0], keep) if k] if labels else None
        cleaned[name] = (x[keep], y[keep], point_labels)
        given += len(x)
    image, draw, (left, top, right, bottom) = _canvas(size, title, xlabel, ylabel)
    shown = sum(len(x) for x, _, _ in cleaned.values())
    if shown:
        xaxis = Axis.fit(np.concatenate([x for x, _, _ in cleaned.values()]), left, right)
        yaxis = Axis.fit(np.concatenate([y for _, y, _ in cleaned.values()]), bottom, top, log=log_y)
        _draw_ticks(draw, xaxis, (left, top, right, bottom), horizontal=True)
        _draw_ticks(draw, yaxis, (left, top, right, bottom), horizontal=False)
        drawn_points = []
        for i, (name, (x, y, labels)) in enumerate(cleaned.items()):
            colour = COLOURS[i % len(COLOURS)]
            points = list(zip(xaxis.pixel(x).tolist(), yaxis.pixel(y).tolist()))
            if len(points) >= 2:
                draw.line(points, fill=colour, width=2)
            if len(cleaned) > 1 or labels or len(points) == 1:
                r = MARKER_RADIUS
                for u, v in points:
                    draw.ellipse([u - r, v - r, u + r, v + r], fill=colour)
            for (u, v), label in zip(points, labels or []):
                draw.text((u + 4, v - 12), label, fill=colour)
            drawn_points += points
        if len(cleaned) > 1:
            entries = [(name, COLOURS[i % len(COLOURS)]) for i, name in enumerate(cleaned)]
            _draw_legend(draw, (left, top, right, bottom), entries, drawn_points)
    if shown < 2:
        note = [f"{_count(given, 'point')} logged so far" + (f", {shown} can be drawn" if shown < given else "")]
        if shown < given:
            note.append("(a log axis shows only finite values above 0)" if log_y else "(only finite values are drawn)")
        _draw_note(draw, (left, top, right, bottom), note + ["a curve is drawn from 2 points"])
    return _save_png(image, path)


def save_curve(steps, values, path, title: str = "loss", size=(640, 400)) -> Path:
    """A line plot of `values` against `steps` on a log y-axis (with a note while fewer than two
    points can be drawn)."""
    return save_lines({title: (steps, values)}, path, title=title, xlabel="step", log_y=True, size=size)


# --- scatter plots ---

def _points(values, name: str) -> np.ndarray:
    """[N, 2] -> its finite rows, as float."""
    values = _as_array(values).astype(float)
    if values.ndim != 2 or values.shape[1] != 2:
        raise ValueError(f"expected {name} [N, 2], got shape {values.shape}")
    return values[np.isfinite(values).all(axis=1)]


def _equal_scale_axes(points: np.ndarray, box) -> tuple[Axis, Axis]:
    """Axes spanning `points` (with SCATTER_PADDING) at one common scale, so that a circle is drawn
    round: the axis whose range is short for its pixels is widened about its centre."""
    left, top, right, bottom = box
    ranges = [_widen(float(points[:, i].min()), float(points[:, i].max())) for i in (0, 1)]
    ranges = [(lo - SCATTER_PADDING * (hi - lo), hi + SCATTER_PADDING * (hi - lo)) for lo, hi in ranges]
    pixels = (right - left, bottom - top)
    per_pixel = max((hi - lo) / n for (lo, hi), n in zip(ranges, pixels))
    (x0, x1), (y0, y1) = [((lo + hi - per_pixel * n) / 2, (lo + hi + per_pixel * n) / 2)
                          for (lo, hi), n in zip(ranges, pixels)]
    return Axis(x0, x1, left, right), Axis(y0, y1, bottom, top)


def save_scatter(points, path, reference=None, title: str = "", size=(480, 480)) -> Path:
    """A scatter plot of `points` [N, 2] (tensor or array) in COLOURS[0], over `reference` points
    [M, 2] (the training data, say) drawn first in light grey, on ticked axes at equal scales;
    non-finite points are skipped."""
    drawn = _points(points, "points")
    behind = _points(np.zeros((0, 2)) if reference is None else reference, "reference")
    image, draw, box = _canvas(size, title, "", "")
    both = np.concatenate([behind, drawn])
    if len(both):
        xaxis, yaxis = _equal_scale_axes(both, box)
        _draw_ticks(draw, xaxis, box, horizontal=True)
        _draw_ticks(draw, yaxis, box, horizontal=False)
        r = DOT_RADIUS
        for values, colour in ((behind, REFERENCE_GREY), (drawn, COLOURS[0])):
            for u, v in zip(np.round(xaxis.pixel(values[:, 0])).tolist(), np.round(yaxis.pixel(values[:, 1])).tolist()):
                draw.ellipse([u - r, v - r, u + r, v + r], fill=colour)
    if not len(drawn):
        _draw_note(draw, box, [f"no finite points to draw ({_count(len(_as_array(points)), 'point')} given)"])
    return _save_png(image, path)
