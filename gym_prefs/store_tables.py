"""The SQL of the preference store: the statements that write its tables and the longer ones that read them.

Each function works on an open connection (or the cursor of a write transaction) of a store; the
:class:`~gym_prefs.store.PreferenceStore` holds the connection and decides when each runs. Label
values come from :mod:`gym_prefs.records` as bound parameters, never as text in a statement.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from gymnasium import spaces
    >>> from gym_prefs.store_create import create_store_file, new_store_meta
    >>> from gym_prefs.store_files import connect_writable
    >>> path = Path(tempfile.mkdtemp()) / "prefs.db"
    >>> create_store_file(path, new_store_meta(spaces.Discrete(3), spaces.Discrete(2), 2, None), replace_vacant=False)
    >>> connection = connect_writable(path)
    >>> pairs = SegmentPairs(np.zeros((2, 2, 2), np.int64), np.zeros((2, 2, 2), np.int64))
    >>> with transaction(connection, path) as cursor:
    ...     ids = insert_queries(cursor, pairs, source="oracle", timestep=None)
    ...     insert_answers(cursor, AnswerRows.of([Answer(ids[0], "skip")]), path)
    >>> ids, select_answers(connection, ids)
    ([1, 2], [Answer(query_id=1, label='skip', labeler='unknown', seconds=0.0)])
    >>> connection.close()
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from gym_prefs.records import SKIP, Answer, Query, Segment, SegmentPairs
from gym_prefs.store_codec import AnswerRows, segment_of_row, segment_rows, unpack_array
from gym_prefs.store_errors import StoreError

__all__ = [
    "count_by_status",
    "count_labels",
    "insert_answers",
    "insert_queries",
    "quick_check",
    "select_answers",
    "select_answers_after",
    "select_clips",
    "select_labelled_rows",
    "select_meta",
    "select_pending",
    "select_pending_queries",
    "select_segment",
    "transaction",
]

#: Ids bound in one statement at most: SQLite limits the parameters of a statement (999 in old builds).
_IDS_PER_STATEMENT = 500
_ANSWER_COLUMNS = "query_id, label, labeler, seconds"


@contextmanager
def transaction(connection: sqlite3.Connection, path: Path) -> Iterator[sqlite3.Cursor]:
    """A write transaction on the store at ``path``: committed if the block completes, else rolled back.

    Raises:
        StoreError: the disk is full (SQLite's ``SQLITE_FULL``); nothing of the transaction
            was written.
    """
    cursor = connection.cursor()
    try:
        cursor.execute("BEGIN IMMEDIATE")
        try:
            yield cursor
            cursor.execute("COMMIT")
        except BaseException:
            # SQLite rolls some failures back itself (a full disk may be one of them).
            if connection.in_transaction:
                cursor.execute("ROLLBACK")
            raise
    except sqlite3.OperationalError as error:
        if not _is_disk_full(error):
            raise
        raise StoreError(
            f"the disk holding the preference store {path} is full: nothing of this transaction was "
            "written, every label committed before is kept; free space and start the run again on the same "
            "store."
        ) from error
    finally:
        cursor.close()


def insert_queries(cursor: sqlite3.Cursor, pairs: SegmentPairs, source: str, timestep: int | None) -> list[int]:
    """Insert each pair's two segments and a pending query for it; returns the new query ids."""
    now = time.time()
    ids = []
    for rows in segment_rows(pairs):
        segment_ids = []
        for row in rows:
            cursor.execute(
                "INSERT INTO segments (length, obs, actions, true_rewards, frames) VALUES (?, ?, ?, ?, ?)", row
            )
            segment_ids.append(cursor.lastrowid)
        cursor.execute(
            "INSERT INTO queries (first_segment, second_segment, source, asked_at, timestep, status) "
            "VALUES (?, ?, ?, ?, ?, 'pending')",
            (segment_ids[0], segment_ids[1], source, now, timestep),
        )
        ids.append(int(cursor.lastrowid))  # type: ignore[arg-type]
    return ids


def insert_answers(cursor: sqlite3.Cursor, checked: AnswerRows, path: Path) -> None:
    """Insert answers, all or none; an answer to a query that already has one is ignored.

    Call it inside a write transaction: the query ids are checked there, so nothing can change in
    between, and the error it raises rolls the transaction back.

    Raises:
        StoreError: an answer is refused (see :class:`~gym_prefs.store_codec.AnswerRows`); the
            message names every refused answer.
    """
    query_ids = checked.query_ids
    unknown = sorted(set(query_ids) - _existing_query_ids(cursor, query_ids))
    problems = checked.problems(unknown)
    if problems:
        raise StoreError(
            f"{checked.count} answers were not recorded in {path}, none of them: "
            + "; ".join(problems)
            + ". Drop those answers and record the others."
        )
    now = time.time()
    for query_id, label, labeler, seconds in checked.rows:
        cursor.execute(
            "INSERT OR IGNORE INTO answers (query_id, label, labeler, answered_at, seconds) VALUES (?, ?, ?, ?, ?)",
            (query_id, label, labeler, now, seconds),
        )
        if cursor.rowcount:
            status = "skipped" if label == SKIP else "answered"
            cursor.execute("UPDATE queries SET status = ? WHERE id = ?", (status, query_id))


def select_answers(connection: sqlite3.Connection, query_ids: Sequence[int]) -> list[Answer]:
    """The stored answers to these queries (queries without one are left out), in id order."""
    rows = []
    for chunk in _id_chunks(query_ids):
        rows += connection.execute(
            f"SELECT {_ANSWER_COLUMNS} FROM answers WHERE query_id IN ({', '.join('?' * len(chunk))}) "
            "ORDER BY query_id",
            chunk,
        ).fetchall()
    return [_answer(row) for row in rows]


def select_answers_after(connection: sqlite3.Connection, query_id: int) -> list[Answer]:
    """The stored answers to the queries with an id above ``query_id``, in id order."""
    rows = connection.execute(
        f"SELECT {_ANSWER_COLUMNS} FROM answers WHERE query_id > ? ORDER BY query_id", (query_id,)
    ).fetchall()
    return [_answer(row) for row in rows]


def _answer(row: Sequence[Any]) -> Answer:
    query_id, label, labeler, seconds = row
    return Answer(int(query_id), label, labeler, float(seconds))


def select_labelled_rows(connection: sqlite3.Connection, last: int | None) -> list[Any]:
    """Every label that is trained on (or the newest ``last``) with its segments' columns, in query order.

    Rows are as :func:`~gym_prefs.store_codec.labelled_pairs_of_rows` reads them.
    """
    sql = (
        "SELECT q.id, a.label, s1.obs, s1.actions, s1.true_rewards, s2.obs, s2.actions, s2.true_rewards "
        "FROM answers a JOIN queries q ON q.id = a.query_id "
        "JOIN segments s1 ON s1.id = q.first_segment JOIN segments s2 ON s2.id = q.second_segment "
        "WHERE a.label != ?"
    )
    if last is None:
        return connection.execute(sql + " ORDER BY q.id", (SKIP,)).fetchall()
    # The newest ``last``, read newest first and put back in order.
    return connection.execute(sql + " ORDER BY q.id DESC LIMIT ?", (SKIP, max(0, last))).fetchall()[::-1]


def select_pending(connection: sqlite3.Connection, columns: str, limit: int | None) -> list[Any]:
    """These columns of the queries asked and not answered yet (the oldest ``limit``, or all), oldest first."""
    sql = f"SELECT {columns} FROM queries WHERE status = 'pending' ORDER BY id"
    if limit is None:
        return connection.execute(sql).fetchall()
    return connection.execute(sql + " LIMIT ?", (int(limit),)).fetchall()


def select_pending_queries(connection: sqlite3.Connection, limit: int | None) -> list[Query]:
    """The queries asked and not answered yet, with their segments (the oldest ``limit``, or all), oldest first."""
    rows = select_pending(connection, "id, first_segment, second_segment", limit)
    segment = partial(select_segment, connection)
    return [Query(int(query_id), segment(first), segment(second)) for query_id, first, second in rows]


def select_clips(connection: sqlite3.Connection, query_id: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The clip data stored with a query's two segments, if both have some."""
    rows = connection.execute(
        "SELECT s.frames FROM queries q JOIN segments s ON s.id IN (q.first_segment, q.second_segment) "
        "WHERE q.id = ? ORDER BY s.id",
        (query_id,),
    ).fetchall()
    if len(rows) != 2 or rows[0][0] is None or rows[1][0] is None:
        return None
    return unpack_array(rows[0][0]), unpack_array(rows[1][0])


def select_segment(connection: sqlite3.Connection, segment_id: int) -> Segment:
    """The segment stored under this id (true rewards NaN where none were stored)."""
    row = connection.execute("SELECT obs, actions, true_rewards FROM segments WHERE id = ?", (segment_id,)).fetchone()
    return segment_of_row(*row)


def select_meta(connection: sqlite3.Connection, key: str) -> str | None:
    """The value of a piece of run information in the ``meta`` table, ``None`` if absent."""
    row = connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def count_labels(connection: sqlite3.Connection) -> int:
    """Answered queries, not counting those skipped ("can't tell")."""
    return int(connection.execute("SELECT COUNT(*) FROM answers WHERE label != ?", (SKIP,)).fetchone()[0])


def count_by_status(connection: sqlite3.Connection) -> dict[str, int]:
    """Queries by status (``pending``, ``answered``, ``skipped``) and ``queries`` in all."""
    rows = connection.execute("SELECT status, COUNT(*) FROM queries GROUP BY status").fetchall()
    counts = {"pending": 0, "answered": 0, "skipped": 0, **dict(rows)}
    counts["queries"] = sum(counts[s] for s in ("pending", "answered", "skipped"))
    return counts


def quick_check(connection: sqlite3.Connection) -> list[str]:
    """The damage SQLite's ``PRAGMA quick_check`` finds in the whole file, one a string; ``[]`` when healthy."""
    problems: list[str] = []
    try:
        for row in connection.execute("PRAGMA quick_check"):
            problems.append(str(row[0]))
    except sqlite3.DatabaseError as error:  # damage bad enough to stop the check: after what it found
        problems.append(str(error))
    return [] if problems == ["ok"] else problems


def _existing_query_ids(cursor: sqlite3.Cursor, query_ids: Sequence[int]) -> set[int]:
    """Which of ``query_ids`` are queries of the store."""
    found: set[int] = set()
    for chunk in _id_chunks(query_ids):
        rows = cursor.execute(f"SELECT id FROM queries WHERE id IN ({', '.join('?' * len(chunk))})", chunk)
        found.update(int(row[0]) for row in rows.fetchall())
    return found


def _id_chunks(query_ids: Sequence[int]) -> Iterator[list[int]]:
    """Distinct ids in ascending order, a bounded number at a time: SQLite limits the parameters of a statement."""
    ids = sorted({int(query_id) for query_id in query_ids})
    for start in range(0, len(ids), _IDS_PER_STATEMENT):
        yield ids[start : start + _IDS_PER_STATEMENT]


def _is_disk_full(error: sqlite3.OperationalError) -> bool:
    """Whether SQLite failed because the disk (or the file system's quota) is full: ``SQLITE_FULL``."""
    code = getattr(error, "sqlite_errorcode", None)  # Python 3.11 and newer
    if code is not None:
        return bool(code & 0xFF == sqlite3.SQLITE_FULL)
    return "database or disk is full" in str(error)
