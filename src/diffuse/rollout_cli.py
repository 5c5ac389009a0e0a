"""`diffuse rollout RUN`: a trained policy played in Push-T, scored, and optionally animated.

RUN is a diffusion-policy run (`diffuse train --recipe pusht`), a behaviour-cloning run
(`diffuse train --task bc --data pusht`) or a mixture-density run (`--task mdn`). Episodes use
the environment seeds --first .. --first + --episodes - 1 (by default the evaluation seeds, which
no demonstration uses), executing `action` steps of each planned chunk before planning again
(the run's horizons).
"""

from __future__ import annotations

import json


def add_parser(commands) -> None:
    from .cli_args import number
    from .data.pusht import EVALUATION_SEED
    from .envs.pusht import MAX_STEPS
    from .samplers import available

    parser = commands.add_parser(
        "rollout", help="play a trained policy in Push-T: success, coverage, approach modes, a GIF",
        description="Play a policy run (diffusion policy, behaviour cloning or mixture density) in Push-T with "
                    "receding-horizon execution; print the success rate, the mean maximum coverage and the share "
                    "of episodes that circle the block each way.")
    parser.add_argument("run", help="a policy run or checkpoint folder")
    parser.add_argument("--episodes", type=number(int, 1), default=10, help="episodes to play (default: 10)")
    parser.add_argument("--first", type=number(int, 0), default=EVALUATION_SEED,
                        help=f"the first episode's environment seed (default: {EVALUATION_SEED}, the evaluation "
                             "seeds)")
    parser.add_argument("--sampler", choices=available(), default="ddim",
                        help="a diffusion policy's sampler (default: ddim)")
    parser.add_argument("--steps", type=number(int, 1), help="its steps per chunk (default: the run's)")
    parser.add_argument("--max-steps", dest="max_steps", type=number(int, 1), default=MAX_STEPS,
                        help=f"actions per episode at most (default: {MAX_STEPS}, 30 s at 10 Hz)")
    parser.add_argument("--gif", help="write an animated GIF of the first episode here (.gif)")
    parser.add_argument("--json", help="write the summary and each episode's scores here (.json)")
    parser.add_argument("--no-ema", dest="no_ema", action="store_true", help="use the raw weights, not the EMA")
    parser.add_argument("--device", help="cpu | cuda | cuda:N (default: cpu)")
    parser.set_defaults(handler=run)


def run(args, given: dict | None = None) -> int:
    from .cli_args import check_out
    from .envs.rollout import summarise
    from .files import write_text_atomic
    from .policy import load_policy, rollout

    gif = check_out(args.gif, (".gif",)) if args.gif else None
    report = check_out(args.json, (".json",)) if args.json else None
    for path in (gif, report):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
    policy = load_policy(args.run, sampler=args.sampler, steps=args.steps, ema=not args.no_ema,
                         device=args.device or "cpu")
    seeds = range(args.first, args.first + args.episodes)
    results = rollout(policy, seeds, policy.horizons.obs, policy.horizons.action, args.max_steps, gif=gif)
    summary = summarise(results)
    steps = "the run's" if args.steps is None else args.steps
    what = {"diffusion": f"{args.sampler}, {steps} steps", "bc": "MSE regression",
            "mdn": "mixture density"}[policy.kind]
    last = args.first + len(results) - 1
    print(f"{policy.kind} policy ({what}), {len(results)} episodes (seeds {args.first}..{last}), success at "
          f"coverage >= {summary['success_coverage']}")
    print(f"{'success rate':<24}{summary['success_rate']:.3f}")
    print(f"{'mean max coverage':<24}{summary['mean_max_coverage']:.4f}")
    print(f"{'mean episode length':<24}{summary['mean_steps']:.1f} steps")
    print(f"{'approach modes':<24}" + ", ".join(f"{k} {v:.2f}" for k, v in summary["mode_shares"].items()))
    if report is not None:
        episodes = [{"seed": r.seed, "max_coverage": r.max_coverage, "success": r.success, "steps": r.steps,
                     "mode": r.mode} for r in results]
        write_text_atomic(report, json.dumps({"summary": summary, "episodes": episodes}, indent=1) + "\n")
        print(f"wrote {report}")
    if gif is not None:
        print(f"wrote {gif}")
    return 0
