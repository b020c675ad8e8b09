"""How many labels should have been asked for by a given timestep."""

from __future__ import annotations

import math

__all__ = ["LabelSchedule"]


class LabelSchedule:
    """Splits a label budget into an initial share and a rate over the run.

    ``initial_fraction`` of ``total`` is asked before RL starts. The rest is asked at a rate
    proportional to ``scale / (T + scale)`` at timestep ``T`` (the paper's MuJoCo schedule,
    ``scale = 2e6``), or at a constant rate, so that the budget is used up at ``horizon``.
    Integrating the decaying rate gives the closed form used by :meth:`due`::

        due(T) = initial + rest * log(1 + T / scale) / log(1 + horizon / scale)

    Args:
        total: the label budget (queries asked, answered or not).
        horizon: the timestep by which every label should have been asked.
        initial_fraction: share asked before RL (the paper: 0.25).
        kind: ``"decay"`` or ``"constant"``.
        scale: the decay's time scale in timesteps.

    Example:
        >>> s = LabelSchedule(total=700, horizon=1_000_000)
        >>> s.initial, s.due(0), s.due(500_000), s.due(1_000_000)
        (175, 175, 463, 700)
    """

    def __init__(
        self,
        total: int,
        horizon: int,
        initial_fraction: float = 0.25,
        kind: str = "decay",
        scale: float = 2e6,
    ) -> None:
        if total < 0:
            raise ValueError(f"total_labels must be >= 0, got {total}")
        if not 0.0 <= initial_fraction <= 1.0:
            raise ValueError(f"initial_fraction must be in [0, 1], got {initial_fraction}")
        if kind not in ("decay", "constant"):
            raise ValueError(f"schedule must be 'decay' or 'constant', got {kind!r}")
        if scale <= 0:
            raise ValueError(f"schedule scale must be positive, got {scale}")
        self.total = total
        self.horizon = max(1, horizon)
        self.kind = kind
        self.scale = scale
        self.initial = round(total * initial_fraction)

    def due(self, timestep: int) -> int:
        """Labels that should have been asked for by ``timestep`` (counting the initial ones)."""
        rest = self.total - self.initial
        progress = min(1.0, max(0.0, timestep / self.horizon))
        if self.kind == "decay":
            progress = math.log1p(progress * self.horizon / self.scale) / math.log1p(self.horizon / self.scale)
        return self.initial + math.floor(rest * progress + 1e-9)
