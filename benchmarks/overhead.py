"""Wall-clock of ``model.learn`` with gym_prefs (wrapper + callback + oracle) against plain SB3.

Runs alternate (plain, gym_prefs, plain, ...) so that machine noise hits both alike, and the
callback's own timers split the extra time into reward inference, segment bookkeeping, query
selection, labelling and fitting.

    python benchmarks/overhead.py --env HalfCheetah-v5 --steps 20000 --n-envs 4 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import SubprocVecEnv

import gym_prefs

FITTING = "process"


def run(
    env_id: str, steps: int, n_envs: int, seed: int, preferences: bool, labels: int, subproc: bool, per_env: bool
) -> dict:
    vec_cls = SubprocVecEnv if subproc else None
    wrapper = gym_prefs.LearnedReward if (preferences and per_env) else None
    venv = make_vec_env(env_id, n_envs=n_envs, seed=seed, vec_env_cls=vec_cls, wrapper_class=wrapper)
    if preferences and not per_env:
        venv = gym_prefs.VecLearnedReward(venv)
    callback = (
        gym_prefs.PreferenceCallback("oracle", total_labels=labels, seed=seed, fitting=FITTING) if preferences else None
    )
    model = PPO("MlpPolicy", venv, n_steps=512, batch_size=64, seed=seed)
    phases = _time_phases(model)
    start = time.perf_counter()
    model.learn(steps, callback=callback)
    seconds = time.perf_counter() - start
    venv.close()
    result = {"seconds": seconds, "phases": phases}
    if callback is not None:
        result["breakdown"] = callback.time_breakdown()
        result["fits"] = callback.num_fits
        result["labels"] = callback.num_labels
    return result


def _time_phases(model: PPO) -> dict[str, float]:
    """Time PPO's two phases (collecting rollouts, the gradient updates) as they run."""
    phases = {"collect_rollouts": 0.0, "train": 0.0}
    for name in phases:
        method = getattr(model, name)

        def timed(*args: Any, _method: Any = method, _name: str = name, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return _method(*args, **kwargs)
            finally:
                phases[_name] += time.perf_counter() - start

        setattr(model, name, timed)
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--n-envs", type=int, default=4)
    parser.add_argument("--labels", type=int, default=700)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--subproc", action="store_true", help="SubprocVecEnv instead of DummyVecEnv")
    parser.add_argument("--per-env", action="store_true", help="LearnedReward per env instead of VecLearnedReward")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--fitting", choices=("process", "thread", "inline"), default="process")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    global FITTING
    FITTING = args.fitting

    plain, prefs = [], []
    for repeat in range(args.repeats):
        plain.append(run(args.env, args.steps, args.n_envs, repeat, False, args.labels, args.subproc, args.per_env))
        prefs.append(run(args.env, args.steps, args.n_envs, repeat, True, args.labels, args.subproc, args.per_env))
        plain_s, prefs_s = plain[-1]["seconds"], prefs[-1]["seconds"]
        print(f"repeat {repeat}: plain {plain_s:.1f} s, gym_prefs {prefs_s:.1f} s", flush=True)
    plain_s = statistics.median(r["seconds"] for r in plain)
    prefs_s = statistics.median(r["seconds"] for r in prefs)
    parts = {k: statistics.median(r["breakdown"].get(k, 0.0) for r in prefs) for k in prefs[0]["breakdown"]}
    vec_env = "SubprocVecEnv" if args.subproc else "DummyVecEnv"
    wrapper = "LearnedReward per env" if args.per_env else "VecLearnedReward"
    print(
        f"\n{args.env}, PPO, {args.n_envs} envs, {args.steps} steps, {args.labels} labels "
        f"({vec_env}, {wrapper}, fitting={args.fitting})"
    )
    print(f"plain SB3: {plain_s:.1f} s   gym_prefs: {prefs_s:.1f} s   ratio: {prefs_s / plain_s:.3f}x")
    for phase in ("collect_rollouts", "train"):
        plain_phase = statistics.median(r["phases"][phase] for r in plain)
        prefs_phase = statistics.median(r["phases"][phase] for r in prefs)
        print(f"PPO {phase}: plain {plain_phase:.1f} s   gym_prefs {prefs_phase:.1f} s")
    print("where the extra time goes (median seconds):")
    for name, seconds in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"  {name:16s} {seconds:7.2f}  ({100 * seconds / prefs_s:.1f}% of the run)")
    if args.json:
        with open(args.json, "w") as handle:
            results = {"args": vars(args), "plain": plain, "gym_prefs": prefs, "ratio": prefs_s / plain_s}
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
