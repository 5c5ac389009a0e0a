"""The budgeted training loop that the diffusion, autoencoder and classifier trainers share.

A trainer brings `config` (steps, minutes, log_every, checkpoint_every), `step`, `elapsed`,
`progress`, `saved` ((step, folder) of its newest checkpoint or None) and the methods
`train_step() -> record`, `_log(records)`, `_checkpoint()` and `_stop_for_time(start) -> bool`.
A record is the step's loss, or a dict of named terms with a 'loss'.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import write_text_atomic


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped without writing the bad state."""


def stop_on_non_finite(loss: torch.Tensor, finite: bool, step: int, checkpoints: Path, world: int = 1) -> None:
    """Raise NonFiniteLossError unless `finite` (the loss is finite on every process)."""
    if finite:
        return
    here = float(loss.detach())
    value = f"not finite on at least one of {world} processes (here {here})" if world > 1 else here
    raise NonFiniteLossError(f"the loss is {value} at step {step + 1}; training stopped. The last good "
                             f"checkpoint is kept in {checkpoints}. Try a lower learning rate or check "
                             "the data for NaNs.")


LR_SCHEDULES = ("constant", "cosine", "linear")


def learning_rate(peak: float, step: int, warmup: int, total: int, schedule: str = "constant") -> float:
    """Linear warmup over `warmup` steps to `peak`, then constant or decaying to 0 at step `total`
    (cosine or linear); past `total` a decayed rate stays 0."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; valid: {', '.join(LR_SCHEDULES)}")
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress)


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor,
                   grad_clip: float, lr: float) -> None:
    """Backpropagate, clip the gradient norm (when grad_clip > 0), set the learning rate (times a
    group's "lr_scale", where it has one), step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    optimizer.step()


def seeded(seed: int, *keys: int) -> torch.Generator:
    """A generator for (seed, *keys): distinct, reproducible streams for distinct purposes, steps
    and ranks, so the random state at any step needs no storing."""
    mixed = seed
    for key in keys:
        mixed = (mixed * 1_000_003 + key + 1) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)


@torch.no_grad()
def update_ema(ema: nn.Module, live: nn.Module, step: int, decay: float) -> None:
    """EMA of the weights with warmup, min(decay, (1 + step) / (10 + step)); buffers are copied."""
    decay = min(decay, (1 + step) / (10 + step))
    for averaged, weights in zip(ema.parameters(), live.parameters()):
        averaged.lerp_(weights, 1 - decay)
    for averaged, weights in zip(ema.buffers(), live.buffers()):
        averaged.copy_(weights)


def time_is_up(start: float, minutes: float) -> bool:
    return time.perf_counter() - start > minutes * 60


METRICS = "metrics.jsonl"


def log_window(trainer, window: list) -> None:
    """Append the mean of the window's records to RUN/metrics.jsonl, with step, rate and time."""
    if not window:
        return
    if isinstance(window[0], dict):
        terms = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
    else:
        terms = {"loss": sum(window) / len(window)}
    record = {"step": trainer.step, **terms, "lr": trainer.learning_rate(trainer.step - 1),
              "seconds": round(trainer.elapsed, 2)}
    with open(trainer.out_dir / METRICS, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_metrics(out_dir: Path) -> list[dict]:
    path = Path(out_dir) / METRICS
    return [json.loads(line) for line in open(path)] if path.exists() else []


def drop_metrics_after(out_dir: Path, step: int) -> None:
    """On resume, forget what was logged after the checkpoint being resumed from."""
    path = Path(out_dir) / METRICS
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
        write_text_atomic(path, "".join(line + "\n" for line in kept))


def fit_and_evaluate(trainer) -> Path:
    """Train (run), then measure `trainer.evaluate()` into `trainer.test_metrics` and
    RUN/test_metrics.json; returns the last checkpoint."""
    trainer.out_dir.mkdir(parents=True, exist_ok=True)
    run(trainer)
    trainer.test_metrics = trainer.evaluate()
    write_text_atomic(trainer.out_dir / "test_metrics.json",
                      json.dumps(trainer.test_metrics, indent=2, sort_keys=True) + "\n")
    return trainer.saved[1]


def run(trainer) -> None:
    """Train until the step or time budget is spent, logging and checkpointing on schedule, and
    end on a checkpoint of the last step."""
    config = trainer.config
    bar = None
    if trainer.progress:
        from tqdm.auto import tqdm
        # Redrawn at most once a second on a terminal; into a log file every 30 s, not every step.
        interval = 1.0 if sys.stderr.isatty() else 30.0
        bar = tqdm(total=config.steps, initial=trainer.step, unit="step", dynamic_ncols=True,
                   mininterval=interval, maxinterval=max(interval, 10.0))
    start = time.perf_counter() - trainer.elapsed
    window: list = []
    try:
        while trainer.step < config.steps:
            if config.minutes is not None and trainer._stop_for_time(start):
                break
            window.append(trainer.train_step())
            trainer.elapsed = time.perf_counter() - start
            if bar is not None:
                last = window[-1]
                bar.update(1)
                bar.set_postfix(loss=f"{last['loss'] if isinstance(last, dict) else last:.4f}", refresh=False)
            if trainer.step % config.log_every == 0:
                trainer._log(window)
                window = []
            if trainer.step % config.checkpoint_every == 0:
                trainer._checkpoint()
    finally:
        if bar is not None:
            bar.close()
    if window:
        trainer._log(window)
    if trainer.saved is None or trainer.saved[0] != trainer.step:
        trainer._checkpoint()
