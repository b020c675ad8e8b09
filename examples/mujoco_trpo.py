"""MuJoCo with the paper's settings: TRPO learns Hopper from 700 synthetic preferences.

Everything the preset sets is spelled out here: the learned reward centred on +1 where falling
ends the episode (so staying up pays, as the env's alive bonus intends), 1.5 s segments (at most
60 steps: 0.48 s on Hopper), 25% of the labels before RL, TRPO with gamma 0.995 and lambda 0.97.
Runs for hours on a CPU at full length; ``--smoke`` checks it in seconds.

    python examples/mujoco_trpo.py [--env Walker2d-v5]
"""

import sys

from sb3_contrib import TRPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

import gym_prefs
from gym_prefs.presets import mujoco_preset

SMOKE = "--smoke" in sys.argv
ENV_ID = sys.argv[sys.argv.index("--env") + 1] if "--env" in sys.argv else "Hopper-v5"
STEPS = 2_048 if SMOKE else 2_000_000
LABELS = 16 if SMOKE else 700
SEED = 0

preset = mujoco_preset(ENV_ID)
print("preset:", *preset.notes, sep="\n  ")

# 1. The env, its reward hidden (the preset keeps its termination: env_kwargs is empty).
venv = gym_prefs.VecLearnedReward(make_vec_env(ENV_ID, n_envs=4, seed=SEED, env_kwargs=preset.env_kwargs))

# 2. TRPO with the paper's discount and GAE (sb3-contrib's TRPO has no entropy bonus).
model = TRPO("MlpPolicy", venv, gamma=0.995, gae_lambda=0.97, n_steps=256 if SMOKE else 2048, seed=SEED)

# 3. 1.5 s segments (at most 60 steps), 25% of the labels before RL, ensemble of 3, reward std 1,
#    centred on +1 where an episode ends when the robot falls (Hopper, Walker2d, ...).
callback = gym_prefs.PreferenceCallback(
    "oracle",
    config=preset.config,
    total_labels=LABELS,
    store=f"runs/{ENV_ID}-trpo/preferences.db",
    seed=SEED,
    verbose=1,
)
model.learn(STEPS, callback=callback, progress_bar=not SMOKE)

# 4. Scored on the standard env (terminations included), on the true reward.
score, _ = evaluate_policy(model, make_vec_env(ENV_ID, n_envs=1, seed=SEED + 1), n_eval_episodes=2 if SMOKE else 10)
print(f"{ENV_ID}: true return {score:.0f} from {callback.num_labels} labels")
model.save(f"runs/{ENV_ID}-trpo/agent.zip")
