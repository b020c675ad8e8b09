import io
import os
import pickle
import threading

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch import nn

from gym_prefs import RewardEnsemble, reward_model
from gym_prefs.networks import EnsembleCNN, EnsembleMLP, ModuleEnsemble
from gym_prefs.reward_model import FORMAT, HEADER_SIZE

VEC_OBS = spaces.Box(-1, 1, (5,))
BOX_ACT = spaces.Box(-1, 1, (2,))
IMAGES = spaces.Box(0, 255, (84, 84, 4), np.uint8)


def fitted(model: RewardEnsemble) -> RewardEnsemble:
    model.fitted.fill_(True)
    return model


def test_mlp_for_vectors_and_cnn_for_images():
    assert isinstance(RewardEnsemble(VEC_OBS, BOX_ACT).net, EnsembleMLP)
    model = RewardEnsemble(IMAGES, spaces.Discrete(6))
    assert isinstance(model.net, EnsembleCNN)
    assert model.obs_shape == (4, 84, 84)
    chw = RewardEnsemble(spaces.Box(0, 255, (4, 84, 84), np.uint8), spaces.Discrete(6))
    assert chw.obs_shape == (4, 84, 84)


def test_cnn_reads_channel_last_and_first_alike():
    hwc = fitted(RewardEnsemble(IMAGES, spaces.Discrete(6), seed=0))
    chw = fitted(RewardEnsemble(spaces.Box(0, 255, (4, 84, 84), np.uint8), spaces.Discrete(6), seed=0))
    images = np.random.default_rng(0).integers(0, 256, (3, 84, 84, 4), dtype=np.uint8)
    actions = np.array([0, 3, 5])
    np.testing.assert_allclose(
        hwc.predict(images, actions), chw.predict(images.transpose(0, 3, 1, 2), actions), rtol=1e-5
    )


def test_zero_reward_before_the_first_fit():
    model = RewardEnsemble(VEC_OBS, BOX_ACT)
    assert not model.is_fitted
    assert model.predict(np.ones((4, 5)), np.ones((4, 2))).tolist() == [0.0] * 4


def test_members_start_different_and_predict_in_one_call():
    model = fitted(RewardEnsemble(VEC_OBS, BOX_ACT, n_members=4, seed=0))
    out = model.predict_members(np.random.default_rng(0).normal(size=(7, 5)), np.zeros((7, 2)))
    assert out.shape == (4, 7)
    assert np.all(np.std(out, axis=0) > 0)


@pytest.mark.parametrize(("reward_std", "reward_mean"), [(1.0, 0.0), (0.05, 0.0), (1.0, 1.0)])
def test_calibration_gives_each_member_the_target_mean_and_std(reward_std, reward_mean):
    model = fitted(RewardEnsemble(VEC_OBS, BOX_ACT, reward_std=reward_std, reward_mean=reward_mean, seed=1))
    rng = np.random.default_rng(1)
    obs, act = rng.normal(size=(500, 5)), rng.uniform(-1, 1, (500, 2))
    model.calibrate(obs, act)
    members = model.predict_members(obs, act)
    np.testing.assert_allclose(members.mean(axis=1), reward_mean, atol=1e-4)
    np.testing.assert_allclose(members.std(axis=1), reward_std, rtol=1e-3)
    # The ensemble prediction is the mean of the normalised members.
    np.testing.assert_allclose(model.predict(obs, act), members.mean(axis=0), rtol=1e-5, atol=1e-6)


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
    model = fitted(RewardEnsemble(VEC_OBS, BOX_ACT, member_factory="tests.test_reward_model:LinearMember", seed=0))
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


def test_discrete_actions_are_one_hot_and_change_the_reward():
    env = gym.make("CartPole-v1")
    model = fitted(RewardEnsemble(env.observation_space, env.action_space, use_actions=True, seed=0))
    assert model.act_dim == 2
    obs = np.zeros((2, 4))
    left, right = model.predict(obs, np.array([0, 1]))
    assert left != right


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="n_members"):
        RewardEnsemble(VEC_OBS, BOX_ACT, n_members=0)
    with pytest.raises(ValueError, match="network='cnn' needs"):
        RewardEnsemble(VEC_OBS, BOX_ACT, network="cnn")
    with pytest.raises(ValueError, match="too small"):
        RewardEnsemble(spaces.Box(0, 255, (16, 16, 3), np.uint8), BOX_ACT)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_predictions_match_cpu():
    cpu = fitted(RewardEnsemble(VEC_OBS, BOX_ACT, seed=0))
    gpu = RewardEnsemble.from_bytes(cpu.to_bytes(), device="cuda")
    obs, act = np.ones((3, 5)), np.ones((3, 2))
    np.testing.assert_allclose(gpu.predict(obs, act), cpu.predict(obs, act), rtol=1e-4)


def test_rewards_read_observations_only_by_default():
    env = gym.make("CartPole-v1")
    model = fitted(RewardEnsemble(env.observation_space, env.action_space, seed=0))
    assert model.act_dim == 0
    left, right = model.predict(np.zeros((2, 4)), np.array([0, 1]))
    assert left == right


def test_seeded_models_are_identical_and_reset_parameters_reseeds():
    a = RewardEnsemble(VEC_OBS, BOX_ACT, seed=3)
    b = RewardEnsemble(VEC_OBS, BOX_ACT)
    state_before = torch.random.get_rng_state()
    b.reset_parameters(seed=3)
    assert torch.equal(torch.random.get_rng_state(), state_before)  # the global RNG is untouched
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("use_actions", [False, True])
@pytest.mark.parametrize("act_space", [BOX_ACT, spaces.Discrete(3)])
def test_fast_prediction_path_matches_the_members_and_follows_weight_changes(use_actions, act_space):
    model = fitted(RewardEnsemble(VEC_OBS, act_space, use_actions=use_actions, seed=0))
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(64, 5)).astype(np.float32)
    act = np.stack([act_space.sample() for _ in range(64)])
    model.set_input_stats(obs * 3 + 1, act)
    model.calibrate(obs, act)
    for _ in range(2):
        fast = model.predict(obs[:7], act[:7])
        np.testing.assert_allclose(fast, model.predict_members(obs[:7], act[:7]).mean(0), rtol=1e-4, atol=1e-5)
        with torch.no_grad():  # a weight changed in place (as a trainer would) must be seen
            next(model.net.parameters()).add_(0.1)
        model.calibrate(obs, act)


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
    data[8:12] = (reward_model.FORMAT_VERSION + 1).to_bytes(4, "little")
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

    monkeypatch.setattr(reward_model.os, "replace", fail)
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


# ---------------------------------------------------------------- memory of batched inference
def test_default_inference_batch_comes_from_a_byte_budget():
    big = RewardEnsemble(spaces.Box(0, 255, (512, 512, 3), np.uint8), spaces.Discrete(4), n_members=3)
    atari = RewardEnsemble(IMAGES, spaces.Discrete(6), n_members=3)
    vector = RewardEnsemble(VEC_OBS, BOX_ACT, n_members=3)
    assert big.inference_batch_rows == 9  # was 4096 rows: about 96 GB
    assert atari.inference_batch_rows == 264
    assert vector.inference_batch_rows > 100_000
    for model in (big, atari, vector):
        row_bytes = reward_model.INFERENCE_BATCH_BYTES // model.inference_batch_rows
        assert row_bytes >= 4 * 3 * np.prod(model.obs_shape)  # at least the float input of every member


def test_batched_inference_runs_in_budget_sized_batches_unless_told_otherwise(monkeypatch):
    model = fitted(RewardEnsemble(IMAGES, spaces.Discrete(6), n_members=3, seed=0))
    rng = np.random.default_rng(0)
    obs, act = rng.integers(0, 256, (2, 5, 84, 84, 4), dtype=np.uint8), np.zeros((2, 5), np.int64)
    calls: list[int] = []
    model.net.register_forward_hook(lambda module, args, out: calls.append(out.shape[1]))
    whole = model.predict_members(obs, act)
    assert calls == [10]
    row_bytes = reward_model.INFERENCE_BATCH_BYTES // model.inference_batch_rows
    monkeypatch.setattr(reward_model, "INFERENCE_BATCH_BYTES", 1)
    assert model.inference_batch_rows == 1  # never less than a row
    monkeypatch.setattr(reward_model, "INFERENCE_BATCH_BYTES", 4 * row_bytes)
    calls.clear()
    np.testing.assert_allclose(model.predict_members(obs, act), whole, rtol=1e-5, atol=1e-6)
    assert calls == [4, 4, 2]
    calls.clear()
    np.testing.assert_allclose(model.predict(obs, act, batch_size=3), whole.mean(0), rtol=1e-5, atol=1e-6)
    assert calls == [3, 3, 3, 1]  # an explicit batch size wins
    with pytest.raises(ValueError, match="batch_size must be a positive number of rows"):
        model.predict_members(obs, act, batch_size=0)
