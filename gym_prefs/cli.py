"""The ``gym-prefs`` command line."""

from __future__ import annotations

import argparse
import importlib.util
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
        choices=("oracle", "human"),
        default="oracle",
        help="who labels: the synthetic oracle, or you in a window (default: oracle)",
    )
    train.add_argument("--instruction", default="", help="with --labeler human: what to teach, shown in the window")
    train.add_argument("--labels", type=int, default=200, help="label budget (default: 200)")
    train.add_argument("--steps", type=int, default=40_000, help="environment steps of RL (default: 40000)")
    train.add_argument("--n-envs", type=int, default=None, help="parallel envs (default: the preset's, else 4)")
    train.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    train.add_argument("--segment-length", type=int, default=None, help="steps per clip (default: 1.5 s of env time)")
    train.add_argument(
        "--selection", choices=("disagreement", "random"), default="disagreement", help="query selection"
    )
    train.add_argument("--eval-episodes", type=int, default=10, help="episodes of the final evaluation (default: 10)")
    train.add_argument("--out", type=Path, default=None, help="output folder (default: runs/ENV-ALGO-TIME)")
    train.add_argument(
        "--store",
        type=Path,
        default=None,
        help="preference store to use or continue (default: OUT/preferences.db)",
    )
    train.add_argument("--verbose", type=int, default=1, help="0 quiet, 1 a line per reward-model fit")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")

    fit = commands.add_parser(
        "fit",
        help="fit a reward model to the labels of a store",
        description="Fit a fresh reward model to every label of a preference store (no env needed).",
    )
    fit.add_argument("store", type=Path, help="the preference store (.db)")
    fit.add_argument("--out", type=Path, required=True, help="where to save the reward model (.pt)")
    fit.add_argument("--epochs", type=int, default=200, help="passes over the labels (default: 200)")
    fit.add_argument("--last", type=int, default=None, help="use only the newest N labels")
    fit.add_argument("--reward-std", type=float, default=1.0, help="std of the normalised reward (default: 1)")
    fit.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")

    export = commands.add_parser(
        "export",
        help="write a store's labels to a portable .npz file",
        description="Write every label of a store, with its segments, to a .npz file (see the README for the format).",
    )
    export.add_argument("store", type=Path, help="the preference store (.db)")
    export.add_argument("out", type=Path, help="the .npz file to write")

    load = commands.add_parser(
        "import",
        help="add the labels of a .npz export to a store",
        description="Create a store from an export (or add the export's labels to a store for the same env).",
    )
    load.add_argument("export", type=Path, help="the .npz file written by 'gym-prefs export'")
    load.add_argument("store", type=Path, help="the preference store (.db) to create or extend")

    info = commands.add_parser(
        "info",
        help="show what a store holds and check it for damage",
        description="Show what a store holds and check the whole file for damage (an `integrity:` line; "
        "exit status 1 if it is damaged, 2 if it is not a readable store).",
    )
    info.add_argument("store", type=Path, help="the preference store (.db)")

    evaluate = commands.add_parser(
        "eval",
        help="evaluate a saved agent on the env's true reward",
        description="Evaluate a saved agent on the env's own (true) reward. Give a run folder written by "
        "'gym-prefs train' (its summary.json names the env and algorithm) or an agent .zip with --env and --algo.",
    )
    evaluate.add_argument("agent", type=Path, help="a run folder, or an agent .zip")
    evaluate.add_argument("--env", default=None, help="env id (default: the run's)")
    evaluate.add_argument("--algo", choices=ALGORITHMS, default=None, help="algorithm (default: the run's)")
    evaluate.add_argument("--episodes", type=int, default=10, help="episodes (default: 10)")
    evaluate.add_argument("--seed", type=int, default=12345, help="seed of the evaluation episodes")
    evaluate.add_argument("--stochastic", action="store_true", help="sample actions instead of the most likely")

    plot = commands.add_parser(
        "plot",
        help="draw learning curves of runs",
        description="Draw the true return, the labels and the reward model's correlation with the true reward "
        "against timesteps, for one or more run folders on one figure.",
    )
    plot.add_argument("runs", type=Path, nargs="+", help="run folders written by 'gym-prefs train'")
    plot.add_argument("--out", type=Path, default=Path("curves.png"), help="the PNG to write (default: curves.png)")

    label = commands.add_parser(
        "label",
        help="label a store's pending clip pairs in a window",
        description="Open the labelling window on a store: of a running training on this machine (a store "
        "never lives on a network disk), or afterwards. Keys: left/right arrow = that clip is better, "
        "up = equally good, down = can't tell, space = pause, r = replay, -/+ = slower/faster, esc = close.",
    )
    label.add_argument("store", type=Path, help="the preference store (.db)")
    label.add_argument("--instruction", default="", help="what to teach, shown in the window")
    label.add_argument("--labeler", default="human", help="your name, stored with every answer")
    label.add_argument("--render-size", type=int, default=200, help="pixels of frames rendered from MuJoCo states")
    label.add_argument("--exit-when-done", action="store_true", help="close once nothing is pending")
    label.add_argument(
        "--exit-with",
        type=int,
        default=None,
        metavar="PID",
        help="close once process PID has ended, even if it was killed (checked every 0.5 s); "
        "PygameLabeler passes the training process, so that no window outlives it. Every answer "
        "given is already stored",
    )
    return parser


def _train(args: argparse.Namespace) -> int:
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
    preset = preset_for(args.env_id, args.preset, args.algo, total_labels=args.labels)
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
    for note in preset.notes:
        print(f"gym-prefs ({preset.name} preset): {note}")

    out = args.out or Path("runs") / f"{args.env_id.replace('/', '_')}-{algo}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    env_kwargs = dict(preset.env_kwargs)
    if args.labeler == "human":
        # A person sees the env's frames (MuJoCo envs are rendered from their states instead).
        env_kwargs["render_mode"] = "rgb_array"
    try:
        if preset.name == "atari":
            from gym_prefs.atari import make_atari_env

            venv = make_atari_env(args.env_id, n_envs, args.seed, render_mode=env_kwargs.get("render_mode"))
        else:
            venv = gym_prefs.VecLearnedReward(
                make_vec_env(args.env_id, n_envs=n_envs, seed=args.seed, env_kwargs=env_kwargs or None)
            )
    except gym_prefs.UnsupportedSpaceError as error:
        print(f"gym-prefs: {error}", file=sys.stderr)
        return 2
    model = _algorithm_class(algo)(preset.policy, venv, seed=args.seed, verbose=0, **preset.algo_kwargs)
    formats = ["csv"]
    if importlib.util.find_spec("tensorboard") is not None:
        formats.append("tensorboard")
    else:
        print("gym-prefs: for TensorBoard logs in the run folder: pip install 'gym-prefs[tensorboard]'")
    model.set_logger(configure(str(out), formats))
    source: Any = gym_prefs.PygameLabeler(args.instruction) if args.labeler == "human" else "oracle"
    callback_kwargs = dict(preset.callback_kwargs)
    if args.segment_length is not None:
        callback_kwargs["segment_length"] = args.segment_length
    callback = gym_prefs.PreferenceCallback(
        source,
        total_labels=args.labels,
        selection=args.selection,
        store=str(args.store or out / "preferences.db"),
        seed=args.seed,
        verbose=args.verbose,
        **callback_kwargs,
    )
    start = time.perf_counter()
    model.learn(args.steps, callback=callback, progress_bar=not args.no_progress)
    seconds = time.perf_counter() - start

    # Evaluated on the env as everyone benchmarks it (with its own terminations and reward).
    eval_env = _evaluation_env(args.env_id, preset.name, args.seed + 10_000)
    trained, trained_std = evaluate_policy(model, eval_env, n_eval_episodes=args.eval_episodes, deterministic=True)
    untrained_model = _algorithm_class(algo)(preset.policy, eval_env, seed=args.seed, **preset.algo_kwargs)
    untrained, _ = evaluate_policy(untrained_model, eval_env, n_eval_episodes=args.eval_episodes, deterministic=False)
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
        "callback_kwargs": callback_kwargs,
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
        f"true return over {args.eval_episodes} episodes: {trained:.1f} ± {trained_std:.1f} "
        f"(untrained policy: {untrained:.1f})\n"
        f"saved agent.zip, reward_model.pt, progress.csv and summary.json in {out}; labels in {store_path}"
    )
    return 0


def _evaluation_env(env_id: str, preset: str, seed: int) -> Any:
    """The env as everyone benchmarks it: its own terminations and reward (Atari: same preprocessing)."""
    if preset == "atari":
        from gym_prefs.atari import make_atari_eval_env

        return make_atari_eval_env(env_id, seed=seed)
    from stable_baselines3.common.env_util import make_vec_env

    return make_vec_env(env_id, n_envs=1, seed=seed)


def _open_store(path: Path) -> Any:
    from gym_prefs.store import PreferenceStore

    return PreferenceStore(path, readonly=True)


def _fit(args: argparse.Namespace) -> int:
    from gym_prefs.offline import fit_from_store

    with _open_store(args.store) as store:
        model, report = fit_from_store(
            store, epochs=args.epochs, last=args.last, seed=args.seed, reward_std=args.reward_std
        )
    model.save(args.out)
    print(
        f"fitted on {report.pairs} labels for {report.epochs} epochs: train loss {report.train_loss:.3f}, "
        f"validation loss {report.val_loss:.3f}, validation accuracy {report.accuracy:.2f}; saved {args.out}"
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    with _open_store(args.store) as store:
        count = store.export(args.out)
    print(f"wrote {count} labels to {args.out}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from gym_prefs.store import PreferenceStore

    with PreferenceStore.import_export(args.export, args.store) as store:
        print(f"{args.store} now holds {len(store)} labels")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from stable_baselines3.common.evaluation import evaluate_policy

    agent, env_id, algo = args.agent, args.env, args.algo
    if agent.is_dir():
        summary = json.loads((agent / "summary.json").read_text()) if (agent / "summary.json").exists() else {}
        env_id, algo, agent = env_id or summary.get("env_id"), algo or summary.get("algo"), agent / "agent.zip"
    if not agent.exists():
        raise FileNotFoundError(f"no agent at {agent}")
    if env_id is None or algo is None:
        print("gym-prefs: name the env and the algorithm: --env ENV_ID --algo ALGO", file=sys.stderr)
        return 2
    model = _algorithm_class(algo).load(agent)
    if env_id.startswith("ALE/"):
        import ale_py
        import gymnasium as gym

        gym.register_envs(ale_py)
    env = _evaluation_env(env_id, "atari" if env_id.startswith("ALE/") else "none", args.seed)
    mean, std = evaluate_policy(model, env, n_eval_episodes=args.episodes, deterministic=not args.stochastic)
    print(f"{env_id} / {algo}: true return over {args.episodes} episodes: {mean:.1f} ± {std:.1f}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from gym_prefs.plots import plot_runs

    plot_runs(args.runs, args.out)
    print(f"wrote {args.out}")
    return 0


def _label(args: argparse.Namespace) -> int:
    from gym_prefs.viewer import Viewer

    viewer = Viewer(
        args.store, args.instruction, args.labeler, args.render_size, args.exit_when_done, exit_with=args.exit_with
    )
    viewer.run()
    print(f"gym-prefs label: {viewer.answers_given} answers stored in {args.store}")
    return 0


def _info(args: argparse.Namespace) -> int:
    import sqlite3

    from gym_prefs.store_files import damaged_message

    with _open_store(args.store) as store:
        print(
            f"{store.path}: env {store.env_id or 'unknown'}, segments of {store.segment_length} steps\n"
            f"  observations {store.observation_space}\n  actions {store.action_space}"
        )
        # The integrity check reads every page; the counts may fail on a damaged store, and
        # then the check says why.
        problems = store.check()
        try:
            counts = store.counts()
            print(
                f"  {len(store)} labels; {counts['queries']} queries: {counts['answered']} answered, "
                f"{counts['skipped']} can't tell, {counts['pending']} pending"
            )
        except sqlite3.DatabaseError as error:
            problems = problems or [str(error)]
        if not problems:
            print("  integrity: ok")
            return 0
        shown = problems[:10] + ([f"... and {len(problems) - 10} more"] if len(problems) > 10 else [])
        print("  integrity: damaged\n" + "\n".join(f"    {problem}" for problem in shown))
        found = problems[0] if len(problems) == 1 else f"{len(problems)} problems, the first: {problems[0]}"
        print(f"gym-prefs: {damaged_message(store.path, found)}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line (``gym-prefs --help`` lists the commands)."""
    from gym_prefs.store import StoreError

    args = _build_parser().parse_args(argv)
    commands = {
        "train": _train,
        "eval": _eval,
        "plot": _plot,
        "fit": _fit,
        "export": _export,
        "import": _import,
        "info": _info,
        "label": _label,
    }
    try:
        return int(commands[args.command](args))
    except (StoreError, FileNotFoundError) as error:
        print(f"gym-prefs: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
