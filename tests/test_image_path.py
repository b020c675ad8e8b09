"""The image path: members' rewards kept from inference, stacked frames kept once, bounded pools."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from model_helpers import IMAGES, VEC_OBS, fitted

from gym_prefs import RewardEnsemble, VecLearnedReward
from gym_prefs.comparisons import Comparisons
from gym_prefs.fit_messages import NewLabels
from gym_prefs.frame_stacks import FrameStack, find_stack
from gym_prefs.publishing import true_reward_correlation
from gym_prefs.records import SegmentPairs
from gym_prefs.run_setup import make_pool
from gym_prefs.segments import SegmentPool, TransitionRecorder
from gym_prefs.selection import pair_disagreement, select_pairs

ACT = spaces.Discrete(3)


class _Frames(gym.Env):
    """Random 48x48 frames stacked by 4 along ``axis``: a frame-stacked image env, quickly."""

    def __init__(self, axis: int = 0):
        self.axis = axis
        shape = [48, 48]
        shape.insert(axis, 4)
        self.observation_space = spaces.Box(0, 255, tuple(shape), np.uint8)
        self.action_space = ACT
        self._rng = np.random.default_rng(0)

    def _obs(self):
        return np.stack(self._frames, axis=self.axis)

    def reset(self, *, seed=None, options=None):
        first = self._rng.integers(0, 256, (48, 48), dtype=np.uint8)
        self._frames = [first] * 4  # Gymnasium's FrameStackObservation pads with the first frame
        self._t = 0
        return self._obs(), {}

    def step(self, action):
        self._frames = [*self._frames[1:], self._rng.integers(0, 256, (48, 48), dtype=np.uint8)]
        self._t += 1
        return self._obs(), float(self._frames[-1].mean() / 255), self._t >= 40, False, {}


def _run(venv: VecLearnedReward, steps: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    venv.reset()
    for _ in range(steps):
        venv.step(rng.integers(0, 3, venv.num_envs))


@pytest.mark.parametrize("space", [IMAGES, VEC_OBS], ids=["cnn", "mlp"])
def test_members_rewards_kept_from_inference_equal_a_fresh_pass(space):
    from stable_baselines3.common.vec_env import DummyVecEnv

    class Env(gym.Env):
        observation_space, action_space = space, ACT

        def reset(self, *, seed=None, options=None):
            self._rng = np.random.default_rng(seed)
            return self.observation_space.sample(), {}

        def step(self, action):
            return self.observation_space.sample(), 1.0, False, False, {}

    model = fitted(RewardEnsemble(space, ACT, seed=0))
    venv = VecLearnedReward(DummyVecEnv([Env, Env, Env]), reward_model=model)
    _run(venv, 6)
    batch = venv.pop_transitions()
    fresh = model.predict_members(batch.obs, batch.actions)  # [members, steps, envs]
    assert batch.member_rewards is not None
    np.testing.assert_allclose(batch.member_rewards, fresh.transpose(1, 2, 0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(batch.learned_rewards, fresh.mean(0), rtol=1e-4, atol=1e-5)


def test_recorded_scores_pick_the_pairs_a_fresh_pass_would():
    model = fitted(RewardEnsemble(VEC_OBS, ACT, seed=0))
    obs = np.random.default_rng(1).normal(size=(400, 1, 5)).astype(np.float32)
    acts = np.zeros((400, 1), dtype=np.int64)
    pools = [SegmentPool(VEC_OBS, ACT, 1, 400, members=members) for members in (3, 0)]
    for pool in pools:
        recorder = TransitionRecorder(VEC_OBS, ACT, 1, 400, members=3)
        for t in range(400):
            learned, members = model.predict_with_members(obs[t], acts[t])
            recorder.add(obs[t], acts[t], np.zeros(1), learned, member_rewards=members.T)
        pool.add(0, recorder.drain())
    recorded, fresh = (select_pairs(pool, model, 8, 10, "disagreement", np.random.default_rng(5)) for pool in pools)
    np.testing.assert_array_equal(recorded.obs, fresh.obs)
    # and they are the pairs the members disagree on most, not random ones
    random = select_pairs(pools[1], model, 8, 10, "random", np.random.default_rng(5))
    assert pair_disagreement(model, recorded.obs, recorded.actions).min() > np.median(
        pair_disagreement(model, random.obs, random.actions)
    )


def test_steps_rewarded_before_the_first_fit_are_asked_about_last():
    model = RewardEnsemble(VEC_OBS, ACT, seed=0)
    pool = SegmentPool(VEC_OBS, ACT, 1, 200, members=3)
    recorder = TransitionRecorder(VEC_OBS, ACT, 1, 200, members=3)
    obs = np.random.default_rng(2).normal(size=(200, 1, 5)).astype(np.float32)
    for t in range(200):
        if t == 100:
            fitted(model)
        learned, members = model.predict_with_members(obs[t], np.zeros(1, np.int64))
        recorder.add(obs[t], np.zeros(1, np.int64), np.zeros(1), learned, member_rewards=members.T)
    pool.add(0, recorder.drain())
    chosen = select_pairs(pool, model, 5, 10, "disagreement", np.random.default_rng(0))
    first_steps = chosen.obs[:, :, 0, 0]
    unscored = obs[:100, 0, 0]
    assert not np.isin(first_steps, unscored).any()


def test_true_reward_correlation_reads_the_rewards_the_agent_was_given():
    model = fitted(RewardEnsemble(VEC_OBS, ACT, seed=0))
    pool = SegmentPool(VEC_OBS, ACT, 1, 100, members=3)
    recorder = TransitionRecorder(VEC_OBS, ACT, 1, 100, members=3)
    rng = np.random.default_rng(0)
    for _ in range(50):
        learned = rng.normal(size=1).astype(np.float32)
        recorder.add(rng.normal(size=(1, 5)), np.zeros(1), 2 * learned + 1, learned, member_rewards=np.zeros((1, 3)))
    pool.add(0, recorder.drain())
    assert true_reward_correlation(model, pool) == pytest.approx(1.0)
    recorder.add(rng.normal(size=(1, 5)), np.zeros(1), np.ones(1), np.zeros(1), member_rewards=np.full((1, 3), np.nan))
    pool.add(0, recorder.drain())  # a step from before any fit is left out
    assert true_reward_correlation(model, pool) == pytest.approx(1.0)


@pytest.mark.parametrize("axis", [0, 2], ids=["FrameStackObservation", "VecFrameStack"])
def test_restacked_frames_equal_the_originals(axis):
    from stable_baselines3.common.vec_env import DummyVecEnv

    venv = VecLearnedReward(DummyVecEnv([lambda: _Frames(axis)] * 2))
    _run(venv, 100)
    pool = SegmentPool(venv.observation_space, ACT, 2, 100)
    pool.add(0, venv.pop_transitions())
    pairs = pool.sample(60, 12, np.random.default_rng(0))
    segments = SegmentPairs(pairs["obs"].reshape(30, 2, 12, *pairs["obs"].shape[2:]), np.zeros((30, 2, 12), int))
    assert find_stack(segments.obs, obs_ndim=3) == FrameStack(axis, 4)
    data = Comparisons(venv.observation_space, ACT, segment_length=12)
    data.add(segments, np.ones(30))
    assert data.stack == FrameStack(axis, 4)
    assert data.stored_obs.shape[2] == 12 + 3  # each frame once
    np.testing.assert_array_equal(data.obs, segments.obs)
    obs, _ = data.sample_steps(50, np.random.default_rng(0))
    assert all((step == segments.obs).all(axis=(-3, -2, -1)).any() for step in obs)
    # the fit worker gets frames and gives back the same observations
    copy = Comparisons(venv.observation_space, ACT, segment_length=12)
    message = NewLabels.since(data, first_id=0)
    assert message.stack == data.stack and message.obs.shape == data.stored_obs.shape
    message.add_to(copy)
    np.testing.assert_array_equal(copy.obs, segments.obs)


def test_stacks_that_do_not_slide_are_stored_whole_and_exact():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (4, 2, 13, 16, 16), dtype=np.uint8)
    sliding = np.ascontiguousarray(FrameStack(0, 4).restack(frames, obs_ndim=3))
    space = spaces.Box(0, 255, (4, 16, 16), np.uint8)
    data = Comparisons(space, ACT, segment_length=10)
    data.add(SegmentPairs(sliding, np.zeros((4, 2, 10), int)), np.ones(4))
    assert data.stack is not None
    jumbled = rng.integers(0, 256, (3, 2, 10, 4, 16, 16), dtype=np.uint8)
    data.add(SegmentPairs(jumbled, np.zeros((3, 2, 10), int)), np.zeros(3))
    assert data.stack is None
    np.testing.assert_array_equal(data.obs, np.concatenate([sliding, jumbled]))
    rgb = spaces.Box(0, 255, (16, 16, 3), np.uint8)
    colours = Comparisons(rgb, ACT, segment_length=10)
    colours.add(
        SegmentPairs(rng.integers(0, 256, (2, 2, 10, 16, 16, 3), dtype=np.uint8), np.zeros((2, 2, 10), int)), np.ones(2)
    )
    assert colours.stack is None


def test_labels_of_stacked_frames_take_a_quarter_of_the_memory_and_stay_bounded():
    space = spaces.Box(0, 255, (4, 84, 84), np.uint8)
    frames = np.random.default_rng(0).integers(0, 256, (50, 2, 28, 84, 84), dtype=np.uint8)
    pairs = SegmentPairs(FrameStack(0, 4).restack(frames, obs_ndim=3), np.zeros((50, 2, 25), int))
    data = Comparisons(space, ACT, segment_length=25, max_size=120)
    for _ in range(10):
        data.add(pairs, np.ones(50))
    assert len(data) == 120
    whole = 120 * pairs.obs[0].nbytes
    assert data.stored_obs.nbytes <= 0.3 * whole
    assert data._obs.nbytes <= 2 * 0.3 * whole + 50 * frames[0].nbytes  # what is reserved, too


@pytest.mark.parametrize("shape", [(84, 84, 4), (210, 160, 3)])
def test_pool_memory_is_bounded_for_images(shape):
    space = spaces.Box(0, 255, shape, np.uint8)
    budget = 64 * 2**20
    pool = make_pool(space, ACT, n_envs=16, pool_size=10**6, pool_bytes=budget, clip_spec=None, members=3)
    assert pool.nbytes <= budget
    assert pool.capacity * 16 * int(np.prod(shape)) >= 0.9 * budget  # the budget is used for observations
    recorder = TransitionRecorder(space, ACT, 16, 2 * pool.capacity, members=3)
    frame = np.zeros((16, *shape), np.uint8)
    for _ in range(2 * pool.capacity):
        recorder.add(frame, np.zeros(16, int), np.zeros(16), np.zeros(16), member_rewards=np.zeros((16, 3)))
    pool.add(0, recorder.drain())
    assert pool.nbytes <= budget and pool.num_segments(25) > 0
