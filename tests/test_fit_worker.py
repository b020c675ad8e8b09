import io
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from gymnasium import spaces

from gym_prefs import Comparisons, PreferenceCallback, RewardEnsemble, RewardTrainer, SegmentPairs
from gym_prefs.fit_messages import Failed, Fit, Load, Loaded, NewLabels, receive, send
from gym_prefs.fit_program import serve
from gym_prefs.fit_worker import FitWorker, FitWorkerError

OBS = spaces.Box(-1, 1, (3,))
ACT = spaces.Box(-1, 1, (1,))


def labels(n: int, seed: int = 0) -> Comparisons:
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-1, 1, (n, 2, 5, 3)).astype(np.float32)
    data = Comparisons(OBS, ACT, 5)
    first_better = obs[:, 0, :, 0].sum(1) > obs[:, 1, :, 0].sum(1)
    data.add(SegmentPairs(obs, np.zeros((n, 2, 5, 1), np.float32)), first_better.astype(np.float32))
    return data


def test_worker_fits_exactly_what_the_same_trainer_fits_in_place():
    model = RewardEnsemble(OBS, ACT, seed=0)
    local = RewardTrainer(model.clone(), seed=0)
    data = labels(60)
    local.fit(data, 3)  # a first fit here, then the worker continues from this trainer
    worker = FitWorker()
    try:
        worker.load(local, segment_length=5, max_comparisons=None, data=data)
        more = labels(90)
        more_data = Comparisons(OBS, ACT, 5)
        more_data.add(SegmentPairs(data.obs, data.actions), data.mu)
        more_data.add(SegmentPairs(more.obs[60:], more.actions[60:]), more.mu[60:])
        worker.start(more_data, 4)
        state, report = worker.result()
    finally:
        worker.close()
    expected = local.fit(more_data, 4)
    assert report == expected
    for name, tensor in local.model.state_dict().items():
        np.testing.assert_array_equal(state[name].numpy(), tensor.numpy(), err_msg=name)


def test_each_label_is_sent_once_as_typed_new_labels():
    worker = FitWorker()
    sent = []
    put = worker._outbox.put
    worker._outbox.put = lambda message: (sent.append(message), put(message))[1]
    try:
        data = labels(30)
        worker.load(RewardTrainer(RewardEnsemble(OBS, ACT, seed=0), seed=0), 5, None, data=data)
        more = labels(40)
        data.add(SegmentPairs(more.obs[30:], more.actions[30:]), more.mu[30:])
        worker.start(data, 1)
        assert worker.result()[1].pairs == 40
    finally:
        worker.close()
    load, fit = sent[:2]
    assert isinstance(load, Load) and isinstance(load.labels, NewLabels)
    assert isinstance(fit, Fit) and isinstance(fit.labels, NewLabels)
    np.testing.assert_array_equal(load.labels.ids, np.arange(30))
    np.testing.assert_array_equal(fit.labels.ids, np.arange(30, 40))
    np.testing.assert_array_equal(fit.labels.obs, more.obs[30:])
    np.testing.assert_array_equal(fit.labels.mu, more.mu[30:])


def test_the_worker_program_answers_each_request_in_order():
    trainer = RewardTrainer(RewardEnsemble(OBS, ACT, seed=0), seed=0)
    data = labels(20)
    inbox = io.BytesIO()
    send(inbox, Load.of(trainer, segment_length=5, max_comparisons=None, labels=NewLabels.since(data, 0)))
    send(inbox, Fit(NewLabels.since(data, 20), 2))  # nothing new: fits on the labels it has
    send(inbox, "nonsense")
    inbox.seek(0)
    outbox = io.BytesIO()
    serve(inbox, outbox, threading.Lock())  # returns when the requests end
    outbox.seek(0)
    loaded, fitted, failed = (receive(outbox) for _ in range(3))
    assert loaded == Loaded()
    state, report = fitted.result()
    assert report == trainer.fit(data, 2)
    for name, tensor in trainer.model.state_dict().items():
        np.testing.assert_array_equal(state[name].numpy(), tensor.numpy(), err_msg=name)
    assert isinstance(failed, Failed) and "TypeError: unknown message str" in failed.traceback


def test_a_worker_that_dies_gives_a_clear_error():
    worker = FitWorker()
    worker.load(RewardTrainer(RewardEnsemble(OBS, ACT)), segment_length=5, max_comparisons=None)
    worker._process.kill()
    worker._process.wait()
    with pytest.raises(RuntimeError, match=r"fitting process exited unexpectedly.*fitting='thread'"):
        worker.start(labels(10), 1)
        worker.result()
    worker.close()


def within(seconds, call):
    """Run ``call`` in a thread; fail (rather than hang) if it takes longer than ``seconds``."""
    outcome = {}

    def run():
        try:
            outcome["value"] = call()
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still waiting after {seconds} s"
    return outcome


def long_fit(worker):
    """Load a worker and start a fit that runs for minutes (many epochs on 300 labels)."""
    worker.load(RewardTrainer(RewardEnsemble(OBS, ACT, seed=0), seed=0), segment_length=5, max_comparisons=None)
    worker.start(labels(300), 10_000)
    time.sleep(4)  # the worker imports torch and starts fitting


def gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_worker_killed_during_a_fit_raises_within_a_second_and_names_the_signal():
    worker = FitWorker()
    try:
        long_fit(worker)
        assert worker.alive
        os.kill(worker.pid, signal.SIGKILL)
        killed = time.monotonic()
        outcome = within(30, worker.result)
        waited = time.monotonic() - killed
        error = outcome.get("error")
        assert isinstance(error, FitWorkerError), outcome
        assert isinstance(error, RuntimeError)  # callers catching RuntimeError still do
        message = str(error)
        assert "killed by SIGKILL (signal 9)" in message
        assert "out-of-memory killer" in message
        assert "fitting='thread'" in message
        assert "error output is above" not in message
        assert waited < 3, waited
        assert not worker.alive
        with pytest.raises(FitWorkerError, match="SIGKILL"):
            worker.start(labels(10), 1)  # a dead worker refuses new work at once
    finally:
        within(5, worker.close)


def test_a_stopped_worker_is_killed_after_the_stall_timeout():
    worker = FitWorker(stall_timeout=3)
    pid = worker.pid
    try:
        long_fit(worker)  # heartbeats go on while it fits: this is no stall
        os.kill(pid, signal.SIGSTOP)
        stopped = time.monotonic()
        outcome = within(30, worker.result)
        waited = time.monotonic() - stopped
        error = outcome.get("error")
        assert isinstance(error, FitWorkerError), outcome
        assert "stopped answering for 3 s (stalled" in str(error)
        assert "it was killed" in str(error)
        assert 3 <= waited < 6, waited
        assert not worker.alive
        assert gone(pid)  # killed and reaped
    finally:
        if not gone(pid):
            os.kill(pid, signal.SIGKILL)
        within(5, worker.close)


def test_a_slow_fit_is_not_a_stall():
    worker = FitWorker(stall_timeout=2)  # shorter than the worker's start-up and the fit below
    try:
        worker.load(RewardTrainer(RewardEnsemble(OBS, ACT, seed=0), seed=0), segment_length=5, max_comparisons=None)
        worker.start(labels(300), 25)
        started = time.monotonic()
        outcome = within(120, worker.result)
        assert "error" not in outcome, outcome.get("error")
        assert time.monotonic() - started > 2  # it did wait longer than stall_timeout
        assert outcome["value"][1].pairs == 300
    finally:
        worker.close()


class _BreaksUnpickling:
    """Unpickles as int("not a number"): the worker dies of a ValueError outside any fit."""

    def __reduce__(self):
        return (int, ("not a number",))


def test_a_worker_that_dies_of_a_python_error_quotes_its_error_output(capfd):
    worker = FitWorker()
    try:
        worker.load(RewardTrainer(RewardEnsemble(OBS, ACT)), segment_length=5, max_comparisons=None)
        worker._outbox.put(_BreaksUnpickling())
        worker.start(labels(10), 1)
        outcome = within(60, worker.result)
        error = outcome.get("error")
        assert isinstance(error, FitWorkerError), outcome
        message = str(error)
        assert "exited unexpectedly with exit code 1" in message
        assert "Its last error output:" in message
        assert "Traceback (most recent call last)" in message
        assert "ValueError: invalid literal for int() with base 10: 'not a number'" in message
        assert "fitting='thread'" in message
    finally:
        within(5, worker.close)
    # Every line is still passed on to this process's error output as it comes.
    assert "invalid literal for int()" in capfd.readouterr().err


def test_close_on_a_dead_worker_returns_at_once_and_twice():
    worker = FitWorker()
    worker.load(RewardTrainer(RewardEnsemble(OBS, ACT)), segment_length=5, max_comparisons=None)
    os.kill(worker.pid, signal.SIGKILL)
    worker._process.wait()
    started = time.monotonic()
    assert "error" not in within(5, worker.close)
    assert "error" not in within(5, worker.close)
    assert time.monotonic() - started < 2
    assert not worker.alive


def test_close_kills_a_stopped_worker_without_waiting_out_its_timeout():
    worker = FitWorker()
    pid = worker.pid
    try:
        worker.load(RewardTrainer(RewardEnsemble(OBS, ACT)), segment_length=5, max_comparisons=None)
        time.sleep(1)
        os.kill(pid, signal.SIGSTOP)
        started = time.monotonic()
        assert "error" not in within(8, worker.close)  # it would wait 10 s for an exit that never comes
        assert time.monotonic() - started < 6
        assert gone(pid)
    finally:
        if not gone(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_tiny_stall_timeout_is_refused():
    with pytest.raises(ValueError, match="stall_timeout must be at least 2 s"):
        FitWorker(stall_timeout=0.5)


def test_a_failing_fit_reports_the_worker_traceback():
    worker = FitWorker()
    try:
        worker.load(RewardTrainer(RewardEnsemble(OBS, ACT)), segment_length=5, max_comparisons=None)
        worker.start(Comparisons(OBS, ACT, 5), 1)  # no labels at all
        with pytest.raises(RuntimeError, match="no labelled pairs"):
            worker.result()
    finally:
        worker.close()


def test_unknown_fitting_mode_is_refused():
    with pytest.raises(ValueError, match="fitting must be one of"):
        PreferenceCallback(fitting="gpu-cluster")


def test_a_plain_script_without_main_guard_trains(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(
            """
            import gymnasium as gym
            from stable_baselines3 import PPO
            import gym_prefs

            env = gym_prefs.LearnedReward(gym.make("Pendulum-v1"))
            callback = gym_prefs.PreferenceCallback("oracle", total_labels=20, segment_length=10, seed=0)
            PPO("MlpPolicy", env, n_steps=256, seed=0).learn(1024, callback=callback)
            print("RESULT labels", callback.num_labels, "fits", callback.num_fits)
            """
        )
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "RESULT labels 20" in done.stdout
    assert done.stdout.count("RESULT") == 1  # the script ran once: nothing re-imported it
