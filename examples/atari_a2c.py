"""Atari as in the paper: A2C learns Pong from synthetic preferences between 25-step clips.

The reward model (the paper's CNN with batch norm and dropout) never sees the score: those
rows are blacked out in its input. The agent never sees a game end. 500 labels are asked
before RL and fitted for 200 epochs; then labels keep coming as the agent improves. Hours on a
CPU at full length (the paper: 3.3k-10k labels, 10M+ steps); ``--smoke`` checks it in about a
minute.

    python examples/atari_a2c.py [--game BeamRider]
"""

import sys

from stable_baselines3 import A2C
from stable_baselines3.common.evaluation import evaluate_policy

import gym_prefs
from gym_prefs.atari import make_atari_env, make_atari_eval_env
from gym_prefs.presets import atari_preset

SMOKE = "--smoke" in sys.argv
GAME = sys.argv[sys.argv.index("--game") + 1] if "--game" in sys.argv else "Pong"
ENV_ID = f"ALE/{GAME}-v5"
LABELS = 8 if SMOKE else 3300
STEPS = 320 if SMOKE else 10_000_000

preset = atari_preset(ENV_ID, total_labels=LABELS)
print("preset:", *preset.notes, sep="\n  ")

# 16 envs (2 for the smoke test), each: preprocessing -> 4 stacked frames -> reward hidden.
venv = make_atari_env(ENV_ID, n_envs=2 if SMOKE else 16, seed=0)

# A2C: n_steps 5, learning rate 7e-4 decaying linearly, entropy 0.01, gamma 0.99.
model = A2C("CnnPolicy", venv, seed=0, **preset.algo_kwargs)

config = preset.config  # 25-step clips, 500 labels + 200 epochs before RL, ...
if SMOKE:
    config = config.replace(initial_fit_epochs=3, segment_length=10)
callback = gym_prefs.PreferenceCallback(
    "oracle", config=config, store=f"runs/{GAME}-a2c/preferences.db", seed=0, verbose=1
)
model.learn(STEPS, callback=callback, progress_bar=not SMOKE)
model.save(f"runs/{GAME}-a2c/agent.zip")
callback.reward_model.save(f"runs/{GAME}-a2c/reward_model.pt")

# Scored on real games (episode ends visible), on the game's own score.
score, _ = evaluate_policy(model, make_atari_eval_env(ENV_ID, seed=1), n_eval_episodes=1 if SMOKE else 10)
print(f"{GAME}: score {score:.1f} from {callback.num_labels} labels")
