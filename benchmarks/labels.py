"""Label efficiency: how many labels reach 80% of true-reward RL, and what selection and noise do.

PPO with the RL Zoo's Pendulum settings (4 envs, 40,000 steps; cheap enough for a 2-core
machine) learns from N oracle labels with disagreement or random query selection, from a
perfect teacher or one of B-Pref's simulated irrational teachers (``--teachers``: one that errs
10% of the time, calls close pairs equal, skips pairs that are both bad, is myopic, or is
Boltzmann-rational), against the same PPO on the true reward. Every agent is scored on the raw true reward (10 episodes,
deterministic policy, fresh seeds). A run whose result file exists is not run again.

    python benchmarks/labels.py --labels 50 100 200 400 --seeds 0 1 2 --out bench-labels/
    python benchmarks/labels.py --labels 200 --teachers mistake equal skip myopic stoc --out bench-labels/

``--methods`` adds runs at ``--compare-at`` labels with the label-efficient methods that followed
the paper (:data:`METHODS`; ``+`` combines them, e.g. ``pebble+surf``), each against the same
disagreement-selection baseline:

    python benchmarks/labels.py --labels 200 --teachers --methods entropy kcenter_entropy pebble rune surf \
        --seeds 0 1 2 3 4 5 6 7 8 9 --out bench-methods/
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from common import bootstrap_interval, interquartile_mean, run_parallel, write_json

ENV_ID = "Pendulum-v1"
STEPS = 40_000
#: B-Pref's simulated teachers (Lee et al. 2021) as SyntheticOracle arguments, with thresholds
#: in Pendulum's units: a 30-step segment returns between about -480 and 0.
TEACHERS = {
    "perfect": {},
    "mistake": {"mistake_rate": 0.1},
    "equal": {"equal_threshold": 10.0},
    "skip": {"skip_threshold": -200.0},
    "myopic": {"gamma": 0.9},
    "stoc": {"beta": 0.1},
}
#: The label-efficient methods as PreferenceCallback settings (see the README's loop section).
METHODS: dict[str, dict[str, object]] = {
    "entropy": {"selection": "entropy"},
    "kcenter_entropy": {"selection": "kcenter_entropy"},
    "kcenter_disagreement": {"selection": "kcenter_disagreement"},
    "pebble": {"exploration_steps": 8192},  # a fifth of the run: two of PPO's rollouts
    "rune": {"exploration_bonus": 0.05},  # RUNE's β0
    "surf": {"crop_steps": 5, "pseudo_label_threshold": 0.99},
}


def method_settings(name: str) -> dict[str, object]:
    """The settings of ``"pebble+surf"``-style names (``"-"``: none)."""
    settings: dict[str, object] = {}
    for part in name.split("+"):
        settings |= METHODS.get(part, {}) if part != "-" else {}
    return settings


def run_one(condition: str, seed: int, out: str) -> None:
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    import gym_prefs
    from gym_prefs.presets import algorithm_kwargs

    torch.set_num_threads(1)
    venv = make_vec_env(ENV_ID, n_envs=4, seed=seed)
    callback = None
    if condition != "true":
        labels, selection, teacher_name, *method = condition.split(":")
        venv = gym_prefs.VecLearnedReward(venv)
        teacher = gym_prefs.SyntheticOracle(**TEACHERS[teacher_name], seed=seed)
        settings = {"selection": selection, **method_settings(method[0] if method else "-")}
        callback = gym_prefs.PreferenceCallback(
            teacher, total_labels=int(labels), store=f"{out}.db", seed=seed, **settings
        )
    model = PPO("MlpPolicy", venv, seed=seed, **algorithm_kwargs(ENV_ID, "ppo"))
    start = time.perf_counter()
    model.learn(STEPS, callback=callback)
    seconds = time.perf_counter() - start
    score, _ = evaluate_policy(model, make_vec_env(ENV_ID, n_envs=1, seed=20_000 + seed), 10, deterministic=True)
    if callback is not None:
        callback.close()
    result = {"condition": condition, "seed": seed, "final_true_return": float(score), "seconds": seconds}
    write_json(result, out + ".json")


def summarise(out: Path) -> str:
    results = sorted((json.loads(p.read_text()) for p in (out / "runs").glob("*.json")), key=lambda r: r["seed"])
    by: dict[str, list[float]] = {}
    for r in results:
        by.setdefault(r["condition"], []).append(r["final_true_return"])
    true_median = statistics.median(by["true"]) if "true" in by else None
    # Random actions score about -1,300 on Pendulum: "80% of true-reward RL" is 80% of its gain over that.
    random_return = -1300.0
    lines = [
        "| condition | runs | true return per seed | median | IQM [95% CI] | share of the gain | swung up |",
        "|---|---|---|---|---|---|---|",
    ]

    def order(condition: str) -> tuple[int, str]:
        return (0, "") if condition == "true" else (int(condition.split(":")[0]), condition)

    for condition in sorted(by, key=order):
        median = statistics.median(by[condition])
        share = (median - random_return) / (true_median - random_return) if true_median else float("nan")
        if condition == "true":
            name = "true reward"
        else:
            labels, selection, teacher_name, *method = condition.split(":")
            teacher = f", {teacher_name} teacher {TEACHERS[teacher_name]}" if teacher_name != "perfect" else ""
            extra = f", {method[0]} {method_settings(method[0])}" if method else ""
            name = f"{labels} labels, {selection}{teacher}{extra}"
        per_seed = " ".join(f"{v:,.0f}" for v in by[condition])
        up = sum(v > -400 for v in by[condition])
        runs = len(by[condition])
        low, high = bootstrap_interval(by[condition])
        iqm = f"{interquartile_mean(by[condition]):,.0f} [{low:,.0f}, {high:,.0f}]"
        lines.append(f"| {name} | {runs} | {per_seed} | {median:,.0f} | {iqm} | {share:.0%} | {up} / {runs} |")
    table = "\n".join(lines)
    (out / "summary.md").write_text(table + "\n")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", nargs="+", type=int, default=[50, 100, 200, 400])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--compare-at", type=int, default=200, help="label budget for the selection and noise runs")
    parser.add_argument(
        "--teachers", nargs="*", choices=list(TEACHERS), default=["mistake"], help="noisy teachers to compare"
    )
    parser.add_argument("--methods", nargs="*", default=[], help="label-efficient methods to compare (METHODS)")
    parser.add_argument("--no-random", action="store_true", help="leave out the random-selection runs")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=Path("bench-labels"))
    parser.add_argument("--run", nargs=3, metavar=("CONDITION", "SEED", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        run_one(args.run[0], int(args.run[1]), args.run[2])
        return
    (args.out / "runs").mkdir(parents=True, exist_ok=True)
    conditions = ["true"] + [f"{n}:disagreement:perfect" for n in args.labels]
    conditions += [] if args.no_random else [f"{args.compare_at}:random:perfect"]
    conditions += [f"{args.compare_at}:disagreement:{name}" for name in args.teachers]
    conditions += [f"{args.compare_at}:disagreement:perfect:{name}" for name in args.methods]
    jobs = []
    # Seeds outermost: an interrupted benchmark has every condition on the first seeds.
    for seed in args.seeds:
        for condition in dict.fromkeys(conditions):
            stem = args.out / "runs" / f"{condition.replace(':', '_')}-seed{seed}"
            if not Path(f"{stem}.json").exists():
                command = [sys.executable, __file__, "--run", condition, str(seed), str(stem)]
                jobs.append((f"{condition} seed {seed}", command))
    print(f"{len(jobs)} runs to do on {args.jobs} cores")
    run_parallel(jobs, args.jobs)
    print(summarise(args.out))


if __name__ == "__main__":
    main()
