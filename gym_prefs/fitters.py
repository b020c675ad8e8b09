"""Where the reward model is fitted: in place, in a background thread, or in a worker process.

Every :class:`Fitter` fits a clone of the model it is given, so the model being predicted with
never changes mid-fit, and hands back the fitted state in a :class:`FitResult`. A fit started
with :meth:`Fitter.start` is taken back with :meth:`Fitter.finish`; all three kinds run the
same fits with the same random numbers, so a seeded run gives the same models whichever is used.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gym_prefs.comparisons import Comparisons
from gym_prefs.fitter_protocol import FitJob, FitResult, Fitter, check_can_start, fit_job, running, state_copy
from gym_prefs.fitting import FitReport, RewardTrainer
from gym_prefs.process_fitter import MAX_FIT_WORKER_RESTARTS, ProcessFitter
from gym_prefs.reward_model import CUSTOM_CALLABLE, RewardEnsemble
from gym_prefs.timings import Timings

__all__ = [
    "FITTING_MODES",
    "MAX_FIT_WORKER_RESTARTS",
    "FitResult",
    "Fitter",
    "InlineFitter",
    "ProcessFitter",
    "ThreadFitter",
    "make_fitter",
]

#: Where the reward model can be fitted (see :func:`make_fitter`).
FITTING_MODES = ("process", "thread", "inline")


class InlineFitter:
    """Fits in place, inside :meth:`finish` (the caller waits); :meth:`start` only records the job.

    Args:
        model: the model to fit a clone of.
        trainer_kwargs: keyword arguments of :class:`~gym_prefs.RewardTrainer` (``lr``,
            ``batch_size``, ``seed``, ...).
        timings: where starting a fit is timed, as ``"fitting_handover"``.

    Example:
        >>> import numpy as np
        >>> from gymnasium import spaces
        >>> from gym_prefs.records import SegmentPairs
        >>> model = RewardEnsemble(spaces.Box(-1, 1, (2,)), spaces.Discrete(2), seed=0)
        >>> data = Comparisons(model.observation_space, model.action_space, segment_length=3)
        >>> data.add(SegmentPairs(np.zeros((4, 2, 3, 2)), np.zeros((4, 2, 3), np.int64)), np.ones(4))
        >>> fitter = InlineFitter(model, {"seed": 0})
        >>> fitter.start(data, epochs=2)
        >>> fitter.finish().report.pairs
        4
        >>> model.is_fitted  # the model given is left alone: a clone was fitted
        False
    """

    def __init__(
        self, model: RewardEnsemble, trainer_kwargs: Mapping[str, Any], timings: Timings | None = None
    ) -> None:
        self.trainer = RewardTrainer(model.clone(), **trainer_kwargs)
        self._timings = timings if timings is not None else Timings()
        self._job: FitJob | None = None
        self._closed = False

    @property
    def busy(self) -> bool:
        return self._job is not None

    @property
    def ready(self) -> bool:
        return self.busy  # the fit runs in finish(), in place

    @property
    def seconds(self) -> float:
        return self.trainer.seconds

    def start(self, data: Comparisons, epochs: int, max_steps: int | None = None) -> None:
        check_can_start(self.busy, self._closed)
        with self._timings.measure("fitting_handover"):
            self._job = fit_job(data, epochs, max_steps)

    def finish(self) -> FitResult:
        data, epochs, max_steps = running(self._job)
        self._job = None
        report = self.trainer.fit(data, epochs, max_steps)
        return FitResult(state_copy(self.trainer.model), report)

    def close(self) -> None:
        self._closed = True


class ThreadFitter:
    """Fits in a background thread; :meth:`finish` waits for it.

    The thread shares the interpreter's lock with the caller, so it slows RL down more than
    a :class:`ProcessFitter`; it needs no second process, though.

    Args:
        model: the model to fit a clone of.
        trainer_kwargs: keyword arguments of :class:`~gym_prefs.RewardTrainer`.
        timings: where starting a fit is timed, as ``"fitting_handover"``.

    Example:
        >>> import numpy as np
        >>> from gymnasium import spaces
        >>> from gym_prefs.records import SegmentPairs
        >>> model = RewardEnsemble(spaces.Box(-1, 1, (2,)), spaces.Discrete(2), seed=0)
        >>> data = Comparisons(model.observation_space, model.action_space, segment_length=3)
        >>> data.add(SegmentPairs(np.zeros((4, 2, 3, 2)), np.zeros((4, 2, 3), np.int64)), np.ones(4))
        >>> fitter = ThreadFitter(model, {"seed": 0})
        >>> fitter.start(data, epochs=2)  # returns at once; the fit runs beside the caller
        >>> fitter.finish().report.epochs
        2
        >>> fitter.close()
    """

    def __init__(
        self, model: RewardEnsemble, trainer_kwargs: Mapping[str, Any], timings: Timings | None = None
    ) -> None:
        self.trainer = RewardTrainer(model.clone(), **trainer_kwargs)
        self._timings = timings if timings is not None else Timings()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gym_prefs-fit")
        self._future: Future[FitReport] | None = None
        self._closed = False
        # The executor, not self: a fitter dropped without close() still ends its thread.
        weakref.finalize(self, self._executor.shutdown)

    @property
    def busy(self) -> bool:
        return self._future is not None

    @property
    def ready(self) -> bool:
        return self._future is not None and self._future.done()

    @property
    def seconds(self) -> float:
        return self.trainer.seconds

    def start(self, data: Comparisons, epochs: int, max_steps: int | None = None) -> None:
        check_can_start(self.busy, self._closed)
        with self._timings.measure("fitting_handover"):
            self._future = self._executor.submit(self.trainer.fit, *fit_job(data, epochs, max_steps))

    def finish(self) -> FitResult:
        future = running(self._future)
        self._future = None
        report = future.result()
        return FitResult(state_copy(self.trainer.model), report)

    def close(self) -> None:
        """Wait for a running fit, if any, and end the thread."""
        self._closed = True
        self._executor.shutdown(wait=True)


def make_fitter(
    mode: str,
    model: RewardEnsemble,
    trainer_kwargs: Mapping[str, Any],
    segment_length: int,
    max_comparisons: int | None,
    timings: Timings | None = None,
    store_path: str | Path | None = None,
) -> Fitter:
    """The fitter for ``mode``, one of :data:`FITTING_MODES`, fitting clones of ``model``.

    ``"process"`` gives a :class:`ProcessFitter`, except for a model whose member factory has
    no import path (it cannot be rebuilt in another process): that one is fitted in place, by
    an :class:`InlineFitter`. ``"thread"`` gives a :class:`ThreadFitter`, ``"inline"`` an
    :class:`InlineFitter`.

    Args:
        mode: where to fit.
        model: the model to fit clones of.
        trainer_kwargs: keyword arguments of :class:`~gym_prefs.RewardTrainer`.
        segment_length: steps per segment of the labelled pairs.
        max_comparisons: fit on the newest this many labels only (``None``: all).
        timings: where the fitter times its start-up, hand-over and the starting of fits.
        store_path: where the labels are kept, named if a :class:`ProcessFitter` gives up.

    Raises:
        ValueError: for an unknown ``mode``.

    Example:
        >>> from gymnasium import spaces
        >>> model = RewardEnsemble(spaces.Box(-1, 1, (2,)), spaces.Discrete(2), seed=0)
        >>> fitter = make_fitter("thread", model, {"seed": 0}, segment_length=3, max_comparisons=None)
        >>> type(fitter).__name__
        'ThreadFitter'
        >>> fitter.close()
    """
    if mode not in FITTING_MODES:
        raise ValueError(f"fitting must be one of {FITTING_MODES}, got {mode!r}")
    if mode == "process" and model.factory_path != CUSTOM_CALLABLE:
        return ProcessFitter(model, trainer_kwargs, segment_length, max_comparisons, timings, store_path)
    if mode == "thread":
        return ThreadFitter(model, trainer_kwargs, timings)
    return InlineFitter(model, trainer_kwargs, timings)
