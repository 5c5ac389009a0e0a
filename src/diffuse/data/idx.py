"""Reader for IDX files, the format MNIST and Fashion-MNIST are distributed in.

An IDX file is a 4-byte big-endian magic number (two zero bytes, a dtype code,
the number of dimensions), one big-endian uint32 per dimension, then the values
in C order. Only uint8 (code 0x08) occurs in the image data sets we read.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from .dataset import TensorDataset, labels_tensor, pixels_to_signed

IMAGES_MAGIC = 0x00000803  # uint8, 3 dims: [N, H, W]
LABELS_MAGIC = 0x00000801  # uint8, 1 dim: [N]
GZIP_MAGIC = b"\x1f\x8b"


def read_bytes(path: Path) -> bytes:
    """The file's content, decompressed when it starts with the gzip magic (whatever its name)."""
    raw = path.read_bytes()
    if not raw.startswith(GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path}: corrupt gzip stream ({err})") from err


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """One IDX array, checked against the expected magic and the header's byte count."""
    path = Path(path)
    content = read_bytes(path)
    ndim = magic & 0xFF
    header_size = 4 + 4 * ndim
    if len(content) < 4:
        raise ValueError(f"{path}: {len(content)} bytes is too short for an IDX header")
    (found,) = struct.unpack(">I", content[:4])
    if found != magic:
        raise ValueError(f"{path}: IDX magic 0x{found:08x}, expected 0x{magic:08x} (uint8, {ndim}-d)")
    if len(content) < header_size:
        raise ValueError(f"{path}: truncated header, expected {header_size} bytes, found {len(content)}")
    dims = struct.unpack(f">{ndim}I", content[4:header_size])
    expected = int(np.prod(dims))
    found_bytes = len(content) - header_size
    if found_bytes != expected:
        raise ValueError(
            f"{path}: header says shape {dims} = {expected} bytes of data, found {found_bytes}"
        )
    return np.frombuffer(content, dtype=np.uint8, offset=header_size).reshape(dims)


def load_idx(
    images_path: str | Path,
    labels_path: str | Path | None = None,
    class_names: list[str] | None = None,
) -> TensorDataset:
    """IDX images (and optional labels) as [N, 1, H, W] in [-1, 1].

    Without ``class_names``, labelled sets get the label values as names ("0".."max").
    """
    images = read_idx(images_path, IMAGES_MAGIC)
    data = pixels_to_signed(images[:, None], 255)
    name = f"idx:{Path(images_path).name}"
    if labels_path is None:
        return TensorDataset(data, None, None, name, modality="image")
    labels = read_idx(labels_path, LABELS_MAGIC)
    if len(labels) != len(images):
        raise ValueError(f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path}")
    if class_names is None:
        class_names = [str(c) for c in range(int(labels.max(initial=0)) + 1)]
    elif labels.size and labels.max() >= len(class_names):
        raise ValueError(f"{labels_path}: label {labels.max()} but only {len(class_names)} class names")
    return TensorDataset(data, labels_tensor(labels), class_names, name, modality="image")
