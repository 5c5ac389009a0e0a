"""Distances between two sample sets: Fréchet, sliced Wasserstein and maximum mean discrepancy.

All arithmetic is float64. Inputs are [N, ...] tensors or arrays; trailing axes are flattened,
so the same functions take images [N, C, H, W] and features [N, F].
"""

from __future__ import annotations

import math

import torch

from .neighbours import as_matrix, check_same_dim, chunk_rows, squared_distances


# -- Fréchet distance ---------------------------------------------------------------------------

def gaussian_statistics(feats) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [F] and unbiased covariance [F, F] (divided by N - 1) of feats [N, F], in float64."""
    x = as_matrix(feats)
    if len(x) < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {len(x)}")
    mu = x.mean(0)
    centred = x - mu
    return mu, centred.T @ centred / (len(x) - 1)


def _psd_sqrt(sym: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix via its eigendecomposition.

    Rounding can leave eigenvalues of a singular covariance slightly negative; they are set to
    zero, which is the nearest PSD matrix in Frobenius norm.
    """
    w, v = torch.linalg.eigh(sym)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def gaussian_frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2):

        |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2)

    (Dowson & Landau 1982; the FID of Heusel et al. 2017). The usual form tr((S1 S2)^1/2) takes
    the square root of a non-symmetric product, whose general-purpose matrix square root can
    return complex values or fail on singular covariances. S1^1/2 S2 S1^1/2 is similar to S1 S2,
    so it has the same eigenvalues, but it is symmetric PSD: its trace-square-root is the sum of
    square roots of the eigenvalues of a symmetric eigenproblem, stable for singular inputs too.
    """
    mu1, mu2 = (torch.as_tensor(m, dtype=torch.float64).reshape(-1) for m in (mu1, mu2))
    s1, s2 = (torch.as_tensor(s, dtype=torch.float64) for s in (sigma1, sigma2))
    f = mu1.numel()
    if mu2.numel() != f or s1.shape != (f, f) or s2.shape != (f, f):
        raise ValueError(f"shapes do not match: means {mu1.numel()}, {mu2.numel()}; "
                         f"covariances {tuple(s1.shape)}, {tuple(s2.shape)}")
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    root1 = _psd_sqrt(s1)
    middle = root1 @ s2 @ root1
    eig = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0)
    value = (mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * eig.sqrt().sum()
    return float(value)


def frechet_distance(feats_a, feats_b) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, F] and [M, F].

    With a classifier's penultimate features this is the FID recipe with a data-set-specific
    network in place of Inception. The estimate is biased upwards for finite N (roughly by
    tr(S)/N-order terms), so compare values only at equal sample sizes.
    """
    a, b = as_matrix(feats_a), as_matrix(feats_b)
    check_same_dim(a, b)
    return gaussian_frechet_distance(*gaussian_statistics(a), *gaussian_statistics(b))


# -- sliced Wasserstein ---------------------------------------------------------------------------

def _wasserstein2_1d_sq(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared W2 between empirical measures on the line, column-wise: a [N, P], b [M, P] -> [P].

    W2^2 = int_0^1 (Qa(u) - Qb(u))^2 du with the step quantile functions Qa, Qb. Both are
    constant between consecutive levels in {i/N} u {j/M}, so the integral is an exact finite
    sum over those intervals; for N = M it reduces to the mean squared difference of sorted
    values.
    """
    a, b = a.sort(0).values, b.sort(0).values
    n, m = len(a), len(b)
    if n == m:
        return (a - b).square().mean(0)
    levels = torch.cat([torch.arange(1, n + 1, dtype=torch.float64) / n,
                        torch.arange(1, m + 1, dtype=torch.float64) / m]).unique()   # sorted, ends at 1
    width = torch.diff(levels, prepend=levels.new_zeros(1))
    # On (levels[k-1], levels[k]] the quantile is the sample with rank ceil(u N) - 1.
    ia = (torch.ceil(levels * n - 1e-9) - 1).long().clamp(0, n - 1)
    ib = (torch.ceil(levels * m - 1e-9) - 1).long().clamp(0, m - 1)
    return ((a[ia] - b[ib]).square() * width[:, None]).sum(0)


def sliced_wasserstein(a, b, projections: int = 256, generator: torch.Generator | None = None) -> float:
    """Sliced 2-Wasserstein distance (Rabin et al. 2011; Bonneel et al. 2015) between two sets.

    SW2 = sqrt(E_theta W2^2(theta.a, theta.b)) over directions theta uniform on the sphere,
    estimated with `projections` random directions; each 1-D W2 is exact (see above), so the
    only randomness is the choice of directions. Without a `generator` the directions come
    from a fixed seed (0), so the same inputs always give the same value. Like every sample
    estimate it is positive even for two samples of one distribution, shrinking as 1/sqrt(N).
    """
    x, y = as_matrix(a), as_matrix(b)
    check_same_dim(x, y)
    if projections < 1:
        raise ValueError(f"projections must be positive, got {projections}")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    theta = torch.randn(x.shape[1], projections, generator=generator, dtype=torch.float64)
    theta = (theta / theta.norm(dim=0, keepdim=True)).to(x.device)
    return math.sqrt(float(_wasserstein2_1d_sq(x @ theta, y @ theta).mean()))


# -- maximum mean discrepancy -----------------------------------------------------------------------

KERNELS = ("rbf", "polynomial")

# Points used for the median heuristic: its median is stable long before the full pairwise set.
MEDIAN_SAMPLES = 2000


def median_bandwidth(x: torch.Tensor, y: torch.Tensor, max_samples: int = MEDIAN_SAMPLES) -> float:
    """Median pairwise distance in the pooled sample (Gretton et al. 2012's median heuristic).

    Pooled samples larger than `max_samples` use a fixed-seed subset of that size.
    """
    z = torch.cat([x, y])
    if len(z) > max_samples:
        z = z[torch.randperm(len(z), generator=torch.Generator().manual_seed(0))[:max_samples].to(z.device)]
    d2 = squared_distances(z, z)
    off = d2[~torch.eye(len(z), dtype=torch.bool, device=z.device)]
    h = float(off.median().sqrt())
    if h <= 0:
        raise ValueError("median pairwise distance is 0 (most samples coincide); pass a bandwidth")
    return h


def _kernel_sum(x: torch.Tensor, y: torch.Tensor, kernel) -> torch.Tensor:
    step = chunk_rows(len(y))
    return sum(kernel(x[i:i + step], y).sum() for i in range(0, len(x), step))


def mmd(a, b, kernel: str = "rbf", bandwidth: float | None = None, degree: int = 3) -> float:
    """Unbiased estimate of the squared maximum mean discrepancy MMD^2 (Gretton et al. 2012).

    MMD^2 = E k(x, x') + E k(y, y') - 2 E k(x, y), with the within-set averages taken over
    distinct pairs only, so the estimate is unbiased and can be slightly negative when the two
    distributions are equal.

    kernel="rbf": k(x, y) = exp(-|x - y|^2 / (2 h^2)), h = `bandwidth` or, when None, the
    median pairwise distance of the pooled sample.
    kernel="polynomial": k(x, y) = (x.y / D + 1)^degree, the cubic kernel of the kernel
    inception distance (Binkowski et al. 2018); over the whole set rather than averaged subsets.
    """
    x, y = as_matrix(a), as_matrix(b)
    check_same_dim(x, y)
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise ValueError(f"need at least 2 samples per set, got {n} and {m}")
    if kernel == "rbf":
        h = median_bandwidth(x, y) if bandwidth is None else float(bandwidth)
        if h <= 0:
            raise ValueError(f"bandwidth must be positive, got {h}")

        def k(p, q):
            return torch.exp(-squared_distances(p, q) / (2 * h * h))

        diag_x, diag_y = float(n), float(m)                      # k(x, x) = 1
    elif kernel == "polynomial":
        dim = x.shape[1]

        def k(p, q):
            return (p @ q.T / dim + 1) ** degree

        diag_x = float(((x * x).sum(1) / dim + 1).pow(degree).sum())
        diag_y = float(((y * y).sum(1) / dim + 1).pow(degree).sum())
    else:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    kxx = (float(_kernel_sum(x, x, k)) - diag_x) / (n * (n - 1))
    kyy = (float(_kernel_sum(y, y, k)) - diag_y) / (m * (m - 1))
    kxy = float(_kernel_sum(x, y, k)) / (n * m)
    return kxx + kyy - 2 * kxy
