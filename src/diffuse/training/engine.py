"""The one training loop: every run, whatever its task, is trained by `Engine`.

The engine owns what every run shares (task.py lists what a task brings):
- AdamW over the task's parameter groups, linear warmup then a constant, cosine or linear
  learning rate, gradient clipping, an EMA of the weights with warmup;
- a step budget and a wall-clock budget, whichever ends first, ending on a checkpoint;
- randomness as a function of (seed, step, rank), never of history: each epoch's order of
  examples comes from (seed, epoch), identical on every rank, each example's augmentation from
  (seed, epoch, index), and each step's noise and dropout from (seed, step, rank). So the state
  at step s needs no storing, and a resumed run on CPU continues bit for bit where the
  interrupted one would have been;
- batches as dicts through a torch DataLoader over the task's examples, with workers if asked;
- DDP under torchrun: each rank takes its slice of every global batch (so a run sees the same
  examples at a step whatever the number of processes), gradients are averaged (gloo on CPU,
  NCCL on GPU), and only rank 0 writes;
- the run folder: one writer (folder.py), checkpoints written atomically in safetensors and
  JSON (checkpoint.py), resume with the changes to the config recorded, metrics.jsonl, the
  progress bar, the loss curve and the task's pictures at every checkpoint, kept per step.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import os
import sys
import time
from itertools import count
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from .. import checkpoint as ckpt
from ..data import DataConfig, DataInfo, Dataset, collate, load_dataset
from ..configs import ConfigError, from_dict
from ..files import write_text_atomic
from ..randomness import mixed_seed, seeded
from .config import RunConfig, TrainConfig
from .folder import METRICS, PICTURES, TEST_METRICS, RunFolderError, RunLock, prepare_fresh, sweep_temporaries
from .task import Task, task_class


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped without writing the bad state."""


# Purposes of the random streams (the first key after the seed), so no two ever coincide.
ORDER, STEP, AUGMENT, LOADER = 0, 1, 2, 3


def learning_rate(peak: float, step: int, warmup: int, total: int, schedule: str = "constant") -> float:
    """Linear warmup over `warmup` steps to `peak`, then constant or decaying to 0 at step `total`
    (cosine or linear); past `total` a decayed rate stays 0."""
    from .config import LR_SCHEDULES
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; valid: {', '.join(LR_SCHEDULES)}")
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress)


@torch.no_grad()
def update_ema(ema: nn.Module, live: nn.Module, step: int, decay: float) -> None:
    """EMA of the weights with warmup, min(decay, (1 + step) / (10 + step)); buffers are copied."""
    decay = min(decay, (1 + step) / (10 + step))
    for averaged, weights in zip(ema.parameters(), live.parameters()):
        averaged.lerp_(weights, 1 - decay)
    for averaged, weights in zip(ema.buffers(), live.buffers()):
        averaged.copy_(weights)


class StepBatches(Sampler):
    """The keys of every batch from step `start` on, for one rank: batch s is slice `rank` of the
    global batch s, which is the s-th block of `batch_size` examples of its epoch's order
    (a permutation seeded by (seed, epoch); the incomplete tail of an epoch is dropped). A key is
    (index, augmentation seed). Unlike DistributedSampler it starts at any step without reading
    the batches before it, and the global batch at a step does not depend on the world size."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1, start: int = 0):
        if batch_size > n:
            raise ValueError(f"batch_size {batch_size} exceeds the {n} training examples")
        if batch_size % world:
            raise ValueError(f"batch_size {batch_size} is not divisible by {world} processes")
        self.n, self.batch_size, self.seed, self.rank, self.world, self.start = n, batch_size, seed, rank, world, start
        self.per_epoch = n // batch_size

    def keys(self, step: int) -> list[tuple[int, int]]:
        epoch, within = divmod(step, self.per_epoch)
        order = torch.randperm(self.n, generator=seeded(self.seed, ORDER, epoch))
        per_rank = self.batch_size // self.world
        first = within * self.batch_size + self.rank * per_rank
        return [(i, mixed_seed(self.seed, AUGMENT, epoch, i)) for i in order[first:first + per_rank].tolist()]

    def __iter__(self):
        return (self.keys(step) for step in count(self.start))


def _distributed() -> tuple[int, int, bool]:
    """(rank, world size, whether this call started the process group), initialising the process
    group when launched by torchrun and nobody has yet."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    started = world > 1 and not torch.distributed.is_initialized()
    if started:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world, started


def _all_true(flag: bool, world: int, device) -> bool:
    if world == 1:
        return flag
    value = torch.tensor([0.0 if flag else 1.0], device=device)
    torch.distributed.all_reduce(value)
    return float(value) == 0.0


def read_metrics(out_dir) -> list[dict]:
    """The records of RUN/metrics.jsonl. A damaged last line (a process killed while appending it)
    is left out; a damaged line before others is an error naming the file and the line."""
    path = Path(out_dir) / METRICS
    if not path.exists():
        return []
    lines = path.read_text(errors="replace").splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError("not a record with a step")
        except ValueError as e:
            if number == len(lines):
                break
            raise ckpt.CheckpointError(f"{path}, line {number}, is damaged ({e}): {line[:60]!r}; remove that line "
                                       "(and those after it) to continue the run") from None
        records.append(record)
    return records


@dataclasses.dataclass
class TrainerState:
    """A checkpoint's trainer.json: where the run stands (the optimiser's state is beside it, in
    trainer.safetensors)."""

    step: int
    optimizer: dict
    elapsed_seconds: float = 0.0
    world_size: int = 1
    seed: int = 0


def read_trainer_state(folder: Path) -> TrainerState:
    """A checkpoint's trainer.json, validated field by field."""
    file = folder / "trainer.json"
    try:
        state = from_dict(TrainerState, ckpt.load_json(file), str(file))
    except ConfigError as e:
        raise ckpt.CheckpointError(str(e)) from None
    if state.step < 0:
        raise ckpt.CheckpointError(f"{file}: step must be >= 0, got {state.step}")
    return state


def prepare(config: RunConfig, data: Dataset, state: dict | None = None, device="cpu",
            test_data=None) -> tuple[Task, Dataset, RunConfig]:
    """(the task of `config` fitted to `data`, the examples it trains on, the config with what the
    data decide filled in); `state` is a resumed run's stored task state."""
    task = task_class(config.task.kind)(config.task, data.info(), state, device)
    task.test_data = test_data or (lambda: None)
    examples = task.examples(data)
    return task, examples, config.replace(task=task.config)


def resolve(config: RunConfig, dataset: Dataset | None = None, device="cpu") -> RunConfig:
    """The complete config a new run of `config` trains with (network, sigma_data, ... filled in
    from the data): what `diffuse train --print-config` prints."""
    data = dataset if dataset is not None else load_dataset(config.data, "train")
    return prepare(config, data, None, device)[2]


def changed_fields(old: dict, new: dict, prefix: str = "") -> dict:
    """{dotted field: [old, new]} of what differs between two config dicts."""
    out = {}
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and key != "options":
            out.update(changed_fields(a, b, f"{prefix}{key}."))
        elif a != b:
            out[f"{prefix}{key}"] = [a, b]
    return out


class Engine:
    """Train `config.task` on `config.data` with `config.train` into the run folder `out_dir`.

    resume     continue the run in `out_dir` from its newest checkpoint; `config` None means as
               stored, else its train fields may change (recorded in the run's history) while the
               task, the data and the seed may not
    overwrite  a fresh run may replace a previous run in `out_dir` (without it, that is refused)
    dataset    train on this Dataset instead of loading `config.data` (recorded as given in Python)
    """

    def __init__(self, config: RunConfig | None, out_dir, *, resume: bool = False, overwrite: bool = False,
                 device=None, dataset: Dataset | None = None, test_dataset: Dataset | None = None,
                 progress: bool = True, pictures: bool = True):
        self.out_dir = Path(out_dir)
        self.rank, self.world, self.owns_process_group = _distributed()
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda" and self.world > 1:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        self.progress, self.pictures = progress and self.rank == 0, pictures
        self.lock = RunLock(self.out_dir)
        created = not self.out_dir.exists()
        if self.rank == 0:
            if self.out_dir.exists() and not self.out_dir.is_dir():
                raise RunFolderError(f"--out {self.out_dir} is a file, not a folder")
            self.lock.acquire()
        try:
            self._setup(config, resume, overwrite, dataset, test_dataset)
        except BaseException:
            self.lock.release()
            if created and self.rank == 0 and self.out_dir.is_dir() and not any(self.out_dir.iterdir()):
                self.out_dir.rmdir()  # a run that never started leaves no folder behind
            raise

    def _setup(self, config, resume, overwrite, dataset, test_dataset) -> None:
        stored, folder, self.history = None, None, []
        if resume:
            folder = ckpt.latest_checkpoint(self.out_dir)
            stored = ckpt.read_run(folder)
            self.history = stored.history
            saved = RunConfig.from_dict(stored.config, f"{folder / 'config.json'}")
            config = saved if config is None else config
            self.saved_config = saved
        elif config is None:
            raise ValueError("a new run needs a config")
        elif self.rank == 0:
            prepare_fresh(self.out_dir, overwrite)
        if self.rank == 0:
            sweep_temporaries(self.out_dir)
        if dataset is not None:
            config = config.replace(data=DataConfig("python", options={"description": dataset.name}))
        else:  # recorded with absolute paths, so the run loads its data from any working directory
            config = config.replace(data=config.data.resolved())
        data = dataset if dataset is not None else load_dataset(config.data, "train")
        self.info = data.info()
        self.task, self.examples, self.config = prepare(config, data, stored.state if stored else None, self.device,
                                                        self._test_split(config.data, dataset, test_dataset))
        config = self.config
        if stored is not None:
            trainer_state = read_trainer_state(folder)
            self._check_resumable(saved, config, stored, folder, trainer_state.step)
        train = config.train
        self.sampler = StepBatches(len(self.examples), train.batch_size, train.seed, self.rank, self.world)

        torch.manual_seed(train.seed)  # the same initial weights on every rank
        self.model = self.task.build().to(self.device)
        self.ema = None if train.ema_decay is None else copy.deepcopy(self.model).requires_grad_(False)
        self.optimizer = torch.optim.AdamW(self.task.parameter_groups(self.model), lr=train.lr,
                                           weight_decay=train.weight_decay)
        self.step, self.elapsed = 0, 0.0
        self.saved = None  # (step, folder) of the newest checkpoint on disk
        self.test_metrics = None
        self.records: list[dict] = []  # what metrics.jsonl holds
        if folder is not None:
            self._restore(folder, trainer_state)
        self.train_model = self.model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self._batches = None

    @staticmethod
    def _test_split(data: DataConfig, dataset, test_dataset):
        """The task's test split, loaded when first asked for: the one given, or the data's own; None
        for data given in Python without one."""
        if test_dataset is not None or dataset is not None:
            return lambda: test_dataset

        @functools.cache
        def test_split() -> Dataset:
            return load_dataset(data, "test")
        return test_split

    def _check_resumable(self, saved: RunConfig, config: RunConfig, stored: ckpt.StoredRun, folder: Path,
                         step: int) -> None:
        """A resumed run is the stored run: its task, data and seed stay; other train fields may
        change, and each change is recorded in the run's history."""
        frozen = changed_fields({"task": saved.task.to_dict(), "data": saved.data.to_dict(),
                                 "train.seed": saved.train.seed},
                                {"task": config.task.to_dict(), "data": config.data.to_dict(),
                                 "train.seed": config.train.seed})
        if frozen:
            listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(frozen.items())[:4])
            raise ValueError(f"a resumed run keeps its task, data and seed, but these differ from the run in "
                             f"{self.out_dir}: {listed}. Start a new run (another --out) to change them")
        try:
            trained_on = DataInfo.from_dict(stored.data)
        except ValueError as e:
            raise ckpt.CheckpointError(f"{folder / 'config.json'}: {e}") from None
        if (trained_on.modality, trained_on.shape) != (self.info.modality, self.info.shape):
            raise ValueError(f"the data are now {self.info.modality}s of shape {list(self.info.shape)}; the run was "
                             f"trained on {trained_on.modality}s of shape {list(trained_on.shape)}")
        changes = changed_fields({"train": vars(saved.train)}, {"train": vars(config.train)})
        if changes:
            self.history = [*self.history, {"step": step, "changed": changes}]

    # -- checkpoints -------------------------------------------------------------------------------
    @property
    def averaged(self) -> nn.Module:
        """What loading gives back: the EMA when the run keeps one, else the trained weights."""
        return self.model if self.ema is None else self.ema

    def save(self) -> Path:
        opt_tensors, opt_meta = ckpt.flatten_optimizer(self.optimizer.state_dict())
        meta = {"optimizer": opt_meta, "elapsed_seconds": self.elapsed, "world_size": self.world,
                "seed": self.config.train.seed}
        stored = {"kind": self.config.task.kind, "run": self.config.to_dict(), "data": self.info.to_dict(),
                  "state": self.task.stored(self.averaged), "history": self.history}
        tensors = {"model": self.model.state_dict(), "trainer": opt_tensors}
        if self.ema is not None:
            tensors["ema"] = self.ema.state_dict()
        return ckpt.save_checkpoint(self.out_dir, self.step, stored, tensors, meta,
                                    keep=self.config.train.keep_checkpoints)

    def _restore(self, folder: Path, trainer_state: TrainerState) -> None:
        state = ckpt.load_tensors(folder / "trainer.safetensors")
        try:
            self.model.load_state_dict(ckpt.load_tensors(folder / "model.safetensors"))
            if self.ema is not None:  # a run that starts keeping an EMA on resume starts it from the weights
                kept = self.saved_config.train.ema_decay is not None
                self.ema.load_state_dict(ckpt.load_tensors(folder / "ema.safetensors") if kept
                                         else self.model.state_dict())
            self.optimizer.load_state_dict(ckpt.unflatten_optimizer(state, trainer_state.optimizer))
            self.step, self.elapsed = trainer_state.step, trainer_state.elapsed_seconds
        except (RuntimeError, KeyError, TypeError, ValueError) as e:
            raise ckpt.CheckpointError(f"{folder}: the weights or trainer state do not match the run's config: "
                                       f"{str(e).splitlines()[0]}") from None
        self.saved = (self.step, folder)
        if self.rank == 0:  # forget what was logged after the checkpoint being resumed from
            self.records = [r for r in read_metrics(self.out_dir) if r["step"] <= self.step]
            if (self.out_dir / METRICS).exists():
                write_text_atomic(self.out_dir / METRICS, "".join(json.dumps(r) + "\n" for r in self.records))

    # -- one step ----------------------------------------------------------------------------------
    def learning_rate(self, step: int) -> float:
        t = self.config.train
        return learning_rate(t.lr, step, t.warmup_steps, t.steps, t.lr_schedule)

    def batch_at(self, step: int) -> dict:
        """This rank's batch of step `step`, on the engine's device."""
        return self._to_device(collate(self.examples.__getitems__(self.sampler.keys(step))))

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                for k, v in batch.items()}

    def _next_batch(self) -> dict:
        if self._batches is None or self._batches[0] != self.step:
            self.sampler.start = self.step
            # the loader's own generator (it seeds the workers) keeps it off the global random state,
            # which the step's dropout is seeded into
            loader = DataLoader(self.examples, batch_sampler=self.sampler, collate_fn=collate,
                                num_workers=self.config.train.num_workers, pin_memory=self.device.type == "cuda",
                                generator=seeded(self.config.train.seed, LOADER, self.step))
            self._batches = (self.step, iter(loader))
        batch = next(self._batches[1])
        self._batches = (self.step + 1, self._batches[1])
        return self._to_device(batch)

    def train_step(self):
        """One optimiser step; returns the loss, or the dict of the task's named terms."""
        batch = self._next_batch()
        noise = seeded(self.config.train.seed, STEP, self.step, self.rank)
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=noise)))  # network dropout
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            out = self.task.loss(self.train_model, batch, noise)
        terms = out if isinstance(out, dict) else {"loss": out}
        loss = terms["loss"]
        if not _all_true(bool(torch.isfinite(loss)), self.world, self.device):
            here = float(loss.detach())
            value = f"not finite on at least one of {self.world} processes (here {here})" if self.world > 1 else here
            raise NonFiniteLossError(f"the loss is {value} at step {self.step + 1}; training stopped. The last good "
                                     f"checkpoint is kept in {self.out_dir / ckpt.CHECKPOINTS}. Try a lower learning "
                                     "rate (--resume --lr ...) or check the data for NaNs.")
        train = self.config.train
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if train.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), train.grad_clip)
        rate = self.learning_rate(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = rate * group.get("lr_scale", 1.0)
        self.optimizer.step()
        self.step += 1
        if self.ema is not None:
            update_ema(self.ema, self.model, self.step, train.ema_decay)
        values = {k: float(v.detach()) for k, v in terms.items()}
        return values if isinstance(out, dict) else values["loss"]

    # -- the loop ----------------------------------------------------------------------------------
    def fit(self) -> Path | None:
        """Train until the step or time budget is spent, logging and checkpointing on schedule, and
        end on a checkpoint of the last step; then the task's evaluation into RUN/test_metrics.json.
        Returns the last checkpoint written (rank 0; None on the others)."""
        try:
            if self.rank == 0:
                self.out_dir.mkdir(parents=True, exist_ok=True)
            self._run()
            if self.rank == 0:
                self.test_metrics = self.task.evaluate(self.averaged)
                if self.test_metrics is not None:
                    write_text_atomic(self.out_dir / TEST_METRICS,
                                      json.dumps(self.test_metrics, indent=2, sort_keys=True) + "\n")
            if self.world > 1:
                self._leave_process_group()
        finally:
            self.lock.release()
        return None if self.saved is None or self.rank != 0 else self.saved[1]

    def _run(self) -> None:
        train = self.config.train
        bar = None
        if self.progress:
            from tqdm.auto import tqdm
            # Redrawn at most once a second on a terminal; into a log file every 30 s, not every step.
            interval = 1.0 if sys.stderr.isatty() else 30.0
            bar = tqdm(total=train.steps, initial=self.step, unit="step", dynamic_ncols=True,
                       mininterval=interval, maxinterval=max(interval, 10.0))
        start = time.perf_counter() - self.elapsed
        window: list = []
        try:
            while self.step < train.steps:
                if train.minutes is not None and self._out_of_time(start):
                    break
                window.append(self.train_step())
                self.elapsed = time.perf_counter() - start
                if bar is not None:
                    last = window[-1]
                    bar.update(1)
                    bar.set_postfix(loss=f"{last['loss'] if isinstance(last, dict) else last:.4f}", refresh=False)
                if self.step % train.log_every == 0:
                    self._log(window)
                    window = []
                if self.step % train.checkpoint_every == 0:
                    self._checkpoint()
        finally:
            if bar is not None:
                bar.close()
        if window:
            self._log(window)
        if self.saved is None or self.saved[0] != self.step:
            self._checkpoint()

    def _out_of_time(self, start: float) -> bool:
        over = time.perf_counter() - start > self.config.train.minutes * 60
        # every rank must stop at the same step, or the others wait forever in all-reduce
        return not _all_true(not over, self.world, self.device)

    def _log(self, window: list) -> None:
        """Append the mean of the window's records to RUN/metrics.jsonl, with step, rate and time."""
        if self.rank != 0 or not window:
            return
        terms = {k: sum(w[k] for w in window) / len(window) for k in window[0]} if isinstance(window[0], dict) \
            else {"loss": sum(window) / len(window)}
        record = {"step": self.step, **terms, "lr": self.learning_rate(self.step - 1), "seconds": round(self.elapsed, 2)}
        self.records.append(record)
        write_text_atomic(self.out_dir / METRICS, "".join(json.dumps(r) + "\n" for r in self.records))

    def _checkpoint(self) -> Path | None:
        if self.rank != 0:
            return None
        folder = self.save()
        self.saved = (self.step, folder)
        if self.pictures:
            self.write_pictures()
        return folder

    def write_pictures(self) -> None:
        """The loss curve and the task's pictures beside the checkpoints; each picture also kept per
        checkpoint as RUN/pictures/NAME-step-XXXXXXXX.png."""
        from ..plotting import save_curve
        save_curve([r["step"] for r in self.records], [r["loss"] for r in self.records], self.out_dir / "loss.png")
        pictures = self.task.preview(self.averaged)
        if pictures:
            (self.out_dir / PICTURES).mkdir(exist_ok=True)
        for name, draw in pictures.items():
            draw(self.out_dir / f"{name}.png")
            draw(self.out_dir / PICTURES / f"{name}-step-{self.step:08d}.png")

    def _leave_process_group(self) -> None:
        """Wait for every rank (rank 0 may still be drawing its pictures), let go of the
        DistributedDataParallel wrapper and destroy the process group if this engine started it.
        A gloo group left for interpreter exit to tear down can abort the process."""
        torch.distributed.barrier()
        self.train_model = self.model
        if self.owns_process_group:
            torch.distributed.destroy_process_group()
            self.owns_process_group = False


def train(config: RunConfig, out_dir, **kwargs) -> Engine:
    """Train a run and return its engine (its `model`, `averaged`, `step`, `test_metrics`, ...)."""
    engine = Engine(config, out_dir, **kwargs)
    engine.fit()
    return engine


__all__ = ["Engine", "NonFiniteLossError", "StepBatches", "TrainConfig", "learning_rate", "prepare", "read_metrics",
           "resolve", "train", "update_ema"]
