import subprocess
import sys

import numpy as np
import pytest
from gymnasium import spaces

from gym_prefs import RewardEnsemble
from gym_prefs.reward_model import INFERENCE_BATCH_BYTES
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
    assert chosen.obs.shape == (50, 2, 10, 3)
    chosen_var = pair_disagreement(model, chosen.obs, chosen.actions).mean()
    random_var = pair_disagreement(model, random.obs, random.actions).mean()
    assert chosen_var > 1.5 * random_var
    per_pair = pair_disagreement(model, chosen.obs, chosen.actions)
    assert per_pair.min() >= np.median(pair_disagreement(model, random.obs, random.actions))


def test_unfitted_model_falls_back_to_random_pairs(pool):
    model = RewardEnsemble(OBS, ACT)
    a = select_pairs(pool, model, 5, 10, "disagreement", np.random.default_rng(3))
    b = select_pairs(pool, model, 5, 10, "random", np.random.default_rng(3))
    np.testing.assert_array_equal(a.obs, b.obs)


def test_unknown_method_is_refused(pool):
    with pytest.raises(ValueError, match="disagreement"):
        select_pairs(pool, RewardEnsemble(OBS, ACT), 5, 10, "entropy", np.random.default_rng(0))


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
