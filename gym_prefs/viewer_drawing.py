"""How the labelling window looks: its name, its layout, and the drawing of one frame of it.

The window (:mod:`gym_prefs.viewer`) decides what to show; this module only opens and paints
it: the instruction and progress at the top, the two clips side by side, and the keys at the
bottom. It reads no store and keeps no state between frames.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

import numpy as np

__all__ = ["CLIP_BOX", "WINDOW", "WINDOW_CLASS", "WindowPainter", "require_pygame"]


def require_pygame() -> None:
    """Fail now, with the install command, if the labelling window cannot be opened."""
    if importlib.util.find_spec("pygame") is None:
        raise ImportError(
            "a person labels in a pygame window, and pygame is not installed: pip install 'gym-prefs[human]'"
        )


#: The window's class (X11 ``WM_CLASS``), by which desktops group and name its windows.
WINDOW_CLASS = "gym-prefs"

CLIP_BOX = 360  # each clip is scaled to fit a square of this many pixels
MARGIN = 20
HEADER = 64
FOOTER = 56
WINDOW = (2 * CLIP_BOX + 3 * MARGIN, HEADER + CLIP_BOX + 28 + FOOTER)
BACKGROUND = (24, 26, 30)
TEXT = (230, 230, 230)
DIM = (150, 150, 160)
#: What each answer key means, in the order shown at the bottom of the window.
KEY_MEANINGS = (
    ("left", "left is better"),
    ("right", "right is better"),
    ("up", "equally good"),
    ("down", "can't tell"),
)
OTHER_KEYS = "space  pause    r  replay    -/+  slower/faster    esc  close"


def _name_window_class() -> None:
    """Give the window its class (X11 ``WM_CLASS``), read by SDL when its video system starts.

    Imported where there is a display, pygame names it after ``sys.argv[0]`` (``"viewer.py"``,
    or ``"-c"`` for ``python -c``), which tells a desktop nothing: that default is replaced, a
    class the user set is kept.
    """
    current = os.environ.get("SDL_VIDEO_X11_WMCLASS")
    if current is None or current == os.path.basename(sys.argv[0]):
        os.environ["SDL_VIDEO_X11_WMCLASS"] = WINDOW_CLASS


class WindowPainter:
    """Opens the window and draws whole frames of it.

    Args:
        pygame: the imported ``pygame`` module (imported by the caller, which checks it is installed).
        title: the window's title, as the desktop shows it.

    Attributes:
        screen: the window's surface (``pygame.image.save(painter.screen, "window.png")``
            saves what is on screen).

    Example:
        Draw one frame with a pair of 8x8 clips (SDL's dummy video driver needs no display)::

            import os; os.environ["SDL_VIDEODRIVER"] = "dummy"
            import numpy as np, pygame
            painter = WindowPainter(pygame, "gym-prefs label")
            clip = np.zeros((8, 8, 3), np.uint8)
            painter.draw("run forward", "labels 3 / 10", "playing", (clip, clip))
    """

    def __init__(self, pygame: Any, title: str) -> None:
        self.pygame = pygame
        _name_window_class()
        # Only what the window needs: starting pygame's sound too writes audio errors to the
        # training's terminal on machines without a sound card.
        pygame.display.init()
        pygame.font.init()
        pygame.display.set_caption(title)
        self.screen = pygame.display.set_mode(WINDOW)
        self.font = pygame.font.Font(None, 26)
        self.small = pygame.font.Font(None, 21)

    def draw(self, instruction: str, progress: str, state: str, frames: tuple[np.ndarray, np.ndarray] | None) -> None:
        """Draw one frame of the window and show it.

        Args:
            instruction: what the person should teach (a default question when empty).
            progress: the labels given and the queries waiting.
            state: playing or paused, and at which speed.
            frames: the current frame of the left and the right clip (``[H, W, 3]`` each), or
                ``None`` while no pair is ready.
        """
        self.screen.fill(BACKGROUND)
        self._text(instruction or "Which clip is better?", (MARGIN, 12))
        self._text(progress, (MARGIN, 38), self.small, DIM)
        self._text(state, (WINDOW[0] - MARGIN - 140, 38), self.small, DIM)
        if frames is None:
            self._text("waiting for the next clips…", (MARGIN, HEADER + CLIP_BOX // 2), colour=DIM)
        else:
            self._clips(frames)
        self._legend()
        self.pygame.display.flip()

    def _clips(self, frames: tuple[np.ndarray, np.ndarray]) -> None:
        for column, frame in enumerate(frames):
            surface = self._surface(frame)
            x = MARGIN + column * (CLIP_BOX + MARGIN) + (CLIP_BOX - surface.get_width()) // 2
            y = HEADER + (CLIP_BOX - surface.get_height()) // 2
            self.screen.blit(surface, (x, y))
        self._key_cap("left", MARGIN, HEADER + CLIP_BOX + 4)
        self._text("left", (MARGIN + 28, HEADER + CLIP_BOX + 6), self.small, DIM)
        right_x = 2 * MARGIN + 2 * CLIP_BOX - 24
        self._key_cap("right", right_x, HEADER + CLIP_BOX + 4)
        self._text("right", (right_x - 40, HEADER + CLIP_BOX + 6), self.small, DIM)

    def _legend(self) -> None:
        x, y = MARGIN, WINDOW[1] - FOOTER + 4
        for direction, meaning in KEY_MEANINGS:
            self._key_cap(direction, x, y)
            text = self.small.render(meaning, True, TEXT)
            self.screen.blit(text, (x + 28, y + 2))
            x += 28 + text.get_width() + 22
        self._text(OTHER_KEYS, (MARGIN, WINDOW[1] - FOOTER + 30), self.small, DIM)

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
