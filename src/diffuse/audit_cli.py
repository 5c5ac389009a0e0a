"""`diffuse audit`: checks of what a trained run has learned; the first is memorisation.

    diffuse audit memorisation RUN --n 500 --out DIR

draws N samples, flags those that are copies of training images (diffuse.metrics.audit: the
calibrated normalised l2 and the nearest/second-nearest ratio), applies the same test to real
held-out images (the false-positive floor) and to the training set itself (its near-duplicates),
and writes DIR/report.json and DIR/pairs.png: each flagged sample beside its nearest training
image, or, when none is flagged, the closest few, titled as not flagged.
"""

from __future__ import annotations

import json
from pathlib import Path

# Most pairs a picture shows (the closest first), and how many it shows when none is flagged.
MAX_PAIRS = 64
CLOSEST_SHOWN = 8
PAIRS_PER_ROW = 4
TITLE_HEIGHT = 16


def add_parser(commands) -> None:
    from .cli_args import number, sampling_arguments
    from .metrics.audit import CALIBRATION_QUANTILE

    audit = commands.add_parser("audit", help="audit a trained run (memorisation: copies of training images)")
    checks = audit.add_subparsers(required=True, parser_class=type(audit))
    memorisation = checks.add_parser(
        "memorisation", help="generate, flag samples that copy training images, beside the rate for real "
                             "held-out images (the floor) and the training set's own near-duplicates")
    sampling_arguments(memorisation)
    memorisation.add_argument("--n", type=number(int, 1), default=500, help="number of samples (default: 500)")
    memorisation.add_argument("--out", required=True, help="folder for report.json and pairs.png")
    memorisation.add_argument("--data", help="the training data (default: the run's own; needed for a diffusers "
                                             "folder)")
    memorisation.add_argument("--quantile", type=float, default=CALIBRATION_QUANTILE,
                              help="the fraction of real held-out images the calibrated normalised-l2 threshold "
                                   f"flags (default: {CALIBRATION_QUANTILE})")
    memorisation.add_argument("--no-duplicates", dest="duplicates", action="store_false",
                              help="skip the search for near-duplicates within the training set "
                                   "(quadratic in its size)")
    memorisation.set_defaults(handler=run)


def pair_picture(samples, train_images, report: dict, path) -> Path:
    """Each extracted sample beside its nearest training image, closest first (at most MAX_PAIRS); when
    none is extracted, the CLOSEST_SHOWN samples nearest a training image, titled as not flagged."""
    import numpy as np
    import torch
    from PIL import Image, ImageDraw

    from .files import atomic_write
    from .plotting import image_grid

    generated = report["generated"]
    nearest = torch.tensor(generated["samples"]["nearest"])
    score = torch.tensor(generated["samples"]["normalised_l2"])
    extracted = torch.tensor(generated["extracted"], dtype=torch.long)
    if len(extracted):
        shown = extracted[score[extracted].argsort()][:MAX_PAIRS]
        title = f"{len(extracted)} of {generated['n']} extracted: sample | nearest training image"
    else:
        shown = score.argsort()[:CLOSEST_SHOWN]
        title = f"none of {generated['n']} extracted; the {len(shown)} closest: sample | nearest training image"
    # One cell a pair: the sample, a one-pixel grey divider, its nearest training image; the pairs
    # stand three pixels apart, so which two images belong together is plain at a glance.
    left, right = samples[shown], train_images[nearest[shown]]
    divider = torch.zeros(*left.shape[:-1], 1)
    pairs = torch.cat([left, divider, right], dim=-1)
    scale = max(1, 64 // samples.shape[-1])
    grid = image_grid(pairs, nrow=min(PAIRS_PER_ROW, len(shown)), scale=scale, pad=3 * scale)
    grid = grid.repeat(3, axis=-1) if grid.shape[-1] == 1 else grid
    width = max(grid.shape[1], 6 * len(title) + 8)
    canvas = np.full((grid.shape[0] + TITLE_HEIGHT, width, 3), 255, dtype=np.uint8)
    canvas[TITLE_HEIGHT:, :grid.shape[1]] = grid
    image = Image.fromarray(canvas)
    ImageDraw.Draw(image).text((4, 2), title, fill="black")
    with atomic_write(path, "wb") as f:
        image.save(f, format="PNG", optimize=True)
    return Path(path)


def _rate_line(name: str, rates: dict, n: int) -> str:
    return (f"{name:<26}{n:>7}{rates['normalised_l2']:>16.4f}{rates['nn_ratio']:>12.4f}{rates['both']:>12.4f}")


def run(args, given: dict) -> int:
    from .data import load_dataset
    from .files import write_text_atomic
    from .metrics.audit import audit_pipeline
    from .metrics.features import plain_view
    from .runs import load, load_classifier

    if not 0 < args.quantile < 1:
        raise ValueError(f"--quantile must lie in (0, 1), got {args.quantile}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder for report.json and pairs.png")
    pipeline = load(args.run, ema=not args.no_ema, device=args.device or "cpu", diffusers_config=args.diffusers_config)
    if pipeline.info.modality != "image":
        raise ValueError(f"the memorisation audit compares images; this run's data are {pipeline.info.modality}s")
    if pipeline.condition("tokens") is not None:
        raise ValueError("the memorisation audit draws unconditional or class-conditional samples; this run reads text")
    data = args.data or (pipeline.config.data if pipeline.config is not None else None)
    if data is None:
        raise ValueError(f"{args.run} is a diffusers folder, with no data set of its own: give --data NAME")
    # The images as they are, without training's flips or random crops.
    train, heldout = (load_dataset(plain_view(data), split) for split in ("train", "test"))
    samples, report = audit_pipeline(pipeline, args.n, train, heldout, quantile=args.quantile, seed=args.seed,
                                     duplicates=args.duplicates, guidance=args.guidance, sampler=args.sampler,
                                     steps=args.steps, schedule=args.schedule, classifier_scale=args.classifier_scale,
                                     classifier=load_classifier(args.classifier) if args.classifier else None)
    report["run"], report["data"] = str(args.run), train.source
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "report.json", json.dumps(report, indent=1))
    pair_picture(samples, train.data, report, out / "pairs.png")
    threshold = report["criteria"]["normalised_l2"]["threshold"]
    print(f"memorisation audit of {args.run}: {args.n} samples against {len(train)} training images")
    print(f"{'flagged':<26}{'n':>7}{'normalised l2':>16}{'1NN/2NN':>12}{'both':>12}")
    print(_rate_line("samples", report["generated"]["rate"], report["generated"]["n"]))
    print(_rate_line("held-out images (floor)", report["floor"]["rate"], report["floor"]["n"]))
    print(f"thresholds: normalised l2 < {threshold:.4f} (the {args.quantile:g} quantile of "
          f"{report['calibration']['n']} held-out images), 1NN/2NN < {report['criteria']['nn_ratio']['threshold']:.4f}")
    if "duplicates" in report:
        pairs = report["duplicates"]["pairs"]
        print(f"training-set near-duplicates: {len(pairs)} pair(s)"
              + (": " + ", ".join(f"{p['a']}~{p['b']}" for p in pairs[:5]) + (" ..." if len(pairs) > 5 else "")
                 if pairs else ""))
    print(f"wrote {out / 'report.json'} and {out / 'pairs.png'}")
    return 0
