"""The control task: a control adapter (models/control.py) fine-tuned on a trained diffusion run.

A new run reads the base run's newest checkpoint (its EMA weights when it keeps one) through the
checkpoint folder alone, and its resolved diffusion config: the process, the parameterisation, the
preconditioning, sigma_data and the denoising loss are the base run's own, so the adapter learns
under the objective the base was trained with. The model is that Denoiser around a
`ControlledUNet` whose base is the frozen base network and whose adapter starts as a copy of the
base's encoder; only the adapter is optimised. The control of each training image is derived from
the image itself after augmentation (`control`, e.g. its shapes' outline: data/outline.py), in the
loss, so a flipped image gets a flipped control. The run keeps the base's weights in its own
checkpoints, so it loads and samples without the base run; its state records where they came from.

After training: the test split's intersection over union of the shapes of samples drawn for the
test images' controls with the controls' shapes, beside the same samples' IoU with the adapter
switched off (control_scale 0: the base model, unguided) and the test images' own (the ceiling).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ... import checkpoint as ckpt
from ...conditions import Condition
from ...configs import ConfigError, check_choices, option, whole_number
from ...data import DataInfo, Dataset
from ...data.outline import CONTROLS, DERIVE, iou
from ...denoiser import Denoiser
from ...pipeline import Pipeline
from ..config import RunConfig
from ..task import Task, TaskConfig, register
from .diffusion import DiffusionTask, build_denoiser

# A control run's model takes the control images, and a scale of the adapter's residuals whose null
# (0) is the base model, so classifier-free guidance against it is guidance away from the base.
CONTROL = (Condition("control", "control", -1.0), Condition("control_scale", "control_scale", 0.0))
# The base runs an adapter can steer: a U-Net on the images themselves, unconditional or by class.
STEERABLE = ("none", "class")


@dataclass
class ControlTaskConfig(TaskConfig):
    kind = "control"
    base: str | None = option(None, help="the diffusion run (or checkpoint folder) whose model the adapter steers")
    control: str = option("outline", choices=CONTROLS,
                          help="the control image, derived from each training image: its shapes' outline")
    hint_channels: list[int] = option(factory=lambda: [16, 32],
                                      help="widths of the hint encoder's convs before its zero-initialised last one")
    grid_size: int = option(32, help="controls (each beside its sample) in each checkpoint's picture")
    eval_n: int = option(200, help="test images whose controls are sampled and scored after training (0: none)")

    def __post_init__(self):
        check_choices(self)
        whole_number("grid_size", self.grid_size, 1)
        whole_number("eval_n", self.eval_n, 0)
        if self.base is not None and (not isinstance(self.base, str) or not self.base):
            raise ValueError(f"base must be the path of a diffusion run, got {self.base!r}")


def read_base(path, info: DataInfo) -> tuple[dict, dict, dict[str, torch.Tensor]]:
    """(the base run's resolved diffusion task config, where its weights came from, the weights)
    of the diffusion run at `path`, checked against the data the adapter trains on."""
    stored = ckpt.read_run(path)
    file = stored.folder / "config.json"
    if stored.kind != "diffusion":
        raise ckpt.CheckpointError(f"{stored.folder} is a {stored.kind} run; a control adapter steers a diffusion run")
    try:
        base = RunConfig.from_dict(stored.config, str(file))
    except ConfigError as e:
        raise ckpt.CheckpointError(str(e)) from None
    task = base.task
    if task.cond not in STEERABLE or task.latent is not None or task.network.get("kind") != "unet":
        raise ValueError(f"{stored.folder}: a control adapter steers a U-Net on images, unconditional or by class; "
                         f"this run's model is a {task.network.get('kind')} network conditioned on {task.cond}"
                         f"{' in latent space' if task.latent else ''}")
    trained_on = DataInfo.from_dict(stored.data)
    if (trained_on.modality, tuple(trained_on.shape)) != (info.modality, tuple(info.shape)):
        raise ValueError(f"the base run was trained on {trained_on.modality}s of shape {list(trained_on.shape)}; "
                         f"these data are {info.modality}s of shape {list(info.shape)}")
    weights = "ema" if base.train.ema_decay is not None else "model"
    where = {"run": str(Path(path).resolve()), "checkpoint": str(stored.folder.resolve()), "weights": weights}
    return task.to_dict(), where, ckpt.load_tensors(stored.folder / f"{weights}.safetensors")


@register
class ControlTask(Task):
    Config = ControlTaskConfig
    # Fine-tuning from the base's own features: a short run at a moderate rate (ControlNet itself
    # trains at 1e-5, for a network a thousand times larger, from a pretrained copy alike).
    train_defaults = {"steps": 1000, "batch_size": 64, "lr": 1e-3, "warmup_steps": 50, "ema_decay": 0.99,
                      "checkpoint_every": 250}

    def __init__(self, config: ControlTaskConfig, info, state=None, device=None):
        super().__init__(config, info, state, device)
        self.derive = DERIVE[self.config.control]
        self.base_weights = None  # the base run's, read by a new run's examples()
        self.diffusion = None if "diffusion" not in self.state else self._diffusion(self.state["diffusion"])
        self.preview_controls = None

    def _diffusion(self, base: dict) -> DiffusionTask:
        """The base's diffusion task with the control network in place of its own: its objective,
        conditions and sampling defaults are the control run's."""
        fields = {k: v for k, v in base.items() if k != "kind"}
        config = RunConfig.from_dict({"task": {"kind": "diffusion", **fields}}).task
        network = {"kind": "control", "base": config.network, "control_channels": self.control_channels,
                   "hint_channels": list(self.config.hint_channels)}
        return DiffusionTask(type(config)(**{**fields, "network": network}), self.info, {}, self.device)

    @property
    def control_channels(self) -> int:
        probe = torch.zeros((1, *self.info.shape))
        return self.derive(probe).shape[1]

    def examples(self, data: Dataset) -> Dataset:
        if self.diffusion is None:  # a new run: the base decides everything but the adapter
            if self.config.base is None:
                raise ValueError("a control run needs its base: the diffusion run whose model it steers (base=RUN)")
            base, where, self.base_weights = read_base(self.config.base, self.info)
            self.state = {"diffusion": base, "base": where}
            self.diffusion = self._diffusion(base)
        first = data.__getitems__(list(range(min(self.config.grid_size, len(data)))))["x"]
        self.preview_controls = self.derive(first)
        return data

    def build(self) -> Denoiser:
        if self.diffusion is None:
            raise RuntimeError("ControlTask.build() before examples(): a new run reads its base there")
        model = build_denoiser(self.diffusion.config)
        if self.base_weights is not None:
            base = {k.removeprefix("net."): v for k, v in self.base_weights.items()}
            model.net.load_base(base)
        return model

    def parameter_groups(self, model: Denoiser) -> list[dict]:
        return [{"params": list(model.net.adapter.parameters())}]

    @functools.cached_property
    def loss_fn(self):
        return self.diffusion.loss_fn

    def loss(self, model, batch: dict, generator: torch.Generator) -> torch.Tensor:
        cond = {**self.diffusion.conditioning(batch, generator), "control": self.derive(batch["x"])}
        return self.loss_fn(model, batch["x"], cond, generator=generator, mask=batch.get("mask"))

    def pipeline(self, model) -> Pipeline:
        pipeline = self.diffusion.pipeline(model)
        pipeline.conditions = (*pipeline.conditions, *CONTROL)
        return pipeline

    def preview(self, model) -> dict[str, Callable]:
        """Each of the first training images' controls beside the sample drawn for it."""
        from ...plotting import save_image_grid
        controls = self.preview_controls
        images = self.pipeline(model).sample(len(controls), cond={"control": controls}, seed=0)
        pairs = torch.stack([controls.expand(-1, images.shape[1], -1, -1), images], dim=1).flatten(0, 1)
        return {"samples": lambda path: save_image_grid(pairs, path, nrow=16)}

    def evaluate(self, model) -> dict | None:
        test = self.test_data() if self.test_data is not None else None
        if test is None or self.config.eval_n == 0:
            return None
        return control_scores(self.pipeline(model), test, self.derive, self.config.eval_n)

    def report(self, metrics: dict | None) -> list[str]:
        if metrics is None:
            return []
        return [f"IoU of the samples' shapes with their controls' on {metrics['n']} test images: "
                f"{metrics['iou']:.3f} controlled, {metrics['iou_unguided']:.3f} unguided (the base model), "
                f"{metrics['iou_real']:.3f} the test images themselves"]


def control_scores(pipeline: Pipeline, test: Dataset, derive, n: int, seed: int = 0, **sampling) -> dict:
    """The IoU of samples drawn for the first n test images' controls with the controls' shapes,
    controlled and unguided (control_scale 0, the base model: the same noise), beside the test images'
    own (the ceiling of the score)."""
    images = test.__getitems__(list(range(min(n, len(test)))))["x"]
    controls = derive(images)
    drawn = {scale: pipeline.sample(len(images), cond={"control": controls, "control_scale": scale}, seed=seed,
                                    **sampling) for scale in (1.0, 0.0)}
    score = {name: float(iou(x, controls).mean()) for name, x in
             (("iou", drawn[1.0]), ("iou_unguided", drawn[0.0]), ("iou_real", images))}
    return {"n": len(images), **{k: round(v, 4) for k, v in score.items()}}


__all__ = ["ControlTask", "ControlTaskConfig", "control_scores"]
