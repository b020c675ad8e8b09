"""What every reward wrapper does, for a batch of envs stepping together.

:class:`RewardCore` predicts the learned reward of each env's step in one batched call, records
the steps for the callback, keeps each env's episode returns and reports them in the step's info,
and checks the observations. :class:`gym_prefs.LearnedReward` (one env) and
:class:`gym_prefs.VecLearnedReward` (a ``VecEnv``) are thin shells over it, so the two cannot
drift apart.

The info keys the wrappers write, and the one they read, are named here once:

- :data:`TRUE_REWARD_KEY`: the env's own reward of the step.
- :data:`EPISODE_RETURNS_KEY`: at an episode end, ``{TRUE_RETURN_KEY: ..., LEARNED_RETURN_KEY: ...,
  LENGTH_KEY: ...}``.
- :data:`EPISODE_ENDED_KEY`: set by an env that hides an episode end from the agent (like
  :class:`gym_prefs.atari.HideEpisodeEnds`); the wrappers end their episode there as well.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import gymnasium as gym
import numpy as np

from gym_prefs.clips import ClipInfo
from gym_prefs.exploration import StateEntropyReward
from gym_prefs.reward_model import RewardEnsemble
from gym_prefs.segments import TransitionBatch, TransitionRecorder, steps_for_bytes
from gym_prefs.spaces import check_space, spaces_match

__all__ = [
    "EPISODE_ENDED_KEY",
    "EPISODE_RETURNS_KEY",
    "LEARNED_RETURN_KEY",
    "LENGTH_KEY",
    "RECORD_BYTES",
    "TRUE_RETURN_KEY",
    "TRUE_REWARD_KEY",
    "EpisodeTally",
    "RewardCore",
    "check_model_spaces",
]

#: Default memory bound of the steps a wrapper keeps between two collections by the callback
#: (shared by all the envs of a ``VecEnv``).
RECORD_BYTES = 64 * 2**20
#: Info key of the env's own reward of the step (the agent gets the learned one).
TRUE_REWARD_KEY: Final = "true_reward"
#: Info key, at the step that ends an episode, of that episode's returns and length.
EPISODE_RETURNS_KEY: Final = "episode_returns"
#: Info key with which an env marks an episode end it hides from the agent (segments never
#: cross it, and episode returns are reported there).
EPISODE_ENDED_KEY: Final = "episode_ended"
#: Keys of the :data:`EPISODE_RETURNS_KEY` dict: the env's return, the learned return, and the
#: episode's length in steps.
TRUE_RETURN_KEY: Final = "true"
LEARNED_RETURN_KEY: Final = "learned"
LENGTH_KEY: Final = "l"

#: Gives the clip data of every env's current step, ``[n_envs, ...]``.
ClipCapture = Callable[[], np.ndarray]


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


class EpisodeTally:
    """The true and learned returns and the length of each env's current episode.

    Args:
        n_envs: how many envs step together.

    Example:
        >>> tally = EpisodeTally(2)
        >>> tally.add(np.array([1.0, 2.0]), np.array([0.5, 0.0]))
        >>> tally.finish(np.array([False, True]))
        {1: {'true': 2.0, 'learned': 0.0, 'l': 1}}
        >>> tally.lengths.tolist()
        [1, 0]
    """

    def __init__(self, n_envs: int) -> None:
        self.true_returns = np.zeros(n_envs)
        self.learned_returns = np.zeros(n_envs)
        self.lengths = np.zeros(n_envs, dtype=np.int64)

    def add(self, true_rewards: np.ndarray, learned_rewards: np.ndarray) -> None:
        """Count one step of every env."""
        self.true_returns += true_rewards
        self.learned_returns += learned_rewards
        self.lengths += 1

    def finish(self, ends: np.ndarray) -> dict[int, dict[str, float | int]]:
        """The returns of the episodes that end where ``ends`` is true, by env; those start anew."""
        finished = {
            int(i): {
                TRUE_RETURN_KEY: float(self.true_returns[i]),
                LEARNED_RETURN_KEY: float(self.learned_returns[i]),
                LENGTH_KEY: int(self.lengths[i]),
            }
            for i in np.flatnonzero(ends)
        }
        self.true_returns[ends] = 0.0
        self.learned_returns[ends] = 0.0
        self.lengths[ends] = 0
        return finished


class RewardCore:
    """The learned reward of ``n_envs`` envs stepping together, and the record of their steps.

    The wrapper around it steps the envs and hands each step over: :meth:`reset` after the envs
    reset, :meth:`step` after they step. The core then

    - predicts r̂(o, a) for every env in one batched call (timed in :attr:`inference_seconds`),
    - records each step in :attr:`recorder`, with every ensemble member's reward of it (so that
      query selection need not run the networks again) and clip data once :meth:`enable_clips`
      was called,
    - writes the env's reward to ``info[TRUE_REWARD_KEY]`` and, where an episode ends (``done``,
      or an end hidden from the agent and marked by ``info[EPISODE_ENDED_KEY]``), the episode's
      returns to ``info[EPISODE_RETURNS_KEY]``; segments are never cut across an episode end,
    - refuses observations holding NaN or infinity,
    - pays PEBBLE's state-entropy reward instead of r̂ while :meth:`explore` is on,
    - adds :attr:`exploration_bonus` times the members' standard deviation to each reward it
      returns (RUNE, :mod:`gym_prefs.exploration`; 0 unless the callback turns it on); what it
      records and reports as the learned return stays r̂ alone.

    Args:
        observation_space: what the reward model reads, one env's observation.
        action_space: one env's action.
        n_envs: how many envs step together.
        reward_model: a :class:`~gym_prefs.RewardEnsemble`, a path to a saved one, or ``None``
            to build one from the spaces.
        record_steps: steps per env kept between collections; by default as many as fit in
            :data:`RECORD_BYTES` for all the envs together.
        env: what the observations come from, named in error messages.

    Example:
        >>> from gymnasium import spaces
        >>> core = RewardCore(spaces.Box(-1, 1, (2,)), spaces.Discrete(2), n_envs=2)
        >>> core.reset(np.zeros((2, 2), np.float32))
        >>> infos = [{}, {}]
        >>> core.step(np.zeros((2, 2), np.float32), np.array([0, 1]), np.ones(2), np.array([False, True]), infos)
        array([0., 0.], dtype=float32)
        >>> infos[1]
        {'true_reward': 1.0, 'episode_returns': {'true': 1.0, 'learned': 0.0, 'l': 1}}
    """

    def __init__(
        self,
        observation_space: gym.Space[Any],
        action_space: gym.Space[Any],
        n_envs: int,
        reward_model: RewardEnsemble | str | None = None,
        record_steps: int | None = None,
        env: Any = "the env",
    ) -> None:
        self.reward_model = _resolve_model(reward_model, observation_space, action_space)
        self.observation_space = observation_space
        self.action_space = action_space
        self.n_envs = n_envs
        self._env = env
        self._check_obs = _floating(observation_space)
        self._record_steps = record_steps
        self.recorder = self._new_recorder(None, self.reward_model.n_members)
        self.clip_info: ClipInfo | None = None  # set when a person labels: clip data is recorded too
        self._capture: ClipCapture | None = None
        self._last_clips: np.ndarray | None = None
        self._last_obs: np.ndarray | None = None  # [n_envs, ...]: what the next actions are taken on
        self.inference_seconds = 0.0  # time spent predicting rewards (for benchmarks)
        self.exploration_bonus = 0.0  # β of RUNE's bonus: β · std over members is added to r̂
        self.state_entropy: StateEntropyReward | None = None  # PEBBLE's pre-training reward, when on
        self._tally = EpisodeTally(n_envs)

    @property
    def started(self) -> bool:
        """Whether the envs were reset, so that :meth:`step` knows what each action was taken on."""
        return self._last_obs is not None

    def reset(self, obs: np.ndarray) -> None:
        """Start new episodes in every env, at observations ``obs`` ``[n_envs, ...]``."""
        if self._check_obs:
            _check_finite(obs, self._env)
        if self._tally.lengths.any():  # episodes cut short by a reset: segments must not span them
            self.recorder.end_episodes(self._tally.lengths > 0)
        self._last_obs = obs
        if self._capture is not None:
            self._last_clips = self._capture()
        self._tally = EpisodeTally(self.n_envs)

    def step(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        true_rewards: np.ndarray,
        dones: np.ndarray,
        infos: Sequence[dict[str, Any]],
    ) -> np.ndarray:
        """Take in one step of every env and return its learned rewards ``[n_envs]``.

        Args:
            obs: the observations the step returned ``[n_envs, ...]`` (after an episode end,
                already the next episode's first).
            actions: the actions taken ``[n_envs, ...]``.
            true_rewards: the env's rewards ``[n_envs]``.
            dones: where an episode ended, as the agent sees it ``[n_envs]``.
            infos: the step's info dicts, completed in place.

        Raises:
            RuntimeError: if :meth:`reset` was never called.
            ValueError: if an observation holds NaN or infinity.
        """
        if self._last_obs is None:
            raise RuntimeError("reset the envs before stepping them")
        if self._check_obs:
            _check_finite(obs, self._env)
        start = time.perf_counter()
        learned, members = self.reward_model.predict_with_members(self._last_obs, actions)
        self.inference_seconds += time.perf_counter() - start
        self.recorder.add(self._last_obs, actions, true_rewards, learned, self._last_clips, members.T)
        if self._capture is not None:
            self._last_clips = self._capture()
        self._tally.add(true_rewards, learned)  # r̂ alone: the bonus is paid, not learned
        paid = learned
        if self.state_entropy is not None:  # unsupervised pre-training: novelty of the state acted in
            paid = self.state_entropy(self._last_obs)
        elif self.exploration_bonus and self.reward_model.is_fitted:  # unfitted members are NaN
            paid = learned + np.float32(self.exploration_bonus) * members.std(axis=0)
        ends = np.array(dones, dtype=bool)
        for i, (info, true_reward) in enumerate(zip(infos, true_rewards.tolist(), strict=True)):
            info[TRUE_REWARD_KEY] = true_reward
            if info.get(EPISODE_ENDED_KEY, False):
                ends[i] = True  # an episode end hidden from the agent (see HideEpisodeEnds)
        if ends.any():
            for i, returns in self._tally.finish(ends).items():
                infos[i][EPISODE_RETURNS_KEY] = returns
            self.recorder.end_episodes(ends)
        self._last_obs = obs
        return paid

    def explore(self, on: bool) -> None:
        """Pay PEBBLE's state-entropy reward instead of r̂ (``on``), or r̂ again; see :mod:`gym_prefs.exploration`."""
        if not on:
            self.state_entropy = None
        elif self.state_entropy is None:
            self.state_entropy = StateEntropyReward(int(np.prod(self.observation_space.shape or (1,))))

    def set_reward_model(self, reward_model: RewardEnsemble, exploration_bonus: float | None = None) -> None:
        """Use ``reward_model`` from now on (called by the callback after each refit).

        ``exploration_bonus``: the weight β of the members' disagreement added to each reward
        (:mod:`gym_prefs.exploration`); ``None`` keeps the current one.
        """
        if exploration_bonus is not None:
            self.exploration_bonus = float(exploration_bonus)
        check_model_spaces(reward_model, self.observation_space, self.action_space)
        if reward_model.n_members != self.recorder.members:  # the recorded members' rewards change shape
            self.recorder = self._new_recorder(self.clip_info, reward_model.n_members)
        self.reward_model = reward_model

    def pop_transitions(self) -> TransitionBatch:
        """Hand over (and forget) the steps recorded since the last call."""
        return self.recorder.drain()

    def enable_clips(self, info: ClipInfo, capture: ClipCapture) -> ClipInfo:
        """Record clip data as well from now on: ``capture()`` after each reset and step.

        The recorder starts afresh (steps recorded so far are dropped), sized for the clip data.
        """
        self.recorder = self._new_recorder(info, self.reward_model.n_members)
        self.clip_info = info
        self._capture = capture
        self._last_clips = capture()
        return info

    def _new_recorder(self, clip_info: ClipInfo | None, members: int) -> TransitionRecorder:
        spec = None if clip_info is None else clip_info.spec
        capacity = self._record_steps or steps_for_bytes(
            self.observation_space, self.action_space, RECORD_BYTES // self.n_envs, spec, members
        )
        return TransitionRecorder(self.observation_space, self.action_space, self.n_envs, capacity, spec, members)
