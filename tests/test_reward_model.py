import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from model_helpers import BOX_ACT, IMAGES, VEC_OBS, fitted

from gym_prefs import RewardEnsemble, batched_inference, reward_model
from gym_prefs.folded_inference import FOLDED_MAX_ROWS
from gym_prefs.model_inputs import InputEncoder
from gym_prefs.networks import EnsembleCNN, EnsembleMLP
from gym_prefs.spaces import UnsupportedSpaceError


class LinearMember(torch.nn.Module):
    def __init__(self, obs_shape, act_dim):
        super().__init__()
        self.fc = torch.nn.Linear(obs_shape[0] + act_dim, 1)

    def forward(self, obs, act):
        return self.fc(torch.cat([obs, act], dim=-1)).squeeze(-1)


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


def test_fast_prediction_path_follows_weights_loaded_drawn_or_replaced():
    model = fitted(RewardEnsemble(VEC_OBS, BOX_ACT, seed=0))
    other = fitted(RewardEnsemble(VEC_OBS, BOX_ACT, seed=1))
    obs, act = np.random.default_rng(0).normal(size=(5, 5)), np.zeros((5, 2))
    first = model.predict(obs, act)  # folds the weights of seed 0
    model.load_state_dict(other.state_dict())
    np.testing.assert_array_equal(model.predict(obs, act), other.predict(obs, act))
    model.reset_parameters(seed=0)
    model.fitted.fill_(True)
    np.testing.assert_array_equal(model.predict(obs, act), first)
    with torch.no_grad():  # the new networks' weights, changed in place, must be seen too
        next(model.net.parameters()).add_(0.1)
    np.testing.assert_allclose(model.predict(obs, act), model.predict_members(obs, act).mean(0), rtol=1e-5, atol=1e-6)
    # half() and float() replace every tensor (rounded to half precision) rather than change it
    # in place: the folded copy must come from the new ones.
    model.half().float()
    np.testing.assert_allclose(model.predict(obs, act), model.predict_members(obs, act).mean(0), rtol=1e-5, atol=1e-6)


def test_only_batches_of_up_to_folded_max_rows_take_the_fast_path():
    model = fitted(RewardEnsemble(VEC_OBS, BOX_ACT, seed=0))
    calls: list[int] = []
    model.net.register_forward_hook(lambda module, args, out: calls.append(out.shape[1]))
    rng = np.random.default_rng(0)
    for rows in (1, FOLDED_MAX_ROWS, FOLDED_MAX_ROWS + 1):
        obs, act = rng.normal(size=(rows, 5)), np.zeros((rows, 2))
        np.testing.assert_allclose(
            model.predict(obs, act), model.predict_members(obs, act).mean(0), rtol=1e-4, atol=1e-5
        )
    # predict_members always runs in torch; predict only for the batch over the limit.
    assert calls == [1, FOLDED_MAX_ROWS, FOLDED_MAX_ROWS + 1, FOLDED_MAX_ROWS + 1]


# ---------------------------------------------------------------- memory of batched inference
def test_default_inference_batch_comes_from_a_byte_budget():
    big = RewardEnsemble(spaces.Box(0, 255, (512, 512, 3), np.uint8), spaces.Discrete(4), n_members=3)
    atari = RewardEnsemble(IMAGES, spaces.Discrete(6), n_members=3)
    vector = RewardEnsemble(VEC_OBS, BOX_ACT, n_members=3)
    assert big.inference_batch_rows == 9  # was 4096 rows: about 96 GB
    assert atari.inference_batch_rows == 264
    assert vector.inference_batch_rows > 100_000
    for model in (big, atari, vector):
        row_bytes = batched_inference.INFERENCE_BATCH_BYTES // model.inference_batch_rows
        assert row_bytes >= 4 * 3 * np.prod(model.obs_shape)  # at least the float input of every member


def test_batched_inference_runs_in_budget_sized_batches_unless_told_otherwise(monkeypatch):
    model = fitted(RewardEnsemble(IMAGES, spaces.Discrete(6), n_members=3, seed=0))
    rng = np.random.default_rng(0)
    obs, act = rng.integers(0, 256, (2, 5, 84, 84, 4), dtype=np.uint8), np.zeros((2, 5), np.int64)
    calls: list[int] = []
    model.net.register_forward_hook(lambda module, args, out: calls.append(out.shape[1]))
    whole = model.predict_members(obs, act)
    assert calls == [10]
    row_bytes = batched_inference.INFERENCE_BATCH_BYTES // model.inference_batch_rows
    # The budget is read where it is defined, at every call.
    monkeypatch.setattr(batched_inference, "INFERENCE_BATCH_BYTES", 1)
    assert model.inference_batch_rows == 1  # never less than a row
    monkeypatch.setattr(batched_inference, "INFERENCE_BATCH_BYTES", 4 * row_bytes)
    calls.clear()
    np.testing.assert_allclose(model.predict_members(obs, act), whole, rtol=1e-5, atol=1e-6)
    assert calls == [4, 4, 2]
    calls.clear()
    np.testing.assert_allclose(model.predict(obs, act, batch_size=3), whole.mean(0), rtol=1e-5, atol=1e-6)
    assert calls == [3, 3, 3, 1]  # an explicit batch size wins
    with pytest.raises(ValueError, match="batch_size must be a positive number of rows"):
        model.predict_members(obs, act, batch_size=0)


def test_the_inference_constants_are_still_importable_from_reward_model():
    assert reward_model.INFERENCE_BATCH_BYTES == batched_inference.INFERENCE_BATCH_BYTES
    assert reward_model.INFERENCE_ACTIVATION_FACTOR == batched_inference.INFERENCE_ACTIVATION_FACTOR


def test_the_row_estimate_counts_hidden_layers_of_the_built_in_mlp_only():
    # 4 bytes x members x the widest layer x the activation factor.
    factor = batched_inference.INFERENCE_ACTIVATION_FACTOR
    assert batched_inference.inference_row_bytes((5,), 2, 3, (64, 64)) == 4 * 3 * 64 * factor
    assert batched_inference.inference_row_bytes((5,), 2, 3) == 4 * 3 * 7 * factor
    assert batched_inference.inference_row_bytes((4, 84, 84), 0, 3) == 4 * 3 * 4 * 84 * 84 * factor
    wide = RewardEnsemble(VEC_OBS, BOX_ACT, hidden_sizes=(1000,), n_members=3)
    custom = RewardEnsemble(VEC_OBS, BOX_ACT, hidden_sizes=(1000,), n_members=3, member_factory=LinearMember)
    assert wide.inference_batch_rows == batched_inference.INFERENCE_BATCH_BYTES // (4 * 3 * 1000 * factor)
    assert custom.inference_batch_rows == batched_inference.INFERENCE_BATCH_BYTES // (4 * 3 * 5 * factor)


def test_a_linear_reward_without_hidden_layers_predicts_on_both_paths():
    # hidden_sizes=() made the row estimate call max() on a single number (TypeError), and the
    # folded path expected a first hidden layer.
    model = fitted(RewardEnsemble(VEC_OBS, BOX_ACT, hidden_sizes=(), use_actions=True, seed=0))
    rng = np.random.default_rng(0)
    obs, act = rng.normal(size=(300, 5)), rng.uniform(-1, 1, (300, 2))
    model.set_input_stats(obs * 2 + 1, act * 3)
    model.calibrate(obs, act)
    members = model.predict_members(obs, act)
    np.testing.assert_allclose(members.std(axis=1), 1.0, rtol=1e-3)
    np.testing.assert_allclose(model.predict(obs[:7], act[:7]), members[:, :7].mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.predict(obs, act), members.mean(0), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- inputs
def test_saved_keys_and_shapes_stay_as_files_hold_them():
    # Files written earlier load only into a model with these buffers and shapes; their order
    # keeps to_bytes() as it was.
    buffers = ["obs_mean", "obs_std", "act_mean", "act_std", "offset", "scale", "fitted"]
    mlp = RewardEnsemble(VEC_OBS, BOX_ACT, use_actions=True)
    shapes = {k: tuple(v.shape) for k, v in mlp.state_dict().items()}
    assert list(shapes)[: len(buffers)] == buffers
    assert [shapes[name] for name in buffers] == [(5,), (5,), (2,), (2,), (3,), (3,), ()]
    assert list(shapes)[len(buffers) :] == [
        f"net.{name}"
        for name in ("hidden.0.weight", "hidden.0.bias", "hidden.1.weight", "hidden.1.bias", "out.weight", "out.bias")
    ]
    cnn = RewardEnsemble(IMAGES, spaces.Discrete(6), n_members=2)
    shapes = {k: tuple(v.shape) for k, v in cnn.state_dict().items()}
    assert list(shapes)[: len(buffers)] == buffers
    assert [shapes[name] for name in buffers] == [(1,), (1,), (0,), (0,), (2,), (2,), ()]


def test_reset_parameters_forgets_the_input_statistics():
    model = RewardEnsemble(VEC_OBS, BOX_ACT, use_actions=True, seed=0)
    rng = np.random.default_rng(0)
    model.set_input_stats(rng.normal(3, 2, (50, 5)), rng.uniform(0, 1, (50, 2)))
    assert not torch.equal(model.obs_mean, torch.zeros(5)) and not torch.equal(model.act_std, torch.ones(2))
    model.reset_parameters(seed=0)
    fresh = RewardEnsemble(VEC_OBS, BOX_ACT, use_actions=True, seed=0)
    for (name, p), (_, q) in zip(model.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(p, q), name


def test_input_statistics_standardise_vectors_and_continuous_actions_only():
    rng = np.random.default_rng(0)
    obs, act = rng.normal(3, 2, (2, 50, 5)), rng.uniform(0, 1, (2, 50, 2))
    model = RewardEnsemble(VEC_OBS, BOX_ACT, use_actions=True)
    model.set_input_stats(obs, act)
    obs_t, act_t = model.preprocess(obs, act)
    assert tuple(obs_t.shape) == (2, 50, 5) and tuple(act_t.shape) == (2, 50, 2)
    np.testing.assert_allclose(obs_t.reshape(-1, 5).mean(0).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(act_t.reshape(-1, 2).std(0, unbiased=False).numpy(), 1, rtol=1e-4)
    discrete = RewardEnsemble(VEC_OBS, spaces.Discrete(3), use_actions=True)
    images = RewardEnsemble(IMAGES, BOX_ACT)
    assert discrete._inputs.fitted_stats(obs, np.zeros((2, 50), int)).keys() == {"obs_mean", "obs_std"}
    assert images._inputs.fitted_stats(np.zeros((3, 84, 84, 4), np.uint8), np.zeros((3, 2))) == {}


def test_the_encoder_masks_image_rows_and_reads_channel_last_images():
    encoder = InputEncoder(IMAGES, spaces.Discrete(6), image_mask_rows=[(0, 10)])
    assert (encoder.network, encoder.obs_shape, encoder.act_dim) == ("cnn", (4, 84, 84), 0)
    images = np.full((2, 3, 84, 84, 4), 255, np.uint8)
    images[..., 0] = 0  # the first channel of a channel-last image
    obs_t, act_t = encoder.encode(images, np.zeros((2, 3), int), encoder.initial_stats())
    assert tuple(obs_t.shape) == (2, 3, 4, 84, 84) and tuple(act_t.shape) == (2, 3, 0)
    assert obs_t[:, :, 0].max() == 0 and obs_t[:, :, 1:, 10:].min() == 1
    assert obs_t[:, :, :, :10].max() == 0  # masked rows, every channel


def test_the_encoder_refuses_what_no_network_reads():
    with pytest.raises(ValueError, match="network must be 'auto', 'mlp' or 'cnn'"):
        InputEncoder(VEC_OBS, BOX_ACT, network="rnn")
    with pytest.raises(ValueError, match="network='cnn' needs"):
        InputEncoder(VEC_OBS, BOX_ACT, network="cnn")
    with pytest.raises(UnsupportedSpaceError, match="FlattenObservation"):
        InputEncoder(spaces.Dict({"x": VEC_OBS}), BOX_ACT)


@pytest.mark.parametrize("training", [False, True])
def test_the_cnn_gives_shared_images_the_same_rewards_as_a_copy_per_member(training):
    torch.manual_seed(0)
    net = EnsembleCNN(3, (4, 84, 84), act_dim=2, dropout=0.0).train(training)
    images, actions = torch.rand(6, 4, 84, 84), torch.rand(6, 2)
    shared = net(images, actions)  # the dense first convolution
    copies = net(images.expand(3, -1, -1, -1, -1), actions.expand(3, -1, -1))  # the grouped one
    assert shared.shape == (3, 6)
    torch.testing.assert_close(shared, copies, rtol=1e-5, atol=1e-6)
