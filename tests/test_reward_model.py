import pickle

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch import nn

from gym_prefs import RewardEnsemble
from gym_prefs.networks import EnsembleCNN, EnsembleMLP, ModuleEnsemble

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
    payload = torch.load(path, weights_only=True)
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
