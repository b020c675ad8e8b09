"""The labelling page's states in a real browser: loading, waiting, done, refused, renewing, playback."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from web_helpers import (
    HEIGHT,
    WIDTH,
    chromium,
    leased_ids,
    make_mujoco_store,
    make_store,
    random_pairs,
    serving,
    sign_in,
    start_labelling,
)

from gym_prefs import PreferenceStore

PAIR_SHOWN = "document.getElementById('pair').hidden === false"


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


@pytest.fixture
def new_page(browser):
    contexts = []

    def opened():
        context = browser.new_context()
        contexts.append(context)
        page = context.new_page()
        page.errors = []
        page.on("pageerror", lambda error: page.errors.append(str(error)))
        return page

    yield opened
    for context in contexts:
        context.close()


def message(page):
    return page.evaluate("document.getElementById('message').textContent")


def stored(path):
    with PreferenceStore(path, readonly=True) as store:
        return [(answer.query_id, answer.label) for answer in store.answers()]


def test_a_key_pressed_while_the_next_pair_loads_answers_nothing(tmp_path, new_page):
    path = tmp_path / "preferences.db"
    ids, _ = make_store(path)
    with serving(path) as url:
        page = new_page()
        asked, released, statuses = [], [], []
        page.on("response", lambda r: r.url.endswith("/api/answer") and statuses.append(r.status))

        def hold_all_but_the_first(route):  # the pair fetched ahead does not arrive until released
            asked.append(route)
            if len(asked) == 1 or released:
                route.continue_()

        page.route("**/api/next", hold_all_but_the_first)
        start_labelling(page, url)
        with page.expect_response("**/api/answer"):
            page.keyboard.press("ArrowLeft")
        page.wait_for_function("document.getElementById('message').textContent.startsWith('Loading')")
        page.keyboard.press("ArrowRight")  # the answered pair is still on screen, but answered
        page.wait_for_timeout(300)
        held = asked[1:]
        released.append(True)
        for route in held:
            route.continue_()
        page.wait_for_function("window.gymPrefsTimings.length >= 1")
        assert statuses == [200]
        assert stored(path) == [(ids[0], "first")]
        assert message(page) == "" and not page.errors


def test_the_page_waits_for_queries_and_shows_them_without_a_reload(tmp_path, new_page):
    path = tmp_path / "preferences.db"
    make_store(path, queries=0)
    with serving(path) as url:
        page = new_page()
        sign_in(page, url)
        page.wait_for_function("document.getElementById('message').textContent.startsWith('Waiting')")
        assert page.evaluate("document.getElementById('pair').hidden")
        with PreferenceStore(path) as store:  # the training run asks for labels
            (query_id,) = store.add_queries(random_pairs(1), source="web")
        page.wait_for_function(PAIR_SHOWN, timeout=15000)
        page.keyboard.press("ArrowRight")
        page.wait_for_function("document.getElementById('message').textContent.startsWith('Waiting')")
        assert stored(path) == [(query_id, "second")] and not page.errors


def test_the_page_says_when_every_label_is_in(tmp_path, new_page):
    path = tmp_path / "preferences.db"
    ids, _ = make_store(path, queries=2, total_labels=2)
    with serving(path) as url:
        page = new_page()
        start_labelling(page, url)
        page.keyboard.press("ArrowUp")
        page.wait_for_function("window.gymPrefsTimings.length >= 1")
        page.keyboard.press("ArrowDown")  # can't tell: stored, and the budget counts it
        page.wait_for_function("document.getElementById('message').textContent.startsWith('All labels are in')")
        assert page.evaluate("document.getElementById('pair').hidden")
        assert stored(path) == [(ids[0], "equal"), (ids[1], "skip")] and not page.errors


def test_an_answer_the_server_refuses_is_shown_changes_nothing_and_the_page_moves_on(tmp_path, new_page):
    path = tmp_path / "preferences.db"
    make_store(path)
    with serving(path) as url:
        page = new_page()

        def with_a_stale_lease(route):
            body = json.loads(route.request.post_data)
            route.continue_(post_data=json.dumps({**body, "lease": "not-the-lease"}))

        page.route("**/api/answer", with_a_stale_lease)
        start_labelling(page, url)
        with page.expect_response("**/api/answer") as response:
            page.keyboard.press("ArrowLeft")
        assert response.value.status == 409
        page.wait_for_function("document.getElementById('message').textContent.startsWith('Not counted')")
        assert "lease" in message(page)
        assert page.evaluate(PAIR_SHOWN)  # the next pair
        assert stored(path) == [] and not page.errors


def test_a_page_renews_the_pairs_it_holds_while_a_person_looks(tmp_path, new_page):
    path = tmp_path / "preferences.db"
    make_store(path)
    with serving(path, "--lease-seconds", "3") as url:
        looking = new_page()
        held = leased_ids(looking)
        start_labelling(looking, url, "ann")
        looking.wait_for_timeout(7000)  # two leases long: only renewals keep the pairs
        other = new_page()
        given = leased_ids(other)
        start_labelling(other, url, "bob")
        assert len(held) == 2 and given and not set(held) & set(given)
        with looking.expect_response("**/api/answer") as response:
            looking.keyboard.press("ArrowLeft")
        assert response.value.status == 200 and response.value.json()["counted"]
        assert stored(path) == [(held[0], "first")] and not looking.errors


def _centre_pixel(page):
    return page.evaluate(
        "Array.from(document.getElementById('left').getContext('2d')"
        ".getImageData(document.getElementById('left').width / 2, document.getElementById('left').height / 2, 1, 1)"
        ".data.slice(0, 3))"
    )


def test_the_buttons_answer_and_pause_replay_and_slow_the_clips(tmp_path, new_page):
    path = tmp_path / "preferences.db"
    ids, clips = make_store(path)
    with serving(path) as url:
        page = new_page()
        start_labelling(page, url)
        first_frame = clips[0, 0, 0, HEIGHT // 2, WIDTH // 2].tolist()  # the left clip's first frame
        page.click("#pause")
        assert page.inner_text("#pause") == "play"
        for _ in range(20):  # pause on a frame other than the first
            if not np.allclose(_centre_pixel(page), first_frame, atol=2):
                break
            page.click("#pause")
            page.wait_for_timeout(30)
            page.click("#pause")
        shown = page.evaluate("window.gymPrefsFramesShown")
        page.wait_for_timeout(400)
        assert page.evaluate("window.gymPrefsFramesShown") == shown  # paused: no frame drawn anew
        assert not np.allclose(_centre_pixel(page), first_frame, atol=2)
        page.click("#replay")
        page.wait_for_timeout(100)
        assert np.allclose(_centre_pixel(page), first_frame, atol=2)  # back at the first frame
        page.click("#pause")
        page.wait_for_timeout(400)
        assert page.evaluate("window.gymPrefsFramesShown") > shown  # playing again
        page.click("#speed")
        assert page.inner_text("#speed") == "speed 0.5×"
        page.click("button[data-label='second']")  # the on-screen button, as on a touch screen
        page.wait_for_function("window.gymPrefsTimings.length >= 1")
        assert stored(path) == [(ids[0], "second")] and not page.errors


def test_a_halfcheetah_pair_is_drawn_from_its_states_as_pictured_in_the_readme(tmp_path, new_page):
    pytest.importorskip("mujoco")
    path = tmp_path / "cheetah.db"
    make_mujoco_store(path, length=30, instruction="make the cheetah run forward")
    with serving(path) as url:
        page = new_page()
        page.set_viewport_size({"width": 940, "height": 700})
        start_labelling(page, url)
        page.wait_for_function("window.gymPrefsFramesShown > 10")  # playing
        assert page.inner_text("#instruction") == "make the cheetah run forward"
        spread = page.evaluate(
            """Array.from(['left', 'right'], (id) => {
                 const canvas = document.getElementById(id);
                 const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
                 let sum = 0, squares = 0;
                 for (let i = 0; i < pixels.length; i += 4) { sum += pixels[i]; squares += pixels[i] ** 2; }
                 const n = pixels.length / 4;
                 return Math.sqrt(squares / n - (sum / n) ** 2);
               })"""
        )
        assert min(spread) > 20, spread  # a rendered scene (the chequered floor), not a blank canvas
        picture = tmp_path / "web.png"
        page.screenshot(path=picture)
        assert not page.errors
    # GYM_PREFS_PICTURES=docs makes the README's picture anew (a relative folder is the repository's).
    if os.environ.get("GYM_PREFS_PICTURES"):
        shutil.copy(picture, Path(__file__).parent.parent / os.environ["GYM_PREFS_PICTURES"] / "web.png")
