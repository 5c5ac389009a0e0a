"""Data sets that yield dict examples and declare their modality and shape, all loaded offline."""

from .bundled import load_digits, load_mnist5k
from .dataset import (MODALITIES, DataInfo, Dataset, TensorDataset, WithColumns, collate, from_unit, spread,
                      to_unit)
from .fashion import load_fashion_mnist
from .folder import ImageFolder, load_image_folder
from .idx import load_idx
from .registry import DataConfig, as_data_config, available, load_dataset
from .shapes import load_shapes
from .toy import load_toy

__all__ = [
    "MODALITIES", "DataConfig", "DataInfo", "Dataset", "ImageFolder", "TensorDataset", "WithColumns",
    "as_data_config", "available", "collate", "from_unit", "load_dataset", "load_digits", "load_fashion_mnist",
    "load_idx", "load_image_folder", "load_mnist5k", "load_shapes", "load_toy", "spread", "to_unit",
]
