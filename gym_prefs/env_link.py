"""How the callback reaches the reward wrappers of a training env, wherever they run.

A training env hides its reward either behind one :class:`~gym_prefs.VecLearnedReward` (in
this process) or behind a :class:`~gym_prefs.LearnedReward` per env (in this process, or in
``SubprocVecEnv`` workers, reached through ``env_method``). :func:`link_reward_wrappers` finds
which, and returns one :class:`RewardWrappers` the callback talks to in both cases.
"""

from __future__ import annotations

from typing import Any, Protocol

from gymnasium import spaces
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

from gym_prefs.clips import ClipInfo
from gym_prefs.reward_model import RewardEnsemble
from gym_prefs.segments import DEFAULT_SEGMENT_LENGTH, TransitionBatch, segment_steps
from gym_prefs.wrappers import LearnedReward, VecLearnedReward

__all__ = ["RewardWrappers", "env_id", "link_reward_wrappers", "segment_length_from_dt"]


class RewardWrappers(Protocol):
    """What the callback asks of the reward wrappers of its training env."""

    def spaces(self) -> tuple[spaces.Space[Any], spaces.Space[Any]]:
        """Observation and action spaces as the wrappers see them (inside any stacking)."""
        ...

    def current_model(self) -> RewardEnsemble:
        """The reward model the wrappers hold now."""
        ...

    def push(self, model: RewardEnsemble, exploration_bonus: float = 0.0) -> None:
        """Give every wrapper ``model`` (shared in this process, a copy in worker processes) and RUNE's β."""
        ...

    def enable_clips(self) -> ClipInfo:
        """Have every wrapper record what a person is shown too."""
        ...

    def explore(self, on: bool) -> None:
        """Have every wrapper pay PEBBLE's state-entropy reward instead of r̂ (``on``), or r̂ again."""
        ...

    def drain(self) -> list[tuple[int, TransitionBatch]]:
        """New steps of every env, as ``(first env index, batch)`` pieces."""
        ...

    def inference_seconds(self) -> float:
        """Seconds the wrappers spent predicting rewards so far."""
        ...


class _VecWrapperLink:
    """One :class:`~gym_prefs.VecLearnedReward` in this process: called directly."""

    def __init__(self, wrapper: VecLearnedReward) -> None:
        self.wrapper = wrapper

    def spaces(self) -> tuple[spaces.Space[Any], spaces.Space[Any]]:
        return self.wrapper.observation_space, self.wrapper.action_space

    def current_model(self) -> RewardEnsemble:
        return self.wrapper.reward_model

    def push(self, model: RewardEnsemble, exploration_bonus: float = 0.0) -> None:
        self.wrapper.set_reward_model(model, exploration_bonus)

    def enable_clips(self) -> ClipInfo:
        return self.wrapper.enable_clips()

    def explore(self, on: bool) -> None:
        self.wrapper.set_exploration(on)

    def drain(self) -> list[tuple[int, TransitionBatch]]:
        return [(0, self.wrapper.pop_transitions())]

    def inference_seconds(self) -> float:
        return self.wrapper.inference_seconds


class _PerEnvLink:
    """A :class:`~gym_prefs.LearnedReward` in each env, reached through the VecEnv's ``env_method``."""

    def __init__(self, venv: VecEnv) -> None:
        self.venv = venv

    def spaces(self) -> tuple[spaces.Space[Any], spaces.Space[Any]]:
        spaces_of_first: tuple[spaces.Space[Any], spaces.Space[Any]] = self.venv.env_method(
            "reward_spaces", indices=[0]
        )[0]
        return spaces_of_first

    def current_model(self) -> RewardEnsemble:
        model: RewardEnsemble = self.venv.get_attr("reward_model", indices=[0])[0]
        return model

    def push(self, model: RewardEnsemble, exploration_bonus: float = 0.0) -> None:
        self.venv.env_method("set_reward_model", model, exploration_bonus)

    def explore(self, on: bool) -> None:
        self.venv.env_method("set_exploration", on)

    def enable_clips(self) -> ClipInfo:
        # An exception inside a SubprocVecEnv worker would end it with a bare EOFError here.
        outcomes = self.venv.env_method("try_enable_clips")
        problems = [outcome for outcome in outcomes if isinstance(outcome, str)]
        if problems:
            raise ValueError(problems[0])
        info: ClipInfo = outcomes[0]
        return info

    def drain(self) -> list[tuple[int, TransitionBatch]]:
        return list(enumerate(self.venv.env_method("pop_transitions")))

    def inference_seconds(self) -> float:
        return float(sum(self.venv.get_attr("inference_seconds")))


def link_reward_wrappers(venv: VecEnv) -> RewardWrappers:
    """The reward wrappers of ``venv``.

    Raises:
        ValueError: if ``venv`` hides its reward behind neither wrapper (naming what to do).
    """
    inner: VecEnv = venv
    while isinstance(inner, VecEnvWrapper):
        if isinstance(inner, VecLearnedReward):
            return _VecWrapperLink(inner)
        inner = inner.venv
    wrapped = venv.env_is_wrapped(LearnedReward)
    if not all(wrapped):
        missing = [i for i, is_wrapped in enumerate(wrapped) if not is_wrapped]
        raise ValueError(
            "PreferenceCallback needs the training env to hide its reward behind a learned "
            f"one, but env(s) {missing} are not wrapped. Wrap each env with "
            "gym_prefs.LearnedReward(env) (e.g. make_vec_env(..., wrapper_class="
            "gym_prefs.LearnedReward)) or the VecEnv with gym_prefs.VecLearnedReward(venv)."
        )
    return _PerEnvLink(venv)


def env_id(venv: VecEnv) -> str | None:
    """The registered id of ``venv``'s envs, when they have one."""
    if not venv.has_attr("spec"):
        return None
    try:
        spec = venv.get_attr("spec", indices=[0])[0]
    except (AttributeError, TypeError):
        return None
    return getattr(spec, "id", None)


def segment_length_from_dt(venv: VecEnv) -> int:
    """Segment length from the envs' ``dt`` (see :func:`~gym_prefs.segments.segment_steps`)."""
    # Asked first: get_attr of a missing attribute kills a SubprocVecEnv's env worker.
    if not venv.has_attr("dt"):
        return DEFAULT_SEGMENT_LENGTH
    try:
        dt = float(venv.get_attr("dt", indices=[0])[0])
    except (AttributeError, TypeError, ValueError):
        return DEFAULT_SEGMENT_LENGTH
    if not dt > 0:
        return DEFAULT_SEGMENT_LENGTH
    return segment_steps(dt)
