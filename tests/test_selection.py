import numpy as np
import pytest
from gymnasium import spaces

from gym_prefs import RewardEnsemble
from gym_prefs.segments import SegmentPool, TransitionRecorder
from gym_prefs.selection import pair_disagreement, select_pairs

OBS = spaces.Box(-3, 3, (3,))
ACT = spaces.Box(-1, 1, (1,))


@pytest.fixture
def pool():
    rng = np.random.default_rng(0)
    rec = TransitionRecorder(OBS, ACT, n_envs=2, capacity=5000)
    for _ in range(3000):
        rec.add(rng.normal(size=(2, 3)) * 2, rng.uniform(-1, 1, (2, 1)), rng.normal(size=2), np.zeros(2))
    pool = SegmentPool(OBS, ACT, n_streams=2, capacity=5000)
    pool.add(0, rec.drain())
    return pool


def test_disagreement_picks_pairs_the_members_disagree_on(pool):
    # A small reward scale keeps preference probabilities away from 0 and 1, where every pair
    # would look equally uncertain.
    model = RewardEnsemble(OBS, ACT, n_members=3, reward_std=0.1, seed=0)
    model.fitted.fill_(True)
    model.calibrate(*[pool.recent(2000)[k] for k in ("obs", "actions")])
    rng = np.random.default_rng(1)
    chosen = select_pairs(pool, model, 50, 10, "disagreement", rng)
    random = select_pairs(pool, model, 50, 10, "random", rng)
    assert chosen["obs"].shape == (50, 2, 10, 3)
    chosen_var = pair_disagreement(model, chosen["obs"], chosen["actions"]).mean()
    random_var = pair_disagreement(model, random["obs"], random["actions"]).mean()
    assert chosen_var > 1.5 * random_var
    per_pair = pair_disagreement(model, chosen["obs"], chosen["actions"])
    assert per_pair.min() >= np.median(pair_disagreement(model, random["obs"], random["actions"]))


def test_unfitted_model_falls_back_to_random_pairs(pool):
    model = RewardEnsemble(OBS, ACT)
    a = select_pairs(pool, model, 5, 10, "disagreement", np.random.default_rng(3))
    b = select_pairs(pool, model, 5, 10, "random", np.random.default_rng(3))
    np.testing.assert_array_equal(a["obs"], b["obs"])


def test_unknown_method_is_refused(pool):
    with pytest.raises(ValueError, match="disagreement"):
        select_pairs(pool, RewardEnsemble(OBS, ACT), 5, 10, "entropy", np.random.default_rng(0))
