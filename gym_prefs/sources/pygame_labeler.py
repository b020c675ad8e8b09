"""A person labels clip pairs in a pygame window, beside training."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gym_prefs.sources.base import Answer, Query

__all__ = ["PygameLabeler", "require_pygame"]


def require_pygame() -> None:
    """Fail now, with the install command, if the labelling window cannot be opened."""
    if importlib.util.find_spec("pygame") is None:
        raise ImportError(
            "a person labels in a pygame window, and pygame is not installed: pip install 'gym-prefs[human]'"
        )

ON_CLOSE = ("continue", "pause")


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
        labeler: name stored with every answer.
        open_window: open the viewer when the first queries arrive; ``False`` to label from
            another terminal (or machine sharing the disk) with ``gym-prefs label STORE``.
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
        self._closed_by_person = False

    def attach(self, store: Any, total_labels: int) -> None:
        """Called by the callback: the store to read answers from (and to show the viewer)."""
        from gym_prefs.store import PreferenceStore

        store.set_meta("instruction", self.instruction)
        store.set_meta("total_labels", str(total_labels))
        self._store = PreferenceStore(store.path, readonly=True)

    @property
    def store_path(self) -> Path | None:
        return None if self._store is None else Path(self._store.path)

    def _open_viewer(self) -> None:
        if not self.open_window or self._closed_by_person or self._store is None:
            return
        if self._viewer is not None and self._viewer.poll() is None:
            return
        # Its own program: nothing re-imports the user's training script.
        self._viewer = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from gym_prefs.viewer import main; sys.exit(main())",
                str(self._store.path),
                "--instruction",
                self.instruction,
                "--labeler",
                self.labeler,
                "--render-size",
                str(self.render_size),
            ]
        )

    @property
    def window_closed(self) -> bool:
        """Whether the person closed the window (the viewer process has ended)."""
        if self._viewer is not None and self._viewer.poll() is not None:
            self._closed_by_person = True
        return self._closed_by_person

    def request(self, queries: Sequence[Query]) -> None:
        self._waiting.update(query.id for query in queries)
        self._open_viewer()

    def poll(self, timeout: float | None = 0.0) -> list[Answer]:
        if self._store is None:
            return []
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

    def close(self) -> None:
        """Close the window (every answer given is already in the store)."""
        if self._viewer is not None and self._viewer.poll() is None:
            self._viewer.terminate()
            try:
                self._viewer.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._viewer.kill()
        if self._store is not None:
            self._store.close()
