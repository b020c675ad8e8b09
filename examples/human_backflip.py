"""A person teaches a new behaviour: make the Hopper do a backflip.

In the paper, about an hour of a person's clicks (900 queries) taught a Hopper to backflip. A
window opens with two clips side by side: press <- or -> for the one that looks more like a
backflip, up if equally good, down if you can't tell. The agent keeps training while you
label; only the first labels (from the untrained policy) are waited for. Your answers are in
the store as soon as you give them: stop at any time and run the script again to go on.

    python examples/human_backflip.py

``--smoke`` runs a few seconds without a person (queries wait unanswered, training goes on).
"""

import sys

import gymnasium as gym
from sb3_contrib import TRPO

import gym_prefs
from gym_prefs.presets import mujoco_preset

SMOKE = "--smoke" in sys.argv
# A backflip turns the hopper upside down, which Hopper-v5 counts as falling: take the paper's
# change, where episodes no longer end on "falling" (terminate_when_unhealthy=False).
preset = mujoco_preset("Hopper-v5", remove_termination=True)
env = gym_prefs.LearnedReward(gym.make("Hopper-v5", **preset.env_kwargs))
labeler = gym_prefs.PygameLabeler(
    "make the hopper do a backflip",
    on_close="pause",  # closing the window pauses training until you reopen it (gym-prefs label STORE)
    open_window=not SMOKE,
)
callback = gym_prefs.PreferenceCallback(
    labeler,
    total_labels=4 if SMOKE else 900,
    segment_length=60,  # 0.5 s clips: short enough to judge at a glance
    initial_label_fraction=0.0 if SMOKE else 0.1,
    store="runs/hopper-backflip/preferences.db",
    seed=0,
)
model = TRPO("MlpPolicy", env, gamma=0.995, gae_lambda=0.97, n_steps=256 if SMOKE else 2048, seed=0)
model.learn(1_024 if SMOKE else 1_000_000, callback=callback)
model.save("runs/hopper-backflip/agent.zip")
print(f"{callback.num_labels} labels given; {callback.num_queries} asked")
