"""A person's side: the labelling window, driven by scripted keys: drawing, keys, counts and answers."""

import os
import re
import subprocess
import sys
import threading
import time

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3 import PPO
from viewer_helpers import train_with_a_person_who_never_answers, wait_until

import gym_prefs
import gym_prefs.viewer as viewer_module
from gym_prefs import LearnedReward, PreferenceCallback, PreferenceStore
from gym_prefs.viewer import COUNTS_REFRESH, Viewer

pygame = pytest.importorskip("pygame", reason="the labelling window needs pygame: pip install 'gym-prefs[human]'")


def wait_for_pair(viewer, timeout=30.0):
    start = time.time()
    while viewer.current is None:
        viewer.step()
        assert time.time() - start < timeout, "no pair was shown"


def press(viewer, key):
    wait_for_pair(viewer)
    shown = viewer.current.query_id
    before = viewer.answers_given
    pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=key))
    while viewer.answers_given == before:
        viewer.step()
    return shown


def test_scripted_keys_become_labels_in_the_store(store_path):
    viewer = Viewer(store_path)
    shown = {
        press(viewer, pygame.K_LEFT): "first",
        press(viewer, pygame.K_RIGHT): "second",
        press(viewer, pygame.K_UP): "equal",
        press(viewer, pygame.K_DOWN): "skip",
    }
    with PreferenceStore(store_path, readonly=True) as store:
        assert {a.query_id: a.label for a in store.answers()} == shown
        assert len(store) == 3  # "can't tell" gives no label
        assert all(a.labeler == "human" and a.seconds > 0 for a in store.answers())
    # Closing the window loses nothing.
    wait_for_pair(viewer)
    pygame.event.post(pygame.event.Event(pygame.QUIT))
    viewer.run()
    assert not viewer.open
    with PreferenceStore(store_path, readonly=True) as store:
        assert len(store.answers()) == 4 and store.counts()["pending"] == 8


def test_pause_replay_and_speed_keys(store_path):
    viewer = Viewer(store_path)
    wait_for_pair(viewer)
    for _ in range(5):
        viewer.step()
    assert viewer.playhead > 0
    viewer.handle_key(pygame.K_SPACE)
    held = viewer.playhead
    for _ in range(3):
        viewer.step()
    assert viewer.paused and viewer.playhead == held
    viewer.handle_key(pygame.K_r)
    assert viewer.playhead == 0
    viewer.handle_key(pygame.K_MINUS)
    assert viewer.speed_index < 2
    viewer.handle_key(pygame.K_ESCAPE)
    assert not viewer.open
    viewer.close()


def test_mujoco_clips_are_rendered_from_stored_states(tmp_path):
    path = tmp_path / "cheetah.db"
    train_with_a_person_who_never_answers(path, env_id="HalfCheetah-v5", steps=512, labels=4)
    with PreferenceStore(path, readonly=True) as store:
        clips = store.clips(store.pending_ids()[0])
        assert clips[0].shape == (10, 18)  # qpos (9) and qvel (9) per step: no frames rendered in training
    viewer = Viewer(path, render_size=96)
    wait_for_pair(viewer, timeout=60)
    frames = viewer.current.left
    assert frames.shape[1:] == (96, 96, 3) and frames.std() > 10
    assert not np.array_equal(viewer.current.left[0], viewer.current.right[0])
    viewer.close()


def test_a_store_without_clips_says_how_to_get_them(tmp_path):
    env = LearnedReward(gym.make("CartPole-v1"))
    callback = PreferenceCallback("oracle", total_labels=4, segment_length=5, store=str(tmp_path / "p.db"))
    PPO("MlpPolicy", env, n_steps=128, policy_kwargs={"net_arch": [16]}).learn(256, callback=callback)
    callback.close()
    with pytest.raises(gym_prefs.StoreError, match="PreferenceCallback\\('human'"):
        Viewer(tmp_path / "p.db")


def test_the_window_class_is_set_before_the_display_starts(store_path, monkeypatch):
    monkeypatch.delenv("SDL_VIDEO_X11_WMCLASS", raising=False)
    seen = []
    start_display = pygame.display.init
    monkeypatch.setattr(
        pygame.display, "init", lambda: (seen.append(os.environ.get("SDL_VIDEO_X11_WMCLASS")), start_display())[1]
    )
    viewer = Viewer(store_path)
    try:
        assert seen == ["gym-prefs"]  # SDL reads it when its video system starts
        assert pygame.display.get_caption()[0].startswith("gym-prefs label")
    finally:
        viewer.close()
    # pygame, imported with a display, names the class after the program's file: replaced.
    monkeypatch.setenv("SDL_VIDEO_X11_WMCLASS", os.path.basename(sys.argv[0]))
    seen.clear()
    Viewer(store_path).close()
    assert seen == ["gym-prefs"]
    monkeypatch.setenv("SDL_VIDEO_X11_WMCLASS", "my-labelling")  # a class the user chose wins
    seen.clear()
    Viewer(store_path).close()
    assert seen == ["my-labelling"]


def record_what_was_on_screen(viewer):
    """Wrap the viewer: when each pair was first drawn, and when each answer was handled."""
    first_drawn, answered_at = {}, {}
    draw, answer = viewer.draw, viewer.answer

    def drawing():
        draw()
        if viewer.current is not None:
            first_drawn.setdefault(viewer.current.query_id, time.perf_counter())

    def answering(label):
        shown, before, now = viewer.current, viewer.answers_given, time.perf_counter()
        answer(label)
        if viewer.answers_given > before:
            answered_at[shown.query_id] = now

    viewer.draw, viewer.answer = drawing, answering
    return first_drawn, answered_at


def wait_for_next_pair_ready(viewer, timeout=30.0):
    """Until the pair after the one on screen has been rendered (it could be answered at once)."""
    wait_for_pair(viewer, timeout)
    start = time.time()
    while viewer._ready.empty():
        viewer.step()
        assert time.time() - start < timeout, "the next pair was not rendered"


def test_two_keys_in_one_frame_answer_only_the_pair_on_screen(store_path):
    viewer = Viewer(store_path)
    first_drawn, answered_at = record_what_was_on_screen(viewer)
    for keys in ([pygame.K_LEFT, pygame.K_RIGHT], [pygame.K_UP, pygame.K_LEFT, pygame.K_DOWN]):
        wait_for_next_pair_ready(viewer)
        before = viewer.answers_given
        for key in keys:
            pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=key))
        viewer.step()
        assert viewer.answers_given == before + 1  # the other keys were for a pair nobody saw
        for _ in range(3):
            viewer.step()
        assert viewer.answers_given == before + 1  # ignored, not kept for later
    # Other keys still work in the frame of an answer.
    wait_for_next_pair_ready(viewer)
    for key in (pygame.K_RIGHT, pygame.K_LEFT, pygame.K_SPACE):
        pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=key))
    viewer.step()
    assert viewer.answers_given == 3 and viewer.paused
    viewer.close()
    with PreferenceStore(store_path, readonly=True) as store:
        answers = store.answers()
    assert [a.label for a in answers] == ["first", "equal", "second"]
    for a in answers:
        # Drawn before it was answered, and timed from when it first appeared on screen.
        assert first_drawn[a.query_id] < answered_at[a.query_id]
        assert a.seconds >= answered_at[a.query_id] - first_drawn[a.query_id]


def test_exit_with_is_checked_every_half_second(store_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    viewer = None
    try:
        viewer = Viewer(store_path, exit_with=sleeper.pid)
        wait_for_pair(viewer)
        start = time.monotonic()
        while time.monotonic() - start < 1.0:
            viewer.step()
        assert viewer.open
        sleeper.kill()  # a zombie until reaped: dead all the same
        killed = time.monotonic()
        while viewer.open:
            viewer.step()
            assert time.monotonic() - killed < 2.0, "the viewer did not notice that the process died"
        assert time.monotonic() - killed <= 0.5 + 0.2  # the next check, give or take a frame
    finally:
        if viewer is not None:
            viewer.close()
        sleeper.kill()
        sleeper.wait()


ANSWERING_VIEWER = """
import os
import sys
import pygame
from gym_prefs.viewer import Viewer
viewer = Viewer(sys.argv[1])
keys = [pygame.K_LEFT, pygame.K_RIGHT, pygame.K_UP, pygame.K_DOWN]
frame = 0
while True:
    shown = viewer.current
    before = viewer.answers_given
    # A key every frame, as fast as anyone could: only pairs on screen are answered.
    pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=keys[frame % 4]))
    frame += 1
    viewer.step()
    if viewer.answers_given > before:  # answer() returned: committed to the store
        # One write() of a short line is atomic on a pipe, so a kill never leaves half a line
        # (print() writes its pieces separately when Python runs unbuffered).
        os.write(1, f"ACK {shown.query_id}\\n".encode())
"""


def test_killing_the_window_loses_no_answer_and_counts_none_twice(tmp_path):
    path = tmp_path / "p.db"
    train_with_a_person_who_never_answers(path, labels=30, render_mode="rgb_array")
    with PreferenceStore(path, readonly=True) as store:
        queries = store.counts()["queries"]
    assert queries == 30
    rng = np.random.default_rng(0)
    acked: list[int] = []
    rounds = 0
    while True:
        with PreferenceStore(path, readonly=True) as store:
            answered_before = len(store.answers())
        if answered_before == queries:
            break
        rounds += 1
        assert rounds <= 20, f"only {answered_before} of {queries} answered after 20 rounds"
        viewer = subprocess.Popen(
            [sys.executable, "-c", ANSWERING_VIEWER, str(path)], stdout=subprocess.PIPE, text=True
        )
        lines: list[str] = []
        reader = threading.Thread(target=lines.extend, args=(viewer.stdout,), daemon=True)
        reader.start()
        try:
            wait_until(lines.__len__, 60, "the viewer answered nothing")
            time.sleep(rng.uniform(0.0, 0.3))
        finally:
            viewer.kill()
            viewer.wait()
            reader.join(timeout=10)
        this_round = [int(m.group(1)) for m in map(re.compile(r"ACK (\d+)\n").fullmatch, lines) if m]
        assert len(this_round) == len(lines)  # every line whole
        acked += this_round
        with PreferenceStore(path, readonly=True) as store:
            answers = store.answers()
            counts = store.counts()
        ids = [a.query_id for a in answers]
        assert len(ids) == len(set(ids)), "a query was answered twice"
        assert len(acked) == len(set(acked)), "a query was shown again after its answer"
        assert set(acked) <= set(ids), "an acknowledged answer was lost"
        # At most the one answer committed when the kill came, before its ACK was printed.
        assert len(this_round) <= len(ids) - answered_before <= len(this_round) + 1
        assert counts["answered"] + counts["skipped"] == len(ids)
        assert counts["pending"] == queries - len(ids)
    assert rounds >= 3
    print(f"{rounds} rounds, {len(acked)} answers acknowledged of {queries}")


def test_a_frame_makes_no_sql_query_and_an_answer_is_counted_at_once(store_path):
    viewer = Viewer(store_path, exit_when_done=True)
    wait_for_pair(viewer)
    statements = []
    viewer.store._connection.set_trace_callback(statements.append)
    start = time.monotonic()
    for _ in range(30):
        viewer.step()
    elapsed = time.monotonic() - start
    # Two queries (the queries waiting, the labels) at most every COUNTS_REFRESH seconds, not in every frame.
    assert len(statements) <= 2 * (elapsed / COUNTS_REFRESH + 1), statements
    assert (viewer.progress.labels, viewer.progress.pending) == (0, 12)
    press(viewer, pygame.K_LEFT)
    assert (viewer.progress.labels, viewer.progress.pending) == (1, 11)  # shown in the very next frame
    viewer.store._connection.set_trace_callback(None)
    viewer.close()


def test_the_window_keeps_only_the_latest_timings(store_path, monkeypatch):
    monkeypatch.setattr(viewer_module, "RECENT", 2)
    viewer = Viewer(store_path)
    for key in (pygame.K_LEFT, pygame.K_RIGHT, pygame.K_UP):
        press(viewer, key)
    wait_for_pair(viewer)
    viewer.step()
    # Three answers, each followed by a new pair on screen, and many frames: the latest 2 of each kept.
    assert viewer.answers_given == 3 and viewer.frames_drawn > 3
    assert len(viewer.latencies) == 2 and len(viewer.frame_times) == 2
    assert all(0 <= latency < 30 for latency in viewer.latencies)
    viewer.close()


def held_ids(viewer):
    """The query ids a window holds: on screen and rendered ahead."""
    return {viewer.current.query_id} | {pair.query_id for pair in list(viewer._ready.queue)}


def test_two_windows_on_one_store_never_show_the_same_pair_and_give_their_pairs_back(store_path):
    first = Viewer(store_path, labeler="ann")
    wait_for_pair(first)
    wait_until(lambda: first._ready.full(), 30, "the first window rendered no pairs ahead")
    second = Viewer(store_path, labeler="bob")
    wait_for_pair(second)
    wait_until(lambda: second._ready.full(), 30, "the second window rendered no pairs ahead")
    held_first, held_second = held_ids(first), held_ids(second)
    assert len(held_first) == len(held_second) == 1 + viewer_module.PREFETCH
    assert not held_first & held_second
    answered = press(second, pygame.K_LEFT)
    assert answered in held_second
    first.close()
    with PreferenceStore(store_path, readonly=True) as store:
        assert [(a.query_id, a.labeler) for a in store.answers()] == [(answered, "bob")]
        leases = store.connection.execute("SELECT query_id FROM leases").fetchall()
    # The closed window gave its pairs back; the open one holds its own (and one it may be rendering).
    leased = {query_id for (query_id,) in leases}
    assert held_ids(second) <= leased and not leased & held_first and len(leased) <= 2 + viewer_module.PREFETCH
    second.close()
