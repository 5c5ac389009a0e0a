"""The public contract between the training engine and what it trains.

The engine (engine.py) owns everything every run shares: the optimiser and its parameter groups,
the learning-rate schedule, clipping, EMA, the step and time budget, per-(seed, step, rank)
randomness, DDP, the DataLoader, checkpoints, resume, the metrics log, the progress bar and the
loss curve. A `Task` brings what differs, through the methods below and nothing else; a new kind of
training (consistency distillation, a policy, molecules) is a new Task in a file of its own,
registered with `@register`, with no change to the engine.

The life of a task:

    task = MyTask(config, info, state, device)   # from its config, the data's DataInfo, and the
                                                 # JSON state of a run (None for a new run)
    examples = task.examples(dataset)            # what the engine batches; a new run's task fills in
                                                 # here what the data decide (task.config, task.state)
    model = task.build()                         # the trainable nn.Module (the engine seeds, places,
                                                 # wraps it in DDP and keeps its EMA)
    loss = task.loss(model, batch, generator)    # each step: a scalar, or a dict of named terms with
                                                 # "loss"; `generator` is this step's (seed, step, rank)
    task.stored(model)                           # JSON written beside each checkpoint's weights
    task.preview(model)                          # {name: write(path)}: pictures at each checkpoint
    task.evaluate(model)                         # after training: test metrics, or None
    task.report(metrics)                         # lines that tell a person what those metrics say

`model` in preview, stored and evaluate is the one loading gives back: the EMA when the run keeps
one, else the trained weights; in `loss` it is the trained model (possibly DDP-wrapped).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Callable, ClassVar

import torch
from torch import nn

from ..configs import to_dict
from ..data import DataInfo, Dataset


@dataclasses.dataclass
class TaskConfig:
    """Base of every task's config; a subclass sets `kind` (stored as "kind" in JSON) and declares
    its fields."""

    kind: ClassVar[str] = ""

    def to_dict(self) -> dict:
        return {"kind": self.kind, **to_dict(self)}


TASKS: dict[str, type["Task"]] = {}


def register(task_cls: type["Task"]) -> type["Task"]:
    """Make a Task known by its config's kind (a class decorator), for config files, the CLI and
    loading runs."""
    kind = task_cls.Config.kind
    if not kind:
        raise ValueError(f"{task_cls.__name__}.Config must set a kind")
    if TASKS.get(kind, task_cls) is not task_cls:
        raise ValueError(f"a task of kind {kind!r} is registered already ({TASKS[kind].__name__})")
    TASKS[kind] = task_cls
    return task_cls


def task_class(kind: str) -> type["Task"]:
    """The registered task of this kind (diffuse.training imports the built-in ones, which register
    themselves)."""
    if kind not in TASKS:
        raise ValueError(f"unknown task {kind!r}; known: {sorted(TASKS)}")
    return TASKS[kind]


class Task:
    """Base class of what the engine trains (see the module docstring)."""

    Config: ClassVar[type[TaskConfig]]
    # TrainConfig values this task trains best with, where a config leaves them out
    train_defaults: ClassVar[dict] = {}

    def __init__(self, config: TaskConfig, info: DataInfo, state: dict | None = None, device=None):
        self.config = copy.deepcopy(config)  # a new run fills in fields; never the caller's copy
        self.info = info
        self.state = {} if state is None else dict(state)
        self.device = torch.device(device or "cpu")
        self.test_data: Callable[[], Dataset] | None = None  # the engine's test split, loaded on demand

    def examples(self, data: Dataset) -> Dataset:
        """The examples the engine batches (by default the data as given)."""
        return data

    def build(self) -> nn.Module:
        raise NotImplementedError

    def parameter_groups(self, model: nn.Module) -> list[dict]:
        """AdamW's parameter groups; a group's "lr_scale" multiplies the learning rate."""
        return [{"params": list(model.parameters())}]

    def loss(self, model: nn.Module, batch: dict, generator: torch.Generator):
        raise NotImplementedError

    def stored(self, model: nn.Module) -> dict:
        """JSON that loading needs beside the config and the weights (a tokenizer, a scale factor)."""
        return self.state

    def preview(self, model: nn.Module) -> dict[str, Callable[[Path], object]]:
        return {}

    def evaluate(self, model: nn.Module) -> dict | None:
        return None

    def report(self, metrics: dict | None) -> list[str]:
        """What the command line prints of `evaluate`'s metrics after training."""
        return [] if metrics is None else [f"test metrics: {json.dumps(metrics, sort_keys=True)}"]
