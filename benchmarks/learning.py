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

``--algo trpo`` trains the MuJoCo preset's TRPO (the paper's, γ 0.995, λ 0.97) in both
conditions instead of PPO.

An ``ALE/...`` env id runs the Atari preset instead: A2C with 16 envs in ale-py's vectorised
env (the preset's preprocessing, episode ends hidden in both conditions; the true-reward
baseline's rewards clipped to their sign, as published A2C baselines train), scored on the
true game score of the games it plays while training (the curve) and of 8 games played after
it (the final figure, a sampled policy: a deterministic Atari policy often stalls). The
``random`` condition (a uniformly random policy, 16 games) gives the figure gains are measured
from, and the summary then reports each condition's share of the true-reward agent's gain::

    python benchmarks/learning.py --envs ALE/Seaquest-v5 --conditions random true 700 --steps 300000 --jobs 2

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
from typing import Any

from common import run_parallel, write_json

#: Per-env changes to PPO's defaults, for both conditions (the RL Zoo's discount for Swimmer,
#: without which PPO barely moves on it).
PPO_KWARGS = {"Swimmer-v5": {"gamma": 0.9999}}


def run_one(env_id: str, condition: str, seed: int, steps: int, eval_every: int, out: str, algo: str = "ppo") -> None:
    """Train and score one run (called in its own process)."""
    if env_id.startswith("ALE/"):
        write_json(_atari_run(env_id, condition, seed, steps, eval_every, out), out + ".json")
        return
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
            total_labels=_labels_of(condition),
            store=f"{out}.db",
            seed=seed,
            fitting="process",
            **_settings_of(condition),
        )
        callbacks.append(preferences)
    venv = VecNormalize(venv, norm_obs=False, norm_reward=True)
    if algo == "trpo":  # the MuJoCo preset's algorithm and settings (the paper's), for both conditions
        from sb3_contrib import TRPO

        model = TRPO("MlpPolicy", venv, seed=seed, **preset_for(env_id, "mujoco").algo_kwargs)
    else:
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


def _atari_run(env_id: str, condition: str, seed: int, steps: int, eval_every: int, out: str) -> dict[str, Any]:
    """One Atari run of the preset's A2C (or the random policy), scored on the true game score."""
    import numpy as np
    import torch
    from stable_baselines3 import A2C
    from stable_baselines3.common.callbacks import BaseCallback, CallbackList
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import VecEnvWrapper

    import gym_prefs
    from gym_prefs.atari import make_atari_env, make_atari_eval_env
    from gym_prefs.presets import atari_preset

    torch.set_num_threads(1)
    eval_env = make_atari_eval_env(env_id, n_envs=8, seed=20_000 + seed)
    result: dict[str, Any] = {"env_id": env_id, "condition": condition, "seed": seed, "steps": steps}
    if condition == "random":
        rng = np.random.default_rng(seed)

        class RandomPolicy:
            def predict(self, obs: Any, *args: Any, **kwargs: Any) -> Any:
                return rng.integers(eval_env.action_space.n, size=len(obs)), None

        random_games, _ = evaluate_policy(RandomPolicy(), eval_env, n_eval_episodes=16, return_episode_rewards=True)  # type: ignore[arg-type]
        return {
            **result,
            "steps": 0,
            "final_true_return": float(np.mean(random_games)),
            "final_games": random_games,
            "curve": [],
        }

    labels = 0 if condition == "true" else _labels_of(condition)
    preset = atari_preset(env_id, total_labels=max(labels, 1))
    venv = make_atari_env(env_id, n_envs=16, seed=seed, learned_reward=labels > 0, ale_vector=True, num_threads=1)
    callbacks: list[BaseCallback] = []
    preferences = None
    if labels:
        preferences = gym_prefs.PreferenceCallback(
            "oracle", config=preset.config, store=f"{out}.db", seed=seed, fitting="process", **_settings_of(condition)
        )
        callbacks.append(preferences)
    else:

        class SignOfReward(VecEnvWrapper):
            """The game's reward clipped to -1, 0 or +1, as published Atari baselines train."""

            def reset(self) -> Any:
                return self.venv.reset()

            def step_wait(self) -> Any:
                obs, rewards, dones, infos = self.venv.step_wait()
                return obs, np.sign(rewards), dones, infos

        venv = SignOfReward(venv)
    model = A2C(preset.policy, venv, seed=seed, **preset.algo_kwargs)
    games: list[tuple[int, float]] = []

    class Games(BaseCallback):
        """The true score of every game the agent finishes while it trains."""

        def _on_step(self) -> bool:
            infos = self.locals["infos"]
            games.extend((self.num_timesteps, info["episode"]["r"]) for info in infos if "episode" in info)
            return True

    start = time.perf_counter()
    model.learn(steps, callback=CallbackList([*callbacks, Games()]))
    seconds = time.perf_counter() - start
    final, _ = evaluate_policy(model, eval_env, n_eval_episodes=8, deterministic=False, return_episode_rewards=True)
    curve = []
    for end in range(eval_every, steps + eval_every, eval_every):
        window = [score for t, score in games if end - eval_every < t <= end]
        if window:
            curve.append((end, float(np.mean(window))))
    result.update(
        final_true_return=float(np.mean(final)),
        final_games=final,
        curve=curve,
        games=games,
        seconds=seconds,
        labels=preferences.num_labels if preferences else 0,
        breakdown=preferences.time_breakdown() if preferences else {},
        finished_at=time.strftime("%Y-%m-%d %H:%M:%S"),
    )
    if preferences is not None:
        preferences.close()
    return result


def summarise(out: Path, envs: list[str], conditions: list[str]) -> str:
    """A markdown table: median final true return per condition against the true-reward agent's.

    Where a ``random`` run exists the comparison is the share of the true-reward agent's gain
    over random (a score of 0 is not "nothing learned" in most games); else the plain ratio.
    """
    results = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    lines = [
        "| env | condition | seeds | final true return per seed | median | against true reward | wall time (median) |",
        "|---|---|---|---|---|---|---|",
    ]
    for env_id in envs:
        by_condition = {c: [r for r in results if r["env_id"] == env_id and r["condition"] == c] for c in conditions}
        medians = {
            c: statistics.median(r["final_true_return"] for r in runs) for c, runs in by_condition.items() if runs
        }
        for condition, runs in by_condition.items():
            if not runs:
                continue
            returns = [r["final_true_return"] for r in sorted(runs, key=lambda r: r["seed"])]
            median = medians[condition]
            cells = [env_id, _condition_name(condition), str(len(runs)), " / ".join(f"{v:,.0f}" for v in returns)]
            seconds = [r["seconds"] for r in runs if "seconds" in r]
            wall = f"{statistics.median(seconds):.0f} s" if seconds else "—"
            lines.append("| " + " | ".join([*cells, f"{median:,.0f}", _against_true(condition, medians), wall]) + " |")
    table = "\n".join(lines)
    (out / "summary.md").write_text(table + "\n")
    return table


def _labels_of(condition: str) -> int:
    """The label budget of a condition: ``"700"`` or ``"700:exploration_steps=20000+..."``."""
    return int(condition.split(":")[0])


def _settings_of(condition: str) -> dict[str, Any]:
    """The PreferenceCallback settings after a condition's ``:``, ``+``-separated ``name=value`` pairs."""
    _, _, settings = condition.partition(":")
    pairs = (item.split("=", 1) for item in settings.split("+") if item)
    return {name: _value(text) for name, text in pairs}


def _value(text: str) -> Any:
    """A setting's value: a number, true/false/null or a list as JSON, anything else as text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _condition_name(condition: str) -> str:
    if condition in ("true", "random"):
        return {"true": "true reward", "random": "random policy"}[condition]
    settings = ", ".join(f"{k}={v}" for k, v in _settings_of(condition).items())
    return f"{_labels_of(condition)} labels" + (f", {settings}" if settings else "")


def _against_true(condition: str, medians: dict[str, float]) -> str:
    """``condition``'s median as a share of the true-reward agent's gain over random, or a ratio."""
    true_median = medians.get("true")
    if condition in ("true", "random") or true_median is None:
        return "—"
    if "random" in medians:
        gain = true_median - medians["random"]
        return f"{(medians[condition] - medians['random']) / gain:.2f} of the gain" if gain > 0 else "n/a (no gain)"
    if true_median <= 0:
        return "n/a (returns ≤ 0)"  # a ratio of negative returns reads backwards
    return f"{medians[condition] / true_median:.2f}"


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
                label = _condition_name(condition) if i == 0 else None
                if condition == "random":  # no training: its score is a level to compare against
                    ax.axhline(run["final_true_return"], color="grey", linestyle="--", linewidth=1, label=label)
                    continue
                steps, returns = zip(*run["curve"], strict=True) if run["curve"] else ((), ())
                ax.plot(steps, returns, color=colours[condition], alpha=0.8, linewidth=1.2, label=label)
        ax.set_title(env_id)
        atari = env_id.startswith("ALE/")
        ax.set_ylabel("true score (games while training)" if atari else "true return (2 episodes, deterministic)")
        ax.set_xlabel("timesteps")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1000:.0f}k"))
        ax.grid(alpha=0.3)
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
    parser.add_argument(
        "--conditions",
        nargs="+",
        help='instead of "true" and --labels: "random", "true", label budgets, or a budget with callback settings '
        '("700:exploration_steps=20000+selection=entropy")',
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=300_000)
    parser.add_argument("--algo", choices=("ppo", "trpo"), default="ppo", help="MuJoCo: PPO, or the preset's TRPO")
    parser.add_argument("--eval-every", type=int, default=30_000)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=Path("bench"))
    parser.add_argument("--run", nargs=4, metavar=("ENV", "CONDITION", "SEED", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:  # one run, in its own process
        env_id, condition, seed, out = args.run
        run_one(env_id, condition, int(seed), args.steps, args.eval_every, out, args.algo)
        return

    (args.out / "runs").mkdir(parents=True, exist_ok=True)
    conditions = args.conditions or ["true", *map(str, args.labels)]
    jobs = []
    # Seeds outermost: an interrupted benchmark has every env and condition on the first seeds.
    for seed in args.seeds:
        for env_id in args.envs:
            for condition in conditions:
                algo = "" if args.algo == "ppo" else f"-{args.algo}"
                name = condition.replace(":", "_").replace("+", "_").replace("=", "-")
                stem = args.out / "runs" / f"{env_id.replace('/', '_')}{algo}-{name}-seed{seed}"
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
                "--algo",
                args.algo,
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
