"""Latent against pixel diffusion on Fashion-MNIST at an equal CPU budget.

    python benchmarks/latent.py                     # 36 CPU-minutes (54 min wall on 2 shared cores)
    python benchmarks/latent.py --cpu-minutes 10    # a larger budget per model
    python benchmarks/latent.py --quick             # smoke run, about 2 CPU-minutes

What is measured
----------------
Three class-conditional models of Fashion-MNIST (Debian's package, 60,000 train / 10,000 test
images, 28x28), each trained for the same CPU time (`--cpu-minutes`, all threads together; see
benchmarks/budget.py) with the same training settings (EDM process, x0 prediction, batch 64,
learning rate 1e-3 after 50 warmup steps, EMA):

  pixel U-Net     the diffusion task's default network for 28x28 images (levels 28 -> 14 -> 7)
  pixel DiT-XS/4  DiT-XS (`--dit`) on 4x4 pixel patches (`--pixel-patch`): 7x7 = 49 tokens
  latent DiT-XS/1 the same DiT on 1x1 patches of the 7x7x4 latents of a factor-4 KL autoencoder:
                  49 tokens too, so the two DiTs cost the same per step and differ only in what
                  a token holds (16 raw pixels, or 4 latent channels)

28 = 4 * 7, so nothing is padded: the U-Net halves 28 twice, patches of 4 tile 28, and the
autoencoder's factor 4 gives 7x7 latents.

The autoencoder (the autoencoder task: factor 4, width 16, 4 latent channels, L1 + 1e-6 KL,
batch 64, learning rate 2e-3) is trained first for its own budget (`--ae-cpu-minutes`, default
the models' budget), and its reconstruction PSNR on the test split is reported. The latent
model's task then encodes the training set once (posterior means times the scale factor).
Neither cost is in the latent model's training budget; the table adds them beside it.

Per model: parameters; training steps and images per CPU-second within the budget; sampling
cost per image in CPU-seconds (all threads; the same sampler and steps for every model: Heun
with 18 steps = 35 network evaluations, class labels cycling 0..9, no guidance, batches of 500;
the latent model's time includes decoding, also given on its own); and the scores of
`diffuse.metrics.evaluate` for `--n` samples against the 10,000 test images, in the features of
the locally trained, cached classifier: Frechet distance (FD), precision / recall (k = 5), and
the classifier's accuracy on the labels asked for. The test features are computed once, and the
scores are checked against `evaluate` on the floor's images. Sample metrics depend on the
sample size, so the floor is the same scores for `--n` real training images (what a perfect
generator gets at that size), printed beside those images passed through the autoencoder (the
latent models' ceiling); `metrics.floor` at the full 10,000 is printed too.

OpenMP workers wait passively (budget.py sets OMP_WAIT_POLICY unless it is set): with another
job on the machine, spinning workers made one training step cost 4-13x its CPU time on a
quiet machine, which would charge the budget for the neighbour's load.

Sample grids (10 per class), the autoencoder run (with reconstructions.png) and results.json
go to `--out`. The first run also trains and caches the classifier (20 CPU-minutes here), which
the totals leave out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from budget import set_threads, timed, train_for  # first: it sets OpenMP's wait policy before torch loads

import torch

import diffuse
from diffuse.data import Dataset, load_dataset
from diffuse.metrics import evaluate, feature_network, floor, frechet_distance, precision_recall_density_coverage
from diffuse.models import dit_config
from diffuse.models.autoencoder import AutoencoderConfig
from diffuse.plotting import save_class_grid
from diffuse.training import AutoencoderTaskConfig, DiffusionTaskConfig, Engine, RunConfig, default_network


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def networks(shape, num_classes: int, dit: str, pixel_patch: int) -> dict[str, dict | None]:
    """The three models' network configs; None marks the latent model (filled in from the latents)."""
    channels, height, _ = shape
    return {
        "pixel U-Net": default_network("image", shape, num_classes),
        f"pixel {dit}/{pixel_patch}": dit_config(dit, in_channels=channels, image_size=height,
                                                  patch_size=pixel_patch, num_classes=num_classes),
        f"latent {dit}/1": None,
    }


def latent_network(dit: str, num_classes: int) -> dict:
    # in_channels and image_size are left out: the task takes them from the latent shape
    net = dit_config(dit, patch_size=1, num_classes=num_classes)
    return {k: v for k, v in net.items() if k not in ("in_channels", "image_size", "out_channels")}


class Scorer:
    """`metrics.evaluate`'s FD, precision / recall and accuracy, with the test split's features
    computed once instead of at every call (main checks that both agree)."""

    def __init__(self, classifier, test: Dataset):
        self.classifier = classifier
        self.real = classifier.features(test.data)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        fake = images.float().clamp(-1, 1)  # as evaluate does, and as saving pictures would
        feats = self.classifier.features(fake)
        return {"fd": frechet_distance(feats, self.real), "accuracy": self.classifier.accuracy(fake, labels),
                **precision_recall_density_coverage(self.real, feats, k=5)}


def subset(ds: Dataset, n: int | None, seed: int, name: str) -> Dataset:
    if n is None or n >= len(ds):
        return ds
    index = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return ds.subset(index, name)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny budgets, 100 samples, 5 steps")
    parser.add_argument("--data", default="fashion", choices=["fashion", "mnist"])
    parser.add_argument("--cpu-minutes", type=float, default=5.0, help="training budget of each model")
    parser.add_argument("--ae-cpu-minutes", type=float, default=None, help="the autoencoder's (default: --cpu-minutes)")
    parser.add_argument("--n", type=int, default=1000, help="samples per model for the metrics")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=50, help="warmup steps")
    parser.add_argument("--dit", default="DiT-XS", help="named DiT size for both DiTs")
    parser.add_argument("--pixel-patch", type=int, default=4, help="the pixel DiT's patch size")
    parser.add_argument("--sampler", default="heun")
    parser.add_argument("--steps", type=int, default=18, help="sampler steps (heun: 2 * steps - 1 NFE)")
    parser.add_argument("--ae-batch-size", type=int, default=64)
    parser.add_argument("--ae-channels", type=int, default=16, help="the autoencoder's first width")
    parser.add_argument("--ae-lr", type=float, default=2e-3)
    parser.add_argument("--out", default="runs/benchmark-latent", help="sample grids and the autoencoder run")
    args = parser.parse_args(argv)
    if args.quick:
        args.cpu_minutes, args.ae_cpu_minutes, args.n, args.steps = 0.05, 0.05, min(args.n, 100), 5
    ae_minutes = args.cpu_minutes if args.ae_cpu_minutes is None else args.ae_cpu_minutes
    set_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python benchmarks/latent.py", *(argv if argv is not None else sys.argv[1:])])
    cpu0, wall0 = time.process_time(), time.perf_counter()

    train, test = load_dataset(args.data, "train"), load_dataset(args.data, "test")
    # the smoke run trains on a slice, so that the latent model's encoding pass stays short
    train_used = subset(train, 2000 if args.quick else None, 1, f"{train.name}-slice")
    log(f"{args.data}: {len(train)} train / {len(test)} test images of shape {train.shape}; "
        f"threads {args.threads}, budget {args.cpu_minutes} CPU-min per model, autoencoder {ae_minutes}")
    classifier = feature_network(args.data, log=log)
    n = min(args.n, len(test))
    reference = subset(train, n, 2, f"{train.name}-floor{n}")
    score = Scorer(classifier, test)
    floor_n = score(reference.data, reference.labels)
    official = evaluate(reference.data, reference.labels, args.data, classifier)
    for key in ("fd", "precision", "recall", "accuracy"):
        if abs(floor_n[key] - official[key]) > 1e-6 * max(1.0, abs(official[key])):
            raise RuntimeError(f"the benchmark's {key} {floor_n[key]} differs from metrics.evaluate's {official[key]}")
    floor_full = None if args.quick else floor(args.data, classifier)
    log(f"floor at n = {n}: FD {floor_n['fd']:.2f}" +
        ("" if floor_full is None else f"; at n = {len(test)}: FD {floor_full['fd']:.2f}"))

    # -- the autoencoder ---------------------------------------------------------------------------
    autoencoder = AutoencoderConfig.for_factor(4, in_channels=train.shape[0], channels=args.ae_channels)
    ae_config = RunConfig(AutoencoderTaskConfig(network=autoencoder.to_dict()), args.data,
                          {"batch_size": args.ae_batch_size, "lr": args.ae_lr, "warmup_steps": min(100, args.warmup * 2),
                           "seed": 0})
    shutil.rmtree(out / "autoencoder", ignore_errors=True)  # a fresh run, not the last one's checkpoints
    ae_test = subset(test, 1000 if args.quick else None, 3, f"{test.name}-slice")  # where PSNR is measured
    ae = Engine(ae_config, out / "autoencoder", dataset=train_used, test_dataset=ae_test, device="cpu",
                progress=False)
    ae_spent = train_for(ae.train_step, ae_minutes)
    ae._checkpoint()  # what the engine ends on: the scale factor, the checkpoint, the pictures
    ae_psnr = ae.task.evaluate(ae.model)["psnr"]
    ae_params = sum(p.numel() for p in ae.model.parameters())
    # the latent models' ceiling: the floor's real images through the autoencoder and back
    with torch.no_grad():
        ae.model.eval()
        rebuilt = torch.cat([ae.model.decode(ae.model.encode(x)[0]) for x in reference.data.split(500)])
    ae_scores = score(rebuilt, reference.labels)
    log(f"autoencoder: {ae_spent.steps} steps in {ae_spent.cpu_seconds:.0f} CPU-s, test PSNR {ae_psnr:.2f} dB, "
        f"latents {tuple(ae.task.latent_shape)}, scale factor {ae.task.state['latent']['scale_factor']:.3f}")

    # -- the three diffusion models -----------------------------------------------------------------
    labels = torch.arange(n) % train.num_classes
    rows = []
    for name, network in networks(train.shape, train.num_classes, args.dit, args.pixel_patch).items():
        latent = network is None
        slug = name.replace(" ", "-").replace("/", "p")
        task = DiffusionTaskConfig(cond="class", network=latent_network(args.dit, train.num_classes) if latent else network,
                                   latent=str(out / "autoencoder") if latent else None, sampler=args.sampler,
                                   sample_steps=args.steps)
        config = RunConfig(task, args.data, {"batch_size": args.batch_size, "lr": args.lr, "warmup_steps": args.warmup,
                                             "seed": 0})
        shutil.rmtree(out / slug, ignore_errors=True)
        # for the latent model this encodes the training set: a one-off cost outside its budget
        engine, setup_cpu, _ = timed(lambda: Engine(config, out / slug, dataset=train_used, device="cpu",
                                                    progress=False))
        params = sum(p.numel() for p in engine.model.parameters())
        log(f"{name}: {params / 1e6:.2f}M parameters, data {tuple(engine.examples.shape)}, "
            f"sigma_data {engine.config.task.sigma_data}" + (f", encoding {setup_cpu:.0f} CPU-s" if latent else ""))
        spent = train_for(engine.train_step, args.cpu_minutes)
        log(f"  {spent.steps} steps in {spent.cpu_seconds:.0f} CPU-s ({spent.wall_seconds:.0f} s wall)")
        _, nfe = diffuse.sample(engine.ema, engine.model.process,
                                torch.zeros(1, *engine.examples.shape), sampler=args.sampler, steps=args.steps,
                                prediction=engine.model.prediction, schedule=engine.config.task.sample_schedule,
                                cond={"labels": labels[:1]}, return_nfe=True)
        pipeline = engine.task.pipeline(engine.ema)
        images, sample_cpu, sample_wall = timed(lambda: pipeline.sample(n, labels=labels, seed=0))
        decode_cpu = None
        if latent:
            zeros = torch.zeros(n, *engine.examples.shape)
            decode_cpu = timed(lambda: engine.task.codec.decode(zeros))[1]
        save_class_grid(images[:100], labels[:100], out / f"{slug}.png")
        scores = score(images, labels)
        log(f"  sampling {sample_cpu:.0f} CPU-s ({sample_wall:.0f} s wall) for {n}; FD {scores['fd']:.2f}, "
            f"accuracy {scores['accuracy']:.3f}")
        rows.append(dict(name=name, params=params, steps=spent.steps, train_cpu=spent.cpu_seconds,
                         train_wall=spent.wall_seconds, throughput=spent.steps * args.batch_size / spent.cpu_seconds,
                         sample_cpu=sample_cpu / n, decode_cpu=None if decode_cpu is None else decode_cpu / n,
                         nfe=nfe, encode_cpu=setup_cpu if latent else None, scores=scores))

    # -- report ---------------------------------------------------------------------------------------
    total_cpu, total_wall = time.process_time() - cpu0, time.perf_counter() - wall0
    pr = lambda s: f"{s['precision']:.2f} / {s['recall']:.2f}"  # noqa: E731
    print(f"\n{command}\n")
    print(f"{args.data}, {len(train_used)} training images, class-conditional, batch {args.batch_size}, "
          f"lr {args.lr}, {args.threads} threads; {args.cpu_minutes:g} CPU-min of training per model; "
          f"{args.sampler} {args.steps} steps ({rows[0]['nfe']} NFE); metrics on n = {n} samples against the "
          f"{len(test)} test images\n")
    lat = rows[-1]
    ae_train_cpu, encode_cpu = ae_spent.cpu_seconds, lat["encode_cpu"]
    print("| model | parameters | training CPU-min | training steps | training img / CPU-s | "
          "sampling CPU-ms / img | FD | accuracy | precision / recall |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        s = r["scores"]
        budget = f"{r['train_cpu'] / 60:.1f}"
        if r is lat:
            budget += f" (+{ae_train_cpu / 60:.1f} autoencoder, +{encode_cpu / 60:.1f} encoding)"
        print(f"| {r['name']} | {r['params'] / 1e6:.2f}M | {budget} | {r['steps']} | {r['throughput']:.0f} | "
              f"{r['sample_cpu'] * 1e3:.0f} | {s['fd']:.1f} | {s['accuracy']:.3f} | {pr(s)} |")
    print(f"| real training images (floor) | | | | | | {floor_n['fd']:.1f} | {floor_n['accuracy']:.3f} | "
          f"{pr(floor_n)} |")
    print(f"| the same through the autoencoder | | | | | | {ae_scores['fd']:.1f} | {ae_scores['accuracy']:.3f} | "
          f"{pr(ae_scores)} |")
    print(f"\nThe latent model's training budget excludes the autoencoder ({ae_params / 1e6:.2f}M parameters, "
          f"{ae_spent.steps} steps of batch {args.ae_batch_size}, test PSNR {ae_psnr:.2f} dB, latents "
          f"{'x'.join(map(str, ae.task.latent_shape))}) and encoding the {len(train_used)} training images; with both "
          f"it cost {(lat['train_cpu'] + ae_train_cpu + encode_cpu) / 60:.1f} CPU-min. Its sampling time includes "
          f"decoding ({lat['decode_cpu'] * 1e3:.1f} CPU-ms / img).")
    for r in rows[:-1]:
        print(f"{lat['name']} against {r['name']}, CPU per image: training {r['throughput'] / lat['throughput']:.2f}x, "
              f"sampling {lat['sample_cpu'] / r['sample_cpu']:.2f}x; FD {lat['scores']['fd']:.1f} against "
              f"{r['scores']['fd']:.1f}.")
    if floor_full is not None:
        print(f"metrics.floor at n = {len(test)}: FD {floor_full['fd']:.1f}, precision / recall {pr(floor_full)}, "
              f"classifier test accuracy {floor_full['classifier_test_accuracy']:.3f}")
    print(f"\ntotal {total_cpu / 60:.1f} CPU-min, {total_wall / 60:.1f} min wall")
    (out / "results.json").write_text(json.dumps(
        {"command": command, "rows": rows, "floor_n": floor_n, "floor_full": floor_full,
         "autoencoder": {"steps": ae_spent.steps, "cpu_seconds": ae_train_cpu, "psnr": ae_psnr,
                         "encode_cpu_seconds": encode_cpu, "reconstruction_scores": ae_scores}},
        indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
