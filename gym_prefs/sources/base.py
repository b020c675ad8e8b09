"""What every preference source (a synthetic oracle, a person, ...) provides."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

# The records live in a neutral module (the store reads them without loading any source).
from gym_prefs.records import LABELS, PREFERENCE_OF, Answer, Label, Query

__all__ = ["LABELS", "PREFERENCE_OF", "Answer", "Label", "PreferenceSource", "Query"]


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
