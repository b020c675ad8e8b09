"""The SQL of leases and votes: several people labelling one store at once (schema version 2).

A lease keeps a pending query on one holder's screen for a while (one lease a query at most); a
vote is one person's label for a query, kept beside the combined answer in the ``answers``
table. Each function works on the cursor of a write transaction (or, for reading, a
connection); :class:`~gym_prefs.label_desk.LabelDesk` decides when each runs, so that choosing a
query and leasing it happen in one transaction, which SQLite serialises across processes.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from gymnasium import spaces
    >>> from gym_prefs.store_create import create_store_file, new_store_meta
    >>> from gym_prefs.store_files import connect_writable
    >>> from gym_prefs.store_tables import insert_queries, transaction
    >>> from gym_prefs.records import SegmentPairs
    >>> path = Path(tempfile.mkdtemp()) / "prefs.db"
    >>> create_store_file(path, new_store_meta(spaces.Discrete(3), spaces.Discrete(2), 2, None), replace_vacant=False)
    >>> connection = connect_writable(path)
    >>> pairs = SegmentPairs(np.zeros((2, 2, 2), np.int64), np.zeros((2, 2, 2), np.int64))
    >>> with transaction(connection, path) as cursor:
    ...     ids = insert_queries(cursor, pairs, source="human", timestep=None)
    ...     put_lease(cursor, free_query(cursor, "ann", "ann", now=0.0), "ann", "t1", expires_at=60.0)
    ...     free_query(cursor, "bob", "bob", now=1.0)  # ann holds query 1: bob is offered query 2
    2
    >>> connection.close()
"""

from __future__ import annotations

import sqlite3
from typing import Any

__all__ = [
    "delete_lease",
    "free_query",
    "insert_vote",
    "lease_token",
    "live_lease",
    "put_lease",
    "query_status",
    "release_holder",
    "renew_lease",
    "vote_of",
    "votes_of",
    "votes_of_multi_vote_answers",
]


def live_lease(cursor: sqlite3.Cursor, holder: str, now: float) -> tuple[int, str] | None:
    """The query id and token of the holder's lease that is live at ``now`` on a pending query, if any."""
    row = cursor.execute(
        "SELECT l.query_id, l.token FROM leases l JOIN queries q ON q.id = l.query_id "
        "WHERE l.holder = ? AND l.expires_at > ? AND q.status = 'pending' ORDER BY l.query_id LIMIT 1",
        (holder, now),
    ).fetchone()
    return None if row is None else (int(row[0]), str(row[1]))


def free_query(cursor: sqlite3.Cursor, holder: str, labeler: str, now: float) -> int | None:
    """The oldest pending query with no lease live at ``now`` of another holder and no vote of ``labeler``."""
    row = cursor.execute(
        "SELECT q.id FROM queries q WHERE q.status = 'pending' "
        "AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.query_id = q.id AND l.holder != ? AND l.expires_at > ?) "
        "AND NOT EXISTS (SELECT 1 FROM votes v WHERE v.query_id = q.id AND v.labeler = ?) "
        "ORDER BY q.id LIMIT 1",
        (holder, now, labeler),
    ).fetchone()
    return None if row is None else int(row[0])


def put_lease(cursor: sqlite3.Cursor, query_id: int, holder: str, token: str, expires_at: float) -> None:
    """Lease a query to ``holder`` until ``expires_at``, replacing any lease it had (expired ones included)."""
    cursor.execute(
        "INSERT OR REPLACE INTO leases (query_id, holder, token, expires_at) VALUES (?, ?, ?, ?)",
        (query_id, holder, token, expires_at),
    )


def renew_lease(cursor: sqlite3.Cursor, query_id: int, token: str, expires_at: float) -> bool:
    """Move the lease with this token to ``expires_at``; ``False`` if the query's lease is no longer it."""
    cursor.execute("UPDATE leases SET expires_at = ? WHERE query_id = ? AND token = ?", (expires_at, query_id, token))
    return bool(cursor.rowcount)


def release_holder(cursor: sqlite3.Cursor, holder: str) -> None:
    """Drop every lease of ``holder``."""
    cursor.execute("DELETE FROM leases WHERE holder = ?", (holder,))


def delete_lease(cursor: sqlite3.Cursor, query_id: int) -> None:
    """Drop the lease of a query, whoever holds it."""
    cursor.execute("DELETE FROM leases WHERE query_id = ?", (query_id,))


def lease_token(cursor: sqlite3.Cursor, query_id: int) -> str | None:
    """The token of the query's lease (live or expired, as long as nobody took it since), if it has one."""
    row = cursor.execute("SELECT token FROM leases WHERE query_id = ?", (query_id,)).fetchone()
    return None if row is None else str(row[0])


def query_status(cursor: sqlite3.Cursor, query_id: int) -> str | None:
    """``pending``, ``answered`` or ``skipped``; ``None`` when the store has no such query."""
    row = cursor.execute("SELECT status FROM queries WHERE id = ?", (query_id,)).fetchone()
    return None if row is None else str(row[0])


def vote_of(cursor: sqlite3.Cursor, query_id: int, labeler: str) -> str | None:
    """The label ``labeler`` voted for this query, if they voted."""
    row = cursor.execute("SELECT label FROM votes WHERE query_id = ? AND labeler = ?", (query_id, labeler)).fetchone()
    return None if row is None else str(row[0])


def insert_vote(cursor: sqlite3.Cursor, query_id: int, labeler: str, label: str, seconds: float, now: float) -> None:
    """Record one person's vote (the caller has checked that they have none for this query yet)."""
    cursor.execute(
        "INSERT INTO votes (query_id, labeler, label, seconds, answered_at) VALUES (?, ?, ?, ?, ?)",
        (query_id, labeler, label, seconds, now),
    )


def votes_of(cursor: sqlite3.Cursor, query_id: int) -> list[tuple[str, str, float]]:
    """The votes for a query as ``(labeler, label, seconds)``, in the order they came."""
    rows = cursor.execute(
        "SELECT labeler, label, seconds FROM votes WHERE query_id = ? ORDER BY answered_at, rowid", (query_id,)
    ).fetchall()
    return [(str(labeler), str(label), float(seconds)) for labeler, label, seconds in rows]


def votes_of_multi_vote_answers(connection: sqlite3.Connection) -> list[tuple[int, str, str]]:
    """``(query_id, vote, combined label)`` of every vote for an answered query that has several votes."""
    rows: list[Any] = connection.execute(
        "SELECT v.query_id, v.label, a.label FROM votes v JOIN answers a ON a.query_id = v.query_id "
        "WHERE v.query_id IN (SELECT query_id FROM votes GROUP BY query_id HAVING COUNT(*) > 1) ORDER BY v.query_id"
    ).fetchall()
    return [(int(query_id), str(vote), str(combined)) for query_id, vote, combined in rows]
