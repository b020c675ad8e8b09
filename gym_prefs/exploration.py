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

__all__ = ["UncertaintyBonus"]


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
