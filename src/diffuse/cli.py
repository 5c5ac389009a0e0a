"""`diffuse train | train-autoencoder | train-classifier | sample | eval`: a thin command-line layer
over diffuse.training.

    diffuse train --data digits --out runs/digits [--cond class] [--minutes M] [--steps S] ...
    diffuse train --data shapes --cond text --out runs/shapes ...
    diffuse train-autoencoder --data fashion --out runs/ae [--factor 4] [--latent-channels 4]
                   [--kl-weight 1e-6] [--steps S] [--minutes M] ...
    diffuse train --latent runs/ae --out runs/latent [--network '{"kind": "dit"}'] ...
    diffuse train-classifier --data digits --out runs/digits-clf [--process edm] [--steps S] ...
    diffuse sample RUN --n N [--labels 0-9 | 3,5,7 | --prompt TEXT] [--sampler NAME --steps K --guidance W]
                   [--classifier CLF_RUN --classifier-scale S] [--seed S] --out FILE.png | FILE.npz
    diffuse eval RUN [--n N] [--sampler NAME --steps K --guidance W] [--classifier CLF_RUN ...]
                   [--out FILE.json]      (a text run on shapes: exact-caption accuracy, seen and held-out)

Distributed training: `torchrun --nproc_per_node=N -m diffuse train ...`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# What a process implies when only --process is given: the usual recipe for that family.
PROCESS_RECIPES = {
    "edm": dict(prediction="x0", preconditioning="edm", weighting="edm", time_sampling="log_normal",
                sampler="heun", sample_steps=18),
    "ve": dict(prediction="x0", preconditioning="edm", weighting="edm", time_sampling="log_normal",
               sampler="heun", sample_steps=18),
    "vp": dict(prediction="eps", preconditioning="none", weighting="simple", time_sampling="uniform",
               sampler="dpmpp_2m", sample_steps=25),
    "vp-cosine": dict(prediction="eps", preconditioning="none", weighting="simple", time_sampling="uniform",
                      sampler="dpmpp_2m", sample_steps=25),
    "ddpm": dict(prediction="eps", preconditioning="none", weighting="simple", time_sampling="uniform",
                 sampler="dpmpp_2m", sample_steps=25, sample_schedule="trailing"),
    "flow": dict(prediction="velocity", preconditioning="none", weighting="simple",
                 time_sampling="logit_normal", sampler="heun", sample_steps=18),
}


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


def _train(args) -> int:
    from .process import get_process
    from .training import TrainConfig, Trainer

    overrides = {}
    if args.process:
        overrides.update(PROCESS_RECIPES[args.process])
        overrides["process"] = get_process(args.process).config()
    for name in ("cond", "prediction", "preconditioning", "weighting", "time_sampling", "batch_size", "lr",
                 "steps", "minutes", "seed", "checkpoint_every", "ema_decay", "warmup_steps", "lr_schedule",
                 "sampler", "sample_steps", "label_dropout", "text_lr_scale"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    if args.network:
        overrides["network"] = json.loads(args.network)
    if args.time_options:
        overrides["time_options"] = json.loads(args.time_options)
    data = args.data
    if args.latent:
        overrides["latent"] = args.latent
        if data is None and not args.resume:  # the autoencoder's own data, unless told otherwise
            from .checkpoint import latest_checkpoint, load_json
            data = load_json(latest_checkpoint(args.latent) / "config.json")["data"]["spec"]
    config = TrainConfig.from_dict({**TrainConfig(data=data or "digits").to_dict(), **overrides})
    trainer = Trainer(config, args.out, resume=args.resume, device=args.device, progress=not args.quiet)
    last = trainer.fit()
    if trainer.rank == 0:
        print(f"trained {trainer.step} steps in {trainer.elapsed / 60:.1f} min; checkpoint {last}")
        pictures = [Path(args.out) / name for name in ("samples.png", "loss.png")]
        print("pictures: " + "  ".join(str(p) for p in pictures if p.exists()))  # toy runs have no grid
    return 0


def _train_autoencoder(args) -> int:
    from .models import AutoencoderConfig
    from .training import AutoencoderTrainConfig, AutoencoderTrainer

    overrides = {}
    for name in ("loss", "kl_weight", "batch_size", "lr", "steps", "minutes", "seed", "checkpoint_every",
                 "warmup_steps"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    shape = json.loads(args.autoencoder) if args.autoencoder else {}
    if not isinstance(shape, dict):
        raise ValueError(f"--autoencoder must be a JSON object, got {args.autoencoder!r}")
    if args.factor is not None or "channel_mults" not in shape:  # in_channels comes from the data
        shape["channel_mults"] = list(AutoencoderConfig.for_factor(args.factor or 2).channel_mults)
    for name in ("latent_channels", "channels"):
        if getattr(args, name) is not None:
            shape[name] = getattr(args, name)
    overrides["autoencoder"] = shape
    config = AutoencoderTrainConfig.from_dict({**AutoencoderTrainConfig(data=args.data).to_dict(), **overrides})
    trainer = AutoencoderTrainer(config, args.out, resume=args.resume, device=args.device, progress=not args.quiet)
    last = trainer.fit()
    metrics = trainer.test_metrics
    print(f"trained {trainer.step} steps in {trainer.elapsed / 60:.1f} min; checkpoint {last}")
    print(f"test reconstruction PSNR {metrics['psnr']:.2f} dB over {metrics['examples']} images "
          f"(in [0, 1]; {Path(args.out) / 'test_metrics.json'})")
    print(f"latents {tuple(trainer.latent_shape)} per image (factor {trainer.model.factor}); "
          f"scale factor {trainer.scale_factor:.4g}")
    pictures = [Path(args.out) / name for name in ("reconstructions.png", "loss.png")]
    print("pictures: " + "  ".join(str(p) for p in pictures if p.exists()))
    return 0


def _train_classifier(args) -> int:
    from .process import get_process
    from .training import ClassifierTrainConfig, ClassifierTrainer

    overrides = {}
    if args.process:
        overrides["process"] = get_process(args.process).config()
    for name in ("time_sampling", "batch_size", "lr", "steps", "minutes", "seed", "checkpoint_every",
                 "warmup_steps", "ema_decay"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    if args.classifier:
        overrides["classifier"] = json.loads(args.classifier)
    config = ClassifierTrainConfig.from_dict({**ClassifierTrainConfig(data=args.data).to_dict(), **overrides})
    trainer = ClassifierTrainer(config, args.out, resume=args.resume, device=args.device, progress=not args.quiet)
    last = trainer.fit()
    metrics = trainer.test_metrics
    print(f"trained {trainer.step} steps in {trainer.elapsed / 60:.1f} min; checkpoint {last}")
    levels = "  ".join(f"{level}: {value:.3f}" for level, value in metrics["accuracy_at_noise"].items())
    print(f"test accuracy at noise sigma/alpha  {levels}  (chance {metrics['chance']:.3f}; "
          f"{Path(args.out) / 'test_metrics.json'})")
    print(f"guide a model of the same process: diffuse sample RUN --labels ... --classifier {args.out}")
    return 0


def _classifier(args):
    """The classifier of --classifier, or None."""
    if not args.classifier:
        return None
    from .training import load_classifier
    return load_classifier(args.classifier, device=args.device or "cpu")[0]


def prompt_tokens(prompts: list[str], n: int, data: dict, model):
    """Token ids [n, L] of `prompts` cycled over n samples, with the run's own tokenizer."""
    import torch

    from .text import WordTokenizer
    from .text.tokenizer import split_words

    if "tokenizer" not in data:
        raise ValueError("this run was not trained on text; --prompt needs a model trained with --cond text")
    tokenizer = WordTokenizer.from_dict(data["tokenizer"])
    unknown = sorted({w for p in prompts for w, i in zip(split_words(p), tokenizer.token_ids(p))
                      if i == tokenizer.unk_id})
    if unknown:
        print(f"warning: words the model never saw in training are read as unknown: {', '.join(unknown)}")
    encoded = tokenizer.encode(prompts, max_length=model.net.config.max_length)
    return encoded[torch.arange(n) % len(prompts)]


def _sample(args) -> int:
    import numpy as np
    import torch

    from .data import to_unit
    from .plotting import save_image_grid
    from .training import generate, load_model

    if args.n < 1:
        raise ValueError(f"--n must be positive, got {args.n}")
    out = Path(args.out)
    if out.suffix not in (".png", ".npz"):  # before loading and sampling, not after
        raise ValueError(f"--out must end in .png or .npz, got {out.name!r}")
    model, config, data = load_model(args.run, ema=not args.no_ema, device=args.device or "cpu")
    vectors = len(data["shape"]) == 1  # toy sets: points, not pixels
    if vectors and out.suffix == ".png":
        raise ValueError(f"this run's data are vectors of shape {data['shape']}, not images; "
                         "write them with --out FILE.npz")
    label_list = parse_labels(args.labels)
    labels = None
    if label_list is not None:
        labels = torch.tensor([label_list[i % len(label_list)] for i in range(args.n)])
    tokens = prompt_tokens(args.prompt, args.n, data, model) if args.prompt else None
    images = generate(model, config, data["shape"], args.n, labels=labels, tokens=tokens, guidance=args.guidance,
                      classifier=_classifier(args), classifier_scale=args.classifier_scale,
                      sampler=args.sampler, steps=args.steps, schedule=args.schedule, seed=args.seed,
                      device=args.device or "cpu")
    out.parent.mkdir(parents=True, exist_ok=True)
    stored = labels.numpy() if labels is not None else np.full(args.n, -1, dtype=np.int64)
    if vectors:
        np.savez(out, points=images.numpy().astype(np.float32), labels=stored)  # [N, D], unscaled
    elif out.suffix == ".png":
        nrow = len(label_list) if label_list and len(label_list) <= 32 else None
        save_image_grid(images, out, nrow=nrow)
    else:
        pixels = to_unit(images).permute(0, 2, 3, 1).numpy().astype(np.float32)  # [N, H, W, C]
        if pixels.shape[-1] == 1:
            pixels = pixels[..., 0]
        np.savez(out, images=pixels, labels=stored)
    print(f"wrote {args.n} samples to {out}")
    return 0


def _evaluate(args) -> int:
    import torch

    from .data import load_dataset
    from .metrics import evaluate, floor
    from .training import generate, load_model

    model, config, data = load_model(args.run, ema=not args.no_ema, device=args.device or "cpu")
    if "tokenizer" in data:
        return _evaluate_captions(args, model, config, data)
    classifier = _classifier(args)
    test = load_dataset(data["spec"], "test")
    n = args.n or len(test)
    labels = None
    if data["num_classes"] is not None or classifier is not None:
        if test.labels is None:
            raise ValueError(f"classifier guidance needs labels; the test split of {data['spec']!r} has none")
        labels = test.labels[torch.arange(n) % len(test)]  # the test split's own class mix, repeated
    images = generate(model, config, data["shape"], n, labels=labels, guidance=args.guidance,
                      classifier=classifier, classifier_scale=args.classifier_scale,
                      sampler=args.sampler, steps=args.steps, schedule=args.schedule, seed=args.seed,
                      device=args.device or "cpu")
    scores, reference = evaluate(images, labels, data["spec"]), floor(data["spec"])
    print(f"{'metric':<22}{'model':>12}{'floor':>12}")
    for key in scores:
        if key in reference:
            print(f"{key:<22}{scores[key]:>12.4g}{reference[key]:>12.4g}")
    if args.out:
        Path(args.out).write_text(json.dumps({"model": scores, "floor": reference}, indent=2))
    return 0


def _evaluate_captions(args, model, config, data) -> int:
    """A text model: exact-caption accuracy on the test split's captions (combinations seen in
    training) and on the held-out split's (combinations never seen), read back by the detector."""
    from .data import load_dataset
    from .data.splits import HELDOUT
    from .text import WordTokenizer
    from .data.shapes_detector import error_mix
    from .training import caption_loss_rise, sample_caption_errors

    if data["spec"] != "shapes":
        raise ValueError(f"scoring samples against their captions needs a detector, which only 'shapes' has; "
                         f"this run was trained on {data['spec']!r}")
    if args.classifier:
        raise ValueError("--classifier guides towards class labels; this run is conditioned on text")
    tokenizer = WordTokenizer.from_dict(data["tokenizer"])
    mixes, rises = {}, {}
    for split, meaning in (("test", "seen combinations"), (HELDOUT, "held-out combinations")):
        dataset = load_dataset(data["spec"], split)
        index = [i % len(dataset) for i in range(args.n or len(dataset))]
        captions = [dataset.captions[i] for i in index]
        errors = sample_caption_errors(
            model, config, tokenizer, captions, data["shape"], guidance=args.guidance, sampler=args.sampler,
            steps=args.steps, schedule=args.schedule, seed=args.seed, device=args.device or "cpu")
        mixes[split] = mix = error_mix(errors)
        wrong = ", ".join(f"{kind} {share:.3f}" for kind, share in mix.items() if kind != "exact")
        print(f"exact-caption accuracy, {split} ({meaning}, {len(captions)} captions): {mix['exact']:.4f}"
              f"  (first error: {wrong})")
        # Whether the model reads how the words bind: its loss on the split's own images with
        # each caption altered, against the caption itself.
        rises[split] = rise = caption_loss_rise(model, config, tokenizer, dataset.data[index], captions,
                                                seed=args.seed, device=args.device or "cpu")
        print(f"  training loss on the {split} images with their captions altered: "
              + ", ".join(f"{part} " + ("n/a" if share is None else f"{100 * share:+.2f}%")
                        for part, share in rise.items()))
    if args.out:
        scores = {split: mix["exact"] for split, mix in mixes.items()}
        Path(args.out).write_text(json.dumps({"exact_caption_accuracy": scores, "outcomes": mixes,
                                              "loss_rise": rises, "guidance": args.guidance}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffuse", description="Train and sample diffusion models.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a diffusion model")
    train.add_argument("--data",
                       help="digits | mnist | fashion | folder:PATH | idx:IMAGES[,LABELS] | ring | moons | ... "
                            "(default: digits, or the autoencoder's data with --latent)")
    train.add_argument("--latent", help="an autoencoder run (diffuse train-autoencoder): train on its latents")
    train.add_argument("--out", required=True, help="run directory (checkpoints, metrics, pictures)")
    train.add_argument("--cond", choices=["none", "class", "text"],
                       help="class labels, or text (the data's captions, e.g. --data shapes)")
    train.add_argument("--process", choices=sorted(PROCESS_RECIPES),
                       help="the Gaussian path, with its usual parameterisation and loss (default: edm)")
    train.add_argument("--prediction", choices=["eps", "x0", "v", "score", "velocity"])
    train.add_argument("--preconditioning", choices=["none", "edm"])
    train.add_argument("--weighting", choices=["simple", "min_snr", "edm"])
    train.add_argument("--time-sampling", dest="time_sampling", choices=["uniform", "log_normal", "logit_normal"])
    train.add_argument("--time-options", dest="time_options",
                       help='the time sampling\'s parameters as JSON, e.g. \'{"p_mean": -0.4}\' '
                            '(log_normal: p_mean, p_std; logit_normal: logit_mean, logit_std)')
    train.add_argument("--network", help='network config as JSON, e.g. \'{"kind": "unet", "channels": 64}\'')
    _run_arguments(train)
    train.add_argument("--lr-schedule", dest="lr_schedule", choices=["constant", "cosine", "linear"],
                       help="after warmup: constant, or decay to 0 at --steps (default cosine)")
    train.add_argument("--ema-decay", dest="ema_decay", type=float)
    train.add_argument("--label-dropout", dest="label_dropout", type=float)
    train.add_argument("--text-lr-scale", dest="text_lr_scale", type=float,
                       help="a text model's encoder learns at this multiple of --lr (0: frozen as initialised)")
    train.add_argument("--sampler", help="sampler for the sample grids (and `diffuse sample`'s default)")
    train.add_argument("--sample-steps", dest="sample_steps", type=int)
    train.set_defaults(handler=_train)

    autoencoder = commands.add_parser("train-autoencoder", help="train the autoencoder of latent diffusion")
    autoencoder.add_argument("--data", default="digits", help="an image data set: digits | mnist | fashion | ...")
    autoencoder.add_argument("--out", required=True, help="run directory (checkpoints, metrics, pictures)")
    autoencoder.add_argument("--factor", type=int, help="downsampling factor, a power of two (default 2); "
                                                        "it must divide the image size")
    autoencoder.add_argument("--latent-channels", dest="latent_channels", type=int, help="default 4")
    autoencoder.add_argument("--channels", type=int, help="width of the first level (default 32)")
    autoencoder.add_argument("--autoencoder", help='the full config as JSON, e.g. \'{"channel_mults": [1, 2, 4]}\'')
    autoencoder.add_argument("--loss", choices=["l1", "l2"], help="reconstruction error (default l1)")
    autoencoder.add_argument("--kl-weight", dest="kl_weight", type=float, help="default 1e-6")
    _run_arguments(autoencoder)
    autoencoder.set_defaults(handler=_train_autoencoder)

    classifier = commands.add_parser("train-classifier",
                                     help="train a noise-aware classifier for classifier guidance")
    classifier.add_argument("--data", default="digits",
                            help="a labelled data set: digits | mnist | fashion | ring | ...")
    classifier.add_argument("--out", required=True, help="run directory (checkpoints, metrics, pictures)")
    classifier.add_argument("--process", choices=sorted(PROCESS_RECIPES),
                            help="the Gaussian path whose x_t it reads: the guided model's (default: edm)")
    classifier.add_argument("--classifier",
                            help='network config as JSON, e.g. \'{"kind": "unet_classifier", "channels": 64}\'')
    classifier.add_argument("--time-sampling", dest="time_sampling",
                            choices=["uniform_log_snr", "uniform", "log_normal", "logit_normal"],
                            help="how noise levels are drawn (default: uniform_log_snr)")
    _run_arguments(classifier)
    classifier.add_argument("--ema-decay", dest="ema_decay", type=float)
    classifier.set_defaults(handler=_train_classifier)

    sample = commands.add_parser("sample", help="sample a trained run")
    _sampling_arguments(sample)
    sample.add_argument("--n", type=int, default=100)
    sample.add_argument("--labels", help="class labels to cycle over: 0-9 or 3,5,7")
    sample.add_argument("--prompt", action="append",
                        help='a text model\'s prompt, e.g. "a red circle above a blue square"; repeat it '
                             "for several, cycled over the samples")
    sample.add_argument("--out", required=True, help="FILE.png (a grid) or FILE.npz (images, labels)")
    sample.set_defaults(handler=_sample)

    evaluate = commands.add_parser("eval", help="score a trained run against the held-out split, beside the "
                                               "real-data floor (a text run: exact-caption accuracy)")
    _sampling_arguments(evaluate)
    evaluate.add_argument("--n", type=int,
                          help="number of samples (per split for a text run; default: the split's size)")
    evaluate.add_argument("--out", help="also write the numbers to this JSON file")
    evaluate.set_defaults(handler=_evaluate)
    return parser


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    """The budget, optimiser and bookkeeping options every training command takes."""
    parser.add_argument("--steps", type=int)
    parser.add_argument("--minutes", type=float, help="wall-clock budget")
    parser.add_argument("--batch-size", dest="batch_size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--warmup-steps", dest="warmup_steps", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--checkpoint-every", dest="checkpoint_every", type=int)
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--device", help="cpu | cuda | cuda:N (default: cuda when available)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _sampling_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run directory or checkpoint folder")
    parser.add_argument("--sampler")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--schedule")
    parser.add_argument("--guidance", type=float, default=0.0, help="classifier-free guidance weight w")
    parser.add_argument("--classifier", help="a classifier run (diffuse train-classifier) to guide towards the labels")
    parser.add_argument("--classifier-scale", dest="classifier_scale", type=float, default=1.0,
                        help="classifier guidance scale s (default 1: the class-conditional distribution "
                             "for an exact classifier)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-ema", dest="no_ema", action="store_true", help="use the raw weights, not the EMA")
    parser.add_argument("--device")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .checkpoint import CheckpointError
    from .training import NonFiniteLossError
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, ImportError, CheckpointError, NonFiniteLossError) as e:
        print(f"diffuse {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"diffuse {args.command}: interrupted", file=sys.stderr)
        return 130
