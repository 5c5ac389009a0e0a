"""Sample-quality and memorisation metrics for generated images.

    classifier.py    a small CNN trained per data set; its penultimate layer is the feature space
    distances.py     Fréchet distance, sliced Wasserstein, MMD (float64)
    prdc.py          precision, recall, density, coverage (k-NN balls in feature space)
    memorisation.py  nearest-neighbour copy detection against the training set (pixel space)
    evaluate.py      all of the above for generated images, and the same for real data (`floor`)
"""

from .classifier import (ClassifierConfig, FeatureClassifier, cached_meta, default_cache_dir,
                         load_or_train_classifier, train_classifier)
from .distances import (frechet_distance, gaussian_frechet_distance, gaussian_statistics, mmd,
                        sliced_wasserstein)
from .evaluate import evaluate, floor
from .memorisation import memorisation
from .prdc import precision_recall_density_coverage

__all__ = [
    "ClassifierConfig",
    "FeatureClassifier",
    "cached_meta",
    "default_cache_dir",
    "evaluate",
    "floor",
    "frechet_distance",
    "gaussian_frechet_distance",
    "gaussian_statistics",
    "load_or_train_classifier",
    "memorisation",
    "mmd",
    "precision_recall_density_coverage",
    "sliced_wasserstein",
    "train_classifier",
]
