"""A small CNN classifier whose penultimate layer is the feature space for sample metrics.

FID's Inception network was trained on ImageNet photographs; on 8x8 digits or 28x28 MNIST its
features mean little. The usual remedy for small data sets is a classifier trained on the data
set itself: its penultimate activations separate what matters for that data (class identity,
stroke shape) and its accuracy on generated images measures whether a class-conditional model
draws the class it was asked for.

Training is a pure function of (training data, config): a fixed seed initialises the weights
(without touching the global random state) and drives the shuffling and augmentation, the
number of epochs is fixed, and every op used has a deterministic implementation (training runs
under torch.use_deterministic_algorithms(True); on CUDA that also needs the cuBLAS setting
CUBLAS_WORKSPACE_CONFIG=:4096:8). On one device with a fixed thread count two trainings give
bitwise-identical weights.

Trained classifiers are cached as `config.json` + `weights.safetensors` (+ `meta.json`, with
training time and accuracies) in CACHE/<data set>-<hash>, where the hash covers the config and
the training data's content, so a changed data set or config never picks up a stale classifier.
CACHE is `cache_dir` if given, else $DIFFUSE_CACHE/classifiers, else ~/.cache/diffuse/classifiers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import CheckpointError, load_json, load_tensors, save_file, write_text_atomic

# Bump when the architecture or the training recipe changes: old cache entries stop matching.
CLASSIFIER_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE, META_FILE = "config.json", "weights.safetensors", "meta.json"
CACHE_ENV = "DIFFUSE_CACHE"

# Samples seen in training when `epochs` is left to the default: about 28 epochs of digits'
# 1,437 training images, 10 of the 4,000-image MNIST subset, 2 (the minimum) of Fashion-MNIST.
DEFAULT_SAMPLES_SEEN = 40_000


@dataclass
class ClassifierConfig:
    """Everything that determines a trained classifier, as plain JSON values.

    image_shape: (C, H, W) of the inputs; num_classes: output classes.
    channels: width of the first conv stage; later stages and the last conv have twice that.
    features: width of the penultimate layer, the feature space of `features()`.
    epochs, batch_size, lr, weight_decay: AdamW with a cosine learning-rate decay to 0.
    shift: random translations of up to `shift` pixels (border replicated) as augmentation.
    train_size: train on a fixed-seed subset of this many images (None: all).
    seed: initial weights, shuffling, augmentation and the subset.
    """

    image_shape: tuple[int, int, int]
    num_classes: int
    channels: int = 32
    features: int = 128
    epochs: int = 20
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    shift: int = 0
    train_size: int | None = None
    seed: int = 0
    version: int = CLASSIFIER_VERSION

    def __post_init__(self):
        self.image_shape = tuple(int(s) for s in self.image_shape)
        if len(self.image_shape) != 3 or min(self.image_shape) < 1:
            raise ValueError(f"image_shape must be (C, H, W), got {self.image_shape}")
        for name in ("num_classes", "channels", "features", "epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {self.num_classes}")
        if self.shift < 0 or self.lr <= 0 or self.weight_decay < 0:
            raise ValueError("shift and weight_decay must be >= 0 and lr > 0")
        if self.train_size is not None and self.train_size < 1:
            raise ValueError(f"train_size must be positive or None, got {self.train_size}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["image_shape"] = list(self.image_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ClassifierConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown classifier config fields {sorted(unknown)}")
        return cls(**d)


class FeatureClassifier(nn.Module):
    """Conv stages (two 3x3 convs and a 2x2 average pool each) until the image is at most 4
    pixels on a side, one more conv, then a fully connected layer (the features) and the
    class logits. 8x8 -> 4x4 takes one stage, 28x28 -> 14 -> 7 -> 3 three, 32x32 three.

    Average pooling rather than max pooling, no batch norm and no dropout: the outputs of one
    image never depend on the rest of its batch or on train/eval mode, and every op has a
    deterministic backward on CPU and GPU.
    """

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        self.cache_path: Path | None = None   # set by load_or_train_classifier
        c, h, w = config.image_shape
        layers: list[nn.Module] = []
        width = config.channels
        while min(h, w) > 4:
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.SiLU(),
                       nn.Conv2d(width, width, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2)]
            c, h, w = width, h // 2, w // 2
            width = min(2 * width, 2 * config.channels)
        layers += [nn.Conv2d(c, width, 3, padding=1), nn.SiLU(), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.embed = nn.Sequential(nn.Linear(width * h * w, config.features), nn.SiLU())
        self.head = nn.Linear(config.features, config.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits [B, classes] for images [B, C, H, W] in [-1, 1]; differentiable."""
        return self.head(self.embed(self.body(x)))

    # -- batched inference ------------------------------------------------------------------

    def _check(self, x: Tensor) -> Tensor:
        x = torch.as_tensor(x)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.config.image_shape:
            raise ValueError(f"expected images [N, {', '.join(map(str, self.config.image_shape))}], "
                             f"got shape {tuple(x.shape)}")
        return x

    @torch.no_grad()
    def _batched(self, x: Tensor, fn: Callable[[Tensor], Tensor], batch_size: int) -> Tensor:
        x = self._check(x)
        device = next(self.parameters()).device
        out = [fn(x[i:i + batch_size].to(device, torch.float32)).float().cpu()
               for i in range(0, len(x), batch_size)]
        return torch.cat(out) if out else torch.empty(0)

    def features(self, x: Tensor, batch_size: int = 512) -> Tensor:
        """Penultimate activations [N, features] (float32, CPU) of images [N, C, H, W]."""
        return self._batched(x, lambda b: self.embed(self.body(b)), batch_size)

    def logits(self, x: Tensor, batch_size: int = 512) -> Tensor:
        """Class logits [N, classes] (float32, CPU)."""
        return self._batched(x, self, batch_size)

    def predict(self, x: Tensor, batch_size: int = 512) -> Tensor:
        return self.logits(x, batch_size).argmax(1)

    def accuracy(self, x: Tensor, labels: Tensor, batch_size: int = 512) -> float:
        """Fraction of images whose predicted class is `labels`."""
        labels = torch.as_tensor(labels).reshape(-1)
        if len(labels) != len(x):
            raise ValueError(f"{len(x)} images but {len(labels)} labels")
        return float((self.predict(x, batch_size) == labels.cpu()).double().mean())

    # -- persistence ----------------------------------------------------------------------------

    def save(self, folder) -> None:
        """Write config.json and weights.safetensors into `folder` (each replaced atomically)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{WEIGHTS_FILE}.")
        os.close(fd)
        try:
            save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, folder / WEIGHTS_FILE)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        write_text_atomic(folder / CONFIG_FILE, json.dumps(self.config.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, folder, device="cpu") -> FeatureClassifier:
        """Rebuild a saved classifier from safetensors and JSON only (pickles are refused)."""
        folder = Path(folder)
        try:
            config = ClassifierConfig.from_dict(load_json(folder / CONFIG_FILE))
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{folder / CONFIG_FILE} is not a classifier config: {e}") from None
        model = cls(config)
        tensors = load_tensors(folder / WEIGHTS_FILE)
        expected = model.state_dict()
        if tensors.keys() != expected.keys() or any(tensors[k].shape != v.shape for k, v in expected.items()):
            raise CheckpointError(f"{folder / WEIGHTS_FILE} does not match the classifier its config describes")
        model.load_state_dict(tensors)
        return model.to(device).eval()


# -- training -----------------------------------------------------------------------------------------

def _random_shift(x: Tensor, shift: int, generator: torch.Generator) -> Tensor:
    """Translate each image by its own random (dy, dx) in [-shift, shift]^2, border replicated."""
    n, _, h, w = x.shape
    padded = F.pad(x, (shift, shift, shift, shift), mode="replicate")
    offsets = torch.randint(0, 2 * shift + 1, (2, n), generator=generator)
    out = torch.empty_like(x)
    for dy in range(2 * shift + 1):
        for dx in range(2 * shift + 1):
            chosen = (offsets[0] == dy) & (offsets[1] == dx)
            out[chosen] = padded[chosen, :, dy:dy + h, dx:dx + w]
    return out


def _subset_index(n: int, size: int | None, seed: int) -> Tensor:
    if size is None or size >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].sort().values


def train_classifier(images: Tensor, labels: Tensor, config: ClassifierConfig, device="cpu",
                     log: Callable[[str], None] | None = None) -> FeatureClassifier:
    """Train a FeatureClassifier on images [N, C, H, W] in [-1, 1] with int labels [N].

    Deterministic given (images, labels, config) on a fixed device and thread count; the
    global random state is neither used nor changed.
    """
    images = torch.as_tensor(images, dtype=torch.float32)
    labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
    if images.ndim != 4 or tuple(images.shape[1:]) != config.image_shape:
        raise ValueError(f"images must be [N, {', '.join(map(str, config.image_shape))}], "
                         f"got shape {tuple(images.shape)}")
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < config.num_classes:
        raise ValueError(f"labels must lie in 0..{config.num_classes - 1}")
    index = _subset_index(len(images), config.train_size, config.seed)
    images, labels = images[index], labels[index]
    if len(images) == 0:
        raise ValueError("no training images")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = FeatureClassifier(config)
    model.to(device).train()
    generator = torch.Generator().manual_seed(config.seed + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    total = config.epochs * math.ceil(len(images) / config.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    for epoch in range(config.epochs):
        order = torch.randperm(len(images), generator=generator)
        loss_sum = 0.0
        for start in range(0, len(images), config.batch_size):
            idx = order[start:start + config.batch_size]
            x = images[idx]
            if config.shift:
                x = _random_shift(x, config.shift, generator)
            loss = F.cross_entropy(model(x.to(device)), labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            loss_sum += loss.item() * len(idx)
        if log is not None:
            log(f"classifier epoch {epoch + 1}/{config.epochs}: loss {loss_sum / len(images):.4f}")
    return model.eval()


# -- the cache ------------------------------------------------------------------------------------------

def default_cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV)
    return (Path(root) if root else Path.home() / ".cache" / "diffuse") / "classifiers"


def default_epochs(n_train: int) -> int:
    return int(min(30, max(2, round(DEFAULT_SAMPLES_SEEN / max(1, n_train)))))


def data_fingerprint(images: Tensor, labels: Tensor) -> str:
    h = hashlib.sha256()
    for t in (images, labels):
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def cache_key(dataset_name: str, config: ClassifierConfig, fingerprint: str) -> str:
    """<data set>-<16 hex digits>: a readable, filesystem-safe name plus a hash of what was trained."""
    blob = json.dumps({"dataset": dataset_name, "config": config.to_dict(), "data": fingerprint},
                      sort_keys=True)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", dataset_name).strip("._")[:48] or "data"
    return f"{safe}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def load_or_train_classifier(dataset_name: str, cache_dir=None, device="cpu",
                             log: Callable[[str], None] | None = None, **overrides) -> FeatureClassifier:
    """The feature classifier for a data set: loaded from the cache, or trained and cached.

    Trains on `load_dataset(dataset_name, "train")`; `overrides` set ClassifierConfig fields
    (epochs defaults to about 40,000 samples seen, between 2 and 30 epochs). The entry is
    written into a temporary folder and renamed into place, so a killed run leaves no partial
    entry, and concurrent runs keep whichever finished first. Loading reads only JSON and
    safetensors (`diffuse.checkpoint.load_tensors` refuses pickles).
    """
    from ..data import load_dataset

    train = load_dataset(dataset_name, "train")
    if train.labels is None or train.num_classes is None or train.data.ndim != 4:
        raise ValueError(f"{dataset_name!r} is not a labelled image data set; a classifier needs both")
    n = len(train) if overrides.get("train_size") is None else min(len(train), overrides["train_size"])
    overrides.setdefault("epochs", default_epochs(n))
    config = ClassifierConfig(image_shape=train.shape, num_classes=train.num_classes, **overrides)
    fingerprint = data_fingerprint(train.data, train.labels)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = root / cache_key(dataset_name, config, fingerprint)

    if (folder / CONFIG_FILE).exists():
        model = FeatureClassifier.load(folder, device)
        if model.config != config:
            raise CheckpointError(f"{folder} holds a classifier with a different config; delete it")
        model.cache_path = folder
        return model

    if log is not None:
        log(f"training the {dataset_name} feature classifier ({config.epochs} epochs) -> {folder}")
    start = time.perf_counter()
    model = train_classifier(train.data, train.labels, config, device=device, log=log)
    meta = {"dataset": dataset_name, "data_sha256": fingerprint, "train_size": n,
            "train_seconds": round(time.perf_counter() - start, 3),
            "torch": torch.__version__, "threads": torch.get_num_threads()}
    try:
        meta["test_accuracy"] = model.accuracy(*_split(dataset_name, "test"))
    except (ValueError, FileNotFoundError):  # a source without a test split of images and labels
        pass

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{folder.name}."))
    try:
        os.chmod(tmp, 0o755)
        model.save(tmp)
        write_text_atomic(tmp / META_FILE, json.dumps(meta, indent=2, sort_keys=True) + "\n")
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / CONFIG_FILE).exists():
                raise
            # Another process cached the same classifier first; its copy is as good as ours.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    model.cache_path = folder
    return model


def _split(dataset_name: str, split: str) -> tuple[Tensor, Tensor]:
    from ..data import load_dataset

    ds = load_dataset(dataset_name, split)
    if ds.labels is None:
        raise ValueError(f"{dataset_name} {split} has no labels")
    return ds.data, ds.labels


def cached_meta(model: FeatureClassifier) -> dict:
    """The meta.json (training time, test accuracy, ...) of a classifier from the cache."""
    folder = getattr(model, "cache_path", None)
    if folder is None:
        raise ValueError("this classifier did not come from load_or_train_classifier's cache")
    return load_json(Path(folder) / META_FILE)
