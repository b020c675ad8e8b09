"""Stacked frames kept once: segments of frame stacks stored as their frames, re-stacked as views.

A frame-stacking wrapper (Gymnasium's ``FrameStackObservation``, SB3's ``VecFrameStack``) builds
each observation from the last ``depth`` frames, so within an episode observation ``t + 1``
repeats ``depth - 1`` frames of observation ``t``. A segment of ``length`` such observations
holds only ``length + depth - 1`` distinct frames: for Atari's 25 steps of 4 frames, 28 frames
instead of 100, 3.6 times less memory.

Nothing here trusts a wrapper's name: :func:`find_stack` looks at the data itself, and a
:class:`FrameStack` only stores segments that :meth:`~FrameStack.slides` proved it can give back
exactly. Re-stacking is a strided view (``numpy.lib.stride_tricks.sliding_window_view``):
reading a few rows of it copies just those rows.

Example:
    >>> frames = np.arange(6, dtype=np.uint8).reshape(1, 6, 1, 1)  # one segment, 6 frames of 1x1
    >>> stacks = FrameStack(axis=0, depth=3).restack(frames, obs_ndim=3)  # 4 steps of 3 frames
    >>> stacks[0, :, :, 0, 0].tolist()
    [[0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5]]
    >>> find_stack(stacks, obs_ndim=3)
    FrameStack(axis=0, depth=3)
    >>> np.array_equal(FrameStack(0, 3).unstack(stacks, obs_ndim=3), frames)
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["MAX_STACK_DEPTH", "FrameStack", "find_stack"]

#: Deepest stack looked for: an axis longer than this is an image side, not a stack.
MAX_STACK_DEPTH = 16


@dataclass(frozen=True)
class FrameStack:
    """How observations stack frames: along ``axis`` of one observation, ``depth`` frames, oldest first.

    The arrays passed in hold segments: ``[*lead, length, *observation shape]``, time on the
    axis just before the observation's ``obs_ndim`` axes.

    Attributes:
        axis: the stack axis within one observation (0 for ``FrameStackObservation``'s
            ``(4, 84, 84)``, 2 for ``VecFrameStack``'s ``(84, 84, 4)``).
        depth: frames per observation.
    """

    axis: int
    depth: int

    def slides(self, segments: np.ndarray, obs_ndim: int) -> bool:
        """Whether every observation of ``segments`` is the previous one moved on by one frame."""
        stack = _stack_axis(segments, obs_ndim, self.axis)
        if segments.shape[stack] != self.depth:
            return False
        time = stack - self.axis - 1
        later = _take(_take(segments, time, slice(1, None)), stack, slice(None, -1))
        earlier = _take(_take(segments, time, slice(None, -1)), stack, slice(1, None))
        return bool(np.array_equal(later, earlier))

    def unstack(self, segments: np.ndarray, obs_ndim: int) -> np.ndarray:
        """The frames of ``segments`` that :meth:`slides`: ``[*lead, length + depth - 1, *frame]``.

        A copy: each frame once, in time order (the first observation's frames, then the newest
        frame of every later one).
        """
        stack = _stack_axis(segments, obs_ndim, self.axis)
        time = stack - self.axis - 1
        first = np.moveaxis(_take(segments, time, 0), stack - 1, time)  # [*lead, depth, *frame]
        newest = _take(_take(segments, stack, self.depth - 1), time, slice(1, None))  # [*lead, length - 1, *frame]
        return np.concatenate([first, newest], axis=time)

    def restack(self, frames: np.ndarray, obs_ndim: int) -> np.ndarray:
        """Inverse of :meth:`unstack`: ``[*lead, length, *observation shape]``, a read-only view.

        Args:
            frames: ``[*lead, length + depth - 1, *frame]``.
            obs_ndim: dimensions of one observation (one more than a frame's).
        """
        time = frames.ndim - obs_ndim  # a frame has one dimension fewer than an observation
        windows = sliding_window_view(frames, self.depth, axis=time)  # the window is the last axis
        return np.moveaxis(windows, -1, time + 1 + self.axis)


def find_stack(segments: np.ndarray, obs_ndim: int, min_length: int = 2) -> FrameStack | None:
    """The :class:`FrameStack` along which ``segments`` slide, or ``None`` when they do not.

    Segments shorter than ``min_length`` steps gain nothing from being stored as frames (and
    slide along any axis), so they give ``None``.

    Args:
        segments: ``[*lead, length, *observation shape]``.
        obs_ndim: dimensions of one observation.
        min_length: the shortest segment worth storing as frames.
    """
    time = segments.ndim - obs_ndim - 1
    if time < 0 or segments.shape[time] < min_length or segments.size == 0:
        return None
    for axis, depth in enumerate(segments.shape[time + 1 :]):
        if 2 <= depth <= MAX_STACK_DEPTH:
            candidate = FrameStack(axis, depth)
            if candidate.slides(segments, obs_ndim):
                return candidate
    return None


def _stack_axis(segments: np.ndarray, obs_ndim: int, axis: int) -> int:
    """The absolute axis of ``segments`` that an observation's ``axis`` is."""
    return segments.ndim - obs_ndim + axis


def _take(array: np.ndarray, axis: int, index: int | slice) -> np.ndarray:
    """``array[..., index, ...]`` with ``index`` on ``axis`` (a view)."""
    where: list[int | slice] = [slice(None)] * array.ndim
    where[axis] = index
    return array[tuple(where)]
