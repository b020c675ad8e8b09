"""The window in which a person compares two clips: ``gym-prefs label STORE``.

The viewer reads pending queries from a preference store, plays the two clips of a pair side
by side, looping in step at the env's frame rate, and writes each answer back to the store,
committed before the next pair appears. It runs as its own program, beside training (the
training process picks the answers up from the store) or on its own, afterwards.

Keys: ``←`` left is better, ``→`` right is better, ``↑`` equally good, ``↓`` can't tell;
``space`` pause, ``r`` replay from the start, ``-``/``+`` slower/faster, ``esc`` close.

A pair is answered only once it has been on screen: after an answer, further answer keys are
ignored until the next pair has been drawn (two keys pressed at once answer one pair, not also
the next one, which nobody saw). Opened by a training process (``exit_with``), the window
closes by itself when that process ends, even when it was killed.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gym_prefs.clips import ClipInfo, ClipRenderer
from gym_prefs.processes import process_alive
from gym_prefs.sources.base import Answer, Label
from gym_prefs.sources.pygame_labeler import require_pygame
from gym_prefs.store import PreferenceStore, StoreError

__all__ = ["KEY_LABELS", "Viewer", "main"]

CLIP_BOX = 360  # each clip is scaled to fit a square of this many pixels
MARGIN = 20
HEADER = 64
FOOTER = 56
WINDOW = (2 * CLIP_BOX + 3 * MARGIN, HEADER + CLIP_BOX + 28 + FOOTER)
SPEEDS = (0.25, 0.5, 1.0)
#: Seconds between checks that the process named by ``exit_with`` still lives.
EXIT_WITH_CHECK = 0.5
PREFETCH = 3  # pairs rendered ahead
BACKGROUND = (24, 26, 30)
TEXT = (230, 230, 230)
DIM = (150, 150, 160)

#: The paper's keys.
KEY_LABELS: dict[str, Label] = {"left": "first", "right": "second", "up": "equal", "down": "skip"}


@dataclass
class _Pair:
    query_id: int
    left: np.ndarray  # frames [n, H, W, 3]
    right: np.ndarray


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
        # The process that opened the window is usually its parent: once that dies, the window
        # is handed to another parent, which also works where os.kill sees zombies (macOS).
        self._exit_with_is_parent = exit_with is not None and exit_with == os.getppid()
        self._next_exit_check = time.monotonic()
        budget = self.store.get_meta("total_labels")
        self.budget = int(budget) if budget else None

        pygame.init()
        pygame.display.set_caption("gym_prefs: which clip is better?")
        self.screen = pygame.display.set_mode(WINDOW)
        self.font = pygame.font.Font(None, 26)
        self.small = pygame.font.Font(None, 21)
        self.clock = pygame.time.Clock()

        self.current: _Pair | None = None
        #: Whether the current pair has been drawn on screen (only then can it be answered).
        self.on_screen = False
        self.shown_at = 0.0  # when the current pair first appeared on screen
        self.playhead = 0.0  # position in the clip, in frames
        self.paused = False
        self.speed_index = len(SPEEDS) - 1
        self.open = True
        self.answers_given = 0
        #: Seconds from an answer to the next pair's first frame on screen.
        self.latencies: list[float] = []
        #: Wall-clock time of every frame drawn (for the frame rate).
        self.frame_times: list[float] = []
        self._answered_at: float | None = None

        # Pairs rendered ahead of time, so that the next one appears as soon as a person answers.
        self._ready: queue.Queue[_Pair] = queue.Queue(maxsize=PREFETCH)
        self._taken: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._loader = threading.Thread(target=self._load_loop, name="gym_prefs-viewer-loader", daemon=True)
        self._loader.start()

    # ------------------------------------------------------------------ loading clips
    def _load_loop(self) -> None:
        """Render the next pending pair ahead of time, so the next clip appears at once."""
        store = PreferenceStore(self.store.path, readonly=True)
        try:
            while not self._stop.is_set():
                with self._lock:
                    taken = set(self._taken)
                candidate = next((q for q in store.pending_ids(limit=len(taken) + 1) if q not in taken), None)
                if candidate is None:
                    self._stop.wait(0.2)
                    continue
                clips = store.clips(candidate)
                with self._lock:
                    self._taken.add(candidate)
                if clips is None:
                    continue
                pair = _Pair(candidate, self.renderer.frames(clips[0]), self.renderer.frames(clips[1]))
                while not self._stop.is_set():
                    try:
                        self._ready.put(pair, timeout=0.2)
                        break
                    except queue.Full:
                        continue
        finally:
            store.close()

    def _next_pair(self) -> None:
        try:
            self.current = self._ready.get_nowait()
        except queue.Empty:
            self.current = None
            return
        self.playhead = 0.0
        self.on_screen = False

    # ------------------------------------------------------------------ answering
    def answer(self, label: Label) -> None:
        """Commit ``label`` for the pair on screen, then take the next pair.

        Ignored while no pair is on screen, or the pair has not been drawn yet: a second key
        pressed in the same frame must not answer a pair nobody saw.
        """
        if self.current is None or not self.on_screen:
            return
        # From the pair's first frame on screen: the time the person had to look at it.
        seconds = time.perf_counter() - self.shown_at
        # Committed to the store before anything else: the person's answer is never lost.
        self.store.record_answers([Answer(self.current.query_id, label, self.labeler, seconds)])
        self.answers_given += 1
        self._answered_at = time.perf_counter()
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
    def _surface(self, frame: np.ndarray) -> Any:
        pg = self.pygame
        surface = pg.surfarray.make_surface(np.ascontiguousarray(frame.transpose(1, 0, 2)))
        height, width = frame.shape[:2]
        scale = CLIP_BOX / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        # Small frames (Atari's 160x210) are scaled up with sharp pixels, large ones smoothly.
        return pg.transform.scale(surface, size) if scale >= 1 else pg.transform.smoothscale(surface, size)

    def _text(
        self, text: str, position: tuple[int, int], font: Any = None, colour: tuple[int, int, int] = TEXT
    ) -> None:
        self.screen.blit((font or self.font).render(text, True, colour), position)

    def _key_cap(self, direction: str, x: int, y: int) -> None:
        """An arrow key drawn as a small cap (fonts do not all have arrow glyphs)."""
        pg = self.pygame
        pg.draw.rect(self.screen, DIM, (x, y, 22, 20), width=1, border_radius=4)
        cx, cy, r = x + 11, y + 10, 5
        points = {
            "left": [(cx - r, cy), (cx + r, cy - r), (cx + r, cy + r)],
            "right": [(cx + r, cy), (cx - r, cy - r), (cx - r, cy + r)],
            "up": [(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)],
            "down": [(cx, cy + r), (cx - r, cy - r), (cx + r, cy - r)],
        }[direction]
        pg.draw.polygon(self.screen, TEXT, points)

    def draw(self) -> None:
        """Draw the window once."""
        pg = self.pygame
        self.screen.fill(BACKGROUND)
        counts = self.store.counts()
        labels = len(self.store)
        budget = f" / {self.budget}" if self.budget else ""
        progress = f"labels {labels}{budget}   -   waiting {counts['pending']}"
        self._text(self.instruction or "Which clip is better?", (MARGIN, 12))
        self._text(progress, (MARGIN, 38), self.small, DIM)
        speed = SPEEDS[self.speed_index]
        state = ("paused" if self.paused else "playing") + (f" at {speed:g}x" if speed != 1 else "")
        self._text(state, (WINDOW[0] - MARGIN - 140, 38), self.small, DIM)
        if self.current is None:
            self._text("waiting for the next clips…", (MARGIN, HEADER + CLIP_BOX // 2), colour=DIM)
        else:
            length = max(len(self.current.left), len(self.current.right))
            index = int(self.playhead) % length
            for column, frames in enumerate((self.current.left, self.current.right)):
                frame = frames[min(index, len(frames) - 1)]
                surface = self._surface(frame)
                x = MARGIN + column * (CLIP_BOX + MARGIN) + (CLIP_BOX - surface.get_width()) // 2
                y = HEADER + (CLIP_BOX - surface.get_height()) // 2
                self.screen.blit(surface, (x, y))
            self._key_cap("left", MARGIN, HEADER + CLIP_BOX + 4)
            self._text("left", (MARGIN + 28, HEADER + CLIP_BOX + 6), self.small, DIM)
            right_x = 2 * MARGIN + 2 * CLIP_BOX - 24
            self._key_cap("right", right_x, HEADER + CLIP_BOX + 4)
            self._text("right", (right_x - 40, HEADER + CLIP_BOX + 6), self.small, DIM)
        x, y = MARGIN, WINDOW[1] - FOOTER + 4
        for direction, meaning in (
            ("left", "left is better"),
            ("right", "right is better"),
            ("up", "equally good"),
            ("down", "can't tell"),
        ):
            self._key_cap(direction, x, y)
            text = self.small.render(meaning, True, TEXT)
            self.screen.blit(text, (x + 28, y + 2))
            x += 28 + text.get_width() + 22
        more = "space  pause    r  replay    -/+  slower/faster    esc  close"
        self._text(more, (MARGIN, WINDOW[1] - FOOTER + 30), self.small, DIM)
        pg.display.flip()
        now = time.perf_counter()
        self.frame_times.append(now)
        if self.current is not None and not self.on_screen:
            self.on_screen = True
            self.shown_at = now
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
        self.draw()
        if self.exit_when_done and self.current is None and self.store.counts()["pending"] == 0:
            self.open = False
        if self.exit_with is not None and time.monotonic() >= self._next_exit_check:
            self._next_exit_check = time.monotonic() + EXIT_WITH_CHECK
            if not self._exit_with_alive():
                print(
                    f"gym-prefs label: process {self.exit_with} (--exit-with) has ended, so the window closes. "
                    f"Every answer given is stored; `gym-prefs label {self.store.path}` labels on.",
                    file=sys.stderr,
                    flush=True,
                )
                self.open = False

    def _exit_with_alive(self) -> bool:
        assert self.exit_with is not None
        if self._exit_with_is_parent and os.getppid() != self.exit_with:
            return False
        return process_alive(self.exit_with)

    def run(self) -> None:
        """Show pairs until the window is closed (every answer given is already stored)."""
        try:
            while self.open:
                self.step()
        finally:
            self.close()

    def screenshot(self, path: str | os.PathLike[str]) -> None:
        """Save the window as a PNG."""
        self.pygame.image.save(self.screen, str(path))

    def close(self) -> None:
        """Stop rendering pairs ahead, close the store and the window (answers are all stored)."""
        self._stop.set()
        self._loader.join(timeout=5)
        self.renderer.close()
        self.store.close()
        self.pygame.display.quit()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the viewer as its own program (the same as ``gym-prefs label``)."""
    from gym_prefs.cli import main as cli

    return cli(["label", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
