"""The labelled pairs a reward model is fitted to."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from gym_prefs.frame_stacks import FrameStack, find_stack
from gym_prefs.records import LabelledPairs, SegmentPairs
from gym_prefs.spaces import is_image, shape_of

__all__ = ["Comparisons"]

# Knuth's multiplicative hash spreads consecutive ids evenly over [0, 1).
_HASH = 2654435761


class Comparisons:
    """Labelled segment pairs held in growable arrays (the newest ``max_size`` are kept).

    Each row holds two segments (observations and actions), the probability ``mu`` that the
    first is preferred (1, 0, or 0.5 for "equal") and a stable integer id. Whether a row
    belongs to the validation split is a function of its id alone, so a pair never moves
    between the training and validation sets as more labels arrive.

    Rows are never changed once written (dropping old rows moves a start offset; growing
    copies to new arrays), so arrays read by a fit running in another thread stay valid while
    labels are added.

    Stacked image frames are kept once each: when the segments of image observations slide by
    one frame a step (a frame-stacking wrapper's), they are stored as their frames
    (:mod:`gym_prefs.frame_stacks`) and :attr:`obs` re-stacks them as a view. 3,000 Atari pairs
    of 25 steps of 4 frames take 1.2 GB instead of 4.2 GB. Pairs that do not slide turn the
    storage back to whole observations, so nothing is ever stored inexactly.

    Args:
        observation_space: the env's observation space.
        action_space: the env's action space.
        segment_length: steps per segment.
        max_size: keep only the newest this many pairs (the paper uses 3,000 for Atari).

    Example:
        >>> data = Comparisons(spaces.Box(-1, 1, (2,)), spaces.Discrete(3), segment_length=5)
        >>> pairs = SegmentPairs(np.zeros((1, 2, 5, 2)), np.zeros((1, 2, 5), dtype=np.int64))
        >>> data.add(pairs, mu=np.array([1.0]))
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
        self._obs_ndim = len(shape_of(observation_space))
        # Only images are worth storing as frames; whether they slide is seen at the first pairs.
        self._stack_undecided = is_image(observation_space)
        self._stack: FrameStack | None = None
        self._obs = np.empty((0, 2, segment_length, *shape_of(observation_space)), dtype=observation_space.dtype)
        self._actions = np.empty((0, 2, segment_length, *shape_of(action_space)), dtype=action_space.dtype)
        self._mu = np.empty(0, dtype=np.float32)
        self._ids = np.empty(0, dtype=np.int64)
        self._start = 0  # first live row
        self._end = 0  # one past the last live row
        self._next_id = 0

    def __len__(self) -> int:
        return self._end - self._start

    @property
    def next_id(self) -> int:
        """The id the next added pair gets (ids only grow)."""
        return self._next_id

    @property
    def obs(self) -> np.ndarray:
        """``[pairs, 2, length, *obs_shape]`` (a read-only view when stored as frames)."""
        stored = self.stored_obs
        return stored if self._stack is None else self._stack.restack(stored, self._obs_ndim)

    @property
    def stack(self) -> FrameStack | None:
        """How the observations stack frames, when they are stored as frames (else ``None``)."""
        return self._stack

    @property
    def stored_obs(self) -> np.ndarray:
        """The observations as held: ``[pairs, 2, length + depth - 1, *frame]`` frames under :attr:`stack`."""
        return self._obs[self._start : self._end]

    @property
    def actions(self) -> np.ndarray:
        return self._actions[self._start : self._end]

    @property
    def mu(self) -> np.ndarray:
        return self._mu[self._start : self._end]

    @property
    def ids(self) -> np.ndarray:
        return self._ids[self._start : self._end]

    def add(self, pairs: SegmentPairs, mu: np.ndarray, ids: np.ndarray | None = None) -> None:
        """Append labelled pairs: their segments, ``mu`` ``[n]`` and ids (default: the next ones)."""
        count = len(mu)
        if len(pairs) != count:
            raise ValueError(f"{len(pairs)} pairs but {count} labels")
        obs, actions = pairs.obs, pairs.actions
        if ids is None:
            ids = np.arange(self._next_id, self._next_id + count)
        self._next_id = max(self._next_id, int(np.max(ids, initial=-1)) + 1)
        if count and self._stack_undecided:
            self._stack_undecided = False
            self._stack = find_stack(obs, self._obs_ndim)
            if self._stack is not None:
                self._obs = self._stack.unstack(self._obs, self._obs_ndim)  # no rows yet: the frames' shape
        elif count and self._stack is not None and not self._stack.slides(obs, self._obs_ndim):
            # Observations that do not slide cannot be kept as frames: back to whole ones, for good.
            self._obs = np.ascontiguousarray(self._stack.restack(self._obs, self._obs_ndim))
            self._stack = None
        self._reserve(count)
        end = self._end + count
        self._obs[self._end : end] = obs if self._stack is None else self._stack.unstack(obs, self._obs_ndim)
        self._actions[self._end : end] = actions
        self._mu[self._end : end] = mu
        self._ids[self._end : end] = ids
        self._end = end
        if self.max_size is not None and len(self) > self.max_size:
            self._start = self._end - self.max_size

    def add_labelled(self, labelled: LabelledPairs) -> None:
        """Append what the store gave back (its query ids become the row ids)."""
        self.add(labelled.pairs, labelled.mu, labelled.query_ids)

    def _reserve(self, count: int) -> None:
        """Make room for ``count`` more rows after the last one (in new arrays if needed)."""
        if self._end + count <= len(self._mu):
            return
        live = len(self)
        doubled = max(2 * live, 64)
        if self.max_size is not None:  # rows past the newest max_size are dropped: never hold twice that
            doubled = min(doubled, 2 * self.max_size)
        capacity = max(live + count, doubled)
        self._obs = _moved(self._obs, self._start, self._end, capacity)
        self._actions = _moved(self._actions, self._start, self._end, capacity)
        self._mu = _moved(self._mu, self._start, self._end, capacity)
        self._ids = _moved(self._ids, self._start, self._end, capacity)
        self._start, self._end = 0, live

    def sample_steps(self, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``count`` (observation, action) steps drawn from the labelled segments.

        The reward model is normalised on these: they span the whole run, so the scale stays
        put when the current policy narrows down (normalising on recent steps alone would blow
        up the scale of a policy that barely varies, and lock it in).
        """
        lead = self.actions.shape[:3]
        total = int(np.prod(lead))
        # Steps are picked before they are gathered: the observations may be a view of frames.
        steps = rng.choice(total, size=count, replace=False) if total > count else np.arange(total)
        where = np.unravel_index(steps, lead)
        return self.obs[where], self.actions[where]

    def validation_mask(self, fraction: float) -> np.ndarray:
        """Rows in the validation split (about ``fraction`` of them, fixed per id)."""
        return ((self.ids * _HASH) % 2**32) / 2**32 < fraction


def _moved(array: np.ndarray, start: int, end: int, capacity: int) -> np.ndarray:
    """Rows ``start:end`` of ``array`` at the top of a new array of ``capacity`` rows."""
    moved = np.empty((capacity, *array.shape[1:]), dtype=array.dtype)
    moved[: end - start] = array[start:end]
    return moved
