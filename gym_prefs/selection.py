"""Choosing which pairs of segments to ask about.

The paper asks about the pairs on which the ensemble's members disagree most. B-Pref (Lee et
al. 2021) compared that with other ways of choosing, several of which need fewer labels for
the same agent; all of them are here, named as in B-Pref:

- ``"disagreement"``: the variance over members of the predicted preference (the paper's).
- ``"entropy"``: the members' mean entropy of their predicted preference: the pairs each
  member finds hardest to call, its prediction nearest 50:50.
- ``"kcenter"``: coverage of observation space (:mod:`gym_prefs.coverage`), with no model.
- ``"kcenter_disagreement"`` / ``"kcenter_entropy"``: the better-scored half of the
  candidates by disagreement or entropy, then k-center among them.
- ``"random"``: uniformly random pairs.

Every method but ``"random"`` samples ``candidates_factor`` times the pairs asked for and keeps
the best; until the reward model's first fit all of them ask about random pairs, as B-Pref's
first queries are (the model cannot score anything yet).
"""

from __future__ import annotations

import numpy as np

from gym_prefs.coverage import AskedPairs, PairFeatures, kcenter_greedy
from gym_prefs.records import SELECTION_METHODS, SegmentPairs
from gym_prefs.reward_model import RewardEnsemble
from gym_prefs.segments import SegmentPlaces, SegmentPool, space_bytes

__all__ = [
    "SELECTION_METHODS",
    "pair_disagreement",
    "preference_entropy",
    "preference_variance",
    "recorded_returns",
    "select_pairs",
]

#: Candidate segments held in memory at once during selection (bytes).
CANDIDATE_BYTES = 256 * 2**20


def pair_disagreement(
    model: RewardEnsemble, obs: np.ndarray, actions: np.ndarray, batch_size: int | None = None
) -> np.ndarray:
    """Variance across members of the predicted preference for each pair.

    The ``pairs x 2 x length`` frames go through the ensemble in batches of
    ``batch_size`` rows, by default :attr:`RewardEnsemble.inference_batch_rows` (a fixed
    memory budget, :data:`~gym_prefs.batched_inference.INFERENCE_BATCH_BYTES`): with image
    observations the float inputs and activations of all candidates at once would take
    gigabytes.

    Args:
        model: the reward ensemble.
        obs: ``[pairs, 2, length, *obs_shape]``, as stored (uint8 images stay uint8 until
            each batch is converted).
        actions: ``[pairs, 2, length, *action_shape]``.
        batch_size: rows per forward pass; ``None`` for the model's memory-bounded default.

    Returns:
        ``[pairs]`` variance of ``P[first > second]`` over the members.
    """
    # Only the [members, pairs, 2, length] float32 rewards are ever held for all candidates.
    returns = model.predict_members(obs, actions, batch_size=batch_size).sum(axis=-1)  # [members, pairs, 2]
    return preference_variance(returns)


def preference_variance(returns: np.ndarray) -> np.ndarray:
    """Variance over members of ``P[first > second]`` from segment returns ``[members, pairs, 2]``.

    Example:
        >>> agree = [[[1.0, 0.0]], [[1.0, 0.0]]]
        >>> disagree = [[[1.0, 0.0]], [[0.0, 1.0]]]
        >>> float(preference_variance(np.array(agree))[0]), round(float(preference_variance(np.array(disagree))[0]), 3)
        (0.0, 0.053)
    """
    return _prob_first(returns).var(axis=0)


def preference_entropy(returns: np.ndarray) -> np.ndarray:
    """Mean over members of the entropy (nats) of each member's ``P[first > second]``.

    Highest, ``log 2``, for pairs every member calls 50:50 (B-Pref's entropy score).

    Example:
        >>> sure = [[[3.0, 0.0]], [[3.0, 0.0]]]
        >>> unsure = [[[0.1, 0.0]], [[0.0, 0.1]]]
        >>> bool(preference_entropy(np.array(unsure))[0] > preference_entropy(np.array(sure))[0])
        True
    """
    prob = np.clip(_prob_first(returns), 1e-12, 1.0 - 1e-12)  # a sure member scores ~0, not nan
    return -(prob * np.log(prob) + (1.0 - prob) * np.log1p(-prob)).mean(axis=0)


def _prob_first(returns: np.ndarray) -> np.ndarray:
    """``P[first > second]`` of each member from segment returns ``[members, pairs, 2]``."""
    logits = np.clip(returns[..., 0] - returns[..., 1], -50, 50)
    return 1.0 / (1.0 + np.exp(-logits))


def recorded_returns(pool: SegmentPool, places: SegmentPlaces) -> np.ndarray:
    """Every member's return of the segments at ``places``, from the rewards the pool recorded.

    No network runs: each segment is scored by the model that rewarded its steps when they
    were taken. Segments with a step rewarded before the first fit (no member had an opinion)
    come out ``nan``.

    Args:
        pool: a pool that records members' rewards (``pool.members > 0``).
        places: the candidate segments, paired in order (places 0 and 1, 2 and 3, ...).

    Returns:
        ``[members, pairs, 2]`` segment returns.
    """
    members = pool.cut(places, ["member_rewards"])["member_rewards"]  # [2 * pairs, length, members]
    return members.sum(axis=1).reshape(-1, 2, pool.members).transpose(2, 0, 1)


def select_pairs(
    pool: SegmentPool,
    model: RewardEnsemble,
    count: int,
    length: int,
    method: str,
    rng: np.random.Generator,
    candidates_factor: int = 10,
    asked: AskedPairs | None = None,
) -> SegmentPairs:
    """Pick ``count`` pairs of segments from ``pool`` by ``method`` (see the module docstring).

    When the pool records the members' rewards of its steps (``pool.members``), those score
    the candidates (:func:`recorded_returns`); otherwise the ensemble scores them afresh.

    Args:
        pool: the segment pool.
        model: the reward ensemble (scores the candidates).
        count: pairs to pick.
        length: steps per segment.
        method: one of :data:`SELECTION_METHODS`.
        rng: the random numbers of the candidates.
        candidates_factor: candidates sampled per pair picked.
        asked: the pairs asked before, for the k-center methods to keep away from; the
            picked pairs are added to it. ``None``: coverage of this query's candidates only.

    Returns:
        The pairs, with true rewards (and clips, when the pool records them).
    """
    if method not in SELECTION_METHODS:
        raise ValueError(f"query selection must be one of {SELECTION_METHODS}, got {method!r}")
    if count <= 0:
        raise ValueError(f"count must be positive, got {count}")
    scored = method in ("disagreement", "entropy", "kcenter_disagreement", "kcenter_entropy")
    # One member cannot disagree with itself; it can still be unsure (entropy) or cover ground.
    informed = method != "random" and model.is_fitted and (method != "disagreement" or model.n_members > 1)
    candidates = count * candidates_factor if informed else count
    places = pool.sample_places(2 * candidates, length, rng)
    if informed:
        keep = np.arange(candidates)
        if scored:
            returns = recorded_returns(pool, places) if pool.members else _fresh_returns(pool, model, places, length)
            score = preference_variance(returns) if method.endswith("disagreement") else preference_entropy(returns)
            score = np.where(np.isnan(score), -np.inf, score)  # unscored pairs are asked last
            # Alone, a score keeps the best; before k-center, the better half (B-Pref's split).
            kept = max(count, candidates // 2) if method.startswith("kcenter") else count
            keep = np.argsort(-score, kind="stable")[:kept]
        if method.startswith("kcenter"):
            features = _pair_features(pool, model, places[_both(keep)], length)
            centres = asked.features() if asked is not None else None
            keep = keep[kcenter_greedy(features, min(count, len(keep)), centres)]
        places = places[_both(keep)]
    pairs = pool.cut_pairs(places)
    if asked is not None and method.startswith("kcenter"):
        asked.add(PairFeatures(_obs_size(model))(pairs.obs))
    return pairs


def _both(pairs: np.ndarray) -> np.ndarray:
    """The places of both segments of each of ``pairs`` (pair i is places 2i and 2i + 1)."""
    return np.stack([2 * pairs, 2 * pairs + 1], axis=1).reshape(-1)


def _obs_size(model: RewardEnsemble) -> int:
    return int(np.prod(model.observation_space.shape or (1,)))


def _pairs_per_chunk(model: RewardEnsemble, length: int) -> int:
    """Pairs cut at once: with large images a copy of all candidates would not fit in memory."""
    step_bytes = space_bytes(model.observation_space) + space_bytes(model.action_space)
    return max(1, CANDIDATE_BYTES // (2 * length * step_bytes))


def _fresh_returns(pool: SegmentPool, model: RewardEnsemble, places: SegmentPlaces, length: int) -> np.ndarray:
    """``[members, pairs, 2]`` returns of the pairs at ``places`` (paired in order), run by ``model`` now."""
    chunk = _pairs_per_chunk(model, length)
    returns = []
    for start in range(0, len(places) // 2, chunk):
        pairs = pool.cut_pairs(places[2 * start : 2 * (start + chunk)])
        returns.append(model.predict_members(pairs.obs, pairs.actions).sum(axis=-1))
    return np.concatenate(returns, axis=1)


def _pair_features(pool: SegmentPool, model: RewardEnsemble, places: SegmentPlaces, length: int) -> np.ndarray:
    """``[pairs, features]`` of the pairs at ``places`` for k-center, cut a chunk at a time."""
    features = PairFeatures(_obs_size(model))
    chunk = _pairs_per_chunk(model, length)
    rows = []
    for start in range(0, len(places) // 2, chunk):
        obs = pool.cut(places[2 * start : 2 * (start + chunk)], ["obs"])["obs"]  # [2 * pairs, length, ...]
        rows.append(features(obs.reshape(-1, 2, *obs.shape[1:])))
    return np.concatenate(rows)
