"""Everything gym_prefs reads or writes of Stable-Baselines3's private state, in one place.

The preference loop needs a few things SB3 has no public API for. Each is a function here,
and ``tests/test_sb3_internals.py`` checks every field and call order relied on, so an SB3
release that changes one fails there, loudly, rather than somewhere in a training run.

Relied on (checked with SB3 2.4 to 2.9, the range ``pyproject.toml`` allows):

- ``BaseAlgorithm._last_obs`` / ``_last_episode_starts`` / ``_last_original_obs`` /
  ``_vec_normalize_env``: where the next rollout continues from, so that steps taken before
  RL (the initial policy's clips) are not lost to the algorithm;
- ``BaseAlgorithm._total_timesteps``: the horizon of the current ``learn()`` call, set before
  ``BaseCallback._on_training_start`` (the label schedule spreads the budget over it);
- ``info["episode"]["r"]``, written by ``Monitor`` at an episode's end: replaced with the true
  return so that SB3's ``rollout/ep_rew_mean`` shows the true reward wherever Monitor sits;
- the replay buffer's ``observations`` / ``actions`` / ``rewards`` / ``pos`` / ``full`` /
  ``buffer_size`` / ``n_envs`` arrays, and that off-policy algorithms store Box actions scaled
  to [-1, 1] (``policy.unscale_action`` undoes it): for relabelling after a refit.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

from gym_prefs.reward_model import RewardEnsemble
from gym_prefs.spaces import shape_of

__all__ = [
    "RELABEL_CHUNK_ROWS",
    "SUPPORTED_SB3",
    "check_relabelable",
    "learn_horizon",
    "relabel_replay_buffer",
    "report_true_return",
    "run_policy",
]

#: The Stable-Baselines3 versions whose private state this module is checked against.
SUPPORTED_SB3 = ">=2.4,<3"
#: Replay-buffer rows (times envs) relabelled per reward-model call.
RELABEL_CHUNK_ROWS = 65_536


def run_policy(algo: BaseAlgorithm, steps: int) -> None:
    """Step ``algo``'s training env with its current policy, outside of RL (nothing is learned).

    The algorithm then carries on from where these steps left the envs, as if it had taken them.
    """
    env = algo.get_env()
    assert env is not None, "the algorithm has no env"
    obs: Any = algo._last_obs
    dones = np.zeros(env.num_envs, dtype=bool)
    for _ in range(math.ceil(steps / env.num_envs)):
        actions, _ = algo.predict(obs, deterministic=False)
        obs, _, dones, _ = env.step(actions)
    algo._last_obs = obs
    algo._last_episode_starts = dones
    vec_normalize = getattr(algo, "_vec_normalize_env", None)
    if vec_normalize is not None and hasattr(algo, "_last_original_obs"):
        algo._last_original_obs = vec_normalize.get_original_obs()


def learn_horizon(algo: BaseAlgorithm, fallback: int) -> int:
    """Timesteps the current ``learn()`` call runs to (``fallback`` if SB3 did not say)."""
    return int(getattr(algo, "_total_timesteps", 0)) or int(fallback)


def report_true_return(info: dict[str, Any], true_return: float) -> None:
    """Make ``Monitor``'s episode record (if this step has one) show the true return.

    Monitor outside the reward wrapper would otherwise report the learned return.
    """
    monitor = info.get("episode")
    if monitor is not None:
        monitor["r"] = round(true_return, 6)


def check_relabelable(algo: OffPolicyAlgorithm, model: RewardEnsemble) -> None:
    """Raise ``ValueError`` unless ``algo``'s replay buffer stores what ``model`` reads."""
    obs_shape = getattr(algo.replay_buffer, "obs_shape", None)
    if obs_shape is None or tuple(obs_shape) != shape_of(model.observation_space):
        raise ValueError(
            f"the replay buffer stores observations of shape {obs_shape}, but the reward model "
            f"reads {model.observation_space.shape}, so the buffer cannot be relabelled after a refit. "
            "Put the reward wrapper outermost (inside VecNormalize only), or pass relabel_replay_buffer=False."
        )


def relabel_replay_buffer(algo: OffPolicyAlgorithm, model: RewardEnsemble, exploration_bonus: float = 0.0) -> int:
    """Overwrite every reward in ``algo``'s replay buffer with ``model``'s r̂(o, a).

    Off-policy algorithms learn from old transitions whose rewards came from an older reward
    model; :class:`~gym_prefs.PreferenceCallback` calls this after every refit (as PEBBLE does).
    ``exploration_bonus`` adds RUNE's β times the members' standard deviation, as the wrappers
    pay it (:mod:`gym_prefs.exploration`).

    Returns:
        The number of transitions (rows times envs) relabelled.

    Example:
        >>> import gymnasium as gym
        >>> from stable_baselines3 import SAC
        >>> import gym_prefs
        >>> env = gym_prefs.LearnedReward(gym.make("Pendulum-v1"))
        >>> algo = SAC("MlpPolicy", env, learning_starts=10, seed=0)
        >>> _ = algo.learn(20)
        >>> relabel_replay_buffer(algo, env.reward_model)
        20
    """
    buffer = algo.replay_buffer
    assert buffer is not None, "the algorithm has no replay buffer"
    size = buffer.buffer_size if buffer.full else buffer.pos
    chunk = max(1, RELABEL_CHUNK_ROWS // buffer.n_envs)
    for start in range(0, size, chunk):
        stop = min(size, start + chunk)
        actions = buffer.actions[start:stop]
        if isinstance(algo.action_space, spaces.Box):
            actions = algo.policy.unscale_action(actions)
        actions = actions.reshape(stop - start, buffer.n_envs, *shape_of(algo.action_space))
        if exploration_bonus and model.is_fitted:
            rewards, members = model.predict_with_members(buffer.observations[start:stop], actions)
            buffer.rewards[start:stop] = rewards + exploration_bonus * members.std(axis=0)
        else:
            buffer.rewards[start:stop] = model.predict(buffer.observations[start:stop], actions)
    return size * buffer.n_envs
