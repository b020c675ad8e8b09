"""Fitting the reward model in a worker process, beside reinforcement learning.

As in the paper, reward fitting and RL run side by side. A thread would share the
interpreter's lock with the training loop, so the fit runs in its own process, which runs
:data:`gym_prefs.fit_program.PROGRAM` and speaks the protocol of :mod:`gym_prefs.fit_messages`.

The parent sends each label once; the worker keeps its own copy of the labelled pairs and of
the :class:`~gym_prefs.RewardTrainer` (optimiser state, L2 coefficients, random numbers), so
the fits it runs are exactly those the parent would have run in place.

The worker can die (the kernel's out-of-memory killer, a crash in native code) or stop
answering (stopped with SIGSTOP, hung). It sends a heartbeat every second, from the moment it
starts, so the parent can tell a slow fit from a stalled process without ever blocking on the
pipe: :meth:`FitWorker.result` raises :class:`FitWorkerError` instead of waiting forever.
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import subprocess
import sys
import threading
import time
from typing import IO, Any

from gym_prefs.comparisons import Comparisons
from gym_prefs.fit_messages import (
    END,
    HEARTBEAT_SECONDS,
    Failed,
    Fit,
    Fitted,
    Load,
    Loaded,
    NewLabels,
    ReplyReader,
    send,
)
from gym_prefs.fit_program import PROGRAM
from gym_prefs.fitting import FitReport, RewardTrainer
from gym_prefs.processes import signal_name

__all__ = ["FitWorker", "FitWorkerError"]

#: How often :meth:`FitWorker.result` looks at the process while no message arrives.
_POLL_SECONDS = 0.25
#: How long :meth:`FitWorker.close` waits for the worker to exit before killing it.
_CLOSE_SECONDS = 10.0
#: Lines of the worker's error output kept for error messages.
_STDERR_LINES = 30
#: What can make a process end with these signals, for the error message.
_SIGNAL_CAUSES = {
    "SIGKILL": "the kernel's out-of-memory killer or a kill command",
    "SIGSEGV": "a crash in native code (torch, numpy or a driver)",
    "SIGBUS": "a crash in native code (torch, numpy or a driver)",
    "SIGILL": "a crash in native code (torch, numpy or a driver)",
    "SIGABRT": "a crash in native code (torch, numpy or a driver)",
    "SIGTERM": "a kill command or the system shutting down",
}
_THREAD_HINT = "Pass fitting='thread' to PreferenceCallback to fit in this process, without a worker process."


class FitWorkerError(RuntimeError):
    """The fitting process died or stopped answering; it is gone and cannot fit any more.

    The message says what happened (exit code, signal, or stall) and ends with the last lines
    of the worker's error output, if it wrote any.
    """


class FitWorker:
    """A :class:`~gym_prefs.RewardTrainer` in its own process.

    The process starts (and imports torch) at once; :meth:`load` hands it a model and a
    trainer to continue from, then :meth:`start` and :meth:`result` run fits.

    :meth:`result` never blocks forever: if the process exits it raises
    :class:`FitWorkerError` within about a second, and if nothing at all (not even a
    heartbeat, sent every second) arrives for ``stall_timeout`` seconds it kills the process
    and raises :class:`FitWorkerError`. After that the worker is gone (:attr:`alive` is false);
    start a new one to go on.

    Args:
        stall_timeout: seconds of silence from the worker, while :meth:`result` waits, after
            which it counts as stalled (stopped or hung) and is killed. A slow fit is not a
            stall: the worker's heartbeats go on during it.

    Raises:
        ValueError: if ``stall_timeout`` is under two heartbeats (2 s).

    Example:
        >>> import numpy as np
        >>> from gymnasium import spaces
        >>> from gym_prefs import RewardEnsemble, SegmentPairs
        >>> model = RewardEnsemble(spaces.Box(-1, 1, (2,)), spaces.Discrete(2), seed=0)
        >>> data = Comparisons(model.observation_space, model.action_space, segment_length=3)
        >>> data.add(SegmentPairs(np.zeros((4, 2, 3, 2), np.float32), np.zeros((4, 2, 3), np.int64)), np.ones(4))
        >>> worker = FitWorker()
        >>> worker.load(RewardTrainer(model, seed=0), segment_length=3, max_comparisons=None)
        >>> worker.start(data, epochs=2)
        >>> state, report = worker.result()
        >>> report.pairs
        4
        >>> worker.close()
    """

    def __init__(self, stall_timeout: float = 60.0) -> None:
        if not stall_timeout >= 2 * HEARTBEAT_SECONDS:
            raise ValueError(
                f"stall_timeout must be at least {2 * HEARTBEAT_SECONDS:g} s (the worker sends a heartbeat "
                f"every {HEARTBEAT_SECONDS:g} s), got {stall_timeout!r}"
            )
        self.stall_timeout = float(stall_timeout)
        env = dict(os.environ)
        # One thread: the worker takes the core that RL leaves free, not both.
        env.setdefault("OMP_NUM_THREADS", "1")
        self._process = subprocess.Popen(
            [sys.executable, "-c", PROGRAM],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        assert self._process.stdin is not None and self._process.stdout is not None
        assert self._process.stderr is not None
        self._to_worker: IO[bytes] = self._process.stdin
        # Messages go out through one writer thread, so the caller never blocks on a full pipe
        # (the model while the worker still imports torch, or a large batch of image labels).
        self._outbox: queue.Queue[Load | Fit | None] = queue.Queue()
        self._writer = threading.Thread(target=self._write_loop, name="gym_prefs-fit-writer", daemon=True)
        self._writer.start()
        self._replies = ReplyReader(self._process.stdout)
        self._error_output = _ErrorOutput(self._process.stderr)
        self._next_id = 0  # labels with smaller ids have been sent
        self._busy = False
        self._unacknowledged = 0  # replies to "load" still to read
        self._closed = False
        self.seconds = 0.0  # fitting time reported by the worker

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self._process.pid

    @property
    def alive(self) -> bool:
        """Whether the worker process is still running (a stopped process counts as running)."""
        return self._process.poll() is None

    def load(
        self,
        trainer: RewardTrainer,
        segment_length: int,
        max_comparisons: int | None,
        data: Comparisons | None = None,
    ) -> None:
        """Continue with a copy of ``trainer`` (its model, optimiser, L2 and random numbers).

        Args:
            trainer: the trainer to continue from.
            segment_length: steps per segment of the labelled pairs.
            max_comparisons: fit on the newest this many labels only.
            data: labels the trainer has already seen, sent along now.

        Raises:
            FitWorkerError: if the worker is no longer running.
        """
        self._check_running()
        labels = self._new_labels(data) if data is not None else None
        self._outbox.put(Load.of(trainer, segment_length, max_comparisons, labels))
        self.seconds = trainer.seconds
        self._unacknowledged += 1

    def start(self, data: Comparisons, epochs: int, max_steps: int | None = None) -> None:
        """Send the labels the worker has not seen yet and start a fit of ``epochs`` epochs.

        Raises:
            RuntimeError: if a fit is already running.
            FitWorkerError: if the worker is no longer running.
        """
        if self._busy:
            raise RuntimeError("a fit is already running; call result() first")
        self._check_running()
        self._outbox.put(Fit(self._new_labels(data), epochs, max_steps))
        self._busy = True

    @property
    def ready(self) -> bool:
        """Whether a fit is running and :meth:`result` would not wait: its reply came, or the worker is gone."""
        return self._busy and (self._replies.waiting > self._unacknowledged or not self.alive)

    def result(self) -> tuple[dict[str, Any], FitReport]:
        """Wait for the running fit; return the fitted state dict and the report.

        Raises:
            RuntimeError: if no fit is running, or the fit raised an error in the worker (the
                message has its traceback; the worker is still usable).
            FitWorkerError: if the worker exited or stalled; it is gone afterwards.
        """
        if not self._busy:
            raise RuntimeError("no fit is running")
        self._busy = False
        while self._unacknowledged:
            self._unacknowledged -= 1
            self._expect(Loaded)
        fitted: Fitted = self._expect(Fitted)
        self.seconds = fitted.seconds
        return fitted.result()

    def close(self) -> None:
        """Stop the worker (it also stops by itself when this process ends).

        Safe to call more than once and on a worker that died. A worker in the middle of a fit
        gets up to 10 s to finish it and exit; one that does not exit by then, or that stops
        sending heartbeats for 3 s (stopped or hung: it would never exit), is killed.
        """
        if self._closed:
            return
        self._closed = True
        self._outbox.put(None)  # the writer closes the pipe; the worker sees the end and exits
        deadline = time.monotonic() + _CLOSE_SECONDS
        while self.alive and time.monotonic() < deadline:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=_POLL_SECONDS)
            if time.monotonic() - self._replies.last_heard > 3 * HEARTBEAT_SECONDS:
                break
        if self.alive:
            self._kill()
        self._process.wait()
        # The writer may have been stuck on a full pipe to a stopped worker; the kill ended that.
        self._writer.join(timeout=2)
        # The pipes end with the process, and the threads reading them with the pipes.
        self._replies.close()
        self._error_output.close()

    def _write_loop(self) -> None:
        while (message := self._outbox.get()) is not None:
            try:
                send(self._to_worker, message)
            except (OSError, ValueError):
                return  # the worker is gone: result() reports it
        with contextlib.suppress(OSError, ValueError):
            self._to_worker.close()

    def _expect(self, kind: type[Any]) -> Any:
        reply = self._next_reply()
        if isinstance(reply, Failed):
            raise RuntimeError(f"the reward-model fitting process failed:\n{reply.traceback}")
        if not isinstance(reply, kind):
            self._kill()
            raise FitWorkerError(
                f"the reward-model fitting process sent {type(reply).__name__} where {kind.__name__} was due; "
                f"it was killed. This is a bug in gym_prefs. {_THREAD_HINT}"
            )
        return reply

    def _next_reply(self) -> object:
        """The next reply from the worker; raises FitWorkerError if it exits or stalls."""
        # Silence counts from when this wait began (or the last message, if later): if this
        # process was itself stopped (Ctrl-Z stops the worker with it), the worker's silence
        # meanwhile is not a stall.
        since = time.monotonic()
        checked = since
        while True:
            reply = self._replies.get(timeout=_POLL_SECONDS)
            if reply is not None and reply is not END:
                return reply
            if reply is END or not self.alive:
                # The process ended: take a reply it sent just before, if any, else say why.
                reply = self._replies.last()
                if reply is not None:
                    return reply
                raise self._lost()
            now = time.monotonic()
            if now - checked > _POLL_SECONDS + 2 * HEARTBEAT_SECONDS:
                since = now  # this process was not running meanwhile: start counting again
            checked = now
            silent = now - max(since, self._replies.last_heard)
            if silent > self.stall_timeout:
                self._kill()
                raise self._lost(stalled_for=silent)

    def _check_running(self) -> None:
        if self._closed:
            raise RuntimeError("this FitWorker was closed; start a new one")
        if not self.alive or not self._writer.is_alive():
            raise self._lost()

    def _kill(self) -> None:
        with contextlib.suppress(OSError):
            self._process.kill()  # SIGKILL ends a stopped process too
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=5)

    def _lost(self, stalled_for: float | None = None) -> FitWorkerError:
        """The error for a worker that exited or was killed for stalling."""
        # The pipe ends a moment before the process does: wait for its exit code rather than
        # kill it and report our own SIGKILL.
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=2)
        if self.alive:
            self._kill()  # it closed its pipe without exiting, or sent garbage: it cannot answer any more
        what = _what_happened(self._process.returncode, stalled_for, self._replies.read_error)
        tail = "\n".join(f"    {line}" for line in self._error_output.last_lines())
        output = f"\nIts last error output:\n{tail}" if tail else " It wrote no error output."
        return FitWorkerError(
            f"the reward-model fitting process {what} Its process id was {self.pid}. {_THREAD_HINT}{output}"
        )

    def _new_labels(self, data: Comparisons) -> NewLabels:
        labels = NewLabels.since(data, self._next_id)
        if len(labels):
            self._next_id = labels.next_id
        return labels


def _what_happened(code: int | None, stalled_for: float | None, read_error: BaseException | None) -> str:
    """How the worker was lost, as the middle of a :class:`FitWorkerError` message."""
    if stalled_for is not None:
        return f"stopped answering for {stalled_for:.0f} s (stalled: stopped or hung); it was killed."
    if read_error is not None:
        return f"sent a reply this process could not read ({read_error!r}); it was killed."
    if code is not None and code < 0:
        name = signal_name(code)
        cause = _SIGNAL_CAUSES.get(name)
        return f"exited unexpectedly: it was killed by {name} (signal {-code})" + (f" — {cause}." if cause else ".")
    return f"exited unexpectedly with exit code {code}."


class _ErrorOutput:
    """Passes the worker's error output on to this process's stderr, keeping its last lines.

    The output is piped (not inherited) so that a :class:`FitWorkerError` can quote it; every
    line is still passed on at once, by a thread of its own.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._tail: collections.deque[str] = collections.deque(maxlen=_STDERR_LINES)
        self._thread = threading.Thread(target=self._forward, name="gym_prefs-fit-stderr", daemon=True)
        self._thread.start()

    def _forward(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            for raw in self._stream:
                line = raw.decode(errors="replace")
                self._tail.append(line.rstrip("\n"))
                # Looked up each time: test runners and notebooks replace sys.stderr.
                with contextlib.suppress(Exception):
                    sys.stderr.write(line)
                    sys.stderr.flush()

    def last_lines(self) -> list[str]:
        """The last lines written, once the process has ended (waits a moment for the thread)."""
        # The process has ended, so its error output ends too; let the forwarder catch up.
        self._thread.join(timeout=1)
        return list(self._tail)

    def close(self) -> None:
        """Close the pipe, once the thread reading it has finished (the process has ended)."""
        self._thread.join(timeout=2)
        if not self._thread.is_alive():
            self._stream.close()
