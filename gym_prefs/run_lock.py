"""The run lock of a preference store: one training run on a store at a time.

Two runs on one store would both spend its label budget, so a training run takes the store's
run lock first (:meth:`gym_prefs.store.PreferenceStore.lock_for_run` does, with a
:class:`RunLock`). It is an ``flock`` on ``<store path>-run.lock``: the kernel releases it when
the process ends however it ends (``SIGKILL`` included), so a killed run never blocks the next
one. The file holds the holder's pid, host, start time and command line, for the message the
others get. Without ``fcntl`` (Windows) there is no lock: a warning says so once, and keeping
to one run per store is up to you.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import warnings
from contextlib import suppress
from pathlib import Path

from gym_prefs.store_errors import StoreBusyError, StoreError

try:  # POSIX only; without it (Windows) there is no run lock
    import fcntl
except ImportError:  # pragma: no cover - exercised on Windows only
    fcntl = None  # type: ignore[assignment]

__all__ = ["RunLock"]


class RunLock:
    """The exclusive lock that makes one process the training run on a store.

    Args:
        store_path: the store's file; the lock file is ``<store_path>-run.lock`` beside it.

    Example:
        >>> import tempfile, os
        >>> store_path = os.path.join(tempfile.mkdtemp(), "prefs.db")
        >>> lock = RunLock(store_path)
        >>> lock.acquire()  # raises StoreBusyError while another live process holds it
        >>> lock.held, os.path.exists(store_path + "-run.lock")
        (True, True)
        >>> lock.release()  # ending the process releases it too, however it ends
        >>> lock.held, os.path.exists(store_path + "-run.lock")
        (False, False)
    """

    def __init__(self, store_path: str | os.PathLike[str]) -> None:
        self.store_path = Path(store_path)
        self.path = self.store_path.with_name(self.store_path.name + "-run.lock")
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock, or raise at once if another holder has it; does nothing if this object holds it.

        Raises:
            StoreBusyError: another live process (or another :class:`RunLock` of this process)
                holds the lock; the message names it.
            StoreError: the lock file cannot be created.
        """
        if self._fd is not None:
            return
        if fcntl is None:  # pragma: no cover - Windows only
            _warn_no_run_lock()
            return
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as error:
                raise StoreError(
                    f"cannot create the run lock {self.path} of the preference store {self.store_path} ({error}). "
                    "Its folder must be writable for a training run; copy the store to a writable folder."
                ) from error
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe_holder(fd)
                os.close(fd)
                raise StoreBusyError(
                    f"the preference store {self.store_path} is in use by another training run: {holder}. One run "
                    "at a time spends a store's label budget: stop that run, or pass another store path. "
                    "(Readers and `gym-prefs label` windows may open it meanwhile.)"
                ) from None
            except BaseException:
                os.close(fd)
                raise
            # A holder that has just released its lock unlinked the file (see release()), maybe
            # after we opened it: a lock on an unlinked file locks nothing, so start again with
            # the file now at the path.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            record = {"pid": os.getpid(), "host": platform.node(), "started_at": time.time(), "argv": sys.argv}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode(), 0)
            self._fd = fd
            return

    def release(self) -> None:
        """Give the lock up and remove the lock file; does nothing unless this object holds the lock."""
        if self._fd is None:
            return
        # Unlink while still holding the lock, so that a process that opened this file meanwhile
        # sees, once it gets the lock, that the file is gone and takes a new one.
        with suppress(OSError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None

    def __repr__(self) -> str:
        return f"RunLock({str(self.store_path)!r}, held={self.held})"


def _describe_holder(fd: int) -> str:
    """Who holds a run lock, in words, from what the holder wrote into the lock file."""
    try:
        record = json.loads(os.pread(fd, 1 << 16, 0))
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(record["started_at"])))
        command = " ".join(map(str, record.get("argv") or []))
        if len(command) > 200:
            command = command[:197] + "..."
        return f"pid {int(record['pid'])} on host {record['host']}, running since {when}" + (
            f" ({command})" if command else ""
        )
    except (OSError, ValueError, TypeError, KeyError):
        return "a process that is just starting (it has not written its pid yet)"


_warned_no_run_lock = False


def _warn_no_run_lock() -> None:  # pragma: no cover - Windows only
    global _warned_no_run_lock
    if not _warned_no_run_lock:
        _warned_no_run_lock = True
        warnings.warn(
            "gym_prefs cannot lock a preference store on this platform (no fcntl): make sure only one "
            "training run uses a store at a time, or both spend its label budget.",
            RuntimeWarning,
            stacklevel=4,  # the caller of PreferenceStore.lock_for_run
        )
