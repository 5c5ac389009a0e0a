"""Measurement operators y = A(x) + n for inverse problems on images [B, C, H, W] in [-1, 1].

An operator maps a batch of images to a batch of measurements of its own shape (a masked image, a
low-resolution image, a blurred image, a grey image). The linear ones are also dense matrices:
at the sizes this library trains on (8x8 to 32x32), d = C H W is at most a few thousand, so the
matrix is built by applying the operator to the identity basis and its thin SVD A = U diag(S) V^T
is computed once, exactly. Samplers that work in the SVD's basis (DDRM, the exact conditional of
DAPS, RePaint's generalised projection) read it from there.

The noise convention. `sigma_y` is always stated in the pixel range [0, 1] (the range PSNR is
computed in), the convention of the papers' tables. The operators act on the model's range
[-1, 1], which is twice as wide, so the noise added there has standard deviation 2 sigma_y
(`Measurement.noise_std`). (DPS's reference code adds sigma_y in [-1, 1] directly, so its
"sigma_y = 0.05" is 0.025 in [0, 1]; ours is the number it says.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F

MODEL_RANGE_PER_PIXEL_RANGE = 2.0  # [-1, 1] is twice as wide as [0, 1]


def _check_images(x: torch.Tensor, shape: tuple[int, ...], what: str) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or tuple(x.shape[1:]) != tuple(shape):
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{what} expects floating-point images [B, {', '.join(map(str, shape))}], got {got}")


class Operator:
    """A (possibly nonlinear) forward model A of images of `shape` (C, H, W)."""

    linear = False
    name = "operator"

    def __init__(self, shape):
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) != 3:
            raise ValueError(f"an operator acts on images (C, H, W), got the shape {self.shape}")

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check_images(x, self.shape, self.name)
        return self.apply(x)

    def preview(self, y: torch.Tensor) -> torch.Tensor:
        """A measurement as an image of the input's shape, to look at."""
        return y

    @property
    def lipschitz(self) -> float:
        """An upper bound on ||A(x) - A(x')|| / ||x - x'||, for step sizes of gradient methods."""
        return 1.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape})"


class LinearOperator(Operator):
    """A linear A, with its transpose and its exact thin SVD over flattened images."""

    linear = True

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    @cached_property
    def measurement_shape(self) -> tuple[int, ...]:
        return tuple(self.apply(torch.zeros(1, *self.shape, dtype=torch.float64)).shape[1:])

    @cached_property
    def matrix(self) -> torch.Tensor:
        """A as a dense float64 matrix [m, d] (columns: A applied to each basis image)."""
        basis = torch.eye(self.dim, dtype=torch.float64).reshape(self.dim, *self.shape)
        return self.apply(basis).reshape(self.dim, -1).T.contiguous()

    @cached_property
    def svd(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(U [m, r], S [r], V [d, r]) with A = U diag(S) V^T, S > 0 descending, in float64;
        singular values below 1e-10 of the largest are the null space, not part of it."""
        u, s, vh = torch.linalg.svd(self.matrix, full_matrices=False)
        rank = int((s > 1e-10 * s[0]).sum()) if s.numel() else 0
        return u[:, :rank].contiguous(), s[:rank].contiguous(), vh[:rank].T.contiguous()

    @property
    def lipschitz(self) -> float:
        s = self.svd[1]
        return float(s[0]) if s.numel() else 0.0

    def transpose(self, y: torch.Tensor) -> torch.Tensor:
        """A^T y, images [B, C, H, W] from measurements [B, *measurement_shape]."""
        flat = y.reshape(y.shape[0], -1)
        return (flat.to(torch.float64) @ self.matrix).to(y.dtype).reshape(y.shape[0], *self.shape)

    # -- the SVD's coordinates ------------------------------------------------------------------
    def spectral(self, x: torch.Tensor) -> torch.Tensor:
        """V^T x: [B, r] coordinates of images in the row space."""
        return x.reshape(x.shape[0], -1).to(torch.float64) @ self.svd[2].to(x.device)

    def measured(self, y: torch.Tensor) -> torch.Tensor:
        """U^T y: [B, r] coordinates of measurements (y_bar in DDRM's notation is this over S)."""
        return y.reshape(y.shape[0], -1).to(torch.float64) @ self.svd[0].to(y.device)

    def from_spectral(self, coordinates: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """V c, images shaped and typed like `like`."""
        return (coordinates.to(like.device) @ self.svd[2].T.to(like.device)).to(like.dtype).reshape(like.shape)

    def null_part(self, x: torch.Tensor) -> torch.Tensor:
        """(I - V V^T) x, the part of x that A does not see."""
        return x - self.from_spectral(self.spectral(x), x)

    def preview(self, y: torch.Tensor) -> torch.Tensor:
        return self.pinv(y)

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        """A^+ y: the least-norm image that explains y."""
        u, s, v = self.svd
        like = torch.empty(y.shape[0], *self.shape, dtype=y.dtype)
        return self.from_spectral(self.measured(y) / s, like)


class Inpaint(LinearOperator):
    """y = M * x: the pixels where the mask is 1 are seen, the others are zero."""

    name = "inpaint"

    def __init__(self, mask: torch.Tensor, channels: int = 1):
        mask = torch.as_tensor(mask)
        if mask.ndim == 2:
            mask = mask.expand(channels, *mask.shape)
        if mask.ndim != 3 or not ((mask == 0) | (mask == 1)).all():
            raise ValueError("an inpainting mask is [H, W] or [C, H, W] of 0 (missing) and 1 (seen)")
        super().__init__(mask.shape)
        self.mask = mask.to(torch.float64)

    def apply(self, x):
        return x * self.mask.to(x.device, x.dtype)


def box_mask(shape, size: float = 0.5) -> torch.Tensor:
    """[H, W] mask with a centred square hole whose side is `size` of the image's."""
    h, w = shape
    mask = torch.ones(h, w)
    bh, bw = max(1, round(h * size)), max(1, round(w * size))
    top, left = (h - bh) // 2, (w - bw) // 2
    mask[top:top + bh, left:left + bw] = 0
    return mask


def random_mask(shape, missing: float = 0.7, seed: int = 0) -> torch.Tensor:
    """[H, W] mask missing a random `missing` share of the pixels (a fixed draw for a seed)."""
    h, w = shape
    order = torch.randperm(h * w, generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(h * w)
    mask[order[:round(missing * h * w)]] = 0
    return mask.reshape(h, w)


def line_mask(shape) -> torch.Tensor:
    """[H, W] mask missing every other row."""
    mask = torch.ones(*shape)
    mask[1::2] = 0
    return mask


def half_mask(shape) -> torch.Tensor:
    """[H, W] mask missing the right half."""
    mask = torch.ones(*shape)
    mask[:, shape[1] // 2:] = 0
    return mask


MASKS = {"box": box_mask, "random": random_mask, "lines": line_mask, "half": half_mask}


class Downsample(LinearOperator):
    """Super-resolution's y: average pooling by an integer factor."""

    name = "superres"

    def __init__(self, shape, factor: int = 2):
        super().__init__(shape)
        if factor < 1 or self.shape[1] % factor or self.shape[2] % factor:
            raise ValueError(f"the factor {factor} must divide the image's height and width {self.shape[1:]}")
        self.factor = int(factor)

    def apply(self, x):
        return F.avg_pool2d(x, self.factor)


def gaussian_kernel(size: int = 5, std: float = 1.0) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    k = torch.exp(-0.5 * (r / std) ** 2)
    k = k[:, None] * k[None, :]
    return k / k.sum()


def motion_kernel(size: int = 5, angle: float = 0.0) -> torch.Tensor:
    """A straight streak through the centre at `angle` degrees: a linear camera shake."""
    c, k = (size - 1) / 2, torch.zeros(size, size, dtype=torch.float64)
    direction = torch.tensor([math.sin(math.radians(angle)), math.cos(math.radians(angle))], dtype=torch.float64)
    for s in torch.linspace(-c, c, 4 * size, dtype=torch.float64):
        row, col = (c + s * direction).round().long().tolist()
        k[row, col] += 1
    return k / k.sum()


class Blur(LinearOperator):
    """y = k * x per channel, zero outside the image (a square kernel of odd side)."""

    name = "deblur"

    def __init__(self, shape, kernel: torch.Tensor):
        super().__init__(shape)
        kernel = torch.as_tensor(kernel, dtype=torch.float64)
        if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1] or kernel.shape[0] % 2 == 0:
            raise ValueError(f"a blur kernel is a square [k, k] of odd side, got {tuple(kernel.shape)}")
        self.kernel = kernel

    def apply(self, x):
        c = x.shape[1]
        weight = self.kernel.to(x.device, x.dtype).expand(c, 1, *self.kernel.shape)
        return F.conv2d(x, weight, padding=self.kernel.shape[0] // 2, groups=c)


class Grayscale(LinearOperator):
    """Colourisation's y: luma, 0.299 R + 0.587 G + 0.114 B (ITU-R BT.601), [B, 1, H, W]."""

    name = "colorize"
    weights = (0.299, 0.587, 0.114)

    def __init__(self, shape):
        super().__init__(shape)
        if self.shape[0] != 3:
            raise ValueError(f"colourisation needs RGB images (3 channels), these have {self.shape[0]}")

    def preview(self, y):
        return y.expand(-1, 3, -1, -1)

    def apply(self, x):
        w = torch.tensor(self.weights, dtype=x.dtype, device=x.device).reshape(1, 3, 1, 1)
        return (x * w).sum(1, keepdim=True)


class Saturation(Operator):
    """A sensor that saturates: y = clip(gain x, -1, 1). Nonlinear: what is clipped is lost beyond
    knowing it was bright (or dark); only gradient methods (DPS, DAPS's Langevin) handle it."""

    name = "saturate"

    def __init__(self, shape, gain: float = 2.0):
        super().__init__(shape)
        if gain <= 0:
            raise ValueError(f"gain must be positive, got {gain}")
        self.gain = float(gain)

    def apply(self, x):
        return (self.gain * x).clamp(-1, 1)

    @property
    def lipschitz(self) -> float:
        return self.gain


@dataclass(frozen=True)
class Measurement:
    """What a posterior sampler is given: y [B, ...], the operator and sigma_y in [0, 1] pixels."""

    y: torch.Tensor
    operator: Operator
    sigma_y: float = 0.0

    def __post_init__(self):
        if self.sigma_y < 0 or not math.isfinite(self.sigma_y):
            raise ValueError(f"sigma_y must be a finite number >= 0, got {self.sigma_y}")
        if not isinstance(self.y, torch.Tensor) or self.y.ndim < 1:
            raise ValueError("y must be a tensor [B, ...] of measurements")
        if not torch.isfinite(self.y).all():
            raise ValueError("the measurement y has NaN or infinite values")

    @property
    def noise_std(self) -> float:
        """The measurement noise's standard deviation in the model's range [-1, 1]."""
        return MODEL_RANGE_PER_PIXEL_RANGE * self.sigma_y

    def __len__(self) -> int:
        return self.y.shape[0]

    def __getitem__(self, rows: slice) -> "Measurement":
        return Measurement(self.y[rows], self.operator, self.sigma_y)

    def linear(self, method: str) -> LinearOperator:
        """The operator, for a method that works through its SVD (refused for a nonlinear one)."""
        if not self.operator.linear:
            raise ValueError(f"{method} works through the operator's SVD, so it needs a linear operator; "
                             f"{self.operator.name} is not linear (use dps or daps)")
        return self.operator

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """y - A(x), [B, ...]."""
        return self.y.to(x.device, x.dtype) - self.operator(x)

    def consistency(self, x: torch.Tensor) -> torch.Tensor:
        """||y - A(x)|| per sample, in [0, 1] pixel units (as sigma_y is)."""
        return self.residual(x).flatten(1).norm(dim=1) / MODEL_RANGE_PER_PIXEL_RANGE


def measure(operator: Operator, x: torch.Tensor, sigma_y: float = 0.0, seed: int = 0) -> Measurement:
    """The measurement of clean images x: A(x) plus noise of sigma_y (in [0, 1] pixels), seeded."""
    clean = operator(x)
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed), dtype=clean.dtype)
    return Measurement(clean + MODEL_RANGE_PER_PIXEL_RANGE * sigma_y * noise.to(clean.device), operator, sigma_y)
