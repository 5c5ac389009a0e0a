"""The memorisation audit: which generated images are copies of training images, how often real
held-out images pass the same test (the false-positive floor), and the training set's own
near-duplicates.

Two criteria, both from memorisation.py's per-image scores against the training set:

* normalised l2 (Carlini et al. 2023, sec. 5), calibrated. The paper sets its threshold on
  real data so that the false-positive rate is known; we do the same with the held-out split.
  A fixed-seed permutation (`seed`) cuts it into two halves. The threshold is the `quantile`
  quantile (default 1%) of the first half's scores, so about that fraction of real held-out
  images is flagged on that half by construction. The second half is then scored with the
  same threshold: its rate, the floor, is measured on images the threshold never saw, so it is
  not the quantile restated. A generator that produces fresh images is flagged at about the
  floor; a copying one far above it (a copy scores 0).

* the nearest-neighbour ratio d_1 / d_2 < 1/3 (Yoon et al. 2023, Gu et al. 2023), with its
  fixed threshold (memorisation.RATIO_THRESHOLD); its floor is measured on the same second half.

An image is "extracted" when both criteria flag it; each criterion's rate is reported too.

Training-set duplicates are found by the same test with each training image left out of its
own neighbours: image i and its nearest other training image j form a pair when i is flagged
(both criteria, the calibrated threshold). A training set with many duplicates makes copies
more likely (Carlini et al. found duplicated images are the ones extracted), so the report
names them beside the rates.

Distances are in pixel space, images flattened, as memorisation.py computes them.
"""

from __future__ import annotations

import torch

from .memorisation import NEIGHBOURS, RATIO_THRESHOLD, memorisation, neighbour_scores
from .neighbours import as_matrix, check_same_dim, nearest_neighbours

# Fraction of real held-out images (the calibration half) the normalised-l2 threshold flags.
CALIBRATION_QUANTILE = 0.01
# Seed of the permutation that cuts the held-out split into calibration and check halves.
SPLIT_SEED = 0
CRITERIA = ("normalised_l2", "nn_ratio")


def _flags(scores: dict, threshold: float, ratio: float) -> dict[str, torch.Tensor]:
    by = {"normalised_l2": scores["normalised_l2"] < threshold, "nn_ratio": scores["nn_ratio"] < ratio}
    by["both"] = by["normalised_l2"] & by["nn_ratio"]
    by["either"] = by["normalised_l2"] | by["nn_ratio"]
    return by


def _rates(flags: dict[str, torch.Tensor]) -> dict[str, float]:
    return {name: float(flag.double().mean()) for name, flag in flags.items()}


def _leave_one_out(pool: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's n nearest *other* rows of `pool`: (distances [N, n], indices [N, n])."""
    dist, index = nearest_neighbours(pool, pool, n + 1)
    own = index == torch.arange(len(pool))[:, None]
    # With more than n+1 exact copies a row itself may tie outside the n+1 found: drop the last instead.
    own[~own.any(1), -1] = True
    keep = ~own
    return dist[keep].view(len(pool), n), index[keep].view(len(pool), n)


def training_duplicates(train, threshold: float, ratio: float = RATIO_THRESHOLD,
                        n_neighbours: int = NEIGHBOURS) -> dict:
    """Near-duplicate pairs within a training set [N, ...]: each image scored against the others.

    Returns {"n_train", "rate" (fraction of training images flagged, per criterion as in `audit`),
    "pairs": [{"a", "b", "distance", "normalised_l2", "nn_ratio"}] (a < b, each pair once, closest
    first, flagged by both criteria)}."""
    pool = as_matrix(train, torch.float32)
    if len(pool) < 3:
        raise ValueError(f"finding duplicates needs at least 3 training images, got {len(pool)}")
    n = min(n_neighbours, len(pool) - 1)
    dist, index = _leave_one_out(pool, n)
    nn_ratio, normalised = neighbour_scores(dist)
    flags = _flags({"normalised_l2": normalised, "nn_ratio": nn_ratio}, threshold, ratio)
    pairs = {}
    for i in torch.nonzero(flags["both"]).flatten().tolist():
        j = int(index[i, 0])
        key = (min(i, j), max(i, j))
        score = {"distance": float(dist[i, 0]), "normalised_l2": float(normalised[i]), "nn_ratio": float(nn_ratio[i])}
        if key not in pairs or score["normalised_l2"] < pairs[key]["normalised_l2"]:
            pairs[key] = score
    ordered = sorted(pairs.items(), key=lambda item: (item[1]["distance"], item[0]))
    return {"n_train": len(pool), "rate": _rates(flags),
            "pairs": [{"a": a, "b": b, **score} for (a, b), score in ordered]}


def audit(generated, train, heldout, *, quantile: float = CALIBRATION_QUANTILE, ratio: float = RATIO_THRESHOLD,
          n_neighbours: int = NEIGHBOURS, seed: int = SPLIT_SEED, duplicates: bool = True) -> dict:
    """The memorisation audit of generated images [M, ...] against training images [N, ...], with
    real held-out images [H >= 2, ...] as the calibration and the floor (see the module docstring).

    Returns a JSON-ready dict:
      criteria     the thresholds: {"normalised_l2": {"threshold", "quantile", "calibration_n"},
                   "nn_ratio": {"threshold"}}
      generated    {"n", "rate": {normalised_l2, nn_ratio, both, either}, "extracted": indices flagged by
                   both, "samples": per image {"nearest" (train index), "distance", "normalised_l2",
                   "nn_ratio"} as lists}
      floor        the same rates for the held-out check half (images the threshold never saw), "n"
      calibration  the same for the calibration half (its normalised_l2 rate is about `quantile`)
      duplicates   training_duplicates(train, threshold) (omitted with duplicates=False)
    """
    gen, pool, real = (as_matrix(x, torch.float32) for x in (generated, train, heldout))
    check_same_dim(gen, pool), check_same_dim(real, pool)
    if len(real) < 2:
        raise ValueError(f"the held-out set needs at least 2 images (a calibration half and a check half), "
                         f"got {len(real)}")
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must lie in (0, 1), got {quantile}")
    order = torch.randperm(len(real), generator=torch.Generator().manual_seed(seed))
    half = len(real) // 2
    calibration, check = real[order[:half]], real[order[half:]]

    def scores(images):
        return memorisation(images, pool, ratio=ratio, n_neighbours=n_neighbours)

    calibrated = scores(calibration)
    # The "lower" quantile is an observed score, so at most `quantile` of the half lies strictly below it.
    threshold = float(torch.quantile(calibrated["normalised_l2"], quantile, interpolation="lower"))
    if threshold == 0:
        raise ValueError("held-out images are exact copies of training images (calibrated threshold 0); "
                         "the test and train splits overlap")
    sampled = scores(gen)
    flags = _flags(sampled, threshold, ratio)
    report = {
        "criteria": {"normalised_l2": {"threshold": threshold, "quantile": quantile, "calibration_n": half},
                     "nn_ratio": {"threshold": ratio}},
        "generated": {
            "n": len(gen), "rate": _rates(flags),
            "extracted": torch.nonzero(flags["both"]).flatten().tolist(),
            "samples": {"nearest": sampled["nearest_index"].tolist(), "distance": sampled["nearest_distance"].tolist(),
                        "normalised_l2": sampled["normalised_l2"].tolist(), "nn_ratio": sampled["nn_ratio"].tolist()},
        },
        "floor": {"n": len(check), "rate": _rates(_flags(scores(check), threshold, ratio))},
        "calibration": {"n": half, "rate": _rates(_flags(calibrated, threshold, ratio))},
    }
    if duplicates:
        report["duplicates"] = training_duplicates(pool, threshold, ratio, n_neighbours)
    return report


def audit_pipeline(pipeline, n: int, train, heldout, *, labels=None, quantile: float = CALIBRATION_QUANTILE,
                   seed: int = 0, duplicates: bool = True, **sampling) -> tuple[torch.Tensor, dict]:
    """Draw n samples from a pipeline (`diffuse.load(run)`) and audit them against `train` and
    `heldout` (data sets or image tensors); `sampling` goes to pipeline.sample. Without `labels`, a
    class-conditional model (or classifier guidance) draws the held-out split's own class mix.
    Returns (samples clamped to [-1, 1], the `audit` report)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of samples must be a positive integer, got {n!r}")
    train_images, heldout_images = (getattr(x, "data", x) for x in (train, heldout))
    if tuple(train_images.shape[1:]) != tuple(pipeline.shape):
        raise ValueError(f"the model draws images of shape {tuple(pipeline.shape)}, the training images are "
                         f"{tuple(train_images.shape[1:])}")
    if labels is None and (pipeline.num_classes is not None or sampling.get("classifier") is not None):
        held_labels = getattr(heldout, "labels", None)
        if held_labels is None:
            raise ValueError("a class-conditional model needs labels to sample; the held-out data have none")
        labels = held_labels[torch.arange(n) % len(held_labels)]
    samples = pipeline.sample(n, labels=labels, seed=seed, **sampling).detach().cpu().float().clamp(-1, 1)
    report = audit(samples, train_images, heldout_images, quantile=quantile, duplicates=duplicates)
    report["generated"]["labels"] = None if labels is None else torch.as_tensor(labels).tolist()
    return samples, report

