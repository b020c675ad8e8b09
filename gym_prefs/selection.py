"""Choosing which pairs of segments to ask about."""

from __future__ import annotations

import numpy as np

from gym_prefs.reward_model import RewardEnsemble
from gym_prefs.segments import SegmentPool

__all__ = ["SELECTION_METHODS", "pair_disagreement", "select_pairs"]

SELECTION_METHODS = ("disagreement", "random")


def pair_disagreement(model: RewardEnsemble, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """Variance across members of the predicted preference for each pair.

    Args:
        model: the reward ensemble.
        obs: ``[pairs, 2, length, *obs_shape]``.
        actions: ``[pairs, 2, length, *action_shape]``.

    Returns:
        ``[pairs]`` variance of ``P[first > second]`` over the members.
    """
    returns = model.predict_members(obs, actions).sum(axis=-1)  # [members, pairs, 2]
    logits = np.clip(returns[..., 0] - returns[..., 1], -50, 50)
    prob_first = 1.0 / (1.0 + np.exp(-logits))
    return prob_first.var(axis=0)


def select_pairs(
    pool: SegmentPool,
    model: RewardEnsemble,
    count: int,
    length: int,
    method: str,
    rng: np.random.Generator,
    candidates_factor: int = 10,
) -> dict[str, np.ndarray]:
    """Pick ``count`` pairs of segments from ``pool``.

    ``"random"`` takes random pairs. ``"disagreement"`` (the paper's default) samples
    ``candidates_factor`` times more random pairs and keeps those on whose preference the
    ensemble members disagree most; it falls back to random pairs until the model is fitted.

    Returns:
        ``obs``, ``actions``, ``true_rewards`` with leading ``[count, 2, length]``.
    """
    if method not in SELECTION_METHODS:
        raise ValueError(f"query selection must be one of {SELECTION_METHODS}, got {method!r}")
    if count <= 0:
        raise ValueError(f"count must be positive, got {count}")
    informed = method == "disagreement" and model.is_fitted and model.n_members > 1
    candidates = count * candidates_factor if informed else count
    segments = pool.sample(2 * candidates, length, rng)
    pairs = {name: array.reshape(candidates, 2, *array.shape[1:]) for name, array in segments.items()}
    if not informed:
        return pairs
    variance = pair_disagreement(model, pairs["obs"], pairs["actions"])
    keep = np.argsort(-variance, kind="stable")[:count]
    return {name: array[keep] for name, array in pairs.items()}
