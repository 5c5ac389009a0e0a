"""Data sets for diffusion training, all loaded offline into one ``Dataset`` type."""

from .bundled import load_digits, load_mnist5k
from .dataset import Dataset, from_unit, to_unit
from .fashion import load_fashion_mnist
from .folder import load_image_folder
from .idx import load_idx
from .registry import available, load_dataset
from .shapes import load_shapes
from .toy import load_toy

__all__ = [
    "Dataset",
    "available",
    "from_unit",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_idx",
    "load_image_folder",
    "load_mnist5k",
    "load_shapes",
    "load_toy",
    "to_unit",
]
