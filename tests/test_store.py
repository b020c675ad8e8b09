import hashlib
import json
import random
import sqlite3
import subprocess
import sys
import textwrap
import time

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

from gym_prefs import Answer, PreferenceCallback, PreferenceStore, StoreError, VecLearnedReward
from gym_prefs.cli import main as cli
from gym_prefs.offline import fit_from_store
from gym_prefs.store import SCHEMA_VERSION

OBS = spaces.Box(-1, 1, (3,))
ACT = spaces.Box(-2, 2, (1,))
LENGTH = 5


def pairs(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-1, 1, (n, 2, LENGTH, 3)).astype(np.float32)
    return {
        "obs": obs,
        "actions": rng.uniform(-2, 2, (n, 2, LENGTH, 1)).astype(np.float32),
        "true_rewards": obs[..., 0],
    }


def new_store(path) -> PreferenceStore:
    return PreferenceStore(path, OBS, ACT, LENGTH, env_id="Test-v0")


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_queries_answers_and_counts(tmp_path):
    store = new_store(tmp_path / "p.db")
    ids = store.add_queries(pairs(4), source="oracle", timestep=100)
    assert store.counts() == {"pending": 4, "answered": 0, "skipped": 0, "queries": 4}
    new = store.record_answers([Answer(ids[0], "first", "ann", 2.5), Answer(ids[1], "skip", "ann")])
    assert len(new) == 2
    # A second answer to the same query is ignored: the first stands, and is what comes back.
    assert store.record_answers([Answer(ids[0], "second", "bob")]) == [Answer(ids[0], "first", "ann", 2.5)]
    assert len(store) == 1
    assert store.counts() == {"pending": 2, "answered": 1, "skipped": 1, "queries": 4}
    assert [q.id for q in store.pending_queries()] == ids[2:]
    labelled = store.labelled_pairs()
    np.testing.assert_array_equal(labelled.obs[0], pairs(4)["obs"][0])
    assert labelled.labels.tolist() == ["first"] and labelled.mu.tolist() == [1.0]
    store.close()
    # Everything is still there after reopening, with the spaces it was made for.
    again = PreferenceStore(tmp_path / "p.db")
    assert len(again) == 1 and again.env_id == "Test-v0" and again.observation_space == OBS


def test_creating_a_store_needs_the_spaces(tmp_path):
    with pytest.raises(ValueError, match="needs observation_space"):
        PreferenceStore(tmp_path / "p.db")


@pytest.mark.parametrize(
    "make_file",
    [
        lambda path: path.write_bytes(b"\x00garbage" * 1000),
        lambda path: path.write_bytes(b""),
        lambda path: sqlite3.connect(path).execute("CREATE TABLE other (x)").connection.commit(),
    ],
    ids=["corrupt", "empty", "another-sqlite-db"],
)
def test_a_file_that_is_not_a_store_is_refused_and_left_untouched(tmp_path, make_file):
    path = tmp_path / "thing.db"
    make_file(path)
    before = digest(path)
    with pytest.raises(StoreError, match=r"not a gym_prefs preference store|empty file"):
        PreferenceStore(path, OBS, ACT, LENGTH)
    assert digest(path) == before


def test_a_newer_schema_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "p.db"
    new_store(path).close()
    connection = sqlite3.connect(path)
    connection.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    connection.commit()
    connection.close()
    before = digest(path)
    with pytest.raises(StoreError, match=r"newer than this gym_prefs understands.*upgrade"):
        PreferenceStore(path, OBS, ACT, LENGTH)
    assert digest(path) == before


def test_a_store_for_another_env_is_refused_naming_both(tmp_path):
    path = tmp_path / "p.db"
    new_store(path).close()
    before = digest(path)
    other = spaces.Box(-1, 1, (4,))
    with pytest.raises(StoreError, match=r"Test-v0.*\(3,\).*this env.*\(4,\)"):
        PreferenceStore(path, other, ACT, LENGTH)
    with pytest.raises(StoreError, match="segments of 5 steps"):
        PreferenceStore(path, OBS, ACT, 7)
    assert digest(path) == before


WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from gymnasium import spaces
    from gym_prefs import Answer, PreferenceStore
    store = PreferenceStore(sys.argv[1], spaces.Box(-1, 1, (3,)), spaces.Box(-2, 2, (1,)), 5)
    for batch in range(40):
        ids = store.add_queries({"obs": np.zeros((5, 2, 5, 3)), "actions": np.zeros((5, 2, 5, 1))}, source="w")
        store.record_answers([Answer(i, "first", "writer") for i in ids])
        time.sleep(0.01)
    print("written", len(store))
    """
)


def test_a_reader_process_counts_labels_while_a_writer_adds_them(tmp_path):
    path = tmp_path / "p.db"
    new_store(path).close()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    seen = []
    reader = PreferenceStore(path, readonly=True)
    while writer.poll() is None:
        seen.append(len(reader))
        time.sleep(0.005)
    out, _ = writer.communicate()
    seen.append(len(reader))
    assert writer.returncode == 0 and "written 200" in out
    assert seen == sorted(seen)  # never goes back
    assert seen[-1] == 200
    assert len(set(seen)) > 3  # it saw the count grow while the writer ran
    with pytest.raises(PermissionError):
        reader.record_answers([Answer(1, "first")])


def test_export_import_round_trip(tmp_path):
    store = new_store(tmp_path / "a.db")
    ids = store.add_queries(pairs(6), source="oracle")
    labels = ["first", "second", "equal", "skip", "first", "second"]
    store.record_answers([Answer(i, label) for i, label in zip(ids, labels, strict=True)])
    assert store.export(tmp_path / "labels.npz") == 5
    imported = PreferenceStore.import_export(tmp_path / "labels.npz", tmp_path / "b.db")
    original, copy = store.labelled_pairs(), imported.labelled_pairs()
    for name in ("obs", "actions", "mu", "true_rewards", "labels"):
        np.testing.assert_array_equal(getattr(copy, name), getattr(original, name), err_msg=name)
    assert imported.env_id == "Test-v0" and imported.segment_length == LENGTH
    with np.load(tmp_path / "labels.npz") as data:  # the documented format
        assert json.loads(str(data["metadata"]))["segment_length"] == LENGTH
        assert data["obs"].shape == (5, 2, LENGTH, 3)


def test_importing_something_else_is_a_clear_error(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"nope")
    with pytest.raises(StoreError, match="not a gym_prefs preference export"):
        PreferenceStore.import_export(tmp_path / "x.npz", tmp_path / "b.db")


def train_on_store(path, total_labels=40, steps=2048, seed=0, fitting="inline"):
    env = VecLearnedReward(make_vec_env("Pendulum-v1", n_envs=2, seed=seed))
    callback = PreferenceCallback(
        "oracle", total_labels=total_labels, segment_length=10, refit_interval=256, store=str(path),
        initial_fit_epochs=30, fitting=fitting, seed=seed,
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


KILLABLE = textwrap.dedent(
    """
    import sys
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    import gym_prefs

    env = gym_prefs.VecLearnedReward(make_vec_env("Pendulum-v1", n_envs=2, seed=int(sys.argv[2])))
    callback = gym_prefs.PreferenceCallback(
        "oracle", total_labels=60, segment_length=10, refit_interval=128, store=sys.argv[1],
        initial_fit_epochs=20, seed=int(sys.argv[2]),
    )
    PPO("MlpPolicy", env, n_steps=128, batch_size=64, policy_kwargs={"net_arch": [16]}).learn(8000, callback=callback)
    print("DONE", len(callback.store), callback.store.counts()["queries"])
    """
)


def answered_ids(path) -> set[int]:
    if not path.exists():
        return set()
    try:
        with PreferenceStore(path, readonly=True) as store:
            return {a.query_id for a in store.answers()}
    except (StoreError, sqlite3.DatabaseError):
        return set()  # killed before the store was fully created


def test_labels_survive_sigkill_and_the_run_finishes_on_budget(tmp_path):
    path = tmp_path / "p.db"
    rng = random.Random(0)
    for attempt in range(3):
        process = subprocess.Popen([sys.executable, "-c", KILLABLE, str(path), str(attempt)], cwd=tmp_path)
        time.sleep(rng.uniform(2.5, 6.0))
        committed = answered_ids(path)
        process.kill()
        process.wait()
        after = answered_ids(path)
        assert committed <= after, "a committed label disappeared"
        if after:
            with PreferenceStore(path, readonly=True) as store:
                assert store.counts()["queries"] <= 60
    done = subprocess.run(
        [sys.executable, "-c", KILLABLE, str(path), "9"], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "DONE 60 60" in done.stdout


class AcknowledgedSource:
    """Answers "first" and checks, when told, that the store already holds those answers."""

    name = "careful"

    def __init__(self, path):
        self.path = path
        self._ready = []
        self.acknowledged = 0

    def request(self, queries):
        self._ready += [Answer(q.id, "first", "careful") for q in queries]

    def poll(self, timeout=0.0):
        answers, self._ready = self._ready, []
        return answers

    @property
    def pending(self):
        return len(self._ready)

    def close(self):
        pass

    def acknowledge(self, query_ids):
        with PreferenceStore(self.path, readonly=True) as store:
            on_disk = {a.query_id for a in store.answers()}
        assert set(query_ids) <= on_disk, "acknowledged before the answers were committed"
        self.acknowledged += len(query_ids)


def test_answers_are_acknowledged_only_once_committed(tmp_path):
    source = AcknowledgedSource(tmp_path / "p.db")
    env = VecLearnedReward(make_vec_env("Pendulum-v1", n_envs=2, seed=0))
    callback = PreferenceCallback(
        source, total_labels=20, segment_length=10, refit_interval=256, store=str(tmp_path / "p.db"), seed=0
    )
    PPO("MlpPolicy", env, n_steps=256, seed=0, policy_kwargs={"net_arch": [16]}).learn(1024, callback=callback)
    callback.close()
    assert source.acknowledged == 20


def test_a_store_object_for_another_run_is_refused_by_the_callback(tmp_path):
    env = gym.make("Pendulum-v1")
    store = PreferenceStore(tmp_path / "p.db", env.observation_space, env.action_space, segment_length=7)
    callback = PreferenceCallback("oracle", total_labels=4, segment_length=10, store=store)
    model = PPO("MlpPolicy", VecLearnedReward(make_vec_env("Pendulum-v1", n_envs=1)), n_steps=128)
    with pytest.raises(StoreError, match=r"segments of 7 steps \(this run: 10\)"):
        model.learn(128, callback=callback)
