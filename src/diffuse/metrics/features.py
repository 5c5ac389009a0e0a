"""The feature network of the sample metrics, trained once per data set and cached.

`feature_network(name)` returns the FeatureNetwork (diffuse.models.features) of data set `name`:
loaded from the cache, or trained by the engine (the "features" task) on the train split and
cached. Training is a pure function of (training data, FeatureConfig): a fixed seed initialises
the weights and drives the order of examples and the augmentation, and every op used has a
deterministic implementation, so on one device with a fixed thread count two trainings give
bitwise-identical weights; the caller's global random state is left as it was.

A cache entry is a run folder (checkpoints/, metrics.jsonl) plus meta.json (training time and
accuracy), in CACHE/<data set>-<hash>, where the hash covers the config and the training data's
content, so a changed data set or config never picks up a stale network. CACHE is `cache_dir` if
given, else $DIFFUSE_CACHE/features, else ~/.cache/diffuse/features.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..checkpoint import CheckpointError, load_json, load_tensors, read_run
from ..configs import to_dict
from ..data import DataConfig, Dataset, as_data_config, load_dataset
from ..files import cache_folder, write_text_atomic
from ..models.features import FeatureNetwork, FeatureNetworkConfig
from ..training import Engine, FeatureTaskConfig, RunConfig, TrainConfig

# Bump when the architecture or the training recipe changes: old cache entries stop matching.
VERSION = 2
META_FILE = "meta.json"

# Samples seen in training when `epochs` is left to the default: about 28 epochs of digits'
# 1,437 training images, 10 of the 4,000-image MNIST subset, 2 (the minimum) of Fashion-MNIST.
DEFAULT_SAMPLES_SEEN = 40_000


@dataclass
class FeatureConfig:
    """Everything that determines a trained feature network, as plain JSON values.

    channels, features: the network (FeatureNetworkConfig). epochs, batch_size, lr, weight_decay:
    AdamW with a cosine learning-rate decay to 0 over the epochs. shift: random translations of up
    to `shift` pixels as augmentation. train_size: train on a fixed-seed subset of this many images
    (None: all). seed: initial weights, order, augmentation and the subset.
    """

    channels: int = 32
    features: int = 128
    epochs: int = 20
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    shift: int = 0
    train_size: int | None = None
    seed: int = 0
    version: int = VERSION

    def __post_init__(self):
        for name in ("channels", "features", "epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.shift < 0 or self.lr <= 0 or self.weight_decay < 0:
            raise ValueError("shift and weight_decay must be >= 0 and lr > 0")
        if self.train_size is not None and self.train_size < 1:
            raise ValueError(f"train_size must be positive or None, got {self.train_size}")

    def run_config(self, examples: int) -> RunConfig:
        """The engine's run for `examples` training images: epochs of whole batches."""
        steps = self.epochs * max(1, examples // self.batch_size)
        task = FeatureTaskConfig(network={"channels": self.channels, "features": self.features}, shift=self.shift)
        train = TrainConfig(steps=steps, batch_size=min(self.batch_size, examples), lr=self.lr,
                            weight_decay=self.weight_decay, warmup_steps=0, grad_clip=0.0, ema_decay=None,
                            lr_schedule="cosine", seed=self.seed, checkpoint_every=steps, log_every=steps)
        return RunConfig(task, "python", train)


def subset(data: Dataset, size: int | None, seed: int) -> Dataset:
    if size is None or size >= len(data):
        return data
    index = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:size].sort().values
    return data.subset(index, f"{data.name}-{size}")


def train_feature_network(train: Dataset, config: FeatureConfig, out_dir, test: Dataset | None = None,
                          device="cpu") -> FeatureNetwork:
    """Train a FeatureNetwork on a labelled image data set into the run folder `out_dir`;
    deterministic given (train, config) on a fixed device and thread count, leaving the global
    random state as it was."""
    data = subset(train, config.train_size, config.seed)
    with torch.random.fork_rng(devices=[]):
        engine = Engine(config.run_config(len(data)), out_dir, dataset=data, test_dataset=test, device=device,
                        progress=False, pictures=False)
        engine.fit()
    return engine.model.eval()


def default_cache_dir() -> Path:
    return cache_folder("features")


def default_epochs(n_train: int) -> int:
    return int(min(30, max(2, round(DEFAULT_SAMPLES_SEEN / max(1, n_train)))))


def data_fingerprint(images: torch.Tensor, labels: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in (images, labels):
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def cache_key(dataset_name: str, config: FeatureConfig, fingerprint: str) -> str:
    """<data set>-<16 hex digits>: a readable, filesystem-safe name plus a hash of what was trained."""
    blob = json.dumps({"dataset": dataset_name, "config": to_dict(config), "data": fingerprint}, sort_keys=True)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", dataset_name).strip("._")[:48] or "data"
    return f"{safe}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def load_feature_network(folder, device="cpu") -> FeatureNetwork:
    """A cached (or any) feature-network run, from safetensors and JSON only (pickles refused)."""
    stored = read_run(folder)
    if stored.kind != FeatureTaskConfig.kind:
        raise CheckpointError(f"{stored.folder} is a {stored.kind} run, not a feature network")
    try:
        model = FeatureNetwork(FeatureNetworkConfig(**stored.config["task"]["network"]))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{stored.folder / 'config.json'} is not a feature network's config: {e}") from None
    tensors = load_tensors(stored.folder / "model.safetensors")
    expected = model.state_dict()
    if tensors.keys() != expected.keys() or any(tensors[k].shape != v.shape for k, v in expected.items()):
        raise CheckpointError(f"{stored.folder / 'model.safetensors'} does not match the network its config describes")
    model.load_state_dict(tensors)
    return model.to(device).eval()


def plain_view(data) -> DataConfig:
    """The data as metrics see them: a name, dict or DataConfig with the augmentations of
    training turned off (no flips; image folders cropped at the centre)."""
    spec = as_data_config(data)
    return dataclasses.replace(spec, random_flip=False, center_crop=spec.name.startswith("folder:"))


def feature_network(data, cache_dir=None, device="cpu", log: Callable[[str], None] | None = None,
                    **overrides) -> FeatureNetwork:
    """The feature network for a data set (a name, a dict or a DataConfig, seen through
    `plain_view`): loaded from the cache, or trained and cached.

    Trains on its train split; `overrides` set FeatureConfig fields (epochs defaults to about
    40,000 samples seen, between 2 and 30 epochs). The entry is trained into a temporary folder
    and renamed into place, so a killed run leaves no partial entry, and concurrent runs keep
    whichever finished first.
    """
    spec = plain_view(data)
    dataset_name = spec.name if not spec.options and spec.size is None else json.dumps(spec.to_dict(), sort_keys=True)
    train = load_dataset(spec, "train")
    if train.labels is None or train.num_classes is None or train.modality != "image":
        raise ValueError(f"{dataset_name!r} is not a labelled image data set; a feature network needs both")
    n = len(train) if overrides.get("train_size") is None else min(len(train), overrides["train_size"])
    overrides.setdefault("epochs", default_epochs(n))
    config = FeatureConfig(**overrides)
    fingerprint = data_fingerprint(train.data, train.labels)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = root / cache_key(dataset_name, config, fingerprint)

    if (folder / META_FILE).exists():
        model = load_feature_network(folder, device)
        model.cache_path = folder
        return model

    if log is not None:
        log(f"training the {dataset_name} feature network ({config.epochs} epochs) -> {folder}")
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{folder.name}."))
    try:
        os.chmod(tmp, 0o755)
        try:
            test = load_dataset(spec, "test")
        except (ValueError, FileNotFoundError):  # a source without a test split
            test = None
        start = time.perf_counter()
        model = train_feature_network(train, config, tmp / "run", test if test is not None and test.labels is not None
                                      else None, device)
        meta = {"dataset": dataset_name, "data_sha256": fingerprint, "train_size": n,
                "train_seconds": round(time.perf_counter() - start, 3), "torch": torch.__version__,
                "threads": torch.get_num_threads()}
        if test is not None and test.labels is not None:
            meta["test_accuracy"] = model.accuracy(test.data, test.labels)
        entry = tmp / "entry"
        (tmp / "run").rename(entry)
        write_text_atomic(entry / META_FILE, json.dumps(meta, indent=2, sort_keys=True) + "\n")
        try:
            os.rename(entry, folder)
        except OSError:
            if not (folder / META_FILE).exists():
                raise
            # Another process cached the same network first; its copy is as good as ours.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    model.cache_path = folder
    return model


def cached_meta(model: FeatureNetwork) -> dict:
    """The meta.json (training time, test accuracy, ...) of a feature network from the cache."""
    folder = getattr(model, "cache_path", None)
    if folder is None:
        raise ValueError("this network did not come from feature_network's cache")
    return load_json(Path(folder) / META_FILE)


__all__ = ["FeatureConfig", "FeatureNetwork", "cached_meta", "default_cache_dir", "feature_network",
           "load_feature_network", "train_feature_network"]
