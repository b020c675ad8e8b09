"""Publishing a fitted model and reaching the wrappers, without an agent learning."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

from gym_prefs import FitReport, LearnedReward, RewardEnsemble, VecLearnedReward
from gym_prefs.env_link import env_id, link_reward_wrappers, segment_length_from_dt
from gym_prefs.publishing import EpisodeReturns, Publisher, correlation
from gym_prefs.segments import DEFAULT_SEGMENT_LENGTH, SegmentPool
from gym_prefs.timings import Timings

REPORT = FitReport(0.4, 0.5, 0.9, 1e-4, epochs=5, pairs=10, steps=7)


class RecordingLogger(Logger):
    def __init__(self) -> None:
        super().__init__(folder=None, output_formats=[])
        self.records: dict[str, float] = {}

    def record(self, key, value, exclude=None):
        self.records[key] = value


def fitted_state(model: RewardEnsemble, seed: int) -> dict:
    other = RewardEnsemble(model.observation_space, model.action_space, seed=seed)
    other.fitted.fill_(True)
    return other.state_dict()


def test_a_published_model_reaches_every_wrapper_and_the_file(tmp_path):
    venv = VecLearnedReward(make_vec_env("Pendulum-v1", n_envs=2, seed=0))
    model = RewardEnsemble(venv.observation_space, venv.action_space, seed=0)
    wrappers = link_reward_wrappers(venv)
    publisher = Publisher(model, wrappers, tmp_path / "m.pt", tmp_path / "p.db", relabel=True, timings=Timings())
    algo = PPO("MlpPolicy", venv, n_steps=16, batch_size=16)
    publisher.publish(fitted_state(model, seed=1), REPORT, algo)
    assert venv.reward_model is model and model.is_fitted and publisher.fits == 1
    obs = np.zeros((3, 3), np.float32)
    np.testing.assert_array_equal(RewardEnsemble.load(tmp_path / "m.pt").predict(obs, np.zeros((3, 1))),
                                  model.predict(obs, np.zeros((3, 1))))  # fmt: skip


def test_publishing_relabels_an_off_policy_buffer():
    env = LearnedReward(gym.make("Pendulum-v1"))
    algo = SAC("MlpPolicy", env, learning_starts=30, buffer_size=200, seed=0)
    algo.learn(40)
    model = env.reward_model
    publisher = Publisher(model, link_reward_wrappers(algo.get_env()), None, "p.db", relabel=True, timings=Timings())
    before = algo.replay_buffer.rewards[:40].copy()
    publisher.publish(fitted_state(model, seed=2), REPORT, algo)
    assert not np.allclose(algo.replay_buffer.rewards[:40], before)
    assert "relabel" in publisher.timings.seconds


def test_saving_on_a_full_disk_says_every_label_is_safe(tmp_path, monkeypatch):
    model = RewardEnsemble(spaces.Box(-1, 1, (2,)), spaces.Discrete(2), seed=0)

    class NoWrappers:
        def push(self, model, exploration_bonus=0.0):
            pass

    def full_disk(path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(model, "save", full_disk)
    publisher = Publisher(model, NoWrappers(), tmp_path / "m.pt", tmp_path / "p.db", relabel=False, timings=Timings())
    with pytest.raises(OSError, match=r"Every label is in .*p\.db: free space"):
        publisher.publish(fitted_state(model, seed=1), REPORT, algo=None)


def test_logs_hold_the_fit_and_how_r_hat_follows_the_true_reward():
    obs_space, act_space = spaces.Box(-1, 1, (1,)), spaces.Discrete(2)
    model = RewardEnsemble(obs_space, act_space, seed=0)
    pool = SegmentPool(obs_space, act_space, 1, 100)
    logger = RecordingLogger()

    class NoWrappers:
        def push(self, model, exploration_bonus=0.0):
            pass

    publisher = Publisher(model, NoWrappers(), None, "p.db", relabel=False, timings=Timings())
    publisher.log(logger, pool, verbose=0)
    assert logger.records == {}  # nothing fitted yet: nothing to say
    publisher.publish(fitted_state(model, seed=1), REPORT, algo=None)
    publisher.log(logger, pool, verbose=0)
    assert logger.records["reward_model/accuracy"] == 0.9 and logger.records["reward_model/fits"] == 1
    assert logger.records["reward_model/fit_steps"] == REPORT.steps
    assert np.isnan(logger.records["reward_model/true_reward_corr"])  # no steps in the pool yet
    assert correlation(np.arange(5.0), 2 * np.arange(5.0)) == pytest.approx(1.0)


def test_episode_returns_show_the_true_return_in_monitors_record():
    returns = EpisodeReturns(window=2)
    infos = [{"episode_returns": {"true": 5.0, "learned": 0.1, "l": 3}, "episode": {"r": 0.1, "l": 3}}, {}]
    returns.observe(infos)
    returns.observe([{"episode_returns": {"true": 7.0, "learned": 0.3, "l": 3}}] * 2)
    assert infos[0]["episode"]["r"] == 5.0
    assert list(returns.true) == [7.0, 7.0] and list(returns.learned) == [0.3, 0.3]  # the last two
    logger = RecordingLogger()
    returns.log(logger)
    assert logger.records == {"rollout/ep_true_rew_mean": 7.0, "rollout/ep_learned_rew_mean": pytest.approx(0.3)}


@pytest.mark.parametrize("per_env", [False, True])
def test_the_wrappers_are_reached_in_this_process_or_per_env(per_env):
    if per_env:
        venv = make_vec_env("Pendulum-v1", n_envs=2, seed=0, wrapper_class=LearnedReward)
    else:
        venv = VecLearnedReward(make_vec_env("Pendulum-v1", n_envs=2, seed=0))
    wrappers = link_reward_wrappers(venv)
    obs_space, act_space = wrappers.spaces()
    assert obs_space.shape == (3,) and act_space.shape == (1,)
    model = RewardEnsemble(obs_space, act_space, seed=0)
    wrappers.push(model)
    assert wrappers.current_model() is model
    venv.reset()
    for _ in range(5):
        venv.step(np.zeros((2, 1), np.float32))
    steps = sum(len(batch) * batch.true_rewards.shape[1] for _, batch in wrappers.drain())
    assert steps == 10 and wrappers.inference_seconds() > 0
    assert env_id(venv) == "Pendulum-v1" and segment_length_from_dt(venv) == 30


def test_an_env_without_a_reward_wrapper_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"gym_prefs\.LearnedReward\(env\)"):
        link_reward_wrappers(make_vec_env("Pendulum-v1", n_envs=1))


def test_an_env_without_dt_gets_the_default_segment_length():
    class NoClock(gym.Env):
        observation_space = spaces.Box(-1, 1, (1,))
        action_space = spaces.Discrete(2)

    venv = DummyVecEnv([lambda: Monitor(NoClock())])
    assert segment_length_from_dt(venv) == DEFAULT_SEGMENT_LENGTH and env_id(venv) is None
