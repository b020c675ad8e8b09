"""Learning quality: RL from N oracle labels against RL on the true reward, same everything else.

For every env, seed and condition ("true" or a label budget) one run trains PPO (4 envs,
n_steps 512, batch 64, one torch thread; γ 0.9999 on Swimmer, as the RL Zoo) and is scored
every ``--eval-every`` steps on the env's raw true reward (deterministic policy, fresh seeds).
Both conditions normalise rewards with ``VecNormalize(norm_reward=True)``, as rl-zoo3 does
for the baseline, so the ratio does not flatter preferences. Preference runs on MuJoCo envs
take the MuJoCo preset's env and callback settings (1.5 s segments, the paper's ensemble; the
env keeps its termination, and where an episode ends on falling, as Hopper's, the learned
reward is centred on +1); the true-reward baseline trains on the standard env, and every agent
is scored on the standard env. Runs go in parallel (``--jobs``) as separate
processes, and a run whose result file exists is not run again (an interrupted benchmark
resumes).

    python benchmarks/learning.py --envs HalfCheetah-v5 --labels 700 --seeds 0 1 2 --steps 300000 --out bench/

writes ``bench/runs/*.json`` (curves and final returns), ``bench/summary.md`` and
``bench/curves.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from common import run_parallel, write_json

#: Per-env changes to PPO's defaults, for both conditions (the RL Zoo's discount for Swimmer,
#: without which PPO barely moves on it).
PPO_KWARGS = {"Swimmer-v5": {"gamma": 0.9999}}


def run_one(env_id: str, condition: str, seed: int, steps: int, eval_every: int, out: str) -> None:
    """Train and score one run (called in its own process)."""
    import numpy as np
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback, CallbackList
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import VecNormalize

    import gym_prefs
    from gym_prefs.presets import is_mujoco, preset_for

    torch.set_num_threads(1)
    callbacks = []
    preferences = None
    if condition == "true":
        venv = make_vec_env(env_id, n_envs=4, seed=seed)
    else:
        # The MuJoCo preset's env and callback settings (1.5 s segments, the paper's ensemble,
        # the reward centred on +1 where episodes end on falling); the algorithm stays the same PPO.
        preset = preset_for(env_id, "mujoco") if is_mujoco(env_id) else None
        env_kwargs = preset.env_kwargs if preset else {}
        venv = gym_prefs.VecLearnedReward(make_vec_env(env_id, n_envs=4, seed=seed, env_kwargs=env_kwargs))
        preferences = gym_prefs.PreferenceCallback(
            "oracle",
            config=preset.config if preset else None,
            total_labels=int(condition),
            store=f"{out}.db",
            seed=seed,
            fitting="process",
        )
        callbacks.append(preferences)
    venv = VecNormalize(venv, norm_obs=False, norm_reward=True)
    model = PPO("MlpPolicy", venv, n_steps=512, batch_size=64, seed=seed, **PPO_KWARGS.get(env_id, {}))
    eval_env = make_vec_env(env_id, n_envs=1, seed=10_000 + seed)
    curve: list[tuple[int, float]] = []

    class Score(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps % eval_every < venv.num_envs:
                score, _ = evaluate_policy(self.model, eval_env, n_eval_episodes=2, deterministic=True)
                curve.append((self.num_timesteps, float(score)))
            return True

    start = time.perf_counter()
    model.learn(steps, callback=CallbackList([*callbacks, Score()]))
    seconds = time.perf_counter() - start
    final_env = make_vec_env(env_id, n_envs=1, seed=20_000 + seed)
    final, final_std = evaluate_policy(model, final_env, n_eval_episodes=10, deterministic=True)
    result = {
        "env_id": env_id,
        "condition": condition,
        "seed": seed,
        "steps": steps,
        "final_true_return": float(final),
        "final_true_return_std": float(final_std),
        "curve": curve,
        "seconds": seconds,
        "labels": preferences.num_labels if preferences else 0,
        "breakdown": preferences.time_breakdown() if preferences else {},
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if preferences is not None:
        preferences.close()
    write_json(result, out + ".json")
    del np


def summarise(out: Path, envs: list[str], conditions: list[str]) -> str:
    """A markdown table: median final true return per condition and preference ÷ true ratios."""
    results = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    lines = [
        "| env | condition | seeds | final true return per seed | median | ÷ true-reward median | wall time (median) |",
        "|---|---|---|---|---|---|---|",
    ]
    for env_id in envs:
        by_condition = {c: [r for r in results if r["env_id"] == env_id and r["condition"] == c] for c in conditions}
        true_runs = by_condition.get("true") or []
        true_median = statistics.median(r["final_true_return"] for r in true_runs) if true_runs else None
        for condition, runs in by_condition.items():
            if not runs:
                continue
            returns = [r["final_true_return"] for r in sorted(runs, key=lambda r: r["seed"])]
            median = statistics.median(returns)
            if condition == "true" or not true_median:
                ratio = "—"
            elif true_median < 0:
                ratio = "n/a (returns < 0)"  # a ratio of negative returns reads backwards
            else:
                ratio = f"{median / true_median:.2f}"
            name = "true reward" if condition == "true" else f"{condition} labels"
            per_seed = " / ".join(f"{v:,.0f}" for v in returns)
            seconds = statistics.median(r["seconds"] for r in runs)
            cells = [env_id, name, str(len(runs)), per_seed, f"{median:,.0f}", ratio, f"{seconds:.0f} s"]
            lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    (out / "summary.md").write_text(table + "\n")
    return table


def plot_curves(out: Path, envs: list[str], conditions: list[str]) -> Path:
    """One panel per env: true return against steps, a line per run, coloured by condition."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    results = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    fig, axes = plt.subplots(1, len(envs), figsize=(4.2 * len(envs), 3.4), squeeze=False)
    colours = dict(zip(conditions, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for ax, env_id in zip(axes[0], envs, strict=True):
        for condition in conditions:
            runs = [r for r in results if r["env_id"] == env_id and r["condition"] == condition]
            for i, run in enumerate(sorted(runs, key=lambda r: r["seed"])):
                steps, returns = zip(*run["curve"], strict=True) if run["curve"] else ((), ())
                label = ("true reward" if condition == "true" else f"{condition} labels") if i == 0 else None
                ax.plot(steps, returns, color=colours[condition], alpha=0.8, linewidth=1.2, label=label)
        ax.set_title(env_id)
        ax.set_xlabel("timesteps")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1000:.0f}k"))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("true return (2 episodes, deterministic)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=["HalfCheetah-v5"])
    parser.add_argument("--labels", nargs="+", type=int, default=[350, 700, 1400])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=300_000)
    parser.add_argument("--eval-every", type=int, default=30_000)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=Path("bench"))
    parser.add_argument("--run", nargs=4, metavar=("ENV", "CONDITION", "SEED", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:  # one run, in its own process
        env_id, condition, seed, out = args.run
        run_one(env_id, condition, int(seed), args.steps, args.eval_every, out)
        return

    (args.out / "runs").mkdir(parents=True, exist_ok=True)
    conditions = ["true", *map(str, args.labels)]
    jobs = []
    # Seeds outermost: an interrupted benchmark has every env and condition on the first seeds.
    for seed in args.seeds:
        for env_id in args.envs:
            for condition in conditions:
                stem = args.out / "runs" / f"{env_id.replace('/', '_')}-{condition}-seed{seed}"
                if not Path(f"{stem}.json").exists():  # resume: finished runs are kept
                    jobs.append((env_id, condition, seed, str(stem)))
    print(f"{len(jobs)} runs to do on {args.jobs} cores")

    commands = [
        (
            f"{env_id} {condition} seed {seed}",
            [
                sys.executable,
                __file__,
                "--steps",
                str(args.steps),
                "--eval-every",
                str(args.eval_every),
                "--run",
                env_id,
                condition,
                str(seed),
                stem,
            ],
        )
        for env_id, condition, seed, stem in jobs
    ]
    run_parallel(commands, args.jobs)
    print(summarise(args.out, args.envs, conditions))
    print(f"learning curves: {plot_curves(args.out, args.envs, conditions)}")


if __name__ == "__main__":
    main()
