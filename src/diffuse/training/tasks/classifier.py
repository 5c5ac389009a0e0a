"""The noise-aware classifier of classifier guidance, trained as a task.

A :class:`~diffuse.classifier.NoiseAwareClassifier` is fitted on the cross-entropy of the labels
given x_t = alpha(t) x0 + sigma(t) eps: clean training examples noised by the diffusion process at
a drawn time t (Dhariwal & Nichol 2021, section 4). Guidance needs the diffusion model's own
process, which sampling checks against the one stored here. After training: test-split accuracy
at a few fixed noise levels (EVAL_NOISE).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...classifier import NoiseAwareClassifier
from ...configs import check_choices, in_range, option
from ...data import Dataset, spread
from ...models import build_classifier, classifier_config, default_classifier
from ...objectives import TIME_SAMPLINGS, sample_times
from ...process import process_from_config
from ..task import Task, TaskConfig, register
from .diffusion import default_process

# Test accuracy is reported at these noise levels sigma/alpha (the data are about unit scale).
EVAL_NOISE = (0.1, 0.5, 1.0, 2.0, 5.0)


@dataclass
class ClassifierTaskConfig(TaskConfig):
    kind = "classifier"
    network: dict | None = option(None, help='the classifier as JSON, e.g. \'{"kind": "unet_classifier", "channels": '
                                             '64}\'; num_classes and in_channels (dim) come from the data')
    process: dict = option(factory=default_process, help="the Gaussian path whose x_t it reads: the guided model's")
    sigma_data: float | None = option(None, help="its input scaling; default: the data's standard deviation")
    # Guidance asks for grad log p(y | x_t) at every level a sampler visits, and samplers space
    # their steps about evenly in log sigma (Karras' schedule, log-SNR schedules). EDM's
    # log-normal puts 95% of its draws in sigma/alpha in [0.03, 3] and 0.2% above 10, so the
    # high noise levels, where guidance decides which class a sample becomes, would go nearly
    # untrained; uniform t on EDM puts 90% of its draws above sigma = 8, where little is left to
    # classify. Uniform in log-SNR over the process's range gives every decade the same share,
    # and on a VP path it is close to the uniform timesteps of Dhariwal & Nichol.
    time_sampling: str = option("uniform_log_snr", choices=TIME_SAMPLINGS, help="how training draws noise levels")

    def __post_init__(self):
        check_choices(self)
        process_from_config(self.process)
        if self.sigma_data is not None:
            in_range("sigma_data", self.sigma_data, 0, math.inf, low_open=True)
        if self.network is not None and not isinstance(self.network, dict):
            raise ValueError(f"the classifier config must be a JSON object, got {self.network!r}")


def classifier_for_data(network: dict | None, modality: str, shape, num_classes: int) -> dict:
    """The classifier config for data of this modality, shape and class count: the default when
    None, else the given one with num_classes and in_channels (dim) filled in; given values must fit."""
    if network is None:
        return default_classifier(modality, tuple(shape), num_classes)
    network = dict(network)
    network.setdefault("num_classes", num_classes)
    if network["num_classes"] != num_classes:
        raise ValueError(f"the data have {num_classes} classes; the classifier's num_classes is "
                         f"{network['num_classes']} (leave it out to have it filled in)")
    kind, images = network.get("kind"), modality == "image"
    if kind in ("unet_classifier", "mlp_classifier") and (kind == "unet_classifier") != images:
        raise ValueError(f"a {kind} takes {'images' if kind == 'unet_classifier' else 'vectors'}; the data have "
                         f"shape {tuple(shape)} (use {'unet_classifier' if images else 'mlp_classifier'})")
    network.setdefault("in_channels" if kind == "unet_classifier" else "dim", shape[0])
    return network


@register
class ClassifierTask(Task):
    Config = ClassifierTaskConfig
    train_defaults = {"lr": 1e-3, "warmup_steps": 100, "steps": 2000, "lr_schedule": "constant"}

    def __init__(self, config, info, state=None, device=None):
        super().__init__(config, info, state, device)
        if info.num_classes is None:
            raise ValueError(f"a classifier needs a labelled data set; {info.name!r} has no labels")
        self.process = process_from_config(self.config.process)

    def examples(self, data: Dataset) -> Dataset:
        c = self.config
        if c.sigma_data is None:
            c.sigma_data = round(spread(data), 4)
        # every field spelled out, defaults included
        c.network = classifier_config(build_classifier(classifier_for_data(c.network, data.modality, data.shape,
                                                                           self.info.num_classes)))
        return data

    def build(self) -> NoiseAwareClassifier:
        return NoiseAwareClassifier(build_classifier(self.config.network), self.process, self.config.sigma_data,
                                    self.info.shape)

    def loss(self, model, batch: dict, generator: torch.Generator) -> dict:
        x0, labels = batch["x"], batch["label"]
        t = sample_times(self.process, len(x0), self.config.time_sampling, generator).to(x0.device)
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        logits = model(self.process.add_noise(x0, t, eps), t)
        return {"loss": F.cross_entropy(logits.float(), labels),
                "accuracy": (logits.detach().argmax(1) == labels).float().mean()}

    @torch.no_grad()
    def evaluate(self, model: NoiseAwareClassifier, batch_size: int = 500, seed: int = 0) -> dict | None:
        """Test-split accuracy at each noise level sigma/alpha of EVAL_NOISE, with noise from a
        fixed generator, so runs are compared on the same draws."""
        test = self.test_data()
        if test is None:
            return None
        mode = model.training
        model.eval()
        accuracy = {}
        for level in EVAL_NOISE:
            t = float(self.process.t_from_sigma_ratio(torch.tensor(level, dtype=torch.float64))
                      .clamp(0, self.process.t_max))
            generator = torch.Generator().manual_seed(seed)
            right = 0
            for x0, labels in zip(test.data.split(batch_size), test.labels.split(batch_size)):
                eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
                x_t = self.process.add_noise(x0, t, eps).to(self.device)
                right += int((model(x_t, t).argmax(1).cpu() == labels).sum())
            accuracy[str(level)] = round(right / len(test), 4)
        model.train(mode)
        return {"split": "test", "examples": len(test), "accuracy_at_noise": accuracy,
                "chance": round(1 / self.info.num_classes, 4)}

    def report(self, metrics: dict | None) -> list[str]:
        if metrics is None:
            return []
        levels = "  ".join(f"{level}: {value:.3f}" for level, value in metrics["accuracy_at_noise"].items())
        return [f"test accuracy at noise sigma/alpha  {levels}  (chance {metrics['chance']:.3f})",
                "it guides a diffusion model of the same process: diffuse sample MODEL_RUN --labels ... "
                "--classifier CLASSIFIER_RUN"]
