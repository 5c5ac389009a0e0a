"""A folder of image files as a data set that reads each image when it is asked for.

Subdirectories of the root are classes (labelled in sorted name order); a folder without
subdirectories is unlabelled. Nothing is decoded up front: building the set lists the files and,
unless both `size` and `channels` are given, reads each file's header (its mode and size, a few
hundred bytes) to check that the images share one size when no `size` is given and to choose the
channel count. A folder larger than memory streams from disk through the DataLoader.

Per example: the image is decoded, converted to `channels` (1: grey, 3: RGB; by default 3 when
any file's mode is a colour mode, palettes included: telling an RGB file of greys from a colour
one would mean decoding every image first), 16-bit greys scaled by 65535 rather than clipped to
8 bits, palettes expanded through their colours, alpha dropped; then with `size` resized to just
cover it (aspect ratio kept) and cropped to it. Training draws (an example asked for with a seed)
crop at a random place unless `center_crop`, and mirror half the images with `random_flip`; an
example asked for without a seed (test splits, metrics) is cropped at the centre and not flipped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .dataset import Dataset, flips, labels_tensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
MODES = {1: "L", 3: "RGB"}
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _visible(paths) -> list[Path]:
    return sorted(p for p in paths if not p.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    return [p for p in _visible(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]


def list_images(root: Path) -> tuple[list[Path], list[int] | None, list[str] | None]:
    """(files, labels, class names); labels are indices into the sorted subdirectory names."""
    classes = [p for p in _visible(root.iterdir()) if p.is_dir()]
    if not classes:
        return _image_files(root), None, None
    loose = _image_files(root)
    if loose:
        # Silently dropping them, or giving them a class, would both surprise someone.
        raise ValueError(f"{root} has class subdirectories and also loose images, e.g. {loose[0]}")
    files, labels = [], []
    for label, folder in enumerate(classes):
        members = _image_files(folder)
        if not members:
            raise ValueError(f"class folder {folder} has no images ({', '.join(IMAGE_SUFFIXES)})")
        files += members
        labels += [label] * len(members)
    return files, labels, [c.name for c in classes]


def read_header(path: Path) -> tuple[str, tuple[int, int]]:
    """(mode, (width, height)) from the file's header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            return image.mode, image.size
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


def read_image(path: Path) -> Image.Image:
    """The fully decoded image; decoding is what exposes a corrupt file."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


def is_grey_mode(mode: str) -> bool:
    return Image.getmodebase(mode) == "L"


def with_channels(image: Image.Image, channels: int) -> tuple[Image.Image, float]:
    """The image in a mode that resizes exactly, and its full-scale value: 16-bit greys become
    one channel of 32-bit floats 0..65535 (Pillow's 8-bit conversion would clip them to white;
    `example` repeats the channel for RGB), palettes and alpha go through RGBA, whose alpha is
    then dropped, and the rest becomes grey (luma) or RGB."""
    if image.mode in SIXTEEN_BIT:
        return Image.fromarray(np.asarray(image, dtype=np.float32)), 65535.0
    if image.mode in ("P", "PA") or "A" in image.mode:
        image = image.convert("RGBA")
    return image.convert(MODES[channels]), 255.0


def resize_to_cover(image: Image.Image, height: int, width: int) -> Image.Image:
    """Scale so the image just covers height x width (aspect ratio kept)."""
    if image.size == (width, height):
        return image
    scale = max(height / image.height, width / image.width)
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def crop(image: Image.Image, height: int, width: int, generator: torch.Generator | None) -> Image.Image:
    """A height x width window: the centre, or a random place drawn from `generator`."""
    spare_x, spare_y = image.width - width, image.height - height
    if generator is None:
        left, top = spare_x // 2, spare_y // 2
    else:
        left = int(torch.randint(spare_x + 1, (1,), generator=generator))
        top = int(torch.randint(spare_y + 1, (1,), generator=generator))
    return image.crop((left, top, left + width, top + height))


def as_tensor(image: Image.Image, full_scale: float, channels: int) -> torch.Tensor:
    """A picture from `with_channels` as float32 [channels, H, W] in [-1, 1]."""
    pixels = np.asarray(image, dtype=np.float32).reshape(image.height, image.width, -1)
    pixels = np.broadcast_to(pixels, (image.height, image.width, channels))  # a 16-bit grey as RGB
    return (torch.from_numpy(pixels.transpose(2, 0, 1).copy()) * (2.0 / full_scale) - 1.0).clamp(-1, 1)


def read_picture(path: Path, channels: int, height: int, width: int) -> torch.Tensor:
    """One image file as [channels, height, width] in [-1, 1], scaled to cover the size and centre-cropped."""
    image, full_scale = with_channels(read_image(Path(path)), channels)
    return as_tensor(resize_and_crop(image, height, width), full_scale, channels)


def resize_and_crop(image: Image.Image, height: int, width: int) -> Image.Image:
    """Scale so the image just covers height x width, then cut out the centre."""
    return crop(resize_to_cover(image, height, width), height, width, None)


def _target_size(size) -> tuple[int, int]:
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return height, width


class ImageFolder(Dataset):
    """Images under `root` as examples {"x": float32 [C, H, W] in [-1, 1], "label"?} (see the
    module docstring)."""

    modality = "image"

    def __init__(self, root, size=None, center_crop: bool = False, random_flip: bool = False,
                 channels: int | None = None, *, source: dict | None = None):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} does not exist or is not a directory")
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1, 3 or None, got {channels!r}")
        files, labels, class_names = list_images(root)
        if not files:
            raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {root}")
        target = None if size is None else _target_size(size)
        if target is None or channels is None:
            headers = [read_header(p) for p in files]
            if channels is None:
                channels = 1 if all(is_grey_mode(mode) for mode, _ in headers) else 3
            if target is None:
                (width, height) = headers[0][1]
                for path, (_, found) in zip(files, headers):
                    if found != (width, height):
                        raise ValueError(f"{path} is {found[0]}x{found[1]} but {files[0]} is {width}x{height} "
                                         "(width x height); give a size to resize them to one (--size)")
                target = (height, width)
        self.root, self.files = root, files
        self._labels = None if labels is None else labels_tensor(np.array(labels))
        self.class_names = class_names
        self.size, self.center_crop, self.random_flip = size, bool(center_crop), bool(random_flip)
        self.channels, self.target = channels, target
        self.shape = (channels, *target)
        self.name = f"folder:{root.name}"
        self.source = source if source is not None else {"name": f"folder:{root.resolve()}"}

    def __len__(self) -> int:
        return len(self.files)

    @property
    def labels(self) -> torch.Tensor | None:
        return self._labels

    def example(self, index: int, seed: int | None = None) -> dict:
        path = self.files[index]
        image, full_scale = with_channels(read_image(path), self.channels)
        height, width = self.target
        if self.size is None and image.size != (width, height):  # changed since the set was built
            raise ValueError(f"{path} is {image.width}x{image.height}, not {width}x{height} like the rest")
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        image = crop(resize_to_cover(image, height, width), height, width, None if self.center_crop else generator)
        x = as_tensor(image, full_scale, self.channels)
        if self.random_flip and seed is not None and flips(seed):
            x = x.flip(-1)
        out = {"x": x}
        if self._labels is not None:
            out["label"] = self._labels[index]
        return out

    def subset(self, index, name: str) -> "ImageFolder":
        chosen = [int(i) for i in np.asarray(index).ravel()]
        part = object.__new__(ImageFolder)
        part.__dict__.update(self.__dict__)
        part.files = [self.files[i] for i in chosen]
        part._labels = None if self._labels is None else self._labels[torch.tensor(chosen, dtype=torch.long)]
        part.name = name
        return part


def load_image_folder(root, size=None, channels: int | None = None, center_crop: bool = False,
                      random_flip: bool = False) -> ImageFolder:
    """The images under `root` as an `ImageFolder` (see the module docstring)."""
    return ImageFolder(root, size=size, center_crop=center_crop, random_flip=random_flip, channels=channels)
