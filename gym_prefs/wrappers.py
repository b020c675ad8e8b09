"""Gymnasium and Stable-Baselines3 wrappers that replace the env's reward with the learned one.

Both are thin shells over one :class:`~gym_prefs.reward_core.RewardCore`, which predicts,
records and keeps the episode returns: :class:`LearnedReward` for one env,
:class:`VecLearnedReward` for a whole ``VecEnv`` in one batched prediction a step. The info keys
they write and read are named by the constants exported here.
"""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecEnvWrapper, VecNormalize
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn

from gym_prefs.clips import ClipInfo, capture_clip, clip_info_for
from gym_prefs.reward_core import (
    EPISODE_ENDED_KEY,
    EPISODE_RETURNS_KEY,
    LEARNED_RETURN_KEY,
    LENGTH_KEY,
    RECORD_BYTES,
    TRUE_RETURN_KEY,
    TRUE_REWARD_KEY,
    RewardCore,
    check_model_spaces,
)
from gym_prefs.reward_model import RewardEnsemble
from gym_prefs.segments import TransitionBatch, TransitionRecorder

__all__ = [
    "EPISODE_ENDED_KEY",
    "EPISODE_RETURNS_KEY",
    "LEARNED_RETURN_KEY",
    "LENGTH_KEY",
    "RECORD_BYTES",
    "TRUE_RETURN_KEY",
    "TRUE_REWARD_KEY",
    "LearnedReward",
    "VecLearnedReward",
    "check_model_spaces",
]


class _RewardCoreShell:
    """What both wrappers hand straight to their :class:`~gym_prefs.reward_core.RewardCore`.

    Properties rather than copies, so that the callback, which reads ``reward_model`` and
    ``inference_seconds`` from the wrapper (``get_attr`` in ``VecEnv`` workers), sees the core's.
    """

    _core: RewardCore

    @property
    def reward_model(self) -> RewardEnsemble:
        """The model that predicts the rewards."""
        return self._core.reward_model

    @reward_model.setter
    def reward_model(self, reward_model: RewardEnsemble) -> None:
        self._core.reward_model = reward_model

    @property
    def inference_seconds(self) -> float:
        """Time spent predicting rewards (for benchmarks)."""
        return self._core.inference_seconds

    @inference_seconds.setter
    def inference_seconds(self, seconds: float) -> None:
        self._core.inference_seconds = seconds

    @property
    def recorder(self) -> TransitionRecorder:
        """The steps recorded since the callback last collected them."""
        return self._core.recorder

    @property
    def clip_info(self) -> ClipInfo | None:
        """How clip data is recorded, or ``None`` while none is (nobody labels by sight)."""
        return self._core.clip_info

    def set_reward_model(self, reward_model: RewardEnsemble, exploration_bonus: float | None = None) -> None:
        """Use ``reward_model`` from now on (called by the callback after each refit).

        ``exploration_bonus``: RUNE's weight of the members' disagreement added to each reward
        (see :mod:`gym_prefs.exploration`); ``None`` keeps the current one (0 at first).
        """
        self._core.set_reward_model(reward_model, exploration_bonus)

    def pop_transitions(self) -> TransitionBatch:
        """Hand over (and forget) the steps recorded since the last call."""
        return self._core.pop_transitions()

    def set_exploration(self, on: bool) -> None:
        """Pay PEBBLE's state-entropy reward instead of r̂ (before the first labels), or stop."""
        self._core.explore(on)


class LearnedReward(_RewardCoreShell, gym.Wrapper[Any, Any, Any, Any], gym.utils.RecordConstructorArgs):
    """Hides the env's reward from the agent and returns the learned reward r̂(o, a) instead.

    - The env's own reward goes to ``info["true_reward"]``; at the end of an episode,
      ``info["episode_returns"]`` holds ``{"true": ..., "learned": ..., "l": ...}``.
    - Observation and action spaces are unchanged.
    - Every step is recorded (bounded memory) so that :class:`~gym_prefs.PreferenceCallback`
      can cut segments from it.
    - Until the reward model is fitted, the reward is 0.0.
    - An episode end that an inner env hides from the agent (like
      :class:`gym_prefs.atari.HideEpisodeEnds`), marked by ``info["episode_ended"]``, ends the
      wrapper's episode too: segments never cross it, and its returns are reported there.

    One reward model serves every wrapper of a training env: the callback shares its model with
    wrappers in the same process and sends new weights to wrappers in ``SubprocVecEnv``
    workers after every refit. For many envs in one process, :class:`VecLearnedReward`
    predicts for all of them in one batched call.

    Args:
        env: the env to wrap.
        reward_model: a :class:`~gym_prefs.RewardEnsemble`, a path to a saved one, or ``None``
            to build one from the spaces (the callback replaces it with the run's shared model).
        record_steps: steps kept between two collections by the callback; by default as many
            as fit in 64 MiB.

    Example:
        >>> import gymnasium as gym
        >>> env = LearnedReward(gym.make("Pendulum-v1"))
        >>> obs, info = env.reset(seed=0)
        >>> obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        >>> reward, TRUE_REWARD_KEY in info
        (0.0, True)
    """

    def __init__(
        self,
        env: gym.Env[Any, Any],
        reward_model: RewardEnsemble | str | None = None,
        record_steps: int | None = None,
    ) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, reward_model=reward_model, record_steps=record_steps)
        super().__init__(env)
        self._core = RewardCore(env.observation_space, env.action_space, 1, reward_model, record_steps, env=env)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        self._core.reset(np.asarray(obs)[None])
        return obs, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        if not self._core.started:
            raise gym.error.ResetNeeded("call reset() before step() on a LearnedReward env")
        obs, true_reward, terminated, truncated, info = self.env.step(action)
        learned = self._core.step(
            np.asarray(obs)[None],
            np.asarray(action)[None],
            np.array([float(true_reward)]),
            np.array([terminated or truncated]),
            [info],
        )
        return obs, float(learned[0]), terminated, truncated, info

    def reward_spaces(self) -> tuple[gym.Space[Any], gym.Space[Any]]:
        """The spaces of what this wrapper records (outer wrappers may change the env's)."""
        return self.observation_space, self.action_space

    def try_enable_clips(self) -> ClipInfo | str:
        """:meth:`enable_clips`, returning the reason instead of raising when it cannot.

        For ``SubprocVecEnv`` workers, where an exception would end the worker process.
        """
        try:
            return self.enable_clips()
        except ValueError as error:
            return str(error)

    def enable_clips(self) -> ClipInfo:
        """Also record what a person needs to see each step (see :mod:`gym_prefs.clips`).

        Raises:
            ValueError: if the env cannot be shown to a person.
        """
        if not self._core.started:
            self.reset()
        return self._core.enable_clips(clip_info_for(self.env), self._capture_clip)

    def _capture_clip(self) -> np.ndarray:
        assert self.clip_info is not None
        return capture_clip(self.env, self.clip_info)[None]


class VecLearnedReward(_RewardCoreShell, VecEnvWrapper):
    """:class:`LearnedReward` for a whole ``VecEnv``: one batched reward prediction per step.

    Works over ``DummyVecEnv`` and ``SubprocVecEnv`` (the model stays in the main process).
    Put it inside ``VecNormalize`` so that the reward model reads raw observations, and outside
    ``VecFrameStack`` if the reward model should see stacked frames (as in the paper's Atari
    setup)::

        venv = VecNormalize(VecLearnedReward(VecFrameStack(make_vec_env(...), 4)))

    Wrapping a ``VecNormalize`` raises an error, since the reward model would read observations
    whose normalisation keeps changing. Envs that hide their episode ends from the agent (like
    :class:`gym_prefs.atari.HideEpisodeEnds`) mark them with ``info["episode_ended"]``: the
    wrapper ends its episode there (segments never cross it) though ``done`` stays false.

    Args:
        venv: the vectorised env to wrap.
        reward_model: as in :class:`LearnedReward`.
        record_steps: steps per env kept between collections; by default 64 MiB in all.

    Example:
        >>> from stable_baselines3.common.env_util import make_vec_env
        >>> venv = VecLearnedReward(make_vec_env("Pendulum-v1", n_envs=2))
        >>> obs = venv.reset()
        >>> obs, rewards, dones, infos = venv.step(np.zeros((2, 1), dtype=np.float32))
        >>> rewards.tolist(), TRUE_REWARD_KEY in infos[0]
        ([0.0, 0.0], True)
    """

    def __init__(
        self,
        venv: VecEnv,
        reward_model: RewardEnsemble | str | None = None,
        record_steps: int | None = None,
    ) -> None:
        inner: VecEnv = venv
        while isinstance(inner, VecEnvWrapper):
            if isinstance(inner, VecNormalize):
                raise ValueError(
                    "VecLearnedReward wraps a VecNormalize, so the reward model would read "
                    "normalised observations whose statistics keep changing. Put VecNormalize "
                    "outside instead: VecNormalize(VecLearnedReward(venv))"
                )
            inner = inner.venv
        super().__init__(venv)
        self._core = RewardCore(
            venv.observation_space, venv.action_space, venv.num_envs, reward_model, record_steps, env=venv
        )
        self._actions: np.ndarray | None = None

    def reset(self) -> VecEnvObs:
        obs = self.venv.reset()
        self._core.reset(np.asarray(obs))
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)
        self.venv.step_async(actions)

    def step_wait(self) -> VecEnvStepReturn:
        obs, true_rewards, dones, infos = self.venv.step_wait()
        if not self._core.started or self._actions is None:
            raise RuntimeError("call reset() before step() on a VecLearnedReward env")
        learned = self._core.step(np.asarray(obs), self._actions, true_rewards, dones, infos)
        return obs, learned.astype(np.float32), dones, infos

    def enable_clips(self) -> ClipInfo:
        """Also record what a person needs to see each step (see :mod:`gym_prefs.clips`).

        Raises:
            ValueError: if the envs run in other processes, or cannot be shown to a person.
        """
        envs = self._base_envs()
        if not self._core.started:
            self.reset()
        return self._core.enable_clips(clip_info_for(envs[0]), self._capture_clips)

    def _base_envs(self) -> list[gym.Env[Any, Any]]:
        base = self.venv.unwrapped
        if not isinstance(base, DummyVecEnv):
            raise ValueError(
                "for a person to label, VecLearnedReward needs the envs in this process (DummyVecEnv); "
                f"this one is a {type(base).__name__}. Wrap each env instead: "
                "make_vec_env(..., wrapper_class=gym_prefs.LearnedReward, vec_env_cls=SubprocVecEnv)."
            )
        return list(base.envs)

    def _capture_clips(self) -> np.ndarray:
        assert self.clip_info is not None
        return np.stack([capture_clip(env, self.clip_info) for env in self._base_envs()])
