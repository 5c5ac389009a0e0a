"""The scripted Push-T expert: does it solve the task, and does it show both modes?

    python benchmarks/pusht_expert.py                 # 50 seeded episodes, about 30 CPU-seconds
    python benchmarks/pusht_expert.py --episodes 10 --gif runs/pusht-expert.gif

What is measured
----------------
The expert (diffuse.envs.experts) plays the environment's episodes of seeds --first ..
--first + --episodes - 1 (by default the evaluation seeds, which no demonstration uses), at most
300 actions (30 s at 10 Hz) each. Per episode: success (coverage >= 0.95 at any step, the
original's threshold; the episode ends there), the maximum coverage, the episode's length, the
mode the expert drew and the mode `approach_mode` reads off its trajectory (the direction it
circles the block before first touching it). The table gives the success rate, the mean maximum
coverage, the mean and longest episode length, each mode's share (drawn and measured), how often
they agree, and the process CPU time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from diffuse.data.pusht import EVALUATION_SEED  # noqa: E402
from diffuse.envs.experts import MODES, PushTExpert, approach_mode, expert_episode  # noqa: E402
from diffuse.envs.pusht import SUCCESS_COVERAGE, PushT  # noqa: E402


def save_gif(seed: int, path: Path, size: int = 256) -> None:
    """An animated GIF of the expert's episode `seed` (for looking at, not for committing)."""
    from PIL import Image

    env, expert = PushT(), PushTExpert.from_seed(seed)
    observation, frames = env.reset(seed), [env.render(size)]
    while True:
        step = env.step(expert.act(observation))
        observation = step.observation
        frames.append(env.render(size))
        if step.done:
            break
    images = [Image.fromarray(f) for f in frames]
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=100, loop=0)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--first", type=int, default=EVALUATION_SEED, help="the first episode's seed")
    parser.add_argument("--gif", type=Path, help="also write an animated GIF of the first episode here")
    args = parser.parse_args(argv)

    cpu0, wall0 = time.process_time(), time.perf_counter()
    rows = []
    for seed in range(args.first, args.first + args.episodes):
        episode = expert_episode(seed)
        rows.append((episode.max_coverage >= SUCCESS_COVERAGE, episode.max_coverage, len(episode.actions),
                     episode.mode, approach_mode(episode.observations)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    success, cover, length, drawn, measured = (np.array(c, dtype=object) for c in zip(*rows))
    n = len(rows)
    print(f"Push-T scripted expert, {n} episodes (seeds {args.first}..{args.first + n - 1}), success at coverage "
          f">= {SUCCESS_COVERAGE}")
    print(f"{'success rate':<28}{success.astype(bool).mean():.3f}")
    print(f"{'mean max coverage':<28}{cover.astype(float).mean():.4f}  (min {cover.astype(float).min():.4f})")
    print(f"{'episode length (steps)':<28}mean {length.astype(float).mean():.1f}, max {length.max()} "
          f"(10 steps = 1 s)")
    for k, name in enumerate(MODES):
        print(f"{'share ' + name:<28}drawn {np.mean(drawn == k):.2f}, measured {np.mean(measured == k):.2f}")
    print(f"{'measured mode = drawn':<28}{np.mean(measured == drawn):.3f}")
    print(f"{'CPU time':<28}{cpu:.1f} s ({cpu / n:.2f} s per episode; wall {wall:.1f} s)")
    if args.gif:
        save_gif(args.first, args.gif)
        print(f"wrote {args.gif}")


if __name__ == "__main__":
    main()
