"""What the store's tests share: the spaces of a small store, pairs of segments for it, a file's digest."""

import hashlib

import numpy as np
from gymnasium import spaces

from gym_prefs import Answer, PreferenceStore
from gym_prefs.records import SegmentPairs

OBS = spaces.Box(-1, 1, (3,))
ACT = spaces.Box(-2, 2, (1,))
LENGTH = 5


def pairs(n: int, seed: int = 0) -> SegmentPairs:
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-1, 1, (n, 2, LENGTH, 3)).astype(np.float32)
    return SegmentPairs(obs, rng.uniform(-2, 2, (n, 2, LENGTH, 1)).astype(np.float32), obs[..., 0])


def new_store(path) -> PreferenceStore:
    return PreferenceStore(path, OBS, ACT, LENGTH, env_id="Test-v0")


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def store_with_labels(path, count=400):
    with new_store(path) as store:
        ids = store.add_queries(pairs(count), source="oracle")
        store.record_answers([Answer(i, "first") for i in ids])
