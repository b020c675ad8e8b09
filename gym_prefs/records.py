"""The records the parts hand each other: segments, pairs of them, queries, answers and labels.

A neutral module: the segment pool, query selection, the store, the sources and the fitting data
all speak these types, and this module imports nothing else of gym_prefs, so any of them can use
it without pulling in the others (the store never loads the sources package, and so no pygame).

A pair of segments has one shape everywhere: :class:`SegmentPairs`, arrays with leading
``[pairs, 2, length]``. A :class:`Query` is one such pair handed to a labeler, an
:class:`Answer` its verdict, and :class:`LabelledPairs` what the store gives back for fitting.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np

__all__ = [
    "EQUAL",
    "FIRST",
    "LABELS",
    "PREFERENCE_OF",
    "SECOND",
    "SELECTION_METHODS",
    "SKIP",
    "Answer",
    "Label",
    "LabelledPairs",
    "Query",
    "Segment",
    "SegmentPairs",
]

#: Ways of choosing the pairs to ask about (see :mod:`gym_prefs.selection`); named here, where
#: nothing imports torch, so that the command line lists them at once.
SELECTION_METHODS: Final = ("disagreement", "entropy", "kcenter", "kcenter_disagreement", "kcenter_entropy", "random")

#: ``"first"`` / ``"second"``: that segment is better; ``"equal"``: equally good;
#: ``"skip"``: can't tell (the pair is dropped and never trained on).
Label = Literal["first", "second", "equal", "skip"]
FIRST: Final = "first"
SECOND: Final = "second"
EQUAL: Final = "equal"
SKIP: Final = "skip"
LABELS: tuple[Label, ...] = (FIRST, SECOND, EQUAL, SKIP)
#: Probability that the first segment is preferred, for each label that is trained on.
PREFERENCE_OF: dict[str, float] = {FIRST: 1.0, SECOND: 0.0, EQUAL: 0.5}


@dataclass
class Segment:
    """A clip of consecutive steps from one episode: what a labeler compares.

    Attributes:
        obs: observations ``[length, *obs_shape]``, the ones each action was taken on.
        actions: actions ``[length, *action_shape]``.
        true_rewards: the env's own rewards ``[length]``.

    Example:
        >>> segment = Segment(np.zeros((3, 2)), np.zeros((3, 1)), np.array([1.0, 0.5, 0.5]))
        >>> len(segment), segment.true_return
        (3, 2.0)
    """

    obs: np.ndarray
    actions: np.ndarray
    true_rewards: np.ndarray

    def __len__(self) -> int:
        return len(self.true_rewards)

    @property
    def true_return(self) -> float:
        """Undiscounted sum of the env's rewards over the segment."""
        return float(self.true_rewards.sum())


@dataclass(frozen=True)
class SegmentPairs:
    """Pairs of segments as arrays with leading ``[pairs, 2, length]``: the one shape of a pair.

    Attributes:
        obs: ``[pairs, 2, length, *obs_shape]``.
        actions: ``[pairs, 2, length, *action_shape]``.
        true_rewards: the env's rewards ``[pairs, 2, length]`` (NaN where unknown), or ``None``.
        clips: what a viewer shows of each step, ``[pairs, 2, length, ...]`` (see
            :mod:`gym_prefs.clips`), or ``None`` when nobody is shown the segments.

    Example:
        >>> pairs = SegmentPairs(np.zeros((4, 2, 3, 1)), np.zeros((4, 2, 3)), np.ones((4, 2, 3)))
        >>> len(pairs), pairs.length, len(pairs[1:])
        (4, 3, 3)
        >>> first, second = pairs.segments(0)
        >>> first.true_return
        3.0
    """

    obs: np.ndarray
    actions: np.ndarray
    true_rewards: np.ndarray | None = None
    clips: np.ndarray | None = None

    def __post_init__(self) -> None:
        lead = self.obs.shape[:3]
        if len(lead) != 3 or lead[1] != 2:
            raise ValueError(f"pairs of segments have shape [pairs, 2, length, ...], got obs of {self.obs.shape}")
        for name in ("actions", "true_rewards", "clips"):
            array = getattr(self, name)
            if array is not None and array.shape[:3] != lead:
                raise ValueError(f"{name} of shape {array.shape} does not match obs of shape {self.obs.shape}")

    def __len__(self) -> int:
        return len(self.obs)

    @property
    def length(self) -> int:
        """Steps per segment."""
        return int(self.obs.shape[2])

    def __getitem__(self, index: slice | np.ndarray) -> SegmentPairs:
        return SegmentPairs(
            self.obs[index],
            self.actions[index],
            None if self.true_rewards is None else self.true_rewards[index],
            None if self.clips is None else self.clips[index],
        )

    def without_clips(self) -> SegmentPairs:
        """The same pairs without clip data (what fitting needs; clips live in the store)."""
        return SegmentPairs(self.obs, self.actions, self.true_rewards)

    def segments(self, index: int) -> tuple[Segment, Segment]:
        """Pair ``index`` as two :class:`Segment` (true rewards NaN when unknown)."""
        rewards = (
            np.full((2, self.length), np.nan, dtype=np.float32)
            if self.true_rewards is None
            else self.true_rewards[index]
        )
        return (
            Segment(self.obs[index, 0], self.actions[index, 0], rewards[0]),
            Segment(self.obs[index, 1], self.actions[index, 1], rewards[1]),
        )

    def queries(self, ids: Sequence[int]) -> list[Query]:
        """These pairs as queries with the given ids (one id a pair)."""
        if len(ids) != len(self):
            raise ValueError(f"{len(ids)} ids for {len(self)} pairs")
        return [Query(int(query_id), *self.segments(i)) for i, query_id in enumerate(ids)]

    @classmethod
    def of_queries(cls, queries: Sequence[Query]) -> SegmentPairs:
        """The pairs of segments of ``queries``, stacked (at least one query)."""
        if not queries:
            raise ValueError("no queries to stack")
        return cls(
            np.stack([np.stack([q.first.obs, q.second.obs]) for q in queries]),
            np.stack([np.stack([q.first.actions, q.second.actions]) for q in queries]),
            np.stack([np.stack([q.first.true_rewards, q.second.true_rewards]) for q in queries]),
        )

    @classmethod
    def concatenate(cls, parts: Sequence[SegmentPairs]) -> SegmentPairs:
        """One :class:`SegmentPairs` of all ``parts`` in order (optional fields kept if all have them)."""
        if not parts:
            raise ValueError("nothing to concatenate")

        def joined(name: str) -> np.ndarray | None:
            arrays = [getattr(part, name) for part in parts]
            return None if any(array is None for array in arrays) else np.concatenate(arrays)

        return cls(
            np.concatenate([part.obs for part in parts]),
            np.concatenate([part.actions for part in parts]),
            joined("true_rewards"),
            joined("clips"),
        )


@dataclass(frozen=True)
class LabelledPairs:
    """Pairs of segments with their labels: what the store gives back, ready for fitting.

    Attributes:
        pairs: the segments.
        mu: probability that the first segment is preferred, ``[pairs]``.
        query_ids: the store's query ids, ``[pairs]``.
        labels: the answers, ``[pairs]`` strings (never ``"skip"``).

    Example:
        >>> pairs = SegmentPairs(np.zeros((1, 2, 3, 1)), np.zeros((1, 2, 3)))
        >>> labelled = LabelledPairs(pairs, np.ones(1), np.array([7]), np.array(["first"]))
        >>> len(labelled), labelled.obs.shape
        (1, (1, 2, 3, 1))
    """

    pairs: SegmentPairs
    mu: np.ndarray
    query_ids: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.mu)

    @property
    def obs(self) -> np.ndarray:
        return self.pairs.obs

    @property
    def actions(self) -> np.ndarray:
        return self.pairs.actions

    @property
    def true_rewards(self) -> np.ndarray | None:
        return self.pairs.true_rewards


@dataclass(frozen=True)
class Query:
    """A pair of segments to compare.

    Attributes:
        id: unique within a run; answers refer to it.
        first: the first (left) segment.
        second: the second (right) segment.

    Example:
        >>> clip = Segment(np.zeros((2, 1)), np.zeros((2, 1)), np.zeros(2))
        >>> Query(0, clip, clip).id
        0
    """

    id: int
    first: Segment
    second: Segment


@dataclass(frozen=True)
class Answer:
    """A labeler's verdict on one query.

    Attributes:
        query_id: the :attr:`Query.id` answered.
        label: see :data:`Label`.
        labeler: who answered (``"oracle"``, a person's name, ...).
        seconds: how long the answer took.

    Example:
        >>> Answer(3, "equal", labeler="ann", seconds=4.2).label
        'equal'
        >>> Answer(3, "maybe")
        Traceback (most recent call last):
        ...
        ValueError: label must be one of ('first', 'second', 'equal', 'skip'), got 'maybe'

        Integer ids of any kind (NumPy's included) become plain ``int``:

        >>> type(Answer(np.int64(3), "first").query_id)
        <class 'int'>
    """

    query_id: int
    label: Label
    labeler: str = "unknown"
    seconds: float = 0.0

    def __post_init__(self) -> None:
        try:
            query_id = operator.index(self.query_id)
        except TypeError:
            raise TypeError(f"query_id must be an integer (a Query.id), got {self.query_id!r}") from None
        # Frozen: normalise through object.__setattr__ so that the store always gets a plain int.
        object.__setattr__(self, "query_id", int(query_id))
        if not isinstance(self.label, str) or self.label not in LABELS:
            raise ValueError(f"label must be one of {LABELS}, got {self.label!r}")
        object.__setattr__(self, "labeler", str(self.labeler))
        seconds = float(self.seconds)
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"seconds must be a finite duration >= 0, got {self.seconds!r}")
        object.__setattr__(self, "seconds", seconds)
