"""The training configuration: every design axis an explicit, JSON-serialisable field."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from ..objectives import DenoisingLoss, check_time_options
from .loop import LR_SCHEDULES


def default_process() -> dict:
    return {"kind": "edm", "sigma_min": 0.002, "sigma_max": 80.0, "sigma_data": 0.5}


class JSONConfig:
    """to_dict / from_dict for a config dataclass; unknown keys are an error, not ignored, so a
    typo never silently trains something else."""

    _what = "training"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown {cls._what} option(s) {unknown}")
        return cls(**d)


@dataclass
class TrainConfig(JSONConfig):
    # what to learn
    data: str = "digits"                 # a spec for diffuse.data.load_dataset
    cond: str = "none"                   # "none" | "class" | "text" (captions, via a jointly trained encoder)
    network: dict | None = None          # {"kind": "unet" | "mlp", ...}; None: a default for the data
    latent: str | None = None            # an autoencoder run: train on its latents (latent diffusion)
    # the diffusion model: process, parameterisation, loss
    process: dict = field(default_factory=default_process)   # GaussianPath.config()
    prediction: str = "x0"
    preconditioning: str = "edm"         # "edm" | "none"
    sigma_data: float | None = None      # None: the standard deviation of the training data
    weighting: str = "edm"
    time_sampling: str = "log_normal"
    time_options: dict = field(default_factory=dict)  # the sampling's parameters: p_mean, p_std / logit_mean, logit_std
    label_dropout: float = 0.1           # labels (captions) replaced by the null class (text), for guidance
    # optimisation
    batch_size: int = 128
    lr: float = 2e-3
    text_lr_scale: float = 1.0           # a text model's encoder learns at this multiple of lr (0: kept as initialised)
    weight_decay: float = 0.0
    warmup_steps: int = 200
    lr_schedule: str = "cosine"          # after warmup: "constant", or "cosine" / "linear" decay to 0 at `steps`
    grad_clip: float = 1.0
    ema_decay: float = 0.999             # with warmup: min(decay, (1 + step) / (10 + step))
    steps: int = 4000
    minutes: float | None = None         # wall-clock budget; training stops at whichever comes first
    seed: int = 0
    # bookkeeping
    checkpoint_every: int = 500
    log_every: int = 25
    keep_checkpoints: int = 2
    # the sample grid drawn at each checkpoint (and the defaults of `diffuse sample`)
    sampler: str = "heun"
    sample_steps: int = 18
    sample_schedule: str = "auto"
    grid_size: int = 100

    def __post_init__(self):
        if self.cond not in CONDITIONS:
            raise ValueError(f"cond must be one of {CONDITIONS}, got {self.cond!r}")
        for name in ("batch_size", "steps", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if not (math.isfinite(self.text_lr_scale) and self.text_lr_scale >= 0):
            raise ValueError(f"text_lr_scale must be a finite number >= 0, got {self.text_lr_scale}")
        if self.text_lr_scale != 1.0 and self.cond != "text":
            raise ValueError(f"text_lr_scale applies to a text encoder, which cond={self.cond!r} has none")
        if not 0 <= self.label_dropout < 1:
            raise ValueError(f"label_dropout must be in [0, 1), got {self.label_dropout}")
        check_time_options(self.time_sampling, self.time_options)
        if self.minutes is not None and self.minutes <= 0:
            raise ValueError(f"minutes must be positive, got {self.minutes}")
        if self.latent is not None and (not isinstance(self.latent, str) or not self.latent):
            raise ValueError(f"latent must be the path of an autoencoder run, got {self.latent!r}")

    def denoising_loss(self, process) -> DenoisingLoss:
        """The objective this config trains on, over `process` (the model's Gaussian path)."""
        return DenoisingLoss(process, self.prediction, self.weighting, self.time_sampling,
                             sigma_data=self.sigma_data, time_options=self.time_options)


CONDITIONS = ("none", "class", "text")


def default_network(shape: tuple[int, ...], num_classes: int | None, text: dict | None = None) -> dict:
    """A network sized for the data: a residual MLP for vectors, a U-Net for images. With `text`
    ({"vocab_size": V, "max_length": L}), the U-Net cross-attends to a jointly trained text
    encoder at every level below full resolution, where the objects' layout is decided."""
    if len(shape) == 1:
        return {"kind": "mlp", "dim": shape[0], "num_classes": num_classes}
    channels, height, width = shape
    mults = [1, 2] if min(height, width) <= 16 else [1, 2, 2]
    # Latent grids can be odd (28x28 images at factor 4 give 7x7): keep the levels the size allows.
    while len(mults) > 1 and (height % 2 ** (len(mults) - 1) or width % 2 ** (len(mults) - 1)):
        mults.pop()
    unet = {"kind": "unet", "in_channels": channels, "channels": 32, "channel_mults": mults,
            "num_res_blocks": 2, "attention_levels": [len(mults) - 1], "num_classes": num_classes}
    if text is None:
        return unet
    from ..models import text_network
    unet["attention_levels"] = list(range(1, len(mults))) or [0]
    return text_network(unet, **text)


def network_for_shape(network: dict, shape) -> dict:
    """An image network config fitted to the images or latents [C, H, W] it will model: a left-out
    ``in_channels`` (and, for a DiT, a left-out ``image_size``) is taken from the shape, which
    for latents a user cannot be expected to know; given values must match it."""
    if network.get("kind") == "text":  # the image network inside
        return {**network, "denoiser": network_for_shape(network.get("denoiser", {}), shape)}
    if network.get("kind") not in ("unet", "dit"):
        return network
    channels, height, width = shape
    network = dict(network)
    network.setdefault("in_channels", channels)
    if network.get("kind") == "dit":
        network.setdefault("image_size", height if height == width else [height, width])
    if network["in_channels"] != channels:
        raise ValueError(f"the data have shape {tuple(shape)}; the network's in_channels is "
                         f"{network['in_channels']}, not {channels} (leave it out to have it filled in)")
    if network.get("kind") == "dit":
        size = network["image_size"]
        size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
        if size != (height, width):
            raise ValueError(f"the data are {height}x{width}; the DiT's image_size is {network['image_size']} "
                             "(leave it out to have it filled in)")
    return network
