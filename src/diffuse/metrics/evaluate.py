"""One call that scores generated images against a data set, and the score of real data itself.

Every sample metric is biased by the sample size, so a number means little alone. `floor` scores
real held-out data the same way (the train split, subsampled to the test split's size, against
the test split): that is what a perfect generator would get, and generated samples should be
compared with it at the same sample size (generate as many images as the test split holds).
"""

from __future__ import annotations

import torch

from .classifier import FeatureClassifier, load_or_train_classifier
from .distances import frechet_distance, mmd, sliced_wasserstein
from .memorisation import memorisation
from .prdc import precision_recall_density_coverage

# Seed of the train-split subsample that stands in for a perfect generator in `floor`.
FLOOR_SEED = 0


def _load(dataset_name: str):
    from ..data import load_dataset

    return load_dataset(dataset_name, "train"), load_dataset(dataset_name, "test")


def _scores(fake: torch.Tensor, fake_labels, reference, train, classifier: FeatureClassifier,
            memorisation_queries: torch.Tensor, k: int, projections: int) -> dict[str, float]:
    fake_feats = classifier.features(fake)
    real_feats = classifier.features(reference.data)
    out: dict[str, float] = {"n_generated": len(fake), "n_reference": len(reference)}
    if fake_labels is not None:
        out["accuracy"] = classifier.accuracy(fake, fake_labels)
    out["fd"] = frechet_distance(fake_feats, real_feats)
    out.update(precision_recall_density_coverage(real_feats, fake_feats, k=k))
    out["sw"] = sliced_wasserstein(fake, reference.data, projections=projections)
    out["mmd"] = mmd(fake_feats, real_feats)
    mem = memorisation(memorisation_queries, train.data)
    out["memorised_ratio"] = mem["ratio_rate"]
    out["memorised_normalised"] = mem["normalised_rate"]
    out["nearest_train_l2"] = mem["nearest_distance_median"]
    return out


def evaluate(generated_images, generated_labels, dataset_name: str,
             classifier: FeatureClassifier | None = None, k: int = 5, projections: int = 256) -> dict[str, float]:
    """Score generated images [M, C, H, W] (in [-1, 1]) against data set `dataset_name`.

    Images are clamped to [-1, 1] first, as saving them as pictures would. Returns floats:
      n_generated, n_reference   sample sizes (the reference is the test split)
      accuracy                   the classifier's accuracy on the images against their intended
                                 labels (only when `generated_labels` is not None)
      fd                         Fréchet distance of classifier features to the test split's
      precision, recall, density, coverage   k-NN manifold metrics in the same feature space
      sw                         sliced 2-Wasserstein distance to the test split, in pixel space
      mmd                        unbiased MMD^2 of features, RBF kernel, median bandwidth
      memorised_ratio            fraction with nearest/second-nearest train distance < 1/3
      memorised_normalised       fraction with Carlini et al.'s normalised l2 < 1/3
      nearest_train_l2           median pixel distance to the nearest training image
    `classifier` defaults to load_or_train_classifier(dataset_name) (cached after the first use).
    """
    train, test = _load(dataset_name)
    fake = torch.as_tensor(generated_images).detach().cpu().to(torch.float32)
    if tuple(fake.shape[1:]) != test.shape:
        raise ValueError(f"generated images have shape {tuple(fake.shape[1:])}, "
                         f"{dataset_name} images {test.shape}")
    fake = fake.clamp(-1, 1)
    if generated_labels is not None:
        generated_labels = torch.as_tensor(generated_labels).reshape(-1)
        if len(generated_labels) != len(fake):
            raise ValueError(f"{len(fake)} images but {len(generated_labels)} labels")
    if classifier is None:
        classifier = load_or_train_classifier(dataset_name)
    return _scores(fake, generated_labels, test, train, classifier, fake, k, projections)


def floor(dataset_name: str, classifier: FeatureClassifier | None = None, k: int = 5,
          projections: int = 256, seed: int = FLOOR_SEED, n: int | None = None) -> dict[str, float]:
    """`evaluate`'s metrics for real data: what a generator that samples the data exactly gets.

    The stand-in for generated images is a fixed-seed subsample of the train split as large as
    the test split (or `n`, to match a smaller generated set: sample metrics depend on the sample
    size), scored against the test split (accuracy uses its true labels, and is high
    because the classifier was trained on those images). Memorisation is measured for the test
    split against the train split instead: train images are trivially "copies" of themselves,
    while test images are fresh draws, which is what a generalising generator produces.
    Also returns classifier_test_accuracy, the classifier's accuracy on the test split.
    """
    train, test = _load(dataset_name)
    if classifier is None:
        classifier = load_or_train_classifier(dataset_name)
    n = min(len(train), len(test)) if n is None else n
    if not 0 < n <= len(train):
        raise ValueError(f"n must lie in 1..{len(train)} (the train split), got {n}")
    index = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    stand_in = train.subset(index, f"{train.name}-floor")
    out = _scores(stand_in.data, stand_in.labels, test, train, classifier, test.data, k, projections)
    if test.labels is not None:
        out["classifier_test_accuracy"] = classifier.accuracy(test.data, test.labels)
    return out
