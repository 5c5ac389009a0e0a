"""A training run's configuration: what to learn, from which data, and how the engine optimises.

    RunConfig
      task   a TaskConfig: {"kind": "diffusion" | "autoencoder" | "classifier" | ..., its fields}
      data   a DataConfig: which examples (name, size, flips, loader options)
      train  a TrainConfig: the options every task shares (budget, optimiser, EMA, bookkeeping)

All three are dataclasses that round-trip through JSON (`RunConfig.to_dict` / `from_dict`), read
back by the validating loader of `diffuse.configs`, so a config file, `--print-config` and a run's
stored config.json are the same document. A task brings the TrainConfig defaults it trains best
with (`Task.train_defaults`); they fill in whatever a config leaves out.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from ..configs import ConfigError, check_choices, check_type, from_dict, in_range, option, to_dict, whole_number
from ..data import DataConfig, as_data_config
from .task import TaskConfig, task_class

LR_SCHEDULES = ("constant", "cosine", "linear")


@dataclass
class TrainConfig:
    """What every training run shares; the engine applies it to whatever the task trains."""

    steps: int = option(4000, help="optimiser steps (the horizon of the learning-rate decay)")
    minutes: float | None = option(None, help="a wall-clock budget; training stops at whichever comes first")
    batch_size: int = option(128, help="the global batch, split evenly over torchrun's processes")
    lr: float = option(2e-3, help="AdamW's peak learning rate")
    lr_schedule: str = option("cosine", choices=LR_SCHEDULES,
                              help="after warmup: constant, or a cosine or linear decay to 0 at --steps")
    warmup_steps: int = option(200, help="linear warmup of the learning rate over these steps")
    weight_decay: float = option(0.0, help="AdamW's decoupled weight decay")
    grad_clip: float = option(1.0, help="clip the gradient norm to this (0: no clipping)")
    ema_decay: float | None = option(0.999, help="EMA of the weights, warmed up as min(decay, (1+s)/(10+s)); "
                                                 "none: keep no EMA")
    seed: int = option(0, help="the seed of everything random: initial weights, data order, noise")
    checkpoint_every: int = option(500, help="steps between checkpoints (and pictures)")
    log_every: int = option(25, help="steps averaged into each line of metrics.jsonl")
    keep_checkpoints: int = option(2, help="how many of the newest checkpoints are kept on disk")
    num_workers: int = option(0, help="DataLoader worker processes (0: read examples in this process)")

    def __post_init__(self):
        for name in ("steps", "batch_size", "checkpoint_every", "log_every", "keep_checkpoints"):
            whole_number(name, getattr(self, name), 1)
        for name in ("warmup_steps", "num_workers", "seed"):
            whole_number(name, getattr(self, name), 0)
        check_choices(self)
        in_range("lr", self.lr, 0, 10, low_open=True)
        in_range("weight_decay", self.weight_decay, 0, 10)
        in_range("grad_clip", self.grad_clip, 0, math.inf)
        if self.ema_decay is not None:
            in_range("ema_decay", self.ema_decay, 0, 1, high_open=True)
        if self.minutes is not None:
            in_range("minutes", self.minutes, 0, math.inf, low_open=True)


@dataclass
class RunConfig:
    task: TaskConfig
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig | None = None

    def __post_init__(self):
        if not isinstance(self.task, TaskConfig):
            raise ValueError(f"task must be a task config (e.g. DiffusionTaskConfig()), got {self.task!r}")
        if not isinstance(self.data, DataConfig):
            self.data = as_data_config(self.data)
        defaults = task_class(self.task.kind).train_defaults
        if self.train is None:
            self.train = TrainConfig(**defaults)
        elif isinstance(self.train, dict):
            self.train = from_dict(TrainConfig, {**defaults, **self.train}, "train")

    def to_dict(self) -> dict:
        return {"task": self.task.to_dict(), "data": self.data.to_dict(), "train": to_dict(self.train)}

    @classmethod
    def from_dict(cls, d, where: str = "config") -> "RunConfig":
        """Rebuild a run config, validating every field; a task's left-out fields take its
        defaults, and a left-out train section the task's train defaults."""
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: a run config must be a JSON object, got {type(d).__name__}")
        unknown = sorted(set(d) - {"task", "data", "train"})
        if unknown:
            raise ConfigError(f"{where}: unknown section(s) {unknown}; a run config has task, data and train")
        task = d.get("task", {"kind": "diffusion"})
        if not isinstance(task, dict) or not isinstance(task.get("kind"), str):
            raise ConfigError(f"{where}: task must be a JSON object with a \"kind\", got {task!r}")
        try:
            task_cls = task_class(task["kind"])
        except ValueError as e:
            raise ConfigError(f"{where}: task.kind: {e}") from None
        fields = {k: v for k, v in task.items() if k != "kind"}
        task_config = from_dict(task_cls.Config, fields, where, "task")
        data = check_type(d.get("data", {}), DataConfig, where, "data")
        train = from_dict(TrainConfig, {**task_cls.train_defaults, **d.get("train", {})}, where, "train") \
            if isinstance(d.get("train", {}), dict) else check_type(d["train"], TrainConfig, where, "train")
        return cls(task_config, data, train)

    def replace(self, **sections) -> "RunConfig":
        return dataclasses.replace(self, **sections)

    def updated(self, **fields) -> "RunConfig":
        """A copy with fields set by name, each in the section that declares it: the task's config,
        then TrainConfig, then DataConfig (`data=` names the data set). The sections check their
        new values together, so fields that only make sense jointly can be set in one call."""
        changes = {"task": {}, "train": {}, "data": {}}
        for name, value in fields.items():
            section = "data" if name == "data" else next(
                (s for s in ("task", "train", "data") if name in {f.name for f in dataclasses.fields(getattr(self, s))}),
                None)
            if section is None:
                raise ValueError(f"no section of the run config has a field {name!r}")
            changes[section]["name" if name == "data" else name] = value
        return RunConfig(*(dataclasses.replace(getattr(self, s), **changes[s]) for s in ("task", "data", "train")))
