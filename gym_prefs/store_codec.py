"""How the preference store's records become SQLite rows, and its rows records again.

Arrays are stored as compressed ``.npy`` bytes (:func:`pack_array`), which keep their dtype and
shape and never need pickle to be read. A pair of segments becomes two rows of the ``segments``
table (:func:`segment_rows`); rows read back become a :class:`~gym_prefs.records.Segment`
(:func:`segment_of_row`) or, for fitting, one :class:`~gym_prefs.records.LabelledPairs`
(:func:`labelled_pairs_of_rows`). Answers are checked and turned into rows of the ``answers``
table by :class:`AnswerRows`.
"""

from __future__ import annotations

import io
import operator
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gymnasium import spaces

from gym_prefs.records import LABELS, PREFERENCE_OF, Answer, LabelledPairs, Segment, SegmentPairs

__all__ = ["AnswerRows", "labelled_pairs_of_rows", "pack_array", "segment_of_row", "segment_rows", "unpack_array"]

#: A row of the segments table as written: length, obs, actions, true_rewards, frames.
SegmentRow = tuple[int, bytes, bytes, bytes | None, bytes | None]


def pack_array(array: np.ndarray) -> bytes:
    """An array as compressed ``.npy`` bytes (dtype and shape included).

    Example:
        >>> unpack_array(pack_array(np.arange(3, dtype=np.int16)))
        array([0, 1, 2], dtype=int16)
    """
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return zlib.compress(buffer.getvalue(), 1)


def unpack_array(data: bytes) -> np.ndarray:
    """Inverse of :func:`pack_array`."""
    array: np.ndarray = np.load(io.BytesIO(zlib.decompress(data)), allow_pickle=False)
    return array


def segment_rows(pairs: SegmentPairs) -> Iterator[tuple[SegmentRow, SegmentRow]]:
    """The two rows of the segments table of each pair, in order.

    Example:
        >>> pairs = SegmentPairs(np.zeros((3, 2, 4, 1)), np.zeros((3, 2, 4)))
        >>> rows = list(segment_rows(pairs))
        >>> len(rows), rows[0][1][0], rows[0][1][3] is None  # 3 pairs; length 4; no true rewards
        (3, 4, True)
    """
    for i in range(len(pairs)):
        first, second = (_segment_row(pairs, i, side) for side in (0, 1))
        yield first, second


def _segment_row(pairs: SegmentPairs, index: int, side: int) -> SegmentRow:
    rewards = pairs.true_rewards
    clips = pairs.clips
    return (
        pairs.length,
        pack_array(pairs.obs[index, side]),
        pack_array(pairs.actions[index, side]),
        None if rewards is None else pack_array(np.asarray(rewards[index, side], np.float32)),
        None if clips is None else pack_array(clips[index, side]),
    )


def segment_of_row(obs: bytes, actions: bytes, true_rewards: bytes | None) -> Segment:
    """The segment stored in these columns (true rewards NaN where none were stored)."""
    observations = unpack_array(obs)
    rewards = unpack_array(true_rewards) if true_rewards is not None else np.full(len(observations), np.nan, np.float32)
    return Segment(observations, unpack_array(actions), rewards)


def labelled_pairs_of_rows(
    rows: Sequence[Sequence[Any]],
    observation_space: spaces.Space[Any],
    action_space: spaces.Space[Any],
    segment_length: int,
) -> LabelledPairs:
    """Rows of (query id, label, then obs, actions, true_rewards of each segment) as labelled pairs.

    The arrays have the spaces' dtypes and true rewards are NaN where none were stored. Labels
    must be ones that are trained on (not :data:`~gym_prefs.records.SKIP`).
    """
    obs_shape, act_shape = observation_space.shape or (), action_space.shape or ()
    count = len(rows)
    obs = np.empty((count, 2, segment_length, *obs_shape), dtype=observation_space.dtype)
    actions = np.empty((count, 2, segment_length, *act_shape), dtype=action_space.dtype)
    rewards = np.full((count, 2, segment_length), np.nan, dtype=np.float32)
    for i, row in enumerate(rows):
        obs[i, 0], actions[i, 0] = unpack_array(row[2]), unpack_array(row[3])
        obs[i, 1], actions[i, 1] = unpack_array(row[5]), unpack_array(row[6])
        if row[4] is not None:
            rewards[i, 0] = unpack_array(row[4])
        if row[7] is not None:
            rewards[i, 1] = unpack_array(row[7])
    labels = np.array([row[1] for row in rows], dtype=object)
    mu = np.array([PREFERENCE_OF[label] for label in labels], dtype=np.float32)
    query_ids = np.array([row[0] for row in rows], dtype=np.int64)
    return LabelledPairs(SegmentPairs(obs, actions, rewards), mu, query_ids, labels.astype(str))


@dataclass
class AnswerRows:
    """Answers checked and turned into rows ``(query_id, label, labeler, seconds)`` of the answers table.

    A source may hand over objects that skipped :class:`~gym_prefs.records.Answer`'s own checks,
    so the store checks again, and names every answer it refuses.

    Attributes:
        rows: one per answer whose query id is an integer (NumPy integers included).
        not_integers: the query ids that are not integers.
        bad_labels: answers whose label is not one of :data:`~gym_prefs.records.LABELS`, described.

    Example:
        >>> checked = AnswerRows.of([Answer(3, "first", "ann", 1.5)])
        >>> checked.rows, checked.problems(unknown=[])
        ([(3, 'first', 'ann', 1.5)], [])
        >>> checked.problems(unknown=[3])
        ['query ids this store never asked: 3']
    """

    rows: list[tuple[int, str, str, float]] = field(default_factory=list)
    not_integers: list[object] = field(default_factory=list)
    bad_labels: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, answers: Sequence[Answer]) -> AnswerRows:
        """Check ``answers`` and make their rows."""
        checked = cls()
        for answer in answers:
            try:
                if isinstance(answer.query_id, bool):  # an int to Python, never a query id
                    raise TypeError
                query_id = operator.index(answer.query_id)  # NumPy integers included
            except TypeError:
                checked.not_integers.append(answer.query_id)
                continue
            if answer.label not in LABELS:
                checked.bad_labels.append(f"{answer.label!r} (query {query_id})")
            checked.rows.append((query_id, answer.label, str(answer.labeler), float(answer.seconds)))
        return checked

    @property
    def count(self) -> int:
        """How many answers were checked."""
        return len(self.rows) + len(self.not_integers)

    @property
    def query_ids(self) -> list[int]:
        """The query ids of the rows, in order."""
        return [row[0] for row in self.rows]

    def problems(self, unknown: Sequence[int]) -> list[str]:
        """What is wrong with the batch, given the query ids the store never asked; ``[]`` when nothing."""
        problems = []
        if self.not_integers:
            problems.append(f"query ids that are not integers: {', '.join(map(repr, self.not_integers))}")
        if unknown:
            problems.append(f"query ids this store never asked: {', '.join(map(str, unknown))}")
        if self.bad_labels:
            problems.append(f"labels not one of {LABELS}: {', '.join(self.bad_labels)}")
        return problems
