"""Quality per CPU-minute on real data: our training recipe against the standard diffusers one.

    python benchmarks/digits.py                       # 10 CPU-minutes of training each, ~15 min alone
    python benchmarks/digits.py --quick               # smoke run, about a minute
    python benchmarks/digits.py --data fashion        # 28x28 Fashion-MNIST (or --data mnist)
    python benchmarks/digits.py --only ours --set lr=1e-3 --set batch_size=256   # recipe ablations

What is measured
----------------
Both contestants train a class-conditional model of the data's train split for the same budget of
process CPU time (user + system over all threads; torch on `--threads` threads, default 2; see
budget.py), then draw one sample per test image, with the test split's labels, using the same
number of network evaluations (NFE, default 35). Sampling is not charged to the budget; its time
is reported. The samples are scored by diffuse.metrics.evaluate against the test split:

  acc        a locally trained classifier's accuracy on the samples against the labels asked for
  FD         Frechet distance in that classifier's features (the offline stand-in for FID)
  FD/floor   FD over the floor: the same metric between real train images (as many as the test
             split holds) and the test split, i.e. what a perfect generator scores
  prec, rec  k-NN precision and recall (k = 5) in the same features
  mem        fraction of samples whose nearest / second-nearest training image distance ratio is
             below 1/3, and Carlini et al.'s normalised l2 below 1/3 (ratio / normalised)

Contestants
  ours    `diffuse train --recipe digits --data DATA` (diffuse.recipes), the `steps` horizon of the
          learning-rate decay set from a short calibration so that the decay ends with the budget;
          sampled with the recipe's sampler (Heun, 18 steps = 35 NFE).
  peer    diffusers' standard recipe: UNet2DModel (32/64 channels, attention at the lower level,
          class embeddings) predicting eps, DDPMScheduler (linear betas, 1000 steps), uniform
          timesteps, MSE, AdamW lr 1e-4 (weight decay 1e-6) with 500 warmup steps and cosine decay
          over the budget's calibrated step count, batch 128, EMA with diffusers' EMAModel
          (max decay 0.9999, power 3/4); sampled with DPMSolverMultistepScheduler at 35 steps,
          diffusers' usual fast sampler for DDPM-trained models, on the same noise.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

from budget import Spent, set_threads, timed, train_budgeted  # first: it sets OpenMP's wait policy

import torch

import dataclasses

from diffuse.data import load_dataset
from diffuse.metrics import evaluate, feature_network, floor
from diffuse.recipes import recipe
from diffuse.samplers import Generators
from diffuse.training import Engine

# -- ours ------------------------------------------------------------------------------------------

def run_ours(data: str, cpu_minutes: float, labels: torch.Tensor, nfe: int, overrides: dict, workdir: str,
             fixed_steps: int | None):
    engine = Engine(recipe("digits").updated(data=data, **overrides), workdir, progress=False)
    train = engine.config.train
    spent = train_budgeted(engine.train_step, cpu_minutes,
                           lambda n: setattr(engine.config, "train", dataclasses.replace(train, steps=n)), fixed_steps)
    sample_steps = (nfe + 1) // 2 if engine.config.task.sampler == "heun" else nfe
    pipeline = engine.task.pipeline(engine.ema)
    images, cpu, wall = timed(lambda: pipeline.sample(len(labels), labels=labels, steps=sample_steps, seed=1))
    params = sum(p.numel() for p in engine.model.parameters())
    return images, spent, cpu, wall, params, engine.config


# -- the diffusers peer ----------------------------------------------------------------------------

def peer_network(shape, num_classes: int):
    from diffusers import UNet2DModel

    channels, height, _ = shape
    levels = 2 if height <= 16 else 3
    widths = (32, 64, 64)[:levels]
    down = ("DownBlock2D",) * (levels - 1) + ("AttnDownBlock2D",)
    up = ("AttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1)
    return UNet2DModel(sample_size=height, in_channels=channels, out_channels=channels,
                       block_out_channels=widths, down_block_types=down, up_block_types=up,
                       layers_per_block=2, num_class_embeds=num_classes, norm_num_groups=32)


def train_peer(data: str, cpu_minutes: float, batch_size: int, fixed_steps: int | None, seed: int = 0):
    """diffusers' standard recipe (see the module docstring) -> (EMA network in eval mode, its
    DDPMScheduler, the training's Spent)."""
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel

    train = load_dataset(data, "train")
    torch.manual_seed(seed)
    net = peer_network(train.shape, train.num_classes)
    ema = EMAModel(net.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=0.75)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=1e-6)
    generator = torch.Generator().manual_seed(seed)
    state = {"lr": None}

    def step():
        index = torch.randint(len(train), (batch_size,), generator=generator)
        x0, y = train.data[index], train.labels[index]
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
        loss = torch.nn.functional.mse_loss(net(scheduler.add_noise(x0, noise, t), t, class_labels=y).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        if state["lr"] is not None:
            state["lr"].step()
        ema.step(net.parameters())

    def set_horizon(steps: int) -> None:
        state["lr"] = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=min(500, steps // 10),
                                                      num_training_steps=steps)

    spent = train_budgeted(step, cpu_minutes, set_horizon, fixed_steps)
    ema.copy_to(net.parameters())
    return net.eval(), scheduler, spent


def run_peer(data: str, cpu_minutes: float, labels: torch.Tensor, nfe: int, batch_size: int,
             fixed_steps: int | None, seed: int = 0):
    from diffusers import DPMSolverMultistepScheduler

    net, scheduler, spent = train_peer(data, cpu_minutes, batch_size, fixed_steps, seed)
    shape = load_dataset(data, "test").shape

    @torch.no_grad()
    def draw():
        sampler = DPMSolverMultistepScheduler.from_config(scheduler.config)
        sampler.set_timesteps(nfe)
        noise = Generators.seeded(1, 0, len(labels)).randn(shape) * sampler.init_noise_sigma  # ours, too
        out = []
        for start in range(0, len(labels), 500):
            y, x = labels[start:start + 500], noise[start:start + 500]
            sampler.set_timesteps(nfe)  # a multistep scheduler keeps its step index and history: reset per batch
            for t in sampler.timesteps:
                x = sampler.step(net(x, t, class_labels=y).sample, t, x).prev_sample
            out.append(x)
        return torch.cat(out)

    images, cpu, wall = timed(draw)
    params = sum(p.numel() for p in net.parameters())
    return images, spent, cpu, wall, params


# -- the table -------------------------------------------------------------------------------------

def row(name, spent: Spent, sample_cpu, sample_wall, params, scores, fd_floor, n) -> str:
    return (f"| {name} | {params / 1e6:.2f}M | {spent.steps} | {spent.cpu_seconds / 60:.1f} / {spent.wall_seconds / 60:.1f} "
            f"| {sample_wall / n * 1e3:.1f} | {scores['accuracy']:.3f} | {scores['fd']:.1f} | "
            f"{scores['fd'] / fd_floor:.2f} | {scores['precision']:.3f} | {scores['recall']:.3f} | "
            f"{scores['memorised_ratio']:.3f} / {scores['memorised_normalised']:.3f} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="digits", help="digits | mnist | fashion")
    parser.add_argument("--cpu-minutes", type=float, default=10.0, help="training budget per contestant")
    parser.add_argument("--nfe", type=int, default=35)
    parser.add_argument("--n", type=int, help="samples to score (default: as many as the test split holds)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, help="train exactly this many steps instead of the CPU budget "
                                                   "(for comparing recipes at equal steps on a busy machine)")
    parser.add_argument("--only", choices=["ours", "peer"])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="override a field of our run config by name, e.g. --set lr=1e-3 (RunConfig.updated)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 0.3 CPU-minutes, 100 samples")
    parser.add_argument("--json", help="also write the scores here")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value) if value[:1] in "[{0123456789-tfn" else value
    cpu_minutes = 0.3 if args.quick else args.cpu_minutes

    test = load_dataset(args.data, "test")
    labels = test.labels[:100 if args.quick else args.n]
    classifier = feature_network(args.data)
    fd_floor = floor(args.data, classifier, n=len(labels))["fd"]
    batch = overrides.get("batch_size", recipe("digits").train.batch_size)

    print(f"# {args.data}: {cpu_minutes:g} CPU-minutes of training each, torch threads = {args.threads}, "
          f"{len(labels)} samples at {args.nfe} NFE; command: python benchmarks/{' '.join(['digits.py', *sys.argv[1:]])}",
          flush=True)
    rows, results = [], {"floor_fd": fd_floor}
    began = time.perf_counter()
    if args.only != "peer":
        with tempfile.TemporaryDirectory() as workdir:
            images, spent, cpu, wall, params, config = run_ours(args.data, cpu_minutes, labels, args.nfe, overrides, workdir,
                                                                   args.steps)
        scores = evaluate(images, labels, args.data, classifier)
        rows.append(row("ours", spent, cpu, wall, params, scores, fd_floor, len(labels)))
        results["ours"] = {**scores, "steps": spent.steps, "cpu_seconds": spent.cpu_seconds, "config": config.to_dict()}
        print(rows[-1], flush=True)
    if args.only != "ours":
        images, spent, cpu, wall, params = run_peer(args.data, cpu_minutes, labels, args.nfe, batch, args.steps)
        scores = evaluate(images, labels, args.data, classifier)
        rows.append(row("diffusers", spent, cpu, wall, params, scores, fd_floor, len(labels)))
        results["peer"] = {**scores, "steps": spent.steps, "cpu_seconds": spent.cpu_seconds}
        print(rows[-1], flush=True)

    print()
    print(f"FD floor ({len(labels)} real train images vs the test split's {len(test)}): {fd_floor:.1f}")
    print("| | params | steps | train CPU / wall min | sample ms/img | acc | FD | FD/floor | prec | rec | mem ratio / norm |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\ntotal wall time {(time.perf_counter() - began) / 60:.1f} min")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
