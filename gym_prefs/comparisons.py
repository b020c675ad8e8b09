"""The labelled pairs a reward model is fitted to."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from gym_prefs.spaces import shape_of

__all__ = ["Comparisons"]

# Knuth's multiplicative hash spreads consecutive ids evenly over [0, 1).
_HASH = 2654435761


class Comparisons:
    """Labelled segment pairs held in growable arrays (the newest ``max_size`` are kept).

    Each row holds two segments (observations and actions), the probability ``mu`` that the
    first is preferred (1, 0, or 0.5 for "equal") and a stable integer id. Whether a row
    belongs to the validation split is a function of its id alone, so a pair never moves
    between the training and validation sets as more labels arrive.

    Args:
        observation_space: the env's observation space.
        action_space: the env's action space.
        segment_length: steps per segment.
        max_size: keep only the newest this many pairs (the paper uses 3,000 for Atari).

    Example:
        >>> data = Comparisons(spaces.Box(-1, 1, (2,)), spaces.Discrete(3), segment_length=5)
        >>> data.add(np.zeros((1, 2, 5, 2)), np.zeros((1, 2, 5), dtype=np.int64), np.array([1.0]))
        >>> len(data)
        1
    """

    def __init__(
        self,
        observation_space: spaces.Space[Any],
        action_space: spaces.Space[Any],
        segment_length: int,
        max_size: int | None = None,
    ) -> None:
        self.segment_length = segment_length
        self.max_size = max_size
        self._obs = np.empty((0, 2, segment_length, *shape_of(observation_space)), dtype=observation_space.dtype)
        self._actions = np.empty((0, 2, segment_length, *shape_of(action_space)), dtype=action_space.dtype)
        self._mu = np.empty(0, dtype=np.float32)
        self._ids = np.empty(0, dtype=np.int64)
        self._size = 0
        self._next_id = 0

    def __len__(self) -> int:
        return self._size

    @property
    def obs(self) -> np.ndarray:
        return self._obs[: self._size]

    @property
    def actions(self) -> np.ndarray:
        return self._actions[: self._size]

    @property
    def mu(self) -> np.ndarray:
        return self._mu[: self._size]

    @property
    def ids(self) -> np.ndarray:
        return self._ids[: self._size]

    def add(self, obs: np.ndarray, actions: np.ndarray, mu: np.ndarray, ids: np.ndarray | None = None) -> None:
        """Append pairs: ``obs`` ``[n, 2, length, ...]``, ``actions`` likewise, ``mu`` ``[n]``."""
        count = len(mu)
        if ids is None:
            ids = np.arange(self._next_id, self._next_id + count)
        self._next_id = max(self._next_id, int(np.max(ids, initial=-1)) + 1)
        self._reserve(self._size + count)
        end = self._size + count
        self._obs[self._size : end] = obs
        self._actions[self._size : end] = actions
        self._mu[self._size : end] = mu
        self._ids[self._size : end] = ids
        self._size = end
        if self.max_size is not None and self._size > self.max_size:
            drop = self._size - self.max_size
            for array in (self._obs, self._actions, self._mu, self._ids):
                array[: self.max_size] = array[drop : self._size]
            self._size = self.max_size

    def _reserve(self, needed: int) -> None:
        capacity = len(self._mu)
        if needed <= capacity:
            return
        new_capacity = max(needed, 2 * capacity, 64)
        self._obs = _grow(self._obs, new_capacity)
        self._actions = _grow(self._actions, new_capacity)
        self._mu = _grow(self._mu, new_capacity)
        self._ids = _grow(self._ids, new_capacity)

    def validation_mask(self, fraction: float) -> np.ndarray:
        """Rows in the validation split (about ``fraction`` of them, fixed per id)."""
        return ((self.ids * _HASH) % 2**32) / 2**32 < fraction


def _grow(array: np.ndarray, capacity: int) -> np.ndarray:
    grown = np.empty((capacity, *array.shape[1:]), dtype=array.dtype)
    grown[: len(array)] = array
    return grown
