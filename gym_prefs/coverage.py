"""Coverage of observation space: the k-center query selection of B-Pref (Lee et al. 2021).

A pair is described by its two segments' observations, step by step (B-Pref: observations
only, no actions). Greedy k-center then picks, one after another, the candidate farthest from
every pair asked so far and every pair already picked, so that the queries spread over the
states the agent has seen instead of piling up where the ensemble happens to be unsure.

Observations wider than :data:`STEP_FEATURES` numbers (images) are first projected onto that
many fixed random directions, which keeps distances between steps within a small factor
(Johnson–Lindenstrauss) at a cost of one matrix product per candidate.
"""

from __future__ import annotations

from collections import deque

import numpy as np

__all__ = ["STEP_FEATURES", "AskedPairs", "PairFeatures", "StepFeatures", "kcenter_greedy"]

#: Numbers that describe one step of a segment; wider observations are projected to this many.
STEP_FEATURES = 64


class StepFeatures:
    """Describes single observations by at most :data:`STEP_FEATURES` numbers.

    Observations that wide or narrower are kept as they are; wider ones are projected onto
    that many fixed random directions.

    Args:
        obs_size: numbers in one observation.
        seed: seed of the fixed random projection.

    Example:
        >>> StepFeatures(3).size, StepFeatures(84 * 84 * 4).size
        (3, 64)
    """

    def __init__(self, obs_size: int, seed: int = 0) -> None:
        self.obs_size = obs_size
        self.size = min(obs_size, STEP_FEATURES)
        self.projection: np.ndarray | None = None
        if obs_size > STEP_FEATURES:
            rng = np.random.default_rng(seed)
            # Scaled so that a projected distance estimates the original one.
            scale = np.float32(1 / np.sqrt(STEP_FEATURES))
            self.projection = rng.standard_normal((obs_size, STEP_FEATURES), dtype=np.float32) * scale

    def __call__(self, steps: np.ndarray) -> np.ndarray:
        """``[m, obs_size]`` observations -> ``[m, size]`` float32."""
        steps = steps.astype(np.float32)
        return steps if self.projection is None else steps @ self.projection


class PairFeatures:
    """Describes pairs of segments by their observations, as flat vectors to measure distances on.

    Args:
        obs_size: numbers in one observation.
        seed: seed of the fixed random projection (used when ``obs_size > STEP_FEATURES``).

    Example:
        >>> features = PairFeatures(obs_size=3)
        >>> features(np.zeros((5, 2, 10, 3), dtype=np.float32)).shape  # 5 pairs, 2 x 10 steps of 3
        (5, 60)
    """

    def __init__(self, obs_size: int, seed: int = 0) -> None:
        self.steps = StepFeatures(obs_size, seed)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """``[pairs, 2, length, *obs_shape]`` observations -> ``[pairs, features]`` float32."""
        return self.steps(obs.reshape(-1, self.steps.obs_size)).reshape(len(obs), -1)


class AskedPairs:
    """The features of the pairs asked so far: the centres that new queries keep away from.

    Bounded to the newest ``capacity`` pairs (features of 2 x 60 steps x 64 numbers are 30 kB
    a pair), since distances to every centre are computed at each query.

    Example:
        >>> asked = AskedPairs(capacity=2)
        >>> asked.add(np.ones((3, 4), dtype=np.float32))
        >>> asked.features().shape
        (2, 4)
    """

    def __init__(self, capacity: int = 2000) -> None:
        self.capacity = capacity
        self._rows: deque[np.ndarray] = deque(maxlen=capacity)

    def add(self, features: np.ndarray) -> None:
        """Remember the features of newly asked pairs (``[pairs, features]``)."""
        self._rows.extend(features)

    def features(self) -> np.ndarray | None:
        """``[pairs, features]`` of the remembered pairs, or ``None`` before the first."""
        return np.stack(self._rows) if self._rows else None

    def __len__(self) -> int:
        return len(self._rows)


def kcenter_greedy(candidates: np.ndarray, count: int, centres: np.ndarray | None = None) -> np.ndarray:
    """Indices of ``count`` candidates picked by greedy k-center.

    Each pick is the candidate farthest from its nearest centre; it then becomes a centre. The
    distances of all candidates are updated in one vectorised step per pick.

    Args:
        candidates: ``[n, features]``.
        count: how many to pick (at most ``n``).
        centres: ``[m, features]`` already covered (the pairs asked before), or ``None``.

    Returns:
        ``[count]`` distinct indices into ``candidates``, in the order picked.

    Example:
        >>> points = np.array([[0.0], [0.1], [5.0], [10.0]])
        >>> kcenter_greedy(points, 2, centres=np.array([[0.0]])).tolist()
        [3, 2]
    """
    if count > len(candidates):
        raise ValueError(f"cannot pick {count} of {len(candidates)} candidates")
    candidates = candidates.astype(np.float32, copy=False)
    squares = np.einsum("ij,ij->i", candidates, candidates)
    if centres is None or len(centres) == 0:
        # No centre yet: start from the candidate farthest from the candidates' mean.
        nearest = _squared_distances(candidates, squares, candidates.mean(axis=0, keepdims=True)).min(axis=1)
    else:
        nearest = np.full(len(candidates), np.inf, dtype=np.float32)
        # Chunks of centres bound the [n, chunk] distance matrix held at once.
        for start in range(0, len(centres), 1024):
            chunk = centres[start : start + 1024].astype(np.float32, copy=False)
            nearest = np.minimum(nearest, _squared_distances(candidates, squares, chunk).min(axis=1))
    picked = np.empty(count, dtype=np.int64)
    for i in range(count):  # one pick at a time is what greedy means; each pick is vectorised
        picked[i] = int(np.argmax(nearest))
        nearest = np.minimum(nearest, _squared_distances(candidates, squares, candidates[picked[i]][None])[:, 0])
        nearest[picked[i]] = -np.inf  # never picked twice, even among identical candidates
    return picked


def _squared_distances(points: np.ndarray, squares: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """``[n, m]`` squared distances from ``points`` (with their squared norms) to ``centres``."""
    centre_squares = np.einsum("ij,ij->i", centres, centres)
    return np.maximum(squares[:, None] + centre_squares[None, :] - 2.0 * points @ centres.T, 0.0)
