"""Fault injection across processes: what must hold after a training run, a store's creation or the
fitting process is killed, a disk fills up or two runs meet on one store.

Each test names the fault and asserts what a user keeps: every committed label, a clear error
instead of a hang, a path that a restart can use. Runs that are killed are real processes
killed with SIGKILL at seeded random moments. ``benchmarks/faults.py`` repeats these faults
many more times and prints the fault table. Faults within one process (sources, envs, resuming)
are in ``test_faults.py``.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from fault_helpers import learn_or_hang, stored_answers, tiny_run
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback

import gym_prefs
from gym_prefs import PreferenceCallback, PreferenceStore
from gym_prefs.fit_worker import FitWorkerError
from gym_prefs.store import StoreError

# ---------------------------------------------------------------------- SIGKILL of a training run
TRAINING = textwrap.dedent(
    """
    import sys
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    import gym_prefs

    env = gym_prefs.VecLearnedReward(make_vec_env("Pendulum-v1", n_envs=2, seed=int(sys.argv[2])))
    callback = gym_prefs.PreferenceCallback(
        "oracle", total_labels=40, segment_length=10, refit_interval=128, store=sys.argv[1],
        initial_fit_epochs=10, seed=int(sys.argv[2]),
    )
    print("STARTING", flush=True)
    PPO("MlpPolicy", env, n_steps=128, batch_size=64, policy_kwargs={"net_arch": [16]}).learn(4000, callback=callback)
    print("DONE", len(callback.store), callback.store.counts()["queries"], flush=True)
    """
)

CREATE_STORE = textwrap.dedent(
    """
    import sys
    from gymnasium import spaces
    from gym_prefs import PreferenceStore

    print("GO", flush=True)
    PreferenceStore(sys.argv[1], spaces.Box(-1, 1, (3,)), spaces.Discrete(2), segment_length=4).close()
    print("CREATED", flush=True)
    """
)


def committed_answers(path: Path) -> dict[int, str]:
    """The answers on disk, or none while the store does not exist yet."""
    try:
        return stored_answers(path)
    except (FileNotFoundError, StoreError):
        return {}


def start_when(script: str, line: str, *args: str) -> subprocess.Popen[str]:
    """Start ``script`` and return once it has printed ``line`` (its imports are done)."""
    process = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    for printed in process.stdout:
        if printed.strip() == line:
            return process
    raise AssertionError(f"the script ended before printing {line!r}")


def test_sigkill_while_a_store_is_created_never_leaves_an_unusable_path(tmp_path):
    rng = random.Random(0)
    box, discrete = spaces.Box(-1, 1, (3,)), spaces.Discrete(2)
    for attempt in range(12):
        path = tmp_path / f"p{attempt}.db"
        process = start_when(CREATE_STORE, "GO", str(path))
        time.sleep(rng.uniform(0.0, 0.012))  # creating a store takes about 7 ms
        process.kill()
        process.wait()
        # A restart on that path simply works, whatever instant the kill hit.
        with PreferenceStore(path, box, discrete, segment_length=4) as store:
            assert len(store) == 0
    leftovers = [p.name for p in tmp_path.iterdir() if not p.name.startswith("p") or p.suffix != ".db"]
    assert not [name for name in leftovers if "-wal" not in name and "-shm" not in name], leftovers


def test_sigkill_during_training_loses_no_committed_label_and_a_restart_ends_on_budget(tmp_path):
    path = tmp_path / "p.db"
    rng = random.Random(1)
    committed: dict[int, str] = {}
    for attempt in range(4):
        process = start_when(TRAINING, "STARTING", str(path), str(attempt))
        # The first kill lands in the first instants (store creation, initial labels); later
        # ones anywhere in the run.
        time.sleep(rng.uniform(0.0, 0.3) if attempt == 0 else rng.uniform(0.5, 5.0))
        before = committed_answers(path)
        process.kill()
        process.wait()
        after = committed_answers(path)
        assert before.items() <= after.items(), "a committed label disappeared or changed"
        assert committed.items() <= after.items()
        committed = after
    done = subprocess.run([sys.executable, "-c", TRAINING, str(path), "9"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "DONE 40 40" in done.stdout
    assert committed.items() <= stored_answers(path).items()


# ---------------------------------------------------------------------- a full disk
def test_a_full_disk_is_a_clear_error_and_a_restart_after_freeing_space_ends_on_budget(small_disk):
    path = small_disk / "p.db"
    filler = small_disk / "filler"
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    filler.write_bytes(b"\0" * (free - 160 * 1024))  # room for the store to start, not to finish
    run = subprocess.run([sys.executable, "-c", TRAINING, str(path), "0"], capture_output=True, text=True, timeout=600)
    assert run.returncode != 0 and "DONE" not in run.stdout
    last_line = run.stderr.strip().splitlines()[-1]
    assert "full" in last_line or "No space left on device" in last_line, run.stderr[-2000:]
    committed = stored_answers(path)
    assert committed, "no label was committed before the disk filled up"
    filler.unlink()
    done = subprocess.run([sys.executable, "-c", TRAINING, str(path), "1"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "DONE 40 40" in done.stdout
    assert committed.items() <= stored_answers(path).items()


# ---------------------------------------------------------------------- the fitting process dies
class KillFitWorker(BaseCallback):
    """SIGKILLs the preference callback's fitting process at the given timesteps."""

    def __init__(self, prefs: PreferenceCallback, at: list[int]) -> None:
        super().__init__()
        self.prefs, self.at, self.killed = prefs, sorted(at), []

    def _on_step(self) -> bool:
        if self.at and self.num_timesteps >= self.at[0]:
            self.at.pop(0)
            worker = self.prefs.parts.fitter.worker
            os.kill(worker.pid, signal.SIGKILL)
            self.killed.append(worker.pid)
        return True


def test_a_killed_fitting_process_is_replaced_and_training_ends_on_budget(tmp_path, capfd):
    model, callback = tiny_run("oracle", tmp_path / "p.db", fitting="process", total_labels=30)
    killer = KillFitWorker(callback, at=[300, 700])
    learn_or_hang(model, callback, 1280, also=killer)
    assert len(killer.killed) == 2 and callback.parts.fitter.restarts == 2
    assert callback.num_labels == 30 and callback.num_fits >= 8
    err = capfd.readouterr().err
    assert err.count("killed by SIGKILL") == 2 and "starting a new fitting process" in err


def test_a_fitting_process_killed_again_and_again_stops_training_with_the_reason(tmp_path):
    model, callback = tiny_run("oracle", tmp_path / "p.db", fitting="process", total_labels=30)
    killer = KillFitWorker(callback, at=[200, 400, 600, 800])
    with pytest.raises(FitWorkerError, match=r"SIGKILL(.|\n)*replaced 2 times already"):
        learn_or_hang(model, callback, 1280, also=killer)
    assert stored_answers(tmp_path / "p.db")  # every label asked so far is on disk


# ---------------------------------------------------------------------- two runs on one store
def test_a_second_training_run_on_a_store_in_use_is_refused_and_the_first_finishes_on_budget(tmp_path):
    path = tmp_path / "p.db"
    first = start_when(TRAINING, "STARTING", str(path), "0")
    try:
        deadline = time.monotonic() + 60
        while not Path(f"{path}-run.lock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        model, callback = tiny_run("oracle", path, segment_length=10, total_labels=40)
        with pytest.raises(gym_prefs.StoreBusyError, match=rf"pid {first.pid}.*another store path"):
            model.learn(256, callback=callback)
        callback.close()
        assert model.num_timesteps == 0
        out, _ = first.communicate(timeout=600)
    finally:
        first.kill()
    assert "DONE 40 40" in out  # the first run spent its budget once, undisturbed
    with PreferenceStore(path, readonly=True) as store:
        assert store.counts()["queries"] == 40
