"""Creating a preference store atomically: nothing half-made is ever seen, nothing is clobbered.

A new store is built completely in a hidden temporary file beside its path
(``.<name>.<pid>.<host>.<random>.creating``) and then published under its name in one step: a
hard link, which refuses to replace anything, or, where a file that holds no data is there (or the
file system has no hard links), a rename under an ``flock`` that re-checks the file first. So no
process ever sees a half-made store, two processes creating one store at once both end up opening
the same one, and a process killed midway leaves at most its temporary file, which the next
creation in that folder removes (:func:`remove_stale_creations`).

Inspecting a path and connecting to a store are :mod:`gym_prefs.store_files`.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from gymnasium import spaces
    >>> from gym_prefs.store_files import inspect_path
    >>> path = Path(tempfile.mkdtemp()) / "prefs.db"
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
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

from gymnasium import spaces

from gym_prefs.records import LABELS
from gym_prefs.spaces import space_to_config
from gym_prefs.store_errors import StoreError
from gym_prefs.store_files import MAGIC, SCHEMA_VERSION, file_size, inspect_path, sidecar

try:  # POSIX only; without it (Windows) replacing a vacant file takes no lock, see _replace_vacant
    import fcntl
except ImportError:  # pragma: no cover - exercised on Windows only
    fcntl = None  # type: ignore[assignment]

__all__ = ["create_store_file", "new_store_meta", "remove_stale_creations", "upgrade_store"]

#: Hidden name of a store being created: ``.<name>.<pid>.<host>.<random>.creating``.
_CREATING = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<host>[A-Za-z0-9]*)\.[0-9a-f]+\.creating$")

#: The label column accepts exactly :data:`~gym_prefs.records.LABELS`. Built from them, the text
#: is byte for byte what every store since schema version 1 holds in its ``sqlite_master``.
_LABEL_CHECK = "label IN (" + ", ".join(f"'{label}'" for label in LABELS) + ")"

#: The tables of schema version 1, the first stores' (byte for byte what they hold in ``sqlite_master``).
_SCHEMA_1 = f"""
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
    label TEXT NOT NULL CHECK ({_LABEL_CHECK}),
    labeler TEXT NOT NULL,
    answered_at REAL NOT NULL,
    seconds REAL NOT NULL
);
CREATE INDEX queries_by_status ON queries(status);
"""

#: What schema version 2 adds, for several people labelling one store at once: a lease keeps a
#: query on one person's screen, and each person's vote is kept beside the combined answer
#: (see :mod:`gym_prefs.label_desk`). Only tables are added, so upgrading a version-1 store
#: changes none of its rows.
_SCHEMA_2_ADDED = f"""
CREATE TABLE leases (
    query_id INTEGER PRIMARY KEY REFERENCES queries(id),
    holder TEXT NOT NULL,
    token TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE votes (
    query_id INTEGER NOT NULL REFERENCES queries(id),
    labeler TEXT NOT NULL,
    label TEXT NOT NULL CHECK ({_LABEL_CHECK}),
    seconds REAL NOT NULL,
    answered_at REAL NOT NULL,
    PRIMARY KEY (query_id, labeler)
);
"""

#: The tables of a new store (schema version :data:`~gym_prefs.store_files.SCHEMA_VERSION`).
_SCHEMA = _SCHEMA_1 + _SCHEMA_2_ADDED


def new_store_meta(
    observation_space: spaces.Space[Any], action_space: spaces.Space[Any], segment_length: int, env_id: str | None
) -> dict[str, str]:
    """The meta table of a new store made for these spaces and segment length."""
    return {
        "format": MAGIC,
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
        if file_size(sidecar(temporary, "-wal")) > 0:
            raise sqlite3.OperationalError(
                f"could not merge the new store's write-ahead log into {temporary.name}; is the disk full?"
            )
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
    except BaseException:
        for leftover in (temporary, *(sidecar(temporary, s) for s in ("-wal", "-shm", "-journal"))):
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
                sidecar(path, suffix).unlink()
        os.replace(temporary, path)
        _fsync_folder(path.parent)
    finally:
        os.close(fd)


def upgrade_store(connection: sqlite3.Connection) -> None:
    """Bring a store of an older schema to :data:`~gym_prefs.store_files.SCHEMA_VERSION`, in one transaction.

    Version 1 to 2 adds the ``leases`` and ``votes`` tables and changes no existing row. The
    version is read again inside the write transaction, so of several processes opening one
    old store at once exactly one upgrades it; a process killed midway leaves it as it was.

    Args:
        connection: a writable connection to the store (autocommit, as
            :func:`~gym_prefs.store_files.connect_writable` makes).
    """
    connection.execute("BEGIN IMMEDIATE")
    try:
        row = connection.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is not None and int(row[0]) < 2:
            # One statement at a time: executescript() would commit the open transaction.
            for statement in filter(str.strip, _SCHEMA_2_ADDED.split(";")):
                connection.execute(statement)
            connection.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
        connection.execute("COMMIT")
    finally:
        if connection.in_transaction:
            connection.execute("ROLLBACK")


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
