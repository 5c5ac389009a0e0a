"""Does a generator copy its training set? Nearest-neighbour tests in pixel space.

Two per-sample scores, both scale-free ratios of l2 distances from a generated image g to the
training images, with d_1 <= d_2 <= ... its sorted nearest-neighbour distances:

* nearest-neighbour ratio d_1 / d_2. A copy of one training image is much closer to it than
  to any other (ratio near 0); a fresh sample typically sits about as far from its nearest as
  from its second-nearest (ratio near 1). g counts as memorised when the ratio is < 1/3, the
  criterion used by Yoon et al. 2023 and Gu et al. 2023 in their studies of memorisation in
  diffusion models.

* normalised l2 (Carlini et al. 2023, "Extracting training data from diffusion models", sec. 5):
  d_1 divided by the mean of d_1..d_n over the n = 50 nearest training images. It asks whether
  g is close to one training image *relative to how crowded its neighbourhood is*, which keeps
  dense regions (many near-identical training images) from looking like copies. The paper
  divides by a multiple of that mean; we divide by the mean itself (`scale` = 1) and flag
  g when the score is < 1/3 (`threshold`), i.e. when g is three times closer to its nearest
  training image than to its typical 50 neighbours. This is our choice of threshold, made to
  match the ratio test above, not the paper's operating point. A copy scores 0; held-out real
  images score a median 0.64 on digits (1st percentile 0.35, so 0.8% fall below 1/3: 8x8
  digits have near-duplicates) and 0.81 on Fashion-MNIST (1st percentile 0.48). `floor` in
  evaluate.py reports these real-data rates, the baseline a generator should be compared with.

Distances are in pixel space by default (images flattened), as both papers do for small images.
"""

from __future__ import annotations

import torch

from .neighbours import as_matrix, check_same_dim, nearest_neighbours

RATIO_THRESHOLD = 1 / 3
NORMALISED_THRESHOLD = 1 / 3
NEIGHBOURS = 50


def neighbour_scores(dist: torch.Tensor, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(d_1 / d_2, d_1 / (scale * mean(d_1..d_n))) per row of sorted neighbour distances [M, n >= 2].

    A zero denominator (a copy of a training image that appears twice) scores 0: the sample is
    a copy, whatever 0/0 would say."""
    d1, d2 = dist[:, 0], dist[:, 1]
    tiny = torch.finfo(torch.float64).tiny
    nn_ratio = torch.where(d2 > 0, d1 / d2.clamp_min(tiny), torch.zeros_like(d1))
    mean_n = scale * dist.mean(1)
    return nn_ratio, torch.where(mean_n > 0, d1 / mean_n.clamp_min(tiny), torch.zeros_like(d1))


def memorisation(generated, train, ratio: float = RATIO_THRESHOLD, n_neighbours: int = NEIGHBOURS,
                 threshold: float = NORMALISED_THRESHOLD, scale: float = 1.0) -> dict:
    """Memorisation scores of generated samples [M, ...] against training samples [N, ...].

    Returns a dict with
      "ratio_rate":        fraction of samples with d_1 / d_2 < `ratio`
      "normalised_rate":   fraction with d_1 / (scale * mean(d_1..d_n)) < `threshold`
      "nearest_distance_median": median d_1 (in the inputs' units: [-1, 1] pixels)
      "nearest_distance":  d_1 per sample, float64 [M]
      "nn_ratio":          d_1 / d_2 per sample [M]
      "normalised_l2":     the normalised score per sample [M]
      "nearest_index":     index into `train` of each sample's nearest image, int64 [M]
      "second_index":      index of the second nearest [M]
    n = min(n_neighbours, N). When d_2 = 0 (an exact copy of a training image that appears
    twice) both scores are 0: the sample is a copy, whatever the ratio's 0/0 would say.
    """
    gen = as_matrix(generated, torch.float32)
    pool = as_matrix(train, torch.float32)
    check_same_dim(gen, pool)
    if len(pool) < 2 or n_neighbours < 2:
        raise ValueError(f"the nearest/second-nearest ratio needs 2 neighbours among at least 2 "
                         f"training samples, got n_neighbours={n_neighbours} and {len(pool)} samples")
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    n = min(n_neighbours, len(pool))
    dist, index = nearest_neighbours(gen, pool, n)                      # [M, n], float64
    d1 = dist[:, 0]
    nn_ratio, normalised = neighbour_scores(dist, scale)
    return {
        "ratio_rate": float((nn_ratio < ratio).double().mean()),
        "normalised_rate": float((normalised < threshold).double().mean()),
        "nearest_distance_median": float(d1.median()),
        "nearest_distance": d1,
        "nn_ratio": nn_ratio,
        "normalised_l2": normalised,
        "nearest_index": index[:, 0],
        "second_index": index[:, 1],
    }
