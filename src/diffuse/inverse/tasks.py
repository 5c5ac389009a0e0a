"""The restoration tasks by name: what `diffuse edit --task` and the benchmark build an operator from."""

from __future__ import annotations

import torch

from .operators import MASKS, Blur, Downsample, Grayscale, Inpaint, Operator, Saturation, gaussian_kernel, motion_kernel

TASKS = ("inpaint", "superres", "deblur", "colorize", "saturate")
BLURS = ("gaussian", "motion")


def make_operator(task: str, shape, *, mask="box", factor: int = 2, blur: str = "gaussian", blur_size: int = 5,
                  blur_std: float = 1.0, angle: float = 0.0, gain: float = 2.0) -> Operator:
    """The operator of a task for images of `shape` (C, H, W).

    mask      inpainting: a name of MASKS (box, random, lines, half) or a tensor [H, W] / [C, H, W] of
              1 (seen) and 0 (missing)
    factor    super-resolution: the average-pooling factor
    blur      deblurring: 'gaussian' (blur_size, blur_std) or 'motion' (blur_size, angle in degrees)
    gain      saturate: the sensor's gain before it clips at the range's ends
    """
    c, h, w = shape
    if task == "inpaint":
        if isinstance(mask, str):
            if mask not in MASKS:
                raise ValueError(f"unknown mask {mask!r}; named masks: {', '.join(MASKS)} (or give a mask image)")
            mask = MASKS[mask]((h, w))
        return Inpaint(mask, channels=c)
    if task == "superres":
        return Downsample(shape, factor)
    if task == "deblur":
        if blur not in BLURS:
            raise ValueError(f"unknown blur {blur!r}; choose {' or '.join(BLURS)}")
        kernel = gaussian_kernel(blur_size, blur_std) if blur == "gaussian" else motion_kernel(blur_size, angle)
        return Blur(shape, kernel)
    if task == "colorize":
        return Grayscale(shape)
    if task == "saturate":
        return Saturation(shape, gain)
    raise ValueError(f"unknown task {task!r}; tasks: {', '.join(TASKS)} (and sdedit, which starts from the image)")


def as_mask(image: torch.Tensor) -> torch.Tensor:
    """A mask picture [H, W] in [0, 1], white where the image is to be filled in (the usual convention of
    inpainting tools), as an Inpaint mask: 1 where seen, 0 where missing."""
    return (image < 0.5).to(torch.float32)
