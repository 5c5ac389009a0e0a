"""Watermarks in the initial noise, measured: detection (AUC, TPR at a false-positive rate fixed on
separate unwatermarked generations) of Tree-Ring and Gaussian-Shading keys, clean and under each
attack, and the sample quality (held-out FD) of watermarked against unwatermarked generations.

    python benchmarks/watermark.py --run RUN [--n 200] [--calibration 200] [--steps 50] [--threads 1]

Generations: `ddim` on --steps steps, unconditional, saved as 8-bit pictures (what a detector sees).
Unwatermarked: a calibration set (seed 1, --calibration images) that fixes each key's threshold at
--fpr on clean pictures, and a test set (seed 2, --n images); watermarked: --n per key, from the
test set's own noise with the key embedded (seed 2), so each watermarked picture has an unmarked
twin. Detection: DDIM inversion on the same steps, the key's test (`key.test`), its `evidence`
(higher = watermarked) as the score. Per key and condition: AUC (marked against unmarked test
pictures); TPR and the measured FPR at the calibrated threshold; TPR and FPR of the p-value test
p < --fpr, which needs no calibration but assumes the inverted noise is exactly standard normal.
FD: feature-network Fréchet distance to the test split, for the unmarked test set, the
calibration set (another unmarked draw: the FD's own noise) and each key's marked set.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from budget import set_threads, timed  # noqa: E402  first: it sets OpenMP's wait policy

import torch  # noqa: E402

import diffuse  # noqa: E402
from diffuse.data import from_unit, load_dataset, to_unit  # noqa: E402
from diffuse.metrics import feature_network, frechet_distance  # noqa: E402
from diffuse.samplers import Generators  # noqa: E402
from diffuse.watermark import (GaussianShadingKey, TreeRingKey, attack, calibrated_threshold,  # noqa: E402
                               invert_images, max_radius, sample_watermarked)

ATTACKS = ("jpeg:90", "jpeg:50", "jpeg:25", "crop:0.75", "blur:1", "noise:0.05", "rotation:15", "brightness:1.5")
KEYS = ("tree-ring:ring", "tree-ring:zero", "tree-ring:random", "tree-ring:ring:max", "gaussian-shading:1",
        "gaussian-shading:1:256")
CALIBRATION_SEED, TEST_SEED, ATTACK_SEED = 1, 2, 3


def make_key(spec: str, shape, seed: int = 0):
    """'tree-ring:PATTERN[:RADIUS|max]' (default radius: the paper's scaled) or
    'gaussian-shading:BITS_PER_ELEMENT[:NONCES]'."""
    kind, _, option = spec.partition(":")
    if kind == "tree-ring":
        pattern, _, radius = option.partition(":")
        radius = max_radius(shape) if radius == "max" else int(radius) if radius else None
        return TreeRingKey.create(shape, pattern or "ring", radius, seed=seed)
    if kind == "gaussian-shading":
        bits, _, nonces = option.partition(":")
        return GaussianShadingKey.create(shape, seed=seed, bits_per_element=int(bits or 1), nonces=int(nonces or 1))
    raise ValueError(f"unknown key {spec!r}: tree-ring:PATTERN[:RADIUS] or gaussian-shading:BITS_PER_ELEMENT")


def as_saved(images: torch.Tensor) -> torch.Tensor:
    """Model-range images as 8-bit pictures in [0, 1], as a file would hold them."""
    return (to_unit(images) * 255).round() / 255


def auc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    diff = positive[:, None] - negative[None]
    return float((diff > 0).double().mean() + 0.5 * (diff == 0).double().mean())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a trained image run")
    parser.add_argument("--data", help="the data set whose test split FD is measured against (default: the run's)")
    parser.add_argument("--n", type=int, default=200, help="test pictures per set (unmarked, and each key's)")
    parser.add_argument("--calibration", type=int, default=200, help="unmarked pictures that fix the thresholds")
    parser.add_argument("--steps", type=int, default=50, help="ddim steps, for sampling and for inversion")
    parser.add_argument("--fixed-point", dest="fixed_point", type=int, default=0, help="inversion's re-reads per step")
    parser.add_argument("--fpr", type=float, default=0.01, help="the false-positive rate the thresholds are set at")
    parser.add_argument("--keys", default=",".join(KEYS), help="comma-separated: tree-ring:PATTERN[:RADIUS|max], "
                                                               "gaussian-shading:BITS_PER_ELEMENT[:NONCES]")
    parser.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated attack specs")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    pipeline = diffuse.load(args.run)
    data = args.data or pipeline.info.source
    shape = pipeline.draw_shape
    keys = {spec: make_key(spec, shape) for spec in args.keys.split(",")}
    conditions = ["clean", *[a for a in args.attacks.split(",") if a]]
    print(f"run {args.run}: {list(shape)} noise, ddim {args.steps} steps, inversion fixed-point {args.fixed_point}, "
          f"{torch.get_num_threads()} thread(s); {args.n} test pictures per set, {args.calibration} calibration")
    for spec, key in keys.items():
        print(f"  key {spec}: {key.to_dict()}"[:200])
    cpu = {"sample": 0.0, "invert": 0.0}

    def generate(n: int, seed: int, key=None) -> torch.Tensor:
        draw = (lambda: pipeline.sample(n, seed=seed, sampler="ddim", steps=args.steps)) if key is None else \
            (lambda: sample_watermarked(pipeline, key, n, seed=seed, steps=args.steps))
        images, seconds, _ = timed(draw)
        cpu["sample"] += seconds
        return as_saved(images)

    def invert(pictures: torch.Tensor) -> torch.Tensor:
        noise, seconds, _ = timed(lambda: invert_images(pipeline, from_unit(pictures), steps=args.steps,
                                                         fixed_point=args.fixed_point))
        cpu["invert"] += seconds
        return noise

    calibration = generate(args.calibration, CALIBRATION_SEED)
    plain = generate(args.n, TEST_SEED)
    marked = {spec: generate(args.n, TEST_SEED, key) for spec, key in keys.items()}
    calibration_noise = invert(calibration)
    thresholds = {spec: calibrated_threshold(key.test(calibration_noise)["evidence"], args.fpr)
                  for spec, key in keys.items()}
    results = {spec: {} for spec in keys}
    for condition in conditions:
        seen = (lambda x: x) if condition == "clean" else (lambda x: attack(x, condition, seed=ATTACK_SEED))
        null_noise = invert(seen(plain))
        for spec, key in keys.items():
            null = key.test(null_noise)
            positive = key.test(invert(seen(marked[spec])))
            results[spec][condition] = {
                "auc": auc(positive["evidence"], null["evidence"]),
                "tpr": float((positive["evidence"] > thresholds[spec]).double().mean()),
                "fpr": float((null["evidence"] > thresholds[spec]).double().mean()),
                "tpr_p": float((positive["p_value"] < args.fpr).double().mean()),
                "fpr_p": float((null["p_value"] < args.fpr).double().mean())}
        print(f"  {condition} done ({cpu['sample'] + cpu['invert']:.0f} CPU s so far)", file=sys.stderr, flush=True)

    print(f"\nDetection: AUC / TPR at the threshold set at {args.fpr:g} FPR on {args.calibration} clean unmarked "
          f"pictures (measured FPR on {args.n} unmarked test pictures)")
    print("| key | " + " | ".join(conditions) + " |")
    print("|---|" + "---|" * len(conditions))
    for spec in keys:
        cells = [f"{r['auc']:.3f} / {r['tpr']:.2f} ({r['fpr']:.2f})" for r in results[spec].values()]
        print(f"| {spec} | " + " | ".join(cells) + " |")
    print(f"\nThe p-value test alone (p < {args.fpr:g}, no calibration): TPR (FPR) on the same pictures")
    print("| key | " + " | ".join(conditions) + " |")
    print("|---|" + "---|" * len(conditions))
    for spec in keys:
        cells = [f"{r['tpr_p']:.2f} ({r['fpr_p']:.2f})" for r in results[spec].values()]
        print(f"| {spec} | " + " | ".join(cells) + " |")

    network = feature_network(data)
    real = network.features(load_dataset(data, "test").data)
    print(f"\nSample quality: FD to the test split ({len(real)} images), {args.n} generations each")
    print("| generations | FD |")
    print("|---|---|")
    fd_sets = {"unmarked (test seed)": plain, "unmarked (calibration seed)": calibration[:args.n],
               **{f"marked, {spec}": marked[spec] for spec in keys}}
    # Gaussian Shading's noise is exactly normal over keys: a fresh key per picture (its own stream seed) shows
    # what one key shared by every picture costs
    fresh = torch.cat([make_key("gaussian-shading:1", shape, seed=1000 + k).embed(
        Generators.seeded(TEST_SEED, k, 1).randn(shape)) for k in range(args.n)])
    images, seconds, _ = timed(lambda: pipeline.sample(args.n, noise=fresh, seed=TEST_SEED, sampler="ddim",
                                                       steps=args.steps))
    cpu["sample"] += seconds
    fd_sets["marked, gaussian-shading:1, a fresh key per picture"] = as_saved(images)
    for name, pictures in fd_sets.items():
        print(f"| {name} | {frechet_distance(network.features(from_unit(pictures)), real):.2f} |")
    print(f"\nCPU seconds: sampling {cpu['sample']:.0f}, inversion {cpu['invert']:.0f}")


if __name__ == "__main__":
    main()
