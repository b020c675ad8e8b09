"""Where people take pending queries of a store and hand in their answers: one :class:`LabelDesk`.

The labelling window (:mod:`gym_prefs.viewer`) and a labelling web page both go through it, so
that several people (or one person in several windows) can label one store at once, also from
several processes:

* **Leases.** :meth:`LabelDesk.lease` hands a holder (a window, a browser tab) the oldest
  pending query that nobody else holds, for ``lease_seconds``; choosing and leasing happen in
  one write transaction, so two holders never get the same query. A holder that asks again
  while its lease lives gets the same query back (a reloaded page continues where it was);
  :meth:`LabelDesk.renew` keeps a lease alive while a person looks, and a lease that expires
  goes to the next holder that asks.
* **Votes.** Every answer is one person's vote, committed before :meth:`LabelDesk.answer`
  returns. Once a query has ``labels_per_query`` votes (the store's meta, 1 when absent) their
  combined label (:func:`combine`) is committed as the query's answer in the same transaction,
  and the training run picks it up like any other answer.
"""

from __future__ import annotations

import math
import operator
import secrets
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gym_prefs.records import EQUAL, FIRST, LABELS, SECOND, SKIP, Answer
from gym_prefs.store import PreferenceStore
from gym_prefs.store_codec import AnswerRows
from gym_prefs.store_errors import StoreError
from gym_prefs.store_tables import insert_answers
from gym_prefs.store_votes import (
    delete_lease,
    free_query,
    insert_vote,
    live_lease,
    put_lease,
    query_status,
    release_holder,
    renew_lease,
    vote_of,
    votes_of,
    votes_of_multi_vote_answers,
)
from gym_prefs.store_votes import lease_token as token_of_lease

__all__ = [
    "AlreadyAnswered",
    "DeskError",
    "LabelDesk",
    "Lease",
    "StaleLease",
    "UnknownQuery",
    "Vote",
    "combine",
]

#: The store's meta key for how many people label each query.
LABELS_PER_QUERY = "labels_per_query"


@dataclass(frozen=True)
class Lease:
    """A pending query held for one holder until ``expires_at`` (seconds since the epoch).

    Example:
        >>> Lease(query_id=7, holder="ann@tab1", token="x1", expires_at=1e9).query_id
        7
    """

    query_id: int
    holder: str
    token: str
    expires_at: float


@dataclass(frozen=True)
class Vote:
    """What became of one person's answer.

    Attributes:
        query_id: the query answered.
        counted: the vote was recorded now (``False``: the same person had sent the same label
            before, and that one counts).
        complete: the query has all its votes, and so its combined answer.
        answer: the combined answer, once ``complete``.

    Example:
        >>> Vote(3, counted=True, complete=False, answer=None).complete
        False
    """

    query_id: int
    counted: bool
    complete: bool
    answer: Answer | None


class DeskError(ValueError):
    """An answer or lease that the desk refuses; nothing was written.

    Example:
        >>> issubclass(StaleLease, DeskError) and issubclass(DeskError, ValueError)
        True
    """


class UnknownQuery(DeskError):  # noqa: N818 - named for what happened; DeskError says it is one
    """The store has no query with this id."""


class AlreadyAnswered(DeskError):  # noqa: N818 - named for what happened; DeskError says it is one
    """The query has its answer already, or this person voted on it already."""


class StaleLease(DeskError):  # noqa: N818 - named for what happened; DeskError says it is one
    """The lease token is no longer the query's lease: it expired and another holder took it, or it was answered."""


def combine(labels: Sequence[str]) -> str:
    """The combined label of several people's votes for one query.

    The rule: ``"skip"`` if more than half of the votes are skip; otherwise the most common of
    ``"first"``, ``"second"`` and ``"equal"`` among the other votes, and ``"equal"`` when two of
    them are equally common (a first/second tie means the people do not agree on an order).

    Raises:
        ValueError: no votes, or a label that is not one of :data:`~gym_prefs.records.LABELS`.

    Example:
        >>> combine(["first", "first", "second"]), combine(["first", "second", "skip"])
        ('first', 'equal')
        >>> combine(["skip", "skip", "first"])
        'skip'
    """
    bad = [label for label in labels if label not in LABELS]
    if not labels or bad:
        raise ValueError(f"combine needs one or more labels of {LABELS}, got {list(labels)!r}")
    if 2 * sum(label == SKIP for label in labels) > len(labels):
        return SKIP
    counts = Counter(label for label in labels if label != SKIP)
    top = max(counts.values())
    winners = [label for label in (FIRST, SECOND, EQUAL) if counts[label] == top]
    return winners[0] if len(winners) == 1 else EQUAL


class LabelDesk:
    """Hands pending queries of a store to people and takes their answers (see the module docstring).

    Args:
        store: the preference store, opened writable (a read-only one can only be read:
            :meth:`clips`, :meth:`counts`, :meth:`agreement`).
        lease_seconds: how long a lease lives without :meth:`renew`.

    Attributes:
        labels_per_query: votes that make a query's answer (the store's meta
            ``labels_per_query``, 1 when absent).

    Raises:
        ValueError: ``lease_seconds`` is not a positive number.
        StoreError: the store's ``labels_per_query`` is not a positive integer.

    Example:
        >>> import tempfile, os
        >>> from gymnasium import spaces
        >>> from gym_prefs.records import SegmentPairs
        >>> store = PreferenceStore(os.path.join(tempfile.mkdtemp(), "p.db"), spaces.Discrete(3), spaces.Discrete(2), 2)
        >>> _ = store.add_queries(SegmentPairs(np.zeros((2, 2, 2), int), np.zeros((2, 2, 2), int)), source="human")
        >>> desk = LabelDesk(store)
        >>> ann, bob = desk.lease("ann"), desk.lease("bob")
        >>> ann.query_id, bob.query_id  # never the same query
        (1, 2)
        >>> desk.answer(ann.query_id, "first", "ann", seconds=2.5, lease_token=ann.token).answer.label
        'first'
        >>> desk.counts()["labels"], desk.lease("ann") is None  # bob holds the other one
        (1, True)
        >>> store.close()
    """

    def __init__(self, store: PreferenceStore, lease_seconds: float = 60.0) -> None:
        seconds = float(lease_seconds)
        if not math.isfinite(seconds) or seconds <= 0:
            raise ValueError(f"lease_seconds must be a positive number of seconds, got {lease_seconds!r}")
        self.store = store
        self.lease_seconds = seconds
        self.labels_per_query = _labels_per_query(store)

    # ------------------------------------------------------------------ leases
    def lease(self, holder: str, labeler: str | None = None) -> Lease | None:
        """The query ``holder`` should show now, leased to it; ``None`` when none is left for it.

        A holder whose lease lives gets that lease back, renewed; otherwise it gets the oldest
        pending query that no other holder has a live lease on and that ``labeler`` (``holder``
        when not given: a window names itself apart from the person) has not voted on.

        Raises:
            ValueError: ``holder`` or ``labeler`` is not a non-empty string.
            PermissionError: the store was opened read-only.
        """
        holder = _name(holder, "holder")
        labeler = holder if labeler is None else _name(labeler, "labeler")
        with self.store.transaction() as cursor:  # choosing and leasing: one transaction, across processes
            now = time.time()
            own = live_lease(cursor, holder, now)
            if own is None:
                release_holder(cursor, holder)  # what it held is expired or done with
                query_id = free_query(cursor, holder, labeler, now)
                if query_id is None:
                    return None
                own = (query_id, secrets.token_urlsafe(16))
            expires_at = now + self.lease_seconds
            put_lease(cursor, own[0], holder, own[1], expires_at)
        return Lease(own[0], holder, own[1], expires_at)

    def renew(self, lease: Lease) -> Lease:
        """The same lease, living ``lease_seconds`` from now (an expired one nobody took since too).

        Raises:
            StaleLease: another holder took the query meanwhile, or it was answered.
            PermissionError: the store was opened read-only.
        """
        kept = self.keep([lease])
        if not kept:
            raise StaleLease(
                f"the lease of query {lease.query_id} is no longer {lease.holder}'s: it expired and another "
                "holder took it, or the query was answered. Ask for a new one with lease()."
            )
        return kept[0]

    def keep(self, leases: Sequence[Lease]) -> list[Lease]:
        """Renew several leases in one transaction; those :meth:`renew` would refuse are left out.

        Raises:
            PermissionError: the store was opened read-only.
        """
        kept = []
        with self.store.transaction() as cursor:
            expires_at = time.time() + self.lease_seconds
            for lease in leases:
                if query_status(cursor, lease.query_id) == "pending" and renew_lease(
                    cursor, lease.query_id, lease.token, expires_at
                ):
                    kept.append(Lease(lease.query_id, lease.holder, lease.token, expires_at))
        return kept

    def release(self, holder: str) -> None:
        """Give back every lease of ``holder`` (a window closing, a person leaving the page).

        Raises:
            PermissionError: the store was opened read-only.
        """
        holder = _name(holder, "holder")
        with self.store.transaction() as cursor:
            release_holder(cursor, holder)

    # ------------------------------------------------------------------ answers
    def answer(self, query_id: int, label: str, labeler: str, seconds: float, lease_token: str | None = None) -> Vote:
        """Commit one person's vote, and the query's combined answer once it has all its votes.

        Everything is checked before anything is written, and a refused answer writes nothing.
        The vote (and the combined answer) is committed before this returns; the lease of the
        query is given back. The same person sending the same label again (a page that
        retried) is not counted twice: the vote returned says ``counted=False``.

        Args:
            query_id: the query answered.
            label: one of :data:`~gym_prefs.records.LABELS`.
            labeler: the person (each person votes once per query).
            seconds: how long the person looked at the pair.
            lease_token: the token of the lease the pair was shown under; ``None`` checks no
                lease (a window that takes pairs in order).

        Raises:
            ValueError: the label, labeler or seconds are invalid.
            UnknownQuery: the store has no such query.
            AlreadyAnswered: the query has its answer already, or this person voted otherwise on it.
            StaleLease: ``lease_token`` is no longer the query's lease (another holder took it).
            PermissionError: the store was opened read-only.
        """
        if label not in LABELS:
            raise ValueError(f"label must be one of {LABELS}, got {label!r}; nothing was written")
        labeler = _name(labeler, "labeler")
        seconds = float(seconds)
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"seconds must be a finite number >= 0, got {seconds!r}; nothing was written")
        query_id = _query_id(query_id)
        with self.store.transaction() as cursor:
            now = time.time()
            status = query_status(cursor, query_id)
            if status is None:
                raise UnknownQuery(
                    f"the preference store {self.store.path} has no query {query_id}; answer a query that "
                    "lease() handed out. Nothing was written."
                )
            earlier = vote_of(cursor, query_id, labeler)
            if earlier == label:  # the same vote delivered twice: it counts once
                stored = self.store.answers_for([query_id])
                return Vote(query_id, False, bool(stored), stored[0] if stored else None)
            if status != "pending" or earlier is not None:
                why = f"{labeler} voted {earlier!r} on it already" if earlier else "it has its answer already"
                raise AlreadyAnswered(
                    f"the answer to query {query_id} was not recorded: {why}. Nothing was written; take the "
                    "next query with lease()."
                )
            if lease_token is not None and token_of_lease(cursor, query_id) != lease_token:
                raise StaleLease(
                    f"query {query_id} is no longer leased to whoever sent this answer: the lease expired and "
                    "another holder took it. Nothing was written; ask for a new query with lease()."
                )
            insert_vote(cursor, query_id, labeler, label, seconds, now)
            votes = votes_of(cursor, query_id)
            combined = None
            if len(votes) >= self.labels_per_query:
                combined = _combined_answer(query_id, votes)
                insert_answers(cursor, AnswerRows.of([combined]), self.store.path)
            if combined is not None or lease_token is not None:
                delete_lease(cursor, query_id)
        return Vote(query_id, True, combined is not None, combined)

    # ------------------------------------------------------------------ reading
    def clips(self, query_id: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The clip data of a query's two segments, if they have some (see :mod:`gym_prefs.clips`)."""
        return self.store.clips(query_id)

    def counts(self) -> dict[str, int]:
        """The store's counts (:meth:`~gym_prefs.store.PreferenceStore.counts`) and ``labels``."""
        return {**self.store.counts(), "labels": len(self.store)}

    def agreement(self) -> float | None:
        """How much people agree; ``None`` until a query with several votes is answered.

        The mean, over answered queries with several votes, of the share of their votes that
        equal the combined label.
        """
        if self.store.schema_version < 2:  # a read-only store of version 1 has no votes
            return None
        shares: dict[int, list[bool]] = {}
        for query_id, vote, combined in votes_of_multi_vote_answers(self.store.connection):
            shares.setdefault(query_id, []).append(vote == combined)
        if not shares:
            return None
        return float(np.mean([np.mean(agreed) for agreed in shares.values()]))


def _combined_answer(query_id: int, votes: Sequence[tuple[str, str, float]]) -> Answer:
    """The query's answer from its votes: one vote is the person's answer itself."""
    if len(votes) == 1:
        labeler, label, seconds = votes[0]
        return Answer(query_id, label, labeler, seconds)  # type: ignore[arg-type]
    label = combine([vote[1] for vote in votes])
    # The people who voted, and the time they spent together.
    return Answer(query_id, label, ", ".join(v[0] for v in votes), sum(v[2] for v in votes))  # type: ignore[arg-type]


def _labels_per_query(store: PreferenceStore) -> int:
    value = store.get_meta(LABELS_PER_QUERY)
    if value is None:
        return 1
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise StoreError(
            f"the preference store {store.path} has {LABELS_PER_QUERY} = {value!r}, not a positive integer; "
            f"set it with store.set_meta({LABELS_PER_QUERY!r}, '3') (or '1' for one label a query)"
        )
    return count


def _name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string (a name), got {value!r}; nothing was written")
    return value


def _query_id(value: object) -> int:
    try:
        if isinstance(value, bool):  # an int to Python, never a query id
            raise TypeError
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise UnknownQuery(f"query id {value!r} is not an integer; pass the query_id of a lease") from None
