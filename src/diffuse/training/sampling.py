"""Sampling a trained model: the path shared by the trainer's sample grids and `diffuse sample`."""

from __future__ import annotations

import torch

from ..guidance import ClassifierFreeGuidance
from ..samplers import sample
from .config import TrainConfig


@torch.no_grad()
def generate(model, config: TrainConfig, shape, n: int, *, labels: torch.Tensor | None = None,
             guidance: float = 0.0, sampler: str | None = None, steps: int | None = None,
             schedule: str | None = None, seed: int = 0, device="cpu", batch_size: int = 500,
             decoder=None) -> torch.Tensor:
    """n samples [n, *shape] in the data range. Sample k depends only on (seed, k), not on the
    batch it was drawn in: noise is drawn per sample from its own generator.

    A latent model (``config.latent`` set) samples latents and decodes them with `decoder` (a
    LatentCodec; default: the one `load_model` attached as ``model.latent_decoder``); `shape` is
    then the images' shape and the latent shape follows from the autoencoder."""
    if decoder is None:
        decoder = getattr(model, "latent_decoder", None)
    if getattr(config, "latent", None) is not None and decoder is None:
        raise ValueError(f"this model samples the latents of the autoencoder {config.latent}; load it with "
                         "load_model, or pass decoder=")
    draw_shape = tuple(shape) if decoder is None else decoder.latent_shape(shape)
    num_classes = getattr(model.net.config, "num_classes", None)
    if labels is not None and num_classes is None:
        raise ValueError("this model is unconditional; it takes no labels")
    if guidance and labels is None:
        raise ValueError("guidance needs labels")
    if labels is not None and ((labels < 0) | (labels >= num_classes)).any():
        raise ValueError(f"labels must lie in 0..{num_classes - 1}")
    was_training = model.training
    model.eval()
    wrapped = ClassifierFreeGuidance(model, guidance, num_classes) if guidance else model
    out = []
    for start in range(0, n, batch_size):
        count = min(batch_size, n - start)
        noise = torch.stack([torch.randn(draw_shape, generator=torch.Generator().manual_seed(seed * 1_000_003 + k))
                             for k in range(start, start + count)]).to(device)
        cond = {} if labels is None else {"labels": labels[start:start + count].to(device)}
        drawn = sample(wrapped, model.process, noise, sampler=sampler or config.sampler,
                       steps=steps or config.sample_steps, prediction=model.prediction,
                       schedule=schedule or config.sample_schedule, cond=cond,
                       generator=torch.Generator().manual_seed(seed + start))
        out.append(drawn.cpu() if decoder is None else decoder.decode(drawn).cpu())
    model.train(was_training)
    return torch.cat(out)
