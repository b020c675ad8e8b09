"""Every piece of Stable-Baselines3's private state gym_prefs relies on, checked against the installed SB3.

If one of these fails after an SB3 upgrade, ``gym_prefs/sb3_internals.py`` needs updating
(and ``SUPPORTED_SB3`` with it) before anything else.
"""

import gymnasium as gym
import numpy as np
import pytest
import stable_baselines3
from packaging.specifiers import SpecifierSet
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.monitor import Monitor

import gym_prefs
from gym_prefs.sb3_internals import (
    SUPPORTED_SB3,
    learn_horizon,
    relabel_replay_buffer,
    report_true_return,
    run_policy,
)


def test_the_installed_sb3_is_a_supported_version():
    assert stable_baselines3.__version__ in SpecifierSet(SUPPORTED_SB3), (
        f"Stable-Baselines3 {stable_baselines3.__version__} is outside {SUPPORTED_SB3}: check every "
        "field gym_prefs/sb3_internals.py relies on, then widen SUPPORTED_SB3 and pyproject.toml"
    )


class Probe(BaseCallback):
    """Records the order of callback calls and what SB3's private state holds at each."""

    def __init__(self, pre_steps: int = 0, fake_return: float | None = None) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.pre_steps, self.fake_return = pre_steps, fake_return
        self.horizon_at_start = 0
        self.obs_left = None

    def _init_callback(self) -> None:
        self.calls.append("init")

    def _on_training_start(self) -> None:
        self.calls.append("training_start")
        assert self.model._last_obs is not None, "SB3 no longer resets the env before _on_training_start"
        self.horizon_at_start = learn_horizon(self.model, fallback=-1)
        if self.pre_steps:
            run_policy(self.model, self.pre_steps)
            self.obs_left = np.array(self.model._last_obs, copy=True)

    def _on_rollout_start(self) -> None:
        self.calls.append("rollout_start")

    def _on_step(self) -> bool:
        if self.calls[-1] != "step":
            self.calls.append("step")
        if self.fake_return is not None:
            for info in self.locals["infos"]:
                report_true_return(info, self.fake_return)
        return True

    def _on_rollout_end(self) -> None:
        self.calls.append("rollout_end")

    def _on_training_end(self) -> None:
        self.calls.append("training_end")


def test_on_policy_call_order_horizon_and_where_the_next_rollout_starts():
    venv = make_vec_env("Pendulum-v1", n_envs=2, seed=0)
    model = PPO("MlpPolicy", venv, n_steps=16, batch_size=16, n_epochs=1, seed=0)
    probe = Probe(pre_steps=10)
    model.learn(32, callback=probe)
    assert probe.calls[:5] == ["init", "training_start", "rollout_start", "step", "rollout_end"]
    assert probe.calls[-1] == "training_end"
    assert probe.horizon_at_start == 32  # BaseAlgorithm._total_timesteps, set before training starts
    # The rollout continued from the envs where run_policy left them (BaseAlgorithm._last_obs).
    first_rollout = PPO("MlpPolicy", make_vec_env("Pendulum-v1", n_envs=2, seed=0), n_steps=16, seed=0)
    probe = Probe(pre_steps=10)
    first_rollout.learn(16, callback=probe)
    # Training flattened the buffer env by env: each env's first step is at env * n_steps.
    first_steps = first_rollout.rollout_buffer.observations[[0, 16]]
    np.testing.assert_allclose(first_steps, probe.obs_left, rtol=1e-6)
    assert first_rollout._last_episode_starts.shape == (2,)


def test_monitor_episode_records_are_read_after_the_callback_step():
    # Monitor outside the reward wrapper: what the callback writes into info["episode"] is what
    # SB3 reports as rollout/ep_rew_mean.
    env = Monitor(gym_prefs.LearnedReward(gym.make("Pendulum-v1")))
    model = PPO("MlpPolicy", env, n_steps=256, batch_size=64, n_epochs=1, seed=0)
    model.learn(512, callback=Probe(fake_return=123.0))
    assert len(model.ep_info_buffer) >= 2
    assert all(info["r"] == 123.0 for info in model.ep_info_buffer)


def test_replay_buffer_fields_and_scaled_actions_relabelling_relies_on():
    env = gym_prefs.LearnedReward(gym.make("Pendulum-v1"))  # actions in [-2, 2]
    model = SAC("MlpPolicy", env, learning_starts=50, buffer_size=1000, seed=0)
    model.learn(100)
    buffer = model.replay_buffer
    for field in ("observations", "actions", "rewards", "pos", "full", "buffer_size", "n_envs", "obs_shape"):
        assert hasattr(buffer, field), f"SB3's replay buffer has no {field!r} any more"
    assert buffer.pos == 100 and not buffer.full
    assert np.abs(buffer.actions[:100]).max() <= 1.0  # stored scaled to [-1, 1] ...
    assert np.abs(model.policy.unscale_action(buffer.actions[:100])).max() > 1.0  # ... unscale_action undoes it
    buffer.rewards[:100] = 0.0
    model.policy.set_training_mode(False)
    env.reward_model.fitted.fill_(True)
    assert relabel_replay_buffer(model, env.reward_model) == 100
    actions = model.policy.unscale_action(buffer.actions[:100]).reshape(100, 1, 1)
    expected = env.reward_model.predict(buffer.observations[:100], actions)
    np.testing.assert_allclose(buffer.rewards[:100], expected, rtol=1e-5, atol=1e-6)
    assert np.abs(buffer.rewards[:100]).max() > 0


@pytest.mark.parametrize("field", ["_last_obs", "_last_episode_starts", "_total_timesteps"])
def test_algorithm_fields_exist(field):
    model = PPO("MlpPolicy", make_vec_env("Pendulum-v1", n_envs=1), n_steps=16, batch_size=16, n_epochs=1)
    model.learn(16)
    assert hasattr(model, field), f"SB3's algorithms have no {field!r} any more"
