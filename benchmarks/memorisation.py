"""The memorisation audit on digits: is a model trained on 50 images caught copying, while a default
run stays at the floor of real held-out images?

    python benchmarks/memorisation.py --run runs/digits                   # trains the 50-image model here
    python benchmarks/memorisation.py --run runs/digits --overfit runs/digits-50 --pairs docs/audit-pairs.png

What is measured
----------------
The overfitted model: the `digits` recipe (class-conditional U-Net, EDM) trained on only --limit
training images (DataConfig.train_limit: a fixed, class-balanced 5 of each digit for 50) with the
whole set as one batch, for --train-steps steps, unless --overfit names such a run. The default
model: a run of the unchanged recipe on all 1437 training images (--run; `diffuse train --recipe
digits --out runs/digits --steps 2000`).

Each model draws --n samples (the held-out split's class mix, the run's own sampler) and is audited
against its own training set (diffuse.metrics.audit): the normalised l2 with its threshold at the 1%
quantile of one half of the 360 held-out images, the nearest/second-nearest ratio < 1/3, and both.
The floor is the same test on the other half of the held-out images (180 real digits the model never
saw): what a model that generalises perfectly is flagged at. CPU seconds are the process's, sampling
and scoring together.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from budget import set_threads, timed  # first: it sets OpenMP's wait policy

import diffuse
from diffuse.audit_cli import pair_picture
from diffuse.data import load_dataset
from diffuse.metrics.audit import audit_pipeline
from diffuse.metrics.features import plain_view
from diffuse.recipes import recipe
from diffuse.training import Engine


def overfit_run(folder: Path, limit: int, steps: int) -> str:
    """Train the digits recipe on `limit` training images, all of them in every batch."""
    config = recipe("digits").updated(train_limit=limit, batch_size=limit, steps=steps)
    (_, cpu, wall) = timed(Engine(config, folder, progress=False).fit)
    return f"trained on {limit} images for {steps} steps, {cpu / 60:.1f} CPU-min ({wall / 60:.1f} wall)"


def audited(run: str, n: int):
    pipeline = diffuse.load(run)
    data = plain_view(pipeline.config.data)
    train, heldout = load_dataset(data, "train"), load_dataset(data, "test")
    (samples, report), cpu, _ = timed(lambda: audit_pipeline(pipeline, n, train, heldout))
    return samples, train, report, cpu


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/digits", help="a default digits run (default: runs/digits)")
    parser.add_argument("--overfit", help="a digits run trained on few images (default: train one here)")
    parser.add_argument("--limit", type=int, default=50, help="training images of the overfitted model")
    parser.add_argument("--train-steps", dest="train_steps", type=int, default=1500,
                        help="its training steps (default: 1500)")
    parser.add_argument("--n", type=int, default=360, help="samples audited per model (default: 360)")
    parser.add_argument("--pairs", help="write the overfitted model's pairs picture here")
    parser.add_argument("--workdir", help="keep the trained run in this folder (default: a temporary one)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    with tempfile.TemporaryDirectory() as temporary:
        overfit = args.overfit
        if overfit is None:
            overfit = str(Path(args.workdir or temporary) / f"digits-{args.limit}")
            print(f"# overfitted model: {overfit_run(Path(overfit), args.limit, args.train_steps)}", flush=True)
        rows = []
        for name, run in ((f"overfitted ({args.limit} training images)", overfit), ("default run", args.run)):
            samples, train, report, cpu = audited(run, args.n)
            rows.append((name, run, report, cpu))
            if run == overfit and args.pairs:
                pair_picture(samples, train.data, report, args.pairs)
    threshold_of = lambda report: report["criteria"]["normalised_l2"]["threshold"]  # noqa: E731
    print(f"# {args.n} samples per model; floor: the held-out half the threshold never saw; "
          f"threshold: the 1% quantile of the other half\n")
    print("| model | images | n | normalised l2 < threshold | 1NN/2NN < 1/3 | both (extracted) | "
          "threshold | training duplicates | CPU s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, run, report, cpu in rows:
        for label, part in (("samples", report["generated"]), ("held-out real (floor)", report["floor"])):
            rate = part["rate"]
            print(f"| {name} | {label} | {part['n']} | {rate['normalised_l2']:.3f} | {rate['nn_ratio']:.3f} | "
                  f"{rate['both']:.3f} | {threshold_of(report):.3f} | {len(report['duplicates']['pairs'])} pairs "
                  f"in {report['duplicates']['n_train']} | {cpu:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
