"""``gym-prefs train``: train an agent from preferences on a Gymnasium env, then evaluate it.

Also the pieces ``gym-prefs eval`` shares with it: the algorithms by name, and the env an agent
is evaluated on (the env as everyone benchmarks it, with its own reward).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

from gym_prefs.records import SELECTION_METHODS

__all__ = ["ALGORITHMS", "add_train_arguments", "algorithm_class", "evaluation_env", "train"]

ALGORITHMS = ("a2c", "ppo", "trpo", "sac", "td3", "dqn")
DISCRETE_ONLY = ("dqn",)
CONTINUOUS_ONLY = ("sac", "td3")


def algorithm_class(name: str) -> Any:
    """The Stable-Baselines3 (or SB3-Contrib) class of an algorithm named in :data:`ALGORITHMS`.

    Example:
        >>> algorithm_class("ppo").__name__
        'PPO'
    """
    if name == "trpo":
        from sb3_contrib import TRPO

        return TRPO
    import stable_baselines3

    return getattr(stable_baselines3, name.upper())


#: Episodes of the final evaluation of an Atari agent unless told (a CPU plays one in ~10 s).
ATARI_EVAL_EPISODES = 2
#: Most episodes evaluated side by side (one env each, the policy run on all at once).
EVAL_ENVS = 8


def evaluation_env(env_id: str, preset: str, seed: int, episodes: int = 1) -> Any:
    """The env as everyone benchmarks it: its own terminations and reward (Atari: same preprocessing).

    ``episodes`` are played side by side in up to :data:`EVAL_ENVS` envs, so that the policy runs
    once a step for all of them (an Atari game lasts thousands of steps).
    """
    n_envs = max(1, min(episodes, EVAL_ENVS))
    if preset == "atari":
        from gym_prefs.atari import make_atari_eval_env

        return make_atari_eval_env(env_id, n_envs=n_envs, seed=seed)
    from stable_baselines3.common.env_util import make_vec_env

    return make_vec_env(env_id, n_envs=n_envs, seed=seed)


def add_train_arguments(train: argparse.ArgumentParser) -> None:
    """Add the options of ``gym-prefs train`` to its parser."""
    from gym_prefs.presets import DEFAULT_ENV

    train.add_argument("env_id", nargs="?", default=DEFAULT_ENV, help=f"Gymnasium env id (default: {DEFAULT_ENV})")
    train.add_argument(
        "--algo", choices=ALGORITHMS, default=None, help="RL algorithm (default: the preset's, else ppo)"
    )
    train.add_argument(
        "--preset",
        choices=("auto", "mujoco", "atari", "none"),
        default="auto",
        help="the paper's settings: 'auto' applies the MuJoCo preset to MuJoCo envs (TRPO, 1.5 s segments, "
        "learned reward centred on +1 where falling ends the episode) and the Atari one to ALE/ envs "
        "(A2C, 16 envs, preprocessing, score blacked out for the reward model); 'none' uses the "
        "library's defaults (default: auto)",
    )
    train.add_argument(
        "--labeler",
        choices=("oracle", "human", "web"),
        default="oracle",
        help="who labels: the synthetic oracle, you in a window, or people on a web page (default: oracle)",
    )
    train.add_argument(
        "--instruction", default="", help="with --labeler human or web: what to teach, shown to the person"
    )
    train.add_argument(
        "--paper",
        action="store_true",
        help="Atari: fit the reward model as long as the paper (200 epochs before RL) even without a GPU, "
        "where the preset otherwise caps each fit at a few gradient steps",
    )
    train.add_argument(
        "--ale-vector",
        action="store_true",
        help="Atari with the oracle: step the games in ale-py's vectorised env (C++ threads, the same frames; "
        "faster) instead of Gymnasium's Python envs",
    )
    train.add_argument("--labels", type=int, default=200, help="label budget (default: 200)")
    train.add_argument("--steps", type=int, default=40_000, help="environment steps of RL (default: 40000)")
    train.add_argument("--n-envs", type=int, default=None, help="parallel envs (default: the preset's, else 4)")
    train.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    train.add_argument("--segment-length", type=int, default=None, help="steps per clip (default: 1.5 s of env time)")
    train.add_argument(
        "--selection", choices=SELECTION_METHODS, default="disagreement", help="query selection (see the docs)"
    )
    train.add_argument(
        "--exploration-bonus",
        type=float,
        default=0.0,
        help="RUNE: pay the agent this times the ensemble's disagreement on top of r̂, decaying (default: 0, off)",
    )
    train.add_argument(
        "--exploration-steps",
        type=int,
        default=0,
        help="PEBBLE: first train this many steps to reach new states, then ask the first labels (default: 0)",
    )
    train.add_argument(
        "--eval-episodes",
        type=int,
        default=None,
        help=f"episodes of the final evaluation, played side by side (default: 10; Atari: {ATARI_EVAL_EPISODES}, "
        "a game lasts thousands of steps)",
    )
    train.add_argument("--out", type=Path, default=None, help="output folder (default: runs/ENV-ALGO-TIME)")
    train.add_argument(
        "--store",
        type=Path,
        default=None,
        help="preference store to use or continue (default: OUT/preferences.db)",
    )
    train.add_argument("--verbose", type=int, default=1, help="0 quiet, 1 a line per reward-model fit")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")


def train(args: argparse.Namespace) -> int:
    """Run ``gym-prefs train`` with its parsed arguments; returns the exit status."""
    import gymnasium as gym
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.logger import configure

    import gym_prefs
    from gym_prefs.presets import preset_for

    if args.env_id.startswith("ALE/"):
        import ale_py

        gym.register_envs(ale_py)
    try:
        probe = gym.make(args.env_id)
    except gym.error.Error as error:
        print(f"gym-prefs: cannot make env {args.env_id!r}: {error}", file=sys.stderr)
        return 2
    discrete = isinstance(probe.action_space, gym.spaces.Discrete)
    action_space = probe.action_space
    probe.close()
    preset = preset_for(args.env_id, args.preset, args.algo, total_labels=args.labels, paper=args.paper or None)
    n_envs = args.n_envs or preset.n_envs or 4
    algo = preset.algo
    if algo in DISCRETE_ONLY and not discrete:
        print(
            f"gym-prefs: {algo} needs discrete actions and {args.env_id} has {action_space}; "
            "use --algo ppo, sac or td3",
            file=sys.stderr,
        )
        return 2
    if algo in CONTINUOUS_ONLY and discrete:
        print(
            f"gym-prefs: {algo} needs continuous (Box) actions and {args.env_id} has {action_space}; "
            "use --algo ppo, a2c or dqn",
            file=sys.stderr,
        )
        return 2
    if args.ale_vector and (preset.name != "atari" or args.labeler != "oracle"):
        print(
            "gym-prefs: --ale-vector runs Atari games for the oracle; a person is shown the colour screen, "
            "which only Gymnasium's envs render: leave it out",
            file=sys.stderr,
        )
        return 2
    try:  # settings are checked before anything is made
        config = preset.config.replace(
            total_labels=args.labels,
            selection=args.selection,
            seed=args.seed,
            exploration_bonus=args.exploration_bonus,
            exploration_steps=args.exploration_steps,
        )
        if args.segment_length is not None:
            config = config.replace(segment_length=args.segment_length)
    except ValueError as error:
        print(f"gym-prefs: {error}", file=sys.stderr)
        return 2
    for note in preset.notes:
        print(f"gym-prefs ({preset.name} preset): {note}")

    out = args.out or Path("runs") / f"{args.env_id.replace('/', '_')}-{algo}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    env_kwargs = dict(preset.env_kwargs)
    if args.labeler in ("human", "web"):
        # A person sees the env's frames (MuJoCo envs are rendered from their states instead).
        env_kwargs["render_mode"] = "rgb_array"
    try:
        if preset.name == "atari":
            from gym_prefs.atari import make_atari_env

            render_mode = env_kwargs.get("render_mode")
            venv = make_atari_env(args.env_id, n_envs, args.seed, render_mode=render_mode, ale_vector=args.ale_vector)
        else:
            venv = gym_prefs.VecLearnedReward(
                make_vec_env(args.env_id, n_envs=n_envs, seed=args.seed, env_kwargs=env_kwargs or None)
            )
    except gym_prefs.UnsupportedSpaceError as error:
        print(f"gym-prefs: {error}", file=sys.stderr)
        return 2
    model = algorithm_class(algo)(preset.policy, venv, seed=args.seed, verbose=0, **preset.algo_kwargs)
    formats = ["csv"]
    if importlib.util.find_spec("tensorboard") is not None:
        formats.append("tensorboard")
    else:
        print("gym-prefs: for TensorBoard logs in the run folder: pip install 'gym-prefs[tensorboard]'")
    model.set_logger(configure(str(out), formats))
    source: Any = args.labeler
    if args.labeler == "human":
        source = gym_prefs.PygameLabeler(args.instruction)
    elif args.labeler == "web":
        from gym_prefs.sources import WebLabeler

        source = WebLabeler(args.instruction)
    callback = gym_prefs.PreferenceCallback(
        source, config=config, store=str(args.store or out / "preferences.db"), verbose=args.verbose
    )
    start = time.perf_counter()
    model.learn(args.steps, callback=callback, progress_bar=not args.no_progress)
    seconds = time.perf_counter() - start

    # Evaluated on the env as everyone benchmarks it (with its own terminations and reward).
    episodes = args.eval_episodes or (ATARI_EVAL_EPISODES if preset.name == "atari" else 10)
    eval_env = evaluation_env(args.env_id, preset.name, args.seed + 10_000, episodes)
    trained, trained_std = evaluate_policy(model, eval_env, n_eval_episodes=episodes, deterministic=True)
    untrained_model = algorithm_class(algo)(preset.policy, eval_env, seed=args.seed, **preset.algo_kwargs)
    untrained, _ = evaluate_policy(untrained_model, eval_env, n_eval_episodes=episodes, deterministic=False)
    model.save(out / "agent.zip")
    callback.reward_model.save(out / "reward_model.pt")
    store_path = args.store or out / "preferences.db"
    callback.close()
    summary = {
        "env_id": args.env_id,
        "algo": algo,
        "preset": preset.name,
        "env_kwargs": preset.env_kwargs,
        "algo_kwargs": preset.algo_kwargs,
        # Every setting of the preference loop (under the name that summaries have always used).
        "callback_kwargs": config.to_dict(),
        "steps": args.steps,
        "labels": callback.num_labels,
        "queries": callback.num_queries,
        "true_return": trained,
        "true_return_std": trained_std,
        "untrained_true_return": untrained,
        "train_seconds": seconds,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(
        f"\n{args.env_id} / {algo} ({preset.name} preset): {args.steps} steps, {callback.num_labels} labels "
        f"({callback.num_queries} asked), {seconds:.0f} s\n"
        f"true return over {episodes} episodes: {trained:.1f} ± {trained_std:.1f} "
        f"(untrained policy: {untrained:.1f})\n"
        f"saved agent.zip, reward_model.pt, progress.csv and summary.json in {out}; labels in {store_path}"
    )
    return 0
