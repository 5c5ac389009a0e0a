"""`diffuse train | sample | eval`: a thin layer from flags and config files to library calls.

    diffuse train --recipe digits --out runs/digits [--steps S] [--minutes M] ...
    diffuse train --config run.json --out runs/x           # a config file (what --print-config prints)
    diffuse train --task autoencoder --data fashion --out runs/ae [--factor 4] ...
    diffuse train --latent runs/ae --out runs/latent --network '{"kind": "dit"}'
    diffuse train --task classifier --data digits --out runs/clf
    diffuse train --out runs/x --resume [--steps S] [--lr LR]   # continue a run (changes are recorded)
    diffuse sample RUN --n N [--labels 0-9 | --prompt TEXT] [--guidance W] [--classifier CLF_RUN]
                   [--sampler NAME --steps K] [--seed S] --out FILE.png | FILE.npz
    diffuse eval RUN [--n N] [--sampler NAME --steps K --guidance W] [--out FILE.json]
    diffuse edit RUN --task inpaint|superres|deblur|colorize|saturate|sdedit --input IMAGES
                 [--method ddrm|dps|daps|repaint] [--sigma-y S] --out FILE.png | FILE.npz
    diffuse train-control RUN --out CONTROL_RUN ...; diffuse sample CONTROL_RUN --control IMAGES ...

Every field of a run's config is a flag of `diffuse train` (its help and choices come from the
config dataclasses themselves: diffuse.configs.option), nested fields are reached with
`--set task.network.channels=64`, and a config is built in this order, each step overriding the
last: the task's defaults, --recipe, --config, --process (its family's recipe), the flags, --set.
Plain argparse with dataclass-derived flags: no dependency, and one list of options (the
dataclasses) that the CLI, config files and the Python API share.
Distributed training: `torchrun --nproc_per_node=N -m diffuse train ...`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path

from .cli_args import check_out, cycled_labels, fit, npz_images, npz_labels, number, sampling_arguments

# A field whose flag differs from its name.
FLAG_NAMES = {("data", "name"): "data", ("data", "options"): "data-options"}
MAX_MESSAGE = 1500  # an error longer than this is cut: a message is read, not scrolled


def version() -> str:
    from importlib.metadata import PackageNotFoundError, version as installed

    from . import __version__
    try:
        return installed("diffuse-paths")
    except PackageNotFoundError:
        return __version__



# -- values of flags ------------------------------------------------------------------------------------

def json_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e}): {text[:60]!r}") from None


def size_value(text: str):
    """32, or 32,48 / [32, 48] for height and width; none for no resizing."""
    if text.lower() in ("none", "null"):
        return None
    parts = json_value(text) if text.startswith("[") else text.split(",")
    try:
        values = [int(p) for p in parts]
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a size like 32 or 32,48, got {text!r}") from None
    return values[0] if len(values) == 1 else values


def process_value(text: str):
    """A process by name (its family's recipe comes with it: diffuse.recipes.PROCESSES), or as JSON."""
    from .recipes import PROCESSES
    if text in PROCESSES:
        return text
    if not text.lstrip().startswith("{"):
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(sorted(PROCESSES))} or a JSON object, got {text!r}")
    return json_value(text)


def flag_type(hint):
    """(argparse type or action, metavar) for a field annotated `hint`."""
    args, origin = typing.get_args(hint), typing.get_origin(hint)
    optional = type(None) in args
    core = [a for a in args if a is not type(None)] if args and origin not in (list, tuple, dict) else [hint]
    if hint is bool:
        return argparse.BooleanOptionalAction, None
    if len(core) == 2:  # int | list[int]: a size
        return size_value, "SIZE"
    base = typing.get_origin(core[0]) or core[0]
    if base in (dict, list, tuple):
        return json_value, "JSON"
    if base is int:
        return number(int, optional=optional), "N" + ("|none" if optional else "")
    if base is float:
        return number(float, optional=optional), "X" + ("|none" if optional else "")
    return (lambda text: None if optional and text.lower() in ("none", "null") else text), None


def config_flags(parser, sections: dict, defaults: dict) -> None:
    """One flag per field of each section's dataclass: dest "section.field", absent unless given,
    help and choices from the field, default shown from `defaults` (the base config's dict)."""
    seen = {}
    for section, cls in sections.items():
        group = parser.add_argument_group(f"{section} options")
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            name = FLAG_NAMES.get((section, f.name), f.name.replace("_", "-"))
            if name in seen:
                raise RuntimeError(f"--{name} names both {seen[name]} and {section}.{f.name}")
            seen[name] = f"{section}.{f.name}"
            kind, metavar = flag_type(hints[f.name])
            if f.name == "process":
                from .recipes import PROCESSES
                kind, metavar = process_value, "{" + ",".join(sorted(PROCESSES)) + "}|JSON"
            metavar = metavar or f.name.upper()
            default = defaults.get(section, {}).get(f.name)
            shown = json.dumps(default) if isinstance(default, (dict, list, type(None))) else default
            help_text = f"{f.metadata.get('help', '')} (default: {shown})".replace("%", "%%")
            choices = f.metadata.get("choices")
            extra = {"choices": choices} if choices is not None and kind is not argparse.BooleanOptionalAction else {}
            if kind is argparse.BooleanOptionalAction:
                group.add_argument(f"--{name}", dest=f"{section}.{f.name}", action=kind, default=argparse.SUPPRESS,
                                   help=help_text)
            else:
                group.add_argument(f"--{name}", dest=f"{section}.{f.name}", type=kind, metavar=metavar,
                                   default=argparse.SUPPRESS, help=help_text, **extra)


def set_path(config: dict, assignment: str) -> None:
    """Apply --set a.b.c=JSON (a bare word is taken as a string) to the config dict."""
    path, eq, text = assignment.partition("=")
    if not eq or not path:
        raise ValueError(f"--set takes PATH=VALUE, e.g. task.network.channels=64; got {assignment!r}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    *parents, last = path.split(".")
    node = config
    for key in parents:
        if node.get(key) is None:
            node[key] = {}
        node = node[key]
        if not isinstance(node, dict):
            raise ValueError(f"--set {path}: {key} is not an object")
    node[last] = value


# -- train ----------------------------------------------------------------------------------------------

def base_config(args) -> dict:
    """The config dict the flags apply to: a resumed run's own, else --config, else --recipe,
    else the task's defaults."""
    from .checkpoint import read_run
    from .configs import read_json
    from .recipes import recipe

    if args.resume:
        if not args.out:
            raise ValueError("--resume continues the run in --out: name it")
        if args.config or args.recipe:
            raise ValueError("--resume continues the run in --out with its own config; drop --config/--recipe")
        return read_run(args.out).config
    if args.config:
        config = read_json(args.config)
        if args.task and config.get("task", {}).get("kind", args.task) != args.task:
            raise ValueError(f"--task {args.task} differs from the task of {args.config}")
        return config
    if args.recipe:
        return recipe(args.recipe).to_dict()
    return {"task": {"kind": args.task or "diffusion"}}


def full_defaults(base: dict) -> dict:
    """The base config with every default spelled out, for --help."""
    from .training import RunConfig
    try:
        return RunConfig.from_dict(base).to_dict()
    except ValueError:
        return base


def train_config(args, given: dict):
    """The RunConfig of `diffuse train`: base, then --process's family, then the flags, then --set."""
    from .configs import ConfigError
    from .recipes import process_fields
    from .training import RunConfig

    config = full_defaults(base_config(args)) if not args.resume else base_config(args)
    task = config.setdefault("task", {})
    process = given.pop("task.process", None)
    if process is not None:
        if isinstance(process, str):
            family = process_fields(process)
            task.update(family if task.get("kind", "diffusion") == "diffusion" else {"process": family["process"]})
        elif isinstance(process, dict):
            task["process"] = process
        else:
            raise ValueError(f"--process takes a name or a JSON object, got {process!r}")
    for dest, value in given.items():
        section, name = dest.split(".", 1)
        config.setdefault(section, {})[name] = value
    latent = given.get("task.latent")
    if latent and "data.name" not in given and not args.resume and not args.config and not args.recipe:
        from .latent import read_autoencoder_run
        config["data"] = read_autoencoder_run(latent).config["data"]  # the autoencoder's own data
    for assignment in args.set or []:
        set_path(config, assignment)
    where = "flags" if not args.config else f"{args.config} with the flags"
    try:
        return RunConfig.from_dict(config, where)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from None


def _train(args, given: dict) -> int:
    from .training import resolve

    config = train_config(args, given)
    if args.print_config:
        resolved = config if args.resume else resolve(config, device=args.device or "cpu")
        print(json.dumps(resolved.to_dict(), indent=2))
        return 0
    if not args.out:
        raise ValueError("--out is required: the run folder to train into")
    if fit(config, args) is not None:
        pictures = sorted(p for p in Path(args.out).glob("*.png"))
        print("pictures: " + "  ".join(str(p) for p in pictures))
    return 0


# -- sample and eval ---------------------------------------------------------------------------------------

def _classifier(args):
    if not args.classifier:
        return None
    from .runs import load_classifier
    return load_classifier(args.classifier, device=args.device or "cpu")



def _sample(args, given: dict) -> int:
    import numpy as np

    from .control_cli import sample_cond
    from .files import atomic_write
    from .plotting import save_class_grid, save_image_grid, save_scatter
    from .runs import load

    out = check_out(args.out, (".png", ".npz"))
    labels = cycled_labels(args.labels, args.n)  # a bad --labels fails before the model loads
    pipeline = load(args.run, ema=not args.no_ema, device=args.device or "cpu",
                    diffusers_config=args.diffusers_config)
    vectors = pipeline.info.modality == "vector"
    if vectors and out.suffix == ".png" and pipeline.shape != (2,):
        raise ValueError(f"this run's data are vectors of shape {list(pipeline.shape)}, not images; a picture "
                         "shows 2-D points only: write them with --out FILE.npz")
    tokens = prompt = None
    if args.prompt and pipeline.prompt_encoder is not None:  # a pretrained pipeline's own text encoder
        prompt = args.prompt
    elif args.prompt:
        tokens, unknown = pipeline.prompt_tokens(args.prompt, args.n)
        if unknown:
            print(f"warning: words the model never saw in training are read as unknown: {', '.join(unknown)}")
    images = pipeline.sample(args.n, labels=labels, tokens=tokens, prompt=prompt, guidance=args.guidance,
                             classifier=_classifier(args), classifier_scale=args.classifier_scale,
                             sampler=args.sampler, steps=args.steps, schedule=args.schedule, seed=args.seed,
                             cond=sample_cond(args, pipeline, args.n))
    out.parent.mkdir(parents=True, exist_ok=True)
    stored = npz_labels(labels, args.n)
    if vectors and out.suffix == ".png":
        save_scatter(images, out)
    elif vectors:
        with atomic_write(out) as f:
            np.savez(f, points=images.numpy().astype(np.float32), labels=stored)  # [N, D], unscaled
    elif out.suffix == ".png":
        save_image_grid(images, out) if labels is None else save_class_grid(images, labels, out)
    else:
        with atomic_write(out) as f:
            np.savez(f, images=npz_images(images), labels=stored)
    print(f"wrote {args.n} samples to {out}")
    return 0


def _evaluate(args, given: dict) -> int:
    import torch

    from .data import load_dataset
    from .files import write_text_atomic
    from .metrics import evaluate, floor
    from .runs import load

    out = check_out(args.out, (".json",)) if args.out else None
    pipeline = load(args.run, ema=not args.no_ema, device=args.device or "cpu",
                    diffusers_config=args.diffusers_config)
    data = args.data or (pipeline.config.data if pipeline.config is not None else None)
    if data is None:
        raise ValueError(f"{args.run} is a diffusers folder, with no data set of its own: "
                         "give --data NAME (e.g. digits) to score its samples against")
    if pipeline.condition("tokens") is not None:
        if args.classifier:
            raise ValueError("--classifier guides towards class labels; this run is conditioned on text")
        return _evaluate_captions(args, pipeline, out)
    classifier = _classifier(args)
    test = load_dataset(data, "test")
    n = args.n or len(test)
    labels = None
    if pipeline.num_classes is not None or classifier is not None:
        if test.labels is None:
            raise ValueError(f"classifier guidance needs labels; the test split of {data.name!r} has none")
        labels = test.labels[torch.arange(n) % len(test)]  # the test split's own class mix, repeated
    images = pipeline.sample(n, labels=labels, guidance=args.guidance, classifier=classifier,
                             classifier_scale=args.classifier_scale, sampler=args.sampler, steps=args.steps,
                             schedule=args.schedule, seed=args.seed)
    scores, reference = evaluate(images, labels, data), floor(data)
    print(f"{'metric':<22}{'model':>12}{'floor':>12}")
    for key in scores:
        if key in reference:
            print(f"{key:<22}{scores[key]:>12.4g}{reference[key]:>12.4g}")
    if out:
        write_text_atomic(out, json.dumps({"model": scores, "floor": reference}, indent=2))
    return 0


def _export(args, given: dict) -> int:
    from .interop.export import export_diffusers
    from .runs import load

    out = export_diffusers(load(args.run), args.out, overwrite=args.overwrite)
    print(f"wrote {out}: a diffusers DDPMPipeline folder (a UNet2DModel and its scheduler)")
    return 0


def _evaluate_captions(args, pipeline, out) -> int:
    """A text model of shapes: exact-caption accuracy on seen and held-out combinations, what the
    rest get wrong first, and the loss with each caption's words bound another way."""
    from .data import load_dataset
    from .data.shapes.scoring import SPLITS, report
    from .files import write_text_atomic

    data = pipeline.config.data
    if data.name != "shapes":
        raise ValueError(f"scoring samples against their captions needs a detector, which only 'shapes' has; "
                         f"this run was trained on {data.name!r}")
    scores = report(pipeline, lambda split: load_dataset(data, split), args.n, seed=args.seed, guidance=args.guidance,
                    sampler=args.sampler, steps=args.steps, schedule=args.schedule)
    for split, meaning in SPLITS.items():
        mix = scores["outcomes"][split]
        wrong = ", ".join(f"{kind} {share:.3f}" for kind, share in mix.items() if kind != "exact")
        print(f"exact-caption accuracy, {split} ({meaning}, {scores['captions'][split]} captions): {mix['exact']:.4f}"
              f"  (first error: {wrong})")
        print(f"  training loss on the {split} images with their captions altered: "
              + ", ".join(f"{part} " + ("n/a" if share is None else f"{100 * share:+.2f}%")
                          for part, share in scores["loss_rise"][split].items()))
    if out:
        write_text_atomic(out, json.dumps({**scores, "guidance": args.guidance}, indent=2))
    return 0


# -- the parser -------------------------------------------------------------------------------------------

class UsageError(Exception):
    """A command line argparse cannot read; main prints it on one line and exits with 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; `argv` lets `diffuse train`'s help show the defaults of the task, recipe or
    config file it names."""
    parser = Parser(prog="diffuse", description="Train, sample and score diffusion models.")
    parser.add_argument("--version", action="version", version=f"diffuse {version()}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (anywhere on the line)")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    train_parser(commands, argv or [])

    sample = commands.add_parser("sample", help="sample a trained run")
    sampling_arguments(sample)
    from .control_cli import sample_arguments as control_arguments
    control_arguments(sample)
    sample.add_argument("--n", type=number(int, 1), default=100, help="number of samples (default: 100)")
    sample.add_argument("--labels", help="class labels to cycle over: 0-9 or 3,5,7")
    sample.add_argument("--prompt", action="append",
                        help='a text model\'s prompt, e.g. "a red circle above a blue square"; repeat it '
                             "for several, cycled over the samples")
    sample.add_argument("--out", required=True, help="FILE.png (a grid; a scatter of 2-D points) or FILE.npz")
    sample.set_defaults(handler=_sample)

    evaluate = commands.add_parser("eval", help="score a trained run against the held-out split, beside the "
                                                "real-data floor (a text run: exact-caption accuracy)")
    sampling_arguments(evaluate)
    evaluate.add_argument("--n", type=number(int, 1),
                          help="number of samples (per split for a text run; default: the split's size)")
    evaluate.add_argument("--out", help="also write the numbers to this JSON file")
    evaluate.add_argument("--data", help="the data set to score against (default: the run's own; "
                                         "needed for a diffusers folder)")
    evaluate.set_defaults(handler=_evaluate)

    export = commands.add_parser("export", help="write a run as a diffusers pipeline folder (diffusers loads it with "
                                                "its own classes)")
    export.add_argument("run", help="run directory or checkpoint folder")
    export.add_argument("--to", choices=("diffusers",), default="diffusers", help="the format (default: diffusers)")
    export.add_argument("out", help="the folder to write")
    export.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    export.set_defaults(handler=_export)

    from .control_cli import add_parser as control_parser
    from .edit_cli import add_parser as edit_parser
    edit_parser(commands)
    from .audit_cli import add_parser as audit_parser; audit_parser(commands)  # noqa: E702
    from .serve_cli import add_parser as serve_parser; serve_parser(commands)  # noqa: E702
    from .watermark_cli import add_parser as watermark_parser; watermark_parser(commands)  # noqa: E702
    control_parser(commands)
    from .rollout_cli import add_parser as rollout_parser; rollout_parser(commands)  # noqa: E702
    return parser


def train_parser(commands, argv: list[str]) -> None:
    from .recipes import RECIPES
    from .training import TASKS, TrainConfig, task_class
    from .data import DataConfig

    train = commands.add_parser(
        "train", help="train a run: diffusion, or another task (--task)",
        description="Train a run. Every config field is a flag below; --print-config prints the complete "
                    "config of the run these flags describe, which --config reads back.")
    train.add_argument("--out", help="the run folder (checkpoints, metrics, pictures)")
    train.add_argument("--task", choices=sorted(TASKS),
                       help="what to train (default: diffusion; or the task of --config / --recipe)")
    train.add_argument("--recipe", choices=RECIPES, help="start from a named recipe (diffuse.recipes)")
    train.add_argument("--config", help="start from a run config file (JSON, as --print-config prints)")
    train.add_argument("--print-config", action="store_true",
                       help="print the complete config (what the data decide filled in) and exit")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its last checkpoint; flags change its train options "
                            "(recorded in its history), never its task, data or seed")
    train.add_argument("--overwrite", action="store_true", help="replace a previous run in --out")
    train.add_argument("--set", action="append", metavar="PATH=JSON",
                       help="set any field, nested ones included, e.g. --set task.network.channels=64")
    train.add_argument("--device", help="cpu | cuda | cuda:N (default: cuda when available)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    # the defaults shown are those of the task, recipe or config named on the command line
    probe = argparse.ArgumentParser(add_help=False)
    for name in ("--task", "--recipe", "--config"):
        probe.add_argument(name)
    probe.add_argument("--resume", action="store_true")
    probe.add_argument("--out")
    known, _ = probe.parse_known_args(argv[1:] if argv[:1] == ["train"] else [])
    kind = known.task or "diffusion"
    defaults = {}
    try:
        if not known.resume:
            base = base_config(argparse.Namespace(resume=False, config=known.config, recipe=known.recipe,
                                                  task=known.task, out=None))
            defaults = full_defaults(base)
            kind = defaults.get("task", {}).get("kind", kind)
    except (ValueError, OSError):
        pass  # the command itself reports a bad --config or --recipe
    sections = {"task": task_class(kind if kind in TASKS else "diffusion").Config, "data": DataConfig,
                "train": TrainConfig}
    config_flags(train, sections, defaults)
    train.set_defaults(handler=_train)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        args = build_parser(argv).parse_args(argv)
    except UsageError as e:
        print(" ".join(str(e).split()), file=sys.stderr)
        return 2
    given = {k: v for k, v in vars(args).items() if "." in k}
    try:
        return args.handler(args, given)
    except KeyboardInterrupt:
        print(f"diffuse {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001  one line for the user; --debug shows the traceback
        if debug:
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        if not isinstance(e, (ValueError, OSError, RuntimeError, ImportError)):
            message = f"{type(e).__name__}: {message} (an unexpected error; --debug shows where)"
        if len(message) > MAX_MESSAGE:
            message = message[:MAX_MESSAGE] + " ..."
        print(f"diffuse {args.command}: error: {message}", file=sys.stderr)
        return 1
