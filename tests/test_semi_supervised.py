"""SURF's temporal cropping and pseudo-labels (Park et al. 2022)."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.logger import configure

from gym_prefs import LearnedReward, PreferenceCallback, RewardEnsemble, RewardTrainer
from gym_prefs.comparisons import Comparisons
from gym_prefs.records import SegmentPairs
from gym_prefs.semi_supervised import crop_pairs, pseudo_labels, unlabelled_pairs

OBS = spaces.Box(-1, 1, (4,))
ACT = spaces.Box(-1, 1, (1,))


def test_crops_keep_both_segments_the_same_length_and_inside_their_segment():
    # Each step's observation names its segment and its place: 100 * segment + step.
    pairs, length = 50, 12
    ids = np.arange(pairs * 2).reshape(pairs, 2, 1) * 100 + np.arange(length)
    obs, actions = ids[..., None].astype(np.float32), ids.copy()
    lengths = set()
    for seed in range(40):
        cropped_obs, cropped_actions = crop_pairs(obs, actions, crop=4, rng=np.random.default_rng(seed))
        kept = cropped_obs.shape[2]
        lengths.add(kept)
        assert cropped_obs.shape == (pairs, 2, kept, 1) and cropped_actions.shape == (pairs, 2, kept)
        np.testing.assert_array_equal(cropped_obs[..., 0], cropped_actions)  # steps stay with their actions
        segment, step = cropped_actions // 100, cropped_actions % 100
        assert np.all(segment == np.arange(pairs * 2).reshape(pairs, 2, 1))  # never another segment's steps
        assert np.all(np.diff(step, axis=-1) == 1) and step.min() >= 0 and step.max() < length  # one stretch
    assert lengths == set(range(8, 13))
    shortest = next(
        cropped
        for seed in range(40)
        if (cropped := crop_pairs(obs, actions, 4, np.random.default_rng(seed))[1]).shape[2] == 8
    )
    assert len(np.unique(shortest[:, :, 0] % 100)) == 5  # each segment at its own offset, all 5 used
    np.testing.assert_array_equal(crop_pairs(obs, actions, 0, np.random.default_rng(0))[0], obs)
    with pytest.raises(ValueError, match="crop must be in"):
        crop_pairs(obs, actions, crop=length, rng=np.random.default_rng(0))


def test_only_confident_pairs_get_a_pseudo_label_on_the_preferred_side():
    prob_first = torch.tensor([0.995, 0.5, 0.96, 0.04, 0.005, 0.999])
    labels, mask = pseudo_labels(prob_first, threshold=0.99)
    assert mask.tolist() == [True, False, False, False, True, True]
    assert labels[mask].tolist() == [1.0, 0.0, 1.0]


def test_unlabelled_pairs_pair_segments_of_different_labelled_pairs():
    rows = np.array([2, 7, 11, 40])
    pair_rows, sides = unlabelled_pairs(rows, 1000, np.random.default_rng(0))
    assert np.all(pair_rows[:, 0] != pair_rows[:, 1]) and set(pair_rows.ravel()) == set(rows.tolist())
    assert set(sides.ravel()) == {0, 1}
    with pytest.raises(ValueError, match="at least two"):
        unlabelled_pairs(rows[:1], 3, np.random.default_rng(0))


def _labelled(count, seed=0, length=10):
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-1, 1, (count, 2, length, 4)).astype(np.float32)
    actions = np.zeros((count, 2, length, 1), np.float32)
    better = obs[..., 0].sum(-1)
    data = Comparisons(OBS, ACT, length)
    data.add(SegmentPairs(obs, actions), (better[:, 0] > better[:, 1]).astype(np.float32))
    return data


def test_the_unlabelled_loss_counts_only_the_pairs_above_the_threshold():
    data = _labelled(64)
    model = RewardEnsemble(OBS, ACT, n_members=3, seed=0)
    trainer = RewardTrainer(model, seed=0, batch_size=16)
    trainer.fit(data, epochs=20)
    model.train()
    rows = np.arange(len(data))
    state = trainer.rng.bit_generator.state
    loss, share = trainer._pseudo_label_loss(data, rows, 16, threshold=0.9)
    assert 0 < share < 1
    # Again, by hand: the same unlabelled pairs, each member's loss on the confident ones.
    trainer.rng.bit_generator.state = state
    pair_rows, sides = unlabelled_pairs(rows, 4 * 16, trainer.rng)
    obs, actions = data.obs[pair_rows, sides], data.actions[pair_rows, sides]
    raw = trainer._segment_returns(np.broadcast_to(obs, (3, *obs.shape)), np.broadcast_to(actions, (3, *actions.shape)))
    prob = torch.sigmoid(raw[..., 0] - raw[..., 1]).mean(0)
    confident = torch.maximum(prob, 1 - prob) > 0.9
    assert float(confident.float().mean()) == pytest.approx(share)
    expected = (
        trainer._loss(raw[:, confident], (prob[confident] > 0.5).float().expand(3, -1)) * confident.float().mean()
    )
    torch.testing.assert_close(loss, expected)
    # Above every confidence there is: nothing is pseudo-labelled and the loss is zero.
    loss, share = trainer._pseudo_label_loss(data, rows, 16, threshold=1 - 1e-12)
    assert share == 0 and float(loss.detach().abs().sum()) == 0


def test_a_run_with_cropping_and_pseudo_labels_logs_the_pseudo_labelled_share(tmp_path):
    env = LearnedReward(gym.make("Pendulum-v1"))
    prefs = PreferenceCallback(
        "oracle", total_labels=30, segment_length=10, crop_steps=3, pseudo_label_threshold=0.9, seed=0
    )
    algo = PPO("MlpPolicy", env, n_steps=256, batch_size=64, policy_kwargs={"net_arch": [16]}, seed=0)
    algo.set_logger(configure(str(tmp_path), ["csv"]))
    algo.learn(1024, callback=prefs)
    assert prefs.num_labels == 30
    progress = (tmp_path / "progress.csv").read_text()
    assert "reward_model/pseudo_labelled" in progress.splitlines()[0]


def test_crops_as_long_as_the_segments_are_refused_before_anything_is_made(tmp_path):
    with pytest.raises(ValueError, match="crop_steps"):
        PreferenceCallback("oracle", segment_length=10, crop_steps=10)
    prefs = PreferenceCallback("oracle", crop_steps=30, store=str(tmp_path / "p.db"))  # Pendulum: 30 steps
    algo = PPO("MlpPolicy", LearnedReward(gym.make("Pendulum-v1")), n_steps=256, batch_size=64)
    with pytest.raises(ValueError, match=r"crop_steps \(30\) must be less than the segments' 30 steps"):
        algo.learn(256, callback=prefs)
    assert not (tmp_path / "p.db").exists()
    with pytest.raises(ValueError, match="pseudo_label_threshold"):
        PreferenceCallback("oracle", pseudo_label_threshold=1.0)
