"""A synthetic captioned data set: one or two coloured shapes on black, with their captions.

Captions follow a grammar small enough to parse exactly,

    caption  := object | object relation object
    object   := "a" colour shape
    colour   := "red" | "green" | "blue" | "yellow"
    shape    := "circle" | "square" | "triangle"
    relation := "left of" | "right of" | "above" | "below"

e.g. "a green triangle" or "a red circle above a blue square". A caption's structure
(each object's colour and shape, and the relation) is its *combination*. A fixed sixth
of the two-object combinations never occurs in "train" or "test": the "heldout" split
has only those, so a conditional model's accuracy there measures whether it composes
attributes it has seen in pairings it has not. "test" has the training combinations on
fresh images from its own seed stream.

"A left of B" and "B right of A" describe the same picture, so a combination is held
out together with that mirror: no held-out scene reaches training under other words.

Images are float32 [N, 3, 32, 32] in [-1, 1] on a black (-1) background, drawn with
anti-aliased edges from signed distances, so they need no drawing library. Everything
comes from numpy's legacy ``RandomState`` (a stream numpy promises never to change) and
float64 arithmetic, so a split is the same on every machine. ``detector.py``
reads images back into captions.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch

from ..dataset import TensorDataset
from ..splits import HELDOUT, check_split

IMAGE_SIZE = 32

# Pure, saturated RGB in [0, 1]; yellow is red + green.
COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0), "yellow": (1.0, 1.0, 0.0)}
SHAPES = ("circle", "square", "triangle")
RELATIONS = ("left of", "right of", "above", "below")
MIRROR = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
ALTERATIONS = ("colours", "shapes", "relation")  # see Caption.altered

# Layout, in pixels. Objects are 10-12 px across; two objects' boxes are at least GAP
# apart along the relation's axis and their centres at most MAX_OFFSET apart across it,
# so the relation is never in doubt (the along-axis distance is always >= 13 px).
HALF_SIZE = (5.0, 6.0)
MARGIN = 1.0
GAP = 3.0
MAX_OFFSET = 2.0

SIZES = {"train": 20_000, "test": 1_000, HELDOUT: 1_000}
# Each split draws from its own RandomState seeded with [seed, stream].
STREAMS = {"train": 0, "test": 1, HELDOUT: 2}
# Share of single-object images in "train" and "test" ("heldout" has only pairs).
SINGLE_FRACTION = 0.2

# Held-out scenes per axis: 24 of the 144 left-right and 24 of the 144 above-below
# scenes, i.e. 96 of the 576 two-object captions once mirrors are counted (1/6).
HELDOUT_PER_AXIS = 24
HOLDOUT_SEED = 0


@dataclass(frozen=True)
class Item:
    """One object of a caption: a colour and a shape."""

    colour: str
    shape: str

    def __post_init__(self) -> None:
        if self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}; choose from {', '.join(COLOURS)}")
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; choose from {', '.join(SHAPES)}")

    def __str__(self) -> str:
        return f"a {self.colour} {self.shape}"


@dataclass(frozen=True)
class Caption:
    """One object, or two objects and the relation of the first to the second."""

    objects: tuple[Item, ...]
    relation: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "objects", tuple(self.objects))  # hashable, whatever was passed
        if len(self.objects) == 1 and self.relation is not None:
            raise ValueError(f"a one-object caption has no relation, got {self.relation!r}")
        if len(self.objects) == 2 and self.relation not in RELATIONS:
            raise ValueError(f"relation must be one of {RELATIONS}, got {self.relation!r}")
        if len(self.objects) not in (1, 2):
            raise ValueError(f"a caption has one or two objects, got {len(self.objects)}")

    def __str__(self) -> str:
        if self.relation is None:
            return str(self.objects[0])
        return f"{self.objects[0]} {self.relation} {self.objects[1]}"

    def mirrored(self) -> Caption:
        """The same picture in other words: "A left of B" -> "B right of A"."""
        if self.relation is None:
            return self
        return Caption(self.objects[::-1], MIRROR[self.relation])

    def canonical(self) -> Caption:
        """The wording of this picture that uses "left of" or "above"."""
        return self.mirrored() if self.relation in ("right of", "below") else self

    def altered(self, part: str) -> Caption:
        """The same words bound another way, for one part of ALTERATIONS: "colours" trades the
        two objects' colours, "shapes" their shapes, "relation" reverses it ("A left of B" ->
        "A right of B"). A model that reads which words occur but not how they bind cannot tell
        these from the caption. The result may show the same picture (two red objects with
        their colours traded); compare canonical forms to tell."""
        if part not in ALTERATIONS:
            raise ValueError(f"unknown alteration {part!r}; choose from {', '.join(ALTERATIONS)}")
        if self.relation is None:
            raise ValueError(f"a one-object caption has nothing to trade or reverse: {self}")
        (a, b), relation = self.objects, self.relation
        if part == "colours":
            return Caption((Item(b.colour, a.shape), Item(a.colour, b.shape)), relation)
        if part == "shapes":
            return Caption((Item(a.colour, b.shape), Item(b.colour, a.shape)), relation)
        return Caption((a, b), MIRROR[relation])


def parse_caption(text: str) -> Caption:
    """The inverse of ``str(Caption)``; case and runs of whitespace are ignored."""
    words = text.lower().split()

    def fail(position: int, expected: str) -> ValueError:
        found = repr(words[position]) if position < len(words) else "the end"
        return ValueError(f"cannot parse caption {text!r}: expected {expected} at word {position + 1}, found {found}")

    def item(at: int) -> Item:
        if at >= len(words) or words[at] != "a":
            raise fail(at, "'a'")
        if at + 1 >= len(words) or words[at + 1] not in COLOURS:
            raise fail(at + 1, f"a colour ({', '.join(COLOURS)})")
        if at + 2 >= len(words) or words[at + 2] not in SHAPES:
            raise fail(at + 2, f"a shape ({', '.join(SHAPES)})")
        return Item(words[at + 1], words[at + 2])

    first = item(0)
    if len(words) == 3:
        return Caption((first,))
    relation = next((r for r in RELATIONS if words[3 : 3 + len(r.split())] == r.split()), None)
    if relation is None:
        raise fail(3, f"the end or a relation ({', '.join(RELATIONS)})")
    at = 3 + len(relation.split())
    second = item(at)
    if len(words) > at + 3:
        raise fail(at + 3, "the end")
    return Caption((first, second), relation)


def all_items() -> list[Item]:
    return [Item(c, s) for c in COLOURS for s in SHAPES]


def all_captions() -> list[Caption]:
    """Every combination: 12 one-object captions, then 576 two-object ones."""
    items = all_items()
    singles = [Caption((a,)) for a in items]
    pairs = [Caption((a, b), r) for a, r, b in itertools.product(items, RELATIONS, items)]
    return singles + pairs


@lru_cache(maxsize=None)
def heldout_captions() -> frozenset[Caption]:
    """The fixed set of two-object combinations that never appear in training.

    Scenes are drawn per axis so left-right and above-below are held out equally;
    each chosen scene takes its mirrored wording with it.
    """
    rng = np.random.RandomState(HOLDOUT_SEED)
    items = all_items()
    held = set()
    for relation in ("left of", "above"):
        scenes = [Caption((a, b), relation) for a, b in itertools.product(items, items)]
        for k in rng.permutation(len(scenes))[:HELDOUT_PER_AXIS]:
            held |= {scenes[k], scenes[k].mirrored()}
    return frozenset(held)


def split_captions(split: str) -> list[Caption]:
    """The combinations a split draws from, in ``all_captions`` order."""
    check_split(split, heldout=True)
    held = heldout_captions()
    return [c for c in all_captions() if (c in held) == (split == HELDOUT)]


# ---------------------------------------------------------------- drawing


def coverage(
    shape: str, cx: np.ndarray, cy: np.ndarray, half: np.ndarray, size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE)
) -> np.ndarray:
    """[n, height, width] fraction of each pixel that a shape covers, from its signed distance.

    clip(0.5 - d) is the exact coverage of a pixel cut by a straight edge at distance
    d from its centre, and close to it near corners. Every shape fills a box 2*half
    across; a triangle has its apex at the top middle and its base along the bottom.
    """
    height, width = size
    dx = (np.arange(width) + 0.5)[None, None, :] - cx[:, None, None]
    dy = (np.arange(height) + 0.5)[None, :, None] - cy[:, None, None]
    half = half[:, None, None]
    if shape == "circle":
        distance = np.sqrt(dx**2 + dy**2) - half
    elif shape == "square":
        distance = np.maximum(abs(dx), abs(dy)) - half
    else:
        # Base, then the two sides through the apex (0, -half), with unit outward normals.
        sides = 2 * abs(dx) - (dy + half)
        distance = np.maximum(dy - half, sides / np.sqrt(5))
    return np.clip(0.5 - distance, 0.0, 1.0)


def layout(captions: Sequence[Caption], rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres x, y and half sizes, each [n, 2] (column 1 unused for one object).

    Along the relation's axis the two boxes leave a random gap of at least GAP and sit
    at a random place in the free room; across it their centres differ by at most
    MAX_OFFSET. All draws are made for every image, so the stream does not depend on
    the mix of captions.
    """
    n = len(captions)
    half = rng.uniform(*HALF_SIZE, size=(n, 2))
    u = rng.rand(n, 4)
    pair = np.array([c.relation is not None for c in captions])
    horizontal = np.array([c.relation in ("left of", "right of") for c in captions])
    first_low = np.array([c.relation in ("left of", "above") for c in captions])

    room = IMAGE_SIZE - 2 * MARGIN - 2 * half[:, 0]  # range of a lone object's centre
    lone_x = MARGIN + half[:, 0] + u[:, 0] * room
    lone_y = MARGIN + half[:, 0] + u[:, 1] * room

    # Lower (left or upper) and higher object of each pair, along the axis.
    h_low = np.where(first_low, half[:, 0], half[:, 1])
    h_high = np.where(first_low, half[:, 1], half[:, 0])
    slack = IMAGE_SIZE - 2 * MARGIN - 2 * h_low - 2 * h_high - GAP
    extra_gap = u[:, 0] * slack
    low = MARGIN + h_low + u[:, 1] * (slack - extra_gap)
    high = low + h_low + GAP + extra_gap + h_high
    widest = np.maximum(h_low, h_high)
    middle = MARGIN + widest + MAX_OFFSET / 2 + u[:, 2] * (IMAGE_SIZE - 2 * (MARGIN + widest) - MAX_OFFSET)
    offset = (u[:, 3] - 0.5) * MAX_OFFSET
    along = np.stack([np.where(first_low, low, high), np.where(first_low, high, low)], 1)
    across = np.stack([middle + offset / 2, middle - offset / 2], 1)

    hz = horizontal[:, None]
    cx = np.where(pair[:, None], np.where(hz, along, across), lone_x[:, None])
    cy = np.where(pair[:, None], np.where(hz, across, along), lone_y[:, None])
    return cx, cy, half


def _draw(captions: Sequence[Caption], cx: np.ndarray, cy: np.ndarray, half: np.ndarray) -> np.ndarray:
    """[n, 3, S, S] float32 in [-1, 1]."""
    n = len(captions)
    canvas = np.zeros((n, 3, IMAGE_SIZE, IMAGE_SIZE))
    for slot in (0, 1):
        present = [(i, c.objects[slot]) for i, c in enumerate(captions) if len(c.objects) > slot]
        for shape in SHAPES:
            index = np.array([i for i, item in present if item.shape == shape], dtype=np.intp)
            if index.size == 0:
                continue
            alpha = coverage(shape, cx[index, slot], cy[index, slot], half[index, slot])[:, None]
            colour = np.array([COLOURS[c.objects[slot].colour] for c in (captions[i] for i in index)])
            canvas[index] = canvas[index] * (1 - alpha) + alpha * colour[:, :, None, None]
    return (canvas * 2 - 1).astype(np.float32)


def render(captions: Sequence[str | Caption], seed: int = 0, chunk: int = 2048) -> torch.Tensor:
    """Images of the given captions, [N, 3, 32, 32] in [-1, 1], with layouts from ``seed``."""
    parsed = [c if isinstance(c, Caption) else parse_caption(c) for c in captions]
    rng = np.random.RandomState(seed)
    cx, cy, half = layout(parsed, rng)
    images = np.empty((len(parsed), 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    for s in range(0, len(parsed), chunk):  # chunks bound the float64 working memory
        part = slice(s, s + chunk)
        images[part] = _draw(parsed[part], cx[part], cy[part], half[part])
    return torch.from_numpy(images)


def sample_captions(split: str, n: int, rng: np.random.RandomState) -> list[Caption]:
    """``n`` captions of a split: a SINGLE_FRACTION share of one-object ones (none when
    held out), the rest uniform over the split's two-object combinations."""
    pool = split_captions(split)
    singles = [c for c in pool if c.relation is None]
    pairs = [c for c in pool if c.relation is not None]
    one = rng.rand(n) < (SINGLE_FRACTION if singles else 0.0)
    pick_single = rng.randint(len(singles) or 1, size=n)  # drawn even when unused, like layout's
    pick_pair = rng.randint(len(pairs), size=n)
    return [singles[s] if o else pairs[p] for o, s, p in zip(one, pick_single, pick_pair)]


def load_shapes(split: str = "train", n: int | None = None, seed: int = 0) -> TensorDataset:
    """The shapes data set (see the module docstring): images, no labels, captions.

    ``n`` defaults to 20000 for "train" and 1000 for "test" and "heldout"; ``seed``
    moves every split to new images (the held-out combinations stay fixed).
    """
    check_split(split, heldout=True)
    n = SIZES[split] if n is None else n
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    rng = np.random.RandomState([seed, STREAMS[split]])
    captions = sample_captions(split, n, rng)
    images = render(captions, seed=int(rng.randint(2**31)))
    return TensorDataset(images, None, None, f"shapes-{split}", [str(c) for c in captions], modality="image")
