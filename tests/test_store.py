"""The preference store's queries, answers and readers, its run lock, a full disk, threads.

Elsewhere: training runs on a store (test_store_runs.py), creating a store (test_store_create.py),
the files a store refuses and read-only stores (test_store_files.py), exports (test_datasets.py);
SIGKILLs of training runs, the first instants included, are in test_faults_processes.py.
"""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from store_helpers import LENGTH, OBS, new_store, pairs

from gym_prefs import Answer, PreferenceStore, StoreError
from gym_prefs.records import SegmentPairs
from gym_prefs.store import StoreBusyError


def test_queries_answers_and_counts(tmp_path):
    store = new_store(tmp_path / "p.db")
    ids = store.add_queries(pairs(4), source="oracle", timestep=100)
    assert store.counts() == {"pending": 4, "answered": 0, "skipped": 0, "queries": 4}
    new = store.record_answers([Answer(ids[0], "first", "ann", 2.5), Answer(ids[1], "skip", "ann")])
    assert len(new) == 2
    # A second answer to the same query is ignored: the first stands, and is what comes back.
    assert store.record_answers([Answer(ids[0], "second", "bob")]) == [Answer(ids[0], "first", "ann", 2.5)]
    assert len(store) == 1
    assert store.counts() == {"pending": 2, "answered": 1, "skipped": 1, "queries": 4}
    assert [q.id for q in store.pending_queries()] == ids[2:]
    labelled = store.labelled_pairs()
    np.testing.assert_array_equal(labelled.obs[0], pairs(4).obs[0])
    assert labelled.labels.tolist() == ["first"] and labelled.mu.tolist() == [1.0]
    store.close()
    # Everything is still there after reopening, with the spaces it was made for.
    again = PreferenceStore(tmp_path / "p.db")
    assert len(again) == 1 and again.env_id == "Test-v0" and again.observation_space == OBS


def test_creating_a_store_needs_the_spaces(tmp_path):
    with pytest.raises(ValueError, match="needs observation_space"):
        PreferenceStore(tmp_path / "p.db")


def test_pairs_are_given_as_segment_pairs_with_their_rewards_and_clips_if_any(tmp_path):
    store = new_store(tmp_path / "p.db")
    as_dict = {"obs": pairs(1).obs, "actions": pairs(1).actions}
    with pytest.raises(TypeError, match=r"must be a gym_prefs.records.SegmentPairs\(obs, actions.*got dict"):
        store.add_queries(as_dict, source="oracle")
    assert store.counts()["queries"] == 0
    given = pairs(2)
    clips = np.arange(2 * 2 * LENGTH * 4, dtype=np.uint8).reshape(2, 2, LENGTH, 4)
    with_clips = store.add_queries(SegmentPairs(given.obs, given.actions, None, clips), source="human")
    without = store.add_queries(given, source="oracle")
    np.testing.assert_array_equal(np.stack(store.clips(with_clips[1])), clips[1])
    assert store.clips(without[0]) is None
    queries = store.pending_queries(limit=3)
    assert [q.id for q in queries] == [*with_clips, without[0]] and store.pending_ids(limit=1) == with_clips[:1]
    assert np.isnan(queries[0].first.true_rewards).all()  # none given
    np.testing.assert_array_equal(queries[2].second.true_rewards, given.true_rewards[0, 1])
    np.testing.assert_array_equal(queries[2].second.obs, given.obs[0, 1])
    store.close()


WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from gymnasium import spaces
    from gym_prefs import Answer, PreferenceStore, SegmentPairs
    store = PreferenceStore(sys.argv[1], spaces.Box(-1, 1, (3,)), spaces.Box(-2, 2, (1,)), 5)
    for batch in range(40):
        ids = store.add_queries(SegmentPairs(np.zeros((5, 2, 5, 3)), np.zeros((5, 2, 5, 1))), source="w")
        store.record_answers([Answer(i, "first", "writer") for i in ids])
        time.sleep(0.01)
    print("written", len(store))
    """
)


def test_a_reader_process_counts_labels_while_a_writer_adds_them(tmp_path):
    path = tmp_path / "p.db"
    new_store(path).close()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    seen = []
    reader = PreferenceStore(path, readonly=True)
    while writer.poll() is None:
        seen.append(len(reader))
        time.sleep(0.005)
    out, _ = writer.communicate()
    seen.append(len(reader))
    assert writer.returncode == 0 and "written 200" in out
    assert seen == sorted(seen)  # never goes back
    assert seen[-1] == 200
    assert len(set(seen)) > 3  # it saw the count grow while the writer ran
    with pytest.raises(PermissionError):
        reader.record_answers([Answer(1, "first")])


# ---------------------------------------------------------------------- one run at a time
HOLDER = textwrap.dedent(
    """
    import sys, time
    from gym_prefs import PreferenceStore

    store = PreferenceStore(sys.argv[1])
    store.lock_for_run()
    print("LOCKED", flush=True)
    time.sleep(600)
    """
)


def test_a_second_run_on_a_store_is_refused_while_the_first_lives(tmp_path):
    path = tmp_path / "p.db"
    new_store(path).close()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "LOCKED"
        store = new_store(path)  # opening it is fine (a labelling window does), running on it is not
        with pytest.raises(
            StoreBusyError,
            match=rf"in use by another training run: pid {holder.pid} on host .+, running since .*"
            r"stop that run, or pass another store path",
        ):
            store.lock_for_run()
        with PreferenceStore(path, readonly=True) as reader:
            assert len(reader) == 0
            with pytest.raises(PermissionError):
                reader.lock_for_run()
        holder.kill()
        holder.wait()
        started = time.monotonic()
        store.lock_for_run()  # the kernel released the killed holder's lock
        store.lock_for_run()  # (again: nothing happens)
        assert time.monotonic() - started < 1
        lock_file = tmp_path / "p.db-run.lock"
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
        with PreferenceStore(path) as other, pytest.raises(StoreBusyError, match=rf"pid {os.getpid()} "):
            other.lock_for_run()  # one run at a time within a process too
        store.close()
        assert not lock_file.exists()
        with PreferenceStore(path) as again:
            again.lock_for_run()
    finally:
        holder.kill()
        holder.wait()


# ---------------------------------------------------------------------- answers
def with_field(answer, **fields):
    """``answer`` with fields set past Answer's own checks (as a foreign source's object could be)."""
    for name, value in fields.items():
        object.__setattr__(answer, name, value)
    return answer


def test_answers_are_checked_before_anything_is_written(tmp_path):
    store = new_store(tmp_path / "p.db")
    ids = store.add_queries(pairs(3), source="oracle")
    good = Answer(ids[0], "first")
    unknown = ids[-1] + 100
    with pytest.raises(StoreError, match=rf"query ids this store never asked: {unknown}\b.*Drop those answers"):
        store.record_answers([good, Answer(unknown, "first")])
    with pytest.raises(StoreError, match=r"labels not one of .*'best' \(query"):
        store.record_answers([good, with_field(Answer(ids[1], "first"), label="best")])
    with pytest.raises(StoreError, match=r"not integers: '2'"):
        store.record_answers([good, with_field(Answer(ids[1], "first"), query_id="2")])
    assert store.answers() == [] and store.counts()["pending"] == 3  # nothing of those batches
    # NumPy integer ids are stored as ints; within a batch too the first answer stands.
    numpy_id = with_field(Answer(ids[0], "second", "ann"), query_id=np.int64(ids[0]))
    assert store.record_answers([numpy_id, Answer(ids[0], "first")]) == [Answer(ids[0], "second", "ann")]
    assert store.counts() == {"pending": 2, "answered": 1, "skipped": 0, "queries": 3}
    store.close()


# ---------------------------------------------------------------------- a full disk
def test_a_full_disk_is_a_clear_error_and_keeps_every_committed_label(small_disk):
    path = small_disk / "p.db"
    store = new_store(path)
    ids = store.add_queries(pairs(2), source="oracle")
    store.record_answers([Answer(ids[0], "first")])
    filler = small_disk / "filler"
    filler.write_bytes(b"\xff" * (shutil.disk_usage(small_disk).free - 48 * 1024))
    committed = len(ids)
    with pytest.raises(StoreError) as raised:
        for seed in range(1000):
            committed += len(store.add_queries(pairs(3, seed), source="oracle"))
    message = str(raised.value)
    assert message.startswith(f"the disk holding the preference store {path} is full: nothing of this transaction")
    assert "every label committed before is kept; free space and start the run again on the same store" in message
    assert isinstance(raised.value.__cause__, sqlite3.OperationalError)
    assert "full" in str(raised.value.__cause__)
    store.close()
    # Every query committed before the error, and nothing of the one that failed.
    with PreferenceStore(path, readonly=True) as reader:
        assert reader.counts() == {"pending": committed - 1, "answered": 1, "skipped": 0, "queries": committed}
        assert len(reader) == 1 and reader.check() == []
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
        assert connection.execute("SELECT COUNT(*) FROM segments").fetchone()[0] == 2 * committed
    filler.unlink()
    with new_store(path) as store:
        store.add_queries(pairs(3), source="oracle")
        assert store.counts()["queries"] == committed + 3


# ---------------------------------------------------------------------- threads
def test_a_store_opened_in_a_thread_can_be_closed_from_another(tmp_path):
    opened = []

    def open_stores():
        store = new_store(tmp_path / "p.db")
        store.lock_for_run()
        store.add_queries(pairs(1), source="oracle")
        opened.extend([store, PreferenceStore(tmp_path / "p.db", readonly=True)])

    thread = threading.Thread(target=open_stores)
    thread.start()
    thread.join()
    writer, reader = opened
    writer.close()  # as a garbage collector's finaliser or a thread outliving the opener would
    reader.close()
    assert writer.closed and reader.closed
    assert not (tmp_path / "p.db-run.lock").exists()
    with PreferenceStore(tmp_path / "p.db", readonly=True) as again:
        assert again.counts()["queries"] == 1


def test_labelled_pairs_read_a_chunk_at_a_time_are_the_same_pairs(tmp_path):
    with new_store(tmp_path / "p.db") as store:
        ids = store.add_queries(pairs(23), source="oracle")
        store.record_answers([Answer(i, "first" if i % 3 else "skip") for i in ids])
        for last in (None, 10):
            whole = store.labelled_pairs(last=last)
            chunks = list(store.labelled_pair_chunks(last=last, pairs_per_chunk=4))
            assert max(len(chunk) for chunk in chunks) == 4
            np.testing.assert_array_equal(np.concatenate([c.query_ids for c in chunks]), whole.query_ids)
            np.testing.assert_array_equal(np.concatenate([c.pairs.obs for c in chunks]), whole.pairs.obs)
            np.testing.assert_array_equal(np.concatenate([c.mu for c in chunks]), whole.mu)
