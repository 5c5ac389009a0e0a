"""Attacks on watermarked pictures: what a picture goes through between its generation and its
detection (compression, cropping, filtering, noise, rotation, exposure), as in the Tree-Ring and
Gaussian Shading papers' robustness tables.

Every attack takes pictures [n, C, H, W] in [0, 1] (as saved) and returns the same shape in [0, 1];
the random ones (noise, crop position) draw image k's randomness from (seed, k), so an attack is a
function of its picture, its parameter and its seed. A spec names an attack and its parameter,
"jpeg:50", or just the name for its default.
"""

from __future__ import annotations

import io
import math

import torch
import torch.nn.functional as F

from ..inverse.operators import gaussian_kernel
from ..randomness import seeded


def _check(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        raise ValueError("attacks take pictures [n, C, H, W] in [0, 1]")


def jpeg(images: torch.Tensor, quality: float = 50, seed: int = 0) -> torch.Tensor:
    """JPEG compression at `quality` (1..95, Pillow's scale) and back; 8-bit pixels on the way."""
    import numpy as np
    from PIL import Image

    if not 1 <= quality <= 95:
        raise ValueError(f"jpeg quality must be in 1..95, got {quality:g}")
    out = []
    for picture in images:
        array = (picture.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=int(round(quality)))
        back = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert(image.mode), dtype=np.float32) / 255
        back = torch.from_numpy(back.copy())
        out.append(back[None] if back.ndim == 2 else back.permute(2, 0, 1))
    return torch.stack(out).to(images.dtype)


def crop(images: torch.Tensor, scale: float = 0.75, seed: int = 0) -> torch.Tensor:
    """A random crop of `scale` of each side (at a place from (seed, k)) resized back to the full size."""
    if not 0 < scale <= 1:
        raise ValueError(f"crop scale must be in (0, 1], got {scale:g}")
    h, w = images.shape[-2:]
    ch, cw = max(1, round(scale * h)), max(1, round(scale * w))
    out = []
    for k, picture in enumerate(images):
        g = seeded(seed, k)
        top = int(torch.randint(0, h - ch + 1, (1,), generator=g))
        left = int(torch.randint(0, w - cw + 1, (1,), generator=g))
        part = picture[None, :, top:top + ch, left:left + cw]
        out.append(F.interpolate(part, size=(h, w), mode="bilinear", align_corners=False)[0])
    return torch.stack(out).clamp(0, 1)


def blur(images: torch.Tensor, std: float = 1.0, seed: int = 0) -> torch.Tensor:
    """Gaussian blur of `std` pixels (a kernel of 3 std each side, the edges reflected)."""
    if std <= 0:
        raise ValueError(f"blur std must be > 0, got {std:g}")
    half = max(1, math.ceil(3 * std))
    half = min(half, images.shape[-1] - 1, images.shape[-2] - 1)  # reflection needs a pad below the side
    size, c = 2 * half + 1, images.shape[1]
    kernel = gaussian_kernel(size, std).to(images.dtype)  # the deblurring task's kernel
    x = F.pad(images, (half, half, half, half), mode="reflect")
    return F.conv2d(x, kernel.expand(c, 1, size, size), groups=c).clamp(0, 1)


def noise(images: torch.Tensor, std: float = 0.05, seed: int = 0) -> torch.Tensor:
    """Additive Gaussian noise of `std` (in [0, 1] units), image k's from (seed, k), clipped to [0, 1]."""
    if std < 0:
        raise ValueError(f"noise std must be >= 0, got {std:g}")
    draws = torch.stack([torch.randn(images.shape[1:], generator=seeded(seed, k), dtype=images.dtype)
                         for k in range(len(images))])
    return (images + std * draws).clamp(0, 1)


def rotation(images: torch.Tensor, degrees: float = 15.0, seed: int = 0) -> torch.Tensor:
    """Rotation by `degrees` about the centre (bilinear; the corners brought in are black)."""
    angle = math.radians(degrees)
    c, s = math.cos(angle), math.sin(angle)
    h, w = images.shape[-2:]
    # affine_grid works in [-1, 1] coordinates; the aspect ratio keeps the rotation rigid on a non-square picture
    theta = torch.tensor([[c, -s * h / w, 0.0], [s * w / h, c, 0.0]], dtype=images.dtype)
    grid = F.affine_grid(theta.expand(len(images), 2, 3), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp(0, 1)


def brightness(images: torch.Tensor, factor: float = 1.5, seed: int = 0) -> torch.Tensor:
    """Brightness scaled by `factor` (clipped to [0, 1])."""
    if factor < 0:
        raise ValueError(f"brightness factor must be >= 0, got {factor:g}")
    return (images * factor).clamp(0, 1)


ATTACKS = {"jpeg": jpeg, "crop": crop, "blur": blur, "noise": noise, "rotation": rotation, "brightness": brightness}
DEFAULTS = {"jpeg": 50, "crop": 0.75, "blur": 1.0, "noise": 0.05, "rotation": 15.0, "brightness": 1.5}


def parse_attack(spec: str) -> tuple[str, float]:
    """'jpeg:50' -> ('jpeg', 50.0); 'blur' -> ('blur', its default)."""
    name, colon, value = spec.partition(":")
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; attacks: {', '.join(f'{k}[:{v:g}]' for k, v in DEFAULTS.items())}")
    if not colon:
        return name, float(DEFAULTS[name])
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"attack {spec!r}: the parameter after ':' must be a number") from None
    if not math.isfinite(number):
        raise ValueError(f"attack {spec!r}: the parameter must be finite")
    return name, number


def attack(images: torch.Tensor, spec: str, seed: int = 0) -> torch.Tensor:
    """Apply the attack `spec` ('name' or 'name:parameter') to pictures [n, C, H, W] in [0, 1]."""
    _check(images)
    name, value = parse_attack(spec)
    return ATTACKS[name](images, value, seed=seed)
