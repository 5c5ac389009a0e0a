"""The diffusion task: a denoiser trained by the denoising loss, every design axis a field.

The model is `Denoiser(network, process, prediction, preconditioning)`; its loss is
`DenoisingLoss(process, prediction, weighting, time_sampling)` on the examples' x, with the
conditions of `cond` (class labels, or a caption's tokens through a text encoder), a fraction
`label_dropout` of which is replaced by the null condition so that the same network is the
unconditional model classifier-free guidance needs, and the batch's "mask" (padded data) when it
has one. With cond="obs" the model is a policy: it denoises an action chunk given the data's
observation history (Diffusion Policy; the data's normaliser and horizons are kept in the run's
state for `diffuse.policy`). With `latent` set, the examples are the scaled latents of that
autoencoder run, encoded once. What a config leaves out, the data decide: `sigma_data` (the examples' standard deviation)
and `network` (one sized for the data: `default_network`); a given image network gets its
`in_channels` (and a DiT its `image_size`) from the data, and a text model's encoder its sizes
from the tokenizer fitted to the training captions.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ...conditions import class_label, observation_history, text_tokens
from ...data import Dataset, WithColumns, spread
from ...denoiser import NOISE_INPUTS, Denoiser
from ...latent import open_autoencoder
from ...models import build_network, text_network
from ...configs import check_choices, in_range, option, whole_number
from ...objectives import TIME_SAMPLINGS, WEIGHTINGS, DenoisingLoss, check_time_options
from ...parameterization import PREDICTIONS
from ...pipeline import Pipeline
from ...process import process_from_config
from ...samplers import SCHEDULES, available
from ...text import WordTokenizer
from ..task import Task, TaskConfig, register
from .demonstrations import policy_state

CONDITIONS = ("none", "class", "text", "obs")
PRECONDITIONINGS = ("none", "edm")


def default_process() -> dict:
    return {"kind": "edm", "sigma_min": 0.002, "sigma_max": 80.0, "sigma_data": 0.5}


@dataclass
class DiffusionTaskConfig(TaskConfig):
    kind = "diffusion"
    cond: str = option("none", choices=CONDITIONS,
                       help="what the model is conditioned on: none, class labels, text (the data's captions), or "
                            "obs (a policy's observation history, the data's \"obs\")")
    network: dict | None = option(None, help='the network as JSON, e.g. \'{"kind": "unet", "channels": 64}\' '
                                             "(unet, dit, mlp, text, temporal_unet); default: one sized for the data")
    latent: str | None = option(None, help="an autoencoder run: train on its latents (latent diffusion)")
    process: dict = option(factory=default_process,
                           help="the Gaussian path as JSON (GaussianPath.config()), or by name with --process")
    prediction: str = option("x0", choices=PREDICTIONS, help="what the network predicts")
    preconditioning: str = option("edm", choices=PRECONDITIONINGS,
                                  help="EDM's input and output scalings, generalised to every path; or none")
    sigma_data: float | None = option(None, help="the data's standard deviation; default: measured on the examples")
    noise_input: str = option("c_noise", choices=NOISE_INPUTS,
                              help="what the network is told of the noise level: EDM's c_noise, or the timestep a "
                                   "diffusers network reads (discrete or flow processes; needed by diffuse export)")
    weighting: str = option("edm", choices=WEIGHTINGS, help="the weighting of the loss over noise levels")
    time_sampling: str = option("log_normal", choices=TIME_SAMPLINGS, help="how training draws its noise levels")
    time_options: dict = option(factory=dict, help='the time sampling\'s parameters as JSON, e.g. \'{"p_mean": -0.4}\' '
                                                   "(log_normal: p_mean, p_std; logit_normal: logit_mean, logit_std)")
    label_dropout: float = option(0.1, help="share of conditions replaced by the null one, so the same network is "
                                            "the unconditional model guidance needs")
    text_lr_scale: float = option(1.0, help="a text model's encoder learns at this multiple of --lr (0: kept as "
                                            "initialised)")
    sampler: str = option("heun", choices=available(), help="the sampler of the pictures (and `diffuse sample`'s default)")
    sample_steps: int = option(18, help="its steps")
    sample_schedule: str = option("auto", choices=("auto", *SCHEDULES), help="its step schedule")
    clip_denoised: float | None = option(None, help="clip the model's estimate of x0 to [-c, c] at every sampling "
                                                    "step (data known to lie there, e.g. min-max normalised actions)")
    grid_size: int = option(100, help="samples in each checkpoint's picture")

    def __post_init__(self):
        check_choices(self)
        check_time_options(self.time_sampling, self.time_options)
        if self.preconditioning == "edm" and self.prediction != "x0":
            raise ValueError(f"EDM preconditioning makes the model predict x0; got prediction={self.prediction!r}")
        process = process_from_config(self.process)  # a clear error now, not at the first step
        if self.noise_input == "timestep" and process.config()["kind"] not in ("discrete_vp", "flow"):
            raise ValueError(f"noise_input='timestep' needs a discrete process or the flow path (--process ddpm "
                             f"or flow), got {process!r}")
        in_range("label_dropout", self.label_dropout, 0, 1, high_open=True)
        in_range("text_lr_scale", self.text_lr_scale, 0, math.inf)
        if self.text_lr_scale != 1.0 and self.cond != "text":
            raise ValueError(f"text_lr_scale applies to a text encoder, which cond={self.cond!r} has none")
        if self.sigma_data is not None:
            in_range("sigma_data", self.sigma_data, 0, math.inf, low_open=True)
        whole_number("sample_steps", self.sample_steps, 1)
        whole_number("grid_size", self.grid_size, 1)
        if self.network is not None and (not isinstance(self.network, dict) or "kind" not in self.network):
            raise ValueError(f"network must be a JSON object with a \"kind\", got {self.network!r}")
        if self.latent is not None and (not isinstance(self.latent, str) or not self.latent):
            raise ValueError(f"latent must be the path of an autoencoder run, got {self.latent!r}")

    def denoising_loss(self, process) -> DenoisingLoss:
        """The objective this config trains on, over `process` (the model's Gaussian path)."""
        return DenoisingLoss(process, self.prediction, self.weighting, self.time_sampling,
                             sigma_data=self.sigma_data, time_options=self.time_options)


def levels_for(height: int, width: int, mults: list[int]) -> list[int]:
    """The U-Net levels an image of this size allows: each level halves it, so the size must be
    divisible by 2**(levels - 1) (latent grids can be odd: 28x28 images at factor 4 give 7x7)."""
    mults = list(mults)
    while len(mults) > 1 and (height % 2 ** (len(mults) - 1) or width % 2 ** (len(mults) - 1)):
        mults.pop()
    return mults


def default_network(modality: str, shape: tuple[int, ...], num_classes: int | None, text: dict | None = None,
                    obs_dim: int = 0) -> dict:
    """A network sized for the data: a residual MLP for vectors, a temporal U-Net for sequences
    [T, D] (FiLM-conditioned on `obs_dim` observation features), a U-Net for images. With `text`
    ({"vocab_size": V, "max_length": L}), the U-Net cross-attends to a jointly trained text
    encoder at every level below full resolution, where the objects' layout is decided."""
    if modality == "vector":
        return {"kind": "mlp", "dim": shape[0], "num_classes": num_classes}
    if modality == "sequence":
        return {"kind": "temporal_unet", "dim": shape[-1], "obs_dim": obs_dim}
    if modality != "image":
        raise ValueError(f"no default network for {modality} data; give one (--network)")
    channels, height, width = shape
    mults = levels_for(height, width, [1, 2] if min(height, width) <= 16 else [1, 2, 2])
    unet = {"kind": "unet", "in_channels": channels, "channels": 32, "channel_mults": mults,
            "num_res_blocks": 2, "attention_levels": [len(mults) - 1], "num_classes": num_classes}
    if text is None:
        return unet
    unet["attention_levels"] = list(range(1, len(mults))) or [0]
    return text_network(unet, **text)


def network_for_data(network: dict, modality: str, shape, num_classes: int | None, obs_dim: int = 0) -> dict:
    """A network config fitted to the examples it will model: what it leaves out is taken from
    them (an image network's ``in_channels`` and a DiT's ``image_size``, which for latents a user
    cannot be expected to know; an MLP's ``dim``; a temporal U-Net's ``dim`` and ``obs_dim``; a
    class model's ``num_classes``), and what it states must match them."""
    if network.get("kind") == "text":  # the image network inside
        return {**network, "denoiser": network_for_data(network.get("denoiser", {}), modality, shape, num_classes)}
    network = dict(network)
    if network.get("kind") == "temporal_unet" and modality == "sequence":
        network.setdefault("dim", shape[-1])
        network.setdefault("obs_dim", obs_dim)
        if (network["dim"], network["obs_dim"]) != (shape[-1], obs_dim):
            raise ValueError(f"the data are sequences of {shape[-1]} features with {obs_dim} observation features; "
                             f"the network has dim {network['dim']} and obs_dim {network['obs_dim']} (leave them "
                             "out to have them filled in)")
    if num_classes is not None and network.get("kind") in ("unet", "dit", "mlp"):
        network.setdefault("num_classes", num_classes)
    if network.get("kind") == "mlp" and modality == "vector":
        network.setdefault("dim", shape[0])
    return network_for_shape(network, shape) if modality == "image" else network


def network_for_shape(network: dict, shape) -> dict:
    """An image network config fitted to the images or latents [C, H, W] it will model: a left-out
    ``in_channels`` (and, for a DiT, a left-out ``image_size``) is taken from the shape; given
    values must match it."""
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


def build_denoiser(config: DiffusionTaskConfig) -> Denoiser:
    """The Denoiser a resolved config describes (network + process + parameterisation)."""
    return Denoiser(build_network(config.network), process_from_config(config.process), config.prediction,
                    config.preconditioning, config.sigma_data, config.noise_input)


@register
class DiffusionTask(Task):
    Config = DiffusionTaskConfig

    def __init__(self, config: DiffusionTaskConfig, info, state=None, device=None):
        super().__init__(config, info, state, device)
        c = self.config
        if c.cond == "class" and info.num_classes is None:
            raise ValueError(f"cond='class' needs a labelled data set; {info.name!r} has no labels")
        if c.cond == "obs" and "obs" not in info.fields:
            raise ValueError(f"cond='obs' needs demonstrations with observations (e.g. pusht); {info.name!r} has none")
        if c.cond == "text" and "caption" not in info.fields:
            raise ValueError(f"cond='text' needs a captioned data set (e.g. shapes); {info.name!r} has no captions")
        if c.latent is not None and info.modality != "image":
            raise ValueError(f"latent diffusion needs images; {info.name!r} holds {info.modality}s")
        self.process = process_from_config(c.process)
        self.tokenizer = WordTokenizer.from_dict(self.state["tokenizer"]) if "tokenizer" in self.state else None
        self.codec = None if c.latent is None else open_autoencoder(c.latent, self.state.get("latent"), self.device)
        self.conditions = {"none": (), "class": (class_label(info.num_classes or 0),),
                           "text": (text_tokens(WordTokenizer.pad_id),), "obs": (observation_history(),)}[c.cond]
        self.preview_tokens = self.reference_points = None

    def examples(self, data: Dataset) -> Dataset:
        c = self.config
        if self.codec is not None:
            data = self.codec.encode_dataset(data)
            self.state["latent"] = self.codec.reference
        text = None
        if c.cond == "text":
            if self.tokenizer is None:
                self.tokenizer = WordTokenizer.fit(data.captions)
                self.state["tokenizer"] = self.tokenizer.to_dict()
            tokens = self.tokenizer.encode(data.captions)
            self.preview_tokens = tokens[torch.arange(c.grid_size) % len(tokens)]  # the first training captions
            data = WithColumns(data, tokens=tokens)
            text = {"vocab_size": len(self.tokenizer), "max_length": tokens.shape[1]}
        if data.modality == "vector" and data.shape == (2,):  # drawn beside the samples in each picture
            self.reference_points = data.__getitems__(list(range(min(2000, len(data)))))["x"]
        if c.sigma_data is None:
            c.sigma_data = round(spread(data), 4)
        num_classes = self.info.num_classes if c.cond == "class" else None
        obs_dim = 0
        if c.cond == "obs":
            obs_dim = data.__getitems__([0])["obs"][0].numel()
            self.state.update(policy_state(data))
        if c.network is None:
            c.network = default_network(data.modality, data.shape, num_classes, text, obs_dim)
        else:
            c.network = network_for_data(c.network, data.modality, data.shape, num_classes, obs_dim)
            if text is not None:
                c.network = with_text(c.network, text)
        return data

    @functools.cached_property
    def loss_fn(self) -> DenoisingLoss:
        """The objective, built once the data have decided sigma_data."""
        return self.config.denoising_loss(self.process)

    def build(self) -> Denoiser:
        model = build_denoiser(self.config)
        expected = self.info.num_classes if self.config.cond == "class" else None
        if self.config.cond == "class" and getattr(model.net.config, "num_classes", None) != expected:
            raise ValueError(f"cond='class' needs a network with num_classes={expected}")
        return model

    def parameter_groups(self, model: Denoiser) -> list[dict]:
        """A text model's encoder apart, at `text_lr_scale` times the learning rate. At 0 the
        encoder is frozen at its random initialisation, and left out of the optimiser altogether."""
        scale = self.config.text_lr_scale
        text = getattr(model.net, "text", None)
        if text is None or scale == 1.0:
            return super().parameter_groups(model)
        encoder = {id(p) for p in text.parameters()}
        rest = [p for p in model.parameters() if id(p) not in encoder]
        if scale == 0:
            text.requires_grad_(False)
            return [{"params": rest}]
        return [{"params": rest}, {"params": list(text.parameters()), "lr_scale": scale}]

    def conditioning(self, batch: dict, generator: torch.Generator) -> dict:
        """The model's keywords for a training batch: its conditions, a share `label_dropout` of them null."""
        if not self.conditions:
            return {}
        dropped = torch.rand(len(batch["x"]), generator=generator) < self.config.label_dropout
        return {c.argument: c.drop(batch[c.key], dropped) for c in self.conditions}

    def loss(self, model, batch: dict, generator: torch.Generator) -> torch.Tensor:
        cond = self.conditioning(batch, generator)
        return self.loss_fn(model, batch["x"], cond, generator=generator, mask=batch.get("mask"))

    def pipeline(self, model: nn.Module) -> Pipeline:
        c = self.config
        return Pipeline(model, self.info, self.conditions, sampler=c.sampler, steps=c.sample_steps,
                        schedule=c.sample_schedule, tokenizer=self.tokenizer, codec=self.codec,
                        loss=self.loss_fn, clip_denoised=c.clip_denoised)

    def preview(self, model) -> dict[str, Callable]:
        """The grid of samples (class-major for a class model, the first training captions for a
        text model), or for 2-D points a scatter over the training data."""
        from ...plotting import save_class_grid, save_image_grid, save_scatter
        n, pipeline = self.config.grid_size, self.pipeline(model)
        if self.info.modality == "image":
            labels = None
            if self.config.cond == "class":
                k = self.info.num_classes
                labels = torch.arange(n) * k // n  # the classes in turn, as many samples each
            images = pipeline.sample(n, labels=labels, tokens=self.preview_tokens, seed=0)
            if labels is None:
                return {"samples": lambda path: save_image_grid(images, path)}
            return {"samples": lambda path: save_class_grid(images, labels, path)}
        if self.info.modality == "vector" and self.info.shape == (2,):
            points = pipeline.sample(n, seed=0)
            return {"samples": lambda path: save_scatter(points, path, reference=self.reference_points)}
        return {}
