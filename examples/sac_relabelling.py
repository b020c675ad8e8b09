"""SAC from preferences: the replay buffer is relabelled with every new reward model.

Off-policy algorithms learn from old transitions, whose rewards came from an older reward
model; the callback rewrites them after each refit (as PEBBLE does). Nothing here asks for
it: it is what PreferenceCallback does for any off-policy algorithm.

    python examples/sac_relabelling.py [--smoke]
"""

import sys

import numpy as np
from stable_baselines3 import SAC
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

import gym_prefs

SMOKE = "--smoke" in sys.argv
STEPS = 1_500 if SMOKE else 20_000
LABELS = 16 if SMOKE else 200
SEED = 0

venv = gym_prefs.VecLearnedReward(make_vec_env("Pendulum-v1", n_envs=1, seed=SEED))
model = SAC("MlpPolicy", venv, learning_starts=500, seed=SEED)
callback = gym_prefs.PreferenceCallback(
    "oracle", total_labels=LABELS, refit_interval=500, store="runs/pendulum-sac/preferences.db", seed=SEED
)
model.learn(STEPS, callback=callback)

# Every reward in the buffer is the current model's r̂(o, a): relabelling it again changes nothing.
before = model.replay_buffer.rewards.copy()
gym_prefs.relabel_replay_buffer(model, callback.reward_model)
matches = bool(np.allclose(model.replay_buffer.rewards, before, atol=1e-5))
print("replay buffer matches the newest reward model:", matches)
score, _ = evaluate_policy(model, make_vec_env("Pendulum-v1", n_envs=1, seed=SEED + 1), n_eval_episodes=5)
print(f"true return {score:.0f} from {callback.num_labels} labels")
