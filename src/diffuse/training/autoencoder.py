"""Training the autoencoder of latent diffusion, and the codec that moves data in and out of latents.

`AutoencoderTrainer` fits an :class:`~diffuse.models.AutoencoderKL` with AdamW on a per-pixel
reconstruction error (L1 or L2) plus ``kl_weight`` times the KL of the posterior to N(0, I)
(Rombach et al. 2022, appendix G: no perceptual or adversarial terms here). Both terms are
divided by the number of pixels, so the balance is that of summing both over an image, the
convention in which a weight of 1e-6 is usually quoted, while the loss stays near unit scale.
Randomness is a function of (seed, step) as in the diffusion trainer, so a resumed run
continues where the interrupted one would have been. One process; no DDP.

A run directory looks like a diffusion run's (checkpoints/, metrics.jsonl, loss.png), with
`reconstructions.png` (rows of test images above their reconstructions) and, after training,
`test_metrics.json` (reconstruction PSNR on the test split). Each checkpoint's config.json holds
the autoencoder config, the training config, the data description and the latent scale
factor: 1 / the standard deviation of the encoder's posterior means over (up to
``scale_examples`` of) the training data (Rombach et al. 2022, section 4.3.2 and appendix G),
recomputed from the weights at every checkpoint so that each one is usable on its own.

`LatentCodec` is what a latent diffusion run uses: it encodes images to posterior means times
the scale factor (the mean, not a posterior sample: deterministic, independent of any seed, and
with the small KL weight the posterior's spread is tiny next to the spread of the means), and
decodes latents by dividing by the scale factor and decoding. A diffusion run refers to its
autoencoder by path plus a fingerprint of the weights file, so a missing or changed
autoencoder is a clear error instead of silently wrong images.
"""

from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import checkpoint as ckpt
from ..data import Dataset, load_dataset, to_unit
from . import loop
from .config import JSONConfig
from ..models.autoencoder import AutoencoderConfig, AutoencoderKL, autoencoder_config, build_autoencoder

KIND = "autoencoder"  # config.json's "kind", so neither kind of run is mistaken for the other


@dataclass
class AutoencoderTrainConfig(JSONConfig):
    _what = "autoencoder training"
    data: str = "digits"                 # a spec for diffuse.data.load_dataset (images)
    # AutoencoderConfig fields; None: factor 2 (mults (1, 2)) and 4 latent channels.
    # in_channels is taken from the data when left out.
    autoencoder: dict | None = None
    loss: str = "l1"                     # "l1" | "l2" reconstruction error
    kl_weight: float = 1e-6
    # optimisation
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    grad_clip: float = 1.0
    steps: int = 2000
    minutes: float | None = None
    seed: int = 0
    # bookkeeping
    checkpoint_every: int = 500
    log_every: int = 25
    keep_checkpoints: int = 2
    grid_size: int = 32                  # test images in reconstructions.png
    scale_examples: int | None = 10_000  # training images for the scale factor; None: all

    def __post_init__(self):
        if self.loss not in ("l1", "l2"):
            raise ValueError(f"loss must be 'l1' or 'l2', got {self.loss!r}")
        if not self.kl_weight >= 0:
            raise ValueError(f"kl_weight must be non-negative, got {self.kl_weight}")
        for name in ("batch_size", "steps", "checkpoint_every", "log_every", "grid_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.minutes is not None and self.minutes <= 0:
            raise ValueError(f"minutes must be positive, got {self.minutes}")
        if self.scale_examples is not None and self.scale_examples < 1:
            raise ValueError(f"scale_examples must be positive or None, got {self.scale_examples}")



def psnr(images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB [N] of [-1, 1] images, measured in [0, 1] (reconstructions clamped)."""
    mse = (to_unit(reconstructions.float()) - to_unit(images.float())).pow(2).flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp_min(1e-10))  # a perfect copy reads 100 dB, not infinity


@torch.no_grad()
def posterior_means(model: AutoencoderKL, images: torch.Tensor, device, batch_size: int = 500) -> torch.Tensor:
    out = [model.encode(images[i:i + batch_size].to(device))[0].float().cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out)


@torch.no_grad()
def latent_scale(model: AutoencoderKL, images: torch.Tensor, device) -> float:
    """1 / std of the posterior means over `images`, all latent elements pooled."""
    means = posterior_means(model, images, device).double()
    std = float(means.std(unbiased=False))
    if not math.isfinite(std) or std <= 0:
        raise ValueError(f"the encoder's latent means have standard deviation {std}; no scale factor")
    return 1.0 / std


def fingerprint(folder) -> str:
    """A content hash of a checkpoint's weights file."""
    digest = hashlib.sha256()
    path = Path(folder) / "model.safetensors"
    if not path.is_file():
        raise ckpt.CheckpointError(f"missing checkpoint file {path}")
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


# -- the trainer -----------------------------------------------------------------------------------

class AutoencoderTrainer:
    def __init__(self, config: AutoencoderTrainConfig, out_dir, *, resume: bool = False, device=None,
                 dataset: Dataset | None = None, test_dataset: Dataset | None = None, progress: bool = True):
        self.out_dir = Path(out_dir)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.progress = progress
        config = copy.deepcopy(config)
        folder = None
        if resume:
            folder = ckpt.latest_checkpoint(self.out_dir)
            stored = AutoencoderTrainConfig.from_dict(_autoencoder_json(folder)["train"])
            # the run's identity comes from the checkpoint; only the budget may change on resume
            config = AutoencoderTrainConfig.from_dict({**stored.to_dict(), "steps": config.steps,
                                                       "minutes": config.minutes,
                                                       "checkpoint_every": config.checkpoint_every})
        self.data = dataset if dataset is not None else load_dataset(config.data, "train")
        self.test = test_dataset if test_dataset is not None else load_dataset(config.data, "test")
        if len(self.data.shape) != 3:
            raise ValueError(f"an autoencoder takes images; {config.data!r} holds vectors of shape {self.data.shape}")
        config.autoencoder = AutoencoderConfig.from_dict(
            {"in_channels": self.data.shape[0], **(config.autoencoder or {})}).to_dict()
        self.config = config

        torch.manual_seed(config.seed)
        self.model = build_autoencoder(config.autoencoder).to(self.device)
        self.latent_shape = self.model.latent_shape(self.data.shape)  # raises if f does not divide
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.batches_per_epoch = len(self.data) // config.batch_size
        if self.batches_per_epoch < 1:
            raise ValueError(f"batch_size {config.batch_size} exceeds the {len(self.data)} training examples")
        self.step = 0
        self.elapsed = 0.0
        self.saved = None
        self.scale_factor = None
        if folder is not None:
            self._restore(folder)
        self.images = self.data.data.to(self.device)

    # -- randomness, as in the diffusion trainer ---------------------------------------------------
    def _seeded(self, *keys: int) -> torch.Generator:
        return loop.seeded(self.config.seed, *keys)

    def next_batch(self) -> torch.Tensor:
        epoch, index_in_epoch = divmod(self.step, self.batches_per_epoch)
        order = torch.randperm(len(self.data), generator=self._seeded(0, epoch))
        size = self.config.batch_size
        return self.images[order[index_in_epoch * size:(index_in_epoch + 1) * size].to(self.device)]

    def learning_rate(self, step: int) -> float:
        return loop.learning_rate(self.config.lr, step, self.config.warmup_steps, self.config.steps)

    # -- one step ----------------------------------------------------------------------------------
    def losses(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        recon, mean, logvar = self.model(x, generator=generator)
        error = (recon - x).abs() if self.config.loss == "l1" else (recon - x).pow(2)
        pixels = x[0].numel()
        reconstruction = error.flatten(1).mean(1).mean()
        kl = self.model.kl(mean, logvar).mean() / pixels
        return {"loss": reconstruction + self.config.kl_weight * kl, "reconstruction": reconstruction,
                "kl": kl * pixels}

    def train_step(self) -> dict[str, float]:
        x = self.next_batch()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            terms = self.losses(x, generator=self._seeded(1, self.step))
        loss = terms["loss"]
        loop.stop_on_non_finite(loss, bool(torch.isfinite(loss)), self.step, self.out_dir / ckpt.CHECKPOINTS)
        loop.optimizer_step(self.model, self.optimizer, loss, self.config.grad_clip, self.learning_rate(self.step))
        self.step += 1
        return {k: float(v.detach()) for k, v in terms.items()}

    # -- the loop ----------------------------------------------------------------------------------
    def fit(self) -> Path:
        """Train until the step or time budget is spent, then measure test PSNR; returns the last
        checkpoint. The PSNR is in `self.test_metrics` and `RUN/test_metrics.json`."""
        return loop.fit_and_evaluate(self)

    def _stop_for_time(self, start: float) -> bool:
        return loop.time_is_up(start, self.config.minutes)

    @torch.no_grad()
    def evaluate(self, batch_size: int = 500) -> dict:
        """Reconstruction quality on the test split: the posterior mean decoded, in [0, 1]."""
        self.model.eval()
        values = []
        for i in range(0, len(self.test), batch_size):
            x = self.test.data[i:i + batch_size].to(self.device)
            values.append(psnr(x, self.model.decode(self.model.encode(x)[0])).cpu())
        self.model.train()
        values = torch.cat(values).double()
        spread = float(values.std()) if len(values) > 1 else 0.0
        # psnr: the mean over test images of each image's PSNR
        return {"step": self.step, "split": "test", "examples": len(values),
                "psnr": round(float(values.mean()), 4), "psnr_std": round(spread, 4)}

    def _log(self, window: list[dict[str, float]]) -> None:
        loop.log_window(self, window)

    # -- checkpoints -------------------------------------------------------------------------------
    def scale_images(self) -> torch.Tensor:
        """The fixed subset of training images the scale factor is measured on."""
        n = self.config.scale_examples
        if n is None or n >= len(self.data):
            return self.data.data
        order = torch.randperm(len(self.data), generator=self._seeded(2))
        return self.data.data[order[:n].sort().values]

    def stored_config(self) -> dict:
        return {"kind": KIND, "autoencoder": self.config.autoencoder, "train": self.config.to_dict(),
                "data": {"spec": self.config.data, "shape": list(self.data.shape),
                         "num_classes": self.data.num_classes, "class_names": self.data.class_names},
                "latent": {"shape": list(self.latent_shape), "scale_factor": self.scale_factor,
                           "scale_examples": len(self.scale_images()), "posterior": "mean"}}

    def _checkpoint(self) -> Path:
        self.model.eval()
        self.scale_factor = latent_scale(self.model, self.scale_images(), self.device)
        self.model.train()
        opt_tensors, opt_meta = ckpt.flatten_optimizer(self.optimizer.state_dict())
        meta = {"optimizer": opt_meta, "elapsed_seconds": self.elapsed, "seed": self.config.seed}
        folder = ckpt.save_checkpoint(self.out_dir, self.step, self.stored_config(),
                                      {"model": self.model.state_dict(), "trainer": opt_tensors},
                                      meta, keep=self.config.keep_checkpoints)
        self.saved = (self.step, folder)
        self.write_pictures()
        return folder

    def _restore(self, folder: Path) -> None:
        meta = ckpt.load_json(folder / "trainer.json")
        state = ckpt.load_tensors(folder / "trainer.safetensors")
        self.model.load_state_dict(ckpt.load_tensors(folder / "model.safetensors"))
        self.optimizer.load_state_dict(ckpt.unflatten_optimizer(state, meta["optimizer"]))
        self.step = int(meta["step"])
        self.elapsed = float(meta.get("elapsed_seconds", 0.0))
        self.saved = (self.step, folder)
        self.scale_factor = _autoencoder_json(folder)["latent"]["scale_factor"]
        loop.drop_metrics_after(self.out_dir, self.step)

    @torch.no_grad()
    def write_pictures(self) -> None:
        """The loss curve, and test images (odd rows) above their reconstructions (even rows)."""
        from ..plotting import save_curve, save_image_grid
        records = loop.read_metrics(self.out_dir)
        save_curve([r["step"] for r in records], [r["loss"] for r in records], self.out_dir / "loss.png")
        x = self.test.data[:self.config.grid_size].to(self.device)
        self.model.eval()
        recon = self.model.decode(self.model.encode(x)[0]).float().cpu()
        self.model.train()
        cols = min(8, len(x))
        rows = []
        for i in range(0, len(x), cols):
            original, rebuilt = x[i:i + cols].cpu(), recon[i:i + cols]
            pad = cols - len(original)  # a short last row is padded with blank (black) cells
            blank = torch.full((pad, *original.shape[1:]), -1.0)
            rows += [torch.cat([original, blank]), torch.cat([rebuilt, blank])]
        save_image_grid(torch.cat(rows), self.out_dir / "reconstructions.png", nrow=cols)


def train_autoencoder(config: AutoencoderTrainConfig, out_dir, **kwargs) -> Path:
    return AutoencoderTrainer(config, out_dir, **kwargs).fit()


# -- loading, and the codec latent diffusion uses ---------------------------------------------------

def _autoencoder_json(folder: Path) -> dict:
    stored = ckpt.load_json(folder / "config.json")
    if stored.get("kind") != KIND or not {"autoencoder", "train", "data", "latent"} <= set(stored):
        raise ckpt.CheckpointError(f"{folder} is not an autoencoder checkpoint "
                                   "(train one with `diffuse train-autoencoder`)")
    return stored


def load_autoencoder(path, device="cpu") -> tuple[AutoencoderKL, dict]:
    """An autoencoder run (or checkpoint folder) -> (model in eval mode, its stored config.json)."""
    folder = ckpt.latest_checkpoint(path)
    stored = _autoencoder_json(folder)
    model = build_autoencoder(stored["autoencoder"])
    try:
        model.load_state_dict(ckpt.load_tensors(folder / "model.safetensors"))
    except RuntimeError as e:
        raise ckpt.CheckpointError(f"{folder}: weights do not match the stored config: {e}") from None
    return model.to(device).eval().requires_grad_(False), stored


class LatentCodec:
    """Images <-> scaled latents through a frozen autoencoder: encode gives the posterior mean
    times `scale_factor`; decode divides by it and decodes. Not an nn.Module, so attaching one
    to a model adds nothing to the model's state dict."""

    def __init__(self, autoencoder: AutoencoderKL, scale_factor: float, reference: dict):
        self.autoencoder = autoencoder
        self.scale_factor = float(scale_factor)
        self.reference = reference  # what a diffusion checkpoint stores to find this again

    @property
    def device(self) -> torch.device:
        return next(self.autoencoder.parameters()).device

    def latent_shape(self, image_shape) -> tuple[int, int, int]:
        return self.autoencoder.latent_shape(image_shape)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        return posterior_means(self.autoencoder, images, self.device, batch_size) * self.scale_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        out = [self.autoencoder.decode(latents[i:i + batch_size].to(self.device).float() / self.scale_factor).cpu()
               for i in range(0, len(latents), batch_size)]
        return torch.cat(out)

    def encode_dataset(self, data: Dataset) -> Dataset:
        if len(data.shape) != 3:
            raise ValueError(f"latent diffusion needs images; {data.name} holds vectors of shape {data.shape}")
        self.latent_shape(data.shape)  # a clear error before any encoding
        return Dataset(self.encode(data.data), data.labels, data.class_names, f"{data.name}-latents",
                       captions=data.captions)


def open_autoencoder(run, expected: dict | None = None, device="cpu") -> LatentCodec:
    """The codec for autoencoder `run` (a run directory or checkpoint folder).

    `expected` is the reference a diffusion checkpoint stored: the checkpoint folder it was trained
    with is used when it still exists, else the newest checkpoint of `run`, else of the stored run;
    and its weights must carry the stored fingerprint.
    """
    candidates = [Path(expected["checkpoint"])] if expected else []
    if run is not None:
        candidates.append(Path(run))
    if expected:
        candidates.append(Path(expected["run"]))
    where = next((p for p in candidates if p.exists()), None)
    if where is None:
        names = " or ".join(str(p) for p in candidates)
        raise ckpt.CheckpointError(
            f"the autoencoder run {names} does not exist; a latent diffusion model needs the "
            "autoencoder it was trained with (train one with `diffuse train-autoencoder`)")
    folder = ckpt.latest_checkpoint(where)
    found = fingerprint(folder)
    if expected and found != expected["fingerprint"]:
        raise ckpt.CheckpointError(
            f"the autoencoder in {folder} has changed since this model was trained: its weights' "
            f"fingerprint is {found}, not {expected['fingerprint']}; latents from another autoencoder "
            "decode to garbage, so point to the original run")
    model, stored = load_autoencoder(folder, device)
    scale = stored["latent"]["scale_factor"] if not expected else expected["scale_factor"]
    if scale is None:
        raise ckpt.CheckpointError(f"{folder} has no latent scale factor")
    reference = {"run": str(Path(run).resolve()) if run is not None else expected["run"],
                 "checkpoint": str(folder.resolve()), "fingerprint": found, "scale_factor": scale,
                 "autoencoder": autoencoder_config(model), "image_shape": stored["data"]["shape"],
                 "data": stored["data"]["spec"]}
    return LatentCodec(model, scale, reference)
