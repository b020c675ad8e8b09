"""The labelling page: people compare clip pairs in a browser, served from the machine that trains.

Install with ``pip install 'gym-prefs[web]'`` (Starlette and uvicorn). The server is its own
program, ``python -m gym_prefs.web STORE``; :func:`serve` runs it in this process and
:func:`~gym_prefs.web.server.create_app` gives the ASGI app alone. Parts:
:mod:`~gym_prefs.web.server` (the routes), :mod:`~gym_prefs.web.clip_images` (clips as images),
:mod:`~gym_prefs.web.serving` (running it, its command line) and ``static/`` (the page).
"""

from gym_prefs.web.serving import DEFAULT_HOST, DEFAULT_PORT, main, page_url, parser, serve

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "main", "page_url", "parser", "serve"]
