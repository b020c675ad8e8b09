"""A preference store's file on disk: what is at a path, creating a store there, connecting to it.

Everything here works on the file alone, before (or below) a :class:`~gym_prefs.store.PreferenceStore`
exists for it:

* **Inspecting** a path without writing a byte to it (:func:`inspect_path`): nothing there, a file
  that holds no data yet ("vacant"), a store this gym_prefs can open, or a refusal that says what
  the file is instead (another format, another SQLite database, a damaged store, a newer one).
* **Creating** a store atomically (:func:`create_store_file`): it is built completely in a hidden
  temporary file beside its path and then published under its name in one step, so no process
  ever sees a half-made store; the temporary files of creations killed midway are removed later
  (:func:`remove_stale_creations`).
* **Connecting** for reading (:func:`connect_readonly`, which never writes to the store nor to its
  ``-wal`` file) or for writing (:func:`connect_writable`, which proves at once that writing works).

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from gymnasium import spaces
    >>> path = Path(tempfile.mkdtemp()) / "prefs.db"
    >>> inspect_path(path)
    'absent'
    >>> create_store_file(path, new_store_meta(spaces.Discrete(3), spaces.Discrete(2), 4, None), replace_vacant=False)
    >>> inspect_path(path)["segment_length"]
    '4'
"""

from __future__ import annotations

import errno
import json
import os
import platform
import re
import secrets
import sqlite3
import stat
import time
from contextlib import suppress
from pathlib import Path
from typing import Any, Literal

from gymnasium import spaces

from gym_prefs.spaces import space_to_config
from gym_prefs.store_errors import StoreError

try:  # POSIX only; without it (Windows) replacing a vacant file takes no lock, see _replace_vacant
    import fcntl
except ImportError:  # pragma: no cover - exercised on Windows only
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "BUSY_TIMEOUT",
    "SCHEMA_VERSION",
    "VACANT_WHAT",
    "connect_readonly",
    "connect_writable",
    "create_store_file",
    "damaged_message",
    "inspect_path",
    "new_store_meta",
    "read_meta_untouched",
    "remove_stale_creations",
    "unreadable_message",
    "unwritable_message",
]

#: Written into every store; a store with a larger number was made by a newer gym_prefs.
SCHEMA_VERSION = 1
_MAGIC = "gym_prefs.PreferenceStore"
#: How long a writer waits for another process's transaction before giving up (seconds).
BUSY_TIMEOUT = 60.0
#: SQLite's result code for a file that is not a database (its header is not SQLite's).
_SQLITE_NOTADB = 26
#: Tables every store has (a store whose meta says it is ours but lacks one is damaged).
_TABLES = ("meta", "segments", "queries", "answers")
#: Meta keys every store has.
_META_KEYS = ("format", "schema_version", "observation_space", "action_space", "segment_length")
#: Hidden name of a store being created: ``.<name>.<pid>.<host>.<random>.creating``.
_CREATING = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<host>[A-Za-z0-9]*)\.[0-9a-f]+\.creating$")

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
    if info.st_size == 0 and _size(_sidecar(path, "-wal")) == 0:
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
    if meta.get("format") != _MAGIC:
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
    missing = [f"table {name}" for name in _TABLES if name not in tables]
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
        wal = _sidecar(path, "-wal")
        if _size(wal) > 0:
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


def _sidecar(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# ---------------------------------------------------------------------- creating a store
def new_store_meta(
    observation_space: spaces.Space[Any], action_space: spaces.Space[Any], segment_length: int, env_id: str | None
) -> dict[str, str]:
    """The meta table of a new store made for these spaces and segment length."""
    return {
        "format": _MAGIC,
        "schema_version": str(SCHEMA_VERSION),
        "observation_space": json.dumps(space_to_config(observation_space)),
        "action_space": json.dumps(space_to_config(action_space)),
        "segment_length": str(int(segment_length)),
        "env_id": env_id or "",
        "created_at": str(time.time()),
    }


def create_store_file(path: Path, meta: dict[str, str], replace_vacant: bool) -> None:
    """Publish a new store at ``path`` in one atomic step.

    The store is built completely in a hidden temporary file beside ``path`` and then given its
    name, so no process ever sees a half-made store, and one killed meanwhile leaves at most its
    temporary file (removed by the next creation in that folder). Returns quietly if another
    process published a store at ``path`` first: the caller opens whatever is there then.

    Args:
        path: where the store goes.
        meta: the new store's meta table.
        replace_vacant: ``path`` holds a file without data, to be replaced.
    """
    created = _make_folders(path.parent)
    try:
        remove_stale_creations(path.parent)
        temporary = _build(path, meta)
        try:
            if replace_vacant:
                _replace_vacant(path, temporary)
            else:
                _publish(path, temporary)
        finally:
            with suppress(FileNotFoundError):
                temporary.unlink()
    except BaseException:
        for folder in reversed(created):  # a failed call leaves no folder behind
            with suppress(OSError):
                folder.rmdir()
        raise


def _make_folders(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; returns those this call created, outermost first."""
    missing = []
    while not folder.exists() and folder.parent != folder:
        missing.append(folder)
        folder = folder.parent
    created: list[Path] = []
    for each in reversed(missing):
        try:
            each.mkdir()
        except FileExistsError:
            continue
        except OSError as error:
            for done in reversed(created):
                with suppress(OSError):
                    done.rmdir()
            raise StoreError(f"cannot create the folder {each} for a preference store ({error})") from error
        created.append(each)
    return created


def _build(path: Path, meta: dict[str, str]) -> Path:
    """Write a complete new store into a hidden temporary file beside ``path``; returns its path."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{_host_tag()}.{secrets.token_hex(4)}.creating")
    try:
        try:
            connection = sqlite3.connect(temporary, isolation_level=None)
        except sqlite3.OperationalError as error:
            raise StoreError(
                f"cannot create the preference store {path} ({error}): this process cannot write in "
                f"{path.parent}. Pass a path in a writable folder."
            ) from error
        try:
            # Stored in the file's header, so the store is in WAL mode from its first opening.
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute("BEGIN IMMEDIATE")
            # One statement at a time: executescript() would commit the open transaction.
            for statement in filter(str.strip, _SCHEMA.split(";")):
                connection.execute(statement)
            connection.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta.items())
            connection.execute("COMMIT")
        finally:
            # The last connection to close merges the write-ahead log into the file and deletes
            # it: the file alone is then the whole store, ready to be given its name.
            connection.close()
        if _size(_sidecar(temporary, "-wal")) > 0:
            raise sqlite3.OperationalError(
                f"could not merge the new store's write-ahead log into {temporary.name}; is the disk full?"
            )
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
    except BaseException:
        for leftover in (temporary, *(_sidecar(temporary, s) for s in ("-wal", "-shm", "-journal"))):
            with suppress(FileNotFoundError):
                leftover.unlink()
        raise
    return temporary


#: What os.link raises where the file system has no hard links.
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV, errno.EMLINK}


def _publish(path: Path, temporary: Path) -> None:
    """Give the complete store ``temporary`` the name ``path``, unless a file has that name already."""
    try:
        os.link(temporary, path)  # atomic, and refuses to replace anything
    except FileExistsError:
        return  # another process was first; the caller opens its store
    except (OSError, NotImplementedError) as error:
        if isinstance(error, OSError) and error.errno not in _NO_HARD_LINKS:
            raise
        # No hard links on this file system: claim the name with an empty file (which counts as
        # no store, so a process killed right after leaves nothing in the way), then swap the
        # store in under the same protocol as any file without data.
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            return
        _replace_vacant(path, temporary)
        return
    _fsync_folder(path.parent)


def _replace_vacant(path: Path, temporary: Path) -> None:
    """Replace the file without data at ``path`` by the complete store ``temporary``.

    Every process replacing a file holds an ``flock`` on it meanwhile and checks, once it has
    it, that the file is still at ``path`` and still holds no data; so of two processes only the
    first replaces it, and the second finds the first one's store there.
    """
    if fcntl is None:  # pragma: no cover - Windows: no flock (and no replacing an open file)
        if inspect_path(path) == "vacant":
            os.replace(temporary, path)
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return  # gone meanwhile: the caller looks again
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if not same or inspect_path(path) != "vacant":
            return
        # A -wal file of the old file would be applied to the new store; it holds no data (the
        # file was found vacant with it), so it goes, with the old -shm and any rollback journal.
        for suffix in ("-wal", "-shm", "-journal"):
            with suppress(FileNotFoundError):
                _sidecar(path, suffix).unlink()
        os.replace(temporary, path)
        _fsync_folder(path.parent)
    finally:
        os.close(fd)


def remove_stale_creations(folder: Path) -> None:
    """Remove the temporary files of creations in ``folder`` whose process died (killed meanwhile)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    host = _host_tag()
    for name in names:
        base = name
        for suffix in ("-wal", "-shm", "-journal"):
            base = base.removesuffix(suffix)
        match = _CREATING.match(base)
        if match and match["host"] == host and not _pid_alive(int(match["pid"])):
            with suppress(OSError):
                (folder / name).unlink()


def _pid_alive(pid: int) -> bool:
    if os.name == "nt" or pid <= 0 or pid == os.getpid():  # pragma: no cover - Windows
        return True  # (os.kill(pid, 0) on Windows would send a Ctrl+C): keep its files
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # alive, owned by another user
    return True


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", platform.node())[:40]


def _fsync_folder(folder: Path) -> None:
    """Make a new name in ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    if os.name == "nt":  # pragma: no cover
        return
    with suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
