"""Choosing which pairs of segments to ask about."""

from __future__ import annotations

import numpy as np

from gym_prefs.records import SegmentPairs
from gym_prefs.reward_model import RewardEnsemble
from gym_prefs.segments import SegmentPlaces, SegmentPool, space_bytes

__all__ = ["SELECTION_METHODS", "pair_disagreement", "preference_variance", "recorded_disagreement", "select_pairs"]

SELECTION_METHODS = ("disagreement", "random")
#: Candidate segments held in memory at once during disagreement selection (bytes).
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
    logits = np.clip(returns[..., 0] - returns[..., 1], -50, 50)
    prob_first = 1.0 / (1.0 + np.exp(-logits))
    return prob_first.var(axis=0)


def recorded_disagreement(pool: SegmentPool, places: SegmentPlaces) -> np.ndarray:
    """:func:`pair_disagreement` from the members' rewards the pool recorded: no network runs.

    Each segment is scored by the model that rewarded its steps when they were taken. Pairs
    with a step rewarded before the first fit (no member had an opinion) score ``-inf``, so
    they come after every scored pair.

    Args:
        pool: a pool that records members' rewards (``pool.members > 0``).
        places: the candidate segments, paired in order (places 0 and 1, 2 and 3, ...).

    Returns:
        ``[pairs]`` variance of ``P[first > second]`` over the members.
    """
    members = pool.cut(places, ["member_rewards"])["member_rewards"]  # [2 * pairs, length, members]
    returns = members.sum(axis=1).reshape(-1, 2, pool.members).transpose(2, 0, 1)  # [members, pairs, 2]
    variance = preference_variance(returns)
    return np.where(np.isnan(variance), -np.inf, variance)


def select_pairs(
    pool: SegmentPool,
    model: RewardEnsemble,
    count: int,
    length: int,
    method: str,
    rng: np.random.Generator,
    candidates_factor: int = 10,
) -> SegmentPairs:
    """Pick ``count`` pairs of segments from ``pool``.

    ``"random"`` takes random pairs. ``"disagreement"`` (the paper's default) samples
    ``candidates_factor`` times more random pairs and keeps those on whose preference the
    ensemble members disagree most; it falls back to random pairs until the model is fitted.
    When the pool records the members' rewards of its steps (``pool.members``), those score
    the candidates (:func:`recorded_disagreement`); otherwise the ensemble scores them afresh.

    Returns:
        The pairs, with true rewards (and clips, when the pool records them).
    """
    if method not in SELECTION_METHODS:
        raise ValueError(f"query selection must be one of {SELECTION_METHODS}, got {method!r}")
    if count <= 0:
        raise ValueError(f"count must be positive, got {count}")
    informed = method == "disagreement" and model.is_fitted and model.n_members > 1
    candidates = count * candidates_factor if informed else count
    places = pool.sample_places(2 * candidates, length, rng)
    if informed:
        if pool.members:
            variance = recorded_disagreement(pool, places)
        else:
            variance = _fresh_disagreement(pool, model, places, length)
        keep = np.argsort(-variance, kind="stable")[:count]
        places = places[np.stack([2 * keep, 2 * keep + 1], axis=1).reshape(-1)]
    return pool.cut_pairs(places)


def _fresh_disagreement(pool: SegmentPool, model: RewardEnsemble, places: SegmentPlaces, length: int) -> np.ndarray:
    """:func:`pair_disagreement` of the pairs at ``places`` (paired in order), run by ``model`` now.

    Candidates are cut and scored a chunk at a time: with large images a copy of all of them
    (ten times the pairs asked for) would not fit in memory.
    """
    step_bytes = space_bytes(model.observation_space) + space_bytes(model.action_space)
    chunk = max(1, CANDIDATE_BYTES // (2 * length * step_bytes))
    scores = []
    for start in range(0, len(places) // 2, chunk):
        pairs = pool.cut_pairs(places[2 * start : 2 * (start + chunk)])
        scores.append(pair_disagreement(model, pairs.obs, pairs.actions))
    return np.concatenate(scores)
