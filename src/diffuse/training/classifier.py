"""Training the noise-aware classifier of classifier guidance, and loading it for sampling.

`ClassifierTrainer` fits a :class:`~diffuse.classifier.NoiseAwareClassifier` with AdamW on the
cross-entropy of the labels given x_t = alpha(t) x0 + sigma(t) eps, clean training images noised
by the diffusion process at a drawn time t (Dhariwal & Nichol 2021, section 4). It shares the
budgeted loop of the other trainers and their conventions: randomness is a function of
(seed, step), so a resumed run continues where the interrupted one would have been; atomic,
safetensors-only checkpoints; metrics.jsonl (loss and the batch's accuracy); an optional EMA of
the weights, which is what loading uses. One process; no DDP.

A run directory looks like the others' (checkpoints/, metrics.jsonl, loss.png) and, after
training, `test_metrics.json`: test-split accuracy at a few fixed noise levels. Each checkpoint's
config.json has "kind": "classifier", the training config (network, process, sigma_data) and the
data description. `load_classifier` gives back `classifier(x, t) -> logits` for
:class:`~diffuse.guidance.ClassifierGuidance`; guidance needs the diffusion model's own process,
which `generate` checks against the one stored here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import checkpoint as ckpt
from ..classifier import NoiseAwareClassifier
from ..data import Dataset, load_dataset
from ..models import build_classifier, classifier_config, default_classifier
from ..objectives import TIME_SAMPLINGS, sample_times
from ..process import process_from_config
from . import loop
from .config import JSONConfig, default_process

KIND = "classifier"  # config.json's "kind", so no loader mistakes this run for another kind

# Test accuracy is reported at these noise levels sigma/alpha (the data are about unit scale).
EVAL_NOISE = (0.1, 0.5, 1.0, 2.0, 5.0)


@dataclass
class ClassifierTrainConfig(JSONConfig):
    _what = "classifier training"
    data: str = "digits"                 # a labelled data set spec for diffuse.data.load_dataset
    # {"kind": "unet_classifier" | "mlp_classifier", ...}; None: a default for the data. Left-out
    # num_classes and in_channels (dim for the MLP) are taken from the data.
    classifier: dict | None = None
    # The diffusion process whose x_t the classifier reads; it must be the guided model's. The
    # default is the diffusion trainer's default (EDM).
    process: dict = field(default_factory=default_process)
    sigma_data: float | None = None      # input scaling; None: the standard deviation of the data
    # Guidance asks for grad log p(y | x_t) at every level a sampler visits, and samplers space
    # their steps about evenly in log sigma (Karras' schedule, log-SNR schedules). EDM's
    # log-normal puts 95% of its draws in sigma/alpha in [0.03, 3] and 0.2% above 10, so the
    # high noise levels, where guidance decides which class a sample becomes, would go nearly
    # untrained; uniform t on EDM puts 90% of its draws above sigma = 8, where little is left to
    # classify. Uniform in log-SNR over the process's range gives every decade the same share,
    # and on a VP path it is close to the uniform timesteps of Dhariwal & Nichol.
    time_sampling: str = "uniform_log_snr"
    # optimisation
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_decay: float | None = 0.999      # None: no EMA (loading then uses the trained weights)
    steps: int = 2000
    minutes: float | None = None
    seed: int = 0
    # bookkeeping
    checkpoint_every: int = 500
    log_every: int = 25
    keep_checkpoints: int = 2

    def __post_init__(self):
        if self.time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"unknown time sampling {self.time_sampling!r}; choose one of {TIME_SAMPLINGS}")
        for name in ("batch_size", "steps", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.ema_decay is not None and not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1) or None, got {self.ema_decay}")
        if self.minutes is not None and self.minutes <= 0:
            raise ValueError(f"minutes must be positive, got {self.minutes}")
        if self.sigma_data is not None and not self.sigma_data > 0:
            raise ValueError(f"sigma_data must be positive, got {self.sigma_data}")


def classifier_for_data(network: dict | None, shape, num_classes: int) -> dict:
    """The classifier config for data of this shape and class count: the default when None,
    else the given one with num_classes and in_channels (dim) filled in; given values must fit."""
    if network is None:
        return default_classifier(tuple(shape), num_classes)
    if not isinstance(network, dict):
        raise ValueError(f"the classifier config must be a JSON object, got {network!r}")
    network = dict(network)
    network.setdefault("num_classes", num_classes)
    if network["num_classes"] != num_classes:
        raise ValueError(f"the data have {num_classes} classes; the classifier's num_classes is "
                         f"{network['num_classes']} (leave it out to have it filled in)")
    kind, images = network.get("kind"), len(shape) == 3
    if kind in ("unet_classifier", "mlp_classifier") and (kind == "unet_classifier") != images:
        raise ValueError(f"a {kind} takes {'images' if kind == 'unet_classifier' else 'vectors'}; the data have "
                         f"shape {tuple(shape)} (use {'unet_classifier' if images else 'mlp_classifier'})")
    if kind == "unet_classifier":
        network.setdefault("in_channels", shape[0])
    elif kind == "mlp_classifier":
        network.setdefault("dim", shape[0])
    return network


# -- the trainer -----------------------------------------------------------------------------------

class ClassifierTrainer:
    def __init__(self, config: ClassifierTrainConfig, out_dir, *, resume: bool = False, device=None,
                 dataset: Dataset | None = None, test_dataset: Dataset | None = None, progress: bool = True):
        self.out_dir = Path(out_dir)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.progress = progress
        config = copy.deepcopy(config)  # sigma_data and classifier get filled in; not the caller's copy
        folder = None
        if resume:
            folder = ckpt.latest_checkpoint(self.out_dir)
            stored = ClassifierTrainConfig.from_dict(_classifier_json(folder)["train"])
            # the run's identity comes from the checkpoint; only the budget may change on resume
            config = ClassifierTrainConfig.from_dict({**stored.to_dict(), "steps": config.steps,
                                                      "minutes": config.minutes,
                                                      "checkpoint_every": config.checkpoint_every})
        self.data = dataset if dataset is not None else load_dataset(config.data, "train")
        self.test = test_dataset if test_dataset is not None else load_dataset(config.data, "test")
        if self.data.labels is None:
            raise ValueError(f"a classifier needs a labelled data set; {config.data!r} has no labels")
        if config.sigma_data is None:
            config.sigma_data = round(float(self.data.data.std()), 4)
        config.classifier = classifier_for_data(config.classifier, self.data.shape, self.data.num_classes)
        self.config = config
        self.process = process_from_config(config.process)

        torch.manual_seed(config.seed)
        net = build_classifier(config.classifier)
        config.classifier = classifier_config(net)  # every field spelled out, defaults included
        self.model = NoiseAwareClassifier(net, self.process, config.sigma_data, self.data.shape).to(self.device)
        self.ema = None if config.ema_decay is None else copy.deepcopy(self.model).requires_grad_(False)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.batches_per_epoch = len(self.data) // config.batch_size
        if self.batches_per_epoch < 1:
            raise ValueError(f"batch_size {config.batch_size} exceeds the {len(self.data)} training examples")
        self.step = 0
        self.elapsed = 0.0
        self.saved = None
        if folder is not None:
            self._restore(folder)
        self.images = self.data.data.to(self.device)
        self.labels = self.data.labels.to(self.device)

    # -- randomness, as in the other trainers ----------------------------------------------------
    def _seeded(self, *keys: int) -> torch.Generator:
        return loop.seeded(self.config.seed, *keys)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index_in_epoch = divmod(self.step, self.batches_per_epoch)
        order = torch.randperm(len(self.data), generator=self._seeded(0, epoch))
        size = self.config.batch_size
        index = order[index_in_epoch * size:(index_in_epoch + 1) * size].to(self.device)
        return self.images[index], self.labels[index]

    def learning_rate(self, step: int) -> float:
        return loop.learning_rate(self.config.lr, step, self.config.warmup_steps, self.config.steps)

    # -- one step ----------------------------------------------------------------------------------
    def noised(self, x0: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t, t): x0 noised by the process at times drawn by the configured time sampling."""
        t = sample_times(self.process, len(x0), self.config.time_sampling, generator).to(self.device)
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(self.device)
        return self.process.add_noise(x0, t, eps), t

    def train_step(self) -> dict[str, float]:
        noise = self._seeded(1, self.step)
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=noise)))  # network dropout
        x0, labels = self.next_batch()
        x_t, t = self.noised(x0, noise)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            logits = self.model(x_t, t)
        loss = F.cross_entropy(logits.float(), labels)
        loop.stop_on_non_finite(loss, bool(torch.isfinite(loss)), self.step, self.out_dir / ckpt.CHECKPOINTS)
        loop.optimizer_step(self.model, self.optimizer, loss, self.config.grad_clip, self.learning_rate(self.step))
        self.step += 1
        self._update_ema()
        accuracy = (logits.detach().argmax(1) == labels).float().mean()
        return {"loss": float(loss.detach()), "accuracy": float(accuracy)}

    def _update_ema(self) -> None:
        if self.ema is not None:
            loop.update_ema(self.ema, self.model, self.step, self.config.ema_decay)

    @property
    def classifier(self) -> NoiseAwareClassifier:
        """What loading gives back: the EMA when there is one, else the trained weights."""
        return self.model if self.ema is None else self.ema

    # -- the loop ----------------------------------------------------------------------------------
    def fit(self) -> Path:
        """Train until the step or time budget is spent, then measure test accuracy at the noise
        levels EVAL_NOISE; returns the last checkpoint. The numbers are in `self.test_metrics` and
        `RUN/test_metrics.json`."""
        return loop.fit_and_evaluate(self)

    def _stop_for_time(self, start: float) -> bool:
        return loop.time_is_up(start, self.config.minutes)

    @torch.no_grad()
    def evaluate(self, batch_size: int = 500) -> dict:
        """Test-split accuracy of the loaded classifier (EMA) at each noise level sigma/alpha of
        EVAL_NOISE, with noise from a fixed generator, so runs are compared on the same draws."""
        model = self.classifier
        was_training = model.training
        model.eval()
        accuracy = {}
        for level in EVAL_NOISE:
            t = self.process.t_from_sigma_ratio(torch.tensor(level, dtype=torch.float64))
            t = float(t.clamp(0, self.process.t_max))
            generator = torch.Generator().manual_seed(self.config.seed)
            right = 0
            for i in range(0, len(self.test), batch_size):
                x0 = self.test.data[i:i + batch_size]
                eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
                x_t = self.process.add_noise(x0, t, eps).to(self.device)
                predicted = model(x_t, t).argmax(1).cpu()
                right += int((predicted == self.test.labels[i:i + batch_size]).sum())
            accuracy[str(level)] = round(right / len(self.test), 4)
        model.train(was_training)
        return {"step": self.step, "split": "test", "examples": len(self.test),
                "accuracy_at_noise": accuracy, "chance": round(1 / self.data.num_classes, 4)}

    def _log(self, window: list[dict[str, float]]) -> None:
        loop.log_window(self, window)

    # -- checkpoints -------------------------------------------------------------------------------
    def stored_config(self) -> dict:
        return {"kind": KIND, "train": self.config.to_dict(),
                "data": {"spec": self.config.data, "shape": list(self.data.shape),
                         "num_classes": self.data.num_classes, "class_names": self.data.class_names,
                         "sigma_data": self.config.sigma_data}}

    def _checkpoint(self) -> Path:
        opt_tensors, opt_meta = ckpt.flatten_optimizer(self.optimizer.state_dict())
        meta = {"optimizer": opt_meta, "elapsed_seconds": self.elapsed, "seed": self.config.seed}
        tensors = {"model": self.model.state_dict(), "trainer": opt_tensors}
        if self.ema is not None:
            tensors["ema"] = self.ema.state_dict()
        folder = ckpt.save_checkpoint(self.out_dir, self.step, self.stored_config(), tensors, meta,
                                      keep=self.config.keep_checkpoints)
        self.saved = (self.step, folder)
        self.write_pictures()
        return folder

    def _restore(self, folder: Path) -> None:
        meta = ckpt.load_json(folder / "trainer.json")
        state = ckpt.load_tensors(folder / "trainer.safetensors")
        self.model.load_state_dict(ckpt.load_tensors(folder / "model.safetensors"))
        if self.ema is not None:
            self.ema.load_state_dict(ckpt.load_tensors(folder / "ema.safetensors"))
        self.optimizer.load_state_dict(ckpt.unflatten_optimizer(state, meta["optimizer"]))
        self.step = int(meta["step"])
        self.elapsed = float(meta.get("elapsed_seconds", 0.0))
        self.saved = (self.step, folder)
        loop.drop_metrics_after(self.out_dir, self.step)

    def write_pictures(self) -> None:
        """The loss curve beside the checkpoints."""
        from ..plotting import save_curve
        records = loop.read_metrics(self.out_dir)
        save_curve([r["step"] for r in records], [r["loss"] for r in records], self.out_dir / "loss.png")


def train_classifier(config: ClassifierTrainConfig, out_dir, **kwargs) -> Path:
    return ClassifierTrainer(config, out_dir, **kwargs).fit()


# -- loading ---------------------------------------------------------------------------------------

def _classifier_json(folder: Path) -> dict:
    stored = ckpt.load_json(folder / "config.json")
    if stored.get("kind") != KIND or not {"train", "data"} <= set(stored):
        raise ckpt.CheckpointError(f"{folder} is not a classifier checkpoint "
                                   "(train one with `diffuse train-classifier`)")
    return stored


def load_classifier(path, ema: bool = True, device="cpu") -> tuple[NoiseAwareClassifier, ClassifierTrainConfig, dict]:
    """A classifier run (or checkpoint folder) -> (classifier(x, t) -> logits in eval mode and
    without gradients of its own, its training config (``.process`` is its process's config),
    the data description stored with it). The EMA weights when the run kept them and `ema`."""
    folder = ckpt.latest_checkpoint(path)
    stored = _classifier_json(folder)
    config = ClassifierTrainConfig.from_dict(stored["train"])
    net = build_classifier(config.classifier)
    model = NoiseAwareClassifier(net, process_from_config(config.process), config.sigma_data,
                                 stored["data"]["shape"])
    weights = "ema.safetensors" if ema and config.ema_decay is not None else "model.safetensors"
    try:
        model.load_state_dict(ckpt.load_tensors(folder / weights))
    except RuntimeError as e:
        raise ckpt.CheckpointError(f"{folder}: weights do not match the stored config: {e}") from None
    return model.to(device).eval().requires_grad_(False), config, stored["data"]
