"""Gymnasium and Stable-Baselines3 wrappers that replace the env's reward with the learned one."""

from __future__ import annotations

import time
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecEnvWrapper, VecNormalize
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn

from gym_prefs.clips import ClipInfo, capture_clip, clip_info_for
from gym_prefs.reward_model import RewardEnsemble
from gym_prefs.segments import TransitionBatch, TransitionRecorder, steps_for_bytes
from gym_prefs.spaces import check_space, spaces_match

__all__ = ["EPISODE_ENDED_KEY", "RECORD_BYTES", "LearnedReward", "VecLearnedReward"]

#: Default memory bound of the steps a wrapper keeps between two collections by the callback.
RECORD_BYTES = 64 * 2**20
#: Info key with which an env marks an episode end it hides from the agent (segments never
#: cross it, and episode returns are reported there).
EPISODE_ENDED_KEY = "episode_ended"


def _resolve_model(
    reward_model: RewardEnsemble | str | None, observation_space: gym.Space[Any], action_space: gym.Space[Any]
) -> RewardEnsemble:
    check_space(observation_space, "observation")
    check_space(action_space, "action")
    if reward_model is None:
        return RewardEnsemble(observation_space, action_space)
    model = RewardEnsemble.load(reward_model) if isinstance(reward_model, str) else reward_model
    check_model_spaces(model, observation_space, action_space)
    return model


def check_model_spaces(model: RewardEnsemble, observation_space: gym.Space[Any], action_space: gym.Space[Any]) -> None:
    """Raise ``ValueError`` unless ``model`` reads these observation and action spaces."""
    if not (
        spaces_match(model.observation_space, observation_space) and spaces_match(model.action_space, action_space)
    ):
        raise ValueError(
            "the reward model was built for observation space "
            f"{model.observation_space} and action space {model.action_space}, but this env has "
            f"{observation_space} and {action_space}; use a reward model made for this env"
        )


def _floating(space: gym.Space[Any]) -> bool:
    """Whether observations of ``space`` can hold NaN or infinity (integer images cannot)."""
    return space.dtype is not None and np.issubdtype(space.dtype, np.floating)


def _check_finite(obs: Any, env: Any) -> None:
    """Raise ``ValueError`` if an observation holds NaN or infinity.

    The reward model cannot score such a step, and a segment holding one would turn every later
    fit's loss into NaN, so the run stops here with the cause rather than later with a mystery.
    """
    if not np.isfinite(obs).all():
        raise ValueError(
            f"{env} returned an observation holding NaN or infinity: the learned reward cannot be "
            "computed from it. Fix the env, or clip and replace such values in an observation wrapper "
            "(e.g. gymnasium.wrappers.TransformObservation) inside the reward wrapper."
        )


def _episode_info(true_return: float, learned_return: float, length: int) -> dict[str, float | int]:
    return {"true": true_return, "learned": learned_return, "l": length}


class LearnedReward(gym.Wrapper[Any, Any, Any, Any], gym.utils.RecordConstructorArgs):
    """Hides the env's reward from the agent and returns the learned reward r̂(o, a) instead.

    - The env's own reward goes to ``info["true_reward"]``; at the end of an episode,
      ``info["episode_returns"]`` holds ``{"true": ..., "learned": ..., "l": ...}``.
    - Observation and action spaces are unchanged.
    - Every step is recorded (bounded memory) so that :class:`~gym_prefs.PreferenceCallback`
      can cut segments from it.
    - Until the reward model is fitted, the reward is 0.0.

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
        >>> reward, "true_reward" in info
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
        self.reward_model = _resolve_model(reward_model, env.observation_space, env.action_space)
        self._check_obs = _floating(env.observation_space)
        self._record_steps = record_steps
        capacity = record_steps or steps_for_bytes(env.observation_space, env.action_space, RECORD_BYTES)
        self.recorder = TransitionRecorder(env.observation_space, env.action_space, 1, capacity)
        self.clip_info: ClipInfo | None = None  # set when a person labels: clip data is recorded too
        self._last_clip: np.ndarray | None = None
        self._last_obs: Any = None
        self.inference_seconds = 0.0  # time spent predicting rewards (for benchmarks)
        self._true_return = 0.0
        self._learned_return = 0.0
        self._length = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        if self._check_obs:
            _check_finite(obs, self.env)
        if self._length:  # an episode cut short by reset: segments must not span it
            self.recorder.end_episodes(np.ones(1, dtype=bool))
        self._last_obs = obs
        if self.clip_info is not None:
            self._last_clip = capture_clip(self.env, self.clip_info)
        self._true_return = self._learned_return = 0.0
        self._length = 0
        return obs, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        if self._last_obs is None:
            raise gym.error.ResetNeeded("call reset() before step() on a LearnedReward env")
        obs, true_reward, terminated, truncated, info = self.env.step(action)
        if self._check_obs:
            _check_finite(obs, self.env)
        obs_batch = np.asarray(self._last_obs)[None]
        act_batch = np.asarray(action)[None]
        start = time.perf_counter()
        learned = float(self.reward_model.predict(obs_batch, act_batch)[0])
        self.inference_seconds += time.perf_counter() - start
        true_reward = float(true_reward)
        clip = None if self._last_clip is None else self._last_clip[None]
        self.recorder.add(obs_batch, act_batch, np.array([true_reward]), np.array([learned]), clip)
        if self.clip_info is not None:
            self._last_clip = capture_clip(self.env, self.clip_info)
        info["true_reward"] = true_reward
        self._true_return += true_reward
        self._learned_return += learned
        self._length += 1
        if terminated or truncated:
            info["episode_returns"] = _episode_info(self._true_return, self._learned_return, self._length)
            self.recorder.end_episodes(np.ones(1, dtype=bool))
            self._length = 0
        self._last_obs = obs
        return obs, learned, terminated, truncated, info

    def set_reward_model(self, reward_model: RewardEnsemble) -> None:
        """Use ``reward_model`` from now on (called by the callback after each refit)."""
        check_model_spaces(reward_model, self.observation_space, self.action_space)
        self.reward_model = reward_model

    def pop_transitions(self) -> TransitionBatch:
        """Hand over (and forget) the steps recorded since the last call."""
        return self.recorder.drain()

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
        if self._last_obs is None:
            self.reset()
        info = clip_info_for(self.env)
        capacity = self._record_steps or steps_for_bytes(
            self.observation_space, self.action_space, RECORD_BYTES, info.spec
        )
        self.recorder = TransitionRecorder(self.observation_space, self.action_space, 1, capacity, info.spec)
        self.clip_info = info
        self._last_clip = capture_clip(self.env, info)
        return info


class VecLearnedReward(VecEnvWrapper):
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
        >>> rewards.tolist(), "true_reward" in infos[0]
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
        self.reward_model = _resolve_model(reward_model, venv.observation_space, venv.action_space)
        self._check_obs = _floating(venv.observation_space)
        self._record_steps = record_steps
        capacity = record_steps or steps_for_bytes(
            venv.observation_space, venv.action_space, RECORD_BYTES // venv.num_envs
        )
        self.recorder = TransitionRecorder(venv.observation_space, venv.action_space, venv.num_envs, capacity)
        self.clip_info: ClipInfo | None = None
        self._last_clips: np.ndarray | None = None
        self._last_obs: np.ndarray | None = None
        self._actions: np.ndarray | None = None
        self.inference_seconds = 0.0
        self._true_returns = np.zeros(venv.num_envs)
        self._learned_returns = np.zeros(venv.num_envs)
        self._lengths = np.zeros(venv.num_envs, dtype=np.int64)

    def reset(self) -> VecEnvObs:
        obs = self.venv.reset()
        if self._check_obs:
            _check_finite(obs, self.venv)
        if self._lengths.any():
            self.recorder.end_episodes(self._lengths > 0)
        self._last_obs = np.asarray(obs)
        if self.clip_info is not None:
            self._last_clips = self._capture_clips()
        self._true_returns[:] = 0.0
        self._learned_returns[:] = 0.0
        self._lengths[:] = 0
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)
        self.venv.step_async(actions)

    def step_wait(self) -> VecEnvStepReturn:
        obs, true_rewards, dones, infos = self.venv.step_wait()
        if self._last_obs is None or self._actions is None:
            raise RuntimeError("call reset() before step() on a VecLearnedReward env")
        if self._check_obs:
            _check_finite(obs, self.venv)
        start = time.perf_counter()
        learned = self.reward_model.predict(self._last_obs, self._actions)
        self.inference_seconds += time.perf_counter() - start
        self.recorder.add(self._last_obs, self._actions, true_rewards, learned, self._last_clips)
        if self.clip_info is not None:
            self._last_clips = self._capture_clips()
        self._true_returns += true_rewards
        self._learned_returns += learned
        self._lengths += 1
        ends = np.array(dones, dtype=bool)
        for i, (info, true_reward) in enumerate(zip(infos, true_rewards.tolist(), strict=True)):
            info["true_reward"] = true_reward
            if info.get(EPISODE_ENDED_KEY, False):
                ends[i] = True  # an episode end hidden from the agent (see HideEpisodeEnds)
        if ends.any():
            for ended in np.flatnonzero(ends):
                infos[ended]["episode_returns"] = _episode_info(
                    float(self._true_returns[ended]), float(self._learned_returns[ended]), int(self._lengths[ended])
                )
            self.recorder.end_episodes(ends)
            self._true_returns[ends] = 0.0
            self._learned_returns[ends] = 0.0
            self._lengths[ends] = 0
        # After an episode end the returned observation is already the next episode's first.
        self._last_obs = np.asarray(obs)
        return obs, learned.astype(np.float32), dones, infos

    def set_reward_model(self, reward_model: RewardEnsemble) -> None:
        """Use ``reward_model`` from now on."""
        check_model_spaces(reward_model, self.observation_space, self.action_space)
        self.reward_model = reward_model

    def pop_transitions(self) -> TransitionBatch:
        """Hand over (and forget) the steps recorded since the last call."""
        return self.recorder.drain()

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

    def enable_clips(self) -> ClipInfo:
        """Also record what a person needs to see each step (see :mod:`gym_prefs.clips`)."""
        envs = self._base_envs()
        if self._last_obs is None:
            self.reset()
        info = clip_info_for(envs[0])
        capacity = self._record_steps or steps_for_bytes(
            self.observation_space, self.action_space, RECORD_BYTES // self.num_envs, info.spec
        )
        self.recorder = TransitionRecorder(
            self.observation_space, self.action_space, self.num_envs, capacity, info.spec
        )
        self.clip_info = info
        self._last_clips = self._capture_clips()
        return info
