"""The preference store: every segment shown, every query asked and every answer, on disk.

A store is one SQLite file in write-ahead-logging mode (no server), the single source of truth
for labels. What it promises:

* **A label is durable once** :meth:`PreferenceStore.record_answers` **returns**: the
  transaction is committed to the write-ahead log with ``synchronous=FULL``, so neither a killed
  process nor a power cut loses it, and a run restarted on the same store continues with every
  label it had.
* **Nothing half-made, nothing clobbered.** A new store is built completely in a hidden
  temporary file beside it and then published under its name in one atomic step, so a process
  killed while creating one leaves no store or a complete one, never a file that later runs
  refuse. A file that is not a store (another format, another SQLite database, a store of a newer
  schema or for other spaces) is refused and left byte-for-byte as it was; a damaged store is
  reported as damaged and left untouched too. Only a file that holds no data at all (zero bytes,
  or an SQLite database without a single table, which is what older versions left behind when
  interrupted) is replaced by a new store.
* **One machine.** A store must live on a disk of the machine whose processes use it, never on a
  network file system (NFS, SMB): SQLite's write-ahead log relies on memory shared by the
  processes of one machine, and over a network file system it can corrupt the store.
* **One training run at a time, any number of readers.** A training run takes the store's run
  lock (:meth:`PreferenceStore.lock_for_run`), and a second run on the same store is refused
  with :class:`StoreBusyError` while the first is alive. Readers (``readonly=True``) and
  labelling windows (:mod:`gym_prefs.viewer`) on the same machine may open it at any time, also
  while a run writes to it.

This module holds the store object, what the rest of gym_prefs uses. The parts behind it have a
module each: opening a store (:mod:`gym_prefs.store_open`), its file on disk (inspecting a path
before opening it, connecting: :mod:`gym_prefs.store_files`), creating one atomically
(:mod:`gym_prefs.store_create`), the SQL of its tables (:mod:`gym_prefs.store_tables`), records
to rows and back (:mod:`gym_prefs.store_codec`), the run lock (:mod:`gym_prefs.run_lock`) and the
errors (:mod:`gym_prefs.store_errors`, re-exported here). Exporting labels to a portable file and
importing them is :mod:`gym_prefs.datasets`.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces

from gym_prefs.records import Answer, LabelledPairs, Query, SegmentPairs
from gym_prefs.run_lock import RunLock
from gym_prefs.store_codec import AnswerRows, labelled_pairs_of_rows
from gym_prefs.store_errors import StoreBusyError, StoreError
from gym_prefs.store_files import SCHEMA_VERSION
from gym_prefs.store_open import open_store
from gym_prefs.store_tables import (
    count_by_status,
    count_labels,
    insert_answers,
    insert_queries,
    quick_check,
    select_answers,
    select_answers_after,
    select_clips,
    select_labelled_rows,
    select_meta,
    select_pending,
    select_pending_queries,
    transaction,
)

__all__ = ["SCHEMA_VERSION", "LabelledPairs", "PreferenceStore", "StoreBusyError", "StoreError"]


class PreferenceStore:
    """An SQLite database of the segments shown, the queries asked and the answers given.

    Opening a path where there is no store, or a file without any data, creates one there
    (atomically: see the module docstring). Opening an existing file checks, before writing
    anything, that it is a store of this or an older schema for the same spaces and segment length,
    and, unless ``readonly``, writable; anything else raises :class:`StoreError` and leaves the
    file byte-for-byte as it was.

    It keeps the module docstring's promises: a label is durable once :meth:`record_answers`
    returns; one machine, never a network file system; one training run at a time
    (:meth:`lock_for_run`) and any number of readers and labelling windows, also while it writes.

    ``len(store)`` is the number of labels: answered queries, not those skipped ("can't tell").

    Args:
        path: the database file.
        observation_space: the env's observation space (required to create a store; checked
            against the store's when opening one).
        action_space: the env's action space (likewise).
        segment_length: steps per segment (likewise).
        env_id: recorded for reference when creating a store.
        readonly: open for reading only (never creates, never writes). A store in a folder this
            process cannot write to can be read this way, unless it has changes not yet merged
            from its ``-wal`` file.

    Raises:
        StoreError: the file is not a store, is damaged, holds no store yet (``readonly``), was
            made for other spaces or by a newer gym_prefs, or cannot be written (not
            ``readonly``).
        FileNotFoundError: ``readonly`` and there is no file at ``path``.
        ValueError: a store has to be created and the spaces or segment length are missing or
            invalid (nothing is created then).

    Example:
        >>> import tempfile, os
        >>> from gymnasium import spaces
        >>> path = os.path.join(tempfile.mkdtemp(), "prefs.db")
        >>> store = PreferenceStore(path, spaces.Box(-1, 1, (3,)), spaces.Discrete(2), segment_length=4)
        >>> store.lock_for_run()  # this process is the one training run on this store
        >>> pairs = SegmentPairs(np.zeros((2, 2, 4, 3)), np.zeros((2, 2, 4), int))
        >>> ids = store.add_queries(pairs, source="oracle")
        >>> _ = store.record_answers([Answer(ids[0], "first", "oracle"), Answer(ids[1], "skip", "oracle")])
        >>> len(store), store.counts()["skipped"], store.check()  # both answers are on disk now
        (1, 1, [])
        >>> reader = PreferenceStore(path, readonly=True)  # any number of these, any time
        >>> len(reader)
        1
        >>> reader.close(); store.close()  # close() releases the run lock
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        observation_space: spaces.Space[Any] | None = None,
        action_space: spaces.Space[Any] | None = None,
        segment_length: int | None = None,
        env_id: str | None = None,
        readonly: bool = False,
    ) -> None:
        self.path = Path(path)
        self._readonly = readonly
        self._closed = False
        self._run_lock = RunLock(self.path)
        self._connection, self._spec = open_store(
            self.path, readonly, observation_space, action_space, segment_length, env_id
        )
        self.observation_space = self._spec.observation_space
        self.action_space = self._spec.action_space
        self.segment_length = self._spec.segment_length
        self.env_id = self._spec.env_id

    def lock_for_run(self) -> None:
        """Make this process the one training run on this store, until :meth:`close`.

        Two runs on one store would both spend its label budget, so a training run takes this
        lock first: a :class:`~gym_prefs.run_lock.RunLock` (see :mod:`gym_prefs.run_lock`), which
        a killed run never keeps from the next one. Readers and labelling windows never take it.
        Taking it again through the same store object does nothing.

        Raises:
            StoreBusyError: another live process holds the lock (the message names it).
            PermissionError: the store was opened read-only.
            StoreError: the lock file cannot be created.
        """
        if self._readonly:
            raise PermissionError(f"the preference store {self.path} was opened read-only; a run needs it writable")
        if self.closed:
            raise StoreError(f"the preference store {self.path} is closed; open it again to lock it for a run")
        self._run_lock.acquire()

    def check_matches(
        self, observation_space: spaces.Space[Any], action_space: spaces.Space[Any], segment_length: int
    ) -> None:
        """Raise :class:`StoreError` unless this store was made for these spaces and segment length."""
        self._spec.check(self.path, observation_space, action_space, segment_length)

    # ------------------------------------------------------------------ writing
    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Cursor]:
        """A write transaction holding SQLite's one write lock (also against other processes) till it ends.

        Committed if the block completes, else rolled back; for :mod:`gym_prefs.label_desk`.

        Raises:
            PermissionError: the store was opened read-only.
            StoreError: the disk is full (nothing of the transaction was written).
        """
        if self._readonly:
            raise PermissionError(f"the preference store {self.path} was opened read-only; open it writable")
        with transaction(self._connection, self.path) as cursor:
            yield cursor

    @property
    def connection(self) -> sqlite3.Connection:
        """The store's connection, for reads by the store's own modules; write through :meth:`transaction`."""
        return self._connection

    @property
    def readonly(self) -> bool:
        """Whether the store was opened read-only."""
        return self._readonly

    @property
    def schema_version(self) -> int:
        """The version of the store's tables (a read-only store of version 1 has no leases and votes)."""
        return self._spec.schema_version

    def add_queries(self, pairs: SegmentPairs, source: str, timestep: int | None = None) -> list[int]:
        """Store pairs of segments as pending queries, in one transaction.

        Args:
            pairs: the segments; their ``true_rewards`` and ``clips`` (what a viewer shows, see
                :mod:`gym_prefs.clips`) are stored too when given.
            source: who will be asked (``"oracle"``, ``"human"``, ...).
            timestep: the training timestep when asked.

        Returns:
            The new query ids.

        Raises:
            TypeError: ``pairs`` is not a :class:`~gym_prefs.records.SegmentPairs`.
            StoreError: the disk is full (nothing of the batch is written).
        """
        if not isinstance(pairs, SegmentPairs):
            raise TypeError(
                f"pairs must be a gym_prefs.records.SegmentPairs(obs, actions, true_rewards, clips), "
                f"got {type(pairs).__name__}"
            )
        with transaction(self._connection, self.path) as cursor:
            return insert_queries(cursor, pairs, source, timestep)

    def record_answers(self, answers: Sequence[Answer]) -> list[Answer]:
        """Commit answers in one transaction; returns the answers now stored for those queries.

        Once this returns, the answers are on disk (see the module docstring). An answer to a
        query that already has one is ignored (the first answer stands, and is the one
        returned), so an answer may be delivered twice, or committed by a viewer process before
        the training process collects it.

        Raises:
            StoreError: an answer's query id is not an integer or not a query of this store, or
                its label is not one of :data:`~gym_prefs.records.LABELS`; the message names
                them, and nothing at all is written (drop those answers and record the rest).
            PermissionError: the store was opened read-only.
        """
        if self._readonly:
            raise PermissionError(f"the preference store {self.path} was opened read-only")
        if not answers:
            return []
        checked = AnswerRows.of(answers)
        with transaction(self._connection, self.path) as cursor:
            insert_answers(cursor, checked, self.path)  # all or none
        return self.answers_for(checked.query_ids)

    def answers_for(self, query_ids: Sequence[int]) -> list[Answer]:
        """The stored answers to these queries (queries without one are left out), in id order."""
        return select_answers(self._connection, query_ids)

    def set_meta(self, key: str, value: str) -> None:
        """Record a piece of run information (clip format, label budget, instruction, ...)."""
        with transaction(self._connection, self.path) as cursor:
            cursor.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def get_meta(self, key: str) -> str | None:
        """A piece of run information recorded with :meth:`set_meta`."""
        return select_meta(self._connection, key)

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return count_labels(self._connection)

    def counts(self) -> dict[str, int]:
        """Queries by status (``pending``, ``answered``, ``skipped``) and ``queries`` in all."""
        return count_by_status(self._connection)

    def pending_ids(self, limit: int | None = None) -> list[int]:
        """Ids of the queries asked and not answered yet, oldest first."""
        return [int(row[0]) for row in select_pending(self._connection, "id", limit)]

    def pending_queries(self, limit: int | None = None) -> list[Query]:
        """Queries asked and not answered yet, oldest first."""
        return select_pending_queries(self._connection, limit)

    def clips(self, query_id: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The clip data stored with a query's two segments, if any (see :mod:`gym_prefs.clips`)."""
        return select_clips(self._connection, query_id)

    def answers(self, since_query_id: int = -1) -> list[Answer]:
        """Stored answers with a query id above ``since_query_id``, in query order."""
        return select_answers_after(self._connection, since_query_id)

    def labelled_pairs(self, last: int | None = None) -> LabelledPairs:
        """Every label (or the ``last`` ones) with its two segments, as arrays (true rewards NaN where unknown)."""
        rows = select_labelled_rows(self._connection, last)
        return labelled_pairs_of_rows(rows, self.observation_space, self.action_space, self.segment_length)

    def labelled_pair_chunks(self, last: int | None = None, pairs_per_chunk: int = 256) -> Iterator[LabelledPairs]:
        """:meth:`labelled_pairs` in order, ``pairs_per_chunk`` pairs at a time.

        What a store of image clips needs to be read into memory that holds them more compactly
        (a :class:`~gym_prefs.Comparisons` keeps stacked frames once): 3,000 Atari pairs are
        4.2 GB of stacked frames as one array.
        """
        rows = select_labelled_rows(self._connection, last)
        for start in range(0, len(rows), pairs_per_chunk):
            chunk = rows[start : start + pairs_per_chunk]
            yield labelled_pairs_of_rows(chunk, self.observation_space, self.action_space, self.segment_length)

    def check(self) -> list[str]:
        """Check the whole file for damage (SQLite's ``PRAGMA quick_check``); ``[]`` means healthy.

        Returns the problems found, one a string. This reads every page of the store, so it takes
        about as long as copying the file.
        """
        return quick_check(self._connection)

    def close(self) -> None:
        """Close the connection and release the run lock (every committed label is already on disk)."""
        if self._closed:
            return
        self._connection.close()
        self._closed = True
        self._run_lock.release()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def __enter__(self) -> PreferenceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        labels = "closed" if getattr(self, "_closed", False) else f"labels={len(self)}"
        return f"PreferenceStore({str(self.path)!r}, {labels})"
