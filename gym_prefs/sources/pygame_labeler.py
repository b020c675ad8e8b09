"""A person labels clip pairs in a pygame window, beside training."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gym_prefs.processes import ended_how
from gym_prefs.records import Answer, Query
from gym_prefs.viewer_drawing import require_pygame

__all__ = ["PygameLabeler", "require_pygame"]


ON_CLOSE = ("continue", "pause")
#: Seconds a viewer is given to end after SIGTERM before it is killed.
TERMINATE_WAIT = 2.0


def _end_process(process: subprocess.Popen[bytes], wait: float = TERMINATE_WAIT) -> None:
    """Terminate ``process``, kill it if it is still there after ``wait`` seconds, and reap it."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class PygameLabeler:
    """A person answers in a window (:mod:`gym_prefs.viewer`) while the agent keeps training.

    The callback stores every query in the run's preference store; this source opens the
    viewer on that store, in its own process, and reads the answers the viewer commits there.
    Training waits only for the labels asked before RL starts. With the wrappers of the
    training env, the callback records what the person needs to see (MuJoCo states or the
    env's ``rgb_array`` frames) only when this source is used.

    Args:
        instruction: what to teach, shown in the window (e.g. "make the hopper do a backflip").
        on_close: when the window is closed, ``"continue"`` training on the labels given so
            far, or ``"pause"`` until answers come in again (from ``gym-prefs label STORE``).
            A window that ended otherwise (killed, crashed) is reported once on stderr and
            then counts as closed. A window that has ended is never reopened by later queries.
        labeler: name stored with every answer.
        open_window: open the viewer when the first queries arrive; ``False`` to label from
            another terminal of the same machine with ``gym-prefs label STORE``.
        render_size: side in pixels of frames rendered from MuJoCo states.

    Example:
        >>> labeler = PygameLabeler("make the hopper do a backflip", open_window=False)
        >>> labeler.pending
        0

        In a training script::

            env = gym_prefs.LearnedReward(gym.make("Hopper-v5"))
            callback = gym_prefs.PreferenceCallback(labeler, total_labels=700)
    """

    name = "human"
    #: Tells the callback to record clip data for the viewer.
    needs_clips = True

    def __init__(
        self,
        instruction: str = "",
        on_close: str = "continue",
        labeler: str = "human",
        open_window: bool = True,
        render_size: int = 200,
    ) -> None:
        if on_close not in ON_CLOSE:
            raise ValueError(f"on_close must be one of {ON_CLOSE}, got {on_close!r}")
        require_pygame()
        self.instruction = instruction
        self.on_close = on_close
        self.labeler = labeler
        self.open_window = open_window
        self.render_size = render_size
        self._store: Any = None
        self._waiting: set[int] = set()
        self._viewer: subprocess.Popen[bytes] | None = None
        # Ends the viewer when this labeler is collected or the training process exits.
        self._end_viewer: weakref.finalize | None = None
        self._window_ended = False

    def attach(self, store: Any, total_labels: int) -> None:
        """Called by the callback at ``learn``: the store to read answers from (and to show the viewer).

        After :meth:`close`, attaching again makes the labeler usable again: the next queries
        open a new window.
        """
        from gym_prefs.store import PreferenceStore

        if self._store is not None:
            if Path(self._store.path) != Path(store.path):
                self._stop_viewer()  # it shows another store
            self._store.close()
        store.set_meta("instruction", self.instruction)
        store.set_meta("total_labels", str(total_labels))
        self._store = PreferenceStore(store.path, readonly=True)

    def _open_viewer(self) -> None:
        # Opened once per attach: a window that ended (closed by the person, killed, crashed)
        # stays closed, whatever is asked later.
        if not self.open_window or self._viewer is not None or self._store is None:
            return
        # Its own program (python -m gym_prefs.viewer): nothing re-imports the user's training
        # script. It closes by itself when this process ends, even when killed (--exit-with), so
        # no window outlives training.
        self._viewer = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gym_prefs.viewer",
                str(self._store.path),
                "--instruction",
                self.instruction,
                "--labeler",
                self.labeler,
                "--render-size",
                str(self.render_size),
                "--exit-with",
                str(os.getpid()),
            ]
        )
        self._end_viewer = weakref.finalize(self, _end_process, self._viewer)

    def _check_viewer(self) -> None:
        """Note once that the viewer has ended, and report it on stderr when it did not exit cleanly."""
        if self._window_ended or self._viewer is None or self._viewer.poll() is None:
            return
        self._window_ended = True
        code = self._viewer.returncode
        if code != 0:
            store = self._store.path if self._store is not None else "STORE"
            then = (
                "training continues on the labels given so far"
                if self.on_close == "continue"
                else "training waits for answers"
            )
            print(
                f"gym_prefs: the labelling window ended unexpectedly ({ended_how(code)}); every answer "
                f"given is in the store and {then}. Run `gym-prefs label {store}` to open it again.",
                file=sys.stderr,
                flush=True,
            )

    @property
    def window_closed(self) -> bool:
        """Whether the window has ended: closed by the person (Esc), or killed or crashed."""
        self._check_viewer()
        return self._window_ended

    def request(self, queries: Sequence[Query]) -> None:
        self._waiting.update(query.id for query in queries)
        self._check_viewer()
        self._open_viewer()

    def poll(self, timeout: float | None = 0.0) -> list[Answer]:
        if self._store is None:
            return []
        if self._waiting:
            # After close() and a new attach, queries asked earlier still wait for a window.
            self._open_viewer()
        deadline = None if timeout is None else time.monotonic() + timeout
        pause_noted = False
        while True:
            answers = self._store.answers_for(sorted(self._waiting))
            if answers:
                self._waiting.difference_update(a.query_id for a in answers)
                return answers
            if not self._waiting:
                return []
            if self.window_closed and self.on_close == "pause":
                if not pause_noted:
                    print(
                        f"gym_prefs: the labelling window was closed; training waits for answers. "
                        f"Run `gym-prefs label {self._store.path}` to go on."
                    )
                    pause_noted = True
                time.sleep(0.5)
                continue
            if deadline is not None and time.monotonic() >= deadline:
                return []
            time.sleep(0.05)

    @property
    def pending(self) -> int:
        # With the window closed and "continue", nobody will answer: nothing is pending any more.
        if self.window_closed and self.on_close == "continue":
            return 0
        return len(self._waiting)

    def _stop_viewer(self) -> None:
        """End the viewer (terminate, then kill), and forget it: the next queries may open one."""
        if self._end_viewer is not None:
            self._end_viewer()  # runs at most once; also detaches it from exit
        self._end_viewer = None
        self._viewer = None
        self._window_ended = False

    def close(self) -> None:
        """Close the window and the store (every answer given is already in the store).

        The viewer is terminated, and killed if it has not ended after :data:`TERMINATE_WAIT`
        seconds. Queries still waiting stay so: after :meth:`attach` (the callback's next
        ``learn``), their answers are read again and a new window opens.
        """
        self._stop_viewer()
        if self._store is not None:
            self._store.close()
            self._store = None
