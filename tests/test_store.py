import errno
import hashlib
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from conftest import ScriptedSource
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

from gym_prefs import Answer, PreferenceCallback, PreferenceStore, StoreError, VecLearnedReward
from gym_prefs.cli import main as cli
from gym_prefs.offline import fit_from_store
from gym_prefs.store import SCHEMA_VERSION, StoreBusyError
from gym_prefs.store_files import _host_tag

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
        lambda path: sqlite3.connect(path).execute("CREATE TABLE other (x)").connection.commit(),
        lambda path: sqlite3.connect(path).execute("CREATE TABLE meta (x)").connection.commit(),
        lambda path: path.write_bytes(b"PK\x03\x04"),
    ],
    # (An empty file is no longer refused: it holds no data and is replaced, see
    # test_a_file_without_data_is_replaced_by_a_new_store.)
    ids=["corrupt", "another-sqlite-db", "sqlite-db-with-another-meta", "tiny-zip"],
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


# SIGKILLs of training runs (the first instants included) are in tests/test_faults.py.


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


# ---------------------------------------------------------------------- creating a store
def test_a_call_that_fails_on_its_arguments_creates_no_file_and_no_folder(tmp_path):
    path = tmp_path / "new" / "deeper" / "p.db"
    with pytest.raises(ValueError, match="needs observation_space"):
        PreferenceStore(path)
    with pytest.raises(ValueError, match="segment_length must be a positive integer"):
        PreferenceStore(path, OBS, ACT, 0)
    with pytest.raises(FileNotFoundError):
        PreferenceStore(path, readonly=True)
    assert list(tmp_path.iterdir()) == []
    with new_store(path) as store:  # and the path works afterwards
        assert len(store) == 0


def leftover_of_an_older_version(path):
    """What gym_prefs left when creating a store failed, before creation was atomic: no tables."""
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.close()


def hidden_files(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize(
    "make_file",
    [lambda path: path.write_bytes(b""), leftover_of_an_older_version],
    ids=["zero-bytes", "sqlite-without-tables"],
)
def test_a_file_without_data_is_replaced_by_a_new_store(tmp_path, make_file):
    path = tmp_path / "p.db"
    make_file(path)
    before = digest(path)
    # Reading it, or opening it without what creating a store needs, leaves it as it is.
    with pytest.raises(StoreError, match="holds no preference store yet"):
        PreferenceStore(path, readonly=True)
    with pytest.raises(StoreError, match="needs observation_space"):
        PreferenceStore(path)
    assert digest(path) == before
    with new_store(path) as store:
        ids = store.add_queries(pairs(2), source="oracle")
        store.record_answers([Answer(ids[0], "first")])
    with PreferenceStore(path, readonly=True) as store:
        assert len(store) == 1 and store.env_id == "Test-v0"
    assert hidden_files(tmp_path) == []


KILLED_WHILE_CREATING = textwrap.dedent(
    """
    import os, sys
    from gymnasium import spaces
    import gym_prefs.store, gym_prefs.store_files

    # Killed after the store was built, before it was given its name.
    gym_prefs.store_files._publish = lambda path, temporary: os._exit(9)
    gym_prefs.store.PreferenceStore(sys.argv[1], spaces.Box(-1, 1, (3,)), spaces.Discrete(2), 4)
    """
)


def test_a_creation_killed_midway_leaves_nothing_in_the_way(tmp_path):
    path = tmp_path / "p.db"
    killed = subprocess.run([sys.executable, "-c", KILLED_WHILE_CREATING, str(path)], timeout=120)
    assert killed.returncode == 9
    assert not path.exists()
    [temporary] = hidden_files(tmp_path)
    assert temporary.startswith(".p.db.") and temporary.endswith(".creating")
    # The temporary file of a creation still under way (a live pid) is left alone.
    in_progress = tmp_path / f".other.db.{os.getppid()}.{_host_tag()}.0123abcd.creating"
    in_progress.write_bytes(b"")
    with new_store(path) as store:
        assert len(store) == 0
    assert hidden_files(tmp_path) == [in_progress.name]


def test_a_creation_that_loses_the_race_opens_the_winners_store(tmp_path, monkeypatch):
    winner = tmp_path / "winner.db"
    with new_store(winner) as store:
        store.record_answers([Answer(store.add_queries(pairs(1), source="w")[0], "first")])
    link = os.link

    def another_process_is_faster(source, destination):
        shutil.copyfile(winner, destination)
        return link(source, destination)

    monkeypatch.setattr(os, "link", another_process_is_faster)
    with PreferenceStore(tmp_path / "p.db", OBS, ACT, LENGTH, env_id="the-loser") as store:
        assert store.env_id == "Test-v0" and len(store) == 1
    assert hidden_files(tmp_path) == []


@pytest.mark.parametrize("another_process_first", [False, True])
def test_without_hard_links_a_store_is_created_without_clobbering_one(tmp_path, monkeypatch, another_process_first):
    winner = tmp_path / "winner.db"
    new_store(winner).close()

    def no_hard_links(source, destination):
        if another_process_first:
            shutil.copyfile(winner, destination)
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_hard_links)
    with PreferenceStore(tmp_path / "p.db", OBS, ACT, LENGTH, env_id="this-one") as store:
        assert store.env_id == ("Test-v0" if another_process_first else "this-one")
    assert hidden_files(tmp_path) == []


CREATOR = textwrap.dedent(
    """
    import sys
    from gymnasium import spaces
    from gym_prefs import PreferenceStore

    print("READY", flush=True)
    sys.stdin.readline()
    with PreferenceStore(sys.argv[1], spaces.Box(-1, 1, (3,)), spaces.Box(-2, 2, (1,)), 5, env_id=sys.argv[2]) as s:
        print("OPENED", s.env_id, flush=True)
    """
)


@pytest.mark.parametrize("there_first", ["nothing", "an empty file"])
def test_processes_creating_one_store_at_once_all_open_the_same_one(tmp_path, there_first):
    path = tmp_path / "p.db"
    if there_first == "an empty file":
        path.write_bytes(b"")
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CREATOR, str(path), f"process-{i}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    for process in processes:
        assert process.stdout.readline().strip() == "READY"
    for process in processes:  # all at once
        process.stdin.write("\n")
        process.stdin.flush()
    outputs = [process.communicate(timeout=120) for process in processes]
    assert all(process.returncode == 0 for process in processes), [err[-2000:] for _, err in outputs]
    opened = {out.split()[-1] for out, _ in outputs}
    with PreferenceStore(path, readonly=True) as store:
        assert opened == {store.env_id}
    assert hidden_files(tmp_path) == []


# ---------------------------------------------------------------------- what a refused file is
def test_a_refusal_says_what_the_file_is(tmp_path):
    other_format, other_sqlite = tmp_path / "a.png", tmp_path / "b.db"
    other_format.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    sqlite3.connect(other_sqlite).execute("CREATE TABLE other (x)").connection.commit()
    with pytest.raises(StoreError, match="not a gym_prefs preference store: it holds another format, not an SQLite"):
        PreferenceStore(other_format, OBS, ACT, LENGTH)
    with pytest.raises(StoreError, match="is an SQLite database but not a gym_prefs preference store"):
        PreferenceStore(other_sqlite, OBS, ACT, LENGTH)
    with pytest.raises(StoreError, match="is a folder, not a preference store"):
        PreferenceStore(tmp_path, OBS, ACT, LENGTH)


def store_with_labels(path, count=400):
    with new_store(path) as store:
        ids = store.add_queries(pairs(count), source="oracle")
        store.record_answers([Answer(i, "first") for i in ids])


def overwrite(path, offset, data):
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def test_a_store_damaged_in_the_middle_is_reported_damaged_and_left_untouched(tmp_path, capsys):
    path = tmp_path / "p.db"
    store_with_labels(path)
    with PreferenceStore(path, readonly=True) as store:
        assert store.check() == []
    assert cli(["info", str(path)]) == 0
    assert "integrity: ok" in capsys.readouterr().out
    middle = path.stat().st_size // 2 // 4096 * 4096
    overwrite(path, middle, bytes(random.Random(0).randrange(256) for _ in range(8192)))  # two pages of noise
    before = digest(path)
    with PreferenceStore(path, readonly=True) as store:
        assert store.check() != []
    assert cli(["info", str(path)]) == 1
    out, err = capsys.readouterr()
    assert "integrity: damaged" in out
    assert "is damaged" in err and "left untouched" in err and ".recover" in err
    assert digest(path) == before


def damage_the_schema_page(path):
    overwrite(path, 100, b"\xff" * 400)  # page 1 after the file header: the list of tables


def damage_the_size(path):
    with open(path, "r+b") as handle:
        handle.truncate(4096 + 1000)


def drop_a_table(path):
    connection = sqlite3.connect(path)
    connection.execute("DROP TABLE answers")
    connection.commit()
    connection.close()


@pytest.mark.parametrize("damage", [damage_the_schema_page, damage_the_size, drop_a_table])
def test_a_store_that_cannot_be_read_is_refused_as_damaged_and_left_untouched(tmp_path, damage):
    path = tmp_path / "p.db"
    store_with_labels(path, 50)
    damage(path)
    before = digest(path)
    with pytest.raises(StoreError, match=r"is damaged \(.*\); it was left untouched.*\.recover"):
        PreferenceStore(path, OBS, ACT, LENGTH)
    with pytest.raises(StoreError, match="is damaged"):
        PreferenceStore(path, readonly=True)
    assert digest(path) == before


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="needs the sqlite3 command-line tool")
def test_the_recovery_the_damage_message_suggests_gets_labels_back(tmp_path):
    path = tmp_path / "p.db"
    store_with_labels(path)
    overwrite(path, path.stat().st_size // 2 // 4096 * 4096, b"\xff" * 4096)
    shutil.copyfile(path, tmp_path / "copy.db")
    sqlite = {"cwd": tmp_path, "capture_output": True, "text": True, "timeout": 120}
    recovered = subprocess.run(["sqlite3", "copy.db", ".recover"], **sqlite)
    if recovered.returncode != 0:  # a build without sqlite_dbpage (or older than 3.29): the .dump way
        recovered = subprocess.run(["sqlite3", "copy.db", ".dump"], **sqlite)
        assert recovered.stdout.endswith("ROLLBACK; -- due to errors\n")
        recovered.stdout = recovered.stdout.removesuffix("ROLLBACK; -- due to errors\n") + "COMMIT;\n"
    subprocess.run(["sqlite3", "recovered.db"], input=recovered.stdout, check=True, **sqlite)
    with PreferenceStore(tmp_path / "recovered.db", readonly=True) as store:
        assert 300 < len(store.labelled_pairs()) <= 400


# ---------------------------------------------------------------------- read-only stores
AS_NOBODY = textwrap.dedent(
    """
    import json, os, sys
    from gym_prefs.store import PreferenceStore, StoreError

    # Imported as root first: the interpreter may live where nobody may read.
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    path = sys.argv[1]
    results = {}
    for attempt, readonly in (("write", False), ("read", True)):
        try:
            with PreferenceStore(path, readonly=readonly) as store:
                results[attempt] = len(store)
        except StoreError as error:
            results[attempt] = str(error)
        results[attempt + " files"] = sorted(os.listdir(os.path.dirname(path)))
    print(json.dumps(results))
    """
)

needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="runs a process as an unprivileged user"
)


@pytest.fixture
def shared_folder():
    # Not under tmp_path, whose base folder is 0700: the unprivileged user must reach this one.
    folder = Path(tempfile.mkdtemp(dir="/tmp"))
    yield folder
    folder.chmod(0o700)
    shutil.rmtree(folder)


def as_nobody(path):
    done = subprocess.run([sys.executable, "-c", AS_NOBODY, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@needs_root
@pytest.mark.parametrize("what", ["folder", "file", "folder but not the file"])
def test_a_read_only_store_is_refused_for_writing_and_can_be_read(shared_folder, what):
    path = shared_folder / "p.db"
    store_with_labels(path, 3)
    if what == "folder but not the file":
        os.chown(path, 65534, 65534)
    shared_folder.chmod(0o777 if what == "file" else 0o755)
    before = digest(path)
    results = as_nobody(path)
    assert "cannot be written by this process" in results["write"]
    assert "open it with readonly=True" in results["write"] and "copy it to a writable folder" in results["write"]
    assert results["write files"] == ["p.db"]  # nothing written, not even a -wal file
    assert results["read"] == 3
    assert digest(path) == before


UNMERGED = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    from gym_prefs import Answer, PreferenceStore

    store = PreferenceStore(sys.argv[1])
    ids = store.add_queries({"obs": np.zeros((2, 2, 5, 3)), "actions": np.zeros((2, 2, 5, 1))}, source="w")
    store.record_answers([Answer(i, "first") for i in ids])
    os._exit(0)  # without closing: the labels stay in the -wal file, not merged into the store file
    """
)


@needs_root
def test_a_store_with_unmerged_changes_in_a_read_only_folder_says_how_to_read_it(shared_folder):
    path = shared_folder / "p.db"
    store_with_labels(path, 3)
    subprocess.run([sys.executable, "-c", UNMERGED, str(path)], check=True, timeout=120)
    (shared_folder / "p.db-shm").unlink()  # as a copy of the store with its -wal file would be
    assert (shared_folder / "p.db-wal").stat().st_size > 0
    shared_folder.chmod(0o755)
    before = digest(path), digest(shared_folder / "p.db-wal")
    results = as_nobody(path)
    assert "cannot be written by this process" in results["write"]
    assert "changes not yet merged into the file" in results["read"] and "p.db-wal" in results["read"]
    assert "Copy the store with its -wal file to a writable folder" in results["read"]
    assert (digest(path), digest(shared_folder / "p.db-wal")) == before
    with PreferenceStore(path, readonly=True) as store:  # where the folder is writable, all 5 labels are there
        assert len(store) == 5


# ---------------------------------------------------------------------- one run at a time
HOLDER = textwrap.dedent(
    """
    import sys, time
    from gym_prefs import PreferenceStore

    store = PreferenceStore(sys.argv[1])
    store.lock_for_run()
    print("LOCKED", flush=True)
    time.sleep(600)
    """
)


def test_a_second_run_on_a_store_is_refused_while_the_first_lives(tmp_path):
    path = tmp_path / "p.db"
    new_store(path).close()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "LOCKED"
        store = new_store(path)  # opening it is fine (a labelling window does), running on it is not
        with pytest.raises(
            StoreBusyError,
            match=rf"in use by another training run: pid {holder.pid} on host .+, running since .*"
            r"stop that run, or pass another store path",
        ):
            store.lock_for_run()
        with PreferenceStore(path, readonly=True) as reader:
            assert len(reader) == 0
            with pytest.raises(PermissionError):
                reader.lock_for_run()
        holder.kill()
        holder.wait()
        started = time.monotonic()
        store.lock_for_run()  # the kernel released the killed holder's lock
        store.lock_for_run()  # (again: nothing happens)
        assert time.monotonic() - started < 1
        lock_file = tmp_path / "p.db-run.lock"
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
        with PreferenceStore(path) as other, pytest.raises(StoreBusyError, match=rf"pid {os.getpid()} "):
            other.lock_for_run()  # one run at a time within a process too
        store.close()
        assert not lock_file.exists()
        with PreferenceStore(path) as again:
            again.lock_for_run()
    finally:
        holder.kill()
        holder.wait()


# ---------------------------------------------------------------------- answers
def with_field(answer, **fields):
    """``answer`` with fields set past Answer's own checks (as a foreign source's object could be)."""
    for name, value in fields.items():
        object.__setattr__(answer, name, value)
    return answer


def test_answers_are_checked_before_anything_is_written(tmp_path):
    store = new_store(tmp_path / "p.db")
    ids = store.add_queries(pairs(3), source="oracle")
    good = Answer(ids[0], "first")
    unknown = ids[-1] + 100
    with pytest.raises(StoreError, match=rf"query ids this store never asked: {unknown}\b.*Drop those answers"):
        store.record_answers([good, Answer(unknown, "first")])
    with pytest.raises(StoreError, match=r"labels not one of .*'best' \(query"):
        store.record_answers([good, with_field(Answer(ids[1], "first"), label="best")])
    with pytest.raises(StoreError, match=r"not integers: '2'"):
        store.record_answers([good, with_field(Answer(ids[1], "first"), query_id="2")])
    assert store.answers() == [] and store.counts()["pending"] == 3  # nothing of those batches
    # NumPy integer ids are stored as ints; within a batch too the first answer stands.
    numpy_id = with_field(Answer(ids[0], "second", "ann"), query_id=np.int64(ids[0]))
    assert store.record_answers([numpy_id, Answer(ids[0], "first")]) == [Answer(ids[0], "second", "ann")]
    assert store.counts() == {"pending": 2, "answered": 1, "skipped": 0, "queries": 3}
    store.close()


# ---------------------------------------------------------------------- a full disk
def test_a_full_disk_is_a_clear_error_and_keeps_every_committed_label(small_disk):
    path = small_disk / "p.db"
    store = new_store(path)
    ids = store.add_queries(pairs(2), source="oracle")
    store.record_answers([Answer(ids[0], "first")])
    filler = small_disk / "filler"
    filler.write_bytes(b"\xff" * (shutil.disk_usage(small_disk).free - 48 * 1024))
    committed = len(ids)
    with pytest.raises(StoreError) as raised:
        for seed in range(1000):
            committed += len(store.add_queries(pairs(3, seed), source="oracle"))
    message = str(raised.value)
    assert message.startswith(f"the disk holding the preference store {path} is full: nothing of this transaction")
    assert "every label committed before is kept; free space and start the run again on the same store" in message
    assert isinstance(raised.value.__cause__, sqlite3.OperationalError)
    assert "full" in str(raised.value.__cause__)
    store.close()
    # Every query committed before the error, and nothing of the one that failed.
    with PreferenceStore(path, readonly=True) as reader:
        assert reader.counts() == {"pending": committed - 1, "answered": 1, "skipped": 0, "queries": committed}
        assert len(reader) == 1 and reader.check() == []
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
        assert connection.execute("SELECT COUNT(*) FROM segments").fetchone()[0] == 2 * committed
    filler.unlink()
    with new_store(path) as store:
        store.add_queries(pairs(3), source="oracle")
        assert store.counts()["queries"] == committed + 3


# ---------------------------------------------------------------------- threads
def test_a_store_opened_in_a_thread_can_be_closed_from_another(tmp_path):
    opened = []

    def open_stores():
        store = new_store(tmp_path / "p.db")
        store.lock_for_run()
        store.add_queries(pairs(1), source="oracle")
        opened.extend([store, PreferenceStore(tmp_path / "p.db", readonly=True)])

    thread = threading.Thread(target=open_stores)
    thread.start()
    thread.join()
    writer, reader = opened
    writer.close()  # as a garbage collector's finaliser or a thread outliving the opener would
    reader.close()
    assert writer.closed and reader.closed
    assert not (tmp_path / "p.db-run.lock").exists()
    with PreferenceStore(tmp_path / "p.db", readonly=True) as again:
        assert again.counts()["queries"] == 1
