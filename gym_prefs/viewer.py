"""The window in which a person compares two clips: ``gym-prefs label STORE``.

The viewer takes pending queries of a preference store (leased to it through a
:class:`~gym_prefs.label_desk.LabelDesk` and rendered ahead by a
:class:`~gym_prefs.viewer_feed.PairFeed`, so that several windows, or a window and a labelling
page, never show the same pair), plays the two clips of a pair side
by side, looping in step at the env's frame rate, and writes each answer back to the store,
committed before the next pair appears. It runs as its own program,
``python -m gym_prefs.viewer STORE`` (the same as ``gym-prefs label STORE``), beside training
(the training process picks the answers up from the store) or on its own, afterwards.

Keys: ``←`` left is better, ``→`` right is better, ``↑`` equally good, ``↓`` can't tell;
``space`` pause, ``r`` replay from the start, ``-``/``+`` slower/faster, ``esc`` close.

A pair is answered only once it has been on screen: after an answer, further answer keys are
ignored until the next pair has been drawn (two keys pressed at once answer one pair, not also
the next one, which nobody saw). Opened by a training process (``exit_with``), the window
closes by itself when that process ends, even when it was killed.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from gym_prefs.clips import ClipInfo, ClipRenderer
from gym_prefs.label_desk import DeskError, LabelDesk
from gym_prefs.processes import EXIT_WITH_CHECK, OwnerProcess
from gym_prefs.records import Label
from gym_prefs.store import PreferenceStore
from gym_prefs.store_errors import StoreError
from gym_prefs.viewer_drawing import WindowPainter, require_pygame
from gym_prefs.viewer_feed import PREFETCH, Pair, PairFeed

__all__ = ["KEY_LABELS", "Viewer", "main"]

SPEEDS = (0.25, 0.5, 1.0)
#: Seconds between reads of the store's counts shown in the window (and after every answer).
COUNTS_REFRESH = 0.5
#: How many of the latest latencies and frame times the viewer keeps (it may run for hours).
RECENT = 1000
#: How ``python -m gym_prefs.viewer`` calls itself in its usage line.
PROGRAM = "python -m gym_prefs.viewer"

#: The paper's keys.
KEY_LABELS: dict[str, Label] = {"left": "first", "right": "second", "up": "equal", "down": "skip"}


class _Progress:
    """The labels and pending queries of a store, read at most every ``interval`` seconds.

    The window shows them in every frame; reading them from the store only a few times a
    second (and at once after an answer, with :meth:`refresh`) keeps SQL out of the frames.
    """

    def __init__(self, desk: LabelDesk, interval: float = COUNTS_REFRESH) -> None:
        self.desk = desk
        self.interval = interval
        self.labels = 0
        self.pending = 0
        self._read_at = -math.inf
        self.refresh()

    def refresh(self) -> None:
        """Read the counts now."""
        counts = self.desk.counts()
        self.pending, self.labels = counts["pending"], counts["labels"]
        self._read_at = time.monotonic()

    def update(self) -> None:
        """Read the counts if the last read is :attr:`interval` seconds old."""
        if time.monotonic() - self._read_at >= self.interval:
            self.refresh()


class Viewer:
    """A pygame window that shows pending pairs of a store and records a person's answers.

    Args:
        store_path: the preference store (the run's on this machine, or a copy of it).
        instruction: what the person should teach, shown at the top of the window.
        labeler: name recorded with every answer.
        render_size: side in pixels of frames rendered from MuJoCo states.
        exit_when_done: close once no query is pending (for labelling a store afterwards).
        exit_with: close once the process with this id has ended (checked every
            :data:`EXIT_WITH_CHECK` seconds): the training that opened the window, so that a
            killed training leaves no window behind. Every answer is already stored.

    Attributes:
        screen: the window's surface (``pygame.image.save(viewer.screen, "window.png")``).
        latencies: seconds from an answer to the next pair's first frame on screen, the
            latest :data:`RECENT` of them.
        frame_times: wall-clock time of the latest :data:`RECENT` frames drawn.
        frames_drawn: frames drawn since the window opened (for the frame rate).
        feed: the pairs leased to the window and rendered ahead (a
            :class:`~gym_prefs.viewer_feed.PairFeed`).

    Example:
        Open it on a run's store from another terminal (or let
        :class:`~gym_prefs.PygameLabeler` open it)::

            gym-prefs label runs/Hopper-v5-20261121-101500/preferences.db --instruction "do a backflip"
    """

    def __init__(
        self,
        store_path: str | os.PathLike[str],
        instruction: str = "",
        labeler: str = "human",
        render_size: int = 200,
        exit_when_done: bool = False,
        exit_with: int | None = None,
    ) -> None:
        require_pygame()
        import pygame

        self.pygame = pygame
        if not Path(store_path).exists():
            # Opening it would create an empty store: nothing for a person to label there.
            raise FileNotFoundError(
                f"no preference store at {store_path}: give the store of a run (the file PreferenceCallback "
                "names when training starts; `gym-prefs train` writes OUT/preferences.db)"
            )
        self.store = PreferenceStore(store_path)
        clips = self.store.get_meta("clips")
        if clips is None:
            raise StoreError(
                f"{store_path} holds no clips to show: it was recorded without a person labelling. "
                "Train with PreferenceCallback('human', ...) (or source=gym_prefs.PygameLabeler(...)) "
                "to record clips."
            )
        self.info = ClipInfo.from_json(clips)
        self.renderer = ClipRenderer(self.info, size=render_size)
        self.instruction = instruction or self.store.get_meta("instruction") or ""
        self.labeler = labeler
        self.exit_when_done = exit_when_done
        self.exit_with = exit_with
        self._owner = None if exit_with is None else OwnerProcess(exit_with)
        self._next_exit_check = time.monotonic()
        budget = self.store.get_meta("total_labels")
        self.budget = int(budget) if budget else None
        self.desk = LabelDesk(self.store)  # one transaction an answer, its vote and answer
        self.progress = _Progress(self.desk)

        self._title = f"gym-prefs label: which clip is better? ({Path(store_path).name})"
        self.painter = WindowPainter(pygame, self._title)
        self.screen = self.painter.screen
        self.clock = pygame.time.Clock()

        self.current: Pair | None = None
        #: Whether the current pair has been drawn on screen (only then can it be answered).
        self.on_screen = False
        self.shown_at = 0.0  # when the current pair first appeared on screen
        self.playhead = 0.0  # position in the clip, in frames
        self.paused = False
        self.speed_index = len(SPEEDS) - 1
        self.open = True
        self.answers_given = 0
        self.latencies: deque[float] = deque(maxlen=RECENT)
        self.frame_times: deque[float] = deque(maxlen=RECENT)
        self.frames_drawn = 0
        self._answered_at: float | None = None

        # Pairs leased and rendered ahead of time, so that the next one appears as soon as a person answers.
        self.feed = PairFeed(self.store.path, self.renderer, labeler, prefetch=PREFETCH)
        self._ready = self.feed.ready  # the same queue under its earlier name, which tests inspect

    # ------------------------------------------------------------------ answering
    def _next_pair(self) -> None:
        self.current = self.feed.next()
        if self.current is not None:
            self.playhead = 0.0
            self.on_screen = False

    def answer(self, label: Label) -> None:
        """Commit ``label`` for the pair on screen, then take the next pair.

        Ignored while no pair is on screen, or the pair has not been drawn yet: a second key
        pressed in the same frame must not answer a pair nobody saw.
        """
        if self.current is None or not self.on_screen:
            return
        # From the pair's first frame on screen: the time the person had to look at it.
        seconds = time.perf_counter() - self.shown_at
        query_id = self.current.query_id
        try:
            # Committed to the store before anything else: the person's answer is never lost.
            vote = self.desk.answer(query_id, label, self.labeler, seconds)
        except DeskError as error:  # answered meanwhile elsewhere: show the next pair
            print(f"gym-prefs label: {error}", file=sys.stderr, flush=True)
            vote = None
        lease = self.feed.take(query_id)
        if lease is not None and (vote is None or not vote.complete):
            self.desk.release(lease.holder)  # others may vote on it, or answer it
        self.answers_given += vote is not None
        self._answered_at = time.perf_counter()
        self.progress.refresh()  # the person sees their answer counted in the next frame
        self._next_pair()

    def handle_key(self, key: int) -> None:
        """React to one key press."""
        pg = self.pygame
        names = {pg.K_LEFT: "left", pg.K_RIGHT: "right", pg.K_UP: "up", pg.K_DOWN: "down"}
        if key in names:
            self.answer(KEY_LABELS[names[key]])
        elif key == pg.K_SPACE:
            self.paused = not self.paused
        elif key == pg.K_r:
            self.playhead = 0.0
        elif key in (pg.K_MINUS, pg.K_KP_MINUS):
            self.speed_index = max(0, self.speed_index - 1)
        elif key in (pg.K_PLUS, pg.K_EQUALS, pg.K_KP_PLUS):
            self.speed_index = min(len(SPEEDS) - 1, self.speed_index + 1)
        elif key in (pg.K_ESCAPE, pg.K_q):
            self.open = False

    # ------------------------------------------------------------------ drawing
    def draw(self) -> None:
        """Draw the window once (from the counts last read: a frame makes no SQL query)."""
        budget = f" / {self.budget}" if self.budget else ""
        progress = f"labels {self.progress.labels}{budget}   -   waiting {self.progress.pending}"
        speed = SPEEDS[self.speed_index]
        state = ("paused" if self.paused else "playing") + (f" at {speed:g}x" if speed != 1 else "")
        frames = None
        if self.current is not None:
            left, right = self.current.left, self.current.right
            index = int(self.playhead) % max(len(left), len(right))
            frames = (left[min(index, len(left) - 1)], right[min(index, len(right) - 1)])
        self.painter.draw(self.instruction, progress, state, frames)
        now = time.perf_counter()
        self.frame_times.append(now)
        self.frames_drawn += 1
        if self.current is not None and not self.on_screen:
            self.on_screen = True
            self.shown_at = now
            # The title names the pair on screen (which also tells a script driving the window
            # that a key will now answer it).
            self.pygame.display.set_caption(f"{self._title} - query {self.current.query_id}")
        if self._answered_at is not None and self.current is not None:
            self.latencies.append(now - self._answered_at)
            self._answered_at = None

    # ------------------------------------------------------------------ loop
    def step(self) -> None:
        """Wait for the next frame, handle pending events, advance the clips and draw one frame."""
        pg = self.pygame
        # Waiting before the events, not between them and drawing: the pair that follows an
        # answer is drawn at once, so keys pressed during the wait were pressed while it showed.
        elapsed = self.clock.tick(self.renderer.display_fps * SPEEDS[self.speed_index] if not self.paused else 30)
        if self.current is not None and not self.paused:
            self.playhead += elapsed / 1000.0 * self.renderer.display_fps * SPEEDS[self.speed_index]
        for event in pg.event.get():
            if event.type == pg.QUIT:
                self.open = False
            elif event.type == pg.KEYDOWN:
                self.handle_key(event.key)
        if self.current is None:
            self._next_pair()
        self.progress.update()
        self.draw()
        if self.exit_when_done and self.current is None and self.progress.pending == 0:
            self.open = False
        if self._owner is not None and time.monotonic() >= self._next_exit_check:
            self._next_exit_check = time.monotonic() + EXIT_WITH_CHECK
            if not self._owner.alive():
                print(
                    f"gym-prefs label: process {self.exit_with} (--exit-with) has ended, so the window closes. "
                    f"Every answer given is stored; `gym-prefs label {self.store.path}` labels on.",
                    file=sys.stderr,
                    flush=True,
                )
                self.open = False

    def run(self) -> None:
        """Show pairs until the window is closed (every answer given is already stored)."""
        try:
            while self.open:
                self.step()
        finally:
            self.close()

    def close(self) -> None:
        """Stop rendering pairs ahead, close the store and the window (answers are all stored)."""
        self.feed.close()
        self.renderer.close()
        self.store.close()
        self.pygame.display.quit()


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Open the labelling window on a store: of a running training on this machine (a store "
        "never lives on a network disk), or afterwards. Keys: left/right arrow = that clip is better, "
        "up = equally good, down = can't tell, space = pause, r = replay, -/+ = slower/faster, esc = close.",
    )
    parser.add_argument("store", type=Path, help="the preference store (.db)")
    parser.add_argument("--instruction", default="", help="what to teach, shown in the window")
    parser.add_argument("--labeler", default="human", help="your name, stored with every answer")
    parser.add_argument("--render-size", type=int, default=200, help="pixels of frames rendered from MuJoCo states")
    parser.add_argument("--exit-when-done", action="store_true", help="close once nothing is pending")
    parser.add_argument(
        "--exit-with",
        type=int,
        default=None,
        metavar="PID",
        help=f"close once process PID has ended, even if it was killed (checked every {EXIT_WITH_CHECK:g} s); "
        "PygameLabeler passes the training process, so that no window outlives it. Every answer "
        "given is already stored",
    )
    return parser


def main(argv: Sequence[str] | None = None, prog: str = PROGRAM) -> int:
    """Run the window as its own program, until it is closed; returns the exit status.

    Args:
        argv: the arguments (``sys.argv[1:]`` if ``None``): ``STORE [--instruction TEXT]
            [--labeler NAME] [--render-size PIXELS] [--exit-when-done] [--exit-with PID]``.
        prog: the program's name in its usage and help (``gym-prefs label`` calls it so).

    Returns:
        0 once the window is closed, 2 if the store cannot be shown.

    Example:
        ``python -m gym_prefs.viewer runs/.../preferences.db --instruction "do a backflip"``,
        the same as ``gym-prefs label runs/.../preferences.db --instruction "do a backflip"``.
    """
    args = _parser(prog).parse_args(argv)
    os.environ.setdefault("LP_NUM_THREADS", "1")  # software rendering leaves the other cores to training
    try:
        viewer = Viewer(
            args.store, args.instruction, args.labeler, args.render_size, args.exit_when_done, exit_with=args.exit_with
        )
        viewer.run()
    except (StoreError, FileNotFoundError) as error:
        print(f"gym-prefs: {error}", file=sys.stderr)
        return 2
    print(f"gym-prefs label: {viewer.answers_given} answers stored in {args.store}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
