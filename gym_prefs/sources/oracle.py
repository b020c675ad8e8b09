"""A synthetic labeler that compares true returns, optionally with human-like irrationality."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from gym_prefs.records import EQUAL, FIRST, SECOND, SKIP, Answer, Label, Query

__all__ = ["SyntheticOracle"]


class SyntheticOracle:
    """Prefers the segment with the higher true return, with the B-Pref irrationality knobs.

    The knobs are applied to each pair in this order (Lee et al. 2021):

    1. **skip**: if both segments' returns are below ``skip_threshold``, answer ``"skip"``;
    2. **equal**: if the returns differ by less than ``equal_threshold``, answer ``"equal"``;
    3. **myopia**: returns are re-summed with weight ``gamma ** (H - 1 - t)`` on step ``t``,
       so that the last step weighs 1 and earlier ones less;
    4. **rationality**: with ``beta > 0`` the first segment wins with probability
       ``sigmoid(beta * (R1 - R2))``; with ``beta <= 0`` the higher return wins (a tie is
       ``"equal"``);
    5. **mistakes**: the answer is flipped with probability ``mistake_rate``.

    With the defaults it is a perfect teacher. Thresholds are in units of return; B-Pref
    expresses them as fractions of the average segment return, so scale them accordingly.

    A pair whose true rewards hold a NaN or an infinity cannot be compared: the oracle answers
    ``"skip"`` (can't tell, never trained on) and warns once, rather than inventing a preference.

    Args:
        beta: Boltzmann rationality (``<= 0``: deterministic).
        gamma: myopic discount (1: not myopic).
        mistake_rate: probability of flipping a clear answer.
        skip_threshold: skip pairs whose returns are both below this (``None``: never skip).
        equal_threshold: call pairs closer than this ``"equal"``.
        seed: seed of the oracle's own random numbers.

    Example:
        >>> import numpy as np
        >>> from gym_prefs.segments import Segment
        >>> def seg(r):
        ...     return Segment(np.zeros((3, 1)), np.zeros((3, 1)), np.full(3, r))
        >>> oracle = SyntheticOracle()
        >>> oracle.request([Query(0, seg(1.0), seg(0.0)), Query(1, seg(0.0), seg(1.0))])
        >>> [a.label for a in oracle.poll()]
        ['first', 'second']
        >>> oracle.label(np.array([[np.nan, 1.0]]), np.array([[0.0, 0.0]]))
        ['skip']
    """

    name = "oracle"

    def __init__(
        self,
        beta: float = 0.0,
        gamma: float = 1.0,
        mistake_rate: float = 0.0,
        skip_threshold: float | None = None,
        equal_threshold: float = 0.0,
        seed: int | None = None,
    ) -> None:
        if not 0.0 <= mistake_rate <= 1.0:
            raise ValueError(f"mistake_rate must be in [0, 1], got {mistake_rate}")
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        if equal_threshold < 0:
            raise ValueError(f"equal_threshold must be >= 0, got {equal_threshold}")
        self.beta = beta
        self.gamma = gamma
        self.mistake_rate = mistake_rate
        self.skip_threshold = skip_threshold
        self.equal_threshold = equal_threshold
        self.rng = np.random.default_rng(seed)
        self._ready: list[Answer] = []
        self._warned_not_finite = False

    def label(self, first_rewards: np.ndarray, second_rewards: np.ndarray) -> list[Label]:
        """Labels for pairs given their true rewards, each ``[pairs, length]``."""
        first_rewards = np.asarray(first_rewards, dtype=np.float64)
        second_rewards = np.asarray(second_rewards, dtype=np.float64)
        unknown = ~(np.isfinite(first_rewards).all(axis=1) & np.isfinite(second_rewards).all(axis=1))
        if unknown.any():  # compared as zeros below, then answered "skip"
            first_rewards = np.where(np.isfinite(first_rewards), first_rewards, 0.0)
            second_rewards = np.where(np.isfinite(second_rewards), second_rewards, 0.0)
        r1, r2 = first_rewards.sum(axis=1), second_rewards.sum(axis=1)
        length = first_rewards.shape[1]
        weights = self.gamma ** np.arange(length - 1, -1, -1)
        m1, m2 = first_rewards @ weights, second_rewards @ weights
        if self.beta > 0:
            logit = np.clip(self.beta * (m1 - m2), -50, 50)
            first_wins = self.rng.random(len(r1)) < 1.0 / (1.0 + np.exp(-logit))
            tie = np.zeros(len(r1), dtype=bool)
        else:
            first_wins = m1 > m2
            tie = m1 == m2
        flip = self.rng.random(len(r1)) < self.mistake_rate
        first_wins = first_wins ^ flip
        labels = np.where(first_wins, FIRST, SECOND).astype(object)
        labels[tie] = EQUAL
        labels[np.abs(r1 - r2) < self.equal_threshold] = EQUAL
        if self.skip_threshold is not None:
            labels[np.maximum(r1, r2) < self.skip_threshold] = SKIP
        # A NaN would compare as False everywhere above, which made it "second": say can't tell.
        if unknown.any():
            labels[unknown] = SKIP
            if not self._warned_not_finite:
                warnings.warn(
                    f"{int(unknown.sum())} of {len(labels)} pairs have a NaN or infinite true reward; the oracle "
                    "answers them \"skip\" (can't tell). Check the env's reward.",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self._warned_not_finite = True
        return list(labels)

    def request(self, queries: Sequence[Query]) -> None:
        if not queries:
            return
        first = np.stack([q.first.true_rewards for q in queries])
        second = np.stack([q.second.true_rewards for q in queries])
        for query, label in zip(queries, self.label(first, second), strict=True):
            self._ready.append(Answer(query.id, label, labeler=self.name))

    def poll(self, timeout: float | None = 0.0) -> list[Answer]:
        answers, self._ready = self._ready, []
        return answers

    @property
    def pending(self) -> int:
        return len(self._ready)

    def close(self) -> None:
        self._ready = []

    def __repr__(self) -> str:
        return (
            f"SyntheticOracle(beta={self.beta}, gamma={self.gamma}, mistake_rate={self.mistake_rate}, "
            f"skip_threshold={self.skip_threshold}, equal_threshold={self.equal_threshold})"
        )
