"""Env steps per second of the two Atari pipelines: Gymnasium's Python envs and ale-py's vectorised env.

    python benchmarks/atari_envs.py --env ALE/Pong-v5 --n-envs 16 --steps 1000

Both give the agent the same frames (see ``tests/test_atari_vector.py``): ``make_atari_env``
(a ``DummyVecEnv`` of ALE + ``AtariPreprocessing`` + frame stacking) and ``AleVecEnv`` (ale-py's
``AtariVectorEnv``, stepped in C++ with 1 or 2 threads). Random actions, no reward model, so
the numbers are the envs' alone; each is the median of ``--repeats`` timed runs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from common import report

from gym_prefs.atari import make_atari_env


def steps_per_second(env_id: str, n_envs: int, steps: int, ale_vector: bool, threads: int) -> float:
    venv = make_atari_env(
        env_id, n_envs=n_envs, seed=0, learned_reward=False, ale_vector=ale_vector, num_threads=threads
    )
    rng = np.random.default_rng(0)
    actions = rng.integers(0, venv.action_space.n, size=(steps, n_envs))
    venv.reset()
    start = time.perf_counter()
    for t in range(steps):
        venv.step(actions[t])
    seconds = time.perf_counter() - start
    venv.close()
    return steps * n_envs / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="ALE/Pong-v5")
    parser.add_argument("--n-envs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=1_000, help="steps of all the envs together")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    setups = {
        "python (make_atari_env)": (False, 0),
        "ale_vector, 1 thread": (True, 1),
        "ale_vector, 2 threads": (True, 2),
    }
    result: dict[str, object] = {"env": args.env, "n_envs": args.n_envs}
    for name, (ale_vector, threads) in setups.items():
        runs = [steps_per_second(args.env, args.n_envs, args.steps, ale_vector, threads) for _ in range(args.repeats)]
        result[name] = round(statistics.median(runs))
    report(result, args.json)


if __name__ == "__main__":
    main()
