"""Exploration driven by the reward model's uncertainty: RUNE (Liang et al. 2022).

Where the ensemble's members disagree about a step's reward, the labels have not yet told the
model what that step is worth. RUNE pays the agent for going there: its reward is

    r̂(o, a) + β_t · std over members of r̂_i(o, a),    β_t = β_0 · (1 − ρ)^t

so early in training the agent seeks the states the next labels are most informative about,
and the bonus fades as training goes on. The wrappers already run every member on every step,
so the bonus costs a standard deviation over numbers at hand.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gym_prefs.coverage import StepFeatures

__all__ = ["StateEntropyReward", "UncertaintyBonus"]


@dataclass(frozen=True)
class UncertaintyBonus:
    """RUNE's bonus scale: ``scale`` (β_0) decaying by ``decay`` (ρ) per timestep.

    Example:
        >>> bonus = UncertaintyBonus(scale=0.05, decay=1e-5)
        >>> bonus.at(0), round(bonus.at(100_000), 4)
        (0.05, 0.0184)
    """

    scale: float
    decay: float = 1e-5

    def __post_init__(self) -> None:
        if not self.scale >= 0:
            raise ValueError(f"exploration_bonus must be 0 or more, got {self.scale}")
        if not 0 <= self.decay < 1:
            raise ValueError(f"exploration_bonus_decay must be in [0, 1), got {self.decay}")

    def at(self, timestep: int) -> float:
        """β_t: the bonus's weight at ``timestep``."""
        return self.scale * (1.0 - self.decay) ** timestep


class StateEntropyReward:
    """PEBBLE's reward for unsupervised pre-training: how far each new state lies from the others.

    PEBBLE (Lee et al. 2021) trains the agent, before the first labels, to maximise an estimate
    of the entropy of the states it visits: each state's reward is ``log(1 + d_k)``, with
    ``d_k`` its distance to the ``k``-th nearest of the states seen before (here the newest
    ``memory`` states), divided by the running standard deviation of those rewards. The agent so
    learns to reach states it has not seen, and the first segments labelled come from there,
    not from the few states a random policy reaches.

    Observations wider than :data:`~gym_prefs.coverage.STEP_FEATURES` numbers (images) are
    projected onto that many fixed random directions first.

    Args:
        obs_size: numbers in one observation.
        k: which nearest neighbour measures the distance (PEBBLE: 5).
        memory: newest states kept to measure against.
        seed: seed of the random projection.

    Example:
        >>> import numpy as np
        >>> entropy = StateEntropyReward(obs_size=2, k=1)
        >>> _ = entropy(np.zeros((4, 2)))  # four states at the origin
        >>> far, near = entropy(np.array([[9.0, 9.0], [0.0, 0.1]]))
        >>> bool(far > near)
        True
    """

    def __init__(self, obs_size: int, k: int = 5, memory: int = 10_000, seed: int = 0) -> None:
        self.features = StepFeatures(obs_size, seed)
        self.k = k
        self.memory = np.zeros((memory, self.features.size), dtype=np.float32)
        self.filled = 0
        self._next = 0
        self._moments = np.zeros(3)  # count, mean, sum of squared deviations (Welford)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """Rewards ``[n]`` of arriving at states ``obs`` ``[n, ...]``; they join the memory after."""
        points = self.features(obs.reshape(len(obs), -1))
        rewards = np.zeros(len(points), dtype=np.float32)
        if self.filled >= self.k:
            known = self.memory[: self.filled]
            squared = (
                np.einsum("ij,ij->i", points, points)[:, None]
                + np.einsum("ij,ij->i", known, known)[None, :]
                - 2.0 * points @ known.T
            )
            kth = np.partition(squared, self.k - 1, axis=1)[:, self.k - 1]
            rewards = np.log1p(np.sqrt(np.maximum(kth, 0.0))).astype(np.float32)
            self._observe(rewards)
            rewards /= max(np.sqrt(self._moments[2] / max(self._moments[0] - 1, 1)), 1e-8)
        self._remember(points)
        return rewards

    def _remember(self, points: np.ndarray) -> None:
        points = points[-len(self.memory) :]
        self.memory[(self._next + np.arange(len(points))) % len(self.memory)] = points
        self._next = (self._next + len(points)) % len(self.memory)
        self.filled = min(len(self.memory), self.filled + len(points))

    def _observe(self, rewards: np.ndarray) -> None:
        """Fold a batch into the running count, mean and squared deviations (Chan et al.'s merge)."""
        count, mean, squares = self._moments
        batch = rewards.astype(np.float64)
        total = count + len(batch)
        delta = batch.mean() - mean
        squares += ((batch - batch.mean()) ** 2).sum() + delta**2 * count * len(batch) / total
        self._moments = np.array([total, mean + delta * len(batch) / total, squares])
