"""What the labelling window's tests share: a training run whose person never answers, and a wait."""

import time

import gymnasium as gym
from stable_baselines3 import PPO

from gym_prefs import LearnedReward, PreferenceCallback, PygameLabeler


def train_with_a_person_who_never_answers(path, env_id="CartPole-v1", steps=1024, labels=12, **make_kwargs):
    env = LearnedReward(gym.make(env_id, **make_kwargs))
    labeler = PygameLabeler("balance the pole", open_window=False)
    callback = PreferenceCallback(
        labeler,
        total_labels=labels,
        segment_length=10,
        initial_label_fraction=0.0,
        refit_interval=128,
        store=str(path),
        seed=0,
    )
    model = PPO("MlpPolicy", env, n_steps=128, seed=0, policy_kwargs={"net_arch": [16]})
    model.learn(steps, callback=callback)
    callback.close()
    return model, callback, labeler


def wait_until(condition, timeout, message):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.05)
