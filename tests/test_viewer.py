"""A person's side: the labelling window, driven by scripted keys and by a real X server."""

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3 import PPO

import gym_prefs
from gym_prefs import LearnedReward, PreferenceCallback, PreferenceStore, PygameLabeler
from gym_prefs.processes import process_alive
from gym_prefs.viewer import Viewer

pygame = pytest.importorskip("pygame", reason="the labelling window needs pygame: pip install 'gym-prefs[human]'")


def train_with_a_person_who_never_answers(path, env_id="CartPole-v1", steps=1024, labels=12, **make_kwargs):
    env = LearnedReward(gym.make(env_id, **make_kwargs))
    labeler = PygameLabeler("balance the pole", open_window=False)
    callback = PreferenceCallback(
        labeler, total_labels=labels, segment_length=10, initial_label_fraction=0.0, refit_interval=128,
        store=str(path), seed=0,
    )
    model = PPO("MlpPolicy", env, n_steps=128, seed=0, policy_kwargs={"net_arch": [16]})
    model.learn(steps, callback=callback)
    callback.close()
    return model, callback, labeler


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "p.db"
    train_with_a_person_who_never_answers(path, render_mode="rgb_array")
    return path


def test_training_goes_on_while_queries_wait(tmp_path):
    model, callback, _ = train_with_a_person_who_never_answers(tmp_path / "p.db", render_mode="rgb_array")
    assert model.num_timesteps >= 1024  # RL never waited for the person
    assert callback.num_queries == 12 and callback.num_labels == 0
    with PreferenceStore(tmp_path / "p.db", readonly=True) as store:
        assert store.counts()["pending"] == 12
        assert store.get_meta("instruction") == "balance the pole"
        clips = store.clips(store.pending_ids()[0])
        assert clips is not None and clips[0].shape[0] == 10 and clips[0].shape[-1] == 3  # RGB frames


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


def test_an_env_that_cannot_render_is_refused_at_the_start(tmp_path):
    env = LearnedReward(gym.make("CartPole-v1"))  # no render_mode
    model = PPO("MlpPolicy", env, n_steps=128, policy_kwargs={"net_arch": [16]})
    callback = PreferenceCallback("human", total_labels=10, store=str(tmp_path / "p.db"))
    with pytest.raises(ValueError, match=r"render_mode='rgb_array'"):
        model.learn(256, callback=callback)
    assert model.num_timesteps == 0


def test_a_store_without_clips_says_how_to_get_them(tmp_path):
    env = LearnedReward(gym.make("CartPole-v1"))
    callback = PreferenceCallback("oracle", total_labels=4, segment_length=5, store=str(tmp_path / "p.db"))
    PPO("MlpPolicy", env, n_steps=128, policy_kwargs={"net_arch": [16]}).learn(256, callback=callback)
    callback.close()
    with pytest.raises(gym_prefs.StoreError, match="PreferenceCallback\\('human'"):
        Viewer(tmp_path / "p.db")


def test_closing_the_window_stops_the_wait_or_pauses_as_chosen(store_path):
    store = PreferenceStore(store_path)
    for on_close, still_pending in (("continue", 0), ("pause", 12)):
        labeler = PygameLabeler(on_close=on_close, open_window=False)
        labeler.attach(store, 12)
        labeler.request(store.pending_queries())
        labeler._viewer = subprocess.Popen([sys.executable, "-c", "pass"])  # a window the person closed
        labeler._viewer.wait()
        assert labeler.window_closed
        assert labeler.pending == still_pending
        labeler.close()
    with pytest.raises(ValueError, match="on_close"):
        PygameLabeler(on_close="explode")


@pytest.mark.skipif(not (shutil.which("Xvfb") and shutil.which("xdotool")), reason="needs Xvfb and xdotool "
                    "(apt-get install xvfb xdotool); .ci/run installs them")
def test_a_person_labels_in_a_real_window(store_path, tmp_path):
    display = f":{80 + os.getpid() % 100}"
    xvfb = subprocess.Popen(["Xvfb", display, "-screen", "0", "1024x768x24"], stderr=subprocess.DEVNULL)
    env = {k: v for k, v in os.environ.items() if k != "SDL_VIDEODRIVER"} | {"DISPLAY": display}
    viewer = None
    try:
        time.sleep(1.0)
        viewer = subprocess.Popen(
            [sys.executable, "-m", "gym_prefs.cli", "label", str(store_path), "--exit-when-done"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        window = None
        deadline = time.time() + 60
        while window is None and time.time() < deadline:
            assert viewer.poll() is None, viewer.communicate()[1][-2000:]
            search = ["xdotool", "search", "--onlyvisible", "--pid", str(viewer.pid)]
            found = subprocess.run(search, env=env, capture_output=True, text=True)
            window = found.stdout.split()[0] if found.stdout.split() else None
            time.sleep(0.2)
        assert window is not None, "the window did not appear"
        subprocess.run(["xdotool", "windowfocus", "--sync", window], env=env, timeout=10)
        keys = ["Left", "Right", "Up", "Down"] * 3
        for key in keys:
            with PreferenceStore(store_path, readonly=True) as store:
                before = len(store.answers())
            time.sleep(0.4)  # a person looks at the clips
            subprocess.run(["xdotool", "key", key], env=env, timeout=10)
            deadline = time.time() + 20
            while time.time() < deadline:
                with PreferenceStore(store_path, readonly=True) as store:
                    if len(store.answers()) > before:
                        break
                time.sleep(0.1)
        out, err = viewer.communicate(timeout=60)  # closes by itself once nothing is pending
        assert viewer.returncode == 0, err[-2000:]
        with PreferenceStore(store_path, readonly=True) as store:
            labels = [a.label for a in store.answers()]
        assert labels == ["first", "second", "equal", "skip"] * 3
        assert "12 answers stored" in out
    finally:
        if viewer is not None and viewer.poll() is None:
            viewer.kill()
        xvfb.terminate()


def test_without_pygame_the_labeler_says_how_to_install_it(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pygame" else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install 'gym-prefs\[human\]'"):
        PygameLabeler()


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


def test_a_window_that_ended_is_never_reopened(store_path, capsys):
    store = PreferenceStore(store_path)
    ends = {
        "pass": None,  # the person closed it: exit code 0, nothing to report
        "raise SystemExit(3)": "exit code 3",
        "import os, signal; os.kill(os.getpid(), signal.SIGKILL)": "killed by SIGKILL",
    }
    for code, reported in ends.items():
        for on_close, still_pending in (("continue", 0), ("pause", 12)):
            labeler = PygameLabeler(on_close=on_close)
            labeler.attach(store, 12)
            ended = subprocess.Popen([sys.executable, "-c", code])
            ended.wait()
            labeler._viewer = ended  # the window it opened has ended, unnoticed so far
            labeler.request(store.pending_queries()[:6])
            labeler.request(store.pending_queries()[6:])
            assert labeler._viewer is ended, "a window that ended was opened again"
            if on_close == "continue":  # "pause" waits in poll() for answers from a new window
                assert labeler.poll() == [] and labeler._viewer is ended
            assert labeler.window_closed and labeler.pending == still_pending
            assert labeler.window_closed and labeler.pending == still_pending
            err = capsys.readouterr().err
            if reported is None:
                assert "labelling window" not in err
            else:
                assert err.count("the labelling window ended unexpectedly") == 1, err  # once
                assert reported in err and f"gym-prefs label {store_path}" in err
            labeler.close()
    store.close()


def wait_until(condition, timeout, message):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.05)


def has_open(pid, path):
    """Whether process ``pid`` has the file ``path`` open (always true where /proc is missing)."""
    if not os.path.isdir(f"/proc/{pid}/fd"):
        return not os.path.isdir("/proc")
    try:
        return any(os.path.realpath(link.path) == os.path.realpath(path) for link in os.scandir(f"/proc/{pid}/fd"))
    except OSError:
        return False


def test_close_ends_the_window_and_attach_opens_a_new_one(store_path, capsys):
    store = PreferenceStore(store_path)
    labeler = PygameLabeler()
    labeler.attach(store, 12)
    labeler.request(store.pending_queries())
    first = labeler._viewer
    assert first is not None and first.poll() is None
    wait_until(lambda: has_open(first.pid, store_path), 60, "the window never opened the store")
    labeler.close()  # learn() ended: the window closes its store too, while this process has it open
    assert first.poll() is not None and not process_alive(first.pid)
    assert labeler.poll() == []  # nothing to read from until attached again
    labeler.attach(store, 12)  # the next learn()
    assert labeler._viewer is None
    assert labeler.poll() == []  # the queries still waiting open a new window
    second = labeler._viewer
    assert second is not None and second.poll() is None and second.pid != first.pid
    assert not labeler.window_closed and labeler.pending == 12
    second.kill()
    second.wait()
    labeler.request(store.pending_queries())
    assert labeler._viewer is second and labeler.window_closed and labeler.pending == 0
    assert "killed by SIGKILL" in capsys.readouterr().err
    labeler.close()
    store.close()


TRAINING_SCRIPT = """
import sys, time
from gym_prefs import PreferenceStore, PygameLabeler
store = PreferenceStore(sys.argv[1])
labeler = PygameLabeler("balance the pole")
labeler.attach(store, 12)
labeler.request(store.pending_queries())
print(labeler._viewer.pid, flush=True)
time.sleep(4)  # training, while the window shows pairs
if sys.argv[2] == "raise":
    raise RuntimeError("training failed")
if sys.argv[2] == "kill":
    import os, signal
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("how", ["return", "raise"])
def test_the_window_ends_with_the_training_process(store_path, how):
    training = subprocess.Popen(
        [sys.executable, "-c", TRAINING_SCRIPT, str(store_path), how], stdout=subprocess.PIPE, text=True
    )
    viewer_pid = int(training.stdout.readline())
    assert process_alive(viewer_pid)
    training.wait(timeout=60)  # not communicate(): the window shares its stdout, and may outlive it
    assert training.returncode == (0 if how == "return" else 1)
    # Ended by the training process on its way out, not 0.5 s later by the viewer's own check.
    assert not process_alive(viewer_pid)


def test_the_window_closes_when_the_training_process_is_killed(store_path):
    training = subprocess.Popen(
        [sys.executable, "-c", TRAINING_SCRIPT, str(store_path), "kill"], stdout=subprocess.PIPE, text=True
    )
    viewer_pid = int(training.stdout.readline())
    training.wait(timeout=60)  # not communicate(): the window shares its stdout
    assert training.returncode == -signal.SIGKILL
    killed = time.monotonic()
    wait_until(lambda: not process_alive(viewer_pid), 10, "the window outlived the killed training")
    print(f"window closed {time.monotonic() - killed:.2f} s after the training process was killed")


def test_exit_with_closes_the_window_when_that_process_dies(store_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    viewer = subprocess.Popen(
        [sys.executable, "-m", "gym_prefs.cli", "label", str(store_path), "--exit-with", str(sleeper.pid)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        time.sleep(5)  # started up
        assert viewer.poll() is None, viewer.communicate()[1][-2000:]
        sleeper.kill()
        sleeper.wait()
        killed = time.monotonic()
        out, err = viewer.communicate(timeout=10)
        print(f"window closed {time.monotonic() - killed:.2f} s after process {sleeper.pid} was killed")
        assert viewer.returncode == 0, err[-2000:]
        assert f"process {sleeper.pid} (--exit-with) has ended, so the window closes" in err
        assert "0 answers stored" in out
    finally:
        for process in (sleeper, viewer):
            if process.poll() is None:
                process.kill()
                process.wait()


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
