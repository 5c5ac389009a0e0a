"""Pairwise distances and nearest neighbours between sample sets, in memory-bounded chunks.

Every metric here compares two sets of vectors (flattened images or classifier features).
A full distance matrix between 10,000 and 60,000 samples would not fit in memory, so rows are
processed in chunks whose slice of the matrix holds at most ``CHUNK_ELEMENTS`` entries.
"""

from __future__ import annotations

import numpy as np
import torch

# Entries of one chunk of a distance matrix: 2**24 float64 values are 128 MiB.
CHUNK_ELEMENTS = 2**24


def as_matrix(x, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Samples [N, ...] (tensor or array) as an [N, D] tensor of `dtype`, on the CPU if numpy."""
    x = torch.from_numpy(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"need a non-empty set of samples [N, ...], got shape {tuple(x.shape)}")
    x = x.detach().reshape(x.shape[0], -1).to(dtype)
    if not torch.isfinite(x).all():
        raise ValueError("samples contain NaN or infinite values")
    return x


def check_same_dim(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"sample sets differ in dimension: {a.shape[1]} vs {b.shape[1]}")


def chunk_rows(n_cols: int, limit: int = CHUNK_ELEMENTS) -> int:
    """Rows per chunk so that a [rows, n_cols] block stays under `limit` entries."""
    return max(1, limit // max(1, n_cols))


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||a_i - b_j||^2 as [len(a), len(b)], via |a|^2 + |b|^2 - 2 a.b (clamped at 0).

    The expansion is one matrix product instead of a [len(a), len(b), D] difference tensor;
    in float64 its cancellation error (about 1e-16 of |a|^2) is far below any distance we
    compare, in float32 it is not, which is why callers that need exact small distances
    recompute them directly (see `nearest_neighbours`).
    """
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return d2.clamp_min_(0.0)


def knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each row of x to its k-th nearest other row (the point itself excluded)."""
    if not 1 <= k < len(x):
        raise ValueError(f"k must be in 1..{len(x) - 1} for {len(x)} samples, got {k}")
    step = chunk_rows(len(x))
    radii = []
    for start in range(0, len(x), step):
        d2 = squared_distances(x[start:start + step], x)
        # The k+1 smallest include the point itself at distance 0 (or a duplicate of it).
        radii.append(d2.topk(k + 1, dim=1, largest=False).values[:, -1])
    return torch.cat(radii).sqrt()


def nearest_neighbours(queries: torch.Tensor, pool: torch.Tensor, n: int,
                       search_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The n nearest rows of `pool` for every query: (l2 distances [Q, n] float64, indices [Q, n]).

    The search ranks candidates in `search_dtype` (float32 halves the cost of the large matrix
    product), then the distances to the chosen n are recomputed exactly in float64 from the
    differences and re-sorted, so a copy of a pool row gets distance exactly 0.
    """
    if not 1 <= n <= len(pool):
        raise ValueError(f"n must be in 1..{len(pool)}, got {n}")
    check_same_dim(queries, pool)
    pool_s = pool.to(search_dtype)
    pool_sq = (pool_s * pool_s).sum(1)
    # Bound both the [B, len(pool)] score block and the [B, n, D] block of differences.
    step = min(chunk_rows(len(pool)), chunk_rows(n * pool.shape[1]))
    dists, idxs = [], []
    for start in range(0, len(queries), step):
        q = queries[start:start + step]
        # |q|^2 is the same for every candidate of a row, so it does not change the ranking.
        score = pool_sq[None, :] - 2.0 * (q.to(search_dtype) @ pool_s.T)
        idx = score.topk(n, dim=1, largest=False).indices                  # [B, n]
        diff = pool[idx].to(torch.float64) - q.to(torch.float64)[:, None, :]
        d = diff.square_().sum(-1).sqrt_()                                 # [B, n]
        d, order = d.sort(dim=1)
        dists.append(d)
        idxs.append(idx.gather(1, order))
    return torch.cat(dists), torch.cat(idxs)
