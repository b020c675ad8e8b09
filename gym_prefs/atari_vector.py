"""ale-py's vectorised Atari env (C++ threads) as a Stable-Baselines3 ``VecEnv``, set up as in the paper.

:func:`gym_prefs.atari.make_atari_env` builds 16 Python envs (ALE, Gymnasium's
``AtariPreprocessing``, frame stacking, :class:`~gym_prefs.atari.HideEpisodeEnds`) in a
``DummyVecEnv``. :class:`AleVecEnv` gives the agent the same observations from ale-py's
``AtariVectorEnv``, which steps, preprocesses and stacks every game in C++ on its own threads:
on the 2-core development machine, 16 Pong envs step 2,227 times a second with one thread and
3,671 with two, against 1,588 for the Python pipeline (``benchmarks/atari_envs.py``).

What it keeps from the Python pipeline: no-op starts up to 30, frame-skip 4 with the max of the
last two frames, 84x84 grey (the same frames, pixel for pixel), 4 frames stacked oldest first, no
sticky actions, the game's own (unclipped) score as the reward, no end at a life lost. One
difference: a game's first observations stack black frames before its first, where Gymnasium
repeats the first. And, like ``HideEpisodeEnds``, the agent
never sees a game end: the next game starts in the same step, ``info["episode_ended"]`` marks
it, and ``info["episode"]`` carries the game's return and length as SB3's ``Monitor`` would.
What it cannot do: show a person the colour screen (it renders nothing), so a person labels
through :func:`~gym_prefs.atari.make_atari_env`'s Python envs.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn

from gym_prefs.reward_core import EPISODE_ENDED_KEY

__all__ = ["AleVecEnv", "rom_name"]


def rom_name(game: str) -> str:
    """ale-py's ROM name of a game as ALE env ids spell it.

    Example:
        >>> rom_name("Pong"), rom_name("BeamRider"), rom_name("SpaceInvaders")
        ('pong', 'beam_rider', 'space_invaders')
    """
    return re.sub(r"(?<!^)(?=[A-Z])", "_", game).lower()


class AleVecEnv(VecEnv):
    """``num_envs`` games of ``game`` stepped by ale-py in C++, as an SB3 ``VecEnv`` (see the module).

    Args:
        game: the game as ALE env ids name it (``"Pong"``, ``"BeamRider"``).
        num_envs: games played side by side.
        num_threads: ale-py's worker threads (0: one per core).
        seed: seed of the first game (the others get the next ones); SB3's ``seed()`` also works.
        noop_max: most no-op actions at the start of a game (the paper's 30).

    Example:
        >>> venv = AleVecEnv("Pong", num_envs=2, num_threads=1, seed=0)
        >>> venv.reset().shape
        (2, 4, 84, 84)
        >>> obs, rewards, dones, infos = venv.step(np.zeros(2, dtype=np.int64))
        >>> dones.tolist(), sorted(infos[0])
        ([False, False], ['lives'])
        >>> venv.close()
    """

    def __init__(
        self, game: str, num_envs: int = 16, num_threads: int = 0, seed: int | None = None, noop_max: int = 30
    ) -> None:
        try:
            from ale_py.vector_env import AtariVectorEnv
        except ImportError:
            raise ImportError("AleVecEnv needs ale-py 0.11 or newer: pip install 'gym-prefs[atari]'") from None
        self.game = game
        self._env = AtariVectorEnv(
            rom_name(game),
            num_envs,
            num_threads=num_threads,
            repeat_action_probability=0.0,
            autoreset_mode="SameStep",  # the next game's first frame comes with the step that ended one
            noop_max=noop_max,
            frameskip=4,
            stack_num=4,
            grayscale=True,
            episodic_life=False,
            reward_clipping=False,  # the game's score is the true reward the oracle compares
            use_fire_reset=False,  # Gymnasium's AtariPreprocessing does not fire at a reset either
        )
        self.render_mode = None  # read by VecEnv.__init__ through get_attr
        super().__init__(num_envs, self._env.single_observation_space, self._env.single_action_space)
        assert isinstance(self.action_space, spaces.Discrete)
        if seed is not None:
            self.seed(seed)
        self._actions = np.zeros(num_envs, dtype=np.int64)
        self._returns = np.zeros(num_envs)
        self._lengths = np.zeros(num_envs, dtype=np.int64)
        self._start = time.time()

    def reset(self) -> VecEnvObs:
        seeds = None if self._seeds[0] is None else np.array(self._seeds, dtype=np.int64)
        obs, _ = self._env.reset(seed=seeds)
        self._reset_seeds()
        self._returns[:] = 0.0
        self._lengths[:] = 0
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions, dtype=np.int64).reshape(self.num_envs)

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, terminated, truncated, info = self._env.step(self._actions)
        rewards = np.asarray(rewards, dtype=np.float32)
        self._returns += rewards
        self._lengths += 1
        ended = np.asarray(terminated) | np.asarray(truncated)
        infos: list[dict[str, Any]] = [{"lives": int(lives)} for lives in info["lives"]]
        for i in np.flatnonzero(ended):
            infos[i][EPISODE_ENDED_KEY] = True
            infos[i]["episode"] = {
                "r": float(self._returns[i]),
                "l": int(self._lengths[i]),
                "t": round(time.time() - self._start, 6),
            }
            self._returns[i], self._lengths[i] = 0.0, 0
        # The agent never sees a game end (as with HideEpisodeEnds): no done, no terminal observation.
        return obs, rewards, np.zeros(self.num_envs, dtype=bool), infos

    def close(self) -> None:
        self._env.close()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [getattr(self, attr_name)] * len(self._get_indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        raise AttributeError(f"AleVecEnv's games are stepped in C++: their attribute {attr_name!r} cannot be set")

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list[Any]:
        raise AttributeError(
            f"AleVecEnv's games are stepped in C++ and have no Python method {method_name!r}; "
            "use gym_prefs.atari.make_atari_env(...) for Python envs"
        )

    def env_is_wrapped(self, wrapper_class: type, indices: VecEnvIndices = None) -> list[bool]:
        return [False] * len(self._get_indices(indices))

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None] * self.num_envs

    def _get_indices(self, indices: VecEnvIndices) -> Sequence[int]:
        if indices is None:
            return range(self.num_envs)
        return [indices] if isinstance(indices, int) else list(indices)
