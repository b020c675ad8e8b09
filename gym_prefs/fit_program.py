"""The program the fitting process runs: it serves fit requests from the parent on its stdin.

The parent (:class:`~gym_prefs.fit_worker.FitWorker`) starts it as ``python -c PROGRAM``,
never by re-importing the user's script, so training scripts without an
``if __name__ == "__main__"`` guard work. The worker keeps its own copy of the labelled pairs
and of the :class:`~gym_prefs.RewardTrainer`, so the fits it runs are exactly those the
parent would have run in place.
"""

from __future__ import annotations

import sys
import threading
import traceback
from typing import IO

import torch

from gym_prefs.comparisons import Comparisons
from gym_prefs.fit_messages import HEADER, HEARTBEAT_SECONDS, Failed, Fit, Fitted, Load, Loaded, receive, send
from gym_prefs.fitting import RewardTrainer

__all__ = ["PROGRAM", "main"]

# It starts the heartbeat with the standard library alone, before importing gym_prefs (and
# torch), which takes seconds: a worker that is still importing is alive, and one stopped while
# importing is noticed too. Heartbeats and replies share one pipe, so every write holds ``lock``.
PROGRAM = f"""
import struct, sys, threading, time
lock = threading.Lock()
out = sys.stdout.buffer
def beat():
    try:
        while True:
            with lock:
                out.write(struct.pack({HEADER.format!r}, 0))
                out.flush()
            time.sleep({HEARTBEAT_SECONDS!r})
    except (OSError, ValueError):
        pass  # the parent is gone
threading.Thread(target=beat, name="gym_prefs-fit-heartbeat", daemon=True).start()
from gym_prefs.fit_program import main
main(lock)
"""


def serve(inbox: IO[bytes], outbox: IO[bytes], lock: threading.Lock) -> None:
    """Answer every request on ``inbox`` until it ends; an error in one is replied, not raised."""

    def reply(message: Loaded | Fitted | Failed) -> None:
        with lock:  # the heartbeat thread writes to the same pipe
            send(outbox, message)

    torch.set_num_threads(1)
    trainer: RewardTrainer | None = None
    data: Comparisons | None = None
    while True:
        try:
            message = receive(inbox)
        except EOFError:
            return  # the parent closed the pipe or ended
        try:
            if isinstance(message, Load):
                trainer = message.trainer()
                data = message.comparisons(trainer)
                reply(Loaded())
            elif isinstance(message, Fit):
                assert trainer is not None and data is not None, "load must come first"
                message.labels.add_to(data)
                report = trainer.fit(data, message.epochs, message.max_steps)
                reply(Fitted.of(trainer, report))
            else:
                raise TypeError(f"unknown message {type(message).__name__}")
        except Exception:
            reply(Failed(traceback.format_exc()))


def main(lock: threading.Lock | None = None) -> None:
    """Entry point of the worker process: serve fit requests on stdin/stdout.

    Args:
        lock: held for every write to stdout; :data:`PROGRAM` passes the one its heartbeat
            thread holds. Without the heartbeats that program sends, the parent counts the
            worker as stalled after ``stall_timeout``.
    """
    inbox, outbox = sys.stdin.buffer, sys.stdout.buffer
    # Anything printed by library code must not corrupt the message stream.
    sys.stdout = sys.stderr
    serve(inbox, outbox, lock or threading.Lock())
