"""Quickstart: PPO learns Pendulum from 200 synthetic preferences, never seeing the reward.

Run it top to bottom (under a minute on 2 CPU cores; ``--smoke`` for a few-second check):

    python examples/quickstart.py

It prints the agent's return on the env's true reward before and after training.
"""

import sys

import numpy as np
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

import gym_prefs

ENV_ID = "Pendulum-v1"
SMOKE = "--smoke" in sys.argv  # a few seconds, to check that everything runs
STEPS = 4_096 if SMOKE else 40_000
LABELS = 20 if SMOKE else 200
SEED = 0

# 1. Hide the true reward: the agent sees r̂(o, a) from the reward model instead.
venv = gym_prefs.VecLearnedReward(make_vec_env(ENV_ID, n_envs=4, seed=SEED))

# 2. Any SB3 algorithm, with the settings you would use anyway (these are the RL Zoo's).
model = PPO(
    "MlpPolicy",
    venv,
    n_steps=1024,
    gae_lambda=0.95,
    gamma=0.9,
    n_epochs=10,
    learning_rate=1e-3,
    use_sde=True,
    sde_sample_freq=4,
    seed=SEED,
)

# 3. The callback asks a synthetic oracle to compare clips and fits the reward model.
callback = gym_prefs.PreferenceCallback(
    "oracle",  # or a gym_prefs.SyntheticOracle(mistake_rate=0.1, ...) for a noisier teacher
    total_labels=LABELS,  # the label budget; 25% are asked before RL starts
    selection="disagreement",
    seed=SEED,
    verbose=1,
)

eval_env = make_vec_env(ENV_ID, n_envs=1, seed=SEED + 100)
before, _ = evaluate_policy(model, eval_env, n_eval_episodes=10)
model.learn(STEPS, callback=callback)
after, _ = evaluate_policy(model, eval_env, n_eval_episodes=10, deterministic=True)

print(f"true return before: {before:.0f}, after: {after:.0f} ({callback.num_labels} labels)")
print("where the time went:", {k: round(v, 2) for k, v in callback.time_breakdown().items()})
callback.reward_model.save("pendulum_reward_model.pt")

# The learned reward is a RewardEnsemble you can query like any function of (obs, action).
upright, hanging = np.array([[1.0, 0.0, 0.0]]), np.array([[-1.0, 0.0, 0.0]])
no_torque = np.zeros((1, 1))
print(
    "r̂(upright) =",
    callback.reward_model.predict(upright, no_torque)[0],
    " r̂(hanging) =",
    callback.reward_model.predict(hanging, no_torque)[0],
)
