"""The captioned shapes experiment in one place: the data set and its caption grammar
(dataset.py), the detector that reads images back into captions (detector.py), and the scoring of
a text model against its captions, by its samples and by its loss (scoring.py). Its training
recipe is `diffuse.recipes.RECIPES["shapes"]`; its results are in docs/shapes.md."""

from .dataset import (ALTERATIONS, COLOURS, GAP, IMAGE_SIZE, MARGIN, MAX_OFFSET, RELATIONS, SHAPES, Caption, Item,
                      all_captions, coverage, heldout_captions, layout, load_shapes, parse_caption, render,
                      split_captions)

__all__ = ["ALTERATIONS", "COLOURS", "GAP", "IMAGE_SIZE", "MARGIN", "MAX_OFFSET", "RELATIONS", "SHAPES", "Caption",
           "Item", "all_captions", "coverage", "heldout_captions", "layout", "load_shapes", "parse_caption", "render",
           "split_captions"]
