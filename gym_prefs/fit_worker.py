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
import os
import pickle
import struct
import subprocess
import sys
from dataclasses import asdict
from typing import IO, Any

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

    Args:
        model: the model to fit (its config and current weights are sent to the worker).
        segment_length: steps per segment of the labelled pairs.
        max_comparisons: fit on the newest this many labels only.
        trainer_kwargs: keyword arguments of :class:`~gym_prefs.RewardTrainer`.

    Example:
        >>> from gymnasium import spaces
        >>> model = RewardEnsemble(spaces.Box(-1, 1, (2,)), spaces.Discrete(2), seed=0)
        >>> data = Comparisons(model.observation_space, model.action_space, segment_length=3)
        >>> data.add(np.zeros((4, 2, 3, 2), np.float32), np.zeros((4, 2, 3), np.int64), np.ones(4, np.float32))
        >>> worker = FitWorker(model, segment_length=3, max_comparisons=None, trainer_kwargs={"seed": 0})
        >>> worker.start(data, epochs=2)
        >>> state, report = worker.result()
        >>> report.pairs
        4
        >>> worker.close()
    """

    def __init__(
        self,
        model: RewardEnsemble,
        segment_length: int,
        max_comparisons: int | None,
        trainer_kwargs: dict[str, Any],
    ) -> None:
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
        self._next_id = 0  # labels with smaller ids have been sent
        self._busy = False
        self.seconds = 0.0  # fitting time reported by the worker
        self._call("init", model.to_bytes(), str(model.device), segment_length, max_comparisons, trainer_kwargs)
        self._expect_ok()

    def _call(self, *message: Any) -> None:
        try:
            _send(self._to_worker, message)
        except (BrokenPipeError, OSError) as error:
            raise self._died() from error

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

    def start(self, data: Comparisons, epochs: int) -> None:
        """Send the labels the worker has not seen yet and start a fit of ``epochs`` epochs."""
        if self._busy:
            raise RuntimeError("a fit is already running; call result() first")
        new = data.ids >= self._next_id
        self._call("fit", data.obs[new], data.actions[new], data.mu[new], data.ids[new], epochs)
        if new.any():
            self._next_id = int(data.ids[new].max()) + 1
        self._busy = True

    def result(self) -> tuple[dict[str, Any], FitReport]:
        """Wait for the running fit; return the fitted state dict and the report."""
        if not self._busy:
            raise RuntimeError("no fit is running")
        self._busy = False
        state_bytes, report, seconds = self._expect_ok()
        self.seconds = seconds
        model_state = RewardEnsemble.state_from_bytes(state_bytes)
        return model_state, FitReport(**report)

    def close(self) -> None:
        """Stop the worker (it also stops by itself when this process ends)."""
        if self._process.poll() is None:
            with contextlib.suppress(OSError):
                self._to_worker.close()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._from_worker.close()


def _serve(inbox: IO[bytes], outbox: IO[bytes]) -> None:
    import traceback

    import torch

    torch.set_num_threads(1)
    trainer: RewardTrainer | None = None
    data: Comparisons | None = None
    while True:
        try:
            message = _receive(inbox)
        except EOFError:
            return  # the parent closed the pipe or ended
        try:
            if message[0] == "init":
                _, model_bytes, device, segment_length, max_comparisons, trainer_kwargs = message
                model = RewardEnsemble.from_bytes(model_bytes, device=device)
                data = Comparisons(model.observation_space, model.action_space, segment_length, max_comparisons)
                trainer = RewardTrainer(model, **trainer_kwargs)
                _send(outbox, ("ok",))
            elif message[0] == "fit":
                assert trainer is not None and data is not None, "init must come first"
                _, obs, actions, mu, ids, epochs = message
                if len(mu):
                    data.add(obs, actions, mu, ids)
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
