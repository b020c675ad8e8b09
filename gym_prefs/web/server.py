"""The labelling page's HTTP side: an ASGI app (Starlette) over one store's :class:`~gym_prefs.label_desk.LabelDesk`.

Routes (every one needs the access token: ``?token=`` in the page's address, then an ``X-Token``
header on the page's API calls; none given is 401, a wrong one 403):

======================================  ===========================================================
``GET /``                               the page
``GET /static/...``                     its script and style sheet (shipped in the package)
``GET /api/status?person=NAME``         instruction, budget, counts, agreement, this person's votes
``POST /api/next``                      lease a pair: ``{"person", "page"?, "slot"?}``
``POST /api/renew``                     keep a lease alive while a person looks
``POST /api/release``                   give a page's leases back (the page closes)
``POST /api/answer``                    commit an answer, then acknowledge it
``GET /api/clip/{query_id}/{side}``     a clip (``first`` / ``second``) as one image of all frames
======================================  ===========================================================

Every call on the desk runs on one thread of its own, so that a commit (which waits for the
disk) never stalls the event loop, and the store's connection is used by one thread only. An
answer is committed before the response is sent; a refused one (400, 404, 409, 413, 422, each
with ``{"error": message}``) writes nothing.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from gym_prefs.label_desk import DeskError, LabelDesk, Lease, UnknownQuery
from gym_prefs.records import LABELS
from gym_prefs.store import PreferenceStore
from gym_prefs.web.access import TokenGate
from gym_prefs.web.api_requests import MAX_NAME, ApiError, field, holder_of, json_body, person_of
from gym_prefs.web.clip_images import ClipStrips

#: What to do when the web extra's packages are missing.
EXTRA_HINT = "the labelling page needs Starlette and uvicorn: pip install 'gym-prefs[web]'"

try:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles
except ImportError as error:  # pragma: no cover - without the extra
    raise ImportError(EXTRA_HINT) from error

__all__ = ["EXTRA_HINT", "STATIC", "create_app"]

#: The page's files, shipped in the package.
STATIC = Path(__file__).resolve().parent / "static"

T = TypeVar("T")


class _DeskThread:
    """The store and its desk, used from one thread: every call runs there, off the event loop."""

    def __init__(self, store_path: Path, lease_seconds: float) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gym_prefs-web-desk")
        self.store, self.desk = self._executor.submit(self._open, store_path, lease_seconds).result()

    @staticmethod
    def _open(store_path: Path, lease_seconds: float) -> tuple[PreferenceStore, LabelDesk]:
        store = PreferenceStore(store_path)
        try:
            return store, LabelDesk(store, lease_seconds)
        except BaseException:
            store.close()
            raise

    async def call(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, partial(function, *args))

    def close(self) -> None:
        self._executor.submit(self.store.close).result()
        self._executor.shutdown(wait=True)


def _desk_error(error: DeskError) -> ApiError:
    # UnknownQuery is 404; AlreadyAnswered, StaleLease and any other refusal are conflicts.
    return ApiError(404 if isinstance(error, UnknownQuery) else 409, str(error))


class _LabelApi:
    """The routes' handlers over one desk and its clip strips."""

    def __init__(self, store_path: Path, token: str, labeler_default: str, render_size: int, lease_seconds: float):
        self.token = token
        self.labeler_default = labeler_default
        self.desk = _DeskThread(store_path, lease_seconds)
        try:
            self.strips = ClipStrips(store_path, render_size=render_size)
        except BaseException:
            self.desk.close()
            raise
        self.lease_seconds = lease_seconds
        # Votes counted by this server, per person (shown as the person's progress).
        self.person_votes: dict[str, int] = {}
        self._closed = False

    def _meta(self) -> tuple[str, int | None]:
        """The instruction and the label budget, read on the desk's thread (a resumed run may change them)."""
        instruction = self.desk.store.get_meta("instruction") or ""
        budget = self.desk.store.get_meta("total_labels")
        return instruction, int(budget) if budget and budget.isdigit() else None

    async def page(self, request: Request) -> Response:
        html = (STATIC / "index.html").read_text(encoding="utf-8")
        # Script and style tags cannot send a header: their addresses carry the token.
        return HTMLResponse(
            html.replace("__TOKEN__", quote(self.token, safe="")), headers={"Cache-Control": "no-store"}
        )

    async def status(self, request: Request) -> Response:
        person = (request.query_params.get("person") or "").strip()[:MAX_NAME] or self.labeler_default
        counts = await self.desk.call(self.desk.desk.counts)
        agreement = await self.desk.call(self.desk.desk.agreement)
        instruction, budget = await self.desk.call(self._meta)
        return JSONResponse(
            {
                "instruction": instruction,
                "budget": budget,
                "counts": counts,
                "agreement": agreement,
                "labels_per_query": self.desk.desk.labels_per_query,
                "person": person,
                "person_count": self.person_votes.get(person, 0),
            }
        )

    async def next(self, request: Request) -> Response:
        body = await json_body(request)
        person = person_of(body, self.labeler_default)
        holder = holder_of(body, person)
        lease: Lease | None = await self.desk.call(self.desk.desk.lease, holder, person)
        if lease is None:
            counts = await self.desk.call(self.desk.desk.counts)
            _, budget = await self.desk.call(self._meta)
            # Nothing pending and the budget answered: the run asks no more (else it may ask later).
            done = budget is not None and counts["pending"] == 0 and counts["answered"] + counts["skipped"] >= budget
            return JSONResponse({"done": True} if done else {"waiting": True})
        pair = await asyncio.wrap_future(self.strips.pair(lease.query_id))
        self.strips.render_ahead(lease.query_id)
        if pair is None:
            raise ApiError(404, f"query {lease.query_id} has no clips to show; the store was recorded without them")
        return JSONResponse(
            {
                "query_id": lease.query_id,
                "lease": lease.token,
                "expires_in": self.lease_seconds,
                "fps": self.strips.display_fps,
                "frames": pair.frames,
                "width": pair.width,
                "height": pair.height,
                "first": f"/api/clip/{lease.query_id}/first",
                "second": f"/api/clip/{lease.query_id}/second",
            }
        )

    async def renew(self, request: Request) -> Response:
        body = await json_body(request)
        holder = holder_of(body, person_of(body, self.labeler_default))
        lease = Lease(field(body, "query_id", int), holder, field(body, "lease", str), 0.0)
        try:
            renewed = await self.desk.call(self.desk.desk.renew, lease)
        except DeskError as error:
            raise _desk_error(error) from None
        return JSONResponse({"query_id": renewed.query_id, "lease": renewed.token, "expires_in": self.lease_seconds})

    async def release(self, request: Request) -> Response:
        body = await json_body(request)
        person = person_of(body, self.labeler_default)
        for slot in (0, 1):
            await self.desk.call(self.desk.desk.release, holder_of({**body, "slot": slot}, person))
        return JSONResponse({"released": True})

    async def answer(self, request: Request) -> Response:
        body = await json_body(request)
        query_id = field(body, "query_id", int)
        label = field(body, "label", str)
        lease = field(body, "lease", str, None)
        person = person_of(body, self.labeler_default)
        seconds = field(body, "seconds", (int, float), 0.0)
        if label not in LABELS:
            raise ApiError(422, f"label must be one of {list(LABELS)}, got {label!r}; nothing was stored")
        if not math.isfinite(seconds) or seconds < 0:
            raise ApiError(422, f"seconds must be a finite number >= 0, got {seconds!r}; nothing was stored")
        try:
            # Committed to the store before the response: an acknowledged answer is never lost.
            vote = await self.desk.call(self.desk.desk.answer, query_id, label, person, float(seconds), lease)
        except DeskError as error:
            raise _desk_error(error) from None
        except ValueError as error:
            raise ApiError(422, str(error)) from None
        if vote.counted:
            self.person_votes[person] = self.person_votes.get(person, 0) + 1
        answer = vote.answer
        return JSONResponse(
            {
                "query_id": vote.query_id,
                "counted": vote.counted,
                "complete": vote.complete,
                "answer": None if answer is None else {"label": answer.label, "labeler": answer.labeler},
                "person_count": self.person_votes.get(person, 0),
            }
        )

    async def clip(self, request: Request) -> Response:
        side = request.path_params["side"]
        query_id = request.path_params["query_id"]
        if side not in ("first", "second"):
            raise ApiError(404, f"a clip's side is 'first' or 'second', got {side!r}")
        pair = await asyncio.wrap_future(self.strips.pair(query_id))
        if pair is None:
            raise ApiError(404, f"no query {query_id} with clips in this store; ask /api/next for a pair")
        return Response(
            pair.first if side == "first" else pair.second,
            media_type=pair.media_type,
            # A query's clips never change, so the browser may keep them.
            headers={"Cache-Control": "private, max-age=3600", "X-Frames": str(pair.frames)},
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.strips.close()
        self.desk.close()


async def _api_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, ApiError)
    return JSONResponse({"error": error.message}, status_code=error.status)


def create_app(
    store_path: str | Path,
    token: str,
    labeler_default: str = "web",
    render_size: int = 240,
    lease_seconds: float = 60.0,
) -> Starlette:
    """The labelling server's ASGI app for one store (serve it with uvicorn, or :func:`gym_prefs.web.serve`).

    Args:
        store_path: the preference store; it must exist and hold clips.
        token: the access token every request must carry.
        labeler_default: the name recorded when a page sends none.
        render_size: side in pixels of frames rendered from MuJoCo states.
        lease_seconds: how long a page holds a pair without renewing it.

    Returns:
        The app; its store is closed when the server shuts down (lifespan), or by
        ``app.state.close()``.

    Raises:
        FileNotFoundError: there is no store at ``store_path``.
        StoreError: the file is not a store, or holds no clips.

    Example:
        >>> from starlette.testclient import TestClient  # doctest: +SKIP
        >>> with TestClient(create_app("preferences.db", token="s3cret")) as client:  # doctest: +SKIP
        ...     client.get("/api/status", headers={"X-Token": "s3cret"}).json()["counts"]
        {'pending': 3, 'answered': 0, 'skipped': 0, 'queries': 3, 'labels': 0}
    """
    path = Path(store_path)
    if not path.exists():
        # Opening it would create an empty store: nothing for a person to label there.
        raise FileNotFoundError(
            f"no preference store at {path}: give the store of a run (the file PreferenceCallback names "
            "when training starts; `gym-prefs train` writes OUT/preferences.db)"
        )
    api = _LabelApi(path, token, labeler_default, render_size, lease_seconds)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            api.close()

    app = Starlette(
        routes=[
            Route("/", api.page),
            Route("/api/status", api.status),
            Route("/api/next", api.next, methods=["POST"]),
            Route("/api/renew", api.renew, methods=["POST"]),
            Route("/api/release", api.release, methods=["POST"]),
            Route("/api/answer", api.answer, methods=["POST"]),
            Route("/api/clip/{query_id:int}/{side}", api.clip),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        middleware=[Middleware(TokenGate, token=token)],
        exception_handlers={ApiError: _api_error},
        lifespan=lifespan,
    )
    app.state.close = api.close
    return app
