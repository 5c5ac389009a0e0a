"""`diffuse train-control RUN --out OUT`: a control adapter fine-tuned on a trained diffusion run
(training/tasks/control.py), and the flags with which `diffuse sample` draws from the run it makes.

    diffuse train-control runs/shapes-u --out runs/outline [--steps S | --minutes M] [--lr LR] ...
    diffuse train-control runs/shapes-u --out runs/outline --resume --steps 2000
    diffuse sample runs/outline --control OUTLINES --control-scale 1 --out samples.png
    diffuse sample runs/outline --control-from PICTURES --out samples.png   # their outlines

The data are the base run's own; the train options are TrainConfig's, with the control task's
defaults where a flag is left out.
"""

from __future__ import annotations

# TrainConfig fields a flag of train-control sets (the rest keep the task's defaults)
TRAIN_FLAGS = {"steps": (int, 1), "minutes": (float, 0.0), "batch_size": (int, 1), "lr": (float, 0.0),
               "warmup_steps": (int, 0), "ema_decay": (float, 0.0), "seed": (int, 0), "checkpoint_every": (int, 1)}


def add_parser(commands) -> None:
    from .cli_args import number
    from .data.outline import CONTROLS
    from .training import ControlTaskConfig, TrainConfig

    parser = commands.add_parser(
        "train-control", help="fine-tune a control adapter (ControlNet) on a trained diffusion run",
        description="Fine-tune a control adapter on RUN's frozen model: a trainable copy of its U-Net's encoder, "
                    "fed a control image derived from each training image, added to its skip connections. Sample "
                    "the result with `diffuse sample OUT --control IMAGES`.")
    parser.add_argument("run", help="the diffusion run (or checkpoint folder) whose model the adapter steers")
    parser.add_argument("--out", required=True, help="the control run's folder")
    fields = {f.name: f for f in ControlTaskConfig.__dataclass_fields__.values()}
    parser.add_argument("--control", choices=CONTROLS, default="outline", help=fields["control"].metadata["help"])
    parser.add_argument("--eval-n", dest="eval_n", type=number(int, 0), default=fields["eval_n"].default,
                        help=fields["eval_n"].metadata["help"])
    train = TrainConfig.__dataclass_fields__
    for name, (kind, low) in TRAIN_FLAGS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=number(kind, low),
                            help=train[name].metadata["help"] + " (default: the control task's)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out; the flags change its "
                                                              "train options (recorded in its history)")
    parser.add_argument("--overwrite", action="store_true", help="replace a previous run in --out")
    parser.add_argument("--device", help="cpu | cuda | cuda:N (default: cuda when available)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def control_config(args):
    """The RunConfig of `diffuse train-control`: a resumed run's own with the flags' train options,
    else the control task on the base run's data."""
    from .checkpoint import read_run
    from .training import ControlTaskConfig, RunConfig

    train = {name: getattr(args, name) for name in TRAIN_FLAGS if getattr(args, name) is not None}
    if args.resume:
        config = RunConfig.from_dict(read_run(args.out).config, f"{args.out}")
        return config.updated(**train) if train else config
    data = read_run(args.run).config["data"]  # the base's own examples
    return RunConfig(ControlTaskConfig(base=str(args.run), control=args.control, eval_n=args.eval_n), data, train)


def run(args, given: dict | None = None) -> int:
    from .cli_args import fit

    if fit(control_config(args), args, trained="the adapter ") is not None:
        print(f"sample it: diffuse sample {args.out} --control IMAGES --out samples.png")
    return 0


# -- diffuse sample of a control run ---------------------------------------------------------------

def sample_arguments(parser) -> None:
    """`diffuse sample`'s flags for a control run."""
    from .cli_args import number

    parser.add_argument("--control", help="a control run's control images (PNG folder or file, or .npz 'images'), "
                                          "cycled over the samples")
    parser.add_argument("--control-from", dest="control_from",
                        help="pictures whose control (e.g. their shapes' outline) the samples are drawn for")
    parser.add_argument("--control-scale", dest="control_scale", type=number(float, 0.0), default=None,
                        help="the adapter's residuals times this (default 1; 0: the base model)")


def sample_cond(args, pipeline, n: int) -> dict:
    """{model keyword: value} of the control flags for n samples ({} without them)."""
    import torch

    from .edit_cli import read_inputs

    if args.control is None and args.control_from is None:
        if args.control_scale is not None:
            raise ValueError("--control-scale scales a control image: give --control or --control-from")
        if pipeline.condition("control") is not None:
            raise ValueError("this is a control run: give its control images (--control or --control-from)")
        return {}
    if args.control is not None and args.control_from is not None:
        raise ValueError("give --control or --control-from, not both")
    if pipeline.condition("control") is None:
        raise ValueError("this model has no control adapter (train one with `diffuse train-control RUN`)")
    if args.control is not None:
        controls = read_inputs(args.control, (pipeline.model.net.config.control_channels, *pipeline.shape[1:]))[0]
    else:
        from .data.outline import DERIVE
        controls = DERIVE[pipeline.config.task.control](read_inputs(args.control_from, pipeline.shape)[0])
    cond = {"control": controls[torch.arange(n) % len(controls)]}
    if args.control_scale is not None:
        cond["control_scale"] = args.control_scale
    return cond


__all__ = ["add_parser", "control_config", "run", "sample_arguments", "sample_cond"]
