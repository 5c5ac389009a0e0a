"""Scoring a text model of shapes against its captions: by its samples and by its own loss.

Every function takes a sampling pipeline (`diffuse.load(run)`, or a training task's
`pipeline(model)`): it needs `.sample(n, tokens=..., ...)`, `.tokenizer`, `.loss` (the run's
denoising loss) and `.model`.
"""

from __future__ import annotations

import torch

from ..splits import HELDOUT
from .dataset import ALTERATIONS, parse_caption
from .detector import caption_errors, error_mix

# The splits a text run is scored on, and what each holds.
SPLITS = {"test": "seen combinations", HELDOUT: "held-out combinations"}


def caption_tokens(pipeline, captions: list[str]) -> torch.Tensor:
    return pipeline.prompt_tokens(captions, len(captions))[0]


def sample_caption_errors(pipeline, captions: list[str], **sampling) -> list[str | None]:
    """One sample per caption, read back by the shapes detector: for each, None where it shows
    exactly its caption, else what it gets wrong first (one of the detector's ERROR_KINDS: count,
    colour, shape, relation). `sampling`: `Pipeline.sample`'s keywords (guidance, sampler, steps,
    schedule, seed, ...)."""
    images = pipeline.sample(len(captions), tokens=caption_tokens(pipeline, captions), **sampling)
    return caption_errors(images.clamp(-1, 1), captions)


def exact_caption_accuracy(pipeline, captions: list[str], **sampling) -> float:
    """The share of `sample_caption_errors`' samples read back as exactly their caption (each
    object's colour and shape, and the relation)."""
    return error_mix(sample_caption_errors(pipeline, captions, **sampling))["exact"]


@torch.no_grad()
def caption_loss_rise(pipeline, images: torch.Tensor, captions: list[str], repeats: int = 4, seed: int = 0,
                      batch_size: int = 500, canonical_wording: bool = False) -> dict[str, float | None]:
    """How much the model's own training loss on shapes `images` rises, as a share of its loss
    with their `captions`, when each caption is altered (ALTERATIONS: the same words bound
    another way) or replaced by the null text ("null").

    A model that reads which words occur but not how they bind scores an alteration like the
    caption itself: a rise near 0 for "relation" means it cannot tell "A left of B" from "A right
    of B", so its samples place the two objects by chance. Every variant is scored on the same
    noise levels and noise (`repeats` draws per image); an alteration's share is over the
    captions it turns into another picture (trading the colours of two red objects does not),
    and None when there are none. `canonical_wording`: the altered captions are worded as the
    model was trained, with "left of" or "above" only ("A right of B" becomes "B left of A")."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images for {len(captions)} captions")
    model, loss = pipeline.model, pipeline.loss
    device = next(model.parameters()).device

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
    truth = summed_losses(caption_tokens(pipeline, captions))
    rise = {}
    for part in ALTERATIONS:
        altered = [c.altered(part) if c.relation else c for c in parsed]
        if canonical_wording:
            altered = [a.canonical() for a in altered]
        changed = torch.tensor([a.canonical() != c.canonical() for a, c in zip(altered, parsed)])
        if not changed.any():
            rise[part] = None
            continue
        scores = summed_losses(caption_tokens(pipeline, [str(a) for a in altered]))
        rise[part] = ((scores[changed] - truth[changed]).sum() / truth[changed].sum()).item()
    null = torch.full((len(captions), model.net.config.max_length), pipeline.tokenizer.pad_id, dtype=torch.long)
    rise["null"] = ((summed_losses(null) - truth).sum() / truth.sum()).item()
    return rise


def report(pipeline, load_split, n: int | None = None, seed: int = 0, **sampling) -> dict:
    """What `diffuse eval` measures of a text run, split by split (SPLITS): exact-caption accuracy of
    one sample per caption with the share of each first error, and the loss rises of
    `caption_loss_rise` on the split's own images. `load_split(split)` gives the split's data set."""
    out = {"exact_caption_accuracy": {}, "outcomes": {}, "loss_rise": {}}
    for split in SPLITS:
        dataset = load_split(split)
        index = [i % len(dataset) for i in range(n or len(dataset))]
        captions = [dataset.captions[i] for i in index]
        mix = error_mix(sample_caption_errors(pipeline, captions, seed=seed, **sampling))
        out["outcomes"][split], out["exact_caption_accuracy"][split] = mix, mix["exact"]
        out["loss_rise"][split] = caption_loss_rise(pipeline, dataset.data[index], captions, seed=seed)
        out.setdefault("captions", {})[split] = len(captions)
    return out
