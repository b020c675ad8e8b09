"""Training runs on a preference store: resuming, fitting offline from it, the command line on it."""

import gymnasium as gym
import numpy as np
import pytest
from conftest import ScriptedSource
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

from gym_prefs import Answer, PreferenceCallback, PreferenceStore, StoreError, VecLearnedReward
from gym_prefs.cli import main as cli
from gym_prefs.offline import fit_from_store


def train_on_store(path, total_labels=40, steps=2048, seed=0, fitting="inline"):
    env = VecLearnedReward(make_vec_env("Pendulum-v1", n_envs=2, seed=seed))
    callback = PreferenceCallback(
        "oracle",
        total_labels=total_labels,
        segment_length=10,
        refit_interval=256,
        store=str(path),
        initial_fit_epochs=30,
        fitting=fitting,
        seed=seed,
    )
    PPO("MlpPolicy", env, n_steps=256, batch_size=64, seed=seed, policy_kwargs={"net_arch": [16]}).learn(
        steps, callback=callback
    )
    callback.close()
    return callback


def held_out_accuracy(model, seed=5):
    env = gym.make("Pendulum-v1")
    rng = np.random.default_rng(seed)
    segs_obs, segs_rew = [], []
    for _ in range(200):
        obs, _ = env.reset(seed=int(rng.integers(1 << 30)))
        o, r = [], []
        for _ in range(10):
            o.append(obs)
            obs, reward, *_ = env.step(rng.uniform(-2, 2, size=1).astype(np.float32))
            r.append(reward)
        segs_obs.append(o)
        segs_rew.append(r)
    obs, true = np.array(segs_obs), np.array(segs_rew).sum(1)
    predicted = model.predict(obs, np.zeros((*obs.shape[:2], 1), np.float32)).sum(1)
    a, b = np.arange(0, 200, 2), np.arange(1, 200, 2)
    return float(np.mean((predicted[a] > predicted[b]) == (true[a] > true[b])))


def test_offline_fit_orders_pairs_as_well_as_the_online_model(tmp_path):
    online = train_on_store(tmp_path / "p.db", total_labels=80, steps=3072)
    with PreferenceStore(tmp_path / "p.db", readonly=True) as store:
        offline, report = fit_from_store(store, epochs=100)
    assert report.pairs == 80
    online_accuracy = held_out_accuracy(online.reward_model)
    assert online_accuracy > 0.7
    assert held_out_accuracy(offline) >= online_accuracy - 0.05


def test_cli_fit_export_import_info(tmp_path, capsys):
    train_on_store(tmp_path / "p.db", total_labels=20, steps=1024)
    assert cli(["info", str(tmp_path / "p.db")]) == 0
    assert "20 labels" in capsys.readouterr().out
    assert cli(["fit", str(tmp_path / "p.db"), "--out", str(tmp_path / "r.pt"), "--epochs", "20"]) == 0
    assert (tmp_path / "r.pt").exists()
    assert cli(["export", str(tmp_path / "p.db"), str(tmp_path / "p.npz")]) == 0
    assert cli(["import", str(tmp_path / "p.npz"), str(tmp_path / "q.db")]) == 0
    assert len(PreferenceStore(tmp_path / "q.db", readonly=True)) == 20
    (tmp_path / "bad.db").write_bytes(b"junk" * 100)
    assert cli(["info", str(tmp_path / "bad.db")]) == 2
    assert "not a gym_prefs preference store" in capsys.readouterr().err


def test_default_store_goes_beside_the_logs_and_its_path_is_printed(tmp_path, capsys):
    from stable_baselines3.common.logger import configure

    env = VecLearnedReward(make_vec_env("Pendulum-v1", n_envs=2, seed=0))
    algo = PPO("MlpPolicy", env, n_steps=256, seed=0, policy_kwargs={"net_arch": [16]})
    algo.set_logger(configure(str(tmp_path / "logs"), ["csv"]))
    callback = PreferenceCallback("oracle", total_labels=10, segment_length=10, fitting="inline", seed=0)
    algo.learn(512, callback=callback)
    assert callback.store.path == tmp_path / "logs" / "preferences.db"
    assert f"labels are stored in {tmp_path / 'logs' / 'preferences.db'}" in capsys.readouterr().out
    assert (tmp_path / "logs" / "preferences.reward_model.pt").exists()
    callback.close()


def test_without_logs_the_store_goes_under_runs(tmp_path):
    callback = train_on_store_default(tmp_path)
    assert callback.store.path.parent.parent == tmp_path / "runs"
    assert callback.store.path.parent.name.startswith("Pendulum-v1-")


def train_on_store_default(tmp_path):
    env = VecLearnedReward(make_vec_env("Pendulum-v1", n_envs=2, seed=0))
    callback = PreferenceCallback("oracle", total_labels=10, segment_length=10, fitting="inline", seed=0)
    PPO("MlpPolicy", env, n_steps=256, seed=0, policy_kwargs={"net_arch": [16]}).learn(512, callback=callback)
    callback.close()
    return callback


def test_a_run_on_the_same_store_continues_without_asking_again(tmp_path):
    train_on_store(tmp_path / "p.db", total_labels=40, steps=1024)
    with PreferenceStore(tmp_path / "p.db", readonly=True) as store:
        answered = {a.query_id: a.label for a in store.answers()}
        assert store.counts()["queries"] == 40
    # A longer run on the same store: the budget is already spent, nothing is asked again,
    # and the model is refitted from the stored labels before RL goes on.
    second = train_on_store(tmp_path / "p.db", total_labels=40, steps=1024, seed=1)
    assert second.num_queries == 40 and second.num_fits >= 1
    with PreferenceStore(tmp_path / "p.db", readonly=True) as store:
        assert store.counts()["queries"] == 40
        assert {a.query_id: a.label for a in store.answers()} == answered
    # With a bigger budget it asks only the difference.
    third = train_on_store(tmp_path / "p.db", total_labels=60, steps=1024, seed=2)
    assert third.num_queries == 60
    with PreferenceStore(tmp_path / "p.db", readonly=True) as store:
        assert store.counts()["queries"] == 60 and len(store) == 60
        assert {q: label for q, label in answered.items()} == {
            a.query_id: a.label for a in store.answers() if a.query_id in answered
        }


class AcknowledgedSource(ScriptedSource):
    """Answers "first" and checks, when told, that the store already holds those answers."""

    name = "careful"

    def __init__(self, path):
        super().__init__(lambda query: Answer(query.id, "first", "careful"))
        self.path = path

    def acknowledge(self, query_ids):
        with PreferenceStore(self.path, readonly=True) as store:
            on_disk = {a.query_id for a in store.answers()}
        assert set(query_ids) <= on_disk, "acknowledged before the answers were committed"
        super().acknowledge(query_ids)


def test_answers_are_acknowledged_only_once_committed(tmp_path):
    source = AcknowledgedSource(tmp_path / "p.db")
    env = VecLearnedReward(make_vec_env("Pendulum-v1", n_envs=2, seed=0))
    callback = PreferenceCallback(
        source, total_labels=20, segment_length=10, refit_interval=256, store=str(tmp_path / "p.db"), seed=0
    )
    PPO("MlpPolicy", env, n_steps=256, seed=0, policy_kwargs={"net_arch": [16]}).learn(1024, callback=callback)
    callback.close()
    assert len(source.acknowledged) == 20


def test_a_store_object_for_another_run_is_refused_by_the_callback(tmp_path):
    env = gym.make("Pendulum-v1")
    store = PreferenceStore(tmp_path / "p.db", env.observation_space, env.action_space, segment_length=7)
    callback = PreferenceCallback("oracle", total_labels=4, segment_length=10, store=store)
    model = PPO("MlpPolicy", VecLearnedReward(make_vec_env("Pendulum-v1", n_envs=1)), n_steps=128)
    with pytest.raises(StoreError, match=r"segments of 7 steps \(this run: 10\)"):
        model.learn(128, callback=callback)
