"""Full-reference image quality: PSNR and SSIM of images in [-1, 1], measured in [0, 1].

Both are per image [N], so a table can report a mean and its spread. SSIM is Wang et al. (2004)
with their constants (K1 = 0.01, K2 = 0.03, data range 1) and a Gaussian window of std 1.5, whose
side is 11 as in the paper, or the largest odd side the image allows (7 at 8x8), statistics taken
over the windows inside the image ('valid', no padding), averaged over channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import to_unit


def psnr(images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB [N] of [-1, 1] images against references (images clamped)."""
    mse = (to_unit(images.float()) - to_unit(references.float())).pow(2).flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp_min(1e-10))  # a perfect copy reads 100 dB, not infinity


def _window(side: int, std: float = 1.5) -> torch.Tensor:
    r = torch.arange(side, dtype=torch.float64) - (side - 1) / 2
    g = torch.exp(-0.5 * (r / std) ** 2)
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM [N] of [-1, 1] images [N, C, H, W] against references."""
    if images.shape != references.shape or images.ndim != 4:
        raise ValueError(f"ssim compares two [N, C, H, W] batches of one shape, got {tuple(images.shape)} "
                         f"and {tuple(references.shape)}")
    side = min(11, *(s - (s + 1) % 2 for s in images.shape[2:]))
    c = images.shape[1]
    window = _window(side).expand(c, 1, side, side)
    x, y = to_unit(images.double()), to_unit(references.double())

    def local_mean(z):
        return F.conv2d(z, window, groups=c)

    mx, my = local_mean(x), local_mean(y)
    vx, vy = local_mean(x * x) - mx**2, local_mean(y * y) - my**2
    cov = local_mean(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    index = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return index.flatten(1).mean(1).float()
