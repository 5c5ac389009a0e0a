"""Inverse problems measured: each posterior sampler beside the classical restoration of the same
measurement, on held-out test images, and SDEdit's realism against faithfulness.

    python benchmarks/inverse.py --run runs/digits                  # a trained digits run
    python benchmarks/inverse.py --data fashion --run runs/fashion  # any image run, its data's test split
    python benchmarks/inverse.py --minutes 10                       # train the data's recipe here first
    python benchmarks/inverse.py --run runs/digits --quick          # smoke run

Restoration
-----------
The test split's images (never seen in training) are measured at sigma_y (0.05 in [0, 1] pixel
units, the convention of diffuse.inverse) by each task's operator: a centred box hole (half the
side), 70% of the pixels missing at random, x2 and x4 average pooling, a 5x5 Gaussian blur of std
1 and, for RGB data, luma (colourisation). The first --n-val test images choose DPS's step scale
and DAPS's likelihood std (the one setting each is known to be sensitive to: the value with the
best PSNR there); the next --n are scored. Each row: PSNR and SSIM to the truth (mean over images) and the
measurement's consistency ||y - A(x)|| per image in pixel units (sigma_y sqrt(m) is the noise's
own), the model calls per image and the CPU seconds per image; under each table, every method's
PSNR against RePaint's on the same images (mean difference, its paired standard error, how many
images it restores better). Beside the diffusion methods
(one posterior sample each, and with --mean-of K the mean of K samples, an estimate of the
posterior mean, which is what PSNR rewards; the model unconditional, its null class where it has
classes):
- the classical restorations: mean fill and nearest-neighbour fill (inpainting), bicubic
  upsampling (super-resolution), the Wiener filter around the training mean (every linear task),
  a per-pixel colour regression (colourisation);
- the training image whose measurement is nearest y, which is what a model that memorised its
  training set would return.

SDEdit
------
Guides are the test images reduced to 2x2-pixel blocks (x4 average pooling, repeated back), a
coarse "stroke painting" of each digit. For each strength (DDPM-linear-equivalent time, see
`diffuse edit --strength`) the run's sampler completes them; realism is the FD of the results to
the test split in the data's feature network, faithfulness the RMS distance to the guide; the
curve is drawn to --plot.

Inversion
---------
DDIM inversion of --n test images (`diffuse.invert`: image -> noise by the DDIM steps run
backwards) and sampling back with `ddim` on the same steps: the round trip's RMS error in [0, 1]
pixels at several step counts, with and without fixed-point refinement, and the noise's std.

The machine: the numbers in docs/inverse.md name what else ran beside them.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

from budget import set_threads, timed  # first: it sets OpenMP's wait policy

import torch

import diffuse
from diffuse.data import load_dataset
from diffuse.edit_cli import strength_time
from diffuse.image_metrics import psnr, ssim
from diffuse.inverse import (PixelRegression, Wiener, bicubic, make_operator, mean_fill, measure, nearest_consistent,
                             nearest_fill)
from diffuse.metrics.distances import frechet_distance
from diffuse.metrics.features import feature_network
from diffuse.plotting import save_lines

TASKS = {
    "box inpaint": dict(task="inpaint", mask="box"),
    "random inpaint": dict(task="inpaint", mask="random"),
    "superres x2": dict(task="superres", factor=2),
    "superres x4": dict(task="superres", factor=4),
    "gaussian blur": dict(task="deblur", blur="gaussian", blur_size=5, blur_std=1.0),
    "colourise": dict(task="colorize"),
}
# The methods' steps and options. The papers take more steps (DPS 1000, RePaint 250 x 10 resamplings,
# DAPS 200 x 5 ODE steps); these fit a CPU budget. DDRM's 50 (its paper's 20 measured 0.3-2.0 dB
# worse on 9 of the 10 digits and Fashion tasks, 0.26 better on Fashion blur) and DAPS's 50 x 2 ODE steps (+1 call for its r_t; better than 20 x 5
# and than 50 x 3) are docs/inverse.md's.
METHODS = {
    "ddrm": (50, {}),
    "daps": (50, {"ode_steps": 2}),
    "dps": (100, {}),
    "repaint": (20, {"jump_length": 10, "resamplings": 10}),
}
QUICK = {"ddrm": (10, {}), "daps": (10, {"ode_steps": 2}), "dps": (20, {}),
         "repaint": (10, {"jump_length": 5, "resamplings": 2})}
DPS_SCALES = (0.3, 1.0, 3.0)
# DAPS's likelihood std, as fractions of sigma_y: 1 is the exact conditional; its reference code
# trusts y more (its tau, 0.01 in [-1, 1] whatever the noise).
DAPS_LIKELIHOOD = (1.0, 0.5, 0.25)
STRENGTHS = (0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
SEED = 0


def number_or_text(value: str):
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def scores(restored, truth, measurement, nfe, cpu):
    n = len(truth)
    per_image = psnr(restored, truth)
    return {"psnr": float(per_image.mean()), "ssim": float(ssim(restored, truth).mean()), "per_image": per_image,
            "consistency": float(measurement.consistency(restored).mean()), "nfe": nfe, "cpu": cpu / n}


def paired(rows: list[tuple[str, dict]], reference: str = "repaint") -> None:
    """Each diffusion method's PSNR against the reference's on the same images: the mean difference
    and its standard error (the images' own spread cancels, so this is what says "beats")."""
    base = next((r for name, r in rows if name == reference), None)
    if base is None:
        return
    for name, r in rows:
        if r["nfe"] is None or name == reference:
            continue
        d = r["per_image"] - base["per_image"]
        print(f"  {name} - {reference}: {float(d.mean()):+.2f} +- {float(d.std() / len(d) ** 0.5):.2f} dB "
              f"(paired standard error), better on {int((d > 0).sum())} of {len(d)} images")


def classical(task: str, measurement, train_images):
    """{name: restored} of the classical baselines that apply to this measurement."""
    out = {}
    if task == "inpaint":
        out["mean fill"] = mean_fill(measurement)
        out["nearest fill"] = nearest_fill(measurement)
    if task == "superres":
        out["bicubic"] = bicubic(measurement)
    if task == "colorize":
        out["colour regression"] = PixelRegression.fit(train_images)(measurement)
    out["wiener"] = Wiener.fit(train_images)(measurement).clamp(-1, 1)
    out["nearest training image"] = nearest_consistent(measurement, train_images)
    return out


def posterior(pipeline, measurement, method, steps, options, seed=SEED):
    return pipeline.sample(len(measurement), measurement=measurement, sampler=method, steps=steps, seed=seed,
                           **options)


def calls(pipeline, measurement, method, steps, options) -> int:
    """Model calls per image, counted on one image."""
    count = [0]
    one = measurement[0:1]
    pipeline.sample(1, measurement=one, sampler=method, steps=steps, seed=SEED,
                    callback=lambda info: count.__setitem__(0, count[0] + 1), **options)
    return count[0]


def choose(pipeline, measurement, truth, method, steps, options, option, values):
    """The value of `option` among `values` with the best mean PSNR on these (validation) images."""
    return max(values, key=lambda v: float(psnr(posterior(pipeline, measurement, method, steps,
                                                          {**options, option: v}), truth).mean()))


def table(rows: list[tuple[str, dict]], title: str) -> None:
    print(f"\n{title}")
    print(f"  {'method':<30} {'PSNR':>7} {'SSIM':>6} {'||y-Ax||':>9} {'NFE':>5} {'CPU s/img':>9}")
    for name, r in rows:
        nfe = "-" if r["nfe"] is None else str(r["nfe"])
        print(f"  {name:<30} {r['psnr']:7.2f} {r['ssim']:6.3f} {r['consistency']:9.4f} {nfe:>5} {r['cpu']:9.4f}")


def restoration(pipeline, data, n_val: int, n: int, sigma_y: float, methods: dict, tasks: list[str],
                mean_of: int = 1, dps_scales=DPS_SCALES) -> dict:
    # the one setting each method is known to be sensitive to, chosen on the validation images
    tuned = {"dps": ("scale", dps_scales), "daps": ("likelihood_std", [f * sigma_y for f in DAPS_LIKELIHOOD if sigma_y > 0])}
    test, train = load_dataset(data, "test"), load_dataset(data, "train")
    if len(test) < n_val + n:
        raise ValueError(f"the test split has {len(test)} images; --n-val + --n asks for {n_val + n}")
    validation, scored = test.data[:n_val], test.data[n_val:n_val + n]
    results = {}
    for name in tasks:
        settings = TASKS[name]
        if settings["task"] == "colorize" and pipeline.shape[0] != 3:
            print(f"\n{name}: skipped, the data are grey")
            continue
        op = make_operator(settings["task"], pipeline.shape, **{k: v for k, v in settings.items() if k != "task"})
        y_val, y = measure(op, validation, sigma_y, seed=1), measure(op, scored, sigma_y, seed=2)
        rows = []
        for baseline, restored in classical(settings["task"], y, train.data).items():
            rows.append((baseline, scores(restored, scored, y, None, 0.0)))
        for method, (steps, options) in methods.items():
            options = dict(options)
            label = method
            if method in tuned and tuned[method][0] not in options and tuned[method][1]:
                option, values = tuned[method]
                options[option] = choose(pipeline, y_val, validation, method, steps, options, option, values)
                label += f" ({option} {options[option]:g})"
            restored, cpu, _ = timed(lambda: posterior(pipeline, y, method, steps, options))
            nfe = calls(pipeline, y, method, steps, options)
            rows.append((label, scores(restored, scored, y, nfe, cpu)))
            if mean_of > 1:  # the posterior mean, estimated from mean_of samples: an MMSE estimate
                more, cpu_more, _ = timed(lambda: [posterior(pipeline, y, method, steps, options, seed)
                                                   for seed in range(1, mean_of)])
                mean = torch.stack([restored, *more]).mean(0)
                rows.append((f"{method} mean of {mean_of}", scores(mean, scored, y, nfe * mean_of, cpu + cpu_more)))
        noise = sigma_y * math.prod(op.measurement_shape) ** 0.5
        table(rows, f"{name} (sigma_y {sigma_y:g}; the noise alone is ||y-Ax|| = {noise:.4f})")
        paired(rows)
        results[name] = rows
    return results


def sdedit_curve(pipeline, data, n: int, plot: str, strengths) -> None:
    test = load_dataset(data, "test")
    truth = test.data[:n]
    pooled = torch.nn.functional.avg_pool2d(truth, 4)
    guides = pooled.repeat_interleave(4, -2).repeat_interleave(4, -1)
    network = feature_network(data)
    real = network.features(test.data)
    print(f"\nSDEdit from 4x4-block guides of {n} test images (the run's sampler)")
    print(f"  {'strength':>8} {'t':>7} {'FD':>9} {'RMS to guide':>13} {'RMS to truth':>13}")
    fd, rms = [], []
    for strength in strengths:
        t = strength_time(pipeline.process, strength)
        results = pipeline.sample(n, init=guides, t_start=t, seed=SEED)
        fd.append(frechet_distance(network.features(results), real))
        rms.append(float(((results - guides) / 2).pow(2).flatten(1).mean(1).sqrt().mean()))
        to_truth = float(((results - truth) / 2).pow(2).flatten(1).mean(1).sqrt().mean())
        print(f"  {strength:8.2f} {t:7.4f} {fd[-1]:9.2f} {rms[-1]:13.4f} {to_truth:13.4f}")
    guide_fd = frechet_distance(network.features(guides), real)
    print(f"  the guides themselves: FD {guide_fd:.2f}")
    Path(plot).parent.mkdir(parents=True, exist_ok=True)
    save_lines({"SDEdit": (rms, fd, [f"{s:g}" for s in strengths])}, plot,
               title="SDEdit: realism against faithfulness over the strength",
               xlabel="RMS distance to the guide ([0, 1] pixels)", ylabel="FD to the test split", log_y=True)
    print(f"  curve: {plot}")


def inversion(pipeline, data, n: int, step_counts, fixed_points=(0, 2)) -> None:
    truth = load_dataset(data, "test").data[:n]
    model = pipeline.model.eval()
    print(f"\nDDIM inversion of {n} test images and back (the unconditional model)")
    print(f"  {'steps':>5} {'fixed point':>11} {'NFE':>5} {'RMS error':>10} {'noise std':>9} {'CPU s/img':>9}")
    for steps in step_counts:
        for fixed_point in fixed_points:
            (noise, nfe), cpu, _ = timed(lambda: diffuse.invert(model, pipeline.process, truth, steps,
                                                                fixed_point=fixed_point, return_nfe=True))
            back = diffuse.sample(model, pipeline.process, noise, sampler="ddim", steps=steps)
            rms = float(((back.clamp(-1, 1) - truth) / 2).pow(2).flatten(1).mean(1).sqrt().mean())
            print(f"  {steps:5d} {fixed_point:11d} {nfe:5d} {rms:10.5f} {float(noise.std()):9.3f} {cpu / n:9.4f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="a trained image run (default: train the data's recipe here)")
    parser.add_argument("--data", default="digits", help="the data set whose test split is restored")
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-clock training budget when no --run is given")
    parser.add_argument("--n", type=int, default=50, help="test images scored per task")
    parser.add_argument("--n-val", type=int, default=10, help="test images that choose DPS's scale and DAPS's likelihood std (not scored)")
    parser.add_argument("--sigma-y", type=float, default=0.05, help="measurement noise in [0, 1] pixel units")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated rows of TASKS")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated posterior samplers")
    parser.add_argument("--mean-of", dest="mean_of", type=int, default=1,
                        help="also score the mean of this many samples of each method (the posterior mean's estimate)")
    parser.add_argument("--dps-scales", dest="dps_scales", type=lambda t: [float(v) for v in t.split(",")],
                        default=list(DPS_SCALES), help="DPS's step scales to choose from on the validation images")
    parser.add_argument("--dps-steps", dest="dps_steps", type=int, help="DPS's steps (default: METHODS')")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="METHOD.OPTION=VALUE",
                        help="a method's option or steps beside METHODS' (e.g. daps.prior_std=gaussian, daps.steps=50); repeatable")
    parser.add_argument("--part", choices=("all", "restore", "sdedit", "inversion"), default="all")
    parser.add_argument("--plot", default="benchmarks/out/sdedit.png")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="few steps and images: checks that it runs")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    if args.quick:
        args.n, args.n_val = min(args.n, 16), min(args.n_val, 8)
    chosen = QUICK if args.quick else METHODS
    methods = {m: (chosen[m][0], dict(chosen[m][1])) for m in args.methods.split(",")}
    if args.dps_steps and "dps" in methods:
        methods["dps"] = (args.dps_steps, methods["dps"][1])
    for setting in args.settings:
        name, value = setting.split("=", 1)
        method, option = name.split(".", 1)
        if method not in methods:
            parser.error(f"--set {setting}: {method} is not among --methods")
        if option == "steps":
            methods[method] = (int(value), methods[method][1])
        else:
            methods[method][1][option] = number_or_text(value)
    run = args.run
    if run is None:
        run = str(Path(tempfile.mkdtemp(prefix="inverse-")) / args.data)
        print(f"training the {args.data} recipe for {args.minutes:g} minutes into {run}", file=sys.stderr)
        diffuse.train(diffuse.recipe(args.data).updated(minutes=args.minutes), run)
    pipeline = diffuse.load(run)
    print(f"run {run} on {args.data}: process {pipeline.process!r}, {torch.get_num_threads()} threads")
    if args.part in ("all", "restore"):
        restoration(pipeline, args.data, args.n_val, args.n, args.sigma_y, methods, args.tasks.split(","),
                    args.mean_of, args.dps_scales)
    if args.part in ("all", "sdedit"):
        sdedit_curve(pipeline, args.data, args.n, args.plot, STRENGTHS[::2] if args.quick else STRENGTHS)
    if args.part in ("all", "inversion"):
        inversion(pipeline, args.data, args.n, (10, 50) if args.quick else (10, 50, 100))


if __name__ == "__main__":
    main()
