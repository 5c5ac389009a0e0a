"""Precision, recall, density and coverage from k-nearest-neighbour balls in feature space.

Each sample set is summarised as a union of balls, one per sample, whose radius is the distance
to that sample's k-th nearest neighbour in its own set (Kynkäänniemi et al. 2019):

    precision = fraction of fake samples inside the real manifold (some real ball)   fidelity
    recall    = fraction of real samples inside the fake manifold (some fake ball)   diversity

Naeem et al. 2020 replace both with versions that outliers cannot inflate; they use the real
balls only, which are more trustworthy than balls around generated samples:

    density  = (1 / kM) sum_j #{real balls containing fake j}   (about 1 when the sets match;
               above 1 when fakes crowd into dense real regions)
    coverage = fraction of real balls containing at least one fake sample
"""

from __future__ import annotations

import torch

from .neighbours import as_matrix, check_same_dim, chunk_rows, knn_radii, squared_distances


def precision_recall_density_coverage(real_feats, fake_feats, k: int = 5) -> dict[str, float]:
    """{"precision", "recall", "density", "coverage"} of fake [M, F] against real [N, F].

    The distance matrix is visited once, in chunks of fake rows, so memory stays bounded.
    A sample lies in a ball when its distance is <= the radius (ties count as inside).
    """
    real, fake = as_matrix(real_feats), as_matrix(fake_feats)
    check_same_dim(real, fake)
    real_r = knn_radii(real, k)                                        # [N]
    fake_r = knn_radii(fake, k)                                        # [M]
    in_real_manifold = torch.zeros(len(fake), dtype=torch.bool, device=fake.device)
    real_balls_hit = torch.zeros(len(fake), dtype=torch.float64, device=fake.device)
    in_fake_manifold = torch.zeros(len(real), dtype=torch.bool, device=real.device)
    covered = torch.zeros(len(real), dtype=torch.bool, device=real.device)
    step = chunk_rows(len(real))
    for start in range(0, len(fake), step):
        stop = start + step
        d = squared_distances(fake[start:stop], real).sqrt_()         # [B, N]
        inside_real = d <= real_r[None, :]
        in_real_manifold[start:stop] = inside_real.any(1)
        real_balls_hit[start:stop] = inside_real.sum(1).to(torch.float64)
        covered |= inside_real.any(0)
        in_fake_manifold |= (d <= fake_r[start:stop, None]).any(0)
    return {
        "precision": float(in_real_manifold.double().mean()),
        "recall": float(in_fake_manifold.double().mean()),
        "density": float(real_balls_hit.sum() / (k * len(fake))),
        "coverage": float(covered.double().mean()),
    }
