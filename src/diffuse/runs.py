"""Trained runs back from their folders: `load(run)` gives a diffusion run's sampling pipeline,
`load_classifier(run)` a guidance classifier, `restore(run)` any run's task and trained module.

A run folder is read through its newest checkpoint's config.json (checkpoint.read_run): the task
named there rebuilds its module from the stored config and state, and the weights are the EMA's
when the run kept one (`ema=False`: the trained weights). Only safetensors and JSON are read.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from . import checkpoint as ckpt
from .classifier import NoiseAwareClassifier
from .data import DataInfo
from .latent import load_autoencoder
from .pipeline import Pipeline
from .training import RunConfig, Task, task_class

# What to say when a run of one kind is opened as another.
USES = {"autoencoder": "train a diffusion model on its latents with `diffuse train --latent {run}`",
        "classifier": "it guides a diffusion model with `diffuse sample RUN --classifier {run}`"}


# The kinds of run a sampling pipeline is loaded from: a diffusion model, or one steered by a control adapter.
SAMPLED = ("diffusion", "control")


def restore(run, *, ema: bool = True, device="cpu", kind: str | tuple[str, ...] | None = None,
            overrides: dict | None = None) -> tuple[Task, nn.Module, RunConfig, ckpt.StoredRun]:
    """(task, trained module in eval mode, run config, what config.json says) of a run or a
    checkpoint folder (or what read_run already read of one); `kind` the task kind (or kinds) it must be;
    `overrides` task fields to replace first (e.g. a moved autoencoder's path)."""
    stored = run if isinstance(run, ckpt.StoredRun) else ckpt.read_run(run)
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds is not None and stored.kind not in kinds:
        use = USES.get(stored.kind, "").format(run=run)
        raise ckpt.CheckpointError(f"{stored.folder} is a{'n' if stored.kind[:1] in 'aeiou' else ''} {stored.kind} run, "
                                   f"not a {' run or a '.join(kinds)} run{'; ' + use if use else ''}")
    file = stored.folder / "config.json"
    config = RunConfig.from_dict(stored.config, str(file))
    if overrides:
        config = config.replace(task=dataclasses.replace(config.task, **overrides))
    try:
        info = DataInfo.from_dict(stored.data)
    except (KeyError, TypeError) as e:
        raise ckpt.CheckpointError(f"{file}: the data description lacks {e}") from None
    task = task_class(config.task.kind)(config.task, info, stored.state, device)
    module = task.build()
    # the run's averaged weights when it keeps an EMA (a missing file is then an error, not the raw weights)
    weights = stored.folder / ("ema.safetensors" if ema and config.train.ema_decay is not None else "model.safetensors")
    try:
        module.load_state_dict(ckpt.load_tensors(weights))
    except RuntimeError as e:
        raise ckpt.CheckpointError(f"{stored.folder}: weights do not match the stored config: "
                                   f"{str(e).splitlines()[0]}") from None
    return task, module.to(device).eval(), config, stored


def load(run, *, ema: bool = True, device="cpu", autoencoder=None, diffusers_config=None) -> Pipeline:
    """The sampling pipeline of a diffusion run (a run folder or one of its checkpoints), or of a
    local diffusers pipeline folder or single-file checkpoint (`diffuse.from_diffusers`; a single
    file with `diffusers_config`, the folder of its configs).

    A latent model finds its autoencoder where the run recorded it, or at `autoencoder` (a run
    or checkpoint folder) if it moved; it must have the recorded weights' fingerprint."""
    from .interop import from_diffusers, is_pretrained
    if is_pretrained(run):
        return from_diffusers(run, config=diffusers_config, device=device)
    overrides = {"latent": str(autoencoder)} if autoencoder is not None else None
    task, model, config, stored = restore(run, ema=ema, device=device, kind=SAMPLED, overrides=overrides)
    pipeline = task.pipeline(model)
    pipeline.config, pipeline.stored = config, stored
    return pipeline


def load_classifier(run, *, ema: bool = True, device="cpu") -> NoiseAwareClassifier:
    """A classifier run's classifier(x, t) -> logits, in eval mode and without gradients of its own;
    `.process` is the process whose x_t it reads, `.run` the run's config."""
    stored = ckpt.read_run(run)
    if stored.kind != "classifier":
        raise ckpt.CheckpointError(f"{stored.folder} is not a classifier checkpoint but a {stored.kind} run "
                                   "(train one with `diffuse train --task classifier`)")
    _, classifier, config, _ = restore(stored, ema=ema, device=device)
    classifier.run = config
    return classifier.requires_grad_(False)


__all__ = ["load", "load_autoencoder", "load_classifier", "restore"]
