"""Outlines of the shapes in images: the control images of the control adapter's task, and its score.

An image's *shape* is where any channel is brighter than mid-grey (above 0 in [-1, 1]); its
*outline* is the shape's pixels with a 4-neighbour outside it (the image's border counts as
outside), drawn as +1 on -1. The outline of a shape without holes encloses exactly the shape:
the pixels that no 4-connected path from outside the image reaches without crossing the
outline are the outline and its inside, since any path into the shape first enters it at an
outline pixel. So the control's shape is read back from the control alone (`enclosed`), and a
generated image obeys its control to the degree its shape overlaps the enclosed one (`iou`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CONTROLS = ("outline",)  # the controls a control task can derive from its images


def shape_mask(images: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] images in [-1, 1] -> bool [N, H, W], where any channel is above mid-grey."""
    if images.ndim != 4:
        raise ValueError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}")
    return images.amax(dim=1) > 0


def _neighbours_outside(mask: torch.Tensor) -> torch.Tensor:
    """bool [N, H, W]: where a 4-neighbour is False, beyond the border included."""
    padded = F.pad(mask.float(), (1, 1, 1, 1), value=0.0)
    inside = padded[:, :-2, 1:-1] * padded[:, 2:, 1:-1] * padded[:, 1:-1, :-2] * padded[:, 1:-1, 2:]
    return inside == 0


def outline(mask: torch.Tensor) -> torch.Tensor:
    """The shape's pixels with a 4-neighbour outside it: bool [N, H, W]."""
    return mask & _neighbours_outside(mask)


def enclosed(edges: torch.Tensor) -> torch.Tensor:
    """The outline and what it encloses: every pixel that no 4-connected path from beyond the
    border reaches without crossing `edges` (bool [N, H, W]). A flood fill from the frame, one
    4-neighbour ring per round, until it stops growing."""
    free = F.pad(~edges, (1, 1, 1, 1), value=True)
    outside = torch.zeros_like(free)
    outside[:, 0, :] = outside[:, -1, :] = outside[:, :, 0] = outside[:, :, -1] = True
    while True:
        grown = outside.clone()
        grown[:, 1:, :] |= outside[:, :-1, :]
        grown[:, :-1, :] |= outside[:, 1:, :]
        grown[:, :, 1:] |= outside[:, :, :-1]
        grown[:, :, :-1] |= outside[:, :, 1:]
        grown &= free
        if torch.equal(grown, outside):
            return ~outside[:, 1:-1, 1:-1]
        outside = grown


def outline_control(images: torch.Tensor) -> torch.Tensor:
    """The control image of each image [N, C, H, W] in [-1, 1]: its shape's outline, [N, 1, H, W],
    +1 on the outline and -1 elsewhere."""
    edges = outline(shape_mask(images))
    return (edges.to(images.dtype) * 2 - 1).unsqueeze(1)


def control_shape(controls: torch.Tensor) -> torch.Tensor:
    """The shape a control [N, 1, H, W] asks for: its outline and what the outline encloses."""
    return enclosed(controls[:, 0] > 0)


def iou(images: torch.Tensor, controls: torch.Tensor) -> torch.Tensor:
    """Per image, the intersection over union of its shape with its control's shape [N] (1 where
    both are empty)."""
    ours, asked = shape_mask(images), control_shape(controls)
    union = (ours | asked).flatten(1).sum(1)
    both = (ours & asked).flatten(1).sum(1)
    return torch.where(union > 0, both / union.clamp(min=1), torch.ones_like(union, dtype=torch.float)).float()


DERIVE = {"outline": outline_control}  # control name -> images [N, C, H, W] -> control images [N, 1, H, W]
