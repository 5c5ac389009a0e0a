"""Watermarked sampling and detection with a pipeline: the key goes into the initial noise of a
deterministic sampler; an image is inverted to its noise by DDIM inversion (`diffuse.invert`) on
the same steps and the noise is tested against the key.

The images a detector sees are the model's range ([-1, 1]); attacks (`diffuse.watermark.attacks`)
act on [0, 1] pictures, as saved images are.
"""

from __future__ import annotations

import torch

from ..samplers import Generators, invert
from .keys import Key

DEFAULT_STEPS = 50  # the Tree-Ring paper's inversion steps
# Fixed-point re-reads per inversion step (`diffuse.invert`): each costs a model call, and the noise found
# is closer to the one drawn; on 8x8 digits Gaussian Shading with 256 nonces detects at AUC 0.993 with 2
# against 0.987 with none (docs/watermark.md).
DEFAULT_FIXED_POINT = 2


def _check_pipeline(pipeline, key: Key) -> None:
    if pipeline.codec is not None:
        raise ValueError("watermarking a latent model is not supported: the key lives in the latent noise, and "
                         "detection would need the images encoded back to latents")
    if tuple(pipeline.draw_shape) != key.shape:
        raise ValueError(f"the key was made for noise {list(key.shape)}; this model draws "
                         f"{list(pipeline.draw_shape)} (make a key for it: diffuse watermark key --run RUN)")


def watermarked_noise(key: Key, n: int, seed: int = 0, start: int = 0) -> torch.Tensor:
    """[n, *key.shape] the starting noise of samples start .. start + n - 1 of a call seeded `seed` (the
    noise `Pipeline.sample` would draw) with the key embedded; a key with nonces gives sample k the nonce
    its own generator draws next, so it too is a function of (seed, k)."""
    generators = Generators.seeded(seed, start, n)
    noise = generators.randn(key.shape)
    if getattr(key, "nonces", 1) == 1:
        return key.embed(noise)
    nonce = torch.cat([torch.randint(key.nonces, (1,), generator=g) for g in generators])
    return key.embed(noise, nonce)


def sample_watermarked(pipeline, key: Key, n: int, *, seed: int = 0, sampler: str = "ddim",
                       steps: int = DEFAULT_STEPS, **options) -> torch.Tensor:
    """n samples [n, *shape] drawn from the key's noise by a deterministic sampler (ddim by default, the one
    the detector inverts exactly); sample k is the unmarked sample k of the same seed with the key embedded
    in its noise."""
    _check_pipeline(pipeline, key)
    noise = watermarked_noise(key, n, seed)
    return pipeline.sample(n, noise=noise, seed=seed, sampler=sampler, steps=steps, **options)


@torch.no_grad()
def invert_images(pipeline, images: torch.Tensor, *, steps: int = DEFAULT_STEPS, fixed_point: int = 0,
                  batch_size: int = 500, cond: dict | None = None) -> torch.Tensor:
    """[n, *shape] images in the model's range -> the noise [n, *draw_shape] DDIM on `steps` draws them from
    (the pipeline's schedule; unconditional unless `cond` gives the model's conditions)."""
    model = pipeline.model
    training = getattr(model, "training", False)
    if isinstance(model, torch.nn.Module):
        model.eval()
    try:
        parameter = next(iter(getattr(model, "parameters", lambda: iter(()))()), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        dtype = parameter.dtype if parameter is not None else torch.float32
        out = []
        for start in range(0, len(images), batch_size):
            rows = slice(start, start + batch_size)
            part = {k: v[rows].to(device) for k, v in (cond or {}).items()}
            out.append(invert(model, pipeline.process, images[rows].to(device, dtype), steps, pipeline.prediction,
                              schedule=pipeline.schedule, cond=part, fixed_point=fixed_point).float().cpu())
    finally:
        if isinstance(model, torch.nn.Module):
            model.train(training)
    return torch.cat(out)


def detect(pipeline, images: torch.Tensor, key: Key, *, steps: int = DEFAULT_STEPS,
           fixed_point: int = DEFAULT_FIXED_POINT,
           batch_size: int = 500) -> dict[str, torch.Tensor]:
    """The key's test (`key.test`: statistic, p_value, evidence, ...) of each image [n, *shape] in the
    model's range, after inverting it to its noise on `steps` DDIM steps."""
    _check_pipeline(pipeline, key)
    if tuple(images.shape[1:]) != tuple(pipeline.shape):
        raise ValueError(f"images must be [n, {', '.join(map(str, pipeline.shape))}] for this model, "
                         f"got {tuple(images.shape)}")
    return key.test(invert_images(pipeline, images, steps=steps, fixed_point=fixed_point, batch_size=batch_size))


def calibrated_threshold(null_evidence: torch.Tensor, fpr: float) -> float:
    """The smallest evidence that at most a share `fpr` of unwatermarked pictures' evidence exceeds: call a
    picture watermarked when its evidence is above it (a false-positive rate measured, not assumed)."""
    if not 0 < fpr < 1 or len(null_evidence) == 0:
        raise ValueError(f"a threshold needs unwatermarked scores and a false-positive rate in (0, 1), got {fpr:g}")
    ordered = null_evidence.sort(descending=True).values
    return float(ordered[min(int(fpr * len(ordered)), len(ordered) - 1)])
