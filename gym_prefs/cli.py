"""The ``gym-prefs`` command line.

``gym-prefs train`` lives in :mod:`gym_prefs.cli_train`; ``gym-prefs label`` is the labelling
window's own program (:mod:`gym_prefs.viewer`) and ``gym-prefs serve`` the labelling web server's
(:mod:`gym_prefs.web`), to which this one hands their arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gym_prefs.cli_train import ALGORITHMS, add_train_arguments, algorithm_class, evaluation_env
from gym_prefs.cli_train import train as _train

__all__ = ["main"]


def _build_parser() -> argparse.ArgumentParser:
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
    add_train_arguments(train)

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

    # The labelling window is its own program with its own options (python -m gym_prefs.viewer):
    # main() hands `gym-prefs label ...` over to it; this entry only lists the command.
    commands.add_parser("label", help="label a store's pending clip pairs in a window", add_help=False)
    # Likewise the labelling web server (python -m gym_prefs.web).
    commands.add_parser("serve", help="serve a store's pending clip pairs on a labelling web page", add_help=False)
    return parser


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
    from gym_prefs.datasets import export_labels

    with _open_store(args.store) as store:
        count = export_labels(store, args.out)
    print(f"wrote {count} labels to {args.out}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from gym_prefs.datasets import import_labels

    with import_labels(args.export, args.store) as store:
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
    model = algorithm_class(algo).load(agent)
    if env_id.startswith("ALE/"):
        import ale_py
        import gymnasium as gym

        gym.register_envs(ale_py)
    env = evaluation_env(env_id, "atari" if env_id.startswith("ALE/") else "none", args.seed, args.episodes)
    mean, std = evaluate_policy(model, env, n_eval_episodes=args.episodes, deterministic=not args.stochastic)
    print(f"{env_id} / {algo}: true return over {args.episodes} episodes: {mean:.1f} ± {std:.1f}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from gym_prefs.plots import plot_runs

    plot_runs(args.runs, args.out)
    print(f"wrote {args.out}")
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
    from gym_prefs.store_errors import StoreError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        # The server's own program parses the rest (and says `usage: gym-prefs serve ...`).
        from gym_prefs.web import main as serve

        return serve(argv[1:], prog="gym-prefs serve")
    if argv[:1] == ["label"]:
        # The window's own program parses the rest (and says `usage: gym-prefs label ...`).
        from gym_prefs.viewer import main as label

        return label(argv[1:], prog="gym-prefs label")
    args = _build_parser().parse_args(argv)
    commands = {
        "train": _train,
        "eval": _eval,
        "plot": _plot,
        "fit": _fit,
        "export": _export,
        "import": _import,
        "info": _info,
    }
    try:
        return int(commands[args.command](args))
    except (StoreError, FileNotFoundError) as error:
        print(f"gym-prefs: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
