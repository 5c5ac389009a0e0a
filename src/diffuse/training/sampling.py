"""Sampling a trained model: the path shared by the trainer's sample grids and `diffuse sample`;
and scoring a text model of shapes against its captions, by its samples and by its loss."""

from __future__ import annotations

import torch

from ..guidance import ClassifierFreeGuidance, ClassifierGuidance
from ..samplers import sample
from ..text import WordTokenizer
from .config import TrainConfig


def starting_noise(shape, start: int, count: int, seed: int = 0) -> torch.Tensor:
    """The starting noise [count, *shape] of samples start..start+count-1: sample k is drawn from
    its own generator seeded by (seed, k), so it does not depend on the batch it is drawn in."""
    return torch.stack([torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed * 1_000_003 + k))
                        for k in range(start, start + count)])


@torch.no_grad()
def generate(model, config: TrainConfig, shape, n: int, *, labels: torch.Tensor | None = None,
             tokens: torch.Tensor | None = None, guidance: float = 0.0, classifier=None, classifier_scale: float = 1.0,
             sampler: str | None = None, steps: int | None = None, schedule: str | None = None,
             seed: int = 0, device="cpu", batch_size: int = 500, decoder=None) -> torch.Tensor:
    """n samples [n, *shape] in the data range. Sample k depends only on (seed, k), not on the
    batch it was drawn in: noise is drawn per sample from its own generator.

    `labels` [n] condition a class model, `tokens` [n, L] (WordTokenizer ids of one prompt per
    sample) a text model. `guidance` w is classifier-free guidance against the null class or
    the null (all-padding) text. `classifier` (a
    noise-aware classifier(x, t) -> logits, e.g. from `load_classifier`, trained on this model's
    process) adds classifier guidance of scale `classifier_scale` towards `labels`, for an
    unconditional model as well as a conditional one; with both, classifier-free guidance is the
    inner wrapper and classifier guidance the outer.

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
    if classifier is not None:
        check_classifier(classifier, model, draw_shape, decoder)
    if labels is not None and num_classes is None and classifier is None:
        raise ValueError("this model is unconditional; it takes no labels (unless a classifier guides it)")
    text = getattr(config, "cond", None) == "text"
    if tokens is not None and not text:
        raise ValueError("this model was not trained on text; it takes no prompt")
    if tokens is not None and (tokens.ndim != 2 or len(tokens) != n):
        raise ValueError(f"tokens must be [n={n}, L], got {tuple(tokens.shape)}")
    if guidance and labels is None and tokens is None:
        raise ValueError("guidance needs labels or a prompt")
    if guidance and num_classes is None and tokens is None:
        raise ValueError("classifier-free guidance (--guidance) needs a class-conditional model")
    if classifier is not None and labels is None:
        raise ValueError("classifier guidance needs labels")
    classes = num_classes if num_classes is not None else getattr(classifier, "num_classes", None)
    if labels is not None and classes is not None and ((labels < 0) | (labels >= classes)).any():
        raise ValueError(f"labels must lie in 0..{classes - 1}")
    modules = [m for m in (model, classifier) if isinstance(m, torch.nn.Module)]
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    wrapped = model
    if guidance:
        null = {"tokens": WordTokenizer.pad_id} if tokens is not None else {"labels": num_classes}
        wrapped = ClassifierFreeGuidance(model, guidance, null=null)
    if classifier is not None:
        wrapped = ClassifierGuidance(wrapped, classifier, model.process, classifier_scale,
                                     prediction=model.prediction, conditional_model=num_classes is not None)
    out = []
    for start in range(0, n, batch_size):
        count = min(batch_size, n - start)
        noise = starting_noise(draw_shape, start, count, seed).to(device)
        cond = {name: value[start:start + count].to(device)
                for name, value in (("labels", labels), ("tokens", tokens)) if value is not None}
        drawn = sample(wrapped, model.process, noise, sampler=sampler or config.sampler,
                       steps=steps or config.sample_steps, prediction=model.prediction,
                       schedule=schedule or config.sample_schedule, cond=cond,
                       generator=torch.Generator().manual_seed(seed + start))
        out.append(drawn.cpu() if decoder is None else decoder.decode(drawn).cpu())
    for m, mode in zip(modules, modes):
        m.train(mode)
    return torch.cat(out)


def sample_caption_errors(model, config: TrainConfig, tokenizer: WordTokenizer, captions: list[str], shape,
                          **sampling) -> list[str | None]:
    """One sample per caption from a text model, read back by the shapes detector: for each, None
    where it shows exactly its caption, else what it gets wrong first (one of the detector's
    ERROR_KINDS: count, colour, shape, relation).
    `sampling`: `generate`'s keywords (guidance, sampler, steps, schedule, seed, device, ...)."""
    from ..data.shapes_detector import caption_errors

    tokens = tokenizer.encode(captions, max_length=model.net.config.max_length)
    images = generate(model, config, shape, len(captions), tokens=tokens, **sampling)
    return caption_errors(images.clamp(-1, 1), captions)


def exact_caption_accuracy(model, config: TrainConfig, tokenizer: WordTokenizer, captions: list[str], shape,
                           **sampling) -> float:
    """The share of `sample_caption_errors`' samples read back as exactly their caption (each
    object's colour and shape, and the relation)."""
    from ..data.shapes_detector import error_mix

    return error_mix(sample_caption_errors(model, config, tokenizer, captions, shape, **sampling))["exact"]


def check_classifier(classifier, model, draw_shape, decoder=None) -> None:
    """Raise unless `classifier` can guide `model`: the same process (at a given t another process
    has another noise level, so the classifier would read x_t at the wrong one), the shape of the
    model's samples, and the model's classes when it has them."""
    process = getattr(classifier, "process", None)
    if process is None:
        raise ValueError("the classifier must declare the process it was trained on (.process); "
                         "train one with `diffuse train-classifier` and load it with load_classifier")
    if process.config() != model.process.config():
        raise ValueError(f"the classifier was trained on the process {process.config()}, but the model samples "
                         f"{model.process.config()}; classifier guidance needs the model's own process "
                         "(train the classifier with it: `diffuse train-classifier --process ...`)")
    if decoder is not None:
        raise ValueError("classifier guidance of a latent model is not supported: the classifier reads images, "
                         "the model samples latents")
    shape = getattr(classifier, "shape", None)
    if shape is not None and tuple(shape) != tuple(draw_shape):
        raise ValueError(f"the classifier was trained on data of shape {tuple(shape)}; this model samples "
                         f"{tuple(draw_shape)}")
    num_classes = getattr(model.net.config, "num_classes", None)
    if num_classes is not None and getattr(classifier, "num_classes", num_classes) != num_classes:
        raise ValueError(f"the classifier has {classifier.num_classes} classes, the model {num_classes}")


@torch.no_grad()
def caption_loss_rise(model, config: TrainConfig, tokenizer: WordTokenizer, images: torch.Tensor,
                      captions: list[str], repeats: int = 4, seed: int = 0, device="cpu",
                      batch_size: int = 500, canonical_wording: bool = False) -> dict[str, float | None]:
    """How much the model's own training loss on shapes `images` rises, as a share of its loss
    with their `captions`, when each caption is altered (the shapes ALTERATIONS: the same words
    bound another way) or replaced by the null text ("null").

    A model that reads which words occur but not how they bind scores an alteration like the
    caption itself: a rise near 0 for "relation" means it cannot tell "A left of B" from "A right
    of B", so its samples place the two objects by chance. Every variant is scored on the same
    noise levels and noise (`repeats` draws per image); an alteration's share is over the
    captions it turns into another picture (trading the colours of two red objects does not),
    and None when there are none. `canonical_wording`: the altered captions are worded as the
    model was trained, with "left of" or "above" only ("A right of B" becomes "B left of A")."""
    from ..data.shapes import ALTERATIONS, parse_caption

    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images for {len(captions)} captions")
    loss = config.denoising_loss(model.process)
    max_length = model.net.config.max_length

    def summed_losses(tokens: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(len(tokens), dtype=torch.float64)
        for r in range(repeats):
            for s in range(0, len(tokens), batch_size):
                draws = torch.Generator().manual_seed((seed * 1_000_003 + r) * 1_000_003 + s)
                cond = {"tokens": tokens[s:s + batch_size].to(device)}
                per = loss(model, images[s:s + batch_size].to(device), cond, draws, per_sample=True)
                total[s:s + batch_size] += per.double().cpu()
        return total

    parsed = [parse_caption(c) for c in captions]
    truth = summed_losses(tokenizer.encode(captions, max_length=max_length))
    rise = {}
    for part in ALTERATIONS:
        altered = [c.altered(part) if c.relation else c for c in parsed]
        if canonical_wording:
            altered = [a.canonical() for a in altered]
        changed = torch.tensor([a.canonical() != c.canonical() for a, c in zip(altered, parsed)])
        if not changed.any():
            rise[part] = None
            continue
        scores = summed_losses(tokenizer.encode([str(a) for a in altered], max_length=max_length))
        rise[part] = ((scores[changed] - truth[changed]).sum() / truth[changed].sum()).item()
    null = summed_losses(torch.full((len(captions), max_length), tokenizer.pad_id, dtype=torch.long))
    rise["null"] = ((null - truth).sum() / truth.sum()).item()
    return rise
