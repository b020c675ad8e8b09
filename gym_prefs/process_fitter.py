"""Fitting in a worker process beside RL, as in the paper, with dead workers replaced."""

from __future__ import annotations

import sys
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from gym_prefs.comparisons import Comparisons
from gym_prefs.fit_worker import FitWorker, FitWorkerError
from gym_prefs.fitter_protocol import FitJob, FitResult, check_can_start, fit_job, running, state_copy
from gym_prefs.fitting import FitReport, RewardTrainer
from gym_prefs.reward_model import CUSTOM_CALLABLE, RewardEnsemble
from gym_prefs.timings import Timings

__all__ = ["MAX_FIT_WORKER_RESTARTS", "ProcessFitter"]

#: New fitting processes a :class:`ProcessFitter` starts after the one before died or stalled.
MAX_FIT_WORKER_RESTARTS = 2


class ProcessFitter:
    """Fits in a worker process beside RL, as in the paper (see :class:`~gym_prefs.fit_worker.FitWorker`).

    The worker process starts at once (timed as ``"fitting_startup"``) and imports torch while
    the first fit runs here, in :meth:`finish`: before RL starts, the caller waits for that fit
    anyway. Before the second fit the trainer (model, optimiser, L2, random numbers) is handed
    over to the worker (timed as ``"fitting_handover"``, like starting a fit), and every fit
    from then on runs there, exactly as it would have run here.

    A worker that dies or stalls is replaced, up to :data:`MAX_FIT_WORKER_RESTARTS` times, with
    a message on stderr: the new one continues from the model of the last finished fit with a
    fresh trainer (the dead one's optimiser state is lost, so a seeded run is no longer
    bit-for-bit reproducible from there) and runs the interrupted fit again on the same labels.
    After that a :class:`~gym_prefs.fit_worker.FitWorkerError` is raised: a worker killed again
    and again is usually the out-of-memory killer, which a new process will not escape.

    Args:
        model: the model to fit a clone of; its member factory must be importable by name.
        trainer_kwargs: keyword arguments of :class:`~gym_prefs.RewardTrainer`.
        segment_length: steps per segment of the labelled pairs.
        max_comparisons: fit on the newest this many labels only (``None``: all).
        timings: where start-up, hand-over and starting a fit are timed.
        store_path: where the labels are kept, named when the fitter gives up.

    Raises:
        ValueError: if the model's member factory has no import path (a lambda or a local
            function cannot be rebuilt in another process).

    Example:
        >>> import numpy as np
        >>> from gymnasium import spaces
        >>> from gym_prefs.records import SegmentPairs
        >>> model = RewardEnsemble(spaces.Box(-1, 1, (2,)), spaces.Discrete(2), seed=0)
        >>> data = Comparisons(model.observation_space, model.action_space, segment_length=3)
        >>> data.add(SegmentPairs(np.zeros((4, 2, 3, 2)), np.zeros((4, 2, 3), np.int64)), np.ones(4))
        >>> fitter = ProcessFitter(model, {"seed": 0}, segment_length=3, max_comparisons=None)
        >>> for epochs in (2, 1):  # the first fit runs here, the second in the worker
        ...     fitter.start(data, epochs)
        ...     result = fitter.finish()
        >>> result.report.epochs
        1
        >>> fitter.close()
    """

    def __init__(
        self,
        model: RewardEnsemble,
        trainer_kwargs: Mapping[str, Any],
        segment_length: int,
        max_comparisons: int | None,
        timings: Timings | None = None,
        store_path: str | Path | None = None,
    ) -> None:
        if model.factory_path == CUSTOM_CALLABLE:
            raise ValueError(
                "a reward model whose member_factory has no import path (a lambda or a local function) cannot be "
                "rebuilt in a worker process; pass the factory as 'module:name', or fit in this process "
                "(make_fitter('thread', ...) or PreferenceCallback(fitting='thread'))"
            )
        self._trainer_kwargs = dict(trainer_kwargs)
        self._segment_length = segment_length
        self._max_comparisons = max_comparisons
        self._timings = timings if timings is not None else Timings()
        self._store_path = store_path
        # Fits here until the first one has finished, then goes to the worker.
        self._trainer: RewardTrainer | None = RewardTrainer(model.clone(), **self._trainer_kwargs)
        # The model of the last finished fit: where a replacement worker continues from.
        self._last_fitted = model.clone()
        self._fits_finished = 0
        self._job: FitJob | None = None
        self._restarts = 0
        self._closed = False
        self._workers: list[FitWorker] = []  # every worker started, to close them all
        with self._timings.measure("fitting_startup"):
            self._worker = self._new_worker()
        # The list, not self: a worker started later to replace a dead one is closed too.
        weakref.finalize(self, _close_all, self._workers)

    @property
    def busy(self) -> bool:
        return self._job is not None

    @property
    def ready(self) -> bool:
        # The first fit runs in finish(), in this process, while the worker starts.
        return self.busy and (self._trainer is not None or self._worker.ready)

    @property
    def seconds(self) -> float:
        return self._trainer.seconds if self._trainer is not None else self._worker.seconds

    @property
    def worker(self) -> FitWorker:
        """The current worker process (a new one after a restart)."""
        return self._worker

    @property
    def restarts(self) -> int:
        """Workers started so far to replace one that died or stalled."""
        return self._restarts

    def start(self, data: Comparisons, epochs: int, max_steps: int | None = None) -> None:
        check_can_start(self.busy, self._closed)
        if self._trainer is not None and self._fits_finished:
            with self._timings.measure("fitting_handover"):
                self._hand_over()
        with self._timings.measure("fitting_handover"):
            self._job = fit_job(data, epochs, max_steps)
            if self._trainer is None:
                self._start_in_worker()

    def finish(self) -> FitResult:
        data, epochs, max_steps = running(self._job)
        try:
            if self._trainer is not None:
                # The first fit, here: the worker is still importing torch meanwhile.
                report = self._trainer.fit(data, epochs, max_steps)
                state = state_copy(self._trainer.model)
            else:
                state, report = self._result_from_worker()
        finally:
            self._job = None
        self._last_fitted.load_state_dict(state)
        self._fits_finished += 1
        return FitResult(state, report)

    def close(self) -> None:
        """Stop every worker process started (a running fit gets up to 10 s to end)."""
        self._closed = True
        _close_all(self._workers)

    def _new_worker(self) -> FitWorker:
        worker = FitWorker()
        self._workers.append(worker)
        return worker

    def _hand_over(self) -> None:
        """Have the worker continue from this process's trainer."""
        assert self._trainer is not None
        trainer, self._trainer = self._trainer, None
        try:
            self._worker.load(trainer, self._segment_length, self._max_comparisons)
        except FitWorkerError as error:  # died while it started: a new one continues instead
            self._replace_worker(error, seconds=trainer.seconds)

    def _start_in_worker(self) -> None:
        assert self._job is not None
        while True:
            try:
                self._worker.start(*self._job)
                return
            except FitWorkerError as error:
                self._replace_worker(error, seconds=self._worker.seconds)

    def _result_from_worker(self) -> tuple[dict[str, torch.Tensor], FitReport]:
        while True:
            try:
                return self._worker.result()
            except FitWorkerError as error:  # noticed within a second (a stall: within a minute)
                self._replace_worker(error, seconds=self._worker.seconds)
                self._start_in_worker()

    def _replace_worker(self, error: FitWorkerError, seconds: float) -> None:
        """Start a new worker after ``error`` (the old one died or stalled), or give up.

        The new worker continues from the model of the last finished fit, with a fresh
        trainer that goes on counting from ``seconds`` of fitting.
        """
        while True:
            self._worker.close()
            if self._restarts >= MAX_FIT_WORKER_RESTARTS:
                where = self._store_path if self._store_path is not None else "the store"
                raise FitWorkerError(
                    f"{error}\nThe fitting process was replaced {MAX_FIT_WORKER_RESTARTS} times already; giving up. "
                    f"Every label is in {where}: start the run again on it."
                ) from error
            self._restarts += 1
            print(
                f"gym_prefs: {error}\ngym_prefs: starting a new fitting process "
                f"({self._restarts} of at most {MAX_FIT_WORKER_RESTARTS}); it refits on every label.",
                file=sys.stderr,
            )
            with self._timings.measure("fitting_startup"):
                self._worker = self._new_worker()
                trainer = RewardTrainer(self._last_fitted.clone(), **self._trainer_kwargs)
                trainer.seconds = seconds
                try:
                    self._worker.load(trainer, self._segment_length, self._max_comparisons)
                    return
                except FitWorkerError as again:  # the new one died at once too
                    error = again


def _close_all(workers: list[FitWorker]) -> None:
    for worker in workers:
        worker.close()
