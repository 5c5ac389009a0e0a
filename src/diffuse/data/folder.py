"""A folder of image files as a data set; one subdirectory per class, if any."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .dataset import Dataset, labels_tensor, pixels_to_signed

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
MODES = {1: "L", 3: "RGB"}


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


def read_image(path: Path) -> Image.Image:
    """The fully decoded image; decoding now is what exposes a corrupt file."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


def is_colour(image: Image.Image) -> bool:
    if Image.getmodebase(image.mode) == "L":
        return False
    # Palette and RGB images can still hold only greys.
    rgb = np.asarray(image.convert("RGB"))
    return bool((rgb[..., 0] != rgb[..., 1]).any() or (rgb[..., 1] != rgb[..., 2]).any())


def resize_and_crop(image: Image.Image, height: int, width: int) -> Image.Image:
    """Scale so the image just covers height x width, then cut out the centre."""
    if image.size == (width, height):
        return image
    scale = max(height / image.height, width / image.width)
    new_w = max(width, round(image.width * scale))
    new_h = max(height, round(image.height * scale))
    image = image.resize((new_w, new_h), Image.Resampling.LANCZOS)
    left, top = (new_w - width) // 2, (new_h - height) // 2
    return image.crop((left, top, left + width, top + height))


def _target_size(size: int | tuple[int, int]) -> tuple[int, int]:
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return height, width


def _check_same_size(files: list[Path], images: list[Image.Image]) -> None:
    first = images[0].size
    for path, image in zip(files, images):
        if image.size != first:
            raise ValueError(
                f"{path} is {image.width}x{image.height} but {files[0]} is {first[0]}x{first[1]} "
                "(width x height); pass size= to resize them to one size"
            )


def load_image_folder(
    root: str | Path,
    size: int | tuple[int, int] | None = None,
    channels: int | None = None,
) -> Dataset:
    """Images under ``root`` as float32 [N, C, H, W] in [-1, 1].

    Subdirectories of ``root`` are classes (labelled in sorted name order); a
    folder without subdirectories gives an unlabelled set. ``channels`` is 1
    (greyscale) or 3 (RGB), by default 3 if any image has colour. ``size``
    (int or (height, width)) resizes each image to cover it and crops the centre;
    without it all images must already share one size. Alpha is dropped.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a directory")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None, got {channels!r}")
    files, labels, class_names = list_images(root)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {root}")
    images = [read_image(p) for p in files]
    if channels is None:
        channels = 3 if any(is_colour(im) for im in images) else 1
    images = [im.convert(MODES[channels]) for im in images]
    if size is None:
        _check_same_size(files, images)
    else:
        height, width = _target_size(size)
        images = [resize_and_crop(im, height, width) for im in images]
    # PIL gives [H, W] or [H, W, C]; the model wants channels first.
    pixels = np.stack([np.asarray(im).reshape(im.height, im.width, channels) for im in images])
    data = pixels_to_signed(pixels.transpose(0, 3, 1, 2), 255).contiguous()
    label_tensor = None if labels is None else labels_tensor(np.array(labels))
    return Dataset(data, label_tensor, class_names, f"folder:{root.name}")
