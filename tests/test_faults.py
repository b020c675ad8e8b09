"""Fault injection across the loop: what must hold after a process is killed, a source misbehaves,
an env emits garbage, a disk fills up or two runs meet on one store.

Each test names the fault and asserts what a user keeps: every committed label, a clear error
instead of a hang, a path that a restart can use. Runs that are killed are real processes
killed with SIGKILL at seeded random moments. ``benchmarks/faults.py`` repeats these faults
many more times and prints the fault table.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import pytest
from conftest import ScriptedSource
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

import gym_prefs
from gym_prefs import PreferenceCallback, PreferenceStore, VecLearnedReward
from gym_prefs.sources import Answer
from gym_prefs.store import StoreError

TINY_PPO = {"n_steps": 64, "batch_size": 64, "n_epochs": 1, "policy_kwargs": {"net_arch": [8]}}


def tiny_run(source: Any = "oracle", store: Path | None = None, env: Any = None, **callback_kwargs: Any):
    env = env if env is not None else VecLearnedReward(make_vec_env("Pendulum-v1", n_envs=2, seed=0))
    kwargs: dict[str, Any] = {
        "total_labels": 10,
        "segment_length": 5,
        "refit_interval": 128,
        "initial_fit_epochs": 2,
        "fitting": "inline",
        "seed": 0,
        **callback_kwargs,
    }
    callback = PreferenceCallback(source, store=str(store) if store else None, **kwargs)
    model = PPO("MlpPolicy", env, seed=0, **TINY_PPO)
    return model, callback


# ---------------------------------------------------------------------- misbehaving sources
def stored_answers(path: Path) -> dict[int, str]:
    with PreferenceStore(path, readonly=True) as store:
        return {answer.query_id: answer.label for answer in store.answers()}


def test_an_answer_to_an_unknown_query_is_an_error_and_the_valid_answers_are_kept(tmp_path):
    def answer(query):
        return Answer(query.id + 1000 if query.id == 2 else query.id, "first", "scripted")

    source = ScriptedSource(answer)
    model, callback = tiny_run(source, tmp_path / "p.db")
    with pytest.raises(ValueError, match=r"no query with id 1002 is waiting.*valid answers of that batch were stored"):
        model.learn(256, callback=callback)
    callback.close()
    answers = stored_answers(tmp_path / "p.db")
    assert answers == {1: "first"}  # the initial share: 2 queries, the second answered with a wrong id
    assert source.acknowledged == [1]


class LooseAnswer:
    """Answer-shaped, but not an Answer: nothing validated it."""

    def __init__(self, query_id, label):
        self.query_id, self.label = query_id, label

    def __repr__(self):
        return f"LooseAnswer({self.query_id}, {self.label!r})"


def test_a_label_that_is_not_one_of_the_four_is_an_error_not_a_silent_drop(tmp_path):
    source = ScriptedSource(lambda query: LooseAnswer(query.id, "best" if query.id == 1 else "second"))
    model, callback = tiny_run(source, tmp_path / "p.db")
    with pytest.raises(ValueError, match=r"LooseAnswer\(1, 'best'\).*label must be one of"):
        model.learn(256, callback=callback)
    callback.close()
    assert stored_answers(tmp_path / "p.db") == {2: "second"}


def test_numpy_integer_query_ids_are_accepted(tmp_path):
    source = ScriptedSource(lambda query: Answer(np.int64(query.id), "first", "scripted"))
    model, callback = tiny_run(source, tmp_path / "p.db")
    model.learn(256, callback=callback)
    callback.close()
    assert len(stored_answers(tmp_path / "p.db")) == 10


class RaisingSource(ScriptedSource):
    def __init__(self, fail_after: int) -> None:
        super().__init__(lambda query: Answer(query.id, "first", "scripted"))
        self.fail_after = fail_after
        self.polls = 0

    def poll(self, timeout=0.0):
        self.polls += 1
        if self.polls > self.fail_after:
            raise ConnectionError("the labelling service went away")
        return super().poll(timeout)


def test_a_source_that_raises_stops_training_with_its_error_and_keeps_the_labels(tmp_path):
    source = RaisingSource(fail_after=1)
    model, callback = tiny_run(source, tmp_path / "p.db")
    with pytest.raises(ConnectionError, match="went away"):
        model.learn(1024, callback=callback)
    callback.close()
    assert len(stored_answers(tmp_path / "p.db")) == 2  # the initial share, committed before the failure


class SilentSource(ScriptedSource):
    """Takes queries and never answers them."""

    def __init__(self) -> None:
        super().__init__(lambda query: None)
        self.asked = 0

    def request(self, queries):
        self.asked += len(queries)

    def poll(self, timeout=0.0):
        time.sleep(min(timeout or 0.0, 0.05))
        return []

    @property
    def pending(self):
        return self.asked


def test_a_source_that_never_answers_is_reported_and_times_out_before_rl(tmp_path, capsys):
    model, callback = tiny_run(SilentSource(), tmp_path / "p.db", initial_label_timeout=1.5)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"2 of the queries asked of 'scripted' before RL starts got no answer"):
        model.learn(256, callback=callback)
    assert time.monotonic() - started < 60
    callback.close()
    assert "waiting for 2 answers from 'scripted' before RL starts" in capsys.readouterr().out
    assert model.num_timesteps == 0
    with PreferenceStore(tmp_path / "p.db", readonly=True) as store:
        assert store.counts()["pending"] == 2  # asked again when the run is restarted


def test_an_initial_label_timeout_must_be_positive():
    with pytest.raises(ValueError, match="initial_label_timeout must be positive"):
        PreferenceCallback("oracle", initial_label_timeout=0)


# ---------------------------------------------------------------------- envs that misbehave
class GlitchyEnv(gym.Env[np.ndarray, np.ndarray]):
    """A 1-D walk whose observation or reward turns NaN at given steps."""

    observation_space = spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = spaces.Box(-1, 1, (1,), np.float32)
    metadata: ClassVar[dict[str, Any]] = {}

    def __init__(self, nan_obs_at: int | None = None, nan_reward_every: int | None = None, length: int = 50):
        self.nan_obs_at, self.nan_reward_every, self.length = nan_obs_at, nan_reward_every, length
        self.t, self.total, self.x = 0, 0, 0.0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.x = 0, 0.0
        return np.array([self.x, 0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        self.total += 1
        self.x += float(action[0])
        obs = np.array([self.x, self.t / self.length], np.float32)
        if self.nan_obs_at is not None and self.total >= self.nan_obs_at:
            obs[0] = np.nan
        reward = -abs(self.x)
        if self.nan_reward_every and self.total % self.nan_reward_every == 0:
            reward = float("nan")
        return obs, reward, False, self.t >= self.length, {}


def test_a_nan_observation_is_a_clear_error_at_the_step_it_appears():
    env = gym_prefs.LearnedReward(GlitchyEnv(nan_obs_at=5))
    env.reset(seed=0)
    for _ in range(4):
        env.step(np.zeros(1, np.float32))
    with pytest.raises(ValueError, match="NaN or infinity"):
        env.step(np.zeros(1, np.float32))
    venv = VecLearnedReward(DummyVecEnv([lambda: GlitchyEnv(nan_obs_at=3)]))
    venv.reset()
    venv.step(np.zeros((1, 1), np.float32))
    with pytest.raises(ValueError, match="NaN or infinity"):
        for _ in range(3):
            venv.step(np.zeros((1, 1), np.float32))


def test_pairs_with_a_nan_true_reward_are_skipped_by_the_oracle_with_a_warning(tmp_path):
    env = VecLearnedReward(DummyVecEnv([lambda: GlitchyEnv(nan_reward_every=13)] * 2))
    model, callback = tiny_run("oracle", tmp_path / "p.db", env=env, total_labels=20)
    with pytest.warns(RuntimeWarning, match="NaN or infinite true reward"):
        model.learn(512, callback=callback)
    callback.close()
    with PreferenceStore(tmp_path / "p.db", readonly=True) as store:
        pairs = store.labelled_pairs()
        skipped = store.counts()["skipped"]
    # Every trained-on label compares finite returns; every pair holding a NaN was skipped.
    assert np.isfinite(pairs.true_rewards).all()
    assert skipped >= 1 and len(pairs) + skipped == 20


def test_segments_longer_than_every_episode_are_a_clear_error_at_start(tmp_path):
    env = VecLearnedReward(DummyVecEnv([lambda: GlitchyEnv(length=4)]))
    model, callback = tiny_run("oracle", tmp_path / "p.db", env=env, segment_length=10)
    with pytest.raises(ValueError, match=r"lasted 10 steps.*shorter segment_length"):
        model.learn(256, callback=callback)
    callback.close()
    assert model.num_timesteps == 0


def test_a_label_budget_of_zero_needs_labels_from_somewhere(tmp_path):
    model, callback = tiny_run("oracle", tmp_path / "p.db", total_labels=0)
    with pytest.raises(ValueError, match="total_labels=0 and the store holds no labels"):
        model.learn(256, callback=callback)
    callback.close()
    with pytest.raises(ValueError, match="total_labels must be >= 0"):
        PreferenceCallback("oracle", total_labels=-1)
    # With labels in the store, a budget of 0 trains on those and asks nothing.
    model, callback = tiny_run("oracle", tmp_path / "p.db", total_labels=10)
    model.learn(256, callback=callback)
    callback.close()
    model, callback = tiny_run("oracle", tmp_path / "p.db", total_labels=0)
    model.learn(256, callback=callback)
    assert callback.num_fits >= 1 and callback.num_queries == 10
    callback.close()


def test_an_env_without_dt_in_subprocesses_uses_the_default_segment_length(tmp_path):
    # CartPole has no ``dt``; asking a SubprocVecEnv worker for it used to kill the worker.
    env = VecLearnedReward(make_vec_env("CartPole-v1", n_envs=2, seed=0, vec_env_cls=SubprocVecEnv))
    model, callback = tiny_run("oracle", tmp_path / "p.db", env=env, segment_length=None, total_labels=4)
    try:
        model.learn(128, callback=callback)
        assert callback.segment_length == gym_prefs.callback.DEFAULT_SEGMENT_LENGTH
        assert len(env.env_method("reset")) == 2  # the env workers are still alive
    finally:
        callback.close()
        env.close()


# ---------------------------------------------------------------------- resuming without hanging
class FirstOnlySource(ScriptedSource):
    """Answers the first ``count`` queries it is given, then takes queries and never answers."""

    def __init__(self, count: int) -> None:
        super().__init__(lambda query: Answer(query.id, "first", "scripted"))
        self.left = count
        self.silent = 0

    def request(self, queries):
        answered, self.left = queries[: self.left], max(0, self.left - len(queries))
        super().request(answered)
        self.silent += len(queries) - len(answered)

    @property
    def pending(self):
        return len(self._ready) + self.silent


class RenderedWalk(GlitchyEnv):
    render_mode = "rgb_array"
    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 20}

    def render(self):
        return np.full((8, 8, 3), 128, np.uint8)


class SilentPerson(FirstOnlySource):
    """A person who never answers (a window nobody looks at): needs clips, answers nothing."""

    needs_clips = True

    def __init__(self) -> None:
        super().__init__(count=0)


def learn_or_hang(model, callback, steps: int, seconds: float = 120.0, also: BaseCallback | None = None) -> None:
    """``model.learn`` then ``callback.close()``, failing the test instead of hanging it."""
    errors: list[BaseException] = []

    def run():
        try:
            model.learn(steps, callback=callback if also is None else CallbackList([callback, also]))
        except BaseException as error:  # reported below
            errors.append(error)
        finally:
            callback.close()  # the store's connection belongs to this thread

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"learn() was still waiting after {seconds:.0f} s"
    if errors:
        raise errors[0]


def walk_env(n_envs: int = 2) -> VecLearnedReward:
    return VecLearnedReward(DummyVecEnv([RenderedWalk] * n_envs))


def test_a_resumed_run_waits_only_for_the_initial_share(tmp_path, capsys):
    model, callback = tiny_run(FirstOnlySource(count=2), tmp_path / "p.db", env=walk_env())
    model.learn(1024, callback=callback)
    callback.close()
    with PreferenceStore(tmp_path / "p.db", readonly=True) as store:
        assert store.counts()["answered"] == 2 and store.counts()["pending"] == 8
    # The initial share (2) is answered: the 8 pending queries are asked again, not waited for.
    model, callback = tiny_run(FirstOnlySource(count=0), tmp_path / "p.db", env=walk_env())
    learn_or_hang(model, callback, 512)
    assert model.num_timesteps >= 512 and "waiting for" not in capsys.readouterr().out
    assert callback.num_queries == 10 and len(callback._pending_queries) == 8


def test_pending_queries_without_clips_are_not_waited_for_by_a_person(tmp_path, capsys):
    # An oracle-like run asks 2 queries that were never answered (stored without clips).
    model, callback = tiny_run(FirstOnlySource(count=0), tmp_path / "p.db", env=walk_env(), initial_label_timeout=0.5)
    with pytest.raises(TimeoutError):
        model.learn(256, callback=callback)
    callback.close()
    # A person's window cannot show them: the run says so and does not wait for them.
    model, callback = tiny_run(SilentPerson(), tmp_path / "p.db", env=walk_env(), initial_label_timeout=0.5)
    with pytest.raises(TimeoutError, match="2 of the queries"):  # the new ones, which have clips, are waited for
        learn_or_hang(model, callback, 256)
    out = capsys.readouterr().out
    assert "2 pending queries in" in out and "stored without clips" in out
    with PreferenceStore(tmp_path / "p.db", readonly=True) as store:
        assert store.counts()["pending"] == 4
    assert callback.num_queries == 2  # the person's budget counts only what can be shown


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
    done = subprocess.run(
        [sys.executable, "-c", TRAINING, str(path), "9"], capture_output=True, text=True, timeout=600
    )
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


class NeedsClips(ScriptedSource):
    needs_clips = True

    def __init__(self) -> None:
        super().__init__(lambda query: Answer(query.id, "first", "scripted"))


def test_an_env_a_person_cannot_see_in_subprocesses_is_a_clear_error(tmp_path):
    # CartPole made without render_mode: the person could not see it. Inside a SubprocVecEnv
    # worker the error used to end the worker, and training died with a bare EOFError.
    env = SubprocVecEnv([lambda: gym_prefs.LearnedReward(gym.make("CartPole-v1"))] * 2)
    model, callback = tiny_run(NeedsClips(), tmp_path / "p.db", env=env)
    try:
        with pytest.raises(ValueError, match="render_mode='rgb_array'"):
            model.learn(128, callback=callback)
        assert len(env.env_method("reset")) == 2  # the env workers are still alive
    finally:
        callback.close()
        env.close()


# ---------------------------------------------------------------------- the fitting process dies
class KillFitWorker(BaseCallback):
    """SIGKILLs the preference callback's fitting process at the given timesteps."""

    def __init__(self, prefs: PreferenceCallback, at: list[int]) -> None:
        super().__init__()
        self.prefs, self.at, self.killed = prefs, sorted(at), []

    def _on_step(self) -> bool:
        if self.at and self.num_timesteps >= self.at[0]:
            self.at.pop(0)
            worker = self.prefs._worker
            assert worker is not None
            os.kill(worker.pid, signal.SIGKILL)
            self.killed.append(worker.pid)
        return True


def test_a_killed_fitting_process_is_replaced_and_training_ends_on_budget(tmp_path, capfd):
    model, callback = tiny_run("oracle", tmp_path / "p.db", fitting="process", total_labels=30)
    killer = KillFitWorker(callback, at=[300, 700])
    learn_or_hang(model, callback, 1280, also=killer)
    assert len(killer.killed) == 2 and callback._worker_restarts == 2
    assert callback.num_labels == 30 and callback.num_fits >= 8
    err = capfd.readouterr().err
    assert err.count("killed by SIGKILL") == 2 and "starting a new fitting process" in err


def test_a_fitting_process_killed_again_and_again_stops_training_with_the_reason(tmp_path):
    model, callback = tiny_run("oracle", tmp_path / "p.db", fitting="process", total_labels=30)
    killer = KillFitWorker(callback, at=[200, 400, 600, 800])
    with pytest.raises(gym_prefs.fit_worker.FitWorkerError, match=r"SIGKILL(.|\n)*replaced 2 times already"):
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
