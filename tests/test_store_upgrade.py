"""Stores of schema version 1 (before leases and votes): upgraded when opened writable, read as they are otherwise."""

import sqlite3
from contextlib import closing

import numpy as np
import pytest
from store_helpers import digest, new_store, pairs
from test_store_create import SCHEMA_1
from test_store_runs import train_on_store

import gym_prefs.store_create as store_create
from gym_prefs import Answer, PreferenceStore, StoreError
from gym_prefs.label_desk import LabelDesk

LISTING = "SELECT type, name, sql FROM sqlite_master ORDER BY name"
DATA_TABLES = ("segments", "queries", "answers")


def make_version_1(path):
    """Turn the store at ``path`` into one of schema version 1, as the first gym_prefs made them."""
    with closing(sqlite3.connect(path, isolation_level=None)) as connection:
        connection.execute("DROP TABLE leases")
        connection.execute("DROP TABLE votes")
        connection.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
        connection.execute("VACUUM")
    first = sqlite3.connect(":memory:")
    for statement in filter(str.strip, SCHEMA_1.split(";")):
        first.execute(statement)
    with closing(sqlite3.connect(path)) as connection:  # the tables of version 1, byte for byte
        assert connection.execute(LISTING).fetchall() == first.execute(LISTING).fetchall()
    first.close()


def version_1_store(path):
    with new_store(path) as store:
        ids = store.add_queries(pairs(30), source="human")
        store.record_answers([Answer(i, ("first", "second", "equal", "skip")[i % 4], "ann", i / 10) for i in ids[:20]])
    make_version_1(path)
    return ids


def data_rows(path):
    with closing(sqlite3.connect(path)) as connection:
        rows = {table: connection.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall() for table in DATA_TABLES}
        meta = dict(connection.execute("SELECT key, value FROM meta").fetchall())
    return rows, meta


def snapshot(store):
    labelled = store.labelled_pairs()
    return (
        store.answers(),
        store.counts(),
        len(store),
        store.pending_ids(),
        labelled.query_ids.tolist(),
        labelled.labels.tolist(),
        labelled.pairs.obs.tobytes(),
        labelled.mu.tolist(),
    )


def test_a_read_only_open_of_a_version_1_store_reads_it_and_leaves_it_untouched(tmp_path):
    path = tmp_path / "p.db"
    version_1_store(path)
    before = digest(path)
    with PreferenceStore(path, readonly=True) as store:
        assert store.schema_version == 1
        assert len(store) == 15 and store.counts()["pending"] == 10
        desk = LabelDesk(store)  # as if it had no leases and no votes
        assert desk.agreement() is None and desk.counts()["labels"] == 15
    assert digest(path) == before
    assert data_rows(path)[1]["schema_version"] == "1"


def test_opening_a_version_1_store_writable_upgrades_it_and_keeps_every_row(tmp_path):
    path = tmp_path / "p.db"
    version_1_store(path)
    rows, meta = data_rows(path)
    with PreferenceStore(path, readonly=True) as store:
        before = snapshot(store)
    with PreferenceStore(path) as store:
        assert store.schema_version == 2
        assert snapshot(store) == before  # every label kept
    after_rows, after_meta = data_rows(path)
    assert after_rows == rows  # no row of the old tables changed
    assert after_meta == {**meta, "schema_version": "2"}
    new_store(tmp_path / "fresh.db").close()
    with closing(sqlite3.connect(path)) as upgraded, closing(sqlite3.connect(tmp_path / "fresh.db")) as fresh:
        assert upgraded.execute(LISTING).fetchall() == fresh.execute(LISTING).fetchall()  # as if made now
    with PreferenceStore(path) as store:  # and the desk works on it
        desk = LabelDesk(store)
        lease = desk.lease("bob")
        assert lease.query_id == 21
        assert desk.answer(lease.query_id, "first", "bob", 1.0, lease_token=lease.token).complete
        assert len(store) == 16


def test_an_upgrade_that_fails_leaves_the_store_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "p.db"
    version_1_store(path)
    rows, meta = data_rows(path)
    # The second table cannot be made: the first one, made in the same transaction, must go too.
    monkeypatch.setattr(store_create, "_SCHEMA_2_ADDED", store_create._SCHEMA_2_ADDED + "; CREATE TABLE meta (x)")
    with pytest.raises(StoreError, match=r"could not be upgraded to schema version 2 .* left as it was"):
        PreferenceStore(path)
    assert data_rows(path) == (rows, meta)
    with closing(sqlite3.connect(path)) as connection:
        tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"meta", "segments", "queries", "answers"}
    monkeypatch.undo()
    with PreferenceStore(path) as store:  # the next opening upgrades it
        assert store.schema_version == 2 and len(store) == 15


def test_a_training_run_continues_on_an_upgraded_store(tmp_path):
    path = tmp_path / "p.db"
    train_on_store(path, total_labels=20, steps=1024)
    make_version_1(path)
    with PreferenceStore(path, readonly=True) as store:
        labelled = store.labelled_pairs()
        before = (labelled.query_ids.tolist(), labelled.labels.tolist(), store.answers())
    assert len(before[0]) == 20
    train_on_store(path, total_labels=30, steps=1024, seed=1)
    with PreferenceStore(path, readonly=True) as store:
        assert store.schema_version == 2
        labelled = store.labelled_pairs()
        assert len(store) == 30
        assert labelled.query_ids.tolist()[:20] == before[0] and labelled.labels.tolist()[:20] == before[1]
        assert store.answers()[:20] == before[2]
        assert np.all(np.isfinite(labelled.pairs.true_rewards))
