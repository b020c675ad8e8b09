"""A preference source whose person answers in another program that meets training in the store.

The pygame window (:mod:`gym_prefs.viewer`) and the web server (:mod:`gym_prefs.web`) are both
such programs: the callback commits every query to the run's store, the program shows pending
queries to a person and commits the answers there, and the source reads them back. The
program is started as its own process (``python -m ...``), so a training script without an
``if __name__ == "__main__":`` guard is never imported again, and it ends by itself when the
training process ends, even when that is killed (``--exit-with PID``).
"""

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

__all__ = ["TERMINATE_WAIT", "ProgramSource", "end_process"]

#: Seconds a labelling program is given to end after SIGTERM before it is killed.
TERMINATE_WAIT = 2.0


def end_process(process: subprocess.Popen[bytes], wait: float = TERMINATE_WAIT) -> None:
    """Terminate ``process``, kill it if it is still there after ``wait`` seconds, and reap it."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class ProgramSource:
    """What the pygame window's and the web page's sources share: the store, the program, the answers.

    Subclasses name the program (:meth:`program_args`) and say what a person should do when it
    ended (:meth:`reopen_hint`).

    Args:
        instruction: what to teach, shown to the person.
        labeler: name stored with every answer given through the program.
        start_program: start the program when the first queries arrive; ``False`` to start it
            by hand (``gym-prefs label STORE`` / ``gym-prefs serve STORE``).

    Example:
        ``PygameLabeler`` and ``WebLabeler`` are the two; see them.
    """

    #: Tells the callback to record what the person sees (clip data).
    needs_clips = True
    #: How messages name the program.
    program_name = "labelling program"

    def __init__(self, instruction: str = "", labeler: str = "human", start_program: bool = True) -> None:
        self.instruction = instruction
        self.labeler = labeler
        self.start_program = start_program
        self._store: Any = None
        self._waiting: set[int] = set()
        self._program: subprocess.Popen[bytes] | None = None
        # Ends the program when this source is collected or the training process exits.
        self._end_program: weakref.finalize | None = None
        self._program_ended = False

    # ------------------------------------------------------------------ the program
    def program_args(self, store_path: Path) -> list[str]:
        """``-m module STORE options...``: how to start the program for ``store_path``."""
        raise NotImplementedError

    def reopen_hint(self, store_path: Path) -> str:
        """The command that opens the program again by hand."""
        raise NotImplementedError

    def _start(self) -> None:
        # Started once per attach: a program that ended stays ended, whatever is asked later.
        if not self.start_program or self._program is not None or self._store is None:
            return
        command = [sys.executable, *self.program_args(Path(self._store.path)), "--exit-with", str(os.getpid())]
        self._program = subprocess.Popen(command)
        self._end_program = weakref.finalize(self, end_process, self._program)

    def _check_program(self) -> None:
        """Note once that the program has ended, and report it on stderr when it did not exit cleanly."""
        if self._program_ended or self._program is None or self._program.poll() is None:
            return
        self._program_ended = True
        code = self._program.returncode
        if code != 0:
            store = Path(self._store.path) if self._store is not None else Path("STORE")
            print(
                f"gym_prefs: the {self.program_name} ended unexpectedly ({ended_how(code)}); every answer given "
                f"is in the store. {self.after_end()} Run `{self.reopen_hint(store)}` to label on.",
                file=sys.stderr,
                flush=True,
            )

    def after_end(self) -> str:
        """What training does once the program has ended (said in the report)."""
        return "Training continues on the labels given so far."

    @property
    def program_ended(self) -> bool:
        """Whether the program has ended (closed by the person, killed or crashed)."""
        self._check_program()
        return self._program_ended

    def _stop_program(self) -> None:
        """End the program (terminate, then kill) and forget it: the next queries may start one."""
        if self._end_program is not None:
            self._end_program()  # runs at most once; also detaches it from exit
        self._end_program = None
        self._program = None
        self._program_ended = False

    # ------------------------------------------------------------------ the source protocol
    def attach(self, store: Any, total_labels: int) -> None:
        """Called by the callback at ``learn``: the store to read answers from (and to show).

        After :meth:`close`, attaching again makes the source usable again: the next queries
        start the program again.
        """
        from gym_prefs.store import PreferenceStore

        if self._store is not None:
            if Path(self._store.path) != Path(store.path):
                self._stop_program()  # it shows another store
            self._store.close()
        store.set_meta("instruction", self.instruction)
        store.set_meta("total_labels", str(total_labels))
        self._store = PreferenceStore(store.path, readonly=True)

    def request(self, queries: Sequence[Query]) -> None:
        self._waiting.update(query.id for query in queries)
        self._check_program()
        self._start()

    def keep_waiting(self) -> bool:
        """Whether :meth:`poll` should wait on although the program has ended."""
        return False

    def poll(self, timeout: float | None = 0.0) -> list[Answer]:
        if self._store is None:
            return []
        if self._waiting:
            # After close() and a new attach, queries asked earlier still wait for the program.
            self._start()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            answers = self._store.answers_for(sorted(self._waiting))
            if answers:
                self._waiting.difference_update(answer.query_id for answer in answers)
                return answers
            if not self._waiting:
                return []
            if self.program_ended and self.keep_waiting():
                time.sleep(0.5)
                continue
            if deadline is not None and time.monotonic() >= deadline:
                return []
            time.sleep(0.05)

    @property
    def pending(self) -> int:
        # With the program ended and nothing waiting on it, nobody will answer any more.
        if self.program_ended and not self.keep_waiting():
            return 0
        return len(self._waiting)

    def close(self) -> None:
        """End the program and close the store (every answer given is already in the store).

        Queries still waiting stay so: after :meth:`attach` (the callback's next ``learn``),
        their answers are read again and the program starts again.
        """
        self._stop_program()
        if self._store is not None:
            self._store.close()
            self._store = None
