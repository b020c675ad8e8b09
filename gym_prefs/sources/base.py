"""What every preference source (a synthetic oracle, a person, ...) provides."""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from gym_prefs.segments import Segment

__all__ = ["LABELS", "PREFERENCE_OF", "Answer", "Label", "PreferenceSource", "Query"]

#: ``"first"`` / ``"second"``: that segment is better; ``"equal"``: equally good;
#: ``"skip"``: can't tell (the pair is dropped and never trained on).
Label = Literal["first", "second", "equal", "skip"]
LABELS: tuple[Label, ...] = ("first", "second", "equal", "skip")
#: Probability that the first segment is preferred, for each label that is trained on.
PREFERENCE_OF: dict[str, float] = {"first": 1.0, "second": 0.0, "equal": 0.5}


@dataclass(frozen=True)
class Query:
    """A pair of segments to compare.

    Attributes:
        id: unique within a run; answers refer to it.
        first: the first (left) segment.
        second: the second (right) segment.

    Example:
        >>> import numpy as np
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

        >>> import numpy as np
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


@runtime_checkable
class PreferenceSource(Protocol):
    """The protocol every labeler follows: queries go in, answers come out when ready.

    The callback hands queries over with :meth:`request` and collects whatever answers exist
    with :meth:`poll`, so a source may answer at once (a synthetic oracle) or later, from
    another process, while training continues (a person at a window). Only before RL starts
    does the callback wait, by polling with a timeout until nothing is pending.

    A source may also define ``acknowledge(query_ids)``: the callback calls it once the
    answers to those queries are committed to the preference store, so a source that must
    not lose an answer can keep it until then.

    Example:
        >>> class AlwaysFirst:
        ...     def __init__(self):
        ...         self._answers = []
        ...     def request(self, queries):
        ...         self._answers += [Answer(q.id, "first", "always-first") for q in queries]
        ...     def poll(self, timeout=0.0):
        ...         answers, self._answers = self._answers, []
        ...         return answers
        ...     @property
        ...     def pending(self):
        ...         return len(self._answers)
        ...     def close(self):
        ...         pass
        >>> isinstance(AlwaysFirst(), PreferenceSource)
        True
    """

    def request(self, queries: Sequence[Query]) -> None:
        """Take queries to be answered (must not block on a person)."""
        ...

    def poll(self, timeout: float | None = 0.0) -> list[Answer]:
        """Return the answers ready now, each once.

        Args:
            timeout: seconds to wait for at least one answer when none is ready and some
                are pending; ``None`` waits as long as it takes, ``0`` not at all.
        """
        ...

    @property
    def pending(self) -> int:
        """Queries requested and not yet returned by :meth:`poll`."""
        ...

    def close(self) -> None:
        """Release windows, processes or files.

        Called when ``learn()`` ends (nobody should go on answering for a run that has ended)
        and again by ``PreferenceCallback.close()``: a second call must be harmless, and a
        later :meth:`request` (at the next ``learn()``) must work again. Queries not answered
        by then are asked again at the next ``learn()``.
        """
        ...
