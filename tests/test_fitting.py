import numpy as np
import pytest
from gymnasium import spaces

from gym_prefs import Comparisons, RewardEnsemble, RewardTrainer, SegmentPairs, SyntheticOracle

OBS = spaces.Box(-2, 2, (4,))
ACT = spaces.Box(-1, 1, (2,))
LENGTH = 10


def true_reward(obs: np.ndarray, act: np.ndarray) -> np.ndarray:
    """A known reward: move along obs[0], keep obs[1] near zero, spend little action."""
    return obs[..., 0] - obs[..., 1] ** 2 - 0.5 * (act**2).sum(-1)


def labelled_pairs(n: int, seed: int, oracle: SyntheticOracle | None = None):
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-2, 2, (n, 2, LENGTH, 4)).astype(np.float32)
    act = rng.uniform(-1, 1, (n, 2, LENGTH, 2)).astype(np.float32)
    rewards = true_reward(obs, act)
    oracle = oracle or SyntheticOracle()
    labels = oracle.label(rewards[:, 0], rewards[:, 1])
    mu = np.array([{"first": 1.0, "second": 0.0, "equal": 0.5}[label] for label in labels], dtype=np.float32)
    return obs, act, mu, rewards


def held_out_accuracy(model: RewardEnsemble, seed: int = 99) -> float:
    obs, act, _, rewards = labelled_pairs(500, seed)
    predicted = model.predict(obs, act).sum(-1)
    truth = rewards.sum(-1)
    return float(np.mean((predicted[:, 0] > predicted[:, 1]) == (truth[:, 0] > truth[:, 1])))


def test_fitted_ensemble_orders_held_out_pairs_like_the_true_reward():
    model = RewardEnsemble(OBS, ACT, use_actions=True, seed=0)
    data = Comparisons(OBS, ACT, LENGTH)
    obs, act, mu, _ = labelled_pairs(600, seed=1)
    data.add(SegmentPairs(obs, act), mu)
    trainer = RewardTrainer(model, seed=0)
    assert not model.is_fitted
    report = trainer.fit(data, epochs=60)
    assert model.is_fitted
    assert held_out_accuracy(model) >= 0.90
    assert report.accuracy >= 0.85
    assert report.pairs == 600
    assert np.isfinite(report.train_loss) and np.isfinite(report.val_loss)


def test_equal_labels_teach_equal_returns():
    model = RewardEnsemble(OBS, ACT, use_actions=True, seed=0)
    data = Comparisons(OBS, ACT, LENGTH)
    obs, act, _, _ = labelled_pairs(200, seed=2)
    data.add(SegmentPairs(obs, act), np.full(200, 0.5, dtype=np.float32))
    RewardTrainer(model, seed=0).fit(data, epochs=30)
    # Judge the outputs as fitted: calibration would stretch a near-constant reward to std 1.
    model.offset.zero_()
    model.scale.fill_(1.0)
    returns = model.predict_members(obs, act).sum(-1)  # [members, pairs, 2]
    gap = np.abs(returns[..., 0] - returns[..., 1]).mean()
    spread = np.abs(returns).mean()
    assert gap < 0.5 * spread


def test_noisy_labels_still_rank_well():
    model = RewardEnsemble(OBS, ACT, use_actions=True, seed=0)
    data = Comparisons(OBS, ACT, LENGTH)
    obs, act, mu, _ = labelled_pairs(800, seed=3, oracle=SyntheticOracle(mistake_rate=0.1, seed=0))
    data.add(SegmentPairs(obs, act), mu)
    RewardTrainer(model, seed=0).fit(data, epochs=60)
    assert held_out_accuracy(model) >= 0.85


def test_l2_rises_when_the_model_overfits_a_few_labels():
    model = RewardEnsemble(OBS, ACT, use_actions=True, hidden_sizes=(128, 128), seed=0)
    data = Comparisons(OBS, ACT, LENGTH)
    obs, act, mu, _ = labelled_pairs(30, seed=4)
    data.add(SegmentPairs(obs, act), mu)
    trainer = RewardTrainer(model, seed=0, l2=1e-6)
    report = trainer.fit(data, epochs=200)
    assert report.l2 > 1e-6 * 10


def test_l2_falls_when_validation_matches_training():
    model = RewardEnsemble(OBS, ACT, use_actions=True, seed=0)
    data = Comparisons(OBS, ACT, LENGTH)
    obs, act, mu, _ = labelled_pairs(400, seed=5)
    data.add(SegmentPairs(obs, act), mu)
    trainer = RewardTrainer(model, seed=0, l2=1.0)
    report = trainer.fit(data, epochs=20)
    assert report.l2 < 1.0


def test_members_train_on_different_bootstrap_samples():
    model = RewardEnsemble(OBS, ACT, use_actions=True, seed=0)
    data = Comparisons(OBS, ACT, LENGTH)
    obs, act, mu, _ = labelled_pairs(100, seed=6)
    data.add(SegmentPairs(obs, act), mu)
    RewardTrainer(model, seed=0).fit(data, epochs=10)
    members = model.predict_members(obs[:20], act[:20]).reshape(3, -1)
    assert not np.allclose(members[0], members[1])


def test_validation_split_is_stable_as_labels_arrive():
    data = Comparisons(OBS, ACT, LENGTH)
    obs, act, mu, _ = labelled_pairs(100, seed=7)
    data.add(SegmentPairs(obs[:50], act[:50]), mu[:50])
    first = data.validation_mask(1 / np.e).copy()
    data.add(SegmentPairs(obs[50:], act[50:]), mu[50:])
    np.testing.assert_array_equal(data.validation_mask(1 / np.e)[:50], first)
    assert 0.25 < data.validation_mask(1 / np.e).mean() < 0.5


def test_comparisons_keep_only_the_newest():
    data = Comparisons(OBS, ACT, LENGTH, max_size=30)
    obs, act, mu, _ = labelled_pairs(50, seed=8)
    data.add(SegmentPairs(obs, act), mu)
    assert len(data) == 30
    np.testing.assert_array_equal(data.ids, np.arange(20, 50))
    np.testing.assert_array_equal(data.obs, obs[20:])


def test_fit_without_labels_is_an_error():
    model = RewardEnsemble(OBS, ACT)
    with pytest.raises(ValueError, match="no labelled pairs"):
        RewardTrainer(model).fit(Comparisons(OBS, ACT, LENGTH), epochs=1)


def test_cnn_learns_which_images_are_better():
    images = spaces.Box(0, 255, (48, 48, 1), np.uint8)
    model = RewardEnsemble(images, spaces.Discrete(2), dropout=0.0, seed=0)
    rng = np.random.default_rng(0)
    level = rng.integers(0, 256, (160, 2, 4))
    obs = np.broadcast_to(level[..., None, None, None], (160, 2, 4, 48, 48, 1)).astype(np.uint8)
    mu = (level[:, 0].sum(-1) > level[:, 1].sum(-1)).astype(np.float32)
    data = Comparisons(images, spaces.Discrete(2), 4)
    data.add(SegmentPairs(obs, np.zeros((160, 2, 4), dtype=np.int64)), mu)
    RewardTrainer(model, seed=0, lr=3e-3).fit(data, epochs=25)
    test_level = rng.integers(0, 256, (100, 2, 4))
    test_obs = np.broadcast_to(test_level[..., None, None, None], (100, 2, 4, 48, 48, 1)).astype(np.uint8)
    predicted = model.predict(test_obs, np.zeros((100, 2, 4), dtype=np.int64)).sum(-1)
    truth = test_level.sum(-1)
    assert np.mean((predicted[:, 0] > predicted[:, 1]) == (truth[:, 0] > truth[:, 1])) >= 0.85


def test_a_fit_stops_at_its_cap_on_gradient_steps_mid_epoch_if_need_be():
    data = Comparisons(OBS, ACT, LENGTH)
    obs, act, mu, _ = labelled_pairs(40, seed=1)
    data.add(SegmentPairs(obs, act), mu)
    uncapped = RewardTrainer(RewardEnsemble(OBS, ACT, seed=0), batch_size=8, seed=0).fit(data, epochs=3)
    per_epoch = uncapped.steps // 3
    assert uncapped.epochs == 3 and per_epoch >= 3
    capped = RewardTrainer(RewardEnsemble(OBS, ACT, seed=0), batch_size=8, seed=0).fit(
        data, epochs=50, max_steps=per_epoch + 1
    )
    assert capped.steps == per_epoch + 1 and capped.epochs == 2  # the second epoch cut short
    same = RewardTrainer(RewardEnsemble(OBS, ACT, seed=0), batch_size=8, seed=0).fit(data, epochs=3, max_steps=10**6)
    assert (same.steps, same.train_loss) == (uncapped.steps, uncapped.train_loss)  # a cap not reached changes nothing


def test_a_capped_fit_validates_on_as_many_pairs_as_it_trains_on_and_only_once_an_epoch():
    obs, act, mu, _ = labelled_pairs(600, seed=0)
    data = Comparisons(OBS, ACT, LENGTH)
    data.add(SegmentPairs(obs, act), mu)
    trainer = RewardTrainer(RewardEnsemble(OBS, ACT, seed=0), batch_size=8, seed=0)
    passes = []
    evaluate = trainer.evaluate

    def counted(data, rows):
        passes.append(len(rows))
        return evaluate(data, rows)

    trainer.evaluate = counted
    report = trainer.fit(data, epochs=100, max_steps=5)
    assert passes == [40]  # one (partial) epoch: 5 steps x 8 pairs; no second pass after the fit
    assert 0.0 <= report.accuracy <= 1.0 and np.isfinite(report.val_loss)
    passes.clear()
    trainer.fit(data, epochs=2)  # uncapped: the whole validation split, once an epoch
    assert len(passes) == 2 and passes[0] == int(data.validation_mask(trainer.val_fraction).sum())
