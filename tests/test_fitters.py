import copy
import gc
import os
import signal
import time
from typing import ClassVar

import numpy as np
import pytest
import torch
from gymnasium import spaces

from gym_prefs import Comparisons, RewardEnsemble, RewardTrainer, SegmentPairs, process_fitter
from gym_prefs.fit_worker import FitWorker, FitWorkerError
from gym_prefs.fitters import (
    FITTING_MODES,
    MAX_FIT_WORKER_RESTARTS,
    InlineFitter,
    ProcessFitter,
    ThreadFitter,
    make_fitter,
)
from gym_prefs.timings import Timings

OBS = spaces.Box(-1, 1, (3,))
ACT = spaces.Box(-1, 1, (1,))
LENGTH = 5
TRAINER_KWARGS = {"lr": 1e-3, "batch_size": 16, "seed": 0}


_RNG = np.random.default_rng(0)
OBS_ROWS = _RNG.uniform(-1, 1, (100, 2, LENGTH, 3)).astype(np.float32)
ACTION_ROWS = np.zeros((100, 2, LENGTH, 1), np.float32)
MU_ROWS = (OBS_ROWS[:, 0, :, 0].sum(1) > OBS_ROWS[:, 1, :, 0].sum(1)).astype(np.float32)


def add(data: Comparisons, start: int, stop: int) -> None:
    """Add rows ``start:stop`` of one fixed set of labels."""
    data.add(SegmentPairs(OBS_ROWS[start:stop], ACTION_ROWS[start:stop]), MU_ROWS[start:stop])


def new_data() -> Comparisons:
    return Comparisons(OBS, ACT, LENGTH)


def model() -> RewardEnsemble:
    return RewardEnsemble(OBS, ACT, seed=0)


def two_fits(mode: str) -> tuple[list, dict[str, float]]:
    """Two fits in a row (the process fitter hands over to its worker before the second)."""
    given = model()
    before = copy.deepcopy(given.state_dict())
    timings = Timings()
    fitter = make_fitter(mode, given, TRAINER_KWARGS, LENGTH, None, timings=timings)
    data = new_data()
    results = []
    try:
        add(data, 0, 40)
        assert not fitter.busy
        fitter.start(data, 3)
        assert fitter.busy
        results.append(fitter.finish())
        assert not fitter.busy
        snapshot = copy.deepcopy(results[0].state)
        add(data, 40, 70)
        fitter.start(data, 2)
        add(data, 70, 80)  # added after start: this fit does not see them
        results.append(fitter.finish())
        assert fitter.seconds > 0
    finally:
        fitter.close()
    # A result is a copy: the next fit left it alone, and the model given was never fitted.
    for name, tensor in snapshot.items():
        torch.testing.assert_close(results[0].state[name], tensor, rtol=0, atol=0)
    for name, tensor in given.state_dict().items():
        torch.testing.assert_close(tensor, before[name], rtol=0, atol=0)
    return results, timings.seconds


def test_the_three_fitters_give_the_same_models():
    outcomes = {mode: two_fits(mode) for mode in FITTING_MODES}
    inline, _ = outcomes["inline"]
    assert [result.report.pairs for result in inline] == [40, 70]
    for mode in ("thread", "process"):
        results, _ = outcomes[mode]
        for result, expected in zip(results, inline, strict=True):
            assert result.report == expected.report, mode
            assert result.state.keys() == expected.state.keys()
            for name, tensor in expected.state.items():
                np.testing.assert_array_equal(result.state[name].numpy(), tensor.numpy(), err_msg=f"{mode} {name}")
    _, timings = outcomes["process"]
    assert {"fitting_startup", "fitting_handover"} <= set(timings)
    assert "fitting_handover" in outcomes["inline"][1]


def test_the_process_fitter_fits_the_first_fit_here_and_the_next_in_its_worker():
    fitter = ProcessFitter(model(), TRAINER_KWARGS, LENGTH, None)
    try:
        data = new_data()
        add(data, 0, 30)
        fitter.start(data, 1)
        fitter.finish()
        worker = fitter.worker
        assert worker.seconds == 0  # it has fitted nothing and been handed nothing yet
        first = fitter.seconds
        assert first > 0
        fitter.start(data, 1)
        assert fitter.finish().report.pairs == 30
        # The worker took over the trainer's time, and added that of the fit it ran.
        assert fitter.worker is worker and fitter.restarts == 0
        assert fitter.seconds == worker.seconds > first
    finally:
        fitter.close()


@pytest.mark.parametrize("mode", FITTING_MODES)
def test_finish_without_a_fit_and_start_during_one_are_refused(mode):
    fitter = make_fitter(mode, model(), TRAINER_KWARGS, LENGTH, None)
    try:
        with pytest.raises(RuntimeError, match=r"no fit is running; call start\(\) first"):
            fitter.finish()
        data = new_data()
        add(data, 0, 10)
        fitter.start(data, 1)
        with pytest.raises(RuntimeError, match=r"a fit is already running; call finish\(\) first"):
            fitter.start(data, 1)
        fitter.finish()
        with pytest.raises(RuntimeError, match="no fit is running"):
            fitter.finish()
    finally:
        fitter.close()


@pytest.mark.parametrize("mode", FITTING_MODES)
def test_close_twice_is_harmless_and_a_closed_fitter_refuses_work(mode):
    fitter = make_fitter(mode, model(), TRAINER_KWARGS, LENGTH, None)
    worker = fitter.worker if isinstance(fitter, ProcessFitter) else None
    fitter.close()
    fitter.close()
    if worker is not None:
        assert not worker.alive
    data = new_data()
    add(data, 0, 10)
    with pytest.raises(RuntimeError, match=r"closed; make a new one with make_fitter\(\)"):
        fitter.start(data, 1)


def test_a_worker_killed_during_a_fit_is_replaced_and_the_fit_runs_again(capfd, tmp_path):
    fitter = ProcessFitter(model(), TRAINER_KWARGS, LENGTH, None, store_path=tmp_path / "p.db")
    try:
        data = new_data()
        add(data, 0, 40)
        fitter.start(data, 8)
        first = fitter.finish()
        seconds = fitter.seconds
        add(data, 40, 70)
        expected_data = copy.copy(data)
        fitter.start(data, 2)
        killed = fitter.worker.pid
        os.kill(killed, signal.SIGKILL)
        add(data, 70, 80)  # the fit started again sees the rows it was started with, no more
        result = fitter.finish()
        assert fitter.restarts == 1 and fitter.worker.pid != killed
        assert fitter.seconds >= seconds  # the time of the first fit still counts
    finally:
        fitter.close()
    err = capfd.readouterr().err
    assert "killed by SIGKILL" in err
    assert f"starting a new fitting process (1 of at most {MAX_FIT_WORKER_RESTARTS}); it refits on every label" in err
    assert result.report.pairs == 70
    # The new worker went on from the model of the last finished fit, with a fresh trainer.
    last = model()
    last.load_state_dict(first.state)
    trainer = RewardTrainer(last, **TRAINER_KWARGS)
    assert result.report == trainer.fit(expected_data, 2)
    for name, tensor in last.state_dict().items():
        np.testing.assert_array_equal(result.state[name].numpy(), tensor.numpy(), err_msg=name)


class DyingWorker(FitWorker):
    """A worker that is SIGKILLed as soon as it is given a fit."""

    killed: ClassVar[list[int]] = []

    def start(self, data, epochs, max_steps=None):
        super().start(data, epochs)
        os.kill(self.pid, signal.SIGKILL)
        self.killed.append(self.pid)


def test_a_worker_that_dies_again_and_again_is_given_up_on(monkeypatch, capfd, tmp_path):
    monkeypatch.setattr(process_fitter, "FitWorker", DyingWorker)
    monkeypatch.setattr(DyingWorker, "killed", [])
    store = tmp_path / "preferences.db"
    fitter = ProcessFitter(model(), TRAINER_KWARGS, LENGTH, None, store_path=store)
    try:
        data = new_data()
        add(data, 0, 20)
        fitter.start(data, 1)
        fitter.finish()  # in this process
        fitter.start(data, 1)
        with pytest.raises(FitWorkerError) as raised:
            fitter.finish()
        assert not fitter.busy
        assert fitter.restarts == MAX_FIT_WORKER_RESTARTS
        assert len(set(DyingWorker.killed)) == MAX_FIT_WORKER_RESTARTS + 1
        assert not fitter.worker.alive
    finally:
        fitter.close()
    message = str(raised.value)
    assert "killed by SIGKILL" in message
    assert f"replaced {MAX_FIT_WORKER_RESTARTS} times already; giving up" in message
    assert f"Every label is in {store}: start the run again on it." in message
    assert capfd.readouterr().err.count("starting a new fitting process") == MAX_FIT_WORKER_RESTARTS


def test_the_workers_stop_when_the_fitter_is_garbage_collected():
    fitter = ProcessFitter(model(), TRAINER_KWARGS, LENGTH, None)
    worker = fitter.worker
    del fitter
    gc.collect()
    assert not worker.alive


class LinearMember(torch.nn.Module):
    def __init__(self, obs_shape, act_dim):
        super().__init__()
        self.fc = torch.nn.Linear(obs_shape[0] + act_dim, 1)

    def forward(self, obs, act):
        return self.fc(torch.cat([obs, act], -1)).squeeze(-1)


def test_a_model_built_by_a_lambda_is_fitted_in_place_in_process_mode():
    custom = RewardEnsemble(OBS, ACT, member_factory=lambda shape, act_dim: LinearMember(shape, act_dim), seed=0)
    fitter = make_fitter("process", custom, TRAINER_KWARGS, LENGTH, None)
    assert isinstance(fitter, InlineFitter)
    data = new_data()
    add(data, 0, 10)
    fitter.start(data, 1)
    assert fitter.finish().report.pairs == 10
    with pytest.raises(ValueError, match=r"no import path.*fitting='thread'"):
        ProcessFitter(custom, TRAINER_KWARGS, LENGTH, None)


def test_make_fitter_gives_each_kind_and_refuses_an_unknown_mode():
    thread = make_fitter("thread", model(), TRAINER_KWARGS, LENGTH, None)
    assert isinstance(thread, ThreadFitter)
    thread.close()
    assert isinstance(make_fitter("inline", model(), TRAINER_KWARGS, LENGTH, None), InlineFitter)
    with pytest.raises(ValueError, match=r"fitting must be one of \('process', 'thread', 'inline'\), got 'gpu'"):
        make_fitter("gpu", model(), TRAINER_KWARGS, LENGTH, None)


@pytest.mark.parametrize("mode", FITTING_MODES)
def test_ready_says_when_finish_would_not_wait(mode):
    fitter = make_fitter(mode, model(), TRAINER_KWARGS, LENGTH, None)
    try:
        assert not fitter.ready  # no fit running
        data = new_data()
        add(data, 0, 30)
        fitter.start(data, 1)
        fitter.finish()  # the process fitter's first fit runs here; the next in its worker
        fitter.start(data, 400)
        if mode != "inline":  # 400 epochs take seconds: not ended at once
            assert not fitter.ready
        deadline = time.monotonic() + 120
        while not fitter.ready and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fitter.ready
        result = fitter.finish()
        assert result.report.epochs == 400 and not fitter.ready
    finally:
        fitter.close()
