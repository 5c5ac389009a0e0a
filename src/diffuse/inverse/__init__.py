"""Inverse problems: measurement operators and measurements, the tasks by name, classical baselines.

The posterior samplers themselves are samplers of the core (`diffuse.samplers`: repaint, dps,
ddrm, daps), called through `sample(..., sampler=name, measurement=measure(operator, x, sigma_y))`.
"""

from .baselines import PixelRegression, Wiener, bicubic, mean_fill, nearest_consistent, nearest_fill
from .operators import (MASKS, Blur, Downsample, Grayscale, Inpaint, LinearOperator, Measurement, Operator,
                        Saturation, box_mask, gaussian_kernel, half_mask, line_mask, measure, motion_kernel,
                        random_mask)
from .tasks import TASKS, as_mask, make_operator

__all__ = ["MASKS", "Blur", "Downsample", "Grayscale", "Inpaint", "LinearOperator", "Measurement", "Operator",
           "Saturation", "box_mask", "gaussian_kernel", "half_mask", "line_mask", "measure", "motion_kernel",
           "random_mask", "PixelRegression", "Wiener", "bicubic", "mean_fill", "nearest_consistent", "nearest_fill",
           "TASKS", "as_mask", "make_operator"]
