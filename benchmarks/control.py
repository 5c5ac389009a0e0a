"""The control adapter on shapes: does a fine-tuned adapter make the model draw the shape it is given?

    python benchmarks/control.py                       # base + adapter, about 14 CPU-minutes
    python benchmarks/control.py --base runs/shapes-u  # adapt a trained unconditional shapes run
    python benchmarks/control.py --quick               # smoke run, about 2 CPU-minutes

What is measured
----------------
A base model: an unconditional U-Net of `shapes` (32x32, one or two coloured shapes on black;
levels 32 -> 16 -> 8, 16 channels, attention at 8x8), the EDM recipe, batch 64, trained for
--base-minutes of process CPU time (benchmarks/budget.py), unless --base names a trained run. Then
the control task (`diffuse train-control`) fine-tunes a control adapter on it for
--control-minutes: the control image of each training image is its shapes' outline
(data/outline.py), and only the adapter learns. Both budgets count CPU time, all threads, so a
shared machine changes the wall time, not the result.

For the first --n images of the test split (never seen in training), one sample is drawn per
image's outline with the base run's sampler (Heun, 18 steps), from the same noise:

  controlled   control_scale 1, the adapter's residuals added to the frozen model's skips
  unguided     control_scale 0: exactly the base model (the same network, the adapter off)
  real         the test images themselves against their own outlines: the ceiling (1 by construction,
               the outline of a hole-free shape encloses exactly that shape)

and the score is the mean intersection over union of each image's shape (where any channel is above
mid-grey) with the shape its control encloses. Target: controlled >= 0.9.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

from budget import set_threads, timed, train_budgeted  # first: it sets OpenMP's wait policy

import diffuse
from diffuse.data import DataConfig, load_dataset
from diffuse.data.outline import iou, outline_control
from diffuse.training import ControlTaskConfig, DiffusionTaskConfig, Engine, RunConfig, TrainConfig
from diffuse.training.tasks.control import control_scores

BASE_NETWORK = {"kind": "unet", "channels": 16, "channel_mults": [1, 2, 2], "num_res_blocks": 1,
                "attention_levels": [2], "norm_groups": 8}
TRAIN_IMAGES = 5000  # of the 20,000: all a short budget sees more than once


def budgeted(engine: Engine, cpu_minutes: float):
    """Train for `cpu_minutes` of CPU time with the learning-rate horizon the steps that fit, then
    write the run's checkpoint (a control run reads its base from one)."""
    train = engine.config.train
    spent = train_budgeted(engine.train_step, cpu_minutes,
                           lambda n: setattr(engine.config, "train", dataclasses.replace(train, steps=n)))
    engine.save()
    engine.lock.release()
    return spent


def described(spent) -> str:
    return f"{spent.steps} steps, {spent.cpu_seconds / 60:.1f} CPU-min ({spent.wall_seconds / 60:.1f} wall)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", help="a trained unconditional shapes run to adapt (default: train one here)")
    parser.add_argument("--base-minutes", type=float, default=5.0, help="CPU minutes of the base model")
    parser.add_argument("--control-minutes", type=float, default=8.0, help="CPU minutes of the adapter")
    parser.add_argument("--control", help="a trained control run to score (default: train the adapter here)")
    parser.add_argument("--scales", type=lambda text: [float(v) for v in text.split(",")], default=[1.0, 1.5, 2.0, 3.0],
                        help="control scales to choose from on the next --n test images (not scored)")
    parser.add_argument("--lr", type=float, default=3e-3, help="the adapter's learning rate")
    parser.add_argument("--batch-size", type=int, default=64, help="the adapter's batch")
    parser.add_argument("--n", type=int, default=200, help="held-out test images scored")
    parser.add_argument("--steps", type=int, help="sampler steps (default: the base run's)")
    parser.add_argument("--workdir", help="keep the runs in this folder (default: a temporary one)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a smoke run: small budgets and n")
    args = parser.parse_args(argv)
    if args.quick:
        args.base_minutes, args.control_minutes, args.n = 0.5, 0.5, 32
    set_threads(args.threads)
    data = DataConfig("shapes", options={"n": TRAIN_IMAGES})
    with tempfile.TemporaryDirectory() as temporary:
        workdir = args.workdir or temporary
        base = args.base
        if base is None:
            base = str(Path(workdir) / "base")
            config = RunConfig(DiffusionTaskConfig(network=BASE_NETWORK), data,
                               TrainConfig(batch_size=64, lr=2e-3, warmup_steps=50, ema_decay=0.998))
            trained = described(budgeted(Engine(config, base, progress=False), args.base_minutes))
        else:
            trained = f"the run {base}"
        print(f"# base: {trained}", flush=True)
        if args.control is None:
            control = RunConfig(ControlTaskConfig(base=base), diffuse.load(base).config.data,
                                {"lr": args.lr, "batch_size": args.batch_size, "warmup_steps": 50, "ema_decay": 0.99})
            engine = Engine(control, Path(workdir) / "control", progress=False)
            spent = budgeted(engine, args.control_minutes)
            print(f"# adapter: {described(spent)}, lr {args.lr:g}, batch {args.batch_size}", flush=True)
        pipeline = diffuse.load(args.control or Path(workdir) / "control")
    test = load_dataset("shapes", "test", n=2 * args.n)
    sampling = {} if args.steps is None else {"steps": args.steps}
    scores, cpu, wall = timed(lambda: control_scores(pipeline, test, outline_control, args.n, **sampling))
    print(f"# {scores['n']} held-out test images, {pipeline.sampler} {args.steps or pipeline.steps} steps; "
          f"sampling both {cpu / 60:.1f} CPU-min ({wall / 60:.1f} wall)")
    # --control-scale chosen on the next n test images, which are not scored
    chosen = {scale: scaled_iou(pipeline, test, range(args.n, 2 * args.n), scale, sampling) for scale in args.scales}
    best = max(chosen, key=chosen.get)
    print("# control_scale on test images " f"{args.n}..{2 * args.n - 1}: "
          + ", ".join(f"{scale:g}: {value:.3f}" for scale, value in chosen.items()) + f"; chosen {best:g}")
    print("\n| model | IoU with the control's shape |\n|---|---|")
    for name, key in (("controlled (control_scale 1)", "iou"), ("unguided base (control_scale 0)", "iou_unguided"),
                      ("real test images (ceiling)", "iou_real")):
        print(f"| {name} | {scores[key]:.3f} |")
    print(f"| controlled (control_scale {best:g}, chosen above) | "
          f"{scaled_iou(pipeline, test, range(args.n), best, sampling):.3f} |")
    return 0


def scaled_iou(pipeline, test, rows, scale: float, sampling: dict) -> float:
    """The mean IoU of samples drawn for these test images' outlines at this control_scale."""
    images = test.__getitems__(list(rows))["x"]
    controls = outline_control(images)
    drawn = pipeline.sample(len(images), cond={"control": controls, "control_scale": scale}, seed=0, **sampling)
    return float(iou(drawn, controls).mean())


if __name__ == "__main__":
    sys.exit(main())
