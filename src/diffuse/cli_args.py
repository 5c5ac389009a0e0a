"""The flags the commands share (reading labels and numbers, the sampling options, output paths),
below every command's module so each can import them."""

from __future__ import annotations

import argparse
import math
from pathlib import Path


def parse_labels(text: str | None) -> list[int] | None:
    """'0-9' -> [0..9]; '3,5,7' -> [3, 5, 7]; ranges and lists mix ('0-2,7')."""
    if text is None:
        return None
    labels = []
    for part in text.split(","):
        part = part.strip()
        lo, dash, hi = part.partition("-")
        try:
            labels += list(range(int(lo), int(hi) + 1)) if dash else [int(part)]
        except ValueError:
            raise ValueError(f"cannot read labels {text!r}: use a range like 0-9 or a list like 3,5,7") from None
    if not labels:
        raise ValueError(f"no labels in {text!r}")
    return labels


def number(kind, low: float = -math.inf, optional: bool = False):
    """An argparse type: a finite int or float >= low, or "none" when optional; the message names
    the accepted range."""
    def parse(text: str):
        if optional and text.lower() in ("none", "null"):
            return None
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        if not math.isfinite(value) or value < low:
            bound = f" >= {low:g}" if math.isfinite(low) else ""
            raise argparse.ArgumentTypeError(f"expected a finite number{bound}{', or none' if optional else ''}, "
                                             f"got {text!r}")
        return value
    parse.__name__ = kind.__name__
    return parse


def check_out(path: str, suffixes: tuple[str, ...]) -> Path:
    """An output path, checked before any work: its suffix, and not a folder."""
    out = Path(path)
    if out.suffix not in suffixes:
        raise ValueError(f"--out must end in {' or '.join(suffixes)}, got {out.name!r}")
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give a file name ending in {' or '.join(suffixes)}")
    return out


def sampling_arguments(parser: argparse.ArgumentParser) -> None:
    from .samplers import SCHEDULES, available

    parser.add_argument("run", help="run directory, checkpoint folder, diffusers pipeline folder or single-file "
                                    "checkpoint (.safetensors, with --diffusers-config)")
    parser.add_argument("--diffusers-config", help="for a single-file checkpoint: a diffusers folder of the same "
                                                   "architecture, whose configs and tokenizer it needs")
    parser.add_argument("--sampler", choices=available(), help="default: the run's")
    parser.add_argument("--steps", type=number(int, 1), help="sampler steps (default: the run's)")
    parser.add_argument("--schedule", choices=("auto", *SCHEDULES), help="step schedule (default: the run's)")
    parser.add_argument("--guidance", type=number(float, 0.0), default=0.0,
                        help="classifier-free guidance weight w >= 0 (default: 0, none)")
    parser.add_argument("--classifier", help="a classifier run (diffuse train --task classifier) to guide towards "
                                             "the labels")
    parser.add_argument("--classifier-scale", dest="classifier_scale", type=number(float, 0.0), default=1.0,
                        help="classifier guidance scale s >= 0 (default 1: the class-conditional distribution "
                             "for an exact classifier)")
    parser.add_argument("--seed", type=number(int, 0), default=0, help="sample k depends on (seed, k) only (default: 0)")
    parser.add_argument("--no-ema", dest="no_ema", action="store_true", help="use the raw weights, not the EMA")
    parser.add_argument("--device", help="cpu | cuda | cuda:N (default: cpu)")


def fit(config, args, trained: str = ""):
    """Train `config` into --out with the flags every training command shares (--resume, --overwrite,
    --device, --quiet) and, on rank 0, print what was trained and the task's report; the engine on
    rank 0 (for the caller's own last lines), else None."""
    from .training import Engine

    engine = Engine(config, args.out, resume=args.resume, overwrite=args.overwrite, device=args.device,
                    progress=not args.quiet)
    last = engine.fit()
    if engine.rank != 0:
        return None
    print(f"trained {trained}{engine.step} steps in {engine.elapsed / 60:.1f} min; checkpoint {last}")
    for line in engine.task.report(engine.test_metrics):
        print(line)
    return engine


def cycled_labels(text: str | None, n: int):
    """--labels as [n] class labels, the list cycled over the samples; None without the flag."""
    import torch

    labels = parse_labels(text)
    return None if labels is None else torch.tensor([labels[i % len(labels)] for i in range(n)])


# -- the .npz contract of sampled and edited images ------------------------------------------------

def npz_images(images):
    """Images [N, C, H, W] in [-1, 1] as an .npz holds them: float32 [N, H, W] (grey) or [N, H, W, C] in [0, 1]."""
    import numpy as np

    from .data import to_unit

    pixels = to_unit(images).permute(0, 2, 3, 1).numpy().astype(np.float32)
    return pixels[..., 0] if pixels.shape[-1] == 1 else pixels


def npz_labels(labels, n: int):
    """The labels an .npz holds: the samples' classes, or -1 for none."""
    import numpy as np

    return labels.numpy() if labels is not None else np.full(n, -1, dtype=np.int64)
