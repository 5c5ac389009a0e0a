"""Sample-quality and memorisation metrics for generated images.

    features.py      the feature network (a small CNN classifier trained per data set, cached):
                     its penultimate layer is the feature space
    distances.py     Fréchet distance, sliced Wasserstein, MMD (float64)
    prdc.py          precision, recall, density, coverage (k-NN balls in feature space)
    memorisation.py  nearest-neighbour copy detection against the training set (pixel space)
    evaluate.py      all of the above for generated images, and the same for real data (`floor`)
    audit.py         the memorisation audit: copies flagged against a threshold calibrated on held-out
                     images, the held-out floor, the training set's near-duplicates
"""

from .features import (FeatureConfig, FeatureNetwork, cached_meta, default_cache_dir, feature_network,
                       load_feature_network, train_feature_network)
from .distances import (frechet_distance, gaussian_frechet_distance, gaussian_statistics, mmd,
                        sliced_wasserstein)
from .evaluate import evaluate, floor
from .memorisation import memorisation
from .prdc import precision_recall_density_coverage

__all__ = [
    "FeatureConfig",
    "FeatureNetwork",
    "cached_meta",
    "default_cache_dir",
    "evaluate",
    "feature_network",
    "floor",
    "frechet_distance",
    "gaussian_frechet_distance",
    "gaussian_statistics",
    "load_feature_network",
    "memorisation",
    "mmd",
    "precision_recall_density_coverage",
    "sliced_wasserstein",
    "train_feature_network",
]
