"""A person labels clip pairs in a pygame window, beside training."""

from __future__ import annotations

import subprocess
from pathlib import Path

from gym_prefs.sources.program_source import ProgramSource
from gym_prefs.viewer_drawing import require_pygame

__all__ = ["PygameLabeler", "require_pygame"]


ON_CLOSE = ("continue", "pause")


class PygameLabeler(ProgramSource):
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
    program_name = "labelling window"

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
        super().__init__(instruction, labeler, start_program=open_window)
        self.on_close = on_close
        self.render_size = render_size
        self._pause_noted = False

    @property
    def open_window(self) -> bool:
        return self.start_program

    @property
    def _viewer(self) -> subprocess.Popen[bytes] | None:
        return self._program

    @_viewer.setter
    def _viewer(self, process: subprocess.Popen[bytes] | None) -> None:
        self._program = process

    def program_args(self, store_path: Path) -> list[str]:
        return [
            "-m",
            "gym_prefs.viewer",
            str(store_path),
            "--instruction",
            self.instruction,
            "--labeler",
            self.labeler,
            "--render-size",
            str(self.render_size),
        ]

    def reopen_hint(self, store_path: Path) -> str:
        return f"gym-prefs label {store_path}"

    def after_end(self) -> str:
        return (
            "Training continues on the labels given so far."
            if self.on_close == "continue"
            else "Training waits for answers."
        )

    @property
    def window_closed(self) -> bool:
        """Whether the window has ended: closed by the person (Esc), or killed or crashed."""
        return self.program_ended

    def keep_waiting(self) -> bool:
        if self.on_close != "pause":
            return False
        if not self._pause_noted and self._store is not None:
            print(
                "gym_prefs: the labelling window was closed; training waits for answers. "
                f"Run `gym-prefs label {self._store.path}` to go on."
            )
            self._pause_noted = True
        return True
