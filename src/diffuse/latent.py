"""Images in and out of latents through a trained autoencoder run (latent diffusion).

`LatentCodec` encodes images to the posterior means times the run's scale factor (the mean, not a
posterior sample: deterministic, independent of any seed, and with a small KL weight the
posterior's spread is tiny next to the spread of the means) and decodes latents by dividing by
the scale factor and decoding. The scale factor is 1 / the standard deviation of the encoder's
posterior means over the training images (Rombach et al. 2022, section 4.3.2), so latents have
unit spread. A diffusion run refers to its autoencoder by path plus a fingerprint of the weights
file, so a missing or changed autoencoder is a clear error instead of silently wrong images.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .data import Dataset, TensorDataset
from .models.autoencoder import AutoencoderKL, autoencoder_config, build_autoencoder

KIND = "autoencoder"  # the task kind of an autoencoder run


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


def read_autoencoder_run(path) -> ckpt.StoredRun:
    stored = ckpt.read_run(path)
    if stored.kind != KIND:
        raise ckpt.CheckpointError(f"{stored.folder} is not an autoencoder checkpoint but a {stored.kind} run "
                                   "(train one with `diffuse train --task autoencoder`)")
    return stored


def load_autoencoder(path, device="cpu") -> tuple[AutoencoderKL, ckpt.StoredRun]:
    """An autoencoder run (or checkpoint folder) -> (model in eval mode without gradients, what its
    config.json says: `.config` the run config, `.state["latent"]` the latent shape and scale)."""
    stored = read_autoencoder_run(path)
    try:
        model = build_autoencoder(stored.config["task"]["network"])
        model.load_state_dict(ckpt.load_tensors(stored.folder / "model.safetensors"))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ckpt.CheckpointError(f"{stored.folder}: weights do not match the stored config: {e}") from None
    return model.to(device).eval().requires_grad_(False), stored


class LatentCodec:
    """Images <-> scaled latents through a frozen autoencoder (see the module docstring). Not an
    nn.Module, so attaching one to a model adds nothing to the model's state dict."""

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

    def encode_dataset(self, data: Dataset) -> TensorDataset:
        """The data set's images as latents, encoded once, with its labels and captions."""
        if data.modality != "image":
            raise ValueError(f"latent diffusion needs images; {data.name} holds {data.modality}s of shape {data.shape}")
        self.latent_shape(data.shape)  # a clear error before any encoding
        return TensorDataset(self.encode(data.data), data.labels, data.class_names, f"{data.name}-latents",
                             captions=data.captions, modality="image", source=data.source)


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
            "autoencoder it was trained with (train one with `diffuse train --task autoencoder`)")
    folder = ckpt.latest_checkpoint(where)
    found = fingerprint(folder)
    if expected and found != expected["fingerprint"]:
        raise ckpt.CheckpointError(
            f"the autoencoder in {folder} has changed since this model was trained: its weights' "
            f"fingerprint is {found}, not {expected['fingerprint']}; latents from another autoencoder "
            "decode to garbage, so point to the original run")
    model, stored = load_autoencoder(folder, device)
    scale = stored.state.get("latent", {}).get("scale_factor") if not expected else expected["scale_factor"]
    if scale is None:
        raise ckpt.CheckpointError(f"{folder} has no latent scale factor")
    reference = {"run": str(Path(run).resolve()) if run is not None else expected["run"],
                 "checkpoint": str(folder.resolve()), "fingerprint": found, "scale_factor": scale,
                 "autoencoder": autoencoder_config(model), "image_shape": stored.data["shape"],
                 "data": stored.config["data"]}
    return LatentCodec(model, scale, reference)
