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

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module that defines it. Loaded on first use, so that importing one part
# (``import gym_prefs.store`` in a labelling tool, say) does not load torch, SB3 or pygame code.
_HOMES = {
    "Answer": "gym_prefs.records",
    "Comparisons": "gym_prefs.comparisons",
    "FitReport": "gym_prefs.fitting",
    "Label": "gym_prefs.records",
    "LabelSchedule": "gym_prefs.schedules",
    "LearnedReward": "gym_prefs.wrappers",
    "PreferenceCallback": "gym_prefs.callback",
    "PreferenceConfig": "gym_prefs.config",
    "PreferenceSource": "gym_prefs.sources.base",
    "PreferenceStore": "gym_prefs.store",
    "PygameLabeler": "gym_prefs.sources.pygame_labeler",
    "Query": "gym_prefs.records",
    "RewardEnsemble": "gym_prefs.reward_model",
    "RewardTrainer": "gym_prefs.fitting",
    "Segment": "gym_prefs.records",
    "SegmentPairs": "gym_prefs.records",
    "StoreBusyError": "gym_prefs.store_errors",
    "StoreError": "gym_prefs.store_errors",
    "SyntheticOracle": "gym_prefs.sources.oracle",
    "UnsupportedSpaceError": "gym_prefs.spaces",
    "VecLearnedReward": "gym_prefs.wrappers",
    "relabel_replay_buffer": "gym_prefs.sb3_internals",
}

__all__ = [
    "Answer",
    "Comparisons",
    "FitReport",
    "Label",
    "LabelSchedule",
    "LearnedReward",
    "PreferenceCallback",
    "PreferenceConfig",
    "PreferenceSource",
    "PreferenceStore",
    "PygameLabeler",
    "Query",
    "RewardEnsemble",
    "RewardTrainer",
    "Segment",
    "SegmentPairs",
    "StoreBusyError",
    "StoreError",
    "SyntheticOracle",
    "UnsupportedSpaceError",
    "VecLearnedReward",
    "__version__",
    "relabel_replay_buffer",
]

if TYPE_CHECKING:
    from gym_prefs.callback import PreferenceCallback
    from gym_prefs.comparisons import Comparisons
    from gym_prefs.config import PreferenceConfig
    from gym_prefs.fitting import FitReport, RewardTrainer
    from gym_prefs.records import Answer, Label, Query, Segment, SegmentPairs
    from gym_prefs.reward_model import RewardEnsemble
    from gym_prefs.sb3_internals import relabel_replay_buffer
    from gym_prefs.schedules import LabelSchedule
    from gym_prefs.sources.base import PreferenceSource
    from gym_prefs.sources.oracle import SyntheticOracle
    from gym_prefs.sources.pygame_labeler import PygameLabeler
    from gym_prefs.spaces import UnsupportedSpaceError
    from gym_prefs.store import PreferenceStore
    from gym_prefs.store_errors import StoreBusyError, StoreError
    from gym_prefs.wrappers import LearnedReward, VecLearnedReward


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'gym_prefs' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
