"""Inverse problems: measurement operators, measurements and the exact posterior of a mixture.

The posterior samplers themselves are samplers of the core (`diffuse.samplers`: repaint, dps,
ddrm, daps), called through `sample(..., sampler=name, measurement=measure(operator, x, sigma_y))`.
"""

from .operators import (MASKS, Blur, Downsample, Grayscale, Inpaint, LinearOperator, Measurement, Operator,
                        Saturation, box_mask, gaussian_kernel, half_mask, line_mask, measure, motion_kernel,
                        random_mask)

__all__ = ["MASKS", "Blur", "Downsample", "Grayscale", "Inpaint", "LinearOperator", "Measurement", "Operator",
           "Saturation", "box_mask", "gaussian_kernel", "half_mask", "line_mask", "measure", "motion_kernel",
           "random_mask"]
