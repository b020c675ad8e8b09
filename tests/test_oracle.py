import numpy as np
import pytest

from gym_prefs import Query, Segment, SyntheticOracle
from gym_prefs.sources import PreferenceSource, make_source


def segment(rewards) -> Segment:
    rewards = np.asarray(rewards, dtype=np.float32)
    return Segment(np.zeros((len(rewards), 1)), np.zeros((len(rewards), 1)), rewards)


def pairs(n: int, gap: float, length: int = 5):
    first = np.full((n, length), gap / length)
    second = np.zeros((n, length))
    return first, second


def test_perfect_oracle_prefers_the_higher_return_and_ties_are_equal():
    oracle = SyntheticOracle()
    labels = oracle.label(
        np.array([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0]]), np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    )
    assert labels == ["first", "second", "equal"]


def test_request_then_poll_returns_each_answer_once():
    oracle = SyntheticOracle()
    assert isinstance(oracle, PreferenceSource)
    oracle.request([Query(7, segment([1, 1]), segment([0, 0])), Query(8, segment([0, 0]), segment([0, 3]))])
    assert oracle.pending == 2
    answers = oracle.poll()
    assert [(a.query_id, a.label, a.labeler) for a in answers] == [(7, "first", "oracle"), (8, "second", "oracle")]
    assert oracle.poll() == [] and oracle.pending == 0


def test_mistake_rate_flips_about_epsilon_of_answers():
    oracle = SyntheticOracle(mistake_rate=0.1, seed=0)
    labels = np.array(oracle.label(*pairs(20_000, gap=1.0)))
    wrong = np.mean(labels == "second")
    assert abs(wrong - 0.1) < 3 * np.sqrt(0.1 * 0.9 / 20_000)


@pytest.mark.parametrize(("beta", "gap"), [(1.0, 1.0), (2.0, 0.5), (0.5, -2.0)])
def test_boltzmann_rationality_matches_the_logistic(beta, gap):
    oracle = SyntheticOracle(beta=beta, seed=1)
    labels = np.array(oracle.label(*pairs(20_000, gap=gap)))
    expected = 1 / (1 + np.exp(-beta * gap))
    assert abs(np.mean(labels == "first") - expected) < 0.015


def test_myopic_teacher_weighs_the_end_of_the_segment():
    early = np.array([[3.0, 0.0, 0.0, 0.0]])  # return 3, all at the start
    late = np.array([[0.0, 0.0, 0.0, 2.0]])  # return 2, at the end
    assert SyntheticOracle().label(early, late) == ["first"]
    assert SyntheticOracle(gamma=0.5).label(early, late) == ["second"]  # 3 * 0.125 < 2


def test_skip_when_both_returns_are_below_the_threshold():
    oracle = SyntheticOracle(skip_threshold=1.0)
    labels = oracle.label(np.array([[0.5], [0.5]]), np.array([[0.9], [1.5]]))
    assert labels == ["skip", "second"]


def test_equal_when_returns_are_close():
    oracle = SyntheticOracle(equal_threshold=0.3)
    assert oracle.label(np.array([[1.0], [1.0]]), np.array([[1.2], [1.5]])) == ["equal", "second"]


def test_same_seed_same_answers():
    a = SyntheticOracle(beta=1.0, mistake_rate=0.2, seed=3).label(*pairs(200, gap=0.3))
    b = SyntheticOracle(beta=1.0, mistake_rate=0.2, seed=3).label(*pairs(200, gap=0.3))
    assert a == b


def test_bad_knobs_and_sources_are_refused():
    with pytest.raises(ValueError, match="mistake_rate"):
        SyntheticOracle(mistake_rate=1.5)
    with pytest.raises(ValueError, match="gamma"):
        SyntheticOracle(gamma=0.0)
    with pytest.raises(ValueError, match="unknown preference source 'robot'"):
        make_source("robot")
    with pytest.raises(TypeError, match="not a preference source"):
        make_source(object())  # type: ignore[arg-type]
    assert isinstance(make_source("oracle"), SyntheticOracle)
