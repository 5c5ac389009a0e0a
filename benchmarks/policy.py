"""Diffusion Policy against its baselines on Push-T, for the same training budget, beside the expert.

    python benchmarks/policy.py --episodes 50 --out runs/policy-bench

What is measured
----------------
Both policies train with the engine on the same demonstrations (the scripted expert's 200
episodes, `load_dataset("pusht")`) for the same number of steps of batch 64 (--steps, capped
at --minutes of wall time, one thread): the diffusion policy is the `pusht` recipe (temporal U-Net, DDPM cosine
betas, eps, EMA), the baselines the `bc` task (an MLP regressing the action chunk, MSE) and the
`mdn` task (the same MLP giving a 5-component Gaussian mixture over the chunk, NLL). A run
folder that already exists under --out is reused, not retrained (--retrain replaces it). Each
policy then plays --episodes episodes of the evaluation seeds (EVALUATION_SEED onward), planning
16 actions from the last 2 observations and executing 8 (the diffusion policy samples each
chunk with DDIM in --sample-steps steps), as does the expert on the same seeds. The table: the
success rate (coverage >= 0.95 at any step), the mean maximum coverage, the share of episodes
that circle the block clockwise, counter-clockwise or never touch it (`approach_mode`), the
training steps reached and the wall minutes they took, and the rollouts' CPU time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import budget  # noqa: E402  (before torch: idle OpenMP threads sleep)

import numpy as np  # noqa: E402

from diffuse.checkpoint import read_run  # noqa: E402
from diffuse.data.pusht import EVALUATION_SEED  # noqa: E402
from diffuse.envs.experts import MODES, approach_mode, expert_episode  # noqa: E402
from diffuse.envs.pusht import SUCCESS_COVERAGE  # noqa: E402
from diffuse.envs.rollout import rollout, summarise  # noqa: E402
from diffuse.policy import load_policy  # noqa: E402
from diffuse.recipes import recipe  # noqa: E402
from diffuse.training import RunConfig, task_class  # noqa: E402
from diffuse.data import DataConfig  # noqa: E402
from diffuse.training.engine import read_metrics, train  # noqa: E402


def trained(name: str, config: RunConfig, out: Path, retrain: bool) -> tuple[Path, str]:
    """The run folder (trained now unless it exists) and "steps/wall minutes" of its training."""
    folder = out / name
    if retrain or not (folder / "checkpoints").is_dir():
        train(config, folder, overwrite=retrain, progress=False, pictures=False)
    steps = int(read_run(folder).folder.name.rpartition("-")[2])
    seconds = read_metrics(folder)[-1]["seconds"]
    return folder, f"{steps}/{seconds / 60:.1f}"


def row(name: str, summary: dict, steps, cpu: float) -> str:
    shares = summary["mode_shares"]
    return (f"{name:<24}{summary['success_rate']:>8.3f}{summary['mean_max_coverage']:>10.4f}"
            f"{shares[MODES[0]]:>7.2f}{shares[MODES[1]]:>7.2f}{shares['none']:>7.2f}{steps:>11}{cpu:>9.1f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000, help="training steps of each policy (batch 64)")
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="and at most this many wall minutes of training each")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--sample-steps", type=int, default=10, help="DDIM steps per chunk")
    parser.add_argument("--out", type=Path, default=Path("runs/policy-bench"))
    parser.add_argument("--retrain", action="store_true")
    args = parser.parse_args(argv)
    budget.set_threads(1)

    budget_fields = dict(steps=args.steps, minutes=args.minutes)
    dp_config = recipe("pusht").updated(**budget_fields)
    bc_config = RunConfig(task_class("bc").Config(), DataConfig("pusht")).updated(**budget_fields)
    mdn_config = RunConfig(task_class("mdn").Config(), DataConfig("pusht")).updated(**budget_fields)
    runs = {"diffusion policy": trained("diffusion", dp_config, args.out, args.retrain),
            "behaviour cloning (MSE)": trained("bc", bc_config, args.out, args.retrain),
            "mixture density (GMM)": trained("mdn", mdn_config, args.out, args.retrain)}

    seeds = range(EVALUATION_SEED, EVALUATION_SEED + args.episodes)
    print(f"Push-T, {args.episodes} episodes (seeds {seeds[0]}..{seeds[-1]}), success at coverage >= "
          f"{SUCCESS_COVERAGE}; policies trained {args.steps} steps each; diffusion sampled with DDIM "
          f"{args.sample_steps} steps")
    print(f"{'policy':<24}{'success':>8}{'coverage':>10}{'cw':>7}{'ccw':>7}{'none':>7}{'steps/min':>11}{'CPU s':>9}")
    cpu0 = time.process_time()
    episodes = [expert_episode(s) for s in seeds]
    modes = [approach_mode(e.observations) for e in episodes]
    expert = {"success_rate": float(np.mean([e.max_coverage >= SUCCESS_COVERAGE for e in episodes])),
              "mean_max_coverage": float(np.mean([e.max_coverage for e in episodes])),
              "mode_shares": {MODES[0]: modes.count(0) / len(modes), MODES[1]: modes.count(1) / len(modes),
                              "none": modes.count(None) / len(modes)}}
    print(row("scripted expert", expert, "-", time.process_time() - cpu0), flush=True)
    for name, (folder, steps) in runs.items():
        policy = load_policy(folder, sampler="ddim", steps=args.sample_steps)
        cpu0 = time.process_time()
        results = rollout(policy, seeds, policy.horizons.obs, policy.horizons.action)
        print(row(name, summarise(results), steps, time.process_time() - cpu0), flush=True)


if __name__ == "__main__":
    main()
