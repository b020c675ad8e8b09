"""Where the preference loop spends its time, part by part (for benchmarks and the curious)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Timings"]


class Timings:
    """Seconds spent so far under each name, summed over every :meth:`measure`.

    Example:
        >>> timings = Timings()
        >>> with timings.measure("selection"):
        ...     pass
        >>> list(timings.seconds)
        ['selection']
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def measure(self, name: str) -> Iterator[None]:
        """Add the time spent in the ``with`` block to ``name`` (also when it raises)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
