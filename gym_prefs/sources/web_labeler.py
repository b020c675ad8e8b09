"""People label clip pairs in a browser, served from the machine that trains (a headless server too)."""

from __future__ import annotations

import importlib.util
import secrets
from pathlib import Path

from gym_prefs.sources.program_source import ProgramSource
from gym_prefs.web.serving import page_url

__all__ = ["DEFAULT_PORT", "WebLabeler"]

#: The port the labelling page is served on unless told otherwise.
DEFAULT_PORT = 8765


class WebLabeler(ProgramSource):
    """People answer on a web page (:mod:`gym_prefs.web`) while the agent keeps training.

    The callback stores every query in the run's preference store; this source starts the
    labelling server on that store, in its own process, prints the page's address with its
    access token, and reads the answers the server commits there. Each open page gets a
    different pending query; several people can label at once.

    The server binds ``127.0.0.1`` by default: from another machine, forward the port
    (``ssh -L 8765:localhost:8765 server``) and open the printed address. ``host="0.0.0.0"``
    serves every network the machine is on, and says so loudly; the token is still required.

    Args:
        instruction: what to teach, shown on the page (e.g. "make the hopper do a backflip").
        host: the address to bind.
        port: the port to serve on.
        token: the access token in the page's address (a random one by default).
        render_size: side in pixels of frames rendered from MuJoCo states.
        start_server: start the server when the first queries arrive; ``False`` to serve the
            store by hand with ``gym-prefs serve STORE``.

    Example:
        >>> labeler = WebLabeler("make the hopper do a backflip", start_server=False)
        >>> labeler.url.startswith("http://127.0.0.1:8765/?token=")
        True

        In a training script::

            callback = gym_prefs.PreferenceCallback("web", total_labels=700, instruction="do a backflip")
    """

    name = "web"
    program_name = "labelling server"

    def __init__(
        self,
        instruction: str = "",
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        token: str | None = None,
        render_size: int = 240,
        start_server: bool = True,
    ) -> None:
        if start_server and not all(importlib.util.find_spec(name) for name in ("starlette", "uvicorn", "PIL")):
            # Fail now, not when the first queries arrive and the server cannot start.
            raise ImportError("the labelling page needs Starlette, uvicorn and Pillow: pip install 'gym-prefs[web]'")
        super().__init__(instruction, labeler="web", start_program=start_server)
        self.host = host
        self.port = int(port)
        self.token = token or secrets.token_urlsafe(16)
        self.render_size = render_size

    @property
    def url(self) -> str:
        """The page's address, token included."""
        return page_url(self.host, self.port, self.token)

    def program_args(self, store_path: Path) -> list[str]:
        return [
            "-m",
            "gym_prefs.web",
            str(store_path),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--token",
            self.token,
            "--render-size",
            str(self.render_size),
        ]

    def reopen_hint(self, store_path: Path) -> str:
        return f"gym-prefs serve {store_path} --port {self.port}"

    def _repr_html_(self) -> str:
        """In a notebook, the labelling page itself (an IFrame of the same server)."""
        return f'<iframe src="{self.url}" width="100%" height="720" style="border:0"></iframe>'
