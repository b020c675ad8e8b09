import numpy as np
import pytest
from gymnasium import spaces

from gym_prefs.segments import SegmentPool, TransitionRecorder, steps_for_bytes

OBS = spaces.Box(-np.inf, np.inf, (2,))
ACT = spaces.Discrete(3)


def record(recorder: TransitionRecorder, steps: int, start: int = 0, done_every: int | None = None) -> None:
    n = recorder.n_envs
    for t in range(start, start + steps):
        obs = np.full((n, 2), t, dtype=np.float32)
        recorder.add(obs, np.full(n, t % 3), np.full(n, float(t)), np.zeros(n))
        if done_every and (t + 1) % done_every == 0:
            recorder.end_episodes(np.ones(n, dtype=bool))


def test_recorder_drains_in_order_and_forgets():
    rec = TransitionRecorder(OBS, ACT, n_envs=2, capacity=100)
    record(rec, 5)
    batch = rec.drain()
    assert batch.obs.shape == (5, 2, 2)
    assert batch.true_rewards[:, 0].tolist() == [0, 1, 2, 3, 4]
    assert len(rec.drain()) == 0


def test_recorder_is_bounded_and_counts_what_it_dropped():
    rec = TransitionRecorder(OBS, ACT, n_envs=1, capacity=10)
    record(rec, 25)
    batch = rec.drain()
    assert len(batch) == 10 and batch.dropped == 15
    assert batch.true_rewards[:, 0].tolist() == list(range(15, 25))


def test_segments_never_cross_episode_boundaries():
    rec = TransitionRecorder(OBS, ACT, n_envs=3, capacity=1000)
    record(rec, 100, done_every=7)
    pool = SegmentPool(OBS, ACT, n_streams=3, capacity=1000)
    pool.add(0, rec.drain())
    # 14 full episodes of 7 steps (2 per episode of length 6) + a 2-step tail (none): per env 14*2
    assert pool.num_segments(6) == 3 * 14 * 2
    segments = pool.sample(200, 6, np.random.default_rng(0))
    t = segments["true_rewards"]
    assert np.all(np.diff(t, axis=1) == 1)  # consecutive steps
    assert np.all(t[:, 0] // 7 == t[:, -1] // 7)  # one episode
    np.testing.assert_array_equal(segments["obs"][..., 0], t)
    np.testing.assert_array_equal(segments["actions"], t.astype(int) % 3)


def test_pool_keeps_the_most_recent_steps_per_env():
    pool = SegmentPool(OBS, ACT, n_streams=1, capacity=50)
    rec = TransitionRecorder(OBS, ACT, n_envs=1, capacity=1000)
    for chunk in range(4):
        record(rec, 30, start=30 * chunk)
        pool.add(0, rec.drain())
    segments = pool.sample(500, 5, np.random.default_rng(0))
    assert segments["true_rewards"].min() >= 70  # only the last 50 of 120 steps remain
    assert pool.num_segments(5) == 46
    recent = pool.recent(10)
    assert recent["true_rewards"].tolist() == list(range(110, 120))


def test_a_gap_from_dropped_steps_splits_segments():
    rec = TransitionRecorder(OBS, ACT, n_envs=1, capacity=10)
    pool = SegmentPool(OBS, ACT, n_streams=1, capacity=100)
    record(rec, 10)
    pool.add(0, rec.drain())
    record(rec, 15, start=10)  # 5 steps overflow the recorder and are lost
    pool.add(0, rec.drain())
    segments = pool.sample(300, 4, np.random.default_rng(0))
    assert np.all(np.diff(segments["true_rewards"], axis=1) == 1)
    assert pool.num_segments(4) == 7 + 7


def test_streams_stay_apart():
    pool = SegmentPool(OBS, ACT, n_streams=2, capacity=100)
    rec = TransitionRecorder(OBS, ACT, n_envs=1, capacity=100)
    record(rec, 20)
    pool.add(1, rec.drain())
    assert pool.written.tolist() == [0, 20]
    assert pool.num_segments(5) == 16


def test_no_long_enough_episode_is_a_clear_error():
    pool = SegmentPool(OBS, ACT, n_streams=1, capacity=100)
    rec = TransitionRecorder(OBS, ACT, n_envs=1, capacity=100)
    record(rec, 30, done_every=3)
    pool.add(0, rec.drain())
    with pytest.raises(ValueError, match="shorter segment_length"):
        pool.sample(1, 5, np.random.default_rng(0))


def test_memory_budget_in_steps():
    atari = spaces.Box(0, 255, (84, 84, 4), np.uint8)
    per_step = 84 * 84 * 4 + 8 + 4 + 4 + 8
    assert steps_for_bytes(atari, spaces.Discrete(6), 100 * per_step) == 100
