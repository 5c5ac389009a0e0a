"""One call that scores generated images against a data set, and the score of real data itself.

Every sample metric is biased by the sample size, so a number means little alone. `floor` scores
real held-out data the same way (the train split, subsampled to the test split's size, against
the test split): that is what a perfect generator would get, and generated samples should be
compared with it at the same sample size (generate as many images as the test split holds).
"""

from __future__ import annotations

import torch

from .features import FeatureNetwork, feature_network, plain_view
from .distances import frechet_distance, mmd, sliced_wasserstein
from .memorisation import memorisation
from .prdc import precision_recall_density_coverage

# Seed of the train-split subsample that stands in for a perfect generator in `floor`.
FLOOR_SEED = 0


def _load(data):
    from ..data import load_dataset

    spec = plain_view(data)
    return load_dataset(spec, "train"), load_dataset(spec, "test")


def _scores(fake: torch.Tensor, fake_labels, reference, train, network: FeatureNetwork,
            memorisation_queries: torch.Tensor, k: int, projections: int) -> dict[str, float]:
    fake_feats = network.features(fake)
    real_feats = network.features(reference.data)
    out: dict[str, float] = {"n_generated": len(fake), "n_reference": len(reference)}
    if fake_labels is not None:
        out["accuracy"] = network.accuracy(fake, fake_labels)
    out["fd"] = frechet_distance(fake_feats, real_feats)
    out.update(precision_recall_density_coverage(real_feats, fake_feats, k=k))
    out["sw"] = sliced_wasserstein(fake, reference.data, projections=projections)
    out["mmd"] = mmd(fake_feats, real_feats)
    mem = memorisation(memorisation_queries, train.data)
    out["memorised_ratio"] = mem["ratio_rate"]
    out["memorised_normalised"] = mem["normalised_rate"]
    out["nearest_train_l2"] = mem["nearest_distance_median"]
    return out


def evaluate(generated_images, generated_labels, data,
             network: FeatureNetwork | None = None, k: int = 5, projections: int = 256) -> dict[str, float]:
    """Score generated images [M, C, H, W] (in [-1, 1]) against data set `data` (a name, a dict or a DataConfig).

    Images are clamped to [-1, 1] first, as saving them as pictures would. Returns floats:
      n_generated, n_reference   sample sizes (the reference is the test split)
      accuracy                   the feature network's accuracy on the images against their intended
                                 labels (only when `generated_labels` is not None)
      fd                         Fréchet distance of feature-network features to the test split's
      precision, recall, density, coverage   k-NN manifold metrics in the same feature space
      sw                         sliced 2-Wasserstein distance to the test split, in pixel space
      mmd                        unbiased MMD^2 of features, RBF kernel, median bandwidth
      memorised_ratio            fraction with nearest/second-nearest train distance < 1/3
      memorised_normalised       fraction with Carlini et al.'s normalised l2 < 1/3
      nearest_train_l2           median pixel distance to the nearest training image
    `network` defaults to feature_network(data) (cached after the first use).
    """
    train, test = _load(data)
    fake = torch.as_tensor(generated_images).detach().cpu().to(torch.float32)
    if tuple(fake.shape[1:]) != test.shape:
        raise ValueError(f"generated images have shape {tuple(fake.shape[1:])}, "
                         f"the data's images {test.shape}")
    fake = fake.clamp(-1, 1)
    if generated_labels is not None:
        generated_labels = torch.as_tensor(generated_labels).reshape(-1)
        if len(generated_labels) != len(fake):
            raise ValueError(f"{len(fake)} images but {len(generated_labels)} labels")
    if network is None:
        network = feature_network(data)
    return _scores(fake, generated_labels, test, train, network, fake, k, projections)


def floor(data, network: FeatureNetwork | None = None, k: int = 5,
          projections: int = 256, seed: int = FLOOR_SEED, n: int | None = None) -> dict[str, float]:
    """`evaluate`'s metrics for real data: what a generator that samples the data exactly gets.

    The stand-in for generated images is a fixed-seed subsample of the train split as large as
    the test split (or `n`, to match a smaller generated set: sample metrics depend on the sample
    size), scored against the test split (accuracy uses its true labels, and is high
    because the network was trained on those images). Memorisation is measured for the test
    split against the train split instead: train images are trivially "copies" of themselves,
    while test images are fresh draws, which is what a generalising generator produces.
    Also returns classifier_test_accuracy, the network's accuracy on the test split.
    """
    train, test = _load(data)
    if network is None:
        network = feature_network(data)
    n = min(len(train), len(test)) if n is None else n
    if not 0 < n <= len(train):
        raise ValueError(f"n must lie in 1..{len(train)} (the train split), got {n}")
    index = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    stand_in = train.subset(index, f"{train.name}-floor")
    out = _scores(stand_in.data, stand_in.labels, test, train, network, test.data, k, projections)
    if test.labels is not None:
        out["classifier_test_accuracy"] = network.accuracy(test.data, test.labels)
    return out
