"""RUNE's exploration bonus: β_t times the members' disagreement, paid beside r̂."""

import csv

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure

from gym_prefs import LearnedReward, PreferenceCallback, RewardEnsemble
from gym_prefs.exploration import UncertaintyBonus
from gym_prefs.reward_core import RewardCore
from gym_prefs.sb3_internals import relabel_replay_buffer

OBS = spaces.Box(-1, 1, (3,))
ACT = spaces.Box(-1, 1, (1,))


def fitted_model():
    model = RewardEnsemble(OBS, ACT, n_members=3, seed=0)
    model.fitted.fill_(True)
    return model


def test_the_wrappers_pay_the_members_spread_on_top_of_the_learned_reward():
    model = fitted_model()
    core = RewardCore(OBS, ACT, n_envs=4, reward_model=model)
    rng = np.random.default_rng(0)
    obs, actions = rng.uniform(-1, 1, (4, 3)).astype(np.float32), rng.uniform(-1, 1, (4, 1)).astype(np.float32)
    core.reset(obs)
    plain = core.step(obs, actions, np.zeros(4), np.zeros(4, bool), [{} for _ in range(4)])
    core.set_reward_model(model, exploration_bonus=0.5)
    paid = core.step(obs, actions, np.zeros(4), np.zeros(4, bool), [{} for _ in range(4)])
    rewards, members = model.predict_with_members(obs, actions)
    np.testing.assert_allclose(plain, rewards, rtol=1e-6)
    np.testing.assert_allclose(paid, rewards + 0.5 * members.std(axis=0), rtol=1e-5)
    assert np.all(members.std(axis=0) > 0)
    # What is recorded for fitting and reported as the learned return is r̂ alone.
    np.testing.assert_allclose(core.pop_transitions().learned_rewards[-1], rewards, rtol=1e-6)
    core.set_reward_model(model)  # None keeps the bonus
    assert core.exploration_bonus == 0.5


def test_no_bonus_before_the_first_fit():
    core = RewardCore(OBS, ACT, n_envs=2, reward_model=RewardEnsemble(OBS, ACT, seed=0))
    core.set_reward_model(core.reward_model, exploration_bonus=1.0)
    core.reset(np.zeros((2, 3), np.float32))
    rewards = core.step(np.zeros((2, 3), np.float32), np.zeros((2, 1)), np.zeros(2), np.zeros(2, bool), [{}, {}])
    np.testing.assert_array_equal(rewards, 0.0)  # not NaN: unfitted members have no opinion


def test_the_bonus_decays_and_bad_values_are_refused():
    bonus = UncertaintyBonus(0.1, decay=1e-4)
    assert bonus.at(0) == 0.1 and bonus.at(10_000) == pytest.approx(0.1 * np.exp(-1.0), rel=1e-3)
    with pytest.raises(ValueError, match="exploration_bonus must be"):
        PreferenceCallback("oracle", exploration_bonus=-1.0)
    with pytest.raises(ValueError, match="exploration_bonus_decay"):
        PreferenceCallback("oracle", exploration_bonus=0.1, exploration_bonus_decay=1.0)


class PaidRewards(BaseCallback):
    """Checks that every reward the agent gets is r̂ + β·std with the β the publisher pushed."""

    def __init__(self, preferences):
        super().__init__()
        self.preferences = preferences
        self.bonuses = set()

    def _on_step(self) -> bool:
        model = self.preferences.reward_model
        rewards, members = model.predict_with_members(self.model._last_obs, self.locals["clipped_actions"])
        bonus = self.preferences.parts.publisher.bonus
        expected = rewards + bonus * members.std(axis=0)
        np.testing.assert_allclose(self.locals["rewards"], expected, rtol=1e-4, atol=1e-5)
        self.bonuses.add(round(bonus, 8))
        return True


def test_a_run_pays_a_decaying_bonus_and_logs_it(tmp_path):
    env = LearnedReward(gym.make("Pendulum-v1"))
    prefs = PreferenceCallback(
        "oracle", total_labels=30, segment_length=10, exploration_bonus=0.2, exploration_bonus_decay=1e-3, seed=0
    )
    probe = PaidRewards(prefs)
    algo = PPO("MlpPolicy", env, n_steps=256, batch_size=64, policy_kwargs={"net_arch": [16]}, seed=0)
    algo.set_logger(configure(str(tmp_path), ["csv"]))
    algo.learn(1024, callback=CallbackList([prefs, probe]))
    assert len(probe.bonuses) >= 3  # a new β at each refit
    assert max(probe.bonuses) == pytest.approx(0.2) and min(probe.bonuses) < 0.2 * np.exp(-0.5)
    with open(tmp_path / "progress.csv") as handle:
        logged = [float(row["reward_model/exploration_bonus"] or "nan") for row in csv.DictReader(handle)]
    logged = [value for value in logged if not np.isnan(value)]  # rows without a fit have none
    assert logged == sorted(logged, reverse=True) and logged[0] == pytest.approx(0.2) and 0 < logged[-1] < 0.1


def test_relabelled_replay_buffers_carry_the_bonus():
    env = make_vec_env(lambda: LearnedReward(gym.make("Pendulum-v1")), n_envs=2, seed=0)
    algo = SAC("MlpPolicy", env, learning_starts=50, buffer_size=500, policy_kwargs={"net_arch": [16]}, seed=0)
    algo.learn(100)
    model = RewardEnsemble(env.observation_space, env.action_space, n_members=3, seed=0)
    model.fitted.fill_(True)
    relabel_replay_buffer(algo, model, exploration_bonus=0.3)
    buffer = algo.replay_buffer
    actions = algo.policy.unscale_action(buffer.actions[: buffer.pos])
    rewards, members = model.predict_with_members(buffer.observations[: buffer.pos], actions)
    np.testing.assert_allclose(buffer.rewards[: buffer.pos], rewards + 0.3 * members.std(axis=0), rtol=1e-4)
