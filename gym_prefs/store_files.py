"""A preference store's file on disk: what is at a path, and connecting to it.

Everything here works on the file alone, before (or below) a :class:`~gym_prefs.store.PreferenceStore`
exists for it:

* **Inspecting** a path without writing a byte to it (:func:`inspect_path`): nothing there, a file
  that holds no data yet ("vacant"), a store this gym_prefs can open, or a refusal that says what
  the file is instead (another format, another SQLite database, a damaged store, a newer one).
* **Connecting** for reading (:func:`connect_readonly`, which never writes to the store nor to its
  ``-wal`` file) or for writing (:func:`connect_writable`, which proves at once that writing works).

Creating a store atomically is :mod:`gym_prefs.store_create`, and opening one (these steps in
their order) :mod:`gym_prefs.store_open`; both use the messages here for what they refuse.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "prefs.db"
    >>> inspect_path(path)
    'absent'
    >>> path.write_bytes(b"")
    0
    >>> inspect_path(path)  # a file without data: a new store may replace it
    'vacant'
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import Path
from typing import Literal

from gym_prefs.store_errors import StoreError

__all__ = [
    "BUSY_TIMEOUT",
    "MAGIC",
    "SCHEMA_VERSION",
    "VACANT_WHAT",
    "connect_readonly",
    "connect_writable",
    "damaged_message",
    "file_size",
    "inspect_path",
    "read_meta_untouched",
    "sidecar",
    "unreadable_message",
    "unwritable_message",
]

#: Written into every store; a store with a larger number was made by a newer gym_prefs.
#: Version 2 added the ``leases`` and ``votes`` tables (several people labelling at once).
SCHEMA_VERSION = 2
#: The meta ``format`` of every store: what tells a store from any other SQLite database.
MAGIC = "gym_prefs.PreferenceStore"
#: How long a writer waits for another process's transaction before giving up (seconds).
BUSY_TIMEOUT = 60.0
#: SQLite's result code for a file that is not a database (its header is not SQLite's).
_SQLITE_NOTADB = 26
#: Tables every store has (a store whose meta says it is ours but lacks one is damaged).
_TABLES = ("meta", "segments", "queries", "answers")
#: Tables every store of schema version 2 or newer has besides.
_TABLES_2 = ("leases", "votes")
#: Meta keys every store has.
_META_KEYS = ("format", "schema_version", "observation_space", "action_space", "segment_length")

# ---------------------------------------------------------------------- inspecting a file
#: What counts as a file that holds no store yet (and is replaced when creating one).
VACANT_WHAT = "an empty file or an SQLite database without a single table (what an interrupted creation leaves)"


def inspect_path(path: Path) -> Literal["absent", "vacant"] | dict[str, str]:
    """What is at ``path``, read without writing a byte to it.

    Returns:
        ``"absent"`` (no file), ``"vacant"`` (a file that holds no data, see :data:`VACANT_WHAT`)
        or the meta of a store that this gym_prefs can open.

    Raises:
        StoreError: anything else: not a regular file, another format, another SQLite database,
            a newer store, a damaged store, or a file this process cannot read.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise StoreError(
                f"{path} is a link to {os.readlink(path)}, which does not exist; pass the path of the store itself"
            ) from None
        return "absent"
    except OSError as error:
        raise StoreError(f"cannot look at {path} ({error}); check that this user may open its folder") from error
    if stat.S_ISDIR(info.st_mode):
        raise StoreError(
            f"{path} is a folder, not a preference store; pass the path of a store file, "
            f"such as {path / 'preferences.db'}"
        )
    if not stat.S_ISREG(info.st_mode):
        raise StoreError(f"{path} is not a regular file, so not a preference store; it was left untouched")
    if info.st_size == 0 and file_size(sidecar(path, "-wal")) == 0:
        return "vacant"
    # The file is read through SQLite only: closing any descriptor of a database file drops
    # every lock that SQLite holds on it in this process (POSIX lock semantics), after which
    # another process may delete the write-ahead log under this process's live connections.
    if not os.access(path, os.R_OK):
        raise StoreError(f"cannot read {path}; check that this user may read it. It was left untouched.")
    try:
        connection = connect_readonly(path)
    except sqlite3.Error as error:
        raise StoreError(unreadable_message(path, error)) from error
    try:
        entries = connection.execute("SELECT type, name FROM sqlite_master").fetchall()
        if not entries:
            return "vacant"
        tables = {str(name) for kind, name in entries if kind == "table"}
        if "meta" not in tables:
            raise StoreError(_foreign_sqlite(path))
        try:
            meta = {str(key): str(value) for key, value in connection.execute("SELECT key, value FROM meta")}
        except sqlite3.OperationalError as error:
            if "no such column" not in str(error):
                raise
            raise StoreError(_foreign_sqlite(path)) from error
    except sqlite3.Error as error:
        raise StoreError(unreadable_message(path, error)) from error
    finally:
        connection.close()
    if meta.get("format") != MAGIC:
        raise StoreError(_foreign_sqlite(path))
    try:
        version = int(meta.get("schema_version", "0"))
    except ValueError:
        raise StoreError(
            damaged_message(path, f"its schema version {meta['schema_version']!r} is not a number")
        ) from None
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} has store schema version {version}, newer than this gym_prefs understands "
            f"({SCHEMA_VERSION}); upgrade gym_prefs to use it. The file was left untouched."
        )
    required = _TABLES + (_TABLES_2 if version >= 2 else ())
    missing = [f"table {name}" for name in required if name not in tables]
    missing += [f"meta {key}" for key in _META_KEYS if key not in meta]
    if missing:
        raise StoreError(damaged_message(path, f"it is marked as a gym_prefs store but lacks {', '.join(missing)}"))
    try:
        json.loads(meta["observation_space"])
        json.loads(meta["action_space"])
        int(meta["segment_length"])
    except ValueError as error:
        raise StoreError(damaged_message(path, f"its meta cannot be read: {error}")) from error
    return meta


def read_meta_untouched(path: Path) -> dict[str, str]:
    """Read a store's metadata without writing a byte.

    Raises:
        FileNotFoundError: there is no file at ``path``.
        StoreError: the file holds no store yet (see :data:`VACANT_WHAT`), or anything
            :func:`inspect_path` refuses.
    """
    found = inspect_path(path)
    if found == "absent":
        raise FileNotFoundError(f"no preference store at {path}")
    if found == "vacant":
        raise StoreError(
            f"{path} holds no preference store yet: it is {VACANT_WHAT}. A training run "
            "creates the store there; read it once one has."
        )
    return found


def _foreign_sqlite(path: Path) -> str:
    return (
        f"{path} is an SQLite database but not a gym_prefs preference store; it was left untouched. Pass another path."
    )


def damaged_message(path: Path, problem: object) -> str:
    """The message for a store (or SQLite file) that is damaged."""
    return (
        f"the preference store {path} is damaged ({problem}); it was left untouched. Its labels may be "
        f"recoverable, with the sqlite3 command-line tool, from a copy of it (copy.db, with {path.name}-wal "
        "as copy.db-wal if there is one): `sqlite3 copy.db .recover > recovered.sql` (sqlite3 3.29 or newer, "
        "built with the sqlite_dbpage table as sqlite.org's builds are), or else `sqlite3 copy.db .dump > "
        "recovered.sql` and change its last line `ROLLBACK; -- due to errors` into `COMMIT;`; then "
        "`sqlite3 recovered.db < recovered.sql`, and open recovered.db with readonly=True to see what it "
        "holds. Keep the damaged file until then; to train meanwhile, pass another store path."
    )


def unreadable_message(path: Path, error: sqlite3.Error) -> str:
    """The message for a file whose reading through SQLite failed with ``error``."""
    text = str(error)
    if getattr(error, "sqlite_errorcode", None) == _SQLITE_NOTADB or "file is not a database" in text:
        return (
            f"{path} is not a gym_prefs preference store: it holds another format, not an SQLite database. "
            "It was left untouched; pass another path."
        )
    if isinstance(error, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
        return (
            f"{path} is locked by another program ({text}); it was left untouched. "
            "Try again once that program is done with it."
        )
    if isinstance(error, sqlite3.OperationalError) and _is_unwritable(error):
        return (
            f"SQLite cannot open {path} here ({text}): check that this user may read it, and its -wal and -shm "
            "files if there are any, and open its folder. It was left untouched."
        )
    return damaged_message(path, error)


def unwritable_message(path: Path, reason: str) -> str:
    """The message for a store that this process cannot write (``reason`` says why)."""
    return (
        f"the preference store {path} cannot be written by this process ({reason}): the file, or its "
        f"folder {path.parent} (where SQLite keeps the store's -wal and -shm files), is read-only. "
        "Nothing was written. To read it, open it with readonly=True (as `gym-prefs info`, `fit` and "
        "`export` do); to train on it or label it, copy it to a writable folder and use the copy."
    )


# ---------------------------------------------------------------------- connecting to a store
def _connect(path: Path, **parameters: str) -> sqlite3.Connection:
    """A connection to ``path`` opened with these URI parameters (``mode=...``), in autocommit mode.

    ``check_same_thread=False``: a store is used by one thread at a time, but it may be closed
    from another one (a garbage collector's finaliser, a thread that outlived the one that
    opened it).
    """
    return sqlite3.connect(
        _uri(path, **parameters), uri=True, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
    )


def connect_readonly(path: Path) -> sqlite3.Connection:
    """A connection that reads ``path`` and never writes to it (nor to its -wal file).

    Raises:
        StoreError: the folder is read-only and the store has changes in its -wal file.
        sqlite3.Error: SQLite cannot read it.
    """
    connection: sqlite3.Connection | None = None
    try:
        connection = _connect(path, mode="ro")
        # SQLite opens the -wal and -shm files at the first read: read now, to know it can.
        connection.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        return connection
    except sqlite3.OperationalError as error:
        if connection is not None:
            connection.close()
        # A reader of a WAL store needs its -shm file, which SQLite cannot create in a read-only
        # folder ("unable to open database file" or "attempt to write a readonly database",
        # depending on what is there). Anything else is a real failure.
        if not _is_unwritable(error) or _writable_folder(path.parent):
            raise
        wal = sidecar(path, "-wal")
        if file_size(wal) > 0:
            raise StoreError(
                f"the preference store {path} cannot be read here: it has changes not yet merged into the file "
                f"({wal}) and its folder is read-only. Copy the store with its -wal file to a writable folder "
                "and open the copy. Both were left untouched."
            ) from error
    # Nothing waits in a write-ahead log, and nobody can write in this folder: the file alone is
    # the whole store and cannot change, which is what immutable=1 tells SQLite (no -shm needed).
    return _connect(path, mode="ro", immutable="1")


def connect_writable(path: Path) -> sqlite3.Connection:
    """Connect to the store at ``path`` for writing, and prove now that writing works (before a run relies on it).

    Raises:
        StoreError: this process cannot write the store (the message says what to do instead),
            or the store is damaged.
        sqlite3.OperationalError: SQLite cannot open it for another reason.
    """
    connection: sqlite3.Connection | None = None
    try:
        # mode=rw: never create a file here (creating is create_store_file's job, done atomically).
        connection = _connect(path, mode="rw")
        connection.execute("PRAGMA journal_mode=WAL")
        # With WAL, NORMAL still never corrupts the database on a crash; FULL also makes
        # every commit durable against power loss, which is what a person's labels deserve.
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute("PRAGMA foreign_keys=ON")
        # Permission bits do not stop root, and SQLite finds out that it cannot write only
        # at the first change of a page: change one in a transaction that is rolled back,
        # which writes nothing.
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.execute("UPDATE meta SET value = value WHERE key = 'format'")
        finally:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
    except sqlite3.OperationalError as error:
        if connection is not None:
            connection.close()
        if not _is_unwritable(error):
            raise
        raise StoreError(unwritable_message(path, str(error))) from error
    except sqlite3.DatabaseError as error:
        if connection is not None:
            connection.close()
        raise StoreError(damaged_message(path, error)) from error
    return connection


def _is_unwritable(error: sqlite3.OperationalError) -> bool:
    text = str(error).lower()
    return "readonly" in text or "read-only" in text or "unable to open" in text


def _writable_folder(folder: Path) -> bool:
    # access() also answers no for a read-only file system, where root may not write either.
    return os.access(folder, os.W_OK | os.X_OK)


def _uri(path: Path, **parameters: str) -> str:
    """An SQLite URI for ``path`` (percent-encoded, so any file name works)."""
    return path.resolve().as_uri() + "?" + "&".join(f"{key}={value}" for key, value in parameters.items())


def sidecar(path: Path, suffix: str) -> Path:
    """The file SQLite keeps beside a store: ``suffix`` is ``-wal``, ``-shm`` or ``-journal``."""
    return path.with_name(path.name + suffix)


def file_size(path: Path) -> int:
    """The size of the file at ``path`` in bytes, 0 where there is none."""
    try:
        return path.stat().st_size
    except OSError:
        return 0
