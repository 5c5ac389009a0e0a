"""Guidance measured: classifier-free guidance's fidelity / diversity trade-off on digits, classifier
guidance beside it, and compositional prompts on shapes.

    python benchmarks/guidance.py                            # both parts
    python benchmarks/guidance.py --part digits --digits-run runs/digits     # reuse a class run
    python benchmarks/guidance.py --part shapes --shapes-run runs/shapes     # reuse a text run
    python benchmarks/guidance.py --quick                    # smoke run, a few minutes

Digits
------
A class-conditional model trained with the digits recipe (`diffuse train --recipe digits`) for
--cpu-minutes of process CPU time (label dropout 0.1 teaches the same network the null class,
i.e. the unconditional model), unless --digits-run names a trained run; and a noise-aware
classifier (`diffuse train --task classifier`'s default) on the same process for
--classifier-minutes. One sample per test image, with the test split's labels, Heun 18 steps:

  CFG w      (1 + w) D(x, c) - w D(x, null) for w in W (w = 0 is the conditional model)
  classifier the unconditional mode of the same network (null label) guided by the classifier,
             grad log p(y | x_t) scaled by s for s in S: classifier guidance alone

Each row: the local classifier's accuracy on the samples against the labels asked for, FD in
its features and FD over the real train-vs-test floor, k-NN precision and recall. The curve of
accuracy against FD is drawn to --plot.

Shapes
------
A text-conditioned model of `shapes` (trained here for --shapes-minutes with the shapes recipe, or --shapes-run):
one sample per caption of the test split (seen attribute combinations) and of the held-out split
(combinations never seen in training), for w in W; the score is exact-caption accuracy, the
fraction of images that the programmatic detector reads back as exactly their caption (colours,
shapes, and the relation). Then, per split, how much the model's training loss rises when each
caption's words are bound another way (colours or shapes traded between the objects, the relation
reversed) or dropped (null): a rise near 0 means the model cannot tell those captions apart.

--text-lr-scale and --bidirectional are ablations of the recipe's text encoder: trained at that
multiple of the learning rate (1: jointly with the denoiser) instead of frozen, or reading the whole
caption from every word instead of causally.

--canonical-wording is an ablation: every caption, in training and in scoring, is rewritten to the
wording of its picture that uses "left of" or "above" ("a blue square right of a red circle" ->
"a red circle left of a blue square"), so an object's side follows from its place in the caption
and the text encoder need not learn that "right of" mirrors "left of".
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

from budget import set_threads, timed, train_budgeted  # first: it sets OpenMP's wait policy

import torch

import diffuse
from diffuse.data import TensorDataset, load_dataset
from diffuse.data.shapes import parse_caption
from diffuse.data.shapes.scoring import caption_loss_rise, exact_caption_accuracy
from diffuse.guidance import ClassifierGuidance
from diffuse.metrics import evaluate, feature_network, floor
from diffuse.plotting import save_lines
from diffuse.recipes import recipe
from diffuse.samplers import Generators, sample
from diffuse.training import ClassifierTaskConfig, Engine, RunConfig

CFG_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0)
CLASSIFIER_SCALES = (0.0, 1.0, 2.0, 4.0, 8.0)
SHAPES_WEIGHTS = (0.0, 1.0, 3.0, 5.0, 8.0)
SAMPLE_SEED = 1


def budgeted(engine: Engine, cpu_minutes: float):
    """Train for `cpu_minutes` of CPU time, the learning-rate horizon set to the steps that fit."""
    train = engine.config.train
    return train_budgeted(engine.train_step, cpu_minutes,
                          lambda n: setattr(engine.config, "train", dataclasses.replace(train, steps=n)))


def train_digits(cpu_minutes: float, workdir: str):
    engine = Engine(recipe("digits"), workdir, progress=False)
    spent = budgeted(engine, cpu_minutes)
    return engine.task.pipeline(engine.ema.eval()), spent


def train_classifier(cpu_minutes: float, workdir: str):
    engine = Engine(RunConfig(ClassifierTaskConfig(), "digits"), workdir, progress=False)
    spent = budgeted(engine, cpu_minutes)
    return engine.averaged.eval(), spent


class UnconditionalMode:
    """A class-conditional network asked for its null class: the unconditional model it also learnt."""

    def __init__(self, model, null_label: int):
        self.model, self.null_label, self.prediction = model, null_label, model.prediction

    def __call__(self, x, t, **cond):
        return self.model(x, t, labels=torch.full((x.shape[0],), self.null_label, device=x.device), **cond)


@torch.no_grad()
def classifier_guided(model, classifier, scale: float, labels: torch.Tensor, shape, steps: int) -> torch.Tensor:
    """The unconditional mode guided by the classifier, from the same noise as the pipeline's."""
    num_classes = model.net.config.num_classes
    guided = ClassifierGuidance(UnconditionalMode(model, num_classes), classifier, model.process, scale)
    generators = Generators.seeded(SAMPLE_SEED, 0, len(labels))
    return sample(guided, model.process, generators.randn(shape), sampler="heun", steps=steps,
                  prediction=model.prediction, cond={"labels": labels}, generator=generators)


def digits_part(args, out_rows: list[str]) -> None:
    test = load_dataset("digits", "test")
    labels = test.labels[:100] if args.quick else test.labels
    metric = feature_network("digits")
    fd_floor = floor("digits", metric, n=len(labels))["fd"]
    with tempfile.TemporaryDirectory() as workdir:
        if args.digits_run:
            pipeline = diffuse.load(args.digits_run)
            trained = f"the run {args.digits_run}"
        else:
            pipeline, spent = train_digits(args.cpu_minutes, workdir + "/model")
            trained = f"{spent.steps} steps, {spent.cpu_seconds / 60:.1f} CPU-min ({spent.wall_seconds / 60:.1f} wall)"
        classifier, cspent = train_classifier(args.classifier_minutes, workdir + "/classifier")
    print(f"# digits: model {trained}; noise-aware classifier {cspent.steps} steps, "
          f"{cspent.cpu_seconds / 60:.1f} CPU-min; FD floor {fd_floor:.1f}; {len(labels)} samples, Heun "
          f"{args.sample_steps} steps", flush=True)
    header = "| guidance | scale | acc | FD | FD/floor | prec | rec | sample s |"
    out_rows += ["", f"Digits (FD floor {fd_floor:.1f})", "", header, "|---|---|---|---|---|---|---|---|"]
    curves = {"classifier-free (w)": ([], [], []), "classifier (s)": ([], [], [])}

    def score(kind, scale, images, seconds, curve):
        s = evaluate(images, labels, "digits", metric)
        out_rows.append(f"| {kind} | {scale:g} | {s['accuracy']:.3f} | {s['fd']:.1f} | {s['fd'] / fd_floor:.2f} | "
                        f"{s['precision']:.3f} | {s['recall']:.3f} | {seconds:.0f} |")
        print(out_rows[-1], flush=True)
        for series, value in zip(curves[curve], (s["fd"], s["accuracy"], f"{scale:g}")):
            series.append(value)

    weights = CFG_WEIGHTS[:3] if args.quick else CFG_WEIGHTS
    for w in weights:
        images, _, wall = timed(lambda: pipeline.sample(len(labels), labels=labels, guidance=w, steps=args.sample_steps,
                                                        seed=SAMPLE_SEED))
        score("CFG", w, images, wall, "classifier-free (w)")
    for s in (CLASSIFIER_SCALES[:2] if args.quick else CLASSIFIER_SCALES):
        images, _, wall = timed(lambda: classifier_guided(pipeline.model, classifier, s, labels, test.shape,
                                                          args.sample_steps))
        score("classifier", s, images, wall, "classifier (s)")
    Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
    save_lines(curves, args.plot, title="digits: accuracy against FD as guidance grows",
               xlabel="FD (classifier features)", ylabel="accuracy")
    print(f"curve: {args.plot}")


def canonical_wording(dataset: TensorDataset) -> TensorDataset:
    """`dataset` with each caption in the wording of its picture that uses "left of" or "above"."""
    return TensorDataset(dataset.data, dataset.labels, dataset.class_names, dataset.name,
                         [str(parse_caption(c).canonical()) for c in dataset.captions], modality=dataset.modality,
                         source=dataset.source)


def shapes_part(args, out_rows: list[str]) -> None:
    n = 100 if args.quick else args.shapes_n
    wording = canonical_wording if args.canonical_wording else (lambda dataset: dataset)
    splits = {name: wording(load_dataset("shapes", name, n=n)) for name in ("test", "heldout")}
    with tempfile.TemporaryDirectory() as workdir:
        if args.shapes_run:
            pipeline = diffuse.load(args.shapes_run)
            run, trained = pipeline.config, f"the run {args.shapes_run}"
        else:
            config = recipe("shapes")
            network = {**config.task.network, "causal": not args.bidirectional}
            config = config.updated(text_lr_scale=args.text_lr_scale, network=network)
            engine = Engine(config, workdir, progress=False, dataset=wording(load_dataset("shapes", "train")))
            spent = budgeted(engine, args.shapes_minutes)
            pipeline, run = engine.task.pipeline(engine.ema.eval()), engine.config
            trained = f"{spent.steps} steps, {spent.cpu_seconds / 60:.1f} CPU-min ({spent.wall_seconds / 60:.1f} wall)"
    encoder = (f"{'causal' if run.task.network.get('causal') else 'bidirectional'} text encoder at "
               f"text_lr_scale {run.task.text_lr_scale:g}")
    words = "canonical wording only" if args.canonical_wording else "captions as worded in the data"
    print(f"# shapes: text model {trained}, {encoder}; {n} captions per split; {words}", flush=True)
    out_rows += ["", f"Shapes, exact-caption accuracy ({words})", "",
                 "| w | seen (test) | held-out | sample s |", "|---|---|---|---|"]
    for w in (SHAPES_WEIGHTS[:2] if args.quick else SHAPES_WEIGHTS):
        scores, seconds = [], 0.0
        for split in splits.values():
            score, _, wall = timed(lambda: exact_caption_accuracy(pipeline, split.captions, guidance=w,
                                                                  steps=args.sample_steps, seed=SAMPLE_SEED))
            scores.append(score)
            seconds += wall
        out_rows.append(f"| {w:g} | {scores[0]:.3f} | {scores[1]:.3f} | {seconds:.0f} |")
        print(out_rows[-1], flush=True)
    out_rows += ["", "Training loss with the captions altered, against the captions themselves", "",
                 "| split | colours traded | shapes traded | relation reversed | null text |", "|---|---|---|---|---|"]
    for name, split in splits.items():
        rise = caption_loss_rise(pipeline, split.data, split.captions, seed=SAMPLE_SEED,
                                 canonical_wording=args.canonical_wording)
        out_rows.append(f"| {name} | " + " | ".join("n/a" if r is None else f"{100 * r:+.2f}%" for r in rise.values())
                        + " |")
        print(out_rows[-1], flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["digits", "shapes", "both"], default="both")
    parser.add_argument("--digits-run", help="a trained class-conditional digits run to use instead of training")
    parser.add_argument("--cpu-minutes", type=float, default=10.0, help="digits model training budget")
    parser.add_argument("--classifier-minutes", type=float, default=3.0, help="noise-aware classifier budget")
    parser.add_argument("--shapes-run", help="a trained text run on shapes to use instead of training")
    parser.add_argument("--shapes-minutes", type=float, default=45.0, help="shapes model training budget")
    parser.add_argument("--shapes-n", type=int, default=500, help="captions per split")
    parser.add_argument("--canonical-wording", action="store_true",
                        help="ablation: train and score on captions in their canonical wording (module docstring)")
    parser.add_argument("--text-lr-scale", type=float, default=recipe("shapes").task.text_lr_scale,
                        help="ablation: the text encoder's learning rate as a multiple of the denoiser's")
    parser.add_argument("--bidirectional", action="store_true", help="ablation: a bidirectional text encoder")
    parser.add_argument("--sample-steps", type=int, default=18)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--plot", default="guidance.png", help="where to draw the digits curve")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.cpu_minutes, args.classifier_minutes, args.shapes_minutes = 0.5, 0.2, 0.5
    set_threads(args.threads)
    began = time.perf_counter()
    print(f"command: python benchmarks/{' '.join(['guidance.py', *sys.argv[1:]])}; torch threads {args.threads}")
    rows: list[str] = []
    if args.part in ("digits", "both"):
        digits_part(args, rows)
    if args.part in ("shapes", "both"):
        shapes_part(args, rows)
    print("\n".join(rows))
    print(f"\ntotal wall time {(time.perf_counter() - began) / 60:.1f} min")


if __name__ == "__main__":
    main()
