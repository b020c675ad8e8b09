import subprocess
import sys

import numpy as np
import pytest
from gymnasium import spaces

from gym_prefs import RewardEnsemble
from gym_prefs.coverage import AskedPairs, PairFeatures, kcenter_greedy
from gym_prefs.reward_model import INFERENCE_BATCH_BYTES
from gym_prefs.segments import SegmentPool, TransitionRecorder
from gym_prefs.selection import SELECTION_METHODS, pair_disagreement, preference_entropy, select_pairs

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
    assert chosen.obs.shape == (50, 2, 10, 3)
    chosen_var = pair_disagreement(model, chosen.obs, chosen.actions).mean()
    random_var = pair_disagreement(model, random.obs, random.actions).mean()
    assert chosen_var > 1.5 * random_var
    per_pair = pair_disagreement(model, chosen.obs, chosen.actions)
    assert per_pair.min() >= np.median(pair_disagreement(model, random.obs, random.actions))


@pytest.mark.parametrize("method", SELECTION_METHODS)
def test_unfitted_model_falls_back_to_random_pairs(pool, method):
    model = RewardEnsemble(OBS, ACT)
    a = select_pairs(pool, model, 5, 10, method, np.random.default_rng(3), asked=AskedPairs())
    b = select_pairs(pool, model, 5, 10, "random", np.random.default_rng(3))
    np.testing.assert_array_equal(a.obs, b.obs)


def _fitted(pool, members=3):
    model = RewardEnsemble(OBS, ACT, n_members=members, reward_std=0.1, seed=0)
    model.fitted.fill_(True)
    model.calibrate(*[pool.recent(2000)[k] for k in ("obs", "actions")])
    return model


def _preference(model, pairs):
    """Each member's P[first > second]: [members, pairs]."""
    returns = model.predict_members(pairs.obs, pairs.actions).sum(axis=-1)
    return 1 / (1 + np.exp(-(returns[..., 0] - returns[..., 1])))


def test_entropy_picks_the_pairs_predicted_nearest_even(pool):
    model = _fitted(pool)
    rng = np.random.default_rng(1)
    chosen = select_pairs(pool, model, 40, 10, "entropy", rng)
    random = select_pairs(pool, model, 400, 10, "random", rng)
    chosen_gap = np.abs(_preference(model, chosen) - 0.5).mean(axis=0)
    random_gap = np.abs(_preference(model, random) - 0.5).mean(axis=0)
    # 40 kept of 400 candidates: each is among the candidates' nearest-even tenth or so.
    assert chosen_gap.max() <= np.quantile(random_gap, 0.25)
    assert chosen_gap.mean() < 0.5 * random_gap.mean()


def test_preference_entropy_is_highest_where_each_member_calls_it_even():
    # [members, pairs, 2] returns: pair 0 even for both members, pair 1 sure for both, pair 2
    # sure but contradictory (disagreement's favourite, not entropy's).
    returns = np.array([[[0.0, 0.0], [4.0, 0.0], [4.0, 0.0]], [[0.1, 0.1], [4.0, 0.0], [0.0, 4.0]]])
    entropy = preference_entropy(returns)
    assert entropy[0] == pytest.approx(np.log(2))
    assert entropy[0] > entropy[2] and entropy[0] > entropy[1]
    assert np.isnan(preference_entropy(np.full((2, 1, 2), np.nan)))[0]  # unscored stays unscored


def _clustered_pool():
    """Segments in four places of a 2-D plane, one of them 20 times as common as each other."""
    obs_space = spaces.Box(-50, 50, (2,))
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    weights = np.array([20.0, 1.0, 1.0, 1.0]) / 23
    rec = TransitionRecorder(obs_space, ACT, n_envs=1, capacity=20_000)
    for centre in rng.choice(4, size=400, p=weights):  # 400 episodes of 20 steps, each in one place
        for step in range(20):
            obs = centres[centre] + rng.normal(scale=0.3, size=2)
            rec.add(obs[None], np.zeros((1, 1)), np.zeros(1), np.array([step == 19], dtype=np.float32))
    pool = SegmentPool(obs_space, ACT, n_streams=1, capacity=20_000)
    pool.add(0, rec.drain())
    model = RewardEnsemble(obs_space, ACT, n_members=3, seed=0)
    model.fitted.fill_(True)
    return pool, model, centres


def _places_covered(pairs, centres):
    """How many of the four places the chosen segments visit."""
    means = pairs.obs.mean(axis=2).reshape(-1, 2)  # every segment's mean observation
    nearest = np.linalg.norm(means[:, None] - centres[None], axis=-1).argmin(axis=1)
    return len(set(nearest.tolist()))


def test_kcenter_covers_rare_places_that_random_pairs_miss():
    pool, model, centres = _clustered_pool()
    covered = {
        method: np.mean(
            [
                _places_covered(select_pairs(pool, model, 3, 10, method, np.random.default_rng(s)), centres)
                for s in range(30)
            ]
        )
        for method in ("kcenter", "random")
    }
    # Three pairs, six segments: random ones mostly sit in the common place (1.7 places of 4 on
    # average); k-center's reach 3.2 (each rare place is in most candidate sets, not all).
    assert covered["kcenter"] >= 3.0 and covered["kcenter"] >= covered["random"] + 1.0


def test_kcenter_keeps_away_from_pairs_asked_before():
    pool, model, _ = _clustered_pool()
    asked = AskedPairs()
    first = select_pairs(pool, model, 2, 10, "kcenter", np.random.default_rng(0), asked=asked)
    second = select_pairs(pool, model, 2, 10, "kcenter", np.random.default_rng(1), asked=asked)
    assert len(asked) == 4
    features = PairFeatures(2)
    gap = np.linalg.norm(features(second.obs)[:, None] - features(first.obs)[None], axis=-1).min()
    # The same-place pairs of a fresh query lie ~2 apart (noise); a new pair keeps its distance.
    assert gap > 5


def test_kcenter_greedy_picks_the_farthest_point_each_time():
    points = np.array([[0.0, 0.0], [1.0, 0.0], [8.0, 0.0], [10.0, 0.0], [5.0, 0.0]])
    assert kcenter_greedy(points, 3, centres=np.array([[0.0, 0.0]])).tolist() == [3, 4, 2]
    assert sorted(kcenter_greedy(np.zeros((3, 2)), 3).tolist()) == [0, 1, 2]  # distinct even when equal
    with pytest.raises(ValueError, match="cannot pick"):
        kcenter_greedy(points, 6)


def test_projected_features_keep_distances_of_wide_observations():
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(30, 2, 5, 400)).astype(np.float32)  # 400 numbers a step: projected to 64
    features = PairFeatures(400)(obs)
    assert features.shape == (30, 2 * 5 * 64)
    flat = obs.reshape(30, -1)
    true = np.linalg.norm(flat[:, None] - flat[None], axis=-1)[np.triu_indices(30, 1)]
    kept = np.linalg.norm(features[:, None] - features[None], axis=-1)[np.triu_indices(30, 1)]
    assert np.all(np.abs(kept / true - 1) < 0.2)


def test_kcenter_disagreement_picks_among_the_more_disputed_half(pool):
    model = _fitted(pool)
    calls = []
    predict = model.predict_members
    model.predict_members = lambda *a, **k: calls.append(len(a[0])) or predict(*a, **k)
    chosen = select_pairs(pool, model, 20, 10, "kcenter_disagreement", np.random.default_rng(1))
    assert calls == [200]  # the 200 candidates in one batched call, not one call per pair
    model.predict_members = predict
    candidates = select_pairs(pool, model, 200, 10, "random", np.random.default_rng(1))
    disputed = pair_disagreement(model, candidates.obs, candidates.actions)
    assert pair_disagreement(model, chosen.obs, chosen.actions).min() >= np.median(disputed) - 1e-12


def test_unknown_method_is_refused(pool):
    with pytest.raises(ValueError, match="disagreement"):
        select_pairs(pool, RewardEnsemble(OBS, ACT), 5, 10, "best", np.random.default_rng(0))


MEMORY_SCRIPT = """
import resource, sys
import numpy as np
from gymnasium import spaces
from gym_prefs import RewardEnsemble
from gym_prefs.selection import pair_disagreement

model = RewardEnsemble(spaces.Box(0, 255, (512, 512, 3), np.uint8), spaces.Discrete(4), n_members=3, seed=0)
model.fitted.fill_(True)
rng = np.random.default_rng(0)
obs = rng.integers(0, 256, (2, 2, 12, 512, 512, 3), dtype=np.uint8)  # 48 frames, 36 MiB
actions = rng.integers(0, 4, (2, 2, 12))
pair_disagreement(model, obs[:1, :, :1], actions[:1, :, :1])  # one-off allocations before the baseline
unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit
assert pair_disagreement(model, obs, actions).shape == (2,)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit - before)
"""


def test_disagreement_on_large_images_stays_within_the_inference_memory_budget():
    # 512x512x3 images: each frame's forward pass holds about 24 MiB (its float copy, one per
    # member and the first convolutions' outputs). All 48 frames in one batch (the old
    # 4096-row default) grew the peak memory by 1157 MiB; 9-row batches grow it by about 240.
    # A subprocess, so that the peak measured is this call's alone.
    pytest.importorskip("resource")
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    growth = int(result.stdout.split()[-1])
    assert growth < 2 * INFERENCE_BATCH_BYTES, f"peak memory grew by {growth / 2**20:.0f} MiB"


def test_candidates_are_cut_and_scored_within_a_memory_budget(monkeypatch):
    # Large images: copies of all the candidates (10x the pairs asked for) would not fit in
    # memory, so they are cut a chunk at a time; the pairs chosen are the same.
    image = spaces.Box(0, 255, (48, 48, 3), np.uint8)
    rng = np.random.default_rng(0)
    rec = TransitionRecorder(image, ACT, n_envs=2, capacity=400)
    for _ in range(300):
        rec.add(rng.integers(0, 256, (2, 48, 48, 3), np.uint8), rng.uniform(-1, 1, (2, 1)), np.zeros(2), np.zeros(2))
    pool = SegmentPool(image, ACT, n_streams=2, capacity=400)
    pool.add(0, rec.drain())
    model = RewardEnsemble(image, ACT, n_members=3, seed=0)
    model.fitted.fill_(True)

    def choose(budget):
        monkeypatch.setattr("gym_prefs.selection.CANDIDATE_BYTES", budget)
        cut_sizes = []
        cut = pool.cut
        monkeypatch.setattr(pool, "cut", lambda places: cut_sizes.append(places.positions.size) or cut(places))
        chosen = select_pairs(pool, model, 4, 5, "disagreement", np.random.default_rng(1), candidates_factor=10)
        monkeypatch.setattr(pool, "cut", cut)
        return chosen, cut_sizes

    step_bytes = 48 * 48 * 3 + 4
    budget = 4 * 2 * 5 * step_bytes  # four candidate pairs
    chosen, cut_sizes = choose(budget)
    assert max(cut_sizes) * step_bytes <= budget and len(cut_sizes) == 10 + 1  # 40 candidates, then the 4 chosen
    unbounded, _ = choose(2**40)
    np.testing.assert_array_equal(chosen.obs, unbounded.obs)
    assert chosen.obs.shape == (4, 2, 5, 48, 48, 3)


def test_kcenter_methods_pick_as_many_pairs_as_asked_with_few_candidates(pool):
    model = _fitted(pool)
    for method in ("kcenter", "kcenter_entropy", "kcenter_disagreement"):
        chosen = select_pairs(pool, model, 7, 10, method, np.random.default_rng(0), candidates_factor=1)
        assert chosen.obs.shape[0] == 7
