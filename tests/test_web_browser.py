"""The labelling page in a real browser (Chromium driven by Playwright): what a person does."""

import contextlib
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
from web_helpers import TOKEN, chromium, leased_ids, make_store, serving, start_labelling

from gym_prefs import PreferenceStore


@pytest.fixture
def served_store(tmp_path):
    path = tmp_path / "preferences.db"
    make_store(path)
    return path


def test_in_a_browser_answers_are_committed_once_and_the_next_pair_shows_at_once(served_store):
    store_path = served_store
    with serving(store_path) as url, chromium() as browser:
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        dropped = []

        def lose_the_first_acknowledgement(route):
            # The server commits the answer, but its response never reaches the page: the page
            # must send the same answer again, and the store must hold it once.
            if not dropped:
                dropped.append(route.fetch().json())
                route.abort()
            else:
                route.continue_()

        page.route("**/api/answer", lose_the_first_acknowledgement)
        start_labelling(page, url, "ann")
        assert page.evaluate("document.getElementById('who').hidden")
        for count, key in enumerate(["ArrowLeft", "ArrowRight", "ArrowUp"], start=1):
            page.keyboard.press(key)
            page.wait_for_function(f"window.gymPrefsTimings.length >= {count}", timeout=15000)
        timings = page.evaluate("window.gymPrefsTimings")
        assert dropped and dropped[0]["counted"]
        assert all(timing["seconds"] < 1.0 for timing in timings), timings  # fetched ahead: shown at once
        with PreferenceStore(store_path, readonly=True) as store:
            answers = store.answers()
        assert [answer.label for answer in answers] == ["first", "second", "equal"]
        assert {answer.labeler for answer in answers} == {"ann"}
        assert page.evaluate("localStorage.getItem('gymPrefsPerson')") == "ann"
        assert not errors


TRAINING = textwrap.dedent(
    """
    import sys
    import gymnasium as gym
    from stable_baselines3 import PPO
    import gym_prefs
    from gym_prefs.sources import WebLabeler

    env = gym_prefs.LearnedReward(gym.make("CartPole-v1", render_mode="rgb_array"))
    labeler = WebLabeler("balance the pole", port=0, token=sys.argv[2])
    callback = gym_prefs.PreferenceCallback(
        labeler, total_labels=8, initial_label_fraction=0.5, segment_length=10, refit_interval=128,
        initial_fit_epochs=5, fit_epochs=2, store=sys.argv[1], fitting="inline", seed=0,
    )
    PPO("MlpPolicy", env, n_steps=128, batch_size=64, policy_kwargs={"net_arch": [16]}, seed=0).learn(
        768, callback=callback
    )
    print("DONE", callback.num_queries, flush=True)
    """
)


def test_a_person_teaches_a_training_run_from_the_browser(tmp_path):
    store = tmp_path / "preferences.db"
    env = dict(os.environ, SDL_VIDEODRIVER="dummy")
    training = subprocess.Popen(
        [sys.executable, "-c", TRAINING, str(store), TOKEN], stdout=subprocess.PIPE, text=True, env=env
    )
    stack = contextlib.ExitStack()
    try:
        browser = stack.enter_context(chromium())
        url = next((m.group(1) for line in training.stdout if (m := re.search(r"label at (\S+)", line))), None)
        assert url is not None and url.endswith(f"?token={TOKEN}")
        given: list[dict] = []  # every answer a page sent
        leased: dict[str, list[int]] = {}
        pages = {}
        for name in ("ann", "bob"):  # two people, two browser contexts
            page = browser.new_context().new_page()
            page.on("request", lambda r: r.url.endswith("/api/answer") and given.append(json.loads(r.post_data)))
            leased[name] = leased_ids(page)
            start_labelling(page, url, name, timeout=60000)
            pages[name] = page
        assert leased["ann"] and leased["bob"] and not set(leased["ann"]) & set(leased["bob"])  # different pairs
        pages["bob"].keyboard.press("ArrowDown")  # can't tell: stored, never trained on
        pages["bob"].wait_for_timeout(500)
        pages["bob"].close()  # bob leaves: his other pair goes to ann
        ann = pages["ann"]
        ann.keyboard.press("ArrowLeft")
        ann.wait_for_timeout(300)
        ann.reload()  # mid-pair: nothing acknowledged is lost, nothing counted twice
        for key in ["ArrowRight", "ArrowUp", "ArrowLeft", "ArrowRight", "ArrowLeft", "ArrowUp", "ArrowRight"]:
            if training.poll() is not None:
                break
            try:
                ann.wait_for_function("document.getElementById('pair').hidden === false", timeout=30000)
            except Exception:
                break  # nothing left to label
            ann.keyboard.press(key)
            ann.wait_for_timeout(300)
        rest = training.communicate(timeout=300)[0]
        assert training.returncode == 0, rest
        assert "DONE 8" in rest  # training went on to the end of its budget
        with PreferenceStore(store, readonly=True) as reader:
            answers = {answer.query_id: answer for answer in reader.answers()}
            labelled = reader.labelled_pairs()
        sent = {item["query_id"]: item for item in given}
        assert len(sent) >= 4 and set(sent) <= set(answers)  # every answer sent is in the store, once
        for query_id, item in sent.items():
            assert (answers[query_id].label, answers[query_id].labeler) == (item["label"], item["person"])
        assert any(item["label"] == "skip" and item["person"] == "bob" for item in given)
        # The labels trained on have the preference of the key pressed; "can't tell" is not trained on.
        trained = dict(zip(labelled.query_ids.tolist(), labelled.mu.tolist(), strict=True))
        preference = {"first": 1.0, "second": 0.0, "equal": 0.5}
        for query_id, answer in answers.items():
            assert trained.get(query_id) == preference.get(answer.label)
    finally:
        stack.close()
        if training.poll() is None:
            training.kill()
            training.wait()
