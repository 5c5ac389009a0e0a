"""The budgeted training loop that the diffusion and autoencoder trainers share.

A trainer brings `config` (steps, minutes, log_every, checkpoint_every), `step`, `elapsed`,
`progress`, `saved` ((step, folder) of its newest checkpoint or None) and the methods
`train_step() -> record`, `_log(records)`, `_checkpoint()` and `_stop_for_time(start) -> bool`.
A record is the step's loss, or a dict of named terms with a 'loss'.
"""

from __future__ import annotations

import time


def run(trainer) -> None:
    """Train until the step or time budget is spent, logging and checkpointing on schedule, and
    end on a checkpoint of the last step."""
    config = trainer.config
    bar = None
    if trainer.progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=config.steps, initial=trainer.step, unit="step", dynamic_ncols=True)
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
                bar.set_postfix(loss=f"{last['loss'] if isinstance(last, dict) else last:.4f}")
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
