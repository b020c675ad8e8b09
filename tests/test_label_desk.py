"""The label desk: leases that keep a query on one screen, votes, their combined answer, across processes."""

import sqlite3
import subprocess
import sys
import textwrap
import time
from contextlib import closing

import pytest
from store_helpers import new_store, pairs

from gym_prefs import PreferenceStore, StoreError
from gym_prefs.label_desk import AlreadyAnswered, LabelDesk, StaleLease, UnknownQuery, combine

TABLES = ("meta", "segments", "queries", "answers", "leases", "votes")


def all_rows(path):
    """Every row of every table, read by a connection of its own."""
    with closing(sqlite3.connect(path)) as connection:
        return {table: sorted(connection.execute(f"SELECT * FROM {table}").fetchall()) for table in TABLES}


@pytest.fixture
def store(tmp_path):
    store = new_store(tmp_path / "p.db")
    store.add_queries(pairs(6), source="human")
    yield store
    store.close()


def test_two_holders_get_different_queries_and_a_holder_gets_its_own_lease_back(store):
    desk = LabelDesk(store)
    ann, bob = desk.lease("ann"), desk.lease("bob")
    assert (ann.query_id, bob.query_id) == (1, 2)
    again = desk.lease("ann")  # a reloaded page continues with the same pair
    assert (again.query_id, again.token) == (ann.query_id, ann.token)
    assert again.expires_at >= ann.expires_at
    assert desk.lease("cy").query_id == 3
    desk.release("ann")
    assert desk.lease("dan").query_id == 1  # given back: the oldest pending again


def test_an_expired_lease_is_taken_by_another_and_its_holder_can_no_longer_answer(store):
    desk = LabelDesk(store, lease_seconds=0.2)
    ann = desk.lease("ann")
    assert desk.lease("bob").query_id != ann.query_id  # live: not handed out twice
    desk.release("bob")
    time.sleep(0.3)
    cy = desk.lease("cy")
    assert cy.query_id == ann.query_id  # expired: the next holder gets it
    before = all_rows(store.path)
    with pytest.raises(StaleLease, match="another holder took it"):
        desk.answer(ann.query_id, "first", "ann", 1.0, lease_token=ann.token)
    with pytest.raises(StaleLease, match="lease\\(\\)"):
        desk.renew(ann)
    assert all_rows(store.path) == before  # nothing written
    vote = desk.answer(cy.query_id, "second", "cy", 1.0, lease_token=cy.token)
    assert vote.complete and vote.answer.label == "second" and vote.answer.labeler == "cy"
    assert all_rows(store.path)["leases"] == []  # the answer gave the lease back


def test_an_expired_lease_nobody_took_is_still_renewed_and_answered(store):
    desk = LabelDesk(store, lease_seconds=0.1)
    ann = desk.lease("ann")
    time.sleep(0.2)
    renewed = desk.renew(ann)
    assert renewed.token == ann.token and renewed.expires_at > time.time()
    assert desk.answer(ann.query_id, "equal", "ann", 3.0, lease_token=ann.token).complete


def test_an_answered_query_is_not_counted_twice(store):
    desk = LabelDesk(store)
    first = desk.answer(1, "first", "ann", 2.0)
    assert first.counted and first.complete and first.answer.label == "first"
    before = all_rows(store.path)
    again = desk.answer(1, "first", "ann", 5.0)  # the same vote delivered twice
    assert not again.counted and again.complete and again.answer == first.answer
    with pytest.raises(AlreadyAnswered, match="voted 'first' on it already"):
        desk.answer(1, "second", "ann", 1.0)
    with pytest.raises(AlreadyAnswered, match="has its answer already"):
        desk.answer(1, "second", "bob", 1.0)
    assert all_rows(store.path) == before
    assert [(a.label, a.labeler, a.seconds) for a in store.answers()] == [("first", "ann", 2.0)]
    assert len(before["votes"]) == 1 and desk.counts()["labels"] == 1 and desk.counts()["pending"] == 5


def test_bad_answers_are_refused_and_write_nothing(store):
    desk = LabelDesk(store)
    lease = desk.lease("ann")
    before = all_rows(store.path)
    with pytest.raises(ValueError, match="label must be one of"):
        desk.answer(lease.query_id, "maybe", "ann", 1.0, lease_token=lease.token)
    with pytest.raises(ValueError, match="seconds must be"):
        desk.answer(lease.query_id, "first", "ann", float("nan"))
    with pytest.raises(ValueError, match="labeler must be a non-empty string"):
        desk.answer(lease.query_id, "first", "", 1.0)
    with pytest.raises(UnknownQuery, match="has no query 99"):
        desk.answer(99, "first", "ann", 1.0)
    with pytest.raises(UnknownQuery, match="not an integer"):
        desk.answer("1", "first", "ann", 1.0)
    with pytest.raises(StaleLease):
        desk.answer(lease.query_id, "first", "ann", 1.0, lease_token="not-the-token")
    assert all_rows(store.path) == before


def test_three_votes_combine_into_one_answer_and_their_agreement_is_measured(store):
    store.set_meta("labels_per_query", "3")
    desk = LabelDesk(store)
    assert desk.labels_per_query == 3 and desk.agreement() is None
    ann = desk.lease("ann")
    assert not desk.answer(ann.query_id, "first", "ann", 1.0, lease_token=ann.token).complete
    assert desk.lease("ann").query_id == 2  # not the query ann voted on
    assert desk.lease("bob").query_id == 1  # but bob may vote on it
    assert not desk.answer(1, "first", "bob", 2.0).complete
    assert store.answers() == [] and store.counts()["pending"] == 6
    vote = desk.answer(1, "second", "cy", 4.0)
    assert vote.complete and vote.answer.label == "first" and vote.answer.seconds == 7.0
    assert vote.answer.labeler == "ann, bob, cy"
    assert [(a.query_id, a.label) for a in store.answers()] == [(1, "first")]  # one row
    assert desk.agreement() == pytest.approx(2 / 3)
    for labeler, label in (("ann", "first"), ("bob", "second"), ("cy", "skip")):
        desk.answer(2, label, labeler, 1.0)
    assert store.answers_for([2])[0].label == "equal"
    assert desk.agreement() == pytest.approx((2 / 3 + 0 / 3) / 2)  # no vote was "equal"
    assert len(all_rows(store.path)["votes"]) == 6 and len(store.answers()) == 2


@pytest.mark.parametrize(
    ("votes", "combined"),
    [
        (["first"], "first"),
        (["skip"], "skip"),
        (["first", "first", "second"], "first"),
        (["second", "equal", "second"], "second"),
        (["first", "second"], "equal"),  # a first/second tie
        (["first", "second", "skip"], "equal"),
        (["skip", "skip", "first"], "skip"),  # more than half skip
        (["skip", "first"], "first"),  # half is not more than half
        (["equal", "first", "first", "equal", "second"], "equal"),  # a tie goes to equal
    ],
)
def test_combine_follows_its_rule(votes, combined):
    assert combine(votes) == combined


def test_combine_refuses_no_votes_and_unknown_labels():
    with pytest.raises(ValueError, match="one or more labels"):
        combine([])
    with pytest.raises(ValueError, match="one or more labels"):
        combine(["first", "maybe"])


def test_a_bad_labels_per_query_is_refused_with_the_fix(store):
    store.set_meta("labels_per_query", "zero")
    with pytest.raises(StoreError, match=r"set it with store\.set_meta"):
        LabelDesk(store)
    with pytest.raises(ValueError, match="lease_seconds"):
        LabelDesk(new_store(store.path), lease_seconds=0)


def test_a_read_only_desk_reads_but_never_writes(store):
    LabelDesk(store).answer(1, "first", "ann", 1.0)
    with PreferenceStore(store.path, readonly=True) as reader:
        desk = LabelDesk(reader)
        assert desk.counts()["labels"] == 1 and desk.clips(1) is None
        with pytest.raises(PermissionError, match="read-only"):
            desk.lease("ann")
        with pytest.raises(PermissionError, match="read-only"):
            desk.answer(2, "first", "ann", 1.0)


LEASING = textwrap.dedent(
    """
    import os, sys, time
    from gym_prefs import PreferenceStore
    from gym_prefs.label_desk import LabelDesk

    store = PreferenceStore(sys.argv[1])
    desk = LabelDesk(store)
    name, seen = sys.argv[2], []
    open(f"{sys.argv[1]}.{name}.ready", "w").close()
    while not os.path.exists(f"{sys.argv[1]}.go"):  # both processes start leasing together
        time.sleep(0.001)
    while True:
        # A new holder each time, so every lease is a new query; every third one is answered
        # (a query leased twice would be answered twice, which the desk refuses with an error).
        lease = desk.lease(f"{name}-{len(seen)}")
        if lease is None:
            break
        seen.append(lease.query_id)
        if len(seen) % 3 == 0:
            desk.answer(lease.query_id, "first", name, 0.0, lease_token=lease.token)
        time.sleep(0.002)  # a request's other work: the other process gets the write lock meanwhile
    print(" ".join(map(str, seen)))
    """
)


def test_two_processes_leasing_in_a_loop_never_get_the_same_query(tmp_path):
    path = tmp_path / "p.db"
    with new_store(path) as store:
        ids = store.add_queries(pairs(300), source="human")
    runs = [
        subprocess.Popen([sys.executable, "-c", LEASING, str(path), name], stdout=subprocess.PIPE, text=True)
        for name in ("a", "b")
    ]
    start = time.monotonic()
    while not all((tmp_path / f"p.db.{name}.ready").exists() for name in ("a", "b")):
        assert time.monotonic() - start < 120 and all(run.poll() is None for run in runs)
        time.sleep(0.01)
    (tmp_path / "p.db.go").touch()
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0]
    seen = [[int(x) for x in out.split()] for out in outputs]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == ids  # every query leased once, by one of them
    assert min(map(len, seen)) > 20, "one process took nearly every query: they did not lease at the same time"
    rows = all_rows(path)
    assert len(rows["leases"]) == 300 - len(rows["answers"]) and len(rows["answers"]) == len(rows["votes"]) >= 98
