"""gym_prefs: train any Stable-Baselines3 agent from preferences instead of a reward.

Example:
    >>> import gymnasium as gym
    >>> from stable_baselines3 import PPO
    >>> import gym_prefs
    >>> import tempfile
    >>> env = gym_prefs.LearnedReward(gym.make("Pendulum-v1"))
    >>> model = PPO("MlpPolicy", env, n_steps=256)
    >>> store = tempfile.mkdtemp() + "/preferences.db"
    >>> callback = gym_prefs.PreferenceCallback("oracle", total_labels=20, store=store)
    >>> _ = model.learn(1024, callback=callback)
    gym_prefs: labels are stored in .../preferences.db
"""

from __future__ import annotations

from gym_prefs.callback import PreferenceCallback
from gym_prefs.comparisons import Comparisons
from gym_prefs.fitting import FitReport, RewardTrainer
from gym_prefs.reward_model import RewardEnsemble
from gym_prefs.schedules import LabelSchedule
from gym_prefs.segments import Segment
from gym_prefs.sources import Answer, Label, PreferenceSource, PygameLabeler, Query, SyntheticOracle
from gym_prefs.spaces import UnsupportedSpaceError
from gym_prefs.store import PreferenceStore, StoreBusyError, StoreError
from gym_prefs.wrappers import LearnedReward, VecLearnedReward

__version__ = "0.1.0"

__all__ = [
    "Answer",
    "Comparisons",
    "FitReport",
    "Label",
    "LabelSchedule",
    "LearnedReward",
    "PreferenceCallback",
    "PreferenceSource",
    "PreferenceStore",
    "PygameLabeler",
    "Query",
    "RewardEnsemble",
    "RewardTrainer",
    "Segment",
    "StoreBusyError",
    "StoreError",
    "SyntheticOracle",
    "UnsupportedSpaceError",
    "VecLearnedReward",
    "__version__",
]
