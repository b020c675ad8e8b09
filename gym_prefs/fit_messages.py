"""What the parent and the fitting process say to each other, and how it travels on the pipe.

Every message is a header (the payload's length) and a pickled payload; a header of length 0
with no payload is a heartbeat. Messages are small frozen dataclasses rather than tuples: both
sides name the fields, and they pickle by reference to this module, which both sides import.

The parent sends :class:`Load` (a trainer to continue from) and :class:`Fit` (run a fit);
the worker answers :class:`Loaded`, :class:`Fitted` or :class:`Failed`. Labels travel once
each, as :class:`NewLabels`. On the parent's side a :class:`ReplyReader` reads the replies and
heartbeats as they come.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import queue
import struct
import threading
import time
from dataclasses import asdict, dataclass
from typing import IO, Any

import numpy as np
import torch

from gym_prefs.comparisons import Comparisons
from gym_prefs.fitting import FitReport, RewardTrainer
from gym_prefs.frame_stacks import FrameStack
from gym_prefs.records import SegmentPairs
from gym_prefs.reward_model import RewardEnsemble

__all__ = [
    "END",
    "HEADER",
    "HEARTBEAT_SECONDS",
    "Failed",
    "Fit",
    "Fitted",
    "Load",
    "Loaded",
    "NewLabels",
    "ReplyReader",
    "read_exactly",
    "receive",
    "send",
]

#: Every message is this header (the payload's length) and a pickled payload. A header of
#: length 0 with no payload is a heartbeat.
HEADER = struct.Struct("!Q")
#: How often the worker sends a heartbeat.
HEARTBEAT_SECONDS = 1.0
#: What :meth:`ReplyReader.get` returns once the pipe from the worker has ended.
END = object()


@dataclass(frozen=True)
class NewLabels:
    """Labelled pairs the worker has not been sent yet: rows of a :class:`~gym_prefs.Comparisons`.

    Observations travel as the :class:`~gym_prefs.Comparisons` holds them: stacked image
    frames once each (under ``stack``), so that sending every label to a new worker never needs
    a whole stacked copy of them in memory.

    Attributes:
        obs: ``[n, 2, length, *obs_shape]``, or the frames ``[n, 2, length + depth - 1, *frame]``
            under ``stack``.
        actions: ``[n, 2, length, *action_shape]``.
        mu: probability that the first segment is preferred, ``[n]``.
        ids: the rows' ids, ``[n]``.
        stack: how ``obs`` stacks frames, when it holds frames (else ``None``).

    Example:
        >>> from gymnasium import spaces
        >>> data = Comparisons(spaces.Box(-1, 1, (2,)), spaces.Discrete(2), segment_length=3)
        >>> data.add(SegmentPairs(np.zeros((4, 2, 3, 2)), np.zeros((4, 2, 3), np.int64)), np.ones(4))
        >>> labels = NewLabels.since(data, first_id=1)
        >>> labels.ids.tolist()
        [1, 2, 3]
        >>> copy = Comparisons(spaces.Box(-1, 1, (2,)), spaces.Discrete(2), segment_length=3)
        >>> labels.add_to(copy)
        >>> copy.ids.tolist()
        [1, 2, 3]
    """

    obs: np.ndarray
    actions: np.ndarray
    mu: np.ndarray
    ids: np.ndarray
    stack: FrameStack | None = None

    def __len__(self) -> int:
        return len(self.mu)

    @classmethod
    def since(cls, data: Comparisons, first_id: int) -> NewLabels:
        """The rows of ``data`` whose id is ``first_id`` or more."""
        new = data.ids >= first_id
        return cls(data.stored_obs[new], data.actions[new], data.mu[new], data.ids[new], data.stack)

    @property
    def next_id(self) -> int:
        """One past the largest id here (0 when there are none)."""
        return int(np.max(self.ids, initial=-1)) + 1

    def add_to(self, data: Comparisons) -> None:
        """Append these rows to ``data``, ids kept."""
        if len(self):
            obs = self.obs if self.stack is None else self.stack.restack(self.obs, obs_ndim=self.obs.ndim - 2)
            data.add(SegmentPairs(obs, self.actions), self.mu, self.ids)


# Messages to the worker.
@dataclass(frozen=True)
class Load:
    """Continue from this trainer: its model, optimiser state, L2 coefficients and random numbers.

    Build it with :meth:`of`; the worker rebuilds the trainer with :meth:`trainer`.

    Example:
        >>> from gymnasium import spaces
        >>> model = RewardEnsemble(spaces.Box(-1, 1, (2,)), spaces.Discrete(2), seed=0)
        >>> load = Load.of(RewardTrainer(model, lr=3e-4, seed=0), segment_length=3, max_comparisons=None)
        >>> load.trainer().optimizer.param_groups[0]["lr"]
        0.0003
    """

    model: bytes
    device: str
    segment_length: int
    max_comparisons: int | None
    trainer_kwargs: dict[str, Any]
    trainer_state: bytes
    labels: NewLabels | None

    @classmethod
    def of(
        cls, trainer: RewardTrainer, segment_length: int, max_comparisons: int | None, labels: NewLabels | None = None
    ) -> Load:
        """The message that hands ``trainer`` (and labels it has seen) to the worker."""
        state = io.BytesIO()
        torch.save(trainer.state_dict(), state)
        kwargs = {
            "lr": trainer.optimizer.param_groups[0]["lr"],
            "batch_size": trainer.batch_size,
            "val_fraction": trainer.val_fraction,
            "random_response": trainer.random_response,
            "l2_bounds": trainer.l2_bounds,
        }
        return cls(
            model=trainer.model.to_bytes(),
            device=str(trainer.model.device),
            segment_length=segment_length,
            max_comparisons=max_comparisons,
            trainer_kwargs=kwargs,
            trainer_state=state.getvalue(),
            labels=labels,
        )

    def trainer(self) -> RewardTrainer:
        """The trainer this message hands over, rebuilt."""
        model = RewardEnsemble.from_bytes(self.model, device=self.device)
        trainer = RewardTrainer(model, **self.trainer_kwargs)
        trainer.load_state_dict(torch.load(io.BytesIO(self.trainer_state), weights_only=True))
        return trainer

    def comparisons(self, trainer: RewardTrainer) -> Comparisons:
        """The worker's copy of the labels: those sent along with this message."""
        model = trainer.model
        data = Comparisons(model.observation_space, model.action_space, self.segment_length, self.max_comparisons)
        if self.labels is not None:
            self.labels.add_to(data)
        return data


@dataclass(frozen=True)
class Fit:
    """Add ``labels`` to the worker's copy and fit on all of it for ``epochs`` epochs (at most ``max_steps``)."""

    labels: NewLabels
    epochs: int
    max_steps: int | None = None


# Replies from the worker.
@dataclass(frozen=True)
class Loaded:
    """The worker has taken over the trainer of a :class:`Load`."""


@dataclass(frozen=True)
class Fitted:
    """A fit finished: the fitted model, its report and the trainer's fitting time so far."""

    model: bytes
    report: dict[str, Any]
    seconds: float

    @classmethod
    def of(cls, trainer: RewardTrainer, report: FitReport) -> Fitted:
        """The reply for a fit ``trainer`` has just run."""
        return cls(trainer.model.to_bytes(), asdict(report), trainer.seconds)

    def result(self) -> tuple[dict[str, torch.Tensor], FitReport]:
        """The fitted state dict and the report."""
        return RewardEnsemble.state_from_bytes(self.model), FitReport(**self.report)


@dataclass(frozen=True)
class Failed:
    """A request raised an error in the worker (which goes on serving)."""

    traceback: str


def send(stream: IO[bytes], message: object) -> None:
    """Write one message (header and pickled payload) to ``stream`` and flush it."""
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    # Two writes: joining them would copy a payload of image labels for nothing.
    stream.write(HEADER.pack(len(payload)))
    stream.write(payload)
    stream.flush()


def read_exactly(stream: IO[bytes], size: int) -> bytes:
    """``size`` bytes from ``stream``; ``EOFError`` if it ends first."""
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return data


def receive(stream: IO[bytes]) -> object:
    """The next message on ``stream`` (the worker's side: no heartbeats come its way)."""
    (size,) = HEADER.unpack(read_exactly(stream, HEADER.size))
    return pickle.loads(read_exactly(stream, size))


class ReplyReader:
    """Reads the worker's replies in a thread of its own, noting when it last heard from it.

    So the parent can wait for a reply with a timeout, and heartbeats are read (and the worker
    never blocks writing) even while nobody waits.

    Example:
        >>> pipe = io.BytesIO(HEADER.pack(0))  # a heartbeat
        >>> _ = pipe.seek(0, io.SEEK_END)
        >>> send(pipe, Loaded())
        >>> _ = pipe.seek(0)
        >>> reader = ReplyReader(pipe)
        >>> reader.get(timeout=5), reader.get(timeout=5) is END
        (Loaded(), True)
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self.last_heard = time.monotonic()  # when the last message or heartbeat arrived
        self.read_error: BaseException | None = None  # a reply that could not be unpickled
        self._inbox: queue.Queue[object] = queue.Queue()
        self._thread = threading.Thread(target=self._read, name="gym_prefs-fit-reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while True:
                (size,) = HEADER.unpack(read_exactly(self._stream, HEADER.size))
                self.last_heard = time.monotonic()
                if not size:
                    continue  # a heartbeat
                payload = read_exactly(self._stream, size)
                self.last_heard = time.monotonic()
                try:
                    message = pickle.loads(payload)
                except Exception as error:
                    self.read_error = error  # the parent kills the worker and reports this
                    return
                self._inbox.put(message)
        except (EOFError, OSError, ValueError):
            pass  # the worker exited (or the parent closed the pipe)
        finally:
            self._inbox.put(END)

    @property
    def waiting(self) -> int:
        """Messages read and not taken yet (``END`` included)."""
        return self._inbox.qsize()

    def get(self, timeout: float) -> object | None:
        """The next message; ``END`` once the pipe has ended; ``None`` if none came in time."""
        try:
            return self._inbox.get(timeout=timeout)
        except queue.Empty:
            return None

    def last(self) -> object | None:
        """A message that came just before the pipe ended, if any (the process has ended)."""
        self._thread.join(timeout=1)
        with contextlib.suppress(queue.Empty):
            reply = self._inbox.get_nowait()
            if reply is not END:
                return reply
        return None

    def close(self) -> None:
        """Close the pipe, once the thread reading it has finished (the process has ended)."""
        # A thread still inside a read would make close() wait for it, so it is joined first.
        self._thread.join(timeout=2)
        if not self._thread.is_alive():
            self._stream.close()
