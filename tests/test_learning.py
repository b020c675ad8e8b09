"""An agent trained on the learned reward improves on the *true* reward (about a minute of CPU)."""

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

import gym_prefs
from gym_prefs.presets import algorithm_kwargs

STEPS = 40_000
SEED = 0


def true_return(policy, episodes: int = 10, seed: int = 1000) -> float:
    """Mean true return over fixed evaluation episodes; ``policy(obs) -> action``."""
    env = gym.make("Pendulum-v1")
    returns = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        done, total = False, 0.0
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy(obs))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


def train(learned: bool) -> PPO:
    venv = make_vec_env("Pendulum-v1", n_envs=4, seed=SEED)
    callback = None
    if learned:
        venv = gym_prefs.VecLearnedReward(venv)
        callback = gym_prefs.PreferenceCallback("oracle", total_labels=200, seed=SEED)
    model = PPO("MlpPolicy", venv, seed=SEED, **algorithm_kwargs("Pendulum-v1", "ppo"))
    model.learn(STEPS, callback=callback)
    if learned:
        assert callback is not None and callback.num_queries == 200
    return model


@pytest.mark.slow
def test_ppo_from_200_oracle_labels_gains_most_of_what_true_reward_ppo_gains():
    rng = np.random.default_rng(SEED)
    random = true_return(lambda obs: rng.uniform(-2, 2, size=1).astype(np.float32))
    true_reward_agent = train(learned=False)
    preference_agent = train(learned=True)
    with_true = true_return(lambda obs: true_reward_agent.predict(obs, deterministic=True)[0])
    with_preferences = true_return(lambda obs: preference_agent.predict(obs, deterministic=True)[0])
    gain_true = with_true - random
    gain_preferences = with_preferences - random
    assert gain_true > 500, f"the true-reward baseline did not learn ({random:.0f} -> {with_true:.0f})"
    assert gain_preferences >= 0.7 * gain_true, (
        f"random {random:.0f}, true reward {with_true:.0f}, preferences {with_preferences:.0f}"
    )
