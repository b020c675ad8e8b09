"""The labelling page's server: the token, leasing, answers committed before they are acknowledged,
refused requests that change nothing, clip strips, the page's files, and the server as its own program."""

import hashlib
import io
import json
import re
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings

import numpy as np
import pytest
from PIL import Image
from web_helpers import AUTH, FRAMES, HEIGHT, LENGTH, QUERIES, TOKEN, WIDTH, make_mujoco_store, make_store

from gym_prefs import PreferenceStore
from gym_prefs.web.api_requests import MAX_BODY
from gym_prefs.web.clip_images import ClipStrips, encode_strip
from gym_prefs.web.server import create_app

with warnings.catch_warnings():  # Starlette 1.x suggests another HTTP client for its test client
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "preferences.db"
    make_store(path)
    return path


@pytest.fixture
def client(store_path):
    with TestClient(create_app(store_path, TOKEN)) as test_client:
        yield test_client


def rows_digest(path):
    """A digest of every row of the tables that hold answers, votes, leases and queries."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        digest = hashlib.sha256()
        for table in sorted(set(tables) & {"answers", "votes", "queries", "leases"}):
            for row in connection.execute(f"SELECT * FROM {table} ORDER BY rowid"):
                digest.update(repr((table, row)).encode())
        return digest.hexdigest()
    finally:
        connection.close()


def lease(client, person="ann", **extra):
    response = client.post("/api/next", headers=AUTH, json={"person": person, **extra})
    assert response.status_code == 200, response.text
    return response.json()


def answer_body(pair, label="first", person="ann"):
    return {"query_id": pair["query_id"], "label": label, "lease": pair["lease"], "person": person, "seconds": 1.5}


ROUTES = [
    ("GET", "/", None),
    ("GET", "/static/app.js", None),
    ("GET", "/static/style.css", None),
    ("GET", "/api/status", None),
    ("POST", "/api/next", {"person": "ann"}),
    ("POST", "/api/answer", {"query_id": 1, "label": "first", "person": "ann"}),
    ("POST", "/api/renew", {"query_id": 1, "lease": "x", "person": "ann"}),
    ("POST", "/api/release", {"person": "ann"}),
    ("GET", "/api/clip/1/first", None),
    ("GET", "/no/such/route", None),
]


@pytest.mark.parametrize(("method", "route", "body"), ROUTES)
def test_every_route_needs_the_token(client, store_path, method, route, body):
    before = rows_digest(store_path)
    missing = client.request(method, route, json=body)
    wrong = client.request(method, route, json=body, headers={"X-Token": TOKEN + "x"})
    wrong_in_url = client.request(method, route, json=body, params={"token": "nope"})
    assert missing.status_code == 401 and "token" in missing.json()["error"]
    assert wrong.status_code == 403 and wrong_in_url.status_code == 403
    assert rows_digest(store_path) == before


def test_the_page_and_its_files_are_served_with_the_token(client):
    page = client.get("/", params={"token": TOKEN})
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    # Script and style tags carry the token in their address: they cannot send a header.
    assert f"/static/app.js?token={TOKEN}" in page.text and "<canvas" in page.text
    script = client.get("/static/app.js", params={"token": TOKEN})
    assert script.status_code == 200 and "gymPrefsTimings" in script.text and "X-Token" in script.text
    assert "image-rendering: pixelated" in client.get("/static/style.css", params={"token": TOKEN}).text
    assert client.get("/static/nothing.js", params={"token": TOKEN}).status_code == 404


def test_status_reports_instruction_budget_and_counts(client):
    status = client.get("/api/status", headers=AUTH, params={"person": "ann"}).json()
    assert status["instruction"] == "balance the pole" and status["budget"] == 10
    assert status["counts"]["pending"] == QUERIES and status["counts"]["labels"] == 0
    assert status["person"] == "ann" and status["person_count"] == 0 and status["agreement"] is None


def test_two_people_get_different_pairs_and_one_person_keeps_theirs(client):
    ann, bob = lease(client, "ann"), lease(client, "bob")
    assert ann["query_id"] != bob["query_id"]
    assert lease(client, "ann")["query_id"] == ann["query_id"]  # a reloaded page continues
    ahead = lease(client, "ann", slot=1)  # the pair a page fetches ahead is another one
    assert ahead["query_id"] not in (ann["query_id"], bob["query_id"])
    assert ann["frames"] == FRAMES and ann["fps"] == pytest.approx(25.0)
    assert (ann["width"], ann["height"]) == (WIDTH, HEIGHT)
    assert ann["first"] == f"/api/clip/{ann['query_id']}/first"


def test_with_two_labels_a_query_the_pair_goes_to_two_people_and_their_answers_combine(store_path):
    with PreferenceStore(store_path) as store:
        store.set_meta("labels_per_query", "2")
    with TestClient(create_app(store_path, TOKEN)) as client:
        ann = lease(client, "ann")
        vote = client.post("/api/answer", headers=AUTH, json=answer_body(ann, "first", "ann")).json()
        assert vote["counted"] and not vote["complete"] and vote["answer"] is None
        assert lease(client, "ann")["query_id"] != ann["query_id"]  # never twice to one person
        bob = lease(client, "bob")
        assert bob["query_id"] == ann["query_id"]  # but to another
        vote = client.post("/api/answer", headers=AUTH, json=answer_body(bob, "first", "bob")).json()
        assert vote["complete"] and vote["answer"] == {"label": "first", "labeler": "ann, bob"}
        status = client.get("/api/status", headers=AUTH).json()
        assert status["labels_per_query"] == 2 and status["agreement"] == 1.0
    with PreferenceStore(store_path, readonly=True) as store:
        assert [(answer.query_id, answer.label) for answer in store.answers()] == [(ann["query_id"], "first")]


def test_an_answer_is_committed_before_it_is_acknowledged(client, store_path):
    pair = lease(client)
    response = client.post("/api/answer", headers=AUTH, json=answer_body(pair, "second"))
    assert response.status_code == 200
    vote = response.json()
    assert vote["counted"] and vote["complete"] and vote["answer"]["label"] == "second"
    with PreferenceStore(store_path, readonly=True) as store:
        [stored] = store.answers_for([pair["query_id"]])
    assert (stored.label, stored.labeler, stored.seconds) == ("second", "ann", 1.5)
    status = client.get("/api/status", headers=AUTH, params={"person": "ann"}).json()
    assert status["counts"]["labels"] == 1 and status["person_count"] == 1


def test_a_retried_answer_is_acknowledged_but_not_counted_twice(client, store_path):
    pair = lease(client)
    first = client.post("/api/answer", headers=AUTH, json=answer_body(pair)).json()
    before = rows_digest(store_path)
    again = client.post("/api/answer", headers=AUTH, json=answer_body(pair))
    assert again.status_code == 200 and first["counted"] and not again.json()["counted"]
    assert rows_digest(store_path) == before


def refused(client, store_path, body=None, content=None, headers=None):
    before = rows_digest(store_path)
    response = client.post("/api/answer", headers={**AUTH, **(headers or {})}, json=body, content=content)
    assert rows_digest(store_path) == before, "a refused answer changed the store"
    assert response.json()["error"]
    return response.status_code, response.json()["error"]


def test_malformed_json_is_400_and_changes_nothing(client, store_path):
    lease(client)
    assert refused(client, store_path, content=b"{not json", headers={"Content-Type": "application/json"})[0] == 400
    assert refused(client, store_path, body=[1, 2])[0] == 400
    assert refused(client, store_path, body={"label": "first"})[0] == 400  # no query_id
    assert refused(client, store_path, body={"query_id": "1", "label": "first"})[0] == 400


def test_a_body_over_the_limit_is_413_and_changes_nothing(client, store_path):
    pair = lease(client)
    huge = {**answer_body(pair), "padding": "x" * (MAX_BODY + 1)}
    assert refused(client, store_path, body=huge)[0] == 413


def test_a_body_sent_in_chunks_without_a_length_is_cut_off_at_the_limit(client, store_path):
    pair = lease(client)

    def chunks():  # a streamed body: no Content-Length, so only counting what arrives can stop it
        body = json.dumps({**answer_body(pair), "padding": "x" * (4 * MAX_BODY)}).encode()
        for start in range(0, len(body), 1024):
            yield body[start : start + 1024]

    status, error = refused(client, store_path, content=chunks(), headers={"Content-Type": "application/json"})
    assert status == 413 and "limit" in error


def test_a_bad_label_is_422_and_changes_nothing(client, store_path):
    pair = lease(client)
    status, error = refused(client, store_path, body=answer_body(pair, "left"))
    assert status == 422 and "first" in error
    assert refused(client, store_path, body={**answer_body(pair), "seconds": -1})[0] == 422


def test_an_unknown_query_is_404_and_changes_nothing(client, store_path):
    pair = lease(client)
    assert refused(client, store_path, body={**answer_body(pair), "query_id": 999})[0] == 404


def test_a_stale_lease_is_409_and_changes_nothing(client, store_path):
    pair = lease(client)
    status, error = refused(client, store_path, body={**answer_body(pair), "lease": "not-the-lease"})
    assert status == 409 and "lease" in error


def test_an_answered_query_is_409_and_changes_nothing(client, store_path):
    pair = lease(client)
    assert client.post("/api/answer", headers=AUTH, json=answer_body(pair, "first")).status_code == 200
    # Another person, or the same person with another label: the query has its answer.
    assert refused(client, store_path, body=answer_body(pair, "second"))[0] == 409
    assert refused(client, store_path, body=answer_body(pair, "first", person="bob"))[0] == 409


def test_the_clip_is_one_strip_of_all_its_frames(client, store_path):
    pair = lease(client)
    _, clips = make_store(store_path.with_name("copy.db"))  # the same seed: the same clips
    for side, index in (("first", 0), ("second", 1)):
        response = client.get(pair[side], headers=AUTH)
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        assert response.headers["x-frames"] == str(FRAMES)
        image = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))
        assert image.shape == (FRAMES * HEIGHT, WIDTH, 3)
        expected = clips[pair["query_id"] - 1, index, ::2]  # 50 fps shown at 25: every 2nd step
        np.testing.assert_array_equal(image.reshape(FRAMES, HEIGHT, WIDTH, 3), expected)
    assert client.get(f"/api/clip/{pair['query_id']}/middle", headers=AUTH).status_code == 404
    assert client.get("/api/clip/999/first", headers=AUTH).status_code == 404


def test_next_says_done_once_the_budget_is_answered(tmp_path):
    path = tmp_path / "small.db"
    make_store(path, queries=2)
    with PreferenceStore(path) as store:
        store.set_meta("total_labels", "2")
    with TestClient(create_app(path, TOKEN)) as client:
        for _ in range(2):
            pair = lease(client)
            assert client.post("/api/answer", headers=AUTH, json=answer_body(pair)).status_code == 200
        assert lease(client) == {"done": True}
    with PreferenceStore(path) as store:
        store.set_meta("total_labels", "5")
    with TestClient(create_app(path, TOKEN)) as client:
        assert lease(client) == {"waiting": True}


def test_a_missing_store_is_refused_without_creating_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="no preference store"):
        create_app(tmp_path / "none.db", TOKEN)
    assert not (tmp_path / "none.db").exists()


def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read().decode()


def test_the_server_program_serves_the_page_and_exits_with_its_process(store_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    server = subprocess.Popen(
        [sys.executable, "-m", "gym_prefs.web", str(store_path), "--port", "0", "--exit-with", str(sleeper.pid)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = server.stdout.readline()
        match = re.fullmatch(r"gym_prefs: label at (http://127\.0\.0\.1:\d+/)\?token=(\S+)\n", line)
        assert match, f"unexpected first line {line!r}"
        base, token = match.groups()
        status, page = get(f"{base}?token={token}")
        assert status == 200 and "app.js" in page
        with pytest.raises(urllib.error.HTTPError) as refused_error:
            get(f"{base}api/status?token=wrong")
        assert refused_error.value.code == 403
        assert server.poll() is None
        sleeper.kill()
        sleeper.wait()
        assert server.wait(timeout=20) == 0
        assert "--exit-with" in server.stderr.read()
    finally:
        for process in (sleeper, server):
            if process.poll() is None:
                process.kill()
                process.wait()


def test_the_server_program_warns_when_it_serves_other_machines(store_path):
    server = subprocess.Popen(
        [sys.executable, "-m", "gym_prefs.web", str(store_path), "--host", "0.0.0.0", "--port", "0", "--token", "abc"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = server.stdout.readline()
        assert line.startswith("gym_prefs: label at http://127.0.0.1:") and line.rstrip().endswith("/?token=abc")
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=20)
    assert "WARNING" in stderr and "anyone who can reach" in stderr


def test_the_server_program_refuses_a_missing_store(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "gym_prefs.web", str(tmp_path / "none.db"), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "no preference store" in result.stderr
    assert not (tmp_path / "none.db").exists()


def test_the_pairs_after_a_lease_are_rendered_ahead_and_the_cache_is_bounded(store_path):
    strips = ClipStrips(store_path, cached_pairs=3)
    try:
        first = strips.pair(1).result(timeout=10)
        assert first is not None and first.frames == FRAMES and first.media_type == "image/png"
        strips.render_ahead(1)
        deadline = time.monotonic() + 10
        while not {2, 3} <= set(strips.cached()) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert {2, 3} <= set(strips.cached())
        assert strips.pair(2).result(timeout=10).first == strips.pair(2).result().first  # the same rendering
        strips.pair(4)
        assert len(strips.cached()) == 3 and 1 not in strips.cached()  # least recently used went first
        assert strips.pair(999).result(timeout=10) is None
    finally:
        strips.close()


def test_a_jpeg_strip_holds_every_frame():
    frames = np.full((4, 16, 16, 3), 200, np.uint8)
    image = Image.open(io.BytesIO(encode_strip(frames, "JPEG")))
    assert image.format == "JPEG" and image.size == (16, 64)
    with pytest.raises(ValueError, match="RGB"):
        encode_strip(np.zeros((2, 4, 4), np.uint8), "PNG")


def test_leases_are_renewed_and_given_back(client):
    ann = lease(client, "ann", page="p1")
    body = {"query_id": ann["query_id"], "lease": ann["lease"], "person": "ann", "page": "p1"}
    assert client.post("/api/renew", headers=AUTH, json=body).status_code == 200
    assert client.post("/api/renew", headers=AUTH, json={**body, "lease": "other"}).status_code == 409
    assert client.post("/api/release", headers=AUTH, json={"person": "ann", "page": "p1"}).status_code == 200
    assert lease(client, "bob")["query_id"] == ann["query_id"]  # the page closed: its pair goes to the next


def test_mujoco_states_are_served_as_rendered_jpeg_strips(tmp_path):
    pytest.importorskip("mujoco")
    path = tmp_path / "cheetah.db"
    make_mujoco_store(path)
    with TestClient(create_app(path, TOKEN, render_size=64)) as client:
        pair = lease(client)
        first = client.get(pair["first"], headers=AUTH)
        second = client.get(pair["second"], headers=AUTH)
    assert first.headers["content-type"] == "image/jpeg" and pair["frames"] == LENGTH
    strips = [np.asarray(Image.open(io.BytesIO(response.content))) for response in (first, second)]
    assert strips[0].shape == (LENGTH * 64, 64, 3) and strips[0].std() > 10
    assert not np.array_equal(strips[0], strips[1])
