"""The labelling window's pair feed: pending pairs leased, rendered ahead and queued for the window.

A :class:`PairFeed` runs one background thread with a connection of its own to the store. The
thread leases pending pairs through a :class:`~gym_prefs.label_desk.LabelDesk`, so that no other
window or labelling page shows them; renders their clips ahead of time, so that the next pair
appears as soon as a person answers; renews the leases of the pairs it holds while a person looks
at them; and gives every lease back when it stops. A window that is killed gives nothing back:
its leases run out :data:`LEASE_SECONDS` after their last renewal.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np

from gym_prefs.clips import ClipRenderer
from gym_prefs.label_desk import LabelDesk, Lease
from gym_prefs.store import PreferenceStore

__all__ = ["LEASE_SECONDS", "PREFETCH", "Pair", "PairFeed"]

PREFETCH = 3  # pairs rendered ahead
#: Seconds a pair stays leased to a window without renewal (renewed every third of it while open):
#: what a killed window keeps from other windows and pages.
LEASE_SECONDS = 15.0


@dataclass
class Pair:
    """A pair ready to show: its query and the frames ``[n, H, W, 3]`` of its two clips.

    Example:
        >>> Pair(7, np.zeros((5, 4, 4, 3), np.uint8), np.zeros((5, 4, 4, 3), np.uint8)).query_id
        7
    """

    query_id: int
    left: np.ndarray
    right: np.ndarray


class PairFeed:
    """Leases pending pairs of a store for one window and renders them ahead, on a thread of its own.

    Args:
        store_path: the preference store; the feed opens its own connection to it, for its thread.
        renderer: turns a segment's clip data into frames (used by the feed's thread only).
        labeler: the person at the window: pairs they voted on are not leased to them again.
        prefetch: how many pairs are rendered ahead.

    Attributes:
        ready: the pairs rendered ahead, oldest first (at most ``prefetch``); each stays leased
            to this feed until :meth:`take` or :meth:`close`.

    Example:
        >>> import tempfile, os
        >>> from gymnasium import spaces
        >>> from gym_prefs.clips import ClipInfo
        >>> from gym_prefs.records import SegmentPairs
        >>> path = os.path.join(tempfile.mkdtemp(), "p.db")
        >>> with PreferenceStore(path, spaces.Discrete(3), spaces.Discrete(2), 2) as store:
        ...     steps, frames = np.zeros((2, 2, 2), int), np.zeros((2, 2, 2, 4, 4, 3), np.uint8)
        ...     ids = store.add_queries(SegmentPairs(steps, steps, None, frames), source="human")
        >>> feed = PairFeed(path, ClipRenderer(ClipInfo("frame", (4, 4, 3), "uint8", fps=20.0)), "ann")
        >>> pair = feed.ready.get(timeout=30)  # what the window shows next; feed.next() never waits
        >>> pair.query_id, pair.left.shape, feed.take(pair.query_id).holder.startswith("ann (window ")
        (1, (2, 4, 4, 3), True)
        >>> feed.close()  # the pair rendered ahead is given back, for other windows and pages
    """

    def __init__(
        self,
        store_path: str | os.PathLike[str],
        renderer: ClipRenderer,
        labeler: str,
        prefetch: int = PREFETCH,
    ) -> None:
        self.store_path = store_path
        self.renderer = renderer
        self.labeler = labeler
        self.ready: queue.Queue[Pair] = queue.Queue(maxsize=prefetch)
        self._held: dict[int, Lease] = {}  # the leases of the pairs on screen and rendered ahead
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._load_loop, name="gym_prefs-viewer-loader", daemon=True)
        self._thread.start()

    def next(self) -> Pair | None:
        """The next pair rendered, or ``None`` while none is ready (never waits)."""
        try:
            return self.ready.get_nowait()
        except queue.Empty:
            return None

    def take(self, query_id: int) -> Lease | None:
        """Stop holding the pair ``query_id`` (answered); returns its lease, ``None`` if not held.

        The lease is not given back here: the caller releases it, unless the answer completed the
        query (then nobody is offered it again anyway).
        """
        with self._lock:
            return self._held.pop(query_id, None)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread, which gives back the leases of every pair still held."""
        self._stop.set()
        self._thread.join(timeout=timeout)

    def _load_loop(self) -> None:
        """Lease and render the next pending pairs ahead of time, so the next clip appears at once.

        Leased, no other window or page shows them; renewed while held, given back at the end.
        """
        store = PreferenceStore(self.store_path)
        desk = LabelDesk(store, lease_seconds=LEASE_SECONDS)
        renew_at, count = time.monotonic() + LEASE_SECONDS / 3, 0
        try:
            while not self._stop.is_set():
                renew_at = self._keep_leases(desk, renew_at)
                # A holder name a pair: a holder has one lease at a time, this window several.
                lease = desk.lease(f"{self.labeler} (window {os.getpid()}/{count})", labeler=self.labeler)
                if lease is None:
                    self._stop.wait(0.2)
                    continue
                count += 1
                clips = desk.clips(lease.query_id)
                if clips is None:  # nothing to show: left leased, so that it is not offered again at once
                    continue
                with self._lock:
                    self._held[lease.query_id] = lease
                pair = Pair(lease.query_id, self.renderer.frames(clips[0]), self.renderer.frames(clips[1]))
                while not self._stop.is_set():
                    try:
                        self.ready.put(pair, timeout=0.2)
                        break
                    except queue.Full:  # a person looks at the pairs held: they stay leased meanwhile
                        renew_at = self._keep_leases(desk, renew_at)
        finally:
            with self._lock:
                held, self._held = list(self._held.values()), {}
            for lease in held:
                desk.release(lease.holder)
            store.close()

    def _keep_leases(self, desk: LabelDesk, due: float) -> float:
        """Renew the leases of the pairs this feed holds, if they are ``due``; returns when next."""
        if time.monotonic() < due:
            return due
        with self._lock:
            held = list(self._held.values())
        # A lease lost (the window hung) stays in _held: its pair may still be answered.
        kept = desk.keep(held)
        with self._lock:
            self._held.update((lease.query_id, lease) for lease in kept if lease.query_id in self._held)
        return time.monotonic() + LEASE_SECONDS / 3
