"""A person's side: the labelling window, driven by scripted keys and by a real X server."""

import os
import shutil
import subprocess
import sys
import time

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3 import PPO

import gym_prefs
from gym_prefs import LearnedReward, PreferenceCallback, PreferenceStore, PygameLabeler
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
