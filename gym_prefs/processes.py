"""How a child process of the library (the fitting worker, the labelling window) ended, in words."""

from __future__ import annotations

import signal

__all__ = ["ended_how", "signal_name"]


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
