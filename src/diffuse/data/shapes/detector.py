"""Read shapes images back into captions, to score text-conditioned samples.

A pixel is foreground when its brightest channel passes half intensity; its colour is
the nearest of the four palette colours after scaling that channel to one, so dim
anti-aliased edges keep their hue. Same-colour 8-connected regions are objects, and
regions under MIN_AREA pixels (specks from noise or colour fringes) are dropped.

The shape is the one that, drawn by the renderer with the region's own area and
centroid, overlaps the region best (soft intersection over union). Area and centroid
are sums over the whole region, so a few pixels flipped by noise barely move them; a
first version used the bounding box (fill ratio: square 1, disc pi/4, triangle 1/2),
and one stray edge pixel stretching the box turned squares into discs at noise std 0.1.

The relation of two objects is judged from their centroids along the axis on which
they lie further apart, the same rule the renderer's layout guarantees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .dataset import COLOURS, SHAPES, Caption, Item, coverage, parse_caption

FOREGROUND = 0.5  # brightest channel, in [0, 1] units
MIN_AREA = 16  # pixels; the smallest rendered object (a 10 px triangle) covers about 50

_PALETTE = np.array(list(COLOURS.values()))
_NAMES = list(COLOURS)
_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


@dataclass(frozen=True)
class DetectedObject:
    """An object found in an image; the centre is its centroid in pixels (x right, y down)."""

    colour: str
    shape: str
    centre_x: float
    centre_y: float
    area: int

    @property
    def item(self) -> Item:
        return Item(self.colour, self.shape)


def classify_pixels(images: np.ndarray) -> np.ndarray:
    """[N, 3, H, W] in [-1, 1] -> [N, H, W] ints: 0 background, k + 1 for COLOURS' k-th colour."""
    unit = np.clip((images.astype(np.float64) + 1) / 2, 0, 1)
    brightest = unit.max(axis=1)
    hue = unit / np.maximum(brightest, 1e-6)[:, None]
    distance = ((hue[:, None] - _PALETTE[None, :, :, None, None]) ** 2).sum(axis=2)
    return np.where(brightest > FOREGROUND, distance.argmin(axis=1) + 1, 0)


def connected_components(classes: np.ndarray) -> np.ndarray:
    """Label 8-connected regions of equal nonzero class in [N, H, W]; 0 stays background.

    Labels start as each pixel's flat index + 1 and repeatedly take the smallest label
    among same-class neighbours. Each pass also jumps every label to the label of the
    pixel it names (which lies in the same region), so the minimum spreads in about
    log(diameter) passes instead of one pixel per pass. Labels are unique across the batch.
    """
    n, h, w = classes.shape
    size = n * h * w
    labels = np.arange(1, size + 1).reshape(n, h, w)
    labels = np.where(classes > 0, labels, size + 1)
    padded_classes = np.pad(classes, ((0, 0), (1, 1), (1, 1)))
    while True:
        padded = np.pad(labels, ((0, 0), (1, 1), (1, 1)), constant_values=size + 1)
        smallest = labels
        for dy, dx in _NEIGHBOURS:
            window = (slice(None), slice(1 + dy, 1 + dy + h), slice(1 + dx, 1 + dx + w))
            same = (padded_classes[window] == classes) & (classes > 0)
            smallest = np.where(same, np.minimum(smallest, padded[window]), smallest)
        flat = np.append(smallest.ravel(), size + 1)  # background's label size + 1 maps to itself
        jumped = np.where(classes > 0, flat[smallest - 1], size + 1)
        if np.array_equal(jumped, labels):
            return np.where(classes > 0, labels, 0)
        labels = jumped


def _templates(centre_x: np.ndarray, centre_y: np.ndarray, area: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[K, len(SHAPES), H, W] coverage of each shape drawn with a region's area and centroid."""
    # Half sizes giving the area: square 4 h^2, disc pi h^2, triangle 2 h^2; a triangle's
    # centroid lies h/3 below its box's middle.
    half = {"square": np.sqrt(area / 4), "circle": np.sqrt(area / np.pi), "triangle": np.sqrt(area / 2)}
    drawn = []
    for shape in SHAPES:
        middle_y = centre_y - half[shape] / 3 if shape == "triangle" else centre_y
        drawn.append(coverage(shape, centre_x, middle_y, half[shape], size))
    return np.stack(drawn, axis=1)


def detect_batch(images: torch.Tensor | np.ndarray, min_area: int = MIN_AREA) -> list[list[DetectedObject]]:
    """The objects in each image of [N, 3, H, W] in [-1, 1], sorted left to right."""
    images = images.detach().cpu().float().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected RGB images [N, 3, H, W], got shape {images.shape}")
    classes = classify_pixels(images)
    labels = connected_components(classes)
    image, ys, xs = np.nonzero(labels)
    found: list[list[DetectedObject]] = [[] for _ in range(len(images))]
    _, first, region, area = np.unique(
        labels[image, ys, xs], return_index=True, return_inverse=True, return_counts=True
    )
    centre_x = np.bincount(region, xs + 0.5, len(area)) / area  # pixel k spans [k, k + 1)
    centre_y = np.bincount(region, ys + 0.5, len(area)) / area
    kept = np.flatnonzero(area >= min_area)
    if kept.size == 0:
        return found
    owner, seed_y, seed_x = image[first[kept]], ys[first[kept]], xs[first[kept]]
    masks = labels[owner] == labels[owner, seed_y, seed_x][:, None, None]
    templates = _templates(centre_x[kept], centre_y[kept], area[kept], labels.shape[1:])
    # Soft intersection over union of the region with each template.
    overlap = np.minimum(templates, masks[:, None]).sum(axis=(2, 3))
    union = np.maximum(templates, masks[:, None]).sum(axis=(2, 3))
    shape_index = (overlap / union).argmax(axis=1)
    colours = classes[owner, seed_y, seed_x]
    for k, i in enumerate(kept):
        obj = DetectedObject(
            _NAMES[colours[k] - 1], SHAPES[shape_index[k]], float(centre_x[i]), float(centre_y[i]), int(area[i])
        )
        found[owner[k]].append(obj)
    return [sorted(objs, key=lambda o: (o.centre_x, o.centre_y)) for objs in found]


def detect(image: torch.Tensor | np.ndarray, min_area: int = MIN_AREA) -> list[DetectedObject]:
    """The objects in one image [3, H, W] in [-1, 1], sorted left to right."""
    if image.ndim != 3:
        raise ValueError(f"expected one RGB image [3, H, W], got shape {tuple(image.shape)}")
    return detect_batch(image[None], min_area)[0]


def relation(first: DetectedObject, second: DetectedObject) -> str:
    """Where ``first`` lies relative to ``second``, along the axis they differ most on."""
    dx = second.centre_x - first.centre_x
    dy = second.centre_y - first.centre_y  # image y grows downwards
    if abs(dx) >= abs(dy):
        return "left of" if dx > 0 else "right of"
    return "above" if dy > 0 else "below"


def describe(objects: Sequence[DetectedObject]) -> Caption | None:
    """The canonical caption ("left of" / "above") of one or two objects; None otherwise."""
    if len(objects) == 1:
        return Caption((objects[0].item,))
    if len(objects) == 2:
        first, second = objects
        return Caption((first.item, second.item), relation(first, second)).canonical()
    return None


def caption_of(image: torch.Tensor | np.ndarray) -> str | None:
    """The canonical caption of an image, or None when it does not show one or two objects."""
    caption = describe(detect(image))
    return None if caption is None else str(caption)


def _as_caption(caption: str | Caption) -> Caption:
    return caption if isinstance(caption, Caption) else parse_caption(caption)


# What an image got wrong first, in this order: a caption is checked for its number of
# objects, then their colours, then their shapes, then the relation. "shape" covers shapes
# swapped between the two objects, and "relation" both a swapped pair and the wrong axis.
ERROR_KINDS = ("count", "colour", "shape", "relation")


def caption_error(objects: Sequence[DetectedObject], caption: str | Caption) -> str | None:
    """The first of ERROR_KINDS that detected objects get wrong against the caption, or None
    when they show exactly the caption (any wording of the picture)."""
    wanted = _as_caption(caption)
    found = describe(objects)
    if found is None or len(found.objects) != len(wanted.objects):
        return "count"
    if sorted(o.colour for o in found.objects) != sorted(o.colour for o in wanted.objects):
        return "colour"
    if sorted(map(str, found.objects)) != sorted(map(str, wanted.objects)):
        return "shape"
    return None if found == wanted.canonical() else "relation"


def objects_match(objects: Sequence[DetectedObject], caption: str | Caption) -> bool:
    """Whether detected objects are exactly the caption: the same number of objects,
    colours and shapes, and the relation. Any wording of the picture matches."""
    return caption_error(objects, caption) is None


def matches(image: torch.Tensor | np.ndarray, caption: str | Caption) -> bool:
    """Whether one image [3, H, W] shows exactly what the caption says."""
    return objects_match(detect(image), caption)


def caption_errors(
    images: torch.Tensor | np.ndarray, captions: Sequence[str | Caption], batch_size: int = 500
) -> list[str | None]:
    """For each image [N, 3, H, W], what it gets wrong against its caption (one of
    ERROR_KINDS), or None where it shows exactly its caption."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    if len(captions) == 0:
        raise ValueError("scoring against captions needs at least one image")
    wanted = [_as_caption(c) for c in captions]  # bad captions fail before any detection
    errors: list[str | None] = []
    for start in range(0, len(wanted), batch_size):
        found = detect_batch(images[start : start + batch_size])
        errors += [caption_error(objs, c) for objs, c in zip(found, wanted[start : start + batch_size])]
    return errors


def caption_accuracy(
    images: torch.Tensor | np.ndarray, captions: Sequence[str | Caption], batch_size: int = 500
) -> float:
    """The share of images [N, 3, H, W] that show exactly their caption."""
    return error_mix(caption_errors(images, captions, batch_size))["exact"]


def error_mix(errors: Sequence[str | None]) -> dict[str, float]:
    """The share of each outcome in `errors` (caption_errors' list): "exact", then each of
    ERROR_KINDS."""
    if not errors:
        raise ValueError("error_mix needs at least one outcome")
    return {kind: errors.count(None if kind == "exact" else kind) / len(errors) for kind in ("exact", *ERROR_KINDS)}
