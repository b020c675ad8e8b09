"""Creating a preference store: its tables, atomic creation, files without data, races and kills."""

import errno
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from contextlib import closing

import pytest
from store_helpers import ACT, LENGTH, OBS, digest, new_store, pairs

from gym_prefs import Answer, PreferenceStore, StoreError
from gym_prefs.store import SCHEMA_VERSION
from gym_prefs.store_create import _host_tag

#: The tables of schema version 1, as the first stores were made (tests/test_store_upgrade.py
#: builds version-1 stores from it).
SCHEMA_1 = """
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

#: The tables of schema version 2: version 1's and two more. A store made now holds the same text in
#: its sqlite_master, byte for byte: changing the tables needs a new SCHEMA_VERSION.
SCHEMA_2 = (
    SCHEMA_1
    + """
CREATE TABLE leases (
    query_id INTEGER PRIMARY KEY REFERENCES queries(id),
    holder TEXT NOT NULL,
    token TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE votes (
    query_id INTEGER NOT NULL REFERENCES queries(id),
    labeler TEXT NOT NULL,
    label TEXT NOT NULL CHECK (label IN ('first', 'second', 'equal', 'skip')),
    seconds REAL NOT NULL,
    answered_at REAL NOT NULL,
    PRIMARY KEY (query_id, labeler)
);
"""
)


def test_a_new_store_has_the_tables_of_schema_version_2_byte_for_byte(tmp_path):
    new_store(tmp_path / "p.db").close()
    first = sqlite3.connect(tmp_path / "first.db")
    for statement in filter(str.strip, SCHEMA_2.split(";")):
        first.execute(statement)
    listing = "SELECT type, name, sql FROM sqlite_master ORDER BY name"
    with closing(sqlite3.connect(tmp_path / "p.db")) as made:
        assert made.execute(listing).fetchall() == first.execute(listing).fetchall()
    first.close()
    assert SCHEMA_VERSION == 2
    connection = sqlite3.connect(tmp_path / "p.db")
    with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint"):  # the four labels, and only those
        connection.execute("INSERT INTO answers VALUES (1, 'maybe', 'x', 0, 0)")
    with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint"):  # votes too
        connection.execute("INSERT INTO votes VALUES (1, 'ann', 'maybe', 0, 0)")
    assert connection.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("2",)
    connection.close()


# ---------------------------------------------------------------------- creating a store
def test_a_call_that_fails_on_its_arguments_creates_no_file_and_no_folder(tmp_path):
    path = tmp_path / "new" / "deeper" / "p.db"
    with pytest.raises(ValueError, match="needs observation_space"):
        PreferenceStore(path)
    with pytest.raises(ValueError, match="segment_length must be a positive integer"):
        PreferenceStore(path, OBS, ACT, 0)
    with pytest.raises(FileNotFoundError):
        PreferenceStore(path, readonly=True)
    assert list(tmp_path.iterdir()) == []
    with new_store(path) as store:  # and the path works afterwards
        assert len(store) == 0


def leftover_of_an_older_version(path):
    """What gym_prefs left when creating a store failed, before creation was atomic: no tables."""
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.close()


def hidden_files(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize(
    "make_file",
    [lambda path: path.write_bytes(b""), leftover_of_an_older_version],
    ids=["zero-bytes", "sqlite-without-tables"],
)
def test_a_file_without_data_is_replaced_by_a_new_store(tmp_path, make_file):
    path = tmp_path / "p.db"
    make_file(path)
    before = digest(path)
    # Reading it, or opening it without what creating a store needs, leaves it as it is.
    with pytest.raises(StoreError, match="holds no preference store yet"):
        PreferenceStore(path, readonly=True)
    with pytest.raises(StoreError, match="needs observation_space"):
        PreferenceStore(path)
    assert digest(path) == before
    with new_store(path) as store:
        ids = store.add_queries(pairs(2), source="oracle")
        store.record_answers([Answer(ids[0], "first")])
    with PreferenceStore(path, readonly=True) as store:
        assert len(store) == 1 and store.env_id == "Test-v0"
    assert hidden_files(tmp_path) == []


KILLED_WHILE_CREATING = textwrap.dedent(
    """
    import os, sys
    from gymnasium import spaces
    import gym_prefs.store, gym_prefs.store_create

    # Killed after the store was built, before it was given its name.
    gym_prefs.store_create._publish = lambda path, temporary: os._exit(9)
    gym_prefs.store.PreferenceStore(sys.argv[1], spaces.Box(-1, 1, (3,)), spaces.Discrete(2), 4)
    """
)


def test_a_creation_killed_midway_leaves_nothing_in_the_way(tmp_path):
    path = tmp_path / "p.db"
    killed = subprocess.run([sys.executable, "-c", KILLED_WHILE_CREATING, str(path)], timeout=120)
    assert killed.returncode == 9
    assert not path.exists()
    [temporary] = hidden_files(tmp_path)
    assert temporary.startswith(".p.db.") and temporary.endswith(".creating")
    # The temporary file of a creation still under way (a live pid) is left alone.
    in_progress = tmp_path / f".other.db.{os.getppid()}.{_host_tag()}.0123abcd.creating"
    in_progress.write_bytes(b"")
    with new_store(path) as store:
        assert len(store) == 0
    assert hidden_files(tmp_path) == [in_progress.name]


def test_a_creation_that_loses_the_race_opens_the_winners_store(tmp_path, monkeypatch):
    winner = tmp_path / "winner.db"
    with new_store(winner) as store:
        store.record_answers([Answer(store.add_queries(pairs(1), source="w")[0], "first")])
    link = os.link

    def another_process_is_faster(source, destination):
        shutil.copyfile(winner, destination)
        return link(source, destination)

    monkeypatch.setattr(os, "link", another_process_is_faster)
    with PreferenceStore(tmp_path / "p.db", OBS, ACT, LENGTH, env_id="the-loser") as store:
        assert store.env_id == "Test-v0" and len(store) == 1
    assert hidden_files(tmp_path) == []


@pytest.mark.parametrize("another_process_first", [False, True])
def test_without_hard_links_a_store_is_created_without_clobbering_one(tmp_path, monkeypatch, another_process_first):
    winner = tmp_path / "winner.db"
    new_store(winner).close()

    def no_hard_links(source, destination):
        if another_process_first:
            shutil.copyfile(winner, destination)
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_hard_links)
    with PreferenceStore(tmp_path / "p.db", OBS, ACT, LENGTH, env_id="this-one") as store:
        assert store.env_id == ("Test-v0" if another_process_first else "this-one")
    assert hidden_files(tmp_path) == []


CREATOR = textwrap.dedent(
    """
    import sys
    from gymnasium import spaces
    from gym_prefs import PreferenceStore

    print("READY", flush=True)
    sys.stdin.readline()
    with PreferenceStore(sys.argv[1], spaces.Box(-1, 1, (3,)), spaces.Box(-2, 2, (1,)), 5, env_id=sys.argv[2]) as s:
        print("OPENED", s.env_id, flush=True)
    """
)


@pytest.mark.parametrize("there_first", ["nothing", "an empty file"])
def test_processes_creating_one_store_at_once_all_open_the_same_one(tmp_path, there_first):
    path = tmp_path / "p.db"
    if there_first == "an empty file":
        path.write_bytes(b"")
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CREATOR, str(path), f"process-{i}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    for process in processes:
        assert process.stdout.readline().strip() == "READY"
    for process in processes:  # all at once
        process.stdin.write("\n")
        process.stdin.flush()
    outputs = [process.communicate(timeout=120) for process in processes]
    assert all(process.returncode == 0 for process in processes), [err[-2000:] for _, err in outputs]
    opened = {out.split()[-1] for out, _ in outputs}
    with PreferenceStore(path, readonly=True) as store:
        assert opened == {store.env_id}
    assert hidden_files(tmp_path) == []
