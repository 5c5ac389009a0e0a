"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package (no download at run time)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .dataset import TensorDataset
from .idx import load_idx
from .splits import check_split

PACKAGE = "dataset-fashion-mnist"

# Where the package has put its files; dpkg's own file list is the fallback.
SEARCH_ROOTS = (
    Path("/usr/share/datasets/fashion-mnist"),
    Path("/usr/share/dataset-fashion-mnist"),
    Path("/usr/share/fashion-mnist"),
)

CLASS_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]

# The official files call the test split "t10k".
FILE_PREFIX = {"train": "train", "test": "t10k"}


def split_files(folder: Path, split: str) -> tuple[Path, Path] | None:
    """(images, labels) for a split inside ``folder``, compressed or not, if both exist."""
    prefix = FILE_PREFIX[split]
    found = []
    for stem in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"):
        candidates = [folder / stem, folder / f"{stem}.gz"]
        existing = [p for p in candidates if p.is_file()]
        if not existing:
            return None
        found.append(existing[0])
    return found[0], found[1]


def dpkg_folders() -> list[Path]:
    """Folders listed by ``dpkg -L`` for the package; empty where dpkg or the package is absent."""
    try:
        listing = subprocess.run(
            ["dpkg", "-L", PACKAGE], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return []
    if listing.returncode != 0:
        return []
    files = [Path(line) for line in listing.stdout.splitlines() if "-idx" in line]
    return sorted({f.parent for f in files})


def find_split_files(split: str) -> tuple[Path, Path]:
    """The installed package's (images, labels) files for a split."""
    for folder in (*SEARCH_ROOTS, *dpkg_folders()):
        files = split_files(folder, split)
        if files is not None:
            return files
    searched = ", ".join(str(r) for r in SEARCH_ROOTS)
    raise FileNotFoundError(
        f"Fashion-MNIST {split} files not found (searched {searched} and dpkg -L {PACKAGE}); "
        f"install them with: apt-get install {PACKAGE}"
    )


def load_fashion_mnist(split: str = "train", root: str | Path | None = None) -> TensorDataset:
    """Fashion-MNIST's official split (60000 train / 10000 test) as [N, 1, 28, 28] in [-1, 1].

    ``root`` points at a folder holding the IDX files instead of searching for the package.
    """
    check_split(split)
    images, labels = find_split_files(split) if root is None else _in_root(Path(root), split)
    ds = load_idx(images, labels, class_names=list(CLASS_NAMES))
    return TensorDataset(ds.data, ds.labels, ds.class_names, f"fashion-{split}", modality="image")


def _in_root(root: Path, split: str) -> tuple[Path, Path]:
    files = split_files(root, split)
    if files is None:
        raise FileNotFoundError(f"no Fashion-MNIST {split} IDX files in {root}")
    return files
