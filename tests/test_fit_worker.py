import subprocess
import sys
import textwrap

import numpy as np
import pytest
from gymnasium import spaces

from gym_prefs import Comparisons, PreferenceCallback, RewardEnsemble, RewardTrainer
from gym_prefs.fit_worker import FitWorker

OBS = spaces.Box(-1, 1, (3,))
ACT = spaces.Box(-1, 1, (1,))


def labels(n: int, seed: int = 0) -> Comparisons:
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-1, 1, (n, 2, 5, 3)).astype(np.float32)
    data = Comparisons(OBS, ACT, 5)
    first_better = obs[:, 0, :, 0].sum(1) > obs[:, 1, :, 0].sum(1)
    data.add(obs, np.zeros((n, 2, 5, 1), np.float32), first_better.astype(np.float32))
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
        more_data.add(data.obs, data.actions, data.mu)
        more_data.add(more.obs[60:], more.actions[60:], more.mu[60:])
        worker.start(more_data, 4)
        state, report = worker.result()
    finally:
        worker.close()
    expected = local.fit(more_data, 4)
    assert report == expected
    for name, tensor in local.model.state_dict().items():
        np.testing.assert_array_equal(state[name].numpy(), tensor.numpy(), err_msg=name)


def test_a_worker_that_dies_gives_a_clear_error():
    worker = FitWorker()
    worker.load(RewardTrainer(RewardEnsemble(OBS, ACT)), segment_length=5, max_comparisons=None)
    worker._process.kill()
    worker._process.wait()
    with pytest.raises(RuntimeError, match=r"fitting process exited unexpectedly.*fitting='thread'"):
        worker.start(labels(10), 1)
        worker.result()
    worker.close()


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
