"""The one interface of every fitter, and what a finished fit gives back.

A :class:`Fitter` fits a clone of a reward model to labels, one fit at a time, in place, in a
thread or in a worker process (see :mod:`gym_prefs.fitters`); the helpers below are what the
kinds share.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Protocol, TypeVar

import torch

from gym_prefs.comparisons import Comparisons
from gym_prefs.fitting import FitReport
from gym_prefs.reward_model import RewardEnsemble

__all__ = ["FitJob", "FitResult", "Fitter", "check_can_start", "fit_job", "running", "state_copy"]

_T = TypeVar("_T")


@dataclass(frozen=True)
class FitResult:
    """What a finished fit gives back.

    Attributes:
        state: the fitted model's state dict, already calibrated (ready to load and predict
            with); a copy of its own, which later fits do not change.
        report: how the fit went.

    Example:
        >>> result = FitResult({}, FitReport(0.4, 0.5, 0.9, 1e-4, epochs=5, pairs=200))
        >>> result.report.pairs
        200
    """

    state: dict[str, torch.Tensor]
    report: FitReport


class Fitter(Protocol):
    """Fits a copy of a reward model to labels, one fit at a time, somewhere.

    Example:
        >>> def refit(fitter: Fitter, data: Comparisons, model: RewardEnsemble) -> FitReport:
        ...     fitter.start(data, epochs=5)
        ...     result = fitter.finish()
        ...     model.load_state_dict(result.state)
        ...     return result.report
    """

    @property
    def busy(self) -> bool:
        """Whether a fit was started and not yet finished."""
        ...

    @property
    def ready(self) -> bool:
        """Whether a fit is running and :meth:`finish` would not wait for it (it has ended, or runs in place)."""
        ...

    @property
    def seconds(self) -> float:
        """Time spent fitting so far, wherever it ran."""
        ...

    def start(self, data: Comparisons, epochs: int, max_steps: int | None = None) -> None:
        """Start fitting on every row of ``data`` (rows added later are not seen).

        The fit runs ``epochs`` epochs or ``max_steps`` gradient steps, whichever ends first.

        Raises:
            RuntimeError: if a fit is already running, or the fitter was closed.
        """
        ...

    def finish(self) -> FitResult:
        """Wait for the running fit and return it.

        Raises:
            RuntimeError: if no fit is running.
        """
        ...

    def close(self) -> None:
        """Stop fitting and free what the fitter holds; safe to call more than once."""
        ...


#: What a started fit works on: the data as it was, its epochs and its cap on gradient steps.
FitJob = tuple[Comparisons, int, "int | None"]


def fit_job(data: Comparisons, epochs: int, max_steps: int | None = None) -> FitJob:
    """What a fit started now works on: ``data`` as it is now, ``epochs`` and ``max_steps``."""
    # A shallow copy fixes which rows this fit sees: rows are never changed in place, and rows
    # added (or dropped) later go to new positions or new arrays that the copy does not know.
    return copy.copy(data), epochs, max_steps


def check_can_start(busy: bool, closed: bool) -> None:
    """Refuse to start a fit while one runs, or after :meth:`Fitter.close`."""
    if closed:
        raise RuntimeError("this fitter was closed; make a new one with make_fitter()")
    if busy:
        raise RuntimeError("a fit is already running; call finish() first")


def running(job: _T | None) -> _T:
    """The running fit's ``job``; ``RuntimeError`` if no fit is running."""
    if job is None:
        raise RuntimeError("no fit is running; call start() first")
    return job


def state_copy(model: RewardEnsemble) -> dict[str, torch.Tensor]:
    """A copy of ``model``'s state dict, for a :class:`FitResult`."""
    # The trainer goes on fitting these very tensors in the next fit.
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
