"""Exporting a store's labels to a portable file and importing them into a store."""

import json
import zipfile

import numpy as np
import pytest
from gymnasium import spaces
from store_helpers import ACT, LENGTH, new_store, pairs

from gym_prefs import Answer, PreferenceStore, StoreError
from gym_prefs.datasets import export_labels, import_labels, read_export


def test_export_import_round_trip(tmp_path):
    store = new_store(tmp_path / "a.db")
    ids = store.add_queries(pairs(6), source="oracle")
    labels = ["first", "second", "equal", "skip", "first", "second"]
    store.record_answers([Answer(i, label) for i, label in zip(ids, labels, strict=True)])
    assert export_labels(store, tmp_path / "labels.npz") == 5
    imported = import_labels(tmp_path / "labels.npz", tmp_path / "b.db")
    original, copy = store.labelled_pairs(), imported.labelled_pairs()
    for name in ("obs", "actions", "mu", "true_rewards", "labels"):
        np.testing.assert_array_equal(getattr(copy, name), getattr(original, name), err_msg=name)
    assert imported.env_id == "Test-v0" and imported.segment_length == LENGTH
    with np.load(tmp_path / "labels.npz") as data:  # the documented format
        assert json.loads(str(data["metadata"]))["segment_length"] == LENGTH
        assert data["obs"].shape == (5, 2, LENGTH, 3)
    metadata, read = read_export(tmp_path / "labels.npz")
    assert metadata["env_id"] == "Test-v0" and read.query_ids.tolist() == original.query_ids.tolist()
    imported.close()
    store.close()


def cut_off_export(path):
    """The first half of a real export, as a copy interrupted midway leaves it."""
    with new_store(path.with_suffix(".db")) as store:
        store.record_answers([Answer(store.add_queries(pairs(1), source="oracle")[0], "first")])
        export_labels(store, path.with_suffix(".full"))
    data = path.with_suffix(".full").read_bytes()
    path.write_bytes(data[: len(data) // 2])


def metadata_of_another_format(path):
    np.savez(path, metadata=np.array(json.dumps({"format": "something.else"})))


@pytest.mark.parametrize(
    "make_file",
    [
        lambda path: path.write_bytes(b"nope"),
        lambda path: path.write_bytes(b""),
        cut_off_export,
        lambda path: zipfile.ZipFile(path, "w").close(),
        metadata_of_another_format,
    ],
    ids=["not-a-zip", "empty", "cut-off", "empty-zip", "another-format"],
)
def test_importing_something_else_is_a_clear_error(tmp_path, make_file):
    make_file(tmp_path / "x.npz")
    with pytest.raises(StoreError, match="not a gym_prefs preference export"):
        import_labels(tmp_path / "x.npz", tmp_path / "b.db")
    assert not (tmp_path / "b.db").exists()  # nothing is created for a file that is refused


def test_an_export_for_another_env_is_refused_by_a_store_and_leaves_it_as_it_was(tmp_path):
    with new_store(tmp_path / "a.db") as store:
        store.record_answers([Answer(store.add_queries(pairs(2), source="oracle")[0], "first")])
        export_labels(store, tmp_path / "labels.npz")
    PreferenceStore(tmp_path / "other.db", spaces.Box(-1, 1, (4,)), ACT, LENGTH).close()
    with pytest.raises(StoreError, match=r"this env.*Use another store path"):
        import_labels(tmp_path / "labels.npz", tmp_path / "other.db")
    with PreferenceStore(tmp_path / "other.db", readonly=True) as other:
        assert other.counts()["queries"] == 0
