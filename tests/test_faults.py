"""Fault injection across the loop, within one process: a source misbehaves, an env emits garbage,
a run resumes with queries still waiting.

Each test names the fault and asserts what a user keeps: every committed label, a clear error
instead of a hang. Killed processes, a full disk and two runs on one store are in
``test_faults_processes.py``.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import pytest
from conftest import ScriptedSource
from fault_helpers import learn_or_hang, stored_answers, tiny_run
from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

import gym_prefs
from gym_prefs import PreferenceCallback, PreferenceStore, VecLearnedReward
from gym_prefs.sources import Answer


# ---------------------------------------------------------------------- misbehaving sources
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
    assert callback.num_queries == 10 and callback.parts.labelling.num_pending == 8


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
