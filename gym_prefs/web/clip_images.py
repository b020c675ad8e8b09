"""A query's two clips as images for the browser: every frame of a clip stacked in one strip.

One image a clip (frames stacked top to bottom) costs the page one request instead of one per
frame, and the page plays it by drawing one band of the strip at a time. Rendering MuJoCo states
takes about 5 ms a frame in software (0.15 s for a strip of 30 frames), so strips are rendered
on one worker thread (the renderer's OpenGL context belongs to the thread that made it), kept in
a small least-recently-used cache, and the next pending pairs are rendered ahead of time, so that
the pair after an answer is ready when the page asks for it.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from gym_prefs.clips import ClipInfo, ClipRenderer
from gym_prefs.store import PreferenceStore
from gym_prefs.store_errors import StoreError

__all__ = ["CACHED_PAIRS", "ClipStrips", "StripPair", "encode_strip"]

#: Pairs of strips kept in memory (a MuJoCo strip of 30 frames at 240 px is about 0.3 MB).
CACHED_PAIRS = 12
#: Pending pairs rendered ahead of the one a page just leased.
AHEAD = 2
#: JPEG quality of strips rendered from MuJoCo states (photographic, so JPEG is 5-10x smaller).
JPEG_QUALITY = 85


@dataclass(frozen=True)
class StripPair:
    """The two strips of one query.

    Attributes:
        query_id: the query.
        first: the first clip's strip, encoded.
        second: the second clip's strip, encoded.
        frames: frames in each strip (the shorter clip's last frame is repeated to match).
        width: one frame's width in pixels.
        height: one frame's height in pixels.
        media_type: ``"image/png"`` or ``"image/jpeg"``.
    """

    query_id: int
    first: bytes
    second: bytes
    frames: int
    width: int
    height: int
    media_type: str


def encode_strip(frames: np.ndarray, image_format: str) -> bytes:
    """Stack ``frames`` ``[n, H, W, 3]`` (uint8 RGB) top to bottom and encode them as one image.

    Args:
        frames: the clip's frames.
        image_format: ``"PNG"`` (exact pixels, for small frames such as Atari screens) or
            ``"JPEG"``.

    Returns:
        The encoded image, ``n * H`` pixels high and ``W`` wide.

    Example:
        >>> data = encode_strip(np.zeros((3, 4, 5, 3), np.uint8), "PNG")
        >>> Image.open(io.BytesIO(data)).size
        (5, 12)
    """
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[3] != 3 or len(frames) == 0:
        raise ValueError(f"frames must be [n>0, H, W, 3] RGB, got shape {frames.shape}")
    strip = frames.reshape(-1, frames.shape[2], 3)
    buffer = io.BytesIO()
    options = {"quality": JPEG_QUALITY} if image_format == "JPEG" else {"compress_level": 6}
    Image.fromarray(strip, "RGB").save(buffer, format=image_format, **options)
    return buffer.getvalue()


def _same_length(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # The page plays both clips in step from one frame counter; the shorter one holds its last frame.
    n = max(len(first), len(second))

    def padded(frames: np.ndarray) -> np.ndarray:
        if len(frames) == n:
            return frames
        return np.concatenate([frames, np.repeat(frames[-1:], n - len(frames), axis=0)])

    return padded(first), padded(second)


def _unusable(future: Future[StripPair | None]) -> bool:
    return future.cancelled() or future.exception() is not None or future.result() is None


class ClipStrips:
    """Renders, caches and renders ahead the strips of a store's queries.

    Reads the clips from its own read-only connection to the store, so that rendering never
    waits for (or holds up) the connection that commits answers.

    Args:
        store_path: the preference store; it must hold clips (meta ``clips``).
        render_size: side in pixels of frames rendered from MuJoCo states.
        cached_pairs: how many pairs of strips to keep in memory.

    Raises:
        StoreError: the store holds no clips to show.

    Example:
        >>> strips = ClipStrips("runs/cartpole/preferences.db")  # doctest: +SKIP
        >>> pair = strips.pair(7).result()  # doctest: +SKIP
        >>> pair.frames, pair.media_type  # doctest: +SKIP
        (25, 'image/png')
    """

    def __init__(self, store_path: str | Path, render_size: int = 240, cached_pairs: int = CACHED_PAIRS) -> None:
        self._store = PreferenceStore(store_path, readonly=True)
        clips = self._store.get_meta("clips")
        if clips is None:
            self._store.close()
            raise StoreError(
                f"{store_path} holds no clips to show: it was recorded without a person labelling. "
                "Train with a person as the source (PreferenceCallback('web', ...) or 'human') to record clips."
            )
        self.info = ClipInfo.from_json(clips)
        self.renderer = ClipRenderer(self.info, size=render_size)
        self.image_format = "PNG" if self.info.kind == "frame" else "JPEG"
        self._cached_pairs = max(1, cached_pairs)
        self._cache: OrderedDict[int, Future[StripPair | None]] = OrderedDict()
        self._lock = threading.Lock()
        # One thread: the renderer's GL context and the read connection stay on it.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gym_prefs-web-render")

    @property
    def display_fps(self) -> float:
        """Frames a second that play the strips at the env's real speed."""
        return self.renderer.display_fps

    def pair(self, query_id: int) -> Future[StripPair | None]:
        """The strips of ``query_id`` (``None``: no such query or no clips), rendered once and cached."""
        with self._lock:
            future = self._cache.get(query_id)
            # A failed render, or an id that did not exist yet, is tried again rather than remembered.
            if future is not None and not (future.done() and _unusable(future)):
                self._cache.move_to_end(query_id)
                return future
            future = self._worker.submit(self._render, query_id)
            self._cache[query_id] = future
            while len(self._cache) > self._cached_pairs:
                self._cache.popitem(last=False)
            return future

    def cached(self) -> list[int]:
        """The query ids whose strips are rendered or being rendered, least recently used first."""
        with self._lock:
            return list(self._cache)

    def render_ahead(self, after: int) -> None:
        """Queue the pending queries after ``after`` (what the next pages will be given) for rendering."""
        self._worker.submit(self._queue_ahead, after)

    def _queue_ahead(self, after: int) -> None:
        ahead = [query_id for query_id in self._store.pending_ids(limit=AHEAD + 16) if query_id > after]
        for query_id in ahead[:AHEAD]:
            self.pair(query_id)

    def _render(self, query_id: int) -> StripPair | None:
        clips = self._store.clips(query_id)
        if clips is None:
            return None
        first, second = _same_length(self.renderer.frames(clips[0]), self.renderer.frames(clips[1]))
        height, width = first.shape[1:3]
        return StripPair(
            query_id,
            encode_strip(first, self.image_format),
            encode_strip(second, self.image_format),
            len(first),
            int(width),
            int(height),
            "image/png" if self.image_format == "PNG" else "image/jpeg",
        )

    def close(self) -> None:
        """Stop rendering, then close the renderer and the read connection."""
        with self._lock:
            for future in self._cache.values():
                future.cancel()
            self._cache.clear()
        self._worker.shutdown(wait=True, cancel_futures=True)
        self.renderer.close()
        self._store.close()
