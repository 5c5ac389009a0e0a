"""A model trained by diffusers, sampled by both libraries: the real-weights check of from_diffusers.

    python benchmarks/pretrained.py             # 10 CPU-minutes of training, then ~120 sampling runs
    python benchmarks/pretrained.py --quick     # smoke run, about a minute

What is measured
----------------
The diffusers peer of benchmarks/digits.py (UNet2DModel with class embeddings, DDPMScheduler with
1000 linear betas, diffusers' training recipe) is trained on the data's train split for the CPU
budget, saved with `save_pretrained`, and read back with `diffuse.from_diffusers`. Both libraries
then draw one sample per test image, with the test split's labels and the same starting noise
(diffuse.samplers.Generators.seeded(1, ...)), within budgets of 5, 10 and 20 network evaluations:

  ours       our DPM-Solver++(2M), UniPC, DDIM and Heun on the schedules auto (the default,
             trailing here), log_snr and karras, through Pipeline.sample, each with the scheduler
             config's clip_sample (DDPMScheduler's default: x0 estimates clipped to [-1, 1];
             "clip") and without it; "default" is what a user who changes nothing gets: sampler
             dpmpp_2m, schedule auto, the config's clipping
  diffusers  DPMSolverMultistep, UniPCMultistep, DDIM, EulerDiscrete, HeunDiscrete and DEISMultistep
             at their defaults (nothing set but the model's scheduler config), with the trailing
             spacing and with Karras sigmas, each in the loop its pipelines run (scale_model_input,
             the network, step); "default" is DPMSolverMultistep at its defaults

A configuration gets the largest step count whose evaluations (counted by the loop) fit the budget.
The samples are scored by diffuse.metrics.evaluate against the test split (acc: the held-out
classifier's accuracy on the labels asked for; FD: Frechet distance in its features, with the
real-data floor printed); ms/img is the sampling wall time per image (torch on --threads threads).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time

from budget import set_threads, timed  # first: it sets OpenMP's wait policy

import torch

import diffuse
from diffuse.data import load_dataset
from diffuse.metrics import evaluate, feature_network, floor
from diffuse.samplers import Generators

from digits import train_peer

OUR_SAMPLERS = ("dpmpp_2m", "unipc", "ddim", "heun")
OUR_SCHEDULES = ("auto", "log_snr", "karras")  # auto: trailing on this discrete process
THEIR_SCHEDULERS = ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "DDIMScheduler",
                    "EulerDiscreteScheduler", "HeunDiscreteScheduler", "DEISMultistepScheduler")


def largest_fitting(nfe_of, budget: int) -> int:
    steps = budget
    while steps > 1 and nfe_of(steps) > budget:
        steps -= 1
    return steps


def ours(pipeline, labels, budgets):
    """{(name, budget): (images, nfe, wall)} for every sampler and schedule of ours, with the
    scheduler config's clip_sample (as loaded, marked "clip") and without it."""
    out = {}
    probe = torch.zeros(1, *pipeline.draw_shape)
    loaded = pipeline.clip_denoised
    clips = (loaded, None) if loaded is not None else (None,)
    for clip, sampler, schedule in itertools.product(clips, OUR_SAMPLERS, OUR_SCHEDULES):
        pipeline.clip_denoised = clip
        label = f"{sampler} {schedule}" + ("" if clip is None else " clip")

        def nfe_of(steps):
            return diffuse.sample(pipeline.model, pipeline.process, probe, sampler=sampler, steps=steps,
                                  schedule=schedule, cond={"labels": labels[:1]}, return_nfe=True)[1]

        for budget in budgets:
            try:
                steps = largest_fitting(nfe_of, budget)
                images, _, wall = timed(lambda: pipeline.sample(len(labels), labels=labels, sampler=sampler,
                                                                steps=steps, schedule=schedule, seed=1))
            except ValueError as e:  # e.g. a schedule that refuses this many steps
                print(f"  skipped ours {label} at NFE {budget}: {e}", file=sys.stderr)
                continue
            out[label, budget] = images, nfe_of(steps), wall
    pipeline.clip_denoised = loaded
    return out


def theirs(net, config, labels, shape, budgets):
    """{(name, budget): (images, nfe, wall)} for diffusers' schedulers in their pipelines' loop."""
    import diffusers
    variants = {"defaults": {}, "trailing": {"timestep_spacing": "trailing"}, "karras": {"use_karras_sigmas": True}}
    out = {}
    for name in THEIR_SCHEDULERS:
        cls = getattr(diffusers, name)
        for variant, options in variants.items():
            if variant == "karras" and name == "DDIMScheduler":
                continue  # DDIM has no Karras sigmas
            make = lambda: cls.from_config(config, **options)  # noqa: E731

            def nfe_of(steps):
                sched = make()
                sched.set_timesteps(steps)
                return len(sched.timesteps)

            for budget in budgets:
                steps = largest_fitting(nfe_of, budget)

                @torch.no_grad()
                def draw():
                    noise = Generators.seeded(1, 0, len(labels)).randn(shape)
                    parts = []
                    for start in range(0, len(labels), 500):
                        sched = make()  # multistep schedulers keep state: a fresh one per batch
                        sched.set_timesteps(steps)
                        x = noise[start:start + 500] * sched.init_noise_sigma
                        y = labels[start:start + 500]
                        for t in sched.timesteps:
                            x = sched.step(net(sched.scale_model_input(x, t), t, class_labels=y).sample, t, x).prev_sample
                        parts.append(x)
                    return torch.cat(parts)

                images, _, wall = timed(draw)
                out[f"{name.replace('Scheduler', '')} {variant}", budget] = images, nfe_of(steps), wall
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="digits", help="digits | mnist | fashion")
    parser.add_argument("--cpu-minutes", type=float, default=10.0, help="the peer's training budget")
    parser.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 0.3 CPU-minutes, 100 samples")
    parser.add_argument("--save", help="keep the trained peer in this folder (a diffusers pipeline folder)")
    parser.add_argument("--load", help="sample this diffusers DDPM pipeline folder instead of training one")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    import diffusers

    began = time.perf_counter()
    test = load_dataset(args.data, "test")
    labels = test.labels[:100] if args.quick else test.labels
    classifier = feature_network(args.data)
    fd_floor = floor(args.data, classifier, n=len(labels))["fd"]
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.load or args.save or scratch
        if args.load:
            trained = "loaded from " + args.load
        else:
            net, scheduler, spent = train_peer(args.data, 0.3 if args.quick else args.cpu_minutes, 128, None)
            diffusers.DDPMPipeline(unet=net, scheduler=scheduler).save_pretrained(folder)
            trained = f"{spent.steps} steps in {spent.cpu_seconds / 60:.1f} CPU-minutes"
        pipeline = diffuse.from_diffusers(folder)
        runs = ours(pipeline, labels, args.nfe)
        scheduler_config = diffusers.DDPMScheduler.from_pretrained(folder, subfolder="scheduler").config
    runs.update({("diffusers " + name, b): value for (name, b), value in
                 theirs(pipeline.model.net, scheduler_config, labels, test.shape, args.nfe).items()})
    scores = {key: evaluate(images.clamp(-1, 1), labels, args.data, classifier) for key, (images, _, _) in runs.items()}

    print(f"# {args.data}: diffusers' UNet2DModel recipe, {trained}; {len(labels)} samples per configuration; torch threads = {args.threads}; "
          f"FD floor {fd_floor:.1f}; command: python benchmarks/{' '.join(['pretrained.py', *sys.argv[1:]])}")
    names = list(dict.fromkeys(name for name, _ in runs))
    head = "".join(f" | NFE<={b} acc | FD | ms/img" for b in args.nfe)
    print(f"\n| configuration{head} |\n|---" + "|---" * (3 * len(args.nfe)) + "|")
    for name in names:
        cells = ""
        for b in args.nfe:
            if (name, b) in runs:
                s, (_, _, wall) = scores[name, b], runs[name, b]
                cells += f" | {s['accuracy']:.3f} | {s['fd']:.1f} | {wall / len(labels) * 1e3:.2f}"
            else:
                cells += " | - | - | -"
        print(f"| {name if name.startswith('diffusers') else 'ours ' + name}{cells} |")

    default = "dpmpp_2m auto" + (" clip" if pipeline.clip_denoised is not None else "")
    print(f"\n| NFE | ours default ({default}) | ours best | diffusers default (DPMSolverMultistep) | diffusers best |")
    print("|---|---|---|---|---|")
    for b in args.nfe:
        mine = [n for n in names if not n.startswith("diffusers") and (n, b) in runs]
        peer = [n for n in names if n.startswith("diffusers") and (n, b) in runs]
        best = lambda group: min(group, key=lambda n: scores[n, b]["fd"])  # noqa: E731
        cell = lambda n: f"{n}: FD {scores[n, b]['fd']:.1f}, acc {scores[n, b]['accuracy']:.3f}"  # noqa: E731
        print(f"| {b} | {cell(default)} | {cell(best(mine))} | "
              f"{cell('diffusers DPMSolverMultistep defaults')} | {cell(best(peer))} |")
    print(f"\ntotal wall time {(time.perf_counter() - began) / 60:.1f} min")


if __name__ == "__main__":
    main()
