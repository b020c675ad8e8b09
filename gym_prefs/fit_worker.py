"""Fitting the reward model in a worker process, beside reinforcement learning.

As in the paper, reward fitting and RL run side by side. A thread would share the
interpreter's lock with the training loop, so the fit runs in its own process. The worker is
started as its own program (``python -c ...``), never by re-importing the user's script, so
training scripts without an ``if __name__ == "__main__"`` guard work.

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
import io
import os
import pickle
import queue
import struct
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import IO, Any

import numpy as np
import torch

from gym_prefs.comparisons import Comparisons
from gym_prefs.fitting import FitReport, RewardTrainer
from gym_prefs.processes import signal_name
from gym_prefs.reward_model import RewardEnsemble

__all__ = ["FitWorker", "FitWorkerError"]

#: Every message is this header (the payload's length) and a pickled payload. A header of
#: length 0 with no payload is a heartbeat.
_HEADER = struct.Struct("!Q")
#: How often the worker sends a heartbeat.
_HEARTBEAT_SECONDS = 1.0
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

# The worker's program. It starts the heartbeat with the standard library alone, before
# importing gym_prefs (and torch), which takes seconds: a worker that is still importing is
# alive, and one stopped while importing is noticed too. Heartbeats and replies share one pipe,
# so every write holds ``lock``.
_BOOTSTRAP = f"""
import struct, sys, threading, time
lock = threading.Lock()
out = sys.stdout.buffer
def beat():
    try:
        while True:
            with lock:
                out.write(struct.pack({_HEADER.format!r}, 0))
                out.flush()
            time.sleep({_HEARTBEAT_SECONDS!r})
    except (OSError, ValueError):
        pass  # the parent is gone
threading.Thread(target=beat, name="gym_prefs-fit-heartbeat", daemon=True).start()
from gym_prefs.fit_worker import main
main(lock)
"""


class FitWorkerError(RuntimeError):
    """The fitting process died or stopped answering; it is gone and cannot fit any more.

    The message says what happened (exit code, signal, or stall) and ends with the last lines
    of the worker's error output, if it wrote any.
    """


# Messages to the worker. Small frozen dataclasses rather than tuples: both sides name the
# fields, and they pickle by reference to this module, which the worker imports too.
@dataclass(frozen=True)
class _Load:
    model: bytes
    device: str
    segment_length: int
    max_comparisons: int | None
    trainer_kwargs: dict[str, Any]
    trainer_state: bytes
    labels: tuple[np.ndarray, ...] | None


@dataclass(frozen=True)
class _Fit:
    labels: tuple[np.ndarray, ...]
    epochs: int


# Replies from the worker.
@dataclass(frozen=True)
class _Loaded:
    pass


@dataclass(frozen=True)
class _Fitted:
    model: bytes
    report: dict[str, Any]
    seconds: float


@dataclass(frozen=True)
class _Failed:
    traceback: str


#: Put on the inbox by the reader thread when the pipe from the worker ends.
_END = object()


def _send(stream: IO[bytes], message: object) -> None:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(payload)))
    stream.write(payload)
    stream.flush()


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return data


def _receive(stream: IO[bytes]) -> object:
    (size,) = _HEADER.unpack(_read_exactly(stream, _HEADER.size))
    return pickle.loads(_read_exactly(stream, size))


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
        >>> model = RewardEnsemble(spaces.Box(-1, 1, (2,)), spaces.Discrete(2), seed=0)
        >>> data = Comparisons(model.observation_space, model.action_space, segment_length=3)
        >>> data.add(np.zeros((4, 2, 3, 2), np.float32), np.zeros((4, 2, 3), np.int64), np.ones(4, np.float32))
        >>> worker = FitWorker()
        >>> worker.load(RewardTrainer(model, seed=0), segment_length=3, max_comparisons=None)
        >>> worker.start(data, epochs=2)
        >>> state, report = worker.result()
        >>> report.pairs
        4
        >>> worker.close()
    """

    def __init__(self, stall_timeout: float = 60.0) -> None:
        if not stall_timeout >= 2 * _HEARTBEAT_SECONDS:
            raise ValueError(
                f"stall_timeout must be at least {2 * _HEARTBEAT_SECONDS:g} s (the worker sends a heartbeat "
                f"every {_HEARTBEAT_SECONDS:g} s), got {stall_timeout!r}"
            )
        self.stall_timeout = float(stall_timeout)
        env = dict(os.environ)
        # One thread: the worker takes the core that RL leaves free, not both.
        env.setdefault("OMP_NUM_THREADS", "1")
        self._process = subprocess.Popen(
            [sys.executable, "-c", _BOOTSTRAP],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        assert self._process.stdin is not None and self._process.stdout is not None
        assert self._process.stderr is not None
        self._to_worker: IO[bytes] = self._process.stdin
        self._from_worker: IO[bytes] = self._process.stdout
        self._error_output: IO[bytes] = self._process.stderr
        self._last_heard = time.monotonic()  # when the last message or heartbeat arrived
        # Messages go out through one writer thread, so the caller never blocks on a full pipe
        # (the model while the worker still imports torch, or a large batch of image labels).
        self._outbox: queue.Queue[_Load | _Fit | None] = queue.Queue()
        self._writer = threading.Thread(target=self._write_loop, name="gym_prefs-fit-writer", daemon=True)
        # Replies come in through a reader thread, so result() can wait with a timeout and
        # heartbeats are read (and the worker never blocks writing) even while nobody waits.
        self._inbox: queue.Queue[object] = queue.Queue()
        self._read_error: BaseException | None = None
        self._reader = threading.Thread(target=self._read_loop, name="gym_prefs-fit-reader", daemon=True)
        # The error output is piped (not inherited) so that a FitWorkerError can quote it; every
        # line is still passed on to this process's stderr at once.
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=_STDERR_LINES)
        self._stderr_forwarder = threading.Thread(target=self._forward_stderr, name="gym_prefs-fit-stderr", daemon=True)
        for thread in (self._writer, self._reader, self._stderr_forwarder):
            thread.start()
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
        state = io.BytesIO()
        torch.save(trainer.state_dict(), state)
        kwargs = {
            "lr": trainer.optimizer.param_groups[0]["lr"],
            "batch_size": trainer.batch_size,
            "val_fraction": trainer.val_fraction,
            "random_response": trainer.random_response,
            "l2_bounds": trainer.l2_bounds,
        }
        model = trainer.model
        self._check_running()
        labels = self._new_labels(data) if data is not None else None
        self._outbox.put(
            _Load(
                model=model.to_bytes(),
                device=str(model.device),
                segment_length=segment_length,
                max_comparisons=max_comparisons,
                trainer_kwargs=kwargs,
                trainer_state=state.getvalue(),
                labels=labels,
            )
        )
        self.seconds = trainer.seconds
        self._unacknowledged += 1

    def start(self, data: Comparisons, epochs: int) -> None:
        """Send the labels the worker has not seen yet and start a fit of ``epochs`` epochs.

        Raises:
            RuntimeError: if a fit is already running.
            FitWorkerError: if the worker is no longer running.
        """
        if self._busy:
            raise RuntimeError("a fit is already running; call result() first")
        self._check_running()
        self._outbox.put(_Fit(self._new_labels(data), epochs))
        self._busy = True

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
            self._expect(_Loaded)
        fitted = self._expect(_Fitted)
        self.seconds = fitted.seconds
        return RewardEnsemble.state_from_bytes(fitted.model), FitReport(**fitted.report)

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
            if time.monotonic() - self._last_heard > 3 * _HEARTBEAT_SECONDS:
                break
        if self.alive:
            self._kill()
        self._process.wait()
        # The writer may have been stuck on a full pipe to a stopped worker; the kill ended that.
        self._writer.join(timeout=2)
        # The pipes end with the process; the threads reading them finish at once then (a thread
        # still inside a read would make close() wait for it, so they are joined first).
        for thread, stream in ((self._reader, self._from_worker), (self._stderr_forwarder, self._error_output)):
            thread.join(timeout=2)
            if not thread.is_alive():
                stream.close()

    # The parent's threads.

    def _write_loop(self) -> None:
        while (message := self._outbox.get()) is not None:
            try:
                _send(self._to_worker, message)
            except (OSError, ValueError):
                return  # the worker is gone: result() reports it
        with contextlib.suppress(OSError, ValueError):
            self._to_worker.close()

    def _read_loop(self) -> None:
        try:
            while True:
                (size,) = _HEADER.unpack(_read_exactly(self._from_worker, _HEADER.size))
                self._last_heard = time.monotonic()
                if not size:
                    continue  # a heartbeat
                payload = _read_exactly(self._from_worker, size)
                self._last_heard = time.monotonic()
                try:
                    message = pickle.loads(payload)
                except Exception as error:
                    self._read_error = error  # result() kills the worker and reports this
                    return
                self._inbox.put(message)
        except (EOFError, OSError, ValueError):
            pass  # the worker exited (or close() ran): result() finds out why from the process
        finally:
            self._inbox.put(_END)

    def _forward_stderr(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            for raw in self._error_output:
                line = raw.decode(errors="replace")
                self._stderr_tail.append(line.rstrip("\n"))
                # Looked up each time: test runners and notebooks replace sys.stderr.
                with contextlib.suppress(Exception):
                    sys.stderr.write(line)
                    sys.stderr.flush()

    # Waiting for replies.

    def _expect(self, kind: type[Any]) -> Any:
        reply = self._next_reply()
        if isinstance(reply, _Failed):
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
            try:
                reply = self._inbox.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                reply = None
            if reply is not None and reply is not _END:
                return reply
            if reply is _END or not self.alive:
                # The process ended: take a reply it sent just before, if any, else say why.
                self._reader.join(timeout=1)
                with contextlib.suppress(queue.Empty):
                    reply = self._inbox.get_nowait()
                    if reply is not _END:
                        return reply
                raise self._lost()
            now = time.monotonic()
            if now - checked > _POLL_SECONDS + 2 * _HEARTBEAT_SECONDS:
                since = now  # this process was not running meanwhile: start counting again
            checked = now
            silent = now - max(since, self._last_heard)
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
        code = self._process.returncode
        if stalled_for is not None:
            what = f"stopped answering for {stalled_for:.0f} s (stalled: stopped or hung); it was killed."
        elif self._read_error is not None:
            what = f"sent a reply this process could not read ({self._read_error!r}); it was killed."
        elif code is not None and code < 0:
            name = signal_name(code)
            cause = _SIGNAL_CAUSES.get(name)
            what = f"exited unexpectedly: it was killed by {name} (signal {-code})" + (f" — {cause}." if cause else ".")
        else:
            what = f"exited unexpectedly with exit code {code}."
        # The process has ended, so its error output ends too; let the forwarder catch up.
        self._stderr_forwarder.join(timeout=1)
        tail = "\n".join(f"    {line}" for line in list(self._stderr_tail))
        output = f"\nIts last error output:\n{tail}" if tail else " It wrote no error output."
        return FitWorkerError(
            f"the reward-model fitting process {what} Its process id was {self.pid}. {_THREAD_HINT}{output}"
        )

    def _new_labels(self, data: Comparisons) -> tuple[np.ndarray, ...]:
        new = data.ids >= self._next_id
        if new.any():
            self._next_id = int(data.ids[new].max()) + 1
        return data.obs[new], data.actions[new], data.mu[new], data.ids[new]


def _serve(inbox: IO[bytes], outbox: IO[bytes], lock: threading.Lock) -> None:
    import traceback

    def reply(message: _Loaded | _Fitted | _Failed) -> None:
        with lock:  # the heartbeat thread writes to the same pipe
            _send(outbox, message)

    torch.set_num_threads(1)
    trainer: RewardTrainer | None = None
    data: Comparisons | None = None
    while True:
        try:
            message = _receive(inbox)
        except EOFError:
            return  # the parent closed the pipe or ended
        try:
            if isinstance(message, _Load):
                model = RewardEnsemble.from_bytes(message.model, device=message.device)
                data = Comparisons(
                    model.observation_space, model.action_space, message.segment_length, message.max_comparisons
                )
                trainer = RewardTrainer(model, **message.trainer_kwargs)
                trainer.load_state_dict(torch.load(io.BytesIO(message.trainer_state), weights_only=True))
                if message.labels is not None and len(message.labels[2]):
                    data.add(*message.labels)
                reply(_Loaded())
            elif isinstance(message, _Fit):
                assert trainer is not None and data is not None, "load must come first"
                if len(message.labels[2]):
                    data.add(*message.labels)
                report = trainer.fit(data, message.epochs)
                reply(_Fitted(trainer.model.to_bytes(), asdict(report), trainer.seconds))
            else:
                raise TypeError(f"unknown message {type(message).__name__}")
        except Exception:
            reply(_Failed(traceback.format_exc()))


def main(lock: threading.Lock | None = None) -> None:
    """Entry point of the worker process: serve fit requests on stdin/stdout.

    Args:
        lock: held for every write to stdout; the worker's program passes the one its
            heartbeat thread holds. Without the heartbeats that program sends, the parent
            counts the worker as stalled after ``stall_timeout``.
    """
    inbox, outbox = sys.stdin.buffer, sys.stdout.buffer
    # Anything printed by library code must not corrupt the message stream.
    sys.stdout = sys.stderr
    _serve(inbox, outbox, lock or threading.Lock())
