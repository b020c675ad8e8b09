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

This module holds the store's tables and what is read from and written to them. The store's file
on disk (inspecting a path before opening it, creating a store atomically, connecting) is
:mod:`gym_prefs.store_files`; the run lock is :mod:`gym_prefs.run_lock`; the errors are
:mod:`gym_prefs.store_errors`, re-exported here.
"""

from __future__ import annotations

import io
import json
import operator
import os
import sqlite3
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
from gymnasium import spaces

from gym_prefs.run_lock import RunLock
from gym_prefs.segments import Segment
from gym_prefs.sources.base import LABELS, PREFERENCE_OF, Answer, Label, Query
from gym_prefs.spaces import space_from_config, space_to_config, spaces_match
from gym_prefs.store_errors import StoreBusyError, StoreError
from gym_prefs.store_files import (
    SCHEMA_VERSION,
    VACANT_WHAT,
    connect_readonly,
    connect_writable,
    create_store_file,
    damaged_message,
    inspect_path,
    new_store_meta,
    read_meta_untouched,
    remove_stale_creations,
    unreadable_message,
    unwritable_message,
)

__all__ = ["SCHEMA_VERSION", "LabelledPairs", "PreferenceStore", "StoreBusyError", "StoreError"]

#: How often opening retries when other processes keep creating or replacing the file meanwhile.
_OPEN_ATTEMPTS = 10


def pack_array(array: np.ndarray) -> bytes:
    """An array as compressed ``.npy`` bytes (dtype and shape included)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return zlib.compress(buffer.getvalue(), 1)


def unpack_array(data: bytes) -> np.ndarray:
    """Inverse of :func:`pack_array`."""
    array: np.ndarray = np.load(io.BytesIO(zlib.decompress(data)), allow_pickle=False)
    return array


@dataclass
class LabelledPairs:
    """Labelled pairs read from a store, as arrays ready for fitting.

    Attributes:
        obs: ``[pairs, 2, length, *obs_shape]``.
        actions: ``[pairs, 2, length, *action_shape]``.
        mu: probability that the first segment is preferred, ``[pairs]``.
        query_ids: the store's query ids, ``[pairs]``.
        true_rewards: ``[pairs, 2, length]`` (NaN where unknown).
        labels: the answers, ``[pairs]`` strings.

    Example:
        >>> pairs = LabelledPairs(np.zeros((1, 2, 3, 1)), np.zeros((1, 2, 3)), np.ones(1), np.array([7]),
        ...                       np.zeros((1, 2, 3)), np.array(["first"]))
        >>> len(pairs)
        1
    """

    obs: np.ndarray
    actions: np.ndarray
    mu: np.ndarray
    query_ids: np.ndarray
    true_rewards: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.mu)


class PreferenceStore:
    """An SQLite database of the segments shown, the queries asked and the answers given.

    Opening a path where there is no store creates one there (atomically: see the module
    docstring); a file there that holds no data at all (zero bytes, or an SQLite database
    without tables) counts as no store. Opening an existing file checks, before writing anything,
    that it is a store of this or an older schema made for the same spaces and segment length,
    and, unless ``readonly``, that this process may write to it; anything else raises
    :class:`StoreError` and leaves the file byte-for-byte as it was.

    Promises: a label is durable once :meth:`record_answers` returns (write-ahead log,
    ``synchronous=FULL``); a store is used on one machine only, never on a network file system
    (NFS, SMB), because SQLite's write-ahead log relies on memory shared between that machine's
    processes; one training run at a time (:meth:`lock_for_run`) and any number of readers and
    labelling windows on that machine, also while the run writes.

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
        >>> pairs = {"obs": np.zeros((2, 2, 4, 3)), "actions": np.zeros((2, 2, 4), int)}
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
        # Arguments first: a call that fails on them must not leave a file or folder behind.
        if segment_length is not None:
            segment_length = _positive_int(segment_length, "segment_length")
        if readonly:
            meta = read_meta_untouched(self.path)
        else:
            if self.path.is_file() and not os.access(self.path, os.W_OK):
                # Before reading it too: in a writable folder, even SQLite's read-only reading would
                # leave -wal and -shm files of this user behind.
                raise StoreError(unwritable_message(self.path, "this user may not write to the file"))
            meta = self._open_or_create(observation_space, action_space, segment_length, env_id)
        self._check_compatible(
            space_from_config(json.loads(meta["observation_space"])),
            space_from_config(json.loads(meta["action_space"])),
            int(meta["segment_length"]),
            meta.get("env_id") or None,
            observation_space,
            action_space,
            segment_length,
        )
        if readonly:
            try:
                self._connection = connect_readonly(self.path)
            except sqlite3.Error as error:
                raise StoreError(unreadable_message(self.path, error)) from error
        else:
            self._connection = connect_writable(self.path)
            # A creation killed after publishing its store, before removing its temporary file.
            remove_stale_creations(self.path.parent)
        try:
            meta = dict(self._connection.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as error:
            self._connection.close()
            raise StoreError(damaged_message(self.path, error)) from error
        self.observation_space = space_from_config(json.loads(meta["observation_space"]))
        self.action_space = space_from_config(json.loads(meta["action_space"]))
        self.segment_length = int(meta["segment_length"])
        self.env_id = meta.get("env_id") or None

    # ------------------------------------------------------------------ opening
    def _open_or_create(
        self,
        observation_space: spaces.Space[Any] | None,
        action_space: spaces.Space[Any] | None,
        segment_length: int | None,
        env_id: str | None,
    ) -> dict[str, str]:
        """The meta of the store at :attr:`path`, created first (atomically) if there is none."""
        for _ in range(_OPEN_ATTEMPTS):
            found = inspect_path(self.path)
            if isinstance(found, dict):
                return found
            if observation_space is None or action_space is None or segment_length is None:
                message = (
                    "creating a preference store needs observation_space, action_space and segment_length"
                    f" (there is {'no file' if found == 'absent' else VACANT_WHAT} at {self.path})"
                )
                raise ValueError(message) if found == "absent" else StoreError(message)
            new_meta = new_store_meta(observation_space, action_space, segment_length, env_id)
            create_store_file(self.path, new_meta, replace_vacant=found == "vacant")
            # Whether this process or a concurrent one published the store, open what is there now.
        raise StoreError(
            f"could not open or create a preference store at {self.path}: other processes kept creating "
            "or replacing the file meanwhile. Try again, or pass another path."
        )

    def lock_for_run(self) -> None:
        """Make this process the one training run on this store, until :meth:`close`.

        Two runs on one store would both spend its label budget, so a training run takes this
        lock first (a :class:`~gym_prefs.run_lock.RunLock`). It is an ``flock`` on
        ``<store path>-run.lock``: the kernel releases it when the process ends however it ends
        (``SIGKILL`` included), so a killed run never blocks the next one. The file holds the
        holder's pid, host and start time, for the message others get. Readers and labelling
        windows never take it. Taking it again through the same store object does nothing.
        Without ``fcntl`` (Windows) there is no lock: a warning says so once, and keeping to one
        run per store is up to you.

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
        self._check_compatible(
            self.observation_space,
            self.action_space,
            self.segment_length,
            self.env_id,
            observation_space,
            action_space,
            segment_length,
        )

    def _check_compatible(
        self,
        stored_obs: spaces.Space[Any],
        stored_act: spaces.Space[Any],
        stored_length: int,
        env_id: str | None,
        observation_space: spaces.Space[Any] | None,
        action_space: spaces.Space[Any] | None,
        segment_length: int | None,
    ) -> None:
        mismatch = []
        if observation_space is not None and not spaces_match(stored_obs, observation_space):
            mismatch.append(f"observations {stored_obs} (this env: {observation_space})")
        if action_space is not None and not spaces_match(stored_act, action_space):
            mismatch.append(f"actions {stored_act} (this env: {action_space})")
        if segment_length is not None and stored_length != segment_length:
            mismatch.append(f"segments of {stored_length} steps (this run: {segment_length})")
        if mismatch:
            made_for = f" for {env_id}" if env_id else ""
            raise StoreError(
                f"the preference store {self.path} was made{made_for} with "
                + "; ".join(mismatch)
                + ". Use another store path for this env, or export the labels you need."
            )

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Cursor]:
        """A write transaction: committed if the block completes, else rolled back (nothing written).

        Raises:
            StoreError: the disk is full (SQLite's ``SQLITE_FULL``); nothing of the transaction
                was written.
        """
        cursor = self._connection.cursor()
        try:
            cursor.execute("BEGIN IMMEDIATE")
            try:
                yield cursor
                cursor.execute("COMMIT")
            except BaseException:
                # SQLite rolls some failures back itself (a full disk may be one of them).
                if self._connection.in_transaction:
                    cursor.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as error:
            if not _is_disk_full(error):
                raise
            raise StoreError(
                f"the disk holding the preference store {self.path} is full: nothing of this transaction was "
                "written, every label committed before is kept; free space and start the run again on the same "
                "store."
            ) from error
        finally:
            cursor.close()

    # ------------------------------------------------------------------ writing
    def add_queries(self, pairs: dict[str, np.ndarray], source: str, timestep: int | None = None) -> list[int]:
        """Store pairs of segments as pending queries, in one transaction.

        Args:
            pairs: ``obs`` and ``actions`` with leading ``[pairs, 2, length]``, optionally
                ``true_rewards`` ``[pairs, 2, length]`` and ``clips`` (what a viewer shows,
                see :mod:`gym_prefs.clips`) ``[pairs, 2, length, ...]``.
            source: who will be asked (``"oracle"``, ``"human"``, ...).
            timestep: the training timestep when asked.

        Returns:
            The new query ids.
        """
        obs, actions = pairs["obs"], pairs["actions"]
        true_rewards = pairs.get("true_rewards")
        clips = pairs.get("clips")
        now = time.time()
        ids = []
        with self._transaction() as cursor:
            for i in range(len(obs)):
                segment_ids = []
                for side in (0, 1):
                    rewards = (
                        None if true_rewards is None else pack_array(np.asarray(true_rewards[i, side], np.float32))
                    )
                    clip = None if clips is None else pack_array(clips[i, side])
                    cursor.execute(
                        "INSERT INTO segments (length, obs, actions, true_rewards, frames) VALUES (?, ?, ?, ?, ?)",
                        (int(obs.shape[2]), pack_array(obs[i, side]), pack_array(actions[i, side]), rewards, clip),
                    )
                    segment_ids.append(cursor.lastrowid)
                cursor.execute(
                    "INSERT INTO queries (first_segment, second_segment, source, asked_at, timestep, status) "
                    "VALUES (?, ?, ?, ?, ?, 'pending')",
                    (segment_ids[0], segment_ids[1], source, now, timestep),
                )
                ids.append(int(cursor.lastrowid))  # type: ignore[arg-type]
        return ids

    def record_answers(self, answers: Sequence[Answer]) -> list[Answer]:
        """Commit answers in one transaction; returns the answers now stored for those queries.

        Once this returns, the answers are on disk (see the module docstring). An answer to a
        query that already has one is ignored (the first answer stands, and is the one
        returned), so an answer may be delivered twice, or committed by a viewer process before
        the training process collects it.

        Raises:
            StoreError: an answer's query id is not an integer or not a query of this store, or
                its label is not one of :data:`~gym_prefs.sources.base.LABELS`; the message names
                them, and nothing at all is written (drop those answers and record the rest).
            PermissionError: the store was opened read-only.
        """
        if self._readonly:
            raise PermissionError(f"the preference store {self.path} was opened read-only")
        if not answers:
            return []
        rows: list[tuple[int, str, str, float]] = []
        not_integers: list[object] = []
        bad_labels: list[str] = []
        for answer in answers:
            try:
                if isinstance(answer.query_id, bool):  # an int to Python, never a query id
                    raise TypeError
                query_id = operator.index(answer.query_id)  # NumPy integers included
            except TypeError:
                not_integers.append(answer.query_id)
                continue
            if answer.label not in LABELS:
                bad_labels.append(f"{answer.label!r} (query {query_id})")
            rows.append((query_id, answer.label, str(answer.labeler), float(answer.seconds)))
        now = time.time()
        with self._transaction() as cursor:
            # Checked inside the write transaction, so nothing can change in between; raising
            # here rolls it back, and nothing of the batch is written.
            unknown = sorted({row[0] for row in rows} - self._existing_query_ids(cursor, [row[0] for row in rows]))
            if not_integers or unknown or bad_labels:
                problems = []
                if not_integers:
                    problems.append(f"query ids that are not integers: {', '.join(map(repr, not_integers))}")
                if unknown:
                    problems.append(f"query ids this store never asked: {', '.join(map(str, unknown))}")
                if bad_labels:
                    problems.append(f"labels not one of {LABELS}: {', '.join(bad_labels)}")
                raise StoreError(
                    f"{len(answers)} answers were not recorded in {self.path}, none of them: "
                    + "; ".join(problems)
                    + ". Drop those answers and record the others."
                )
            for query_id, label, labeler, seconds in rows:
                cursor.execute(
                    "INSERT OR IGNORE INTO answers (query_id, label, labeler, answered_at, seconds) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (query_id, label, labeler, now, seconds),
                )
                if cursor.rowcount:
                    status = "skipped" if label == "skip" else "answered"
                    cursor.execute("UPDATE queries SET status = ? WHERE id = ?", (status, query_id))
        return self.answers_for([row[0] for row in rows])

    @staticmethod
    def _existing_query_ids(cursor: sqlite3.Cursor, query_ids: Sequence[int]) -> set[int]:
        found: set[int] = set()
        for chunk in _id_chunks(query_ids):
            rows = cursor.execute(f"SELECT id FROM queries WHERE id IN ({', '.join('?' * len(chunk))})", chunk)
            found.update(int(row[0]) for row in rows.fetchall())
        return found

    def answers_for(self, query_ids: Sequence[int]) -> list[Answer]:
        """The stored answers to these queries (queries without one are left out), in id order."""
        if not query_ids:
            return []
        found: list[Answer] = []
        for chunk in _id_chunks(query_ids):
            rows = self._connection.execute(
                "SELECT query_id, label, labeler, seconds FROM answers WHERE query_id IN "
                f"({', '.join('?' * len(chunk))}) ORDER BY query_id",
                chunk,
            ).fetchall()
            found += [Answer(int(q), label, labeler, float(seconds)) for q, label, labeler, seconds in rows]
        return found

    def set_meta(self, key: str, value: str) -> None:
        """Record a piece of run information (clip format, label budget, instruction, ...)."""
        with self._transaction() as cursor:
            cursor.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def get_meta(self, key: str) -> str | None:
        """A piece of run information recorded with :meth:`set_meta`."""
        row = self._connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        row = self._connection.execute("SELECT COUNT(*) FROM answers WHERE label != 'skip'").fetchone()
        return int(row[0])

    def counts(self) -> dict[str, int]:
        """Queries by status (``pending``, ``answered``, ``skipped``) and ``queries`` in all."""
        rows = self._connection.execute("SELECT status, COUNT(*) FROM queries GROUP BY status").fetchall()
        counts = {"pending": 0, "answered": 0, "skipped": 0, **dict(rows)}
        counts["queries"] = sum(counts[s] for s in ("pending", "answered", "skipped"))
        return counts

    def _segment(self, segment_id: int) -> Segment:
        row = self._connection.execute(
            "SELECT obs, actions, true_rewards, frames FROM segments WHERE id = ?", (segment_id,)
        ).fetchone()
        obs, actions = unpack_array(row[0]), unpack_array(row[1])
        rewards = unpack_array(row[2]) if row[2] is not None else np.full(len(obs), np.nan, np.float32)
        return Segment(obs, actions, rewards)

    def pending_ids(self, limit: int | None = None) -> list[int]:
        """Ids of the queries asked and not answered yet, oldest first."""
        sql = "SELECT id FROM queries WHERE status = 'pending' ORDER BY id"
        params: tuple[int, ...] = ()
        if limit is not None:
            sql += " LIMIT ?"
            params = (int(limit),)
        return [int(row[0]) for row in self._connection.execute(sql, params).fetchall()]

    def pending_queries(self, limit: int | None = None) -> list[Query]:
        """Queries asked and not answered yet, oldest first."""
        sql = "SELECT id, first_segment, second_segment FROM queries WHERE status = 'pending' ORDER BY id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        rows = self._connection.execute(sql).fetchall()
        return [Query(int(qid), self._segment(first), self._segment(second)) for qid, first, second in rows]

    def clips(self, query_id: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The clip data stored with a query's two segments, if any (see :mod:`gym_prefs.clips`)."""
        rows = self._connection.execute(
            "SELECT s.frames FROM queries q JOIN segments s ON s.id IN (q.first_segment, q.second_segment) "
            "WHERE q.id = ? ORDER BY s.id",
            (query_id,),
        ).fetchall()
        if len(rows) != 2 or rows[0][0] is None or rows[1][0] is None:
            return None
        return unpack_array(rows[0][0]), unpack_array(rows[1][0])

    def answers(self, since_query_id: int = -1) -> list[Answer]:
        """Stored answers with a query id above ``since_query_id``, in query order."""
        rows = self._connection.execute(
            "SELECT query_id, label, labeler, seconds FROM answers WHERE query_id > ? ORDER BY query_id",
            (since_query_id,),
        ).fetchall()
        return [Answer(int(q), label, labeler, float(seconds)) for q, label, labeler, seconds in rows]

    def labelled_pairs(self, last: int | None = None) -> LabelledPairs:
        """Every label (or the ``last`` ones) with its two segments, as arrays."""
        sql = (
            "SELECT q.id, a.label, s1.obs, s1.actions, s1.true_rewards, s2.obs, s2.actions, s2.true_rewards "
            "FROM answers a JOIN queries q ON q.id = a.query_id "
            "JOIN segments s1 ON s1.id = q.first_segment JOIN segments s2 ON s2.id = q.second_segment "
            "WHERE a.label != 'skip'"
        )
        if last is None:
            rows = self._connection.execute(sql + " ORDER BY q.id").fetchall()
        else:  # the newest ``last``, read newest first and put back in order
            rows = self._connection.execute(sql + " ORDER BY q.id DESC LIMIT ?", (max(0, last),)).fetchall()[::-1]
        length = self.segment_length
        obs_shape, act_shape = self.observation_space.shape or (), self.action_space.shape or ()
        count = len(rows)
        obs = np.empty((count, 2, length, *obs_shape), dtype=self.observation_space.dtype)
        actions = np.empty((count, 2, length, *act_shape), dtype=self.action_space.dtype)
        rewards = np.full((count, 2, length), np.nan, dtype=np.float32)
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
        return LabelledPairs(obs, actions, mu, query_ids, rewards, labels.astype(str))

    def check(self) -> list[str]:
        """Check the whole file for damage (SQLite's ``PRAGMA quick_check``); ``[]`` means healthy.

        This reads every page of the store, so it takes about as long as copying the file.

        Returns:
            The problems found, one a string; an empty list when the store is healthy.
        """
        problems: list[str] = []
        try:
            for row in self._connection.execute("PRAGMA quick_check"):
                problems.append(str(row[0]))
        except sqlite3.DatabaseError as error:  # damage bad enough to stop the check: after what it found
            problems.append(str(error))
        return [] if problems == ["ok"] else problems

    # ------------------------------------------------------------------ datasets
    def export(self, path: str | os.PathLike[str]) -> int:
        """Write every label with its segments to a portable ``.npz`` file; returns the count.

        The file holds the arrays of :class:`LabelledPairs` (``obs``, ``actions``, ``mu``,
        ``query_ids``, ``true_rewards``, ``labels``) and ``metadata``, a JSON string with the
        spaces, the segment length, the env id and the schema version.
        """
        pairs = self.labelled_pairs()
        metadata = {
            "format": "gym_prefs.preferences",
            "schema_version": SCHEMA_VERSION,
            "observation_space": space_to_config(self.observation_space),
            "action_space": space_to_config(self.action_space),
            "segment_length": self.segment_length,
            "env_id": self.env_id,
            "exported_at": time.time(),
        }
        with open(path, "wb") as handle:
            np.savez_compressed(
                handle,
                obs=pairs.obs,
                actions=pairs.actions,
                mu=pairs.mu,
                query_ids=pairs.query_ids,
                true_rewards=pairs.true_rewards,
                labels=pairs.labels,
                metadata=np.array(json.dumps(metadata)),
            )
        return len(pairs)

    @staticmethod
    def read_export(path: str | os.PathLike[str]) -> tuple[dict[str, Any], LabelledPairs]:
        """Read a file written by :meth:`export`: its metadata and its labelled pairs."""
        try:
            with np.load(path, allow_pickle=False) as data:
                metadata = json.loads(str(data["metadata"]))
                pairs = LabelledPairs(
                    data["obs"], data["actions"], data["mu"], data["query_ids"], data["true_rewards"], data["labels"]
                )
        except (OSError, ValueError, KeyError) as error:
            raise StoreError(f"{path} is not a gym_prefs preference export ({error})") from error
        if metadata.get("format") != "gym_prefs.preferences":
            raise StoreError(f"{path} is not a gym_prefs preference export")
        return metadata, pairs

    @classmethod
    def import_export(cls, export_path: str | os.PathLike[str], store_path: str | os.PathLike[str]) -> PreferenceStore:
        """Create (or extend) a store at ``store_path`` with the labels of an export file."""
        metadata, pairs = cls.read_export(export_path)
        store = cls(
            store_path,
            space_from_config(metadata["observation_space"]),
            space_from_config(metadata["action_space"]),
            int(metadata["segment_length"]),
            env_id=metadata.get("env_id"),
        )
        arrays = {"obs": pairs.obs, "actions": pairs.actions, "true_rewards": pairs.true_rewards}
        ids = store.add_queries(arrays, source="import")
        labels = [cast(Label, str(label)) for label in pairs.labels]
        store.record_answers([Answer(qid, label, "import") for qid, label in zip(ids, labels, strict=True)])
        return store

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


def _positive_int(value: object, name: str) -> int:
    try:
        number = operator.index(cast(Any, value))
    except TypeError:
        raise ValueError(f"{name} must be a positive integer, got {value!r}") from None
    if number <= 0:
        raise ValueError(f"{name} must be a positive integer, got {number}")
    return number


def _id_chunks(query_ids: Sequence[int]) -> Iterator[list[int]]:
    """Distinct ids in ascending order, 500 at a time: SQLite limits the parameters of a statement."""
    ids = sorted({int(query_id) for query_id in query_ids})
    for start in range(0, len(ids), 500):
        yield ids[start : start + 500]


def _is_disk_full(error: sqlite3.OperationalError) -> bool:
    """Whether SQLite failed because the disk (or the file system's quota) is full: ``SQLITE_FULL``."""
    code = getattr(error, "sqlite_errorcode", None)  # Python 3.11 and newer
    if code is not None:
        return bool(code & 0xFF == sqlite3.SQLITE_FULL)
    return "database or disk is full" in str(error)
