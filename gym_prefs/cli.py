"""The ``gym-prefs`` command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]

ALGORITHMS = ("a2c", "ppo", "trpo", "sac", "td3", "dqn")
DISCRETE_ONLY = ("dqn",)
CONTINUOUS_ONLY = ("sac", "td3")


def _algorithm_class(name: str) -> Any:
    if name == "trpo":
        from sb3_contrib import TRPO

        return TRPO
    import stable_baselines3

    return getattr(stable_baselines3, name.upper())


def _build_parser() -> argparse.ArgumentParser:
    from gym_prefs.presets import DEFAULT_ENV

    parser = argparse.ArgumentParser(
        prog="gym-prefs",
        description="Train reinforcement-learning agents from preferences between clips of their behaviour.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train",
        help="train an agent on a Gymnasium env from synthetic preferences",
        description="Train a Stable-Baselines3 agent whose reward is learned from preferences, then "
        "evaluate it on the env's true reward.",
    )
    train.add_argument("env_id", nargs="?", default=DEFAULT_ENV, help=f"Gymnasium env id (default: {DEFAULT_ENV})")
    train.add_argument("--algo", choices=ALGORITHMS, default="ppo", help="RL algorithm (default: ppo)")
    train.add_argument("--labeler", choices=("oracle",), default="oracle", help="who labels (default: oracle)")
    train.add_argument("--labels", type=int, default=200, help="label budget (default: 200)")
    train.add_argument("--steps", type=int, default=40_000, help="environment steps of RL (default: 40000)")
    train.add_argument("--n-envs", type=int, default=4, help="parallel envs (default: 4)")
    train.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    train.add_argument("--segment-length", type=int, default=None, help="steps per clip (default: 1.5 s of env time)")
    train.add_argument(
        "--selection", choices=("disagreement", "random"), default="disagreement", help="query selection"
    )
    train.add_argument("--eval-episodes", type=int, default=10, help="episodes of the final evaluation (default: 10)")
    train.add_argument("--out", type=Path, default=None, help="output folder (default: runs/ENV-ALGO-TIME)")
    train.add_argument("--verbose", type=int, default=1, help="0 quiet, 1 a line per reward-model fit")
    return parser


def _train(args: argparse.Namespace) -> int:
    import gymnasium as gym
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.logger import configure

    import gym_prefs
    from gym_prefs.presets import algorithm_kwargs

    try:
        probe = gym.make(args.env_id)
    except gym.error.Error as error:
        print(f"gym-prefs: cannot make env {args.env_id!r}: {error}", file=sys.stderr)
        return 2
    discrete = isinstance(probe.action_space, gym.spaces.Discrete)
    probe.close()
    if args.algo in DISCRETE_ONLY and not discrete:
        print(
            f"gym-prefs: {args.algo} needs discrete actions and {args.env_id} has {probe.action_space}; "
            "use --algo ppo, sac or td3",
            file=sys.stderr,
        )
        return 2
    if args.algo in CONTINUOUS_ONLY and discrete:
        print(
            f"gym-prefs: {args.algo} needs continuous (Box) actions and {args.env_id} has "
            f"{probe.action_space}; use --algo ppo, a2c or dqn",
            file=sys.stderr,
        )
        return 2

    out = args.out or Path("runs") / f"{args.env_id.replace('/', '_')}-{args.algo}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    venv = gym_prefs.VecLearnedReward(make_vec_env(args.env_id, n_envs=args.n_envs, seed=args.seed))
    kwargs = algorithm_kwargs(args.env_id, args.algo)
    model = _algorithm_class(args.algo)("MlpPolicy", venv, seed=args.seed, verbose=0, **kwargs)
    model.set_logger(configure(str(out), ["csv"]))
    callback = gym_prefs.PreferenceCallback(
        "oracle",
        total_labels=args.labels,
        segment_length=args.segment_length,
        selection=args.selection,
        seed=args.seed,
        verbose=args.verbose,
    )
    start = time.perf_counter()
    model.learn(args.steps, callback=callback)
    seconds = time.perf_counter() - start

    eval_env = make_vec_env(args.env_id, n_envs=1, seed=args.seed + 10_000)
    trained, trained_std = evaluate_policy(model, eval_env, n_eval_episodes=args.eval_episodes, deterministic=True)
    untrained_model = _algorithm_class(args.algo)("MlpPolicy", eval_env, seed=args.seed, **kwargs)
    untrained, _ = evaluate_policy(untrained_model, eval_env, n_eval_episodes=args.eval_episodes, deterministic=False)
    model.save(out / "agent.zip")
    callback.reward_model.save(out / "reward_model.pt")
    summary = {
        "env_id": args.env_id,
        "algo": args.algo,
        "steps": args.steps,
        "labels": callback.num_labels,
        "queries": callback.num_queries,
        "true_return": trained,
        "true_return_std": trained_std,
        "untrained_true_return": untrained,
        "train_seconds": seconds,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(
        f"\n{args.env_id} / {args.algo}: {args.steps} steps, {callback.num_labels} labels "
        f"({callback.num_queries} asked), {seconds:.0f} s\n"
        f"true return over {args.eval_episodes} episodes: {trained:.1f} ± {trained_std:.1f} "
        f"(untrained policy: {untrained:.1f})\n"
        f"saved agent.zip, reward_model.pt, progress.csv and summary.json in {out}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line (``gym-prefs --help`` lists the commands)."""
    args = _build_parser().parse_args(argv)
    if args.command == "train":
        return _train(args)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    raise SystemExit(main())
