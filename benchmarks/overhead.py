"""Wall-clock of ``model.learn`` with gym_prefs (wrapper + callback + oracle) against plain SB3.

Runs alternate (plain, gym_prefs, plain, ...) so that machine noise hits both alike, and the
callback's own timers split the extra time into reward inference, segment bookkeeping, query
selection, labelling and fitting.

    python benchmarks/overhead.py --env HalfCheetah-v5 --steps 20000 --n-envs 4 --repeats 3

An ``ALE/...`` env id runs the Atari preset instead (A2C, CnnPolicy, the paper's reward CNN);
plain SB3 then gets the same env pipeline with the game's reward.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from common import write_json
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.vec_env import SubprocVecEnv

import gym_prefs


def run(
    env_id: str,
    steps: int,
    n_envs: int,
    seed: int,
    preferences: bool,
    labels: int,
    subproc: bool = False,
    per_env: bool = False,
    overrides: dict[str, Any] | None = None,
    ale_vector: bool = False,
) -> dict:
    """One timed ``model.learn``: plain SB3, or with gym_prefs when ``preferences``.

    ``overrides`` replace :class:`~gym_prefs.PreferenceCallback` settings (and the preset's).
    """
    config = None
    if env_id.startswith("ALE/"):
        venv, model, config = _atari(env_id, n_envs, seed, preferences, labels, subproc, ale_vector)
    else:
        vec_cls = SubprocVecEnv if subproc else None
        wrapper = gym_prefs.LearnedReward if (preferences and per_env) else None
        venv = make_vec_env(env_id, n_envs=n_envs, seed=seed, vec_env_cls=vec_cls, wrapper_class=wrapper)
        if preferences and not per_env:
            venv = gym_prefs.VecLearnedReward(venv)
        model = PPO("MlpPolicy", venv, n_steps=512, batch_size=64, seed=seed)
    callback = (
        gym_prefs.PreferenceCallback("oracle", config=config, total_labels=labels, seed=seed, **(overrides or {}))
        if preferences
        else None
    )
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
        callback.close()
    return result


def _atari(
    env_id: str, n_envs: int, seed: int, preferences: bool, labels: int, subproc: bool, ale_vector: bool
) -> tuple[Any, OnPolicyAlgorithm, gym_prefs.PreferenceConfig]:
    """The Atari preset (A2C, CnnPolicy); plain SB3 gets the same env pipeline without the reward wrapper."""
    from stable_baselines3 import A2C

    from gym_prefs.atari import make_atari_env
    from gym_prefs.presets import atari_preset

    preset = atari_preset(env_id, total_labels=labels)
    vec_cls = SubprocVecEnv if subproc else None
    venv = make_atari_env(
        env_id, n_envs=n_envs, seed=seed, vec_env_cls=vec_cls, learned_reward=preferences, ale_vector=ale_vector
    )
    model = A2C("CnnPolicy", venv, seed=seed, **preset.algo_kwargs)
    return venv, model, preset.config


def _time_phases(model: OnPolicyAlgorithm) -> dict[str, float]:
    """Time the algorithm's two phases (collecting rollouts, the gradient updates) as they run."""
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
    parser.add_argument("--ale-vector", action="store_true", help="Atari: ale-py's vectorised env (C++ threads)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--fitting", choices=("process", "thread", "inline"), default="process")
    parser.add_argument("--initial-fit-epochs", type=int, default=None, help="epochs of the fit before RL")
    parser.add_argument("--initial-label-fraction", type=float, default=None, help="share of labels before RL")
    parser.add_argument("--refit-interval", type=int, default=None, help="timesteps between refits")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides: dict[str, Any] = {"fitting": args.fitting}
    overrides |= {
        name: value
        for name, value in (
            ("initial_fit_epochs", args.initial_fit_epochs),
            ("initial_label_fraction", args.initial_label_fraction),
            ("refit_interval", args.refit_interval),
        )
        if value is not None
    }
    plain, prefs = [], []
    for repeat in range(args.repeats):
        for preferences, results in ((False, plain), (True, prefs)):
            results.append(
                run(
                    args.env,
                    args.steps,
                    args.n_envs,
                    repeat,
                    preferences,
                    args.labels,
                    args.subproc,
                    args.per_env,
                    overrides,
                    args.ale_vector,
                )
            )
        plain_s, prefs_s = plain[-1]["seconds"], prefs[-1]["seconds"]
        print(f"repeat {repeat}: plain {plain_s:.1f} s, gym_prefs {prefs_s:.1f} s", flush=True)
    plain_s = statistics.median(r["seconds"] for r in plain)
    prefs_s = statistics.median(r["seconds"] for r in prefs)
    parts = {k: statistics.median(r["breakdown"].get(k, 0.0) for r in prefs) for k in prefs[0]["breakdown"]}
    vec_env = "SubprocVecEnv" if args.subproc else "DummyVecEnv"
    atari = args.env.startswith("ALE/")
    wrapper = "LearnedReward per env" if args.per_env and not atari else "VecLearnedReward"
    print(
        f"\n{args.env}, {'A2C' if atari else 'PPO'}, {args.n_envs} envs, {args.steps} steps, {args.labels} labels "
        f"({vec_env}, {wrapper}, fitting={args.fitting})"
    )
    print(f"plain SB3: {plain_s:.1f} s   gym_prefs: {prefs_s:.1f} s   ratio: {prefs_s / plain_s:.3f}x")
    for phase in ("collect_rollouts", "train"):
        plain_phase = statistics.median(r["phases"][phase] for r in plain)
        prefs_phase = statistics.median(r["phases"][phase] for r in prefs)
        print(f"{phase}: plain {plain_phase:.1f} s   gym_prefs {prefs_phase:.1f} s")
    print("where the extra time goes (median seconds):")
    for name, seconds in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"  {name:16s} {seconds:7.2f}  ({100 * seconds / prefs_s:.1f}% of the run)")
    if args.json:
        write_json({"args": vars(args), "plain": plain, "gym_prefs": prefs, "ratio": prefs_s / plain_s}, args.json)


if __name__ == "__main__":
    main()
