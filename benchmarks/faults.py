"""Fault injection at scale: kill training runs, store creations and fitting processes at random
moments, many times, and count what was lost.

``tests/test_faults_processes.py`` injects each fault a handful of times in CI; this script repeats the
process kills until a rare unlucky instant would show, and prints the fault table:

    python benchmarks/faults.py --training-kills 20 --creation-kills 40 --worker-kills 6 --out faults.json

Each training kill hits one run on one store (Pendulum, PPO, 40 oracle labels), at a random
moment: some in the first instants (store creation, the initial labels), the rest anywhere in
the run. After every kill the committed labels are compared with those seen just before it;
at the end one more run must finish with exactly the budget, every earlier label kept.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from common import report
from gymnasium import spaces

from gym_prefs import PreferenceStore
from gym_prefs.store import StoreError

BUDGET = 40

TRAINING = textwrap.dedent(
    f"""
    import sys
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    import gym_prefs

    env = gym_prefs.VecLearnedReward(make_vec_env("Pendulum-v1", n_envs=2, seed=int(sys.argv[2])))
    callback = gym_prefs.PreferenceCallback(
        "oracle", total_labels={BUDGET}, segment_length=10, refit_interval=128, store=sys.argv[1],
        initial_fit_epochs=10, seed=int(sys.argv[2]),
    )
    print("STARTING", flush=True)
    PPO("MlpPolicy", env, n_steps=128, batch_size=64, policy_kwargs={{"net_arch": [16]}}).learn(
        int(sys.argv[3]), callback=callback
    )
    print("DONE", len(callback.store), callback.store.counts()["queries"], callback.num_timesteps, flush=True)
    """
)

CREATE_STORE = textwrap.dedent(
    """
    import sys
    from gymnasium import spaces
    from gym_prefs import PreferenceStore

    print("GO", flush=True)
    PreferenceStore(sys.argv[1], spaces.Box(-1, 1, (3,)), spaces.Discrete(2), segment_length=4).close()
    """
)

WORKER_KILLS = textwrap.dedent(
    f"""
    import os, signal, sys
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback, CallbackList
    from stable_baselines3.common.env_util import make_vec_env
    import gym_prefs

    class Killer(BaseCallback):
        def __init__(self, prefs, at):
            super().__init__()
            self.prefs, self.at = prefs, sorted(at)

        def _on_step(self):
            if self.at and self.num_timesteps >= self.at[0]:
                self.at.pop(0)
                os.kill(self.prefs.parts.fitter.worker.pid, signal.SIGKILL)
            return True

    env = gym_prefs.VecLearnedReward(make_vec_env("Pendulum-v1", n_envs=2, seed=0))
    prefs = gym_prefs.PreferenceCallback(
        "oracle", total_labels={BUDGET}, segment_length=10, refit_interval=128, store=sys.argv[1],
        initial_fit_epochs=10, seed=0,
    )
    at = [int(step) for step in sys.argv[2].split(",")]
    PPO("MlpPolicy", env, n_steps=128, batch_size=64, policy_kwargs={{"net_arch": [16]}}).learn(
        3000, callback=CallbackList([prefs, Killer(prefs, at)])
    )
    print("DONE", len(prefs.store), prefs.parts.fitter.restarts, flush=True)
    """
)


def answers(path: Path) -> dict[int, str]:
    try:
        with PreferenceStore(path, readonly=True) as store:
            return {answer.query_id: answer.label for answer in store.answers()}
    except (FileNotFoundError, StoreError):
        return {}


def done_line(stdout: str) -> list[str]:
    """The words of the script's closing ``DONE ...`` line (empty if it never got there)."""
    lines = [line.split() for line in stdout.splitlines() if line.startswith("DONE")]
    return lines[-1][1:] if lines else []


def start_when(script: str, line: str, *args: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert process.stdout is not None
    for printed in process.stdout:
        if printed.strip() == line:
            return process
    raise RuntimeError(f"the script ended before printing {line!r}")


def training_kills(folder: Path, count: int, per_store: int, rng: random.Random) -> dict[str, Any]:
    """``count`` kills, ``per_store`` on each store before one run finishes it."""
    lost = changed = restarts_on_budget = 0
    moments = []
    restart_seconds = []
    for first in range(0, count, per_store):
        path = folder / f"training{first}.db"
        committed: dict[int, str] = {}
        for attempt in range(first, min(count, first + per_store)):
            process = start_when(TRAINING, "STARTING", str(path), str(attempt), "6000")
            # One kill in four in the first instants (store creation, initial labels).
            delay = rng.uniform(0.0, 0.3) if attempt % 4 == 0 else rng.uniform(0.3, 8.0)
            time.sleep(delay)
            before = answers(path)
            process.kill()
            process.wait()
            after = answers(path)
            known = {**committed, **before}
            lost += len(set(known) - set(after))
            changed += sum(1 for query, label in known.items() if after.get(query, label) != label)
            committed = after
            moments.append(round(delay, 2))
            print(f"training kill {attempt + 1}/{count} at {delay:.2f} s: {len(after)} labels committed", flush=True)
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", TRAINING, str(path), "99", "6000"], capture_output=True, text=True, timeout=900
        )
        restart_seconds.append(round(time.perf_counter() - started, 1))
        final = answers(path)
        lost += len(set(committed) - set(final))
        restarts_on_budget += done.returncode == 0 and done_line(done.stdout)[:2] == [str(BUDGET), str(BUDGET)]
    return {
        "kills": count,
        "stores": len(restart_seconds),
        "kill_moments_s": moments,
        "labels_lost": lost,
        "labels_changed": changed,
        "restarts_ending_on_exactly_the_budget": restarts_on_budget,
        "restart_seconds": restart_seconds,
    }


def creation_kills(folder: Path, count: int, rng: random.Random) -> dict[str, Any]:
    usable = 0
    for attempt in range(count):
        path = folder / f"created{attempt}.db"
        process = start_when(CREATE_STORE, "GO", str(path))
        time.sleep(rng.uniform(0.0, 0.012))  # a creation takes about 7 ms
        process.kill()
        process.wait()
        try:
            with PreferenceStore(path, spaces.Box(-1, 1, (3,)), spaces.Discrete(2), segment_length=4):
                usable += 1
        except (StoreError, OSError) as error:
            print(f"creation kill {attempt}: the path is unusable: {error}", flush=True)
    leftovers = [p.name for p in folder.iterdir() if p.name.endswith(".creating")]
    return {"kills": count, "paths_usable_after": usable, "temporary_files_left": len(leftovers)}


def worker_kills(folder: Path, runs: int, rng: random.Random) -> dict[str, Any]:
    finished = restarts = 0
    for run in range(runs):
        path = folder / f"worker{run}.db"
        at = sorted(rng.sample(range(300, 2800, 100), 2))
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", WORKER_KILLS, str(path), ",".join(map(str, at))],
            capture_output=True,
            text=True,
            timeout=900,
        )
        words = done_line(done.stdout)
        ok = done.returncode == 0 and words[:1] == [str(BUDGET)]
        finished += ok
        restarts += int(words[1]) if ok else 0
        print(f"worker kills at {at}: {'finished' if ok else 'FAILED'} in {time.perf_counter() - started:.1f} s")
    return {"runs": runs, "kills": 2 * runs, "runs_finished_on_budget": finished, "workers_replaced": restarts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--training-kills", type=int, default=20)
    parser.add_argument("--kills-per-store", type=int, default=5)
    parser.add_argument("--creation-kills", type=int, default=40)
    parser.add_argument("--worker-kills", type=int, default=3, help="runs, each killing its fitting process twice")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with tempfile.TemporaryDirectory() as folder:
        result = {
            "training": training_kills(Path(folder), args.training_kills, args.kills_per_store, rng),
            "store_creation": creation_kills(Path(folder), args.creation_kills, rng),
            "fitting_process": worker_kills(Path(folder), args.worker_kills, rng),
            "machine": f"{os.cpu_count()} cores",
            "date": time.strftime("%Y-%m-%d"),
        }
    report(result, args.out)


if __name__ == "__main__":
    main()
