"""The preference store: every segment shown, every query asked and every answer, on disk.

A store is one SQLite file (write-ahead logging, no server). It is the single source of truth
for labels: a label exists once its transaction has committed, a run restarted on the same
store continues with every label it had, and another process may read it (or, in the case of a
person's viewer, answer queries in it) while a run writes to it.
"""

from __future__ import annotations

import io
import json
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

from gym_prefs.segments import Segment
from gym_prefs.sources.base import PREFERENCE_OF, Answer, Label, Query
from gym_prefs.spaces import space_from_config, space_to_config, spaces_match

__all__ = ["SCHEMA_VERSION", "LabelledPairs", "PreferenceStore", "StoreError"]

#: Written into every store; a store with a larger number was made by a newer gym_prefs.
SCHEMA_VERSION = 1
_MAGIC = "gym_prefs.PreferenceStore"
#: How long a writer waits for another process's transaction before giving up (seconds).
_BUSY_TIMEOUT = 60.0

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE segments (
    id INTEGER PRIMARY KEY,
    length INTEGER NOT NULL,
    obs BLOB NOT NULL,
    actions BLOB NOT NULL,
    true_rewards BLOB,
    frames BLOB
);
CREATE TABLE queries (
    id INTEGER PRIMARY KEY,
    first_segment INTEGER NOT NULL REFERENCES segments(id),
    second_segment INTEGER NOT NULL REFERENCES segments(id),
    source TEXT NOT NULL,
    asked_at REAL NOT NULL,
    timestep INTEGER,
    status TEXT NOT NULL CHECK (status IN ('pending', 'answered', 'skipped'))
);
CREATE TABLE answers (
    query_id INTEGER PRIMARY KEY REFERENCES queries(id),
    label TEXT NOT NULL CHECK (label IN ('first', 'second', 'equal', 'skip')),
    labeler TEXT NOT NULL,
    answered_at REAL NOT NULL,
    seconds REAL NOT NULL
);
CREATE INDEX queries_by_status ON queries(status);
"""


class StoreError(ValueError):
    """A file that cannot be used as this store (not a store, a newer schema, another env)."""


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

    Opening a path that does not exist creates a store there. Opening an existing file checks,
    before writing anything, that it is a store of this or an older schema made for the same
    spaces and segment length; anything else raises :class:`StoreError` and leaves the file
    byte-for-byte as it was.

    ``len(store)`` is the number of labels: answered queries, not those skipped ("can't tell").

    Args:
        path: the database file.
        observation_space: the env's observation space (required to create a store; checked
            against the store's when opening one).
        action_space: the env's action space (likewise).
        segment_length: steps per segment (likewise).
        env_id: recorded for reference when creating a store.
        readonly: open for reading only (never creates, never writes).

    Example:
        >>> import tempfile, os
        >>> from gymnasium import spaces
        >>> path = os.path.join(tempfile.mkdtemp(), "prefs.db")
        >>> store = PreferenceStore(path, spaces.Box(-1, 1, (3,)), spaces.Discrete(2), segment_length=4)
        >>> pairs = {"obs": np.zeros((2, 2, 4, 3)), "actions": np.zeros((2, 2, 4), int)}
        >>> ids = store.add_queries(pairs, source="oracle")
        >>> _ = store.record_answers([Answer(ids[0], "first", "oracle"), Answer(ids[1], "skip", "oracle")])
        >>> len(store), store.counts()["skipped"]
        (1, 1)
        >>> store.close()
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
        exists = self.path.exists()
        if exists:
            meta = _read_meta_untouched(self.path)
            self._check_compatible(
                space_from_config(json.loads(meta["observation_space"])),
                space_from_config(json.loads(meta["action_space"])),
                int(meta["segment_length"]),
                meta.get("env_id") or None,
                observation_space,
                action_space,
                segment_length,
            )
        elif readonly:
            raise FileNotFoundError(f"no preference store at {self.path}")
        self._readonly = readonly
        self._connection = self._connect()
        if not exists:
            if observation_space is None or action_space is None or segment_length is None:
                self._connection.close()
                raise ValueError("creating a preference store needs observation_space, action_space and segment_length")
            self._create(observation_space, action_space, segment_length, env_id)
        meta = dict(self._connection.execute("SELECT key, value FROM meta").fetchall())
        self.observation_space = space_from_config(json.loads(meta["observation_space"]))
        self.action_space = space_from_config(json.loads(meta["action_space"]))
        self.segment_length = int(meta["segment_length"])
        self.env_id = meta.get("env_id") or None

    # ------------------------------------------------------------------ opening
    def _connect(self) -> sqlite3.Connection:
        if self._readonly:
            uri = f"file:{self.path.resolve()}?mode=ro"
            connection = sqlite3.connect(uri, uri=True, timeout=_BUSY_TIMEOUT, isolation_level=None)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            # With WAL, NORMAL still never corrupts the database on a crash; FULL also makes
            # every commit durable against power loss, which is what a person's labels deserve.
            connection.execute("PRAGMA synchronous=FULL")
        connection.execute("PRAGMA foreign_keys=ON")
        return connection

    def _create(
        self,
        observation_space: spaces.Space[Any],
        action_space: spaces.Space[Any],
        segment_length: int,
        env_id: str | None,
    ) -> None:
        meta = {
            "format": _MAGIC,
            "schema_version": str(SCHEMA_VERSION),
            "observation_space": json.dumps(space_to_config(observation_space)),
            "action_space": json.dumps(space_to_config(action_space)),
            "segment_length": str(int(segment_length)),
            "env_id": env_id or "",
            "created_at": str(time.time()),
        }
        with self._transaction() as cursor:
            # One statement at a time: executescript() would commit the open transaction.
            for statement in filter(str.strip, _SCHEMA.split(";")):
                cursor.execute(statement)
            cursor.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta.items())

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
        cursor = self._connection.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        try:
            yield cursor
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
        else:
            cursor.execute("COMMIT")
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

        An answer to a query that already has one is ignored (the first answer stands, and is
        the one returned), so an answer may be delivered twice, or committed by a viewer
        process before the training process collects it.
        """
        if self._readonly:
            raise PermissionError(f"the preference store {self.path} was opened read-only")
        now = time.time()
        with self._transaction() as cursor:
            for answer in answers:
                cursor.execute(
                    "INSERT OR IGNORE INTO answers (query_id, label, labeler, answered_at, seconds) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (answer.query_id, answer.label, answer.labeler, now, float(answer.seconds)),
                )
                if cursor.rowcount:
                    status = "skipped" if answer.label == "skip" else "answered"
                    cursor.execute("UPDATE queries SET status = ? WHERE id = ?", (status, answer.query_id))
        return self.answers_for([answer.query_id for answer in answers])

    def answers_for(self, query_ids: Sequence[int]) -> list[Answer]:
        """The stored answers to these queries (queries without one are left out), in id order."""
        if not query_ids:
            return []
        found: list[Answer] = []
        ids = sorted(set(int(q) for q in query_ids))
        for start in range(0, len(ids), 500):  # SQLite limits the number of parameters
            chunk = ids[start : start + 500]
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
        """Close the connection (every committed label is already on disk)."""
        self._connection.close()
        self._closed = True

    @property
    def closed(self) -> bool:
        return getattr(self, "_closed", False)

    def __enter__(self) -> PreferenceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        labels = "closed" if getattr(self, "_closed", False) else f"labels={len(self)}"
        return f"PreferenceStore({str(self.path)!r}, {labels})"


def _read_meta_untouched(path: Path) -> dict[str, str]:
    """Read a store's metadata without writing a byte, or raise :class:`StoreError`."""
    if path.stat().st_size == 0:
        raise StoreError(f"{path} is an empty file, not a gym_prefs preference store; pass another path")
    try:
        # Immutable read-only mode: SQLite neither writes nor takes locks.
        connection = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True, timeout=_BUSY_TIMEOUT)
        try:
            meta = dict(connection.execute("SELECT key, value FROM meta").fetchall())
        finally:
            connection.close()
    except sqlite3.DatabaseError as error:
        raise StoreError(
            f"{path} is not a gym_prefs preference store ({error}); it was left untouched. Pass another path."
        ) from error
    if meta.get("format") != _MAGIC:
        raise StoreError(f"{path} is an SQLite database but not a gym_prefs preference store; it was left untouched")
    version = int(meta.get("schema_version", "0"))
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} has store schema version {version}, newer than this gym_prefs understands "
            f"({SCHEMA_VERSION}); upgrade gym_prefs to use it. The file was left untouched."
        )
    return meta
