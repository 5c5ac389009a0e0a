"""A local diffusers pipeline folder as our Pipeline: its denoiser in our model contract, the
exact process its scheduler describes, its text encoder for prompts and its VAE as the codec.

    pipeline = diffuse.from_diffusers("path/to/folder")
    images = pipeline.sample(4, prompt="a photo of a cat", guidance=6.5, sampler="dpmpp_2m", steps=20)

The folder is what `save_pretrained` writes: model_index.json, scheduler/scheduler_config.json
and a folder per component (config.json, diffusion_pytorch_model[.fp16].safetensors). Nothing is
downloaded: the folder is read with local_files_only. diffusers (and transformers, for text
encoders) are the interop extra and imported here only.

Denoisers, each wrapped so that model(x, t, **cond) returns its prediction at our time t:

  UNet2DModel            unconditional or class-conditional (labels -> class_labels)
  UNet2DConditionModel   text (encoder_hidden_states from the pipeline's own encode_prompt)
  DiTTransformer2DModel  class-conditional; the learned-variance half of its output dropped
  SD3Transformer2DModel  text (encoder_hidden_states + pooled_projections), flow matching
  FluxTransformer2DModel text, flow matching; latents packed into 2x2 patches inside the call,
                         its guidance embedding (guidance-distilled checkpoints) an option

Classifier-free guidance is ours: w = diffusers' guidance_scale - 1, against the embedding of
the pipeline's negative prompt (the empty prompt unless given).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from ..conditions import Condition
from ..configs import read_json
from ..data import DataInfo
from ..pipeline import Pipeline
from .schedulers import SchedulerError, SchedulerSpec, read_scheduler

DIFFUSE_JSON = "diffuse.json"  # what an exported run adds to its folder: {"null_class", "class_names"}
DENOISERS = ("UNet2DModel", "UNet2DConditionModel", "DiTTransformer2DModel", "SD3Transformer2DModel",
             "FluxTransformer2DModel")


def _diffusers():
    try:
        import diffusers
    except ImportError:
        raise ImportError("reading diffusers folders needs the interop extra: "
                          "pip install 'diffuse-paths[interop]' (diffusers, transformers)") from None
    return diffusers


def _read_json(path: Path) -> dict:
    """configs.read_json, with a missing file said to be no diffusers folder."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: not a diffusers pipeline folder")
    return read_json(path)


def is_diffusers_folder(path) -> bool:
    return (Path(path) / "model_index.json").is_file()


def is_pretrained(path) -> bool:
    """A diffusers pipeline folder or a single-file checkpoint (what from_diffusers reads)."""
    path = Path(path)
    return is_diffusers_folder(path) or (path.is_file() and path.suffix in (".safetensors", ".ckpt"))


# ------------------------------------------------------------------------------------------------
# The denoiser in our contract
# ------------------------------------------------------------------------------------------------


class DiffusersDenoiser(torch.nn.Module):
    """model(x, t, **cond) -> the diffusers network's prediction at our time t (float64 [B]).

    The network reads the timestep its scheduler trained it on (spec.timestep(t)); an output with
    twice the input's channels carries a learned variance, whose half is dropped (our samplers
    use the process's own variances). Subclasses map our condition keywords onto the network's.
    """

    def __init__(self, net: torch.nn.Module, spec: SchedulerSpec):
        super().__init__()
        self.net, self.spec = net, spec
        self.process, self.prediction = spec.process, spec.prediction

    def timestep(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.spec.timestep(t.to(torch.float64)).to(x.device, torch.float32).expand(x.shape[0])

    def run(self, x: torch.Tensor, timestep: torch.Tensor, **cond) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        dtype = next(self.net.parameters()).dtype
        out = self.run(x.to(dtype), self.timestep(torch.as_tensor(t), x), **cond)
        if out.shape[1] == 2 * x.shape[1]:
            out = out[:, : x.shape[1]]
        return out.to(x.dtype)


class UNet2D(DiffusersDenoiser):
    def run(self, x, timestep, labels=None):
        if labels is not None:
            classes = self.net.config.num_class_embeds
            if classes is not None and bool((labels >= classes).any()):
                raise ValueError(f"this UNet2DModel has {classes} class embeddings and no null class, so it "
                                 "takes no classifier-free guidance")
        return self.net(x, timestep, class_labels=labels).sample


class UNet2DCondition(DiffusersDenoiser):
    def run(self, x, timestep, encoder_hidden_states=None):
        return self.net(x, timestep, encoder_hidden_states=encoder_hidden_states).sample


class DiT(DiffusersDenoiser):
    def run(self, x, timestep, labels=None):
        return self.net(x, timestep=timestep, class_labels=labels).sample


class SD3(DiffusersDenoiser):
    def run(self, x, timestep, encoder_hidden_states=None, pooled_projections=None):
        return self.net(hidden_states=x, timestep=timestep, encoder_hidden_states=encoder_hidden_states,
                        pooled_projections=pooled_projections).sample


class Flux(DiffusersDenoiser):
    """Flux reads latents as a sequence of 2x2 patches with their (0, row, column) ids, its
    timestep divided by 1000 (it multiplies by 1000 inside), and, when guidance-distilled, the
    guidance strength as an input (`embedded_guidance`, the Flux pipeline's guidance_scale)."""

    embedded_guidance: float = 3.5

    def run(self, x, timestep, encoder_hidden_states=None, pooled_projections=None):
        b, c, h, w = x.shape
        packed = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)
        ids = torch.zeros(h // 2, w // 2, 3, device=x.device, dtype=x.dtype)
        ids[..., 1] += torch.arange(h // 2, device=x.device)[:, None]
        ids[..., 2] += torch.arange(w // 2, device=x.device)[None, :]
        text_ids = torch.zeros(encoder_hidden_states.shape[1], 3, device=x.device, dtype=x.dtype)
        guidance = None
        if self.net.config.guidance_embeds:
            guidance = torch.full((b,), self.embedded_guidance, device=x.device, dtype=torch.float32)
        out = self.net(hidden_states=packed, timestep=timestep / 1000, guidance=guidance,
                       pooled_projections=pooled_projections, encoder_hidden_states=encoder_hidden_states,
                       txt_ids=text_ids, img_ids=ids.reshape(-1, 3)).sample
        return out.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


WRAPPERS = {"UNet2DModel": UNet2D, "UNet2DConditionModel": UNet2DCondition, "DiTTransformer2DModel": DiT,
            "SD3Transformer2DModel": SD3, "FluxTransformer2DModel": Flux}


# ------------------------------------------------------------------------------------------------
# The VAE as the latent codec
# ------------------------------------------------------------------------------------------------


class DiffusersCodec:
    """Images in [-1, 1] <-> the latents a diffusers pipeline samples: (z - shift) * scale with z
    the VAE posterior's mode (mean) on encoding, the inverse before decoding."""

    def __init__(self, vae):
        self.vae = vae
        self.scale = float(vae.config.scaling_factor)
        self.shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
        self.factor = 2 ** (len(vae.config.block_out_channels) - 1)

    def latent_shape(self, image_shape) -> tuple[int, int, int]:
        c, h, w = image_shape
        if h % self.factor or w % self.factor:
            raise ValueError(f"the VAE downsamples by {self.factor}; an image of {h}x{w} is not a multiple")
        return self.vae.config.latent_channels, h // self.factor, w // self.factor

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        dtype = next(self.vae.parameters()).dtype
        z = self.vae.encode(images.to(dtype)).latent_dist.mode()
        return ((z - self.shift) * self.scale).float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        dtype = next(self.vae.parameters()).dtype
        return self.vae.decode((latents / self.scale + self.shift).to(dtype)).sample.float()


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------


def _variant(folder: Path, variant: str | None) -> str | None:
    """The weights variant to load: as asked, else fp16 when that is the only one there."""
    if variant is not None:
        return variant
    has = lambda name: any(folder.glob(f"*/{name}"))  # noqa: E731
    if not has("diffusion_pytorch_model.safetensors") and has("diffusion_pytorch_model.fp16.safetensors"):
        return "fp16"
    return None


@contextlib.contextmanager
def _quiet(diffusers):
    """Loading without progress bars and advice (e.g. to install accelerate)."""
    loggers = [diffusers.utils.logging]
    try:
        import transformers
        loggers.append(transformers.utils.logging)
    except ImportError:
        pass
    levels = [logging.get_verbosity() for logging in loggers]
    for logging in loggers:
        logging.set_verbosity_error()
        logging.disable_progress_bar()
    try:
        yield
    finally:
        for logging, level in zip(loggers, levels):
            logging.set_verbosity(level)
            logging.enable_progress_bar()


def _image_shape(pipe, net_config, codec) -> tuple[int, int, int]:
    """The default image (C, H, W) the pipeline generates."""
    size = net_config.get("sample_size") or 64
    size = size if isinstance(size, int) else size[0]
    if codec is None:
        return int(net_config.get("in_channels", 3)), size, size
    channels = int(pipe.vae.config.in_channels)
    if type(pipe).__name__.startswith("Flux"):  # its transformer's sample_size is not the latent size
        size = int(pipe.default_sample_size)
    return channels, size * codec.factor, size * codec.factor


def from_diffusers(path, *, config=None, device="cpu", dtype: torch.dtype = torch.float32,
                   variant: str | None = None, negative_prompt: str = "", height: int | None = None,
                   width: int | None = None) -> Pipeline:
    """A local diffusers pipeline folder, or a single-file checkpoint, -> Pipeline (see the
    module docstring).

    config    for a single-file checkpoint (a Stable-Diffusion-style .safetensors with
              model.diffusion_model.*, first_stage_model.*, cond_stage_model.* keys): a diffusers
              folder of the same architecture, whose configs (and tokenizer) are read, not its
              weights; diffusers maps the checkpoint's keys. A pickled .ckpt is refused.
    dtype     the weights' dtype to run in (float32 by default: fp16 weights are upcast on CPU)
    negative_prompt  the prompt whose embedding classifier-free guidance subtracts
    height, width    the image size sampled (default: the pipeline's own)
    """
    diffusers = _diffusers()
    path = Path(path)
    folder = path if config is None else Path(config)
    if path.is_file() and config is None:
        raise ValueError(f"{path} is a single-file checkpoint: give config=FOLDER (--diffusers-config), a diffusers "
                         "folder of the same architecture, whose configs and tokenizer it needs (nothing is downloaded)")
    if path.is_file() and path.suffix != ".safetensors":
        raise ValueError(f"{path}: only .safetensors checkpoints are read; a pickled checkpoint ({path.suffix}) "
                         "can run code when loaded")
    index = _read_json(folder / "model_index.json")
    name = next((c for c in ("unet", "transformer") if c in index), None)
    if name is None:
        raise ValueError(f"{folder}: the pipeline {index.get('_class_name')!r} has no unet or transformer")
    net_class = index[name][1] if isinstance(index[name], list) else None
    if net_class not in DENOISERS:
        raise ValueError(f"{folder}: its {name} is a {net_class}; supported denoisers: {', '.join(DENOISERS)}")
    scheduler_config = _read_json(folder / "scheduler" / "scheduler_config.json")
    try:
        with _quiet(diffusers):
            if path.is_file():
                pipe = getattr(diffusers, index["_class_name"]).from_single_file(
                    str(path), config=str(folder), local_files_only=True)
            else:
                pipe = diffusers.DiffusionPipeline.from_pretrained(folder, local_files_only=True,
                                                                   variant=_variant(folder, variant))
    except (OSError, ValueError, KeyError, AttributeError, RuntimeError) as e:
        raise ValueError(f"{path}: diffusers cannot load it: {e}"[:600]) from None
    pipe.set_progress_bar_config(disable=True)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            if any(p.dtype != dtype for p in component.parameters()):
                component.to(dtype)  # fp16 weights run in float32 on CPU unless asked otherwise
            component.to(device).eval().requires_grad_(False)
    net = getattr(pipe, name)
    codec = DiffusersCodec(pipe.vae) if getattr(pipe, "vae", None) is not None else None
    shape = _image_shape(pipe, dict(net.config), codec)
    if height or width:
        shape = (shape[0], height or shape[1], width or shape[2])
    latent = shape if codec is None else codec.latent_shape(shape)
    seq_len = (latent[1] // 2) * (latent[2] // 2)  # Flux's tokens per image (2x2 patches)
    try:
        spec = read_scheduler(scheduler_config, image_seq_len=seq_len, pipeline=index.get("_class_name", ""))
    except SchedulerError as e:
        raise ValueError(f"{folder}/scheduler: {e}") from None
    model = WRAPPERS[net_class](net, spec)

    conditions, prompt_encoder, class_names = [], None, None
    if net_class in ("UNet2DModel", "DiTTransformer2DModel"):
        classes = net.config.get("num_class_embeds") or net.config.get("num_embeds_ada_norm")
        ours = _read_json(folder / DIFFUSE_JSON) if (folder / DIFFUSE_JSON).is_file() else {}
        if ours.get("null_class") is not None:  # an exported run: its last class row is the null class
            classes = int(ours["null_class"])
        if classes and (net_class == "DiTTransformer2DModel" or net.config.get("class_embed_type") is None):
            conditions.append(Condition("label", "labels", int(classes)))
            labels = getattr(pipe, "labels", None) or {}
            names = {v: k for k, v in labels.items()} if isinstance(labels, dict) else {}
            class_names = ours.get("class_names") or [names.get(i, str(i)) for i in range(int(classes))]
    else:
        encode = _prompt_encoder(pipe, device)
        null = encode([negative_prompt])
        conditions += [Condition(k, k, v[0]) for k, v in null.items()]
        prompt_encoder = encode
    info = DataInfo(path.stem, "image", tuple(shape), class_names, ("x",),
                    {"name": "diffusers", "path": str(path.resolve())})
    sampler, steps = "dpmpp_2m", 20
    return Pipeline(model, info, conditions, sampler=sampler, steps=steps, schedule=spec.schedule,
                    codec=codec, prompt_encoder=prompt_encoder, clip_denoised=spec.clip_sample)


def _prompt_encoder(pipe, device):
    """prompts -> the denoiser's text inputs, through the pipeline's own encode_prompt."""
    kind = type(pipe).__name__

    @torch.no_grad()
    def encode(prompts: list[str]) -> dict:
        if kind.startswith("StableDiffusion3"):
            embeds, _, pooled, _ = pipe.encode_prompt(prompts, prompts, prompts, device=device,
                                                      do_classifier_free_guidance=False)
            return {"encoder_hidden_states": embeds, "pooled_projections": pooled}
        if kind.startswith("Flux"):
            embeds, pooled, _ = pipe.encode_prompt(prompts, prompts, device=device)
            return {"encoder_hidden_states": embeds, "pooled_projections": pooled}
        embeds, _ = pipe.encode_prompt(prompts, device, 1, False)
        return {"encoder_hidden_states": embeds}

    return encode


