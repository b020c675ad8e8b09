import io
import os
import pickle
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from gymnasium import spaces
from model_helpers import BOX_ACT, IMAGES, VEC_OBS, fitted
from torch import nn

from gym_prefs import RewardEnsemble, folded_inference, model_files, reward_model
from gym_prefs.model_files import FORMAT, HEADER_SIZE
from gym_prefs.networks import ModuleEnsemble


@pytest.mark.parametrize(
    ("obs_space", "act_space"),
    [(VEC_OBS, BOX_ACT), (spaces.Box(-1, 1, (3,)), spaces.MultiDiscrete([2, 3])), (IMAGES, spaces.Discrete(4))],
)
def test_save_load_and_pickle_give_identical_predictions(tmp_path, obs_space, act_space):
    model = fitted(RewardEnsemble(obs_space, act_space, reward_std=0.5, seed=0))
    obs = np.stack([obs_space.sample() for _ in range(6)])
    act = np.stack([act_space.sample() for _ in range(6)])
    model.calibrate(obs, act)
    model.save(tmp_path / "reward.pt")
    loaded = RewardEnsemble.load(tmp_path / "reward.pt")
    np.testing.assert_array_equal(loaded.predict(obs, act), model.predict(obs, act))
    assert loaded.config() == model.config()
    copied = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(copied.predict(obs, act), model.predict(obs, act))


def test_load_refuses_other_files_with_a_clear_message(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(ValueError, match="not a gym_prefs reward model"):
        RewardEnsemble.load(junk)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="not a gym_prefs reward model"):
        RewardEnsemble.load(other)


def test_load_refuses_a_newer_format(tmp_path):
    model = RewardEnsemble(VEC_OBS, BOX_ACT)
    path = tmp_path / "reward.pt"
    model.save(path)
    payload = torch.load(io.BytesIO(path.read_bytes()[HEADER_SIZE:]), weights_only=True)
    payload["version"] = 99
    torch.save(payload, path)
    with pytest.raises(ValueError, match="upgrade gym_prefs"):
        RewardEnsemble.load(path)


class LinearMember(nn.Module):
    def __init__(self, obs_shape, act_dim):
        super().__init__()
        self.fc = nn.Linear(obs_shape[0] + act_dim, 1)

    def forward(self, obs, act):
        return self.fc(torch.cat([obs, act], dim=-1)).squeeze(-1)


def test_custom_member_factory_by_import_path_survives_save_and_load(tmp_path):
    model = fitted(RewardEnsemble(VEC_OBS, BOX_ACT, member_factory="tests.test_model_files:LinearMember", seed=0))
    assert isinstance(model.net, ModuleEnsemble)
    obs, act = np.ones((3, 5)), np.ones((3, 2))
    model.save(tmp_path / "m.pt")
    np.testing.assert_array_equal(RewardEnsemble.load(tmp_path / "m.pt").predict(obs, act), model.predict(obs, act))


def test_custom_local_factory_needs_the_factory_to_load(tmp_path):
    model = RewardEnsemble(VEC_OBS, BOX_ACT, member_factory=lambda shape, act_dim: LinearMember(shape, act_dim))
    model.save(tmp_path / "m.pt")
    with pytest.raises(ValueError, match="pass the same factory"):
        RewardEnsemble.load(tmp_path / "m.pt")
    RewardEnsemble.load(tmp_path / "m.pt", member_factory=LinearMember)


# ---------------------------------------------------------------- damaged and old files
def _saved_model(tmp_path):
    model = fitted(RewardEnsemble(VEC_OBS, BOX_ACT, reward_std=0.5, seed=0))
    rng = np.random.default_rng(0)
    model.calibrate(rng.normal(size=(50, 5)), rng.uniform(-1, 1, (50, 2)))
    path = tmp_path / "reward.pt"
    model.save(path)
    return model, path


def test_every_corrupted_or_truncated_file_is_refused(tmp_path):
    # torch.load does not check its zip's CRCs: before the checksummed header, 38 of these 40
    # files loaded and predicted NaN or 1e6-sized rewards.
    model, path = _saved_model(tmp_path)
    data = path.read_bytes()
    rng = np.random.default_rng(0)
    damaged = tmp_path / "damaged.pt"
    positions = [int(p) for p in rng.integers(0, len(data), 40)]
    positions += [0, 7, 8, 12, 20, HEADER_SIZE - 1, HEADER_SIZE]  # magic, version, length, checksum, payload
    loaded = []
    for position in positions:
        corrupted = bytearray(data)
        if rng.random() < 0.5:
            corrupted[position] ^= 1 << int(rng.integers(8))  # one flipped bit
        else:
            corrupted[position] = (corrupted[position] + int(rng.integers(1, 256))) % 256  # another byte
        damaged.write_bytes(bytes(corrupted))
        try:
            RewardEnsemble.load(damaged)
        except ValueError as error:
            assert "damaged" in str(error) or "not a gym_prefs reward model" in str(error)
        except Exception as error:  # refused, but not with a clear ValueError
            loaded.append((position, repr(error)))
        else:
            loaded.append((position, "loaded"))
    assert loaded == [], f"{len(loaded)} of {len(positions)} corrupted files were not refused: {loaded}"
    for length in (0, 4, HEADER_SIZE - 1, HEADER_SIZE, len(data) // 2, len(data) - 1):
        damaged.write_bytes(data[:length])
        with pytest.raises(ValueError, match=r"damaged|not a gym_prefs reward model"):
            RewardEnsemble.load(damaged)
    # What happened, and what to do about it.
    middle = bytearray(data)
    middle[len(data) // 2] ^= 0xFF
    with pytest.raises(ValueError, match=r"damaged \(checksum mismatch.*gym-prefs fit STORE"):
        RewardEnsemble.from_bytes(bytes(middle))
    with pytest.raises(ValueError, match=r"damaged \(truncated"):
        RewardEnsemble.from_bytes(data[:-1])
    with pytest.raises(ValueError, match="checksum mismatch"):
        RewardEnsemble.state_from_bytes(bytes(middle))
    obs = np.ones((3, 5))
    np.testing.assert_array_equal(RewardEnsemble.load(path).predict(obs, obs[:, :2]), model.predict(obs, obs[:, :2]))


def test_a_newer_header_version_asks_for_an_upgrade(tmp_path):
    _, path = _saved_model(tmp_path)
    data = bytearray(path.read_bytes())
    data[8:12] = (model_files.FORMAT_VERSION + 1).to_bytes(4, "little")
    with pytest.raises(ValueError, match=r"newer than this gym_prefs understands.*upgrade gym_prefs"):
        RewardEnsemble.from_bytes(bytes(data))


def _format_1_bytes(model: RewardEnsemble) -> bytes:
    """A file as gym_prefs 0.1 wrote it: a bare torch.save payload, no header."""
    buffer = io.BytesIO()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"format": FORMAT, "version": 1, "config": model.config(), "state": state}, buffer)
    return buffer.getvalue()


def test_files_of_format_1_still_load_and_are_checked_for_finite_weights(tmp_path):
    model, _ = _saved_model(tmp_path)
    old = tmp_path / "old.pt"
    old.write_bytes(_format_1_bytes(model))
    obs, act = np.random.default_rng(1).normal(size=(6, 5)), np.zeros((6, 2))
    np.testing.assert_array_equal(RewardEnsemble.load(old).predict(obs, act), model.predict(obs, act))
    assert set(RewardEnsemble.state_from_bytes(old.read_bytes())) == set(model.state_dict())
    with torch.no_grad():
        model.net.out.bias[1] = float("nan")
    old.write_bytes(_format_1_bytes(model))
    with pytest.raises(ValueError, match=r"out\.bias holds NaN or infinite values.*gym-prefs fit"):
        RewardEnsemble.load(old)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused_but_copies_in_memory_stay_faithful(tmp_path, bad):
    model, _ = _saved_model(tmp_path)
    with torch.no_grad():
        model.scale[0] = bad
    data = model.to_bytes()
    with pytest.raises(ValueError, match="scale holds NaN or infinite values"):
        RewardEnsemble.from_bytes(data)
    with pytest.raises(ValueError, match="scale holds NaN or infinite values"):
        RewardEnsemble.state_from_bytes(data)
    # clone() and pickling copy a model, damage included, rather than read a file.
    for copy in (model.clone(), pickle.loads(pickle.dumps(model))):
        np.testing.assert_array_equal(copy.scale.numpy(), model.scale.numpy())  # NaN equals NaN here


def test_saves_to_one_path_from_two_threads_never_collide(tmp_path):
    # With one shared "<path>.tmp", one saver renamed the other's half-written file away and
    # the other's os.replace failed (FileNotFoundError).
    model = fitted(RewardEnsemble(VEC_OBS, BOX_ACT, seed=0))
    path = tmp_path / "reward.pt"
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def save_repeatedly():
        start.wait()
        for _ in range(40):
            try:
                model.save(path)
            except BaseException as error:  # every failure, reported by the main thread
                errors.append(error)

    threads = [threading.Thread(target=save_repeatedly) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert os.listdir(tmp_path) == ["reward.pt"]  # no temporary file left behind
    obs = np.ones((2, 5))
    np.testing.assert_array_equal(RewardEnsemble.load(path).predict(obs, obs[:, :2]), model.predict(obs, obs[:, :2]))


def test_a_failed_save_keeps_the_previous_file_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    _, path = _saved_model(tmp_path)
    before = path.read_bytes()

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(model_files.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        fitted(RewardEnsemble(VEC_OBS, BOX_ACT, seed=1)).save(path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["reward.pt"]
    assert path.read_bytes() == before


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_saved_files_are_as_readable_as_files_written_in_place(tmp_path):
    _, path = _saved_model(tmp_path)
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert path.stat().st_mode == plain.stat().st_mode


# ---------------------------------------------------------------- the module itself
def test_the_file_constants_are_still_importable_from_reward_model():
    for name in ("CUSTOM_CALLABLE", "FILE_MAGIC", "FORMAT", "FORMAT_VERSION", "HEADER_SIZE", "LEGACY_FORMAT_VERSION"):
        assert getattr(reward_model, name) == getattr(model_files, name), name
    assert reward_model.FOLDED_MAX_ROWS == folded_inference.FOLDED_MAX_ROWS


@pytest.mark.parametrize("module", ["model_files", "model_inputs", "batched_inference", "folded_inference"])
def test_the_model_s_helper_modules_do_not_import_the_model(module):
    # reward_model imports them; the other way round would be an import cycle.
    code = f"import sys, gym_prefs.{module}; print('gym_prefs.reward_model' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_factories_are_saved_by_import_path_and_imported_back():
    assert model_files.factory_path(ModuleEnsemble) == "gym_prefs.networks:ModuleEnsemble"
    assert model_files.factory_path(lambda shape, act_dim: LinearMember(shape, act_dim)) == model_files.CUSTOM_CALLABLE
    assert model_files.factory_path(None) is None
    assert model_files.resolve_factory("gym_prefs.networks:ModuleEnsemble") is ModuleEnsemble
    assert model_files.resolve_factory("os:path.join") is os.path.join
    assert model_files.resolve_factory(LinearMember) is LinearMember
    with pytest.raises(ValueError, match="must look like 'package"):
        model_files.resolve_factory("gym_prefs.networks")


def test_a_model_rebuilt_from_its_config_has_the_same_config():
    model = RewardEnsemble(IMAGES, spaces.Discrete(4), n_members=2, reward_std=0.05, image_mask_rows=[(0, 10)])
    config = model.config()
    assert config == model_files.model_config(model)
    assert model_files.from_bytes(RewardEnsemble, model.to_bytes()).config() == config
