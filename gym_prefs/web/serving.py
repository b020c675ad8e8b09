"""Running the labelling server: :func:`serve` and its command line, ``python -m gym_prefs.web STORE``.

The server is its own program (started by a training run's web labeler, or by hand), so it never
imports a user's training script. It binds ``127.0.0.1`` unless told otherwise; any other
address lets everyone who can reach the machine and knows the token label, and it says so.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from gym_prefs.processes import EXIT_WITH_CHECK, OwnerProcess
from gym_prefs.store_errors import StoreError

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_LEASE_SECONDS",
    "DEFAULT_PORT",
    "EXIT_WITH_CHECK",
    "PROGRAM",
    "main",
    "page_url",
    "parser",
    "serve",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
#: Seconds a page holds a pair without renewing it.
DEFAULT_LEASE_SECONDS = 60.0
#: The shortest lease accepted: a page renews every third of it.
MIN_LEASE_SECONDS = 3.0
#: How ``python -m gym_prefs.web`` calls itself in its usage line.
PROGRAM = "python -m gym_prefs.web"
_LOCAL = ("127.0.0.1", "localhost", "::1")


def page_url(host: str, port: int, token: str) -> str:
    """The page's address, token included (a wildcard address is shown as this machine's loopback).

    Example:
        >>> page_url("0.0.0.0", 8765, "a b")
        'http://127.0.0.1:8765/?token=a%20b'
    """
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    return f"http://{shown}:{port}/?token={quote(token, safe='')}"


def _bind(host: str, port: int) -> socket.socket:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise OSError(
            f"cannot serve the labelling page on {host}:{port} ({error.strerror}): pass another --port "
            "(0 picks a free one), or stop the server already there"
        ) from None
    # Listening before the address is printed: a browser opened at once queues instead of failing.
    sock.listen(128)
    return sock


def _watch(pid: int, stop: Callable[[], None], halt: threading.Event) -> None:
    """Call ``stop`` once process ``pid`` has ended (checked every :data:`EXIT_WITH_CHECK` s)."""
    owner = OwnerProcess(pid)
    while not halt.wait(EXIT_WITH_CHECK):
        if not owner.alive():
            print(
                f"gym_prefs: process {pid} (--exit-with) has ended, so the labelling server stops. "
                "Every answer given is stored.",
                file=sys.stderr,
                flush=True,
            )
            stop()
            return


def serve(
    store_path: str | Path,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    token: str | None = None,
    render_size: int = 240,
    labeler_default: str = "web",
    exit_with: int | None = None,
    announce: Callable[[str], Any] = print,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
) -> None:
    """Serve the labelling page for ``store_path`` until interrupted (or ``exit_with`` ends).

    Args:
        store_path: the preference store (it must exist and hold clips).
        host: the address to bind; anything but the loopback is announced with a warning.
        port: the port (0: a free one, printed).
        token: the access token (a random one when ``None``).
        render_size: side in pixels of frames rendered from MuJoCo states.
        labeler_default: the name recorded when a page sends none.
        exit_with: stop once the process with this id has ended.
        announce: called with the line that gives the page's address.
        lease_seconds: how long a page keeps the pairs it holds without renewing them (pages renew
            every third of it); the pairs of a page that went away go to others after this.

    Raises:
        FileNotFoundError: there is no store at ``store_path``.
        StoreError: the file is not a store, or holds no clips.
        OSError: the address cannot be bound.

    Example:
        ``serve("runs/hopper/preferences.db", port=0)`` prints
        ``gym_prefs: label at http://127.0.0.1:41123/?token=...`` and serves until interrupted.
    """
    from gym_prefs.web.server import EXTRA_HINT, create_app

    try:
        import uvicorn
    except ImportError as error:  # pragma: no cover - without the extra
        raise ImportError(EXTRA_HINT) from error

    token = token or secrets.token_urlsafe(16)
    app = create_app(
        store_path, token, labeler_default=labeler_default, render_size=render_size, lease_seconds=lease_seconds
    )
    try:
        sock = _bind(host, port)
    except OSError:
        app.state.close()
        raise
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    if host not in _LOCAL:
        print(
            f"WARNING: the labelling page is served on {host}, not only this machine: anyone who can reach "
            "this machine and has the token can label. Serve 127.0.0.1 and forward the port "
            "(ssh -L PORT:localhost:PORT this-machine) to keep it private.",
            file=sys.stderr,
            flush=True,
        )
    announce(f"gym_prefs: label at {page_url(host, sock.getsockname()[1], token)}")
    halt = threading.Event()
    if exit_with is not None:

        def stop() -> None:
            server.should_exit = True

        threading.Thread(
            target=_watch, args=(exit_with, stop, halt), name="gym_prefs-web-exit-with", daemon=True
        ).start()
    try:
        server.run(sockets=[sock])
    finally:
        halt.set()
        sock.close()
        app.state.close()  # the lifespan closed it already unless startup failed


def parser(prog: str = PROGRAM) -> argparse.ArgumentParser:
    """The server's command line (``gym-prefs serve`` may reuse it with its own ``prog``)."""
    result = argparse.ArgumentParser(
        prog=prog,
        description="Serve the labelling page of a preference store: people compare clip pairs in a browser "
        "while training runs (on this machine, also a headless server). Keys on the page: left/right arrow = "
        "that clip is better, up = equally good, down = can't tell, space = pause, r = replay, s = speed.",
    )
    result.add_argument("store", type=Path, help="the preference store (.db)")
    result.add_argument(
        "--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST}: this machine only)"
    )
    result.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 picks a free one)"
    )
    result.add_argument("--token", default=None, help="access token in the page's address (default: a random one)")
    result.add_argument("--render-size", type=int, default=240, help="pixels of frames rendered from MuJoCo states")
    result.add_argument("--labeler", default="web", help="name stored with answers from a page that gives none")
    result.add_argument(
        "--lease-seconds",
        type=float,
        default=DEFAULT_LEASE_SECONDS,
        help="how long a page keeps a pair without renewing it; a closed page's pairs go to others after this "
        f"(default {DEFAULT_LEASE_SECONDS:g}, at least {MIN_LEASE_SECONDS:g})",
    )
    result.add_argument(
        "--exit-with",
        type=int,
        default=None,
        metavar="PID",
        help=f"stop once process PID has ended, even if it was killed (checked every {EXIT_WITH_CHECK:g} s); "
        "the web labeler passes the training process, so that no server outlives it",
    )
    return result


def main(argv: Sequence[str] | None = None, prog: str = PROGRAM) -> int:
    """Run the server as its own program until interrupted; returns the exit status.

    Args:
        argv: the arguments (``sys.argv[1:]`` if ``None``): ``STORE [--host HOST] [--port PORT]
            [--token TOKEN] [--render-size N] [--labeler NAME] [--lease-seconds S] [--exit-with PID]``.
        prog: the program's name in its usage and help.

    Returns:
        0 once stopped, 2 if the store cannot be served or the address cannot be bound.

    Example:
        ``python -m gym_prefs.web runs/hopper/preferences.db --port 8765``
    """
    args = parser(prog).parse_args(argv)
    # Mesa's software renderer spreads every frame over all cores, taking them from the training
    # run beside it; on one thread a 240 px MuJoCo frame still takes only about 5 ms.
    os.environ.setdefault("LP_NUM_THREADS", "1")
    if args.render_size < 16:
        print(f"gym_prefs: --render-size must be at least 16 pixels, got {args.render_size}", file=sys.stderr)
        return 2
    if not args.lease_seconds >= MIN_LEASE_SECONDS:  # NaN included
        print(
            f"gym_prefs: --lease-seconds must be at least {MIN_LEASE_SECONDS:g}, got {args.lease_seconds:g}",
            file=sys.stderr,
        )
        return 2
    try:
        serve(
            args.store,
            args.host,
            args.port,
            args.token,
            render_size=args.render_size,
            labeler_default=args.labeler,
            exit_with=args.exit_with,
            announce=lambda line: print(line, flush=True),
            lease_seconds=args.lease_seconds,
        )
    except (StoreError, FileNotFoundError, OSError) as error:
        print(f"gym_prefs: {error}", file=sys.stderr)
        return 2
    return 0
