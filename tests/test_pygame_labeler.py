"""A person's source: the PygameLabeler, and its window's life alongside a training run."""

import os
import signal
import subprocess
import sys
import time

import gymnasium as gym
import pytest
from stable_baselines3 import PPO
from viewer_helpers import train_with_a_person_who_never_answers, wait_until

from gym_prefs import LearnedReward, PreferenceCallback, PreferenceStore, PygameLabeler
from gym_prefs.processes import process_alive

pytest.importorskip("pygame", reason="the labelling window needs pygame: pip install 'gym-prefs[human]'")


def test_training_goes_on_while_queries_wait(tmp_path):
    model, callback, _ = train_with_a_person_who_never_answers(tmp_path / "p.db", render_mode="rgb_array")
    assert model.num_timesteps >= 1024  # RL never waited for the person
    assert callback.num_queries == 12 and callback.num_labels == 0
    with PreferenceStore(tmp_path / "p.db", readonly=True) as store:
        assert store.counts()["pending"] == 12
        assert store.get_meta("instruction") == "balance the pole"
        clips = store.clips(store.pending_ids()[0])
        assert clips is not None and clips[0].shape[0] == 10 and clips[0].shape[-1] == 3  # RGB frames


def test_an_env_that_cannot_render_is_refused_at_the_start(tmp_path):
    env = LearnedReward(gym.make("CartPole-v1"))  # no render_mode
    model = PPO("MlpPolicy", env, n_steps=128, policy_kwargs={"net_arch": [16]})
    callback = PreferenceCallback("human", total_labels=10, store=str(tmp_path / "p.db"))
    with pytest.raises(ValueError, match=r"render_mode='rgb_array'"):
        model.learn(256, callback=callback)
    assert model.num_timesteps == 0


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


def test_without_pygame_the_labeler_says_how_to_install_it(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pygame" else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install 'gym-prefs\[human\]'"):
        PygameLabeler()


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


def test_the_labeler_opens_the_viewer_program(tmp_path, monkeypatch):
    from gymnasium import spaces

    import gym_prefs.sources.program_source as program_source

    started = []

    class NoWindow:
        def __init__(self, argv):
            started.append(argv)

        def poll(self):
            return None

    monkeypatch.setattr(program_source.subprocess, "Popen", NoWindow)
    monkeypatch.setattr(program_source, "end_process", lambda process: None)
    store = PreferenceStore(tmp_path / "p.db", spaces.Box(-1, 1, (2,)), spaces.Discrete(2), segment_length=5)
    labeler = PygameLabeler("balance the pole", labeler="ann", render_size=120)
    labeler.attach(store, 10)
    labeler.request([])
    assert started == [
        [
            sys.executable,
            "-m",
            "gym_prefs.viewer",
            str(store.path),
            "--instruction",
            "balance the pole",
            "--labeler",
            "ann",
            "--render-size",
            "120",
            "--exit-with",
            str(os.getpid()),
        ]
    ]
    labeler.close()
    store.close()
