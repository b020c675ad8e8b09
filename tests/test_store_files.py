"""The files a preference store refuses (and leaves untouched), damaged stores, read-only stores."""

import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from gymnasium import spaces
from store_helpers import ACT, LENGTH, OBS, digest, new_store, store_with_labels

from gym_prefs import PreferenceStore, StoreError
from gym_prefs.cli import main as cli
from gym_prefs.store import SCHEMA_VERSION


@pytest.mark.parametrize(
    "make_file",
    [
        lambda path: path.write_bytes(b"\x00garbage" * 1000),
        lambda path: sqlite3.connect(path).execute("CREATE TABLE other (x)").connection.commit(),
        lambda path: sqlite3.connect(path).execute("CREATE TABLE meta (x)").connection.commit(),
        lambda path: path.write_bytes(b"PK\x03\x04"),
    ],
    # (An empty file is no longer refused: it holds no data and is replaced, see
    # test_a_file_without_data_is_replaced_by_a_new_store.)
    ids=["corrupt", "another-sqlite-db", "sqlite-db-with-another-meta", "tiny-zip"],
)
def test_a_file_that_is_not_a_store_is_refused_and_left_untouched(tmp_path, make_file):
    path = tmp_path / "thing.db"
    make_file(path)
    before = digest(path)
    with pytest.raises(StoreError, match=r"not a gym_prefs preference store|empty file"):
        PreferenceStore(path, OBS, ACT, LENGTH)
    assert digest(path) == before


def test_a_newer_schema_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "p.db"
    new_store(path).close()
    connection = sqlite3.connect(path)
    connection.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    connection.commit()
    connection.close()
    before = digest(path)
    with pytest.raises(StoreError, match=r"newer than this gym_prefs understands.*upgrade"):
        PreferenceStore(path, OBS, ACT, LENGTH)
    assert digest(path) == before


def test_a_store_for_another_env_is_refused_naming_both(tmp_path):
    path = tmp_path / "p.db"
    new_store(path).close()
    before = digest(path)
    other = spaces.Box(-1, 1, (4,))
    with pytest.raises(StoreError, match=r"Test-v0.*\(3,\).*this env.*\(4,\)"):
        PreferenceStore(path, other, ACT, LENGTH)
    with pytest.raises(StoreError, match="segments of 5 steps"):
        PreferenceStore(path, OBS, ACT, 7)
    assert digest(path) == before


# ---------------------------------------------------------------------- what a refused file is
def test_a_refusal_says_what_the_file_is(tmp_path):
    other_format, other_sqlite = tmp_path / "a.png", tmp_path / "b.db"
    other_format.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    sqlite3.connect(other_sqlite).execute("CREATE TABLE other (x)").connection.commit()
    with pytest.raises(StoreError, match="not a gym_prefs preference store: it holds another format, not an SQLite"):
        PreferenceStore(other_format, OBS, ACT, LENGTH)
    with pytest.raises(StoreError, match="is an SQLite database but not a gym_prefs preference store"):
        PreferenceStore(other_sqlite, OBS, ACT, LENGTH)
    with pytest.raises(StoreError, match="is a folder, not a preference store"):
        PreferenceStore(tmp_path, OBS, ACT, LENGTH)


def overwrite(path, offset, data):
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def test_a_store_damaged_in_the_middle_is_reported_damaged_and_left_untouched(tmp_path, capsys):
    path = tmp_path / "p.db"
    store_with_labels(path)
    with PreferenceStore(path, readonly=True) as store:
        assert store.check() == []
    assert cli(["info", str(path)]) == 0
    assert "integrity: ok" in capsys.readouterr().out
    middle = path.stat().st_size // 2 // 4096 * 4096
    overwrite(path, middle, bytes(random.Random(0).randrange(256) for _ in range(8192)))  # two pages of noise
    before = digest(path)
    with PreferenceStore(path, readonly=True) as store:
        assert store.check() != []
    assert cli(["info", str(path)]) == 1
    out, err = capsys.readouterr()
    assert "integrity: damaged" in out
    assert "is damaged" in err and "left untouched" in err and ".recover" in err
    assert digest(path) == before


def damage_the_schema_page(path):
    overwrite(path, 100, b"\xff" * 400)  # page 1 after the file header: the list of tables


def damage_the_size(path):
    with open(path, "r+b") as handle:
        handle.truncate(4096 + 1000)


def drop_a_table(path):
    connection = sqlite3.connect(path)
    connection.execute("DROP TABLE answers")
    connection.commit()
    connection.close()


@pytest.mark.parametrize("damage", [damage_the_schema_page, damage_the_size, drop_a_table])
def test_a_store_that_cannot_be_read_is_refused_as_damaged_and_left_untouched(tmp_path, damage):
    path = tmp_path / "p.db"
    store_with_labels(path, 50)
    damage(path)
    before = digest(path)
    with pytest.raises(StoreError, match=r"is damaged \(.*\); it was left untouched.*\.recover"):
        PreferenceStore(path, OBS, ACT, LENGTH)
    with pytest.raises(StoreError, match="is damaged"):
        PreferenceStore(path, readonly=True)
    assert digest(path) == before


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="needs the sqlite3 command-line tool")
def test_the_recovery_the_damage_message_suggests_gets_labels_back(tmp_path):
    path = tmp_path / "p.db"
    store_with_labels(path)
    overwrite(path, path.stat().st_size // 2 // 4096 * 4096, b"\xff" * 4096)
    shutil.copyfile(path, tmp_path / "copy.db")
    sqlite = {"cwd": tmp_path, "capture_output": True, "text": True, "timeout": 120}
    recovered = subprocess.run(["sqlite3", "copy.db", ".recover"], **sqlite)
    if recovered.returncode != 0:  # a build without sqlite_dbpage (or older than 3.29): the .dump way
        recovered = subprocess.run(["sqlite3", "copy.db", ".dump"], **sqlite)
        assert recovered.stdout.endswith("ROLLBACK; -- due to errors\n")
        recovered.stdout = recovered.stdout.removesuffix("ROLLBACK; -- due to errors\n") + "COMMIT;\n"
    subprocess.run(["sqlite3", "recovered.db"], input=recovered.stdout, check=True, **sqlite)
    with PreferenceStore(tmp_path / "recovered.db", readonly=True) as store:
        assert 300 < len(store.labelled_pairs()) <= 400


# ---------------------------------------------------------------------- read-only stores
AS_NOBODY = textwrap.dedent(
    """
    import json, os, sys
    from gym_prefs.store import PreferenceStore, StoreError

    # Imported as root first: the interpreter may live where nobody may read.
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    path = sys.argv[1]
    results = {}
    for attempt, readonly in (("write", False), ("read", True)):
        try:
            with PreferenceStore(path, readonly=readonly) as store:
                results[attempt] = len(store)
        except StoreError as error:
            results[attempt] = str(error)
        results[attempt + " files"] = sorted(os.listdir(os.path.dirname(path)))
    print(json.dumps(results))
    """
)

needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="runs a process as an unprivileged user"
)


@pytest.fixture
def shared_folder():
    # Not under tmp_path, whose base folder is 0700: the unprivileged user must reach this one.
    folder = Path(tempfile.mkdtemp(dir="/tmp"))
    yield folder
    folder.chmod(0o700)
    shutil.rmtree(folder)


def as_nobody(path):
    done = subprocess.run([sys.executable, "-c", AS_NOBODY, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@needs_root
@pytest.mark.parametrize("what", ["folder", "file", "folder but not the file"])
def test_a_read_only_store_is_refused_for_writing_and_can_be_read(shared_folder, what):
    path = shared_folder / "p.db"
    store_with_labels(path, 3)
    if what == "folder but not the file":
        os.chown(path, 65534, 65534)
    shared_folder.chmod(0o777 if what == "file" else 0o755)
    before = digest(path)
    results = as_nobody(path)
    assert "cannot be written by this process" in results["write"]
    assert "open it with readonly=True" in results["write"] and "copy it to a writable folder" in results["write"]
    assert results["write files"] == ["p.db"]  # nothing written, not even a -wal file
    assert results["read"] == 3
    assert digest(path) == before


UNMERGED = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    from gym_prefs import Answer, PreferenceStore, SegmentPairs

    store = PreferenceStore(sys.argv[1])
    ids = store.add_queries(SegmentPairs(np.zeros((2, 2, 5, 3)), np.zeros((2, 2, 5, 1))), source="w")
    store.record_answers([Answer(i, "first") for i in ids])
    os._exit(0)  # without closing: the labels stay in the -wal file, not merged into the store file
    """
)


@needs_root
def test_a_store_with_unmerged_changes_in_a_read_only_folder_says_how_to_read_it(shared_folder):
    path = shared_folder / "p.db"
    store_with_labels(path, 3)
    subprocess.run([sys.executable, "-c", UNMERGED, str(path)], check=True, timeout=120)
    (shared_folder / "p.db-shm").unlink()  # as a copy of the store with its -wal file would be
    assert (shared_folder / "p.db-wal").stat().st_size > 0
    shared_folder.chmod(0o755)
    before = digest(path), digest(shared_folder / "p.db-wal")
    results = as_nobody(path)
    assert "cannot be written by this process" in results["write"]
    assert "changes not yet merged into the file" in results["read"] and "p.db-wal" in results["read"]
    assert "Copy the store with its -wal file to a writable folder" in results["read"]
    assert (digest(path), digest(shared_folder / "p.db-wal")) == before
    with PreferenceStore(path, readonly=True) as store:  # where the folder is writable, all 5 labels are there
        assert len(store) == 5
