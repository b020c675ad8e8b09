"""Fitting the reward model in a worker process, beside reinforcement learning.

As in the paper, reward fitting and RL run side by side. A thread would share the
interpreter's lock with the training loop, so the fit runs in its own process. The worker is
started as its own program (``python -c "from gym_prefs.fit_worker import main; main()"``),
never by re-importing the user's script, so training scripts without an
``if __name__ == "__main__"`` guard work.

The parent sends each label once; the worker keeps its own copy of the labelled pairs and of
the :class:`~gym_prefs.RewardTrainer` (optimiser state, L2 coefficients, random numbers), so
the fits it runs are exactly those the parent would have run in place.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import queue
import struct
import subprocess
import sys
import threading
from dataclasses import asdict
from typing import IO, Any

import numpy as np
import torch

from gym_prefs.comparisons import Comparisons
from gym_prefs.fitting import FitReport, RewardTrainer
from gym_prefs.reward_model import RewardEnsemble

__all__ = ["FitWorker"]

_HEADER = struct.Struct("!Q")


def _send(stream: IO[bytes], message: Any) -> None:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(payload)))
    stream.write(payload)
    stream.flush()


def _receive(stream: IO[bytes]) -> Any:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError
    (size,) = _HEADER.unpack(header)
    payload = stream.read(size)
    if len(payload) < size:
        raise EOFError
    return pickle.loads(payload)


class FitWorker:
    """A :class:`~gym_prefs.RewardTrainer` in its own process.

    The process starts (and imports torch) at once; :meth:`load` hands it a model and a
    trainer to continue from, then :meth:`start` and :meth:`result` run fits.

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

    def __init__(self) -> None:
        env = dict(os.environ)
        # One thread: the worker takes the core that RL leaves free, not both.
        env.setdefault("OMP_NUM_THREADS", "1")
        self._process = subprocess.Popen(
            [sys.executable, "-c", "from gym_prefs.fit_worker import main; main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        assert self._process.stdin is not None and self._process.stdout is not None
        self._to_worker: IO[bytes] = self._process.stdin
        self._from_worker: IO[bytes] = self._process.stdout
        # Messages go out through one writer thread, so the caller never blocks on a full pipe
        # (the model while the worker still imports torch, or a large batch of image labels).
        self._outbox: queue.Queue[tuple[Any, ...] | None] = queue.Queue()
        self._writer = threading.Thread(target=self._write_loop, name="gym_prefs-fit-writer", daemon=True)
        self._writer.start()
        self._next_id = 0  # labels with smaller ids have been sent
        self._busy = False
        self._unacknowledged = 0  # replies to "load" still to read
        self.seconds = 0.0  # fitting time reported by the worker

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
        labels = self._new_labels(data) if data is not None else None
        self._call("load", model.to_bytes(), str(model.device), segment_length, max_comparisons, kwargs,
                   state.getvalue(), labels)
        self.seconds = trainer.seconds
        self._unacknowledged += 1
    def _write_loop(self) -> None:
        while (message := self._outbox.get()) is not None:
            try:
                _send(self._to_worker, message)
            except OSError:
                return  # the worker is gone: the next read reports it
        with contextlib.suppress(OSError):
            self._to_worker.close()

    def _call(self, *message: Any) -> None:
        if not self._writer.is_alive():
            raise self._died()
        self._outbox.put(message)

    def _expect_ok(self) -> Any:
        try:
            reply = _receive(self._from_worker)
        except EOFError as error:
            raise self._died() from error
        if reply[0] == "error":
            raise RuntimeError(f"the reward-model fitting process failed:\n{reply[1]}")
        return reply[1:]

    def _died(self) -> RuntimeError:
        code = self._process.poll()
        return RuntimeError(
            f"the reward-model fitting process exited unexpectedly (exit code {code}); its error "
            "output is above. Pass fitting='thread' to PreferenceCallback to fit in this process."
        )

    def _new_labels(self, data: Comparisons) -> tuple[np.ndarray, ...]:
        new = data.ids >= self._next_id
        if new.any():
            self._next_id = int(data.ids[new].max()) + 1
        return data.obs[new], data.actions[new], data.mu[new], data.ids[new]

    def start(self, data: Comparisons, epochs: int) -> None:
        """Send the labels the worker has not seen yet and start a fit of ``epochs`` epochs."""
        if self._busy:
            raise RuntimeError("a fit is already running; call result() first")
        self._call("fit", self._new_labels(data), epochs)
        self._busy = True

    def result(self) -> tuple[dict[str, Any], FitReport]:
        """Wait for the running fit; return the fitted state dict and the report."""
        if not self._busy:
            raise RuntimeError("no fit is running")
        self._busy = False
        while self._unacknowledged:
            self._expect_ok()
            self._unacknowledged -= 1
        state_bytes, report, seconds = self._expect_ok()
        self.seconds = seconds
        model_state = RewardEnsemble.state_from_bytes(state_bytes)
        return model_state, FitReport(**report)

    def close(self) -> None:
        """Stop the worker (it also stops by itself when this process ends)."""
        if self._writer.is_alive():
            self._outbox.put(None)  # the writer closes the pipe; the worker sees the end and exits
            self._writer.join(timeout=10)
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._from_worker.close()


def _serve(inbox: IO[bytes], outbox: IO[bytes]) -> None:
    import traceback

    torch.set_num_threads(1)
    trainer: RewardTrainer | None = None
    data: Comparisons | None = None
    while True:
        try:
            message = _receive(inbox)
        except EOFError:
            return  # the parent closed the pipe or ended
        try:
            if message[0] == "load":
                _, model_bytes, device, segment_length, max_comparisons, kwargs, state, labels = message
                model = RewardEnsemble.from_bytes(model_bytes, device=device)
                data = Comparisons(model.observation_space, model.action_space, segment_length, max_comparisons)
                trainer = RewardTrainer(model, **kwargs)
                trainer.load_state_dict(torch.load(io.BytesIO(state), weights_only=True))
                if labels is not None and len(labels[2]):
                    data.add(*labels)
                _send(outbox, ("ok",))
            elif message[0] == "fit":
                assert trainer is not None and data is not None, "load must come first"
                _, labels, epochs = message
                if len(labels[2]):
                    data.add(*labels)
                report = trainer.fit(data, epochs)
                _send(outbox, ("ok", trainer.model.to_bytes(), asdict(report), trainer.seconds))
            else:
                raise ValueError(f"unknown message {message[0]!r}")
        except Exception:
            _send(outbox, ("error", traceback.format_exc()))


def main() -> None:
    """Entry point of the worker process: serve fit requests on stdin/stdout."""
    inbox, outbox = sys.stdin.buffer, sys.stdout.buffer
    # Anything printed by library code must not corrupt the message stream.
    sys.stdout = sys.stderr
    _serve(inbox, outbox)


if __name__ == "__main__":
    main()
