import numpy as np
import pytest

from gym_prefs import LabelSchedule


def test_decay_schedule_front_loads_labels():
    s = LabelSchedule(total=700, horizon=10_000_000)
    assert s.initial == 175 and s.due(0) == 175 and s.due(10_000_000) == 700
    due = [s.due(t) for t in np.linspace(0, 10_000_000, 11)]
    assert due == sorted(due)
    steps = np.diff(due)
    assert steps[0] > 2 * steps[-1]  # rate ∝ 2e6 / (T + 2e6) falls from 1 to 1/6


def test_constant_schedule_is_linear():
    s = LabelSchedule(total=100, horizon=1000, initial_fraction=0.0, kind="constant")
    assert [s.due(t) for t in (0, 250, 500, 1000, 5000)] == [0, 25, 50, 100, 100]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"total": -1}, "total_labels"), ({"initial_fraction": 2}, "initial_fraction"), ({"kind": "cosine"}, "schedule")],
)
def test_bad_schedules_are_refused(kwargs, match):
    args = {"total": 10, "horizon": 100} | kwargs
    with pytest.raises(ValueError, match=match):
        LabelSchedule(**args)
