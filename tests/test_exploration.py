"""RUNE's exploration bonus: β_t times the members' disagreement, paid beside r̂."""

import csv

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure

from gym_prefs import LearnedReward, PreferenceCallback, RewardEnsemble, VecLearnedReward
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


class Point(gym.Env):
    """A point that moves by its action from the origin: a random walk stays near it."""

    observation_space = spaces.Box(-10, 10, (2,), np.float32)
    action_space = spaces.Box(-1, 1, (2,), np.float32)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.pos, self.t = np.zeros(2, np.float32), 0
        return self.pos.copy(), {}

    def step(self, action):
        self.pos = np.clip(self.pos + np.clip(action, -1, 1), -10, 10).astype(np.float32)
        self.t += 1
        return self.pos.copy(), float(-np.abs(self.pos).sum()), False, self.t >= 40, {}


class QueriesWhileExploring(BaseCallback):
    def __init__(self, preferences, until):
        super().__init__()
        self.preferences, self.until = preferences, until
        self.asked, self.paid = set(), []
        self.at_labels = None  # the policy's weights at the first step on r̂

    def _on_step(self) -> bool:
        if self.at_labels is None and self.num_timesteps > self.until:
            self.at_labels = [p.detach().clone() for p in self.model.policy.parameters()]
        if self.num_timesteps < self.until:
            self.asked.add(self.preferences.num_queries)
            self.paid.extend(np.asarray(self.locals["rewards"]).tolist())
        return True


def _initial_spread(exploration_steps, seed=0):
    """Mean distance from the origin of the states in the initial labelled segments, and the run."""
    venv = VecLearnedReward(make_vec_env(Point, n_envs=4, seed=seed))
    prefs = PreferenceCallback(
        "oracle", total_labels=40, segment_length=10, exploration_steps=exploration_steps, fitting="inline", seed=seed
    )
    algo = PPO("MlpPolicy", venv, n_steps=256, batch_size=64, seed=seed, policy_kwargs={"net_arch": [32]})
    before = [p.detach().clone() for p in algo.policy.parameters()]
    probe = QueriesWhileExploring(prefs, exploration_steps)
    algo.learn(exploration_steps + 1, callback=CallbackList([prefs, probe]))
    obs = np.concatenate([chunk.obs for chunk in prefs.store.labelled_pair_chunks(last=None)])
    obs = obs[:10].reshape(-1, 2)  # the initial share: 10 of 40 labels
    changed = any(not torch.equal(a, b) for a, b in zip(before, probe.at_labels, strict=True))
    prefs.close()
    return float(np.linalg.norm(obs, axis=1).mean()), probe, changed, prefs


def test_exploring_first_labels_segments_that_reach_farther_than_a_random_policy():
    random_spread, _, random_changed, plain = _initial_spread(0)
    explored_spread, probe, explored_changed, prefs = _initial_spread(4096)
    # Measured: 3.4 from the origin for the random policy's segments, 6.0 after exploring.
    assert explored_spread > 1.3 * random_spread
    assert probe.asked == {0}  # nothing asked while exploring
    assert np.std(probe.paid) > 0  # paid the state-entropy reward (r̂ is 0 before the first fit)
    assert prefs.num_labels == plain.num_labels == 40
    # Without exploring, RL starts from the policy it was given (the initial labels do not
    # train it); with it, RL goes on from the policy that learned to explore (as in PEBBLE).
    assert not random_changed and explored_changed


def test_an_off_policy_buffer_filled_while_exploring_is_relabelled_with_r_hat():
    env = LearnedReward(gym.make("Pendulum-v1"))
    prefs = PreferenceCallback("oracle", total_labels=20, segment_length=10, exploration_steps=300, seed=0)
    algo = SAC("MlpPolicy", env, learning_starts=100, buffer_size=1000, policy_kwargs={"net_arch": [16]}, seed=0)
    probe = QueriesWhileExploring(prefs, 300)
    algo.learn(400, callback=CallbackList([prefs, probe]))
    assert probe.asked == {0} and np.std(probe.paid) > 0 and prefs.num_fits >= 1
    buffer = algo.replay_buffer
    actions = algo.policy.unscale_action(buffer.actions[: buffer.pos])
    expected = prefs.reward_model.predict(buffer.observations[: buffer.pos], actions)
    np.testing.assert_allclose(buffer.rewards[: buffer.pos], expected, rtol=1e-4, atol=1e-5)
