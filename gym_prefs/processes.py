"""Child processes of the library (the fitting worker, the labelling window): alive, and how they ended."""

from __future__ import annotations

import os
import signal
import sys

__all__ = ["EXIT_WITH_CHECK", "OwnerProcess", "ended_how", "process_alive", "signal_name"]

#: Seconds between checks, in a program started with ``--exit-with PID``, that PID still lives.
EXIT_WITH_CHECK = 0.5


def signal_name(returncode: int) -> str:
    """The name of the signal that ended a process with this (negative) ``returncode``.

    Example:
        >>> signal_name(-9)
        'SIGKILL'
        >>> signal_name(-99)
        'signal 99'
    """
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def ended_how(returncode: int) -> str:
    """``"killed by SIGKILL"`` for a process ended by a signal, else ``"exit code N"``.

    Example:
        >>> ended_how(-15), ended_how(3)
        ('killed by SIGTERM', 'exit code 3')
    """
    return f"killed by {signal_name(returncode)}" if returncode < 0 else f"exit code {returncode}"


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` is running (a zombie, killed but not yet reaped, is not).

    Args:
        pid: the process id.

    Returns:
        ``False`` once the process has ended.
    """
    if sys.platform == "win32":  # pragma: no cover - Windows only
        import ctypes

        kernel32 = ctypes.windll.kernel32
        handle = kernel32.OpenProcess(0x00100000, False, pid)  # SYNCHRONIZE
        if not handle:
            return False
        try:
            return bool(kernel32.WaitForSingleObject(handle, 0) == 0x102)  # WAIT_TIMEOUT: still running
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by another user
    # A killed process stays in the process table until its parent reaps it.
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (macOS): os.kill found it
    return state not in (b"Z", b"X")


class OwnerProcess:
    """The process a program of the library lives for (its ``--exit-with PID``), and whether it still runs.

    The owner is usually the program's parent (the training run that started the labelling
    window or server). Once the parent dies the program is handed to another parent, which
    tells at once, also where ``os.kill`` still sees a dead, unreaped process (macOS).

    Example:
        >>> OwnerProcess(os.getpid()).alive()
        True
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._is_parent = pid == os.getppid()

    def alive(self) -> bool:
        """Whether the owner still runs."""
        if self._is_parent and os.getppid() != self.pid:
            return False
        return process_alive(self.pid)
