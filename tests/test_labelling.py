"""The labelling side alone: a store, a scripted source and the fitting data, no agent."""

import numpy as np
import pytest
from conftest import ScriptedSource
from gymnasium import spaces

from gym_prefs import Answer, Comparisons, PreferenceStore, SegmentPairs
from gym_prefs.labelling import LabellingSide
from gym_prefs.records import EQUAL, FIRST, SKIP
from gym_prefs.timings import Timings

OBS, ACT, LENGTH = spaces.Box(-1, 1, (2,)), spaces.Discrete(3), 4


def pairs(count: int, seed: int = 0, clips: bool = False) -> SegmentPairs:
    rng = np.random.default_rng(seed)
    return SegmentPairs(
        rng.uniform(-1, 1, (count, 2, LENGTH, 2)).astype(np.float32),
        rng.integers(0, 3, (count, 2, LENGTH)),
        rng.normal(size=(count, 2, LENGTH)).astype(np.float32),
        np.zeros((count, 2, LENGTH, 3), np.uint8) if clips else None,
    )


@pytest.fixture
def store(tmp_path):
    with PreferenceStore(tmp_path / "p.db", OBS, ACT, LENGTH) as store:
        yield store


def side_for(store, source):
    data = Comparisons(OBS, ACT, LENGTH)
    return LabellingSide(source, store, data, Timings()), data


def test_queries_are_in_the_store_before_the_source_sees_them(store):
    seen_in_store = []

    def answer(query):
        seen_in_store.append(query.id in store.pending_ids())
        return Answer(query.id, FIRST)

    side, _ = side_for(store, ScriptedSource(answer))
    side.ask(pairs(3), timestep=7)
    assert seen_in_store == [True, True, True]
    assert side.num_asked == 3 and side.num_pending == 3


def test_answers_are_committed_then_acknowledged_then_trained_on(store):
    labels = iter([FIRST, SKIP, EQUAL])
    source = ScriptedSource(lambda query: Answer(query.id, next(labels)))
    side, data = side_for(store, source)
    asked = pairs(3)
    side.ask(asked, timestep=0)
    side.collect(timeout=0.0)
    stored = {answer.query_id: answer.label for answer in store.answers()}
    assert sorted(stored.values()) == sorted([FIRST, SKIP, EQUAL])
    assert sorted(source.acknowledged) == sorted(stored)
    # "Can't tell" is never trained on; the others keep their segments and their query ids.
    assert len(data) == 2 and list(data.mu) == [1.0, 0.5]
    np.testing.assert_array_equal(data.obs, asked.obs[[0, 2]])
    assert side.num_pending == 0 and side.num_skipped == 1


def test_a_bad_answer_costs_no_good_one(store):
    def answer(query):
        return Answer(query.id + 1000, FIRST) if query.id % 2 else Answer(query.id, FIRST)

    side, data = side_for(store, ScriptedSource(answer))
    side.ask(pairs(4), timestep=0)
    with pytest.raises(ValueError, match=r"no query with id 100\d is waiting.*valid answers of that batch were stored"):
        side.collect(timeout=0.0)
    assert len(store.answers()) == 2 and len(data) == 2


def test_counts_come_from_the_store(store, tmp_path):
    side, _ = side_for(store, ScriptedSource(lambda query: Answer(query.id, SKIP)))
    side.ask(pairs(5), timestep=0)
    side.collect(timeout=0.0)
    # Another side on the same store (a restarted run) counts the same.
    again, _ = side_for(store, ScriptedSource(lambda query: Answer(query.id, FIRST)))
    assert (again.num_asked, again.num_skipped) == (5, 5)


def test_resume_asks_pending_queries_again_and_keeps_their_segments(store):
    first, _ = side_for(store, ScriptedSource(lambda query: None))
    asked = pairs(3)
    first.ask(asked, timestep=0)  # never answered: the run ended
    source = ScriptedSource(lambda query: Answer(query.id, FIRST))
    side, data = side_for(store, source)
    side.resume()
    assert side.num_pending == 3 and side.num_asked == 3
    side.collect(timeout=0.0)
    np.testing.assert_array_equal(data.obs, asked.obs)
    np.testing.assert_array_equal(data.actions, asked.actions)


def test_a_person_is_not_asked_what_cannot_be_shown(store, capsys):
    without_clips, _ = side_for(store, ScriptedSource(lambda query: None))
    without_clips.ask(pairs(2), timestep=0)
    person = ScriptedSource(lambda query: Answer(query.id, FIRST))
    person.needs_clips = True
    side, _ = side_for(store, person)
    side.resume()
    assert side.num_pending == 0 and side.num_asked == 0  # not counted against the person's budget
    assert "cannot be shown to a person" in capsys.readouterr().out


def test_the_initial_wait_gives_up_after_its_timeout(store):
    class Silent(ScriptedSource):
        def poll(self, timeout=0.0):
            return []

        @property
        def pending(self):
            return 1

    side, _ = side_for(store, Silent(lambda query: None))
    side.ask(pairs(2), timestep=0)
    with pytest.raises(TimeoutError, match="2 of the queries asked of 'scripted' before RL starts got no answer"):
        side.wait_for_initial(2, timeout=1.5)


def test_agreement_between_people_is_logged_only_when_several_answer_a_query(store):
    from stable_baselines3.common.logger import Logger

    from gym_prefs.label_desk import LabelDesk

    side, _ = side_for(store, ScriptedSource(lambda query: None))
    side.ask(pairs(2), timestep=0)
    logger = Logger(folder=None, output_formats=[])
    side.log_counts(logger, labels=0)
    assert "preferences/agreement" not in logger.name_to_value  # one person a query: nothing to agree on
    store.set_meta("labels_per_query", "2")
    desk = LabelDesk(store)
    first, second = store.pending_ids()
    desk.answer(first, "first", "ann", 1.0)
    desk.answer(first, "first", "bob", 1.0)  # agree
    desk.answer(second, "first", "ann", 1.0)
    desk.answer(second, "second", "bob", 1.0)  # disagree
    side.log_counts(logger, labels=2)
    assert logger.name_to_value["preferences/agreement"] == pytest.approx(0.5)
