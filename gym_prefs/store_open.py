"""Opening a preference store: the steps between a path and a connection that is safe to use.

What :class:`~gym_prefs.store.PreferenceStore` does before it has a connection, in this order,
so that a store that will be refused is refused before anything touches its file:

1. the arguments are checked (a call that fails on them leaves no file and no folder behind);
2. the file is inspected without writing a byte (:func:`~gym_prefs.store_files.inspect_path`),
   and when there is no store yet one is created atomically (:mod:`gym_prefs.store_create`);
3. the store's spaces and segment length are compared with the caller's (:class:`StoreSpec`);
4. only then is it connected to, for reading or for writing;
5. a writable store of an older schema is upgraded, in one transaction (a read-only one is read
   as it is: what its version lacks reads as empty).
"""

from __future__ import annotations

import json
import operator
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from gymnasium import spaces

from gym_prefs.spaces import space_from_config, spaces_match
from gym_prefs.store_create import create_store_file, new_store_meta, remove_stale_creations, upgrade_store
from gym_prefs.store_errors import StoreError
from gym_prefs.store_files import (
    SCHEMA_VERSION,
    VACANT_WHAT,
    connect_readonly,
    connect_writable,
    damaged_message,
    inspect_path,
    read_meta_untouched,
    unreadable_message,
    unwritable_message,
)

__all__ = ["StoreSpec", "open_store"]

#: How often opening retries when other processes keep creating or replacing the file meanwhile.
_OPEN_ATTEMPTS = 10


@dataclass(frozen=True)
class StoreSpec:
    """What a store was made for: the env's spaces, the segment length and (for reference) the env id.

    Attributes:
        observation_space: the env's observation space.
        action_space: the env's action space.
        segment_length: steps per segment.
        env_id: the env's id, or ``None`` if the store's creator did not say.
        schema_version: the version of the store's tables (older ones lack the ``leases`` and
            ``votes`` tables, and are read as if they were empty).

    Example:
        >>> spec = StoreSpec(spaces.Discrete(3), spaces.Discrete(2), 4, "Toy-v0")
        >>> spec.check("prefs.db", spaces.Discrete(3), spaces.Discrete(2), 4)  # matches: no error
        >>> spec.check("prefs.db", spaces.Discrete(5), None, 6)
        Traceback (most recent call last):
        ...
        gym_prefs.store_errors.StoreError: the preference store prefs.db was made for Toy-v0 with observations
        Discrete(3) (this env: Discrete(5)); segments of 4 steps (this run: 6). Use another store path ...
    """

    observation_space: spaces.Space[Any]
    action_space: spaces.Space[Any]
    segment_length: int
    env_id: str | None
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def of_meta(cls, meta: dict[str, str]) -> StoreSpec:
        """The spec recorded in a store's meta table."""
        return cls(
            space_from_config(json.loads(meta["observation_space"])),
            space_from_config(json.loads(meta["action_space"])),
            int(meta["segment_length"]),
            meta.get("env_id") or None,
            int(meta.get("schema_version", SCHEMA_VERSION)),
        )

    def check(
        self,
        path: str | os.PathLike[str],
        observation_space: spaces.Space[Any] | None,
        action_space: spaces.Space[Any] | None,
        segment_length: int | None,
    ) -> None:
        """Raise :class:`StoreError` naming every difference from what is given (``None``: not checked)."""
        mismatch = []
        if observation_space is not None and not spaces_match(self.observation_space, observation_space):
            mismatch.append(f"observations {self.observation_space} (this env: {observation_space})")
        if action_space is not None and not spaces_match(self.action_space, action_space):
            mismatch.append(f"actions {self.action_space} (this env: {action_space})")
        if segment_length is not None and self.segment_length != segment_length:
            mismatch.append(f"segments of {self.segment_length} steps (this run: {segment_length})")
        if mismatch:
            made_for = f" for {self.env_id}" if self.env_id else ""
            raise StoreError(
                f"the preference store {path} was made{made_for} with "
                + "; ".join(mismatch)
                + ". Use another store path for this env, or export the labels you need."
            )


def open_store(
    path: Path,
    readonly: bool,
    observation_space: spaces.Space[Any] | None,
    action_space: spaces.Space[Any] | None,
    segment_length: int | None,
    env_id: str | None,
) -> tuple[sqlite3.Connection, StoreSpec]:
    """Open the store at ``path`` (creating it unless ``readonly``); see the module docstring.

    Returns:
        The connection (autocommit; for writing unless ``readonly``) and what the store was made for.

    Raises:
        StoreError, FileNotFoundError, ValueError: as :class:`~gym_prefs.store.PreferenceStore` documents.
    """
    # Arguments first: a call that fails on them must not leave a file or folder behind.
    if segment_length is not None:
        segment_length = _positive_int(segment_length, "segment_length")
    if readonly:
        meta = read_meta_untouched(path)
    else:
        if path.is_file() and not os.access(path, os.W_OK):
            # Before reading it too: in a writable folder, even SQLite's read-only reading would
            # leave -wal and -shm files of this user behind.
            raise StoreError(unwritable_message(path, "this user may not write to the file"))
        meta = _open_or_create(path, observation_space, action_space, segment_length, env_id)
    StoreSpec.of_meta(meta).check(path, observation_space, action_space, segment_length)
    if readonly:
        try:
            connection = connect_readonly(path)
        except sqlite3.Error as error:
            raise StoreError(unreadable_message(path, error)) from error
    else:
        connection = connect_writable(path)
        # A creation killed after publishing its store, before removing its temporary file.
        remove_stale_creations(path.parent)
        if int(meta["schema_version"]) < SCHEMA_VERSION:
            try:
                upgrade_store(connection)
            except sqlite3.DatabaseError as error:
                connection.close()
                raise StoreError(
                    f"the preference store {path} could not be upgraded to schema version {SCHEMA_VERSION} "
                    f"({error}); it was left as it was. Free disk space if it is full and open it again, or "
                    "open it with readonly=True to read it as it is."
                ) from error
    try:
        # Read again through the connection: this is the store it will read and write.
        meta = dict(connection.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.DatabaseError as error:
        connection.close()
        raise StoreError(damaged_message(path, error)) from error
    return connection, StoreSpec.of_meta(meta)


def _open_or_create(
    path: Path,
    observation_space: spaces.Space[Any] | None,
    action_space: spaces.Space[Any] | None,
    segment_length: int | None,
    env_id: str | None,
) -> dict[str, str]:
    """The meta of the store at ``path``, created first (atomically) if there is none."""
    for _ in range(_OPEN_ATTEMPTS):
        found = inspect_path(path)
        if isinstance(found, dict):
            return found
        if observation_space is None or action_space is None or segment_length is None:
            message = (
                "creating a preference store needs observation_space, action_space and segment_length"
                f" (there is {'no file' if found == 'absent' else VACANT_WHAT} at {path})"
            )
            raise ValueError(message) if found == "absent" else StoreError(message)
        new_meta = new_store_meta(observation_space, action_space, segment_length, env_id)
        create_store_file(path, new_meta, replace_vacant=found == "vacant")
        # Whether this process or a concurrent one published the store, open what is there now.
    raise StoreError(
        f"could not open or create a preference store at {path}: other processes kept creating "
        "or replacing the file meanwhile. Try again, or pass another path."
    )


def _positive_int(value: object, name: str) -> int:
    try:
        number = operator.index(cast(Any, value))
    except TypeError:
        raise ValueError(f"{name} must be a positive integer, got {value!r}") from None
    if number <= 0:
        raise ValueError(f"{name} must be a positive integer, got {number}")
    return number
