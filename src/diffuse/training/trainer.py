"""The training loop: AdamW with warmup, gradient clipping, EMA, checkpoints, resume and DDP.

Randomness is a function of (seed, step, rank), never of history: each epoch's order of examples
comes from a generator seeded by (seed, epoch), identical on every rank, and each step's times,
noise, label dropout and network dropout from generators seeded by (seed, step, rank). So the
random state at step k needs no storing, and a resumed run on CPU continues bit for bit where
the interrupted one would have been; the checkpoint holds weights, EMA, optimizer and step.

Under `torchrun`, each rank takes its slice of every global batch, gradients are averaged by
DistributedDataParallel (gloo on CPU, NCCL on GPU), and only rank 0 writes.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from torch import nn

from .. import checkpoint as ckpt
from ..data import Dataset, load_dataset
from ..denoiser import Denoiser
from ..models import build_network, text_network
from ..process import process_from_config
from ..text import WordTokenizer
from . import loop
from .autoencoder import KIND as AUTOENCODER_KIND
from .autoencoder import open_autoencoder
from .classifier import KIND as CLASSIFIER_KIND
from .config import TrainConfig, default_network, network_for_shape


# -- building and loading models -------------------------------------------------------------------

def build_model(config: TrainConfig, num_classes: int | None) -> Denoiser:
    """The Denoiser a training config describes (network + process + parameterisation)."""
    network = build_network(config.network)
    if config.cond == "class" and getattr(network.config, "num_classes", None) != num_classes:
        raise ValueError(f"cond='class' needs a network with num_classes={num_classes}")
    return Denoiser(network, process_from_config(config.process), config.prediction,
                    config.preconditioning, config.sigma_data)


def load_model(path, ema: bool = True, device="cpu", autoencoder=None) -> tuple[Denoiser, TrainConfig, dict]:
    """Load a trained model from a run directory or checkpoint folder, for sampling.

    Returns (model in eval mode, its training config, the data description stored with it).
    A latent diffusion model comes with its autoencoder's codec as `model.latent_decoder` (not a
    submodule: the state dict stays the diffusion weights), which `generate` decodes with; it is
    found where the checkpoint recorded it, or at `autoencoder` (a run or checkpoint folder) if
    moved, and must have the recorded weights' fingerprint.
    """
    folder = ckpt.latest_checkpoint(path)
    stored = ckpt.load_json(folder / "config.json")
    if stored.get("kind") == AUTOENCODER_KIND:
        raise ckpt.CheckpointError(f"{folder} is an autoencoder run, not a diffusion model; train one on "
                                   f"its latents with `diffuse train --latent {path}`")
    if stored.get("kind") == CLASSIFIER_KIND:
        raise ckpt.CheckpointError(f"{folder} is a classifier run, not a diffusion model; it guides one "
                                   f"with `diffuse sample RUN --classifier {path}`")
    if not {"train", "data"} <= set(stored):
        raise ckpt.CheckpointError(f"{folder / 'config.json'} is not a training config (needs 'train' and 'data')")
    config = TrainConfig.from_dict(stored["train"])
    model = build_model(config, stored["data"]["num_classes"])
    weights = ckpt.load_tensors(folder / ("ema.safetensors" if ema else "model.safetensors"))
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise ckpt.CheckpointError(f"{folder}: weights do not match the stored config: {e}") from None
    model = model.to(device).eval()
    if config.latent is not None:
        if "latent" not in stored:
            raise ckpt.CheckpointError(f"{folder / 'config.json'} names an autoencoder but has no 'latent' reference")
        model.latent_decoder = open_autoencoder(autoencoder, stored["latent"], device)
    return model, config, stored["data"]


def parameter_groups(model: Denoiser, text_lr_scale: float) -> list[dict]:
    """The optimiser's parameter groups: a text model's encoder apart, at `text_lr_scale` times the
    learning rate (`loop.optimizer_step` applies each group's "lr_scale"). At 0 the encoder is
    frozen at its random initialisation, and left out of the optimiser altogether."""
    text = getattr(model.net, "text", None)
    if text is None or text_lr_scale == 1.0:
        return [{"params": list(model.parameters())}]
    encoder = {id(p) for p in text.parameters()}
    rest = [p for p in model.parameters() if id(p) not in encoder]
    if text_lr_scale == 0:
        text.requires_grad_(False)
        return [{"params": rest}]
    return [{"params": rest}, {"params": list(text.parameters()), "lr_scale": text_lr_scale}]


def with_text(network: dict, text: dict) -> dict:
    """An image network given for a text model, wrapped with the text encoder (a U-Net or DiT
    works as is; a "text" network gets the tokenizer's sizes where it leaves them out)."""
    if network.get("kind") != "text":
        return text_network(network, **text)
    network = {**text, **network}
    if network["vocab_size"] != text["vocab_size"] or network["max_length"] < text["max_length"]:
        raise ValueError(f"the text network has vocab_size {network['vocab_size']} and max_length "
                         f"{network['max_length']}; the captions need {text['vocab_size']} and at least "
                         f"{text['max_length']} (leave them out to have them filled in)")
    return network


# -- distributed helpers ------------------------------------------------------------------------------

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


# -- the trainer -----------------------------------------------------------------------------------

class Trainer:
    def __init__(self, config: TrainConfig, out_dir, *, resume: bool = False, device=None,
                 dataset: Dataset | None = None, progress: bool = True):
        self.out_dir = Path(out_dir)
        self.rank, self.world, self.owns_process_group = _distributed()
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda" and self.world > 1:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        self.progress = progress and self.rank == 0

        config = copy.deepcopy(config)  # sigma_data and network get filled in; not the caller's copy
        folder = None
        reference = None  # the autoencoder a resumed latent run was trained with
        if resume:
            folder = ckpt.latest_checkpoint(self.out_dir)
            raw = ckpt.load_json(folder / "config.json")
            stored = TrainConfig.from_dict(raw["train"])
            reference = raw.get("latent")
            # The run's identity comes from the checkpoint; only the budget may change on resume.
            config = TrainConfig.from_dict({**stored.to_dict(), "steps": config.steps,
                                            "minutes": config.minutes,
                                            "checkpoint_every": config.checkpoint_every})
        self.data = dataset if dataset is not None else load_dataset(config.data, "train")
        # Latent diffusion: from here on the data are the autoencoder's scaled latents, encoded once.
        self.image_shape = self.data.shape
        self.codec = None
        if config.latent is not None:
            self.codec = open_autoencoder(config.latent, reference, self.device)
            self.data = self.codec.encode_dataset(self.data)
        if config.cond == "class" and self.data.labels is None:
            raise ValueError(f"cond='class' needs a labelled data set; {config.data!r} has no labels")
        num_classes = self.data.num_classes if config.cond == "class" else None
        # Text: a tokenizer fitted to the training captions (or the run's own, on resume).
        self.tokenizer = self.tokens = None
        text = None
        if config.cond == "text":
            if self.data.captions is None:
                raise ValueError(f"cond='text' needs a captioned data set (e.g. shapes); {config.data!r} has no captions")
            self.tokenizer = (WordTokenizer.from_dict(raw["data"]["tokenizer"]) if resume
                              else WordTokenizer.fit(self.data.captions))
            self.tokens = self.tokenizer.encode(self.data.captions)
            text = {"vocab_size": len(self.tokenizer), "max_length": self.tokens.shape[1]}
        if config.sigma_data is None:
            config.sigma_data = round(float(self.data.data.std()), 4)
        if config.network is None:
            config.network = default_network(self.data.shape, num_classes, text)
        else:
            if len(self.data.shape) == 3:
                config.network = network_for_shape(config.network, self.data.shape)
            if text is not None:
                config.network = with_text(config.network, text)
        if config.batch_size % self.world:
            raise ValueError(f"batch_size {config.batch_size} is not divisible by {self.world} processes")
        self.config = config
        self.num_classes = num_classes

        torch.manual_seed(config.seed)  # the same initial weights on every rank
        self.model = build_model(config, num_classes).to(self.device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.optimizer = torch.optim.AdamW(parameter_groups(self.model, config.text_lr_scale), lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.loss_fn = config.denoising_loss(self.model.process)
        self.batches_per_epoch = len(self.data) // config.batch_size
        if self.batches_per_epoch < 1:
            raise ValueError(f"batch_size {config.batch_size} exceeds the {len(self.data)} training examples")
        self.step = 0
        self.elapsed = 0.0
        self.saved = None  # (step, folder) of the newest checkpoint on disk
        if folder is not None:
            self._restore(folder)
        self.train_model = self.model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.images = self.data.data.to(self.device)
        self.labels = None if self.data.labels is None else self.data.labels.to(self.device)
        if self.tokens is not None:
            self.tokens = self.tokens.to(self.device)

    # -- checkpointing -----------------------------------------------------------------------------
    def stored_config(self) -> dict:
        stored = {"train": self.config.to_dict(),
                  "data": {"spec": self.config.data, "shape": list(self.image_shape),
                           "num_classes": self.num_classes, "class_names": self.data.class_names,
                           "sigma_data": self.config.sigma_data}}
        if self.tokenizer is not None:
            stored["data"]["tokenizer"] = self.tokenizer.to_dict()
        if self.codec is not None:  # data.shape stays the images' shape: what sampling returns
            stored["data"]["latent_shape"] = list(self.data.shape)
            stored["latent"] = self.codec.reference
        return stored

    def save(self) -> Path:
        opt_tensors, opt_meta = ckpt.flatten_optimizer(self.optimizer.state_dict())
        meta = {"optimizer": opt_meta, "elapsed_seconds": self.elapsed, "world_size": self.world,
                "seed": self.config.seed}
        return ckpt.save_checkpoint(self.out_dir, self.step, self.stored_config(),
                                    {"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                                     "trainer": opt_tensors},
                                    meta, keep=self.config.keep_checkpoints)

    def _restore(self, folder: Path) -> None:
        meta = ckpt.load_json(folder / "trainer.json")
        state = ckpt.load_tensors(folder / "trainer.safetensors")
        self.model.load_state_dict(ckpt.load_tensors(folder / "model.safetensors"))
        self.ema.load_state_dict(ckpt.load_tensors(folder / "ema.safetensors"))
        self.optimizer.load_state_dict(ckpt.unflatten_optimizer(state, meta["optimizer"]))
        self.step = int(meta["step"])
        self.elapsed = float(meta.get("elapsed_seconds", 0.0))
        self.saved = (self.step, folder)
        if self.rank == 0:
            loop.drop_metrics_after(self.out_dir, self.step)

    # -- one step ----------------------------------------------------------------------------------
    def _seeded(self, *keys: int) -> torch.Generator:
        # distinct, reproducible streams for distinct (seed, purpose, step, rank)
        return loop.seeded(self.config.seed, *keys)

    def next_batch(self, noise: torch.Generator) -> tuple[torch.Tensor, dict]:
        """This rank's slice of global batch `self.step` and its condition ({"labels": ...},
        {"tokens": ...} or {}), a fraction label_dropout of it replaced by the null condition
        (the null class, or all-padding tokens); epochs drop their incomplete tail."""
        size = self.config.batch_size
        epoch, index_in_epoch = divmod(self.step, self.batches_per_epoch)
        order = torch.randperm(len(self.data), generator=self._seeded(0, epoch))
        per_rank = size // self.world
        start = index_in_epoch * size + self.rank * per_rank
        index = order[start:start + per_rank].to(self.device)
        cond = {}
        if self.num_classes is not None or self.tokens is not None:
            drop = (torch.rand(len(index), generator=noise) < self.config.label_dropout).to(self.device)
            if self.num_classes is not None:
                labels = self.labels[index]
                cond["labels"] = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
            else:
                cond["tokens"] = self.tokens[index].masked_fill(drop[:, None], WordTokenizer.pad_id)
        return self.images[index], cond

    def learning_rate(self, step: int) -> float:
        c = self.config
        return loop.learning_rate(c.lr, step, c.warmup_steps, c.steps, c.lr_schedule)

    def train_step(self) -> float:
        noise = self._seeded(1, self.step, self.rank)
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=noise)))  # network dropout
        x0, cond = self.next_batch(noise)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            loss = self.loss_fn(self.train_model, x0, cond, generator=noise)
        finite = _all_true(bool(torch.isfinite(loss)), self.world, self.device)
        loop.stop_on_non_finite(loss, finite, self.step, self.out_dir / ckpt.CHECKPOINTS, self.world)
        loop.optimizer_step(self.model, self.optimizer, loss, self.config.grad_clip, self.learning_rate(self.step))
        self.step += 1
        self._update_ema()
        return float(loss.detach())

    def _update_ema(self) -> None:
        loop.update_ema(self.ema, self.model, self.step, self.config.ema_decay)

    # -- the loop ----------------------------------------------------------------------------------
    def fit(self) -> Path | None:
        """Train until the step or time budget is spent; returns the last checkpoint written."""
        if self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        loop.run(self)
        if self.world > 1:
            self._leave_process_group()
        return None if self.saved is None else self.saved[1]

    def _leave_process_group(self) -> None:
        """Wait for every rank (rank 0 may still be drawing its pictures), let go of the
        DistributedDataParallel wrapper and destroy the process group if this trainer started it.
        A gloo group left for interpreter exit to tear down can abort the process."""
        torch.distributed.barrier()
        self.train_model = self.model
        if self.owns_process_group:
            torch.distributed.destroy_process_group()
            self.owns_process_group = False

    def _stop_for_time(self, start: float) -> bool:
        over = loop.time_is_up(start, self.config.minutes)
        # every rank must stop at the same step, or the others wait forever in all-reduce
        return not _all_true(not over, self.world, self.device)

    def _log(self, losses: list[float]) -> None:
        if self.rank == 0:
            loop.log_window(self, losses)

    def _checkpoint(self) -> Path | None:
        if self.rank != 0:
            return None
        folder = self.save()
        self.saved = (self.step, folder)
        self.write_pictures()
        return folder

    def write_pictures(self) -> None:
        """The loss curve and a grid of samples from the EMA model, beside the checkpoints."""
        from ..plotting import save_curve, save_image_grid
        from .sampling import generate
        records = loop.read_metrics(self.out_dir)
        save_curve([r["step"] for r in records], [r["loss"] for r in records], self.out_dir / "loss.png")
        if len(self.data.shape) == 3:
            labels = tokens = None
            if self.num_classes is not None:
                labels = torch.arange(self.config.grid_size) % self.num_classes
            if self.tokens is not None:  # the first training captions
                tokens = self.tokens[torch.arange(self.config.grid_size) % len(self.tokens)].cpu()
            images = generate(self.ema, self.config, self.image_shape, self.config.grid_size, labels=labels,
                              tokens=tokens, seed=0, device=self.device, decoder=self.codec)
            nrow = self.num_classes if self.num_classes else None
            save_image_grid(images, self.out_dir / "samples.png", nrow=nrow)


def train(config: TrainConfig, out_dir, **kwargs) -> Path | None:
    return Trainer(config, out_dir, **kwargs).fit()
