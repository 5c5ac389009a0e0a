"""`diffuse watermark`: keys in the initial noise, watermarked samples, detection, attacks.

    diffuse watermark key --kind tree-ring --run RUN --out KEY.json          (or --shape C,H,W)
    diffuse watermark embed RUN --key KEY.json --n 16 --out marked.npz       (or .png)
    diffuse watermark detect RUN --key KEY.json --input marked.npz [--json scores.json]
    diffuse watermark attack --input marked.npz --attack jpeg:50 --out attacked.npz

Samples are drawn from the key's noise by a deterministic sampler (ddim by default) and detected by
DDIM inversion on --steps steps: give detect the steps the samples were drawn with. IMAGES are what
`diffuse edit` reads: a picture, a folder of pictures or an .npz of `images` in [0, 1].
"""

from __future__ import annotations

import json
from pathlib import Path


def add_parser(commands) -> None:
    from .cli_args import number, sampling_arguments
    from .watermark.attacks import DEFAULTS
    from .watermark.detection import DEFAULT_FIXED_POINT, DEFAULT_STEPS
    from .watermark.keys import DEFAULT_NONCES, TREE_RING_PATTERNS, TREE_RING_RADIUS, TREE_RING_SIDE

    watermark = commands.add_parser("watermark", help="watermarks in the initial noise: make a key, sample with "
                                                      "it, detect it, attack the pictures")
    actions = watermark.add_subparsers(dest="action", required=True, metavar="ACTION")

    key = actions.add_parser("key", help="make a key (JSON) for a run's noise")
    key.add_argument("--kind", required=True, choices=("tree-ring", "gaussian-shading"))
    where = key.add_mutually_exclusive_group(required=True)
    where.add_argument("--run", help="the run whose noise the key marks (its shape)")
    where.add_argument("--shape", help="the noise's shape C,H,W instead of a run")
    key.add_argument("--pattern", choices=TREE_RING_PATTERNS, default="ring", help="tree-ring: the key's values")
    key.add_argument("--radius", type=number(int, 1),
                     help=f"tree-ring: the disc of frequencies (default: the paper's {TREE_RING_RADIUS} on "
                          f"{TREE_RING_SIDE}x{TREE_RING_SIDE} scaled to the noise; capped to what fits)")
    key.add_argument("--channel", type=number(int, 0), default=0, help="tree-ring: the channel marked")
    key.add_argument("--bits", type=number(int, 1), help="gaussian-shading: message length (default: up to 32, "
                                                         "a divisor of the element bits)")
    key.add_argument("--bits-per-element", dest="bits_per_element", type=number(int, 1), default=1,
                     help="gaussian-shading: bits per noise element, 2^b quantile buckets (default 1: the sign)")
    key.add_argument("--nonces", type=number(int, 1),
                     help="gaussian-shading: key streams, one drawn per picture and all tried by the detector "
                          f"(more: more diverse pictures, a p-value that pays for the search; default {DEFAULT_NONCES})")
    key.add_argument("--seed", type=number(int, 0), default=0, help="the key's randomness (default 0)")
    key.add_argument("--out", required=True, help="KEY.json")
    key.set_defaults(handler=make_key)

    embed = actions.add_parser("embed", help="draw watermarked samples from a run")
    sampling_arguments(embed)
    embed.set_defaults(sampler="ddim", steps=DEFAULT_STEPS)
    embed.add_argument("--key", required=True, help="KEY.json")
    embed.add_argument("--n", type=number(int, 1), default=16, help="number of samples (default 16)")
    embed.add_argument("--labels", help="class labels to condition on, cycled (default: unconditional)")
    embed.add_argument("--out", required=True, help="FILE.png or FILE.npz")
    embed.set_defaults(handler=run_embed)

    detect = actions.add_parser("detect", help="test images for a key: invert each to its noise and score it")
    sampling_arguments(detect)
    detect.set_defaults(steps=DEFAULT_STEPS)
    detect.add_argument("--key", required=True, help="KEY.json")
    detect.add_argument("--input", required=True, help="a picture, a folder of pictures or an .npz of images")
    detect.add_argument("--fixed-point", dest="fixed_point", type=number(int, 0), default=DEFAULT_FIXED_POINT,
                        help="fixed-point re-reads per inversion step (closer inversion, one more model call each; "
                             f"default {DEFAULT_FIXED_POINT})")
    detect.add_argument("--alpha", type=float, default=0.01,
                        help="call an image watermarked when its p-value is below this (default 0.01)")
    detect.add_argument("--calibrate", type=number(int, 1),
                        help="also draw this many unwatermarked samples (ddim, --steps; their seed derived from "
                             "--seed, apart from the seeds embed draws with) and call an "
                             "image watermarked when its evidence beats all but a share --alpha of theirs: a "
                             "threshold with a measured false-positive rate instead of the p-value's assumption")
    detect.add_argument("--json", help="also write every image's scores to this JSON file")
    detect.set_defaults(handler=run_detect)

    attack = actions.add_parser("attack", help="attack pictures: jpeg, crop, blur, noise, rotation, brightness")
    attack.add_argument("--input", required=True, help="an .npz of images in [0, 1] (or a picture or folder, "
                                                       "with --size)")
    attack.add_argument("--attack", required=True, action="append",
                        help="NAME[:VALUE], applied in order when repeated; "
                             + ", ".join(f"{k} (default {v:g})" for k, v in DEFAULTS.items()))
    attack.add_argument("--seed", type=number(int, 0), default=0, help="the random attacks' seed (default 0)")
    attack.add_argument("--out", required=True, help="FILE.npz or FILE.png")
    attack.set_defaults(handler=run_attack)


def make_key(args, given: dict) -> int:
    import warnings

    from .cli_args import check_out
    from .watermark.keys import DEFAULT_NONCES, GaussianShadingKey, TreeRingKey, save_key

    out = check_out(args.out, (".json",))
    if args.run:
        from .runs import load
        shape = load(args.run).draw_shape
    else:
        try:
            shape = tuple(int(s) for s in args.shape.split(","))
        except ValueError:
            raise ValueError(f"--shape is C,H,W, e.g. 1,28,28; got {args.shape!r}") from None
    if args.kind == "tree-ring":
        if args.bits is not None or args.bits_per_element != 1 or args.nonces is not None:
            raise ValueError("--bits, --bits-per-element and --nonces are gaussian-shading's; a tree-ring key takes "
                             "--pattern, --radius and --channel")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            key = TreeRingKey.create(shape, args.pattern, args.radius, args.channel, args.seed)
        for w in caught:
            print(f"note: {w.message}")
    else:
        if args.radius is not None or args.channel != 0 or args.pattern != "ring":
            raise ValueError("--pattern, --radius and --channel are tree-ring's; a gaussian-shading key takes "
                             "--bits, --bits-per-element and --nonces")
        nonces = DEFAULT_NONCES if args.nonces is None else args.nonces
        key = GaussianShadingKey.create(shape, args.bits, args.seed, args.bits_per_element, nonces)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_key(key, out)
    print(f"wrote a {key.kind} key for noise {list(key.shape)} to {out}")
    return 0


def _load(args):
    from .runs import load

    pipeline = load(args.run, ema=not args.no_ema, device=args.device or "cpu", diffusers_config=args.diffusers_config)
    if pipeline.info.modality != "image":
        raise ValueError(f"diffuse watermark works on images; this run's data are {pipeline.info.modality}s")
    return pipeline


CALIBRATION_KEY = 7  # the calibration samples' seed is mixed_seed(--seed, this)

# Samplers that add fresh noise on the way: the image no longer follows from its initial noise alone.
STOCHASTIC_SAMPLERS = ("ddpm", "euler_ancestral", "pc", "sde", "sde_dpmpp_2m", "sde_dpmpp_3m")


def _check_deterministic(sampler: str) -> None:
    from .samplers import posterior_samplers

    if sampler in posterior_samplers() or sampler in STOCHASTIC_SAMPLERS:
        raise ValueError(f"the key lives in the initial noise: sample with a deterministic sampler (ddim, heun, "
                         f"dpmpp_2m, ...), not {sampler!r}")


def run_embed(args, given: dict) -> int:
    import numpy as np

    from .cli_args import check_out, cycled_labels, npz_images, npz_labels
    from .files import atomic_write
    from .plotting import save_image_grid
    from .watermark import load_key, sample_watermarked

    out = check_out(args.out, (".png", ".npz"))
    key = load_key(args.key)
    _check_deterministic(args.sampler)
    if args.classifier:
        raise ValueError("watermarked sampling takes no classifier guidance")
    pipeline = _load(args)
    labels = cycled_labels(args.labels, args.n)
    images = sample_watermarked(pipeline, key, args.n, seed=args.seed, sampler=args.sampler, steps=args.steps,
                                labels=labels, guidance=args.guidance, schedule=args.schedule)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".png":
        save_image_grid(images, out)
    else:
        with atomic_write(out) as f:
            np.savez(f, images=npz_images(images), labels=npz_labels(labels, args.n))
    print(f"wrote {args.n} samples watermarked with the {key.kind} key {args.key} to {out} "
          f"({args.sampler}, {args.steps} steps; detect with --steps {args.steps})")
    return 0


def run_detect(args, given: dict) -> int:
    import math

    from .edit_cli import read_inputs
    from .files import write_text_atomic
    from .randomness import mixed_seed
    from .watermark import calibrated_threshold, detect, load_key

    if not 0 < args.alpha < 1:
        raise ValueError(f"--alpha is a false-positive rate in (0, 1), got {args.alpha:g}")
    if args.sampler not in (None, "ddim"):
        raise ValueError("detection inverts with DDIM (the one inversion there is); it takes no --sampler")
    key = load_key(args.key)
    pipeline = _load(args)
    images = read_inputs(args.input, pipeline.shape)[0]
    scores = detect(pipeline, images, key, steps=args.steps, fixed_point=args.fixed_point)
    rows = [{"image": k, **{name: float(v[k]) for name, v in scores.items()}} for k in range(len(images))]
    threshold = None
    if args.calibrate:
        # a seed of its own: samples that shared the tested pictures' noise would not be independent of them
        plain = pipeline.sample(args.calibrate, seed=mixed_seed(args.seed, CALIBRATION_KEY), sampler="ddim",
                                steps=args.steps)
        null = detect(pipeline, plain, key, steps=args.steps, fixed_point=args.fixed_point)["evidence"]
        threshold = calibrated_threshold(null, args.alpha)
    for r in rows:
        r["watermarked"] = r["p_value"] < args.alpha if threshold is None else r["evidence"] > threshold
    marked = sum(r["watermarked"] for r in rows)
    name = "distance" if key.kind == "tree-ring" else "statistic"
    label = "L1 distance" if key.kind == "tree-ring" else "bit agreement"
    print(f"image  {label:>13}  {'p-value':>9}  evidence  watermarked")
    for r in rows:
        print(f"{r['image']:5d}  {r[name]:13.4f}  {r['p_value']:9.3g}  {r['evidence']:8.2f}  "
              f"{'yes' if r['watermarked'] else 'no'}")
    if threshold is None:
        print(f"{marked} of {len(rows)} watermarked at p < {args.alpha:g} ({key.kind} key, {args.steps} DDIM steps); "
              "the p-values assume the inverted noise is exactly standard normal: --calibrate N measures a "
              "threshold on unwatermarked samples instead")
    else:
        print(f"{marked} of {len(rows)} watermarked: evidence above {threshold:.3f}, which {args.alpha:g} of "
              f"{args.calibrate} unwatermarked samples exceed at most ({key.kind} key, {args.steps} DDIM steps)")
    if args.json:
        summary = {"key": str(args.key), "kind": key.kind, "steps": args.steps, "fixed_point": args.fixed_point,
                   "alpha": args.alpha, "calibration_samples": args.calibrate, "threshold": threshold,
                   "watermarked": marked,
                   "images": [{k: (v if math.isfinite(v) else None) if isinstance(v, float) else v
                               for k, v in r.items()} for r in rows]}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(args.json), json.dumps(summary, indent=2) + "\n")
    return 0


def run_attack(args, given: dict) -> int:
    import numpy as np
    import torch

    from .cli_args import check_out
    from .files import atomic_write
    from .plotting import save_image_grid
    from .watermark import attack

    out = check_out(args.out, (".png", ".npz"))
    source = Path(args.input)
    if source.suffix != ".npz" or not source.is_file():
        raise ValueError(f"--input must be an .npz of images in [0, 1] (as embed writes); got {source}")
    with np.load(source) as stored:
        if "images" not in stored:
            raise ValueError(f"{source} has no 'images' array")
        arrays = {k: stored[k] for k in stored.files}
    pixels = torch.from_numpy(np.asarray(arrays["images"], dtype=np.float32))
    grey = pixels.ndim == 3
    x = (pixels[:, None] if grey else pixels.permute(0, 3, 1, 2))
    for spec in args.attack:
        x = attack(x, spec, seed=args.seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".png":
        save_image_grid(x * 2 - 1, out)
    else:
        arrays["images"] = (x[:, 0] if grey else x.permute(0, 2, 3, 1)).numpy().astype(np.float32)
        with atomic_write(out) as f:
            np.savez(f, **arrays)
    print(f"wrote {len(x)} pictures attacked by {' then '.join(args.attack)} to {out}")
    return 0
