from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecFrameStack, VecNormalize

from gym_prefs import LearnedReward, RewardEnsemble, UnsupportedSpaceError, VecLearnedReward
from gym_prefs.atari import HideEpisodeEnds
from gym_prefs.reward_core import RewardCore
from gym_prefs.segments import SegmentPool
from gym_prefs.wrappers import (
    EPISODE_ENDED_KEY,
    EPISODE_RETURNS_KEY,
    LEARNED_RETURN_KEY,
    LENGTH_KEY,
    TRUE_RETURN_KEY,
    TRUE_REWARD_KEY,
)
from tests.conftest import DictObsEnv, TinyImageEnv


def fitted_model(env) -> RewardEnsemble:
    model = RewardEnsemble(env.observation_space, env.action_space, seed=0)
    model.fitted.fill_(True)
    return model


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "CartPole-v1", "MountainCarContinuous-v0"])
def test_reward_is_replaced_and_true_reward_goes_to_info(env_id):
    base = gym.make(env_id)
    model = fitted_model(base)
    env = LearnedReward(gym.make(env_id), reward_model=model)
    assert env.observation_space == base.observation_space
    assert env.action_space == base.action_space
    reference = gym.make(env_id)
    obs, _ = env.reset(seed=3)
    reference.reset(seed=3)
    for _ in range(20):
        action = env.action_space.sample()
        expected_learned = float(model.predict(obs[None], np.asarray(action)[None])[0])
        obs, reward, terminated, truncated, info = env.step(action)
        _, true_reward, *_ = reference.step(action)
        assert reward == pytest.approx(expected_learned)
        assert info["true_reward"] == pytest.approx(true_reward)
        assert reward != pytest.approx(true_reward)
        if terminated or truncated:
            break


def test_reward_is_zero_before_the_first_fit():
    env = LearnedReward(gym.make("Pendulum-v1"))
    env.reset(seed=0)
    rewards = [env.step(env.action_space.sample())[1] for _ in range(5)]
    assert rewards == [0.0] * 5


@pytest.mark.parametrize(
    "make",
    [lambda: gym.make("Pendulum-v1"), lambda: gym.make("CartPole-v1"), lambda: TinyImageEnv((48, 48, 3))],
)
def test_passes_gymnasium_and_sb3_env_checkers(make):
    env = LearnedReward(make())
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(LearnedReward(make()), warn=True)


@pytest.mark.parametrize("shape", [(48, 48, 3), (3, 48, 48), (48, 48)])
def test_image_observations_get_the_cnn(shape):
    env = LearnedReward(TinyImageEnv(shape))
    assert env.reward_model.network == "cnn"
    env.reward_model.fitted.fill_(True)
    env.reset(seed=0)
    _, reward, *_ = env.step(1)
    assert isinstance(reward, float)


def test_unsupported_observation_space_names_it_and_the_fix():
    with pytest.raises(UnsupportedSpaceError, match=r"Dict.*FlattenObservation"):
        LearnedReward(DictObsEnv())
    # ... and the suggested fix works.
    LearnedReward(gym.wrappers.FlattenObservation(DictObsEnv()))


def test_episode_end_reports_true_and_learned_returns():
    env = LearnedReward(
        gym.make("Pendulum-v1", max_episode_steps=10), reward_model=fitted_model(gym.make("Pendulum-v1"))
    )
    env.reset(seed=0)
    true_sum = learned_sum = 0.0
    for _ in range(10):
        _, reward, _terminated, truncated, info = env.step(env.action_space.sample())
        true_sum += info["true_reward"]
        learned_sum += reward
    assert truncated
    assert info["episode_returns"] == pytest.approx({"true": true_sum, "learned": learned_sum, "l": 10})


def test_recording_is_bounded_and_marks_episodes():
    env = LearnedReward(gym.make("Pendulum-v1", max_episode_steps=10), record_steps=15)
    env.reset(seed=0)
    for _ in range(25):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
    batch = env.pop_transitions()
    assert len(batch) == 15 and batch.dropped == 10
    assert batch.episodes[:, 0].tolist() == [1] * 10 + [2] * 5


def test_model_for_other_spaces_is_refused():
    other = RewardEnsemble(gym.make("CartPole-v1").observation_space, gym.make("CartPole-v1").action_space)
    with pytest.raises(ValueError, match="use a reward model made for this env"):
        LearnedReward(gym.make("Pendulum-v1"), reward_model=other)


def test_reward_model_loaded_from_a_path(tmp_path):
    model = fitted_model(gym.make("Pendulum-v1"))
    model.save(tmp_path / "r.pt")
    env = LearnedReward(gym.make("Pendulum-v1"), reward_model=str(tmp_path / "r.pt"))
    obs, _ = env.reset(seed=0)
    _, reward, *_ = env.step(np.array([0.5], dtype=np.float32))
    assert reward == pytest.approx(float(model.predict(obs[None], np.array([[0.5]]))[0]))


# ---------------------------------------------------------------- VecLearnedReward


def test_vec_wrapper_matches_per_env_wrapper():
    model = fitted_model(gym.make("Pendulum-v1"))
    vec = VecLearnedReward(make_vec_env("Pendulum-v1", n_envs=3, seed=5), reward_model=model)
    per_env = make_vec_env(
        "Pendulum-v1", n_envs=3, seed=5, wrapper_class=LearnedReward, wrapper_kwargs={"reward_model": model}
    )
    vec.reset()
    per_env.reset()
    for _ in range(30):
        actions = np.random.default_rng(0).uniform(-2, 2, (3, 1)).astype(np.float32)
        _, r_vec, _, info_vec = vec.step(actions)
        _, r_env, _, info_env = per_env.step(actions)
        np.testing.assert_allclose(r_vec, r_env, rtol=1e-5)
        assert [i["true_reward"] for i in info_vec] == pytest.approx([i["true_reward"] for i in info_env])


def test_vec_wrapper_handles_episode_ends():
    model = fitted_model(gym.make("CartPole-v1"))
    venv = VecLearnedReward(make_vec_env("CartPole-v1", n_envs=2, seed=0), reward_model=model)
    obs = venv.reset()
    ends = 0
    for _ in range(200):
        actions = np.array([0, 0])
        new_obs, rewards, dones, infos = venv.step(actions)
        np.testing.assert_allclose(rewards, model.predict(obs, actions), rtol=1e-5)
        for i in np.flatnonzero(dones):
            ends += 1
            assert "terminal_observation" in infos[i]
            assert infos[i]["episode_returns"]["l"] > 0
        obs = new_obs  # after an end, the next reward is of the new episode's first observation
    assert ends >= 4
    batch = venv.pop_transitions()
    assert batch.obs.shape == (200, 2, 4)


def test_vec_wrapper_composes_with_frame_stack_and_vec_normalize():
    base = make_vec_env("Pendulum-v1", n_envs=2, seed=0)
    venv = VecNormalize(VecLearnedReward(VecFrameStack(base, 4)))
    assert venv.venv.reward_model.observation_space.shape == (12,)  # the model sees stacked frames
    venv.reset()
    _, _rewards, _, infos = venv.step(np.zeros((2, 1), dtype=np.float32))
    assert "true_reward" in infos[0]


def test_vec_wrapper_over_vec_normalize_is_an_error():
    with pytest.raises(ValueError, match=r"VecNormalize\(VecLearnedReward\(venv\)\)"):
        VecLearnedReward(VecNormalize(make_vec_env("Pendulum-v1", n_envs=2)))


def test_vec_wrapper_over_subprocesses():
    model = fitted_model(gym.make("Pendulum-v1"))
    venv = VecLearnedReward(
        make_vec_env("Pendulum-v1", n_envs=2, seed=0, vec_env_cls=SubprocVecEnv), reward_model=model
    )
    try:
        obs = venv.reset()
        actions = np.zeros((2, 1), dtype=np.float32)
        _, rewards, _, _ = venv.step(actions)
        np.testing.assert_allclose(rewards, model.predict(obs, actions), rtol=1e-5)
    finally:
        venv.close()


def test_dummy_vec_env_of_per_env_wrappers_is_fine():
    venv = DummyVecEnv([lambda: LearnedReward(gym.make("CartPole-v1"))] * 2)
    assert all(venv.env_is_wrapped(LearnedReward))


# ---------------------------------------------------------------- both wrappers, one core


class Countdown(gym.Env[np.ndarray, np.ndarray]):
    """Episodes of exactly ``length`` steps, reward 1 a step: where every episode ends is known."""

    observation_space = spaces.Box(0.0, 1.0, (1,), np.float32)
    action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
    metadata: ClassVar[dict[str, Any]] = {}

    def __init__(self, length: int = 4) -> None:
        self.length = length
        self.t = 0

    def _obs(self) -> np.ndarray:
        return np.array([self.t / self.length], np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), 1.0, self.t >= self.length, False, {}


def test_the_per_env_wrapper_ends_episodes_hidden_from_the_agent():
    # LearnedReward outside HideEpisodeEnds: the agent sees one endless episode, the reward
    # wrapper still ends its episodes where the env's did.
    env = LearnedReward(HideEpisodeEnds(Countdown(length=4)), reward_model=fitted_model(Countdown()))
    env.reset(seed=0)
    reported = []
    for t in range(1, 11):
        _, reward, terminated, truncated, info = env.step(np.zeros(1, np.float32))
        assert not (terminated or truncated) and isinstance(reward, float)
        assert (EPISODE_RETURNS_KEY in info) == info.get(EPISODE_ENDED_KEY, False) == (t % 4 == 0)
        if EPISODE_RETURNS_KEY in info:
            reported.append(info[EPISODE_RETURNS_KEY])
    assert [r[LENGTH_KEY] for r in reported] == [4, 4]
    assert [r[TRUE_RETURN_KEY] for r in reported] == [4.0, 4.0]
    batch = env.pop_transitions()
    assert batch.episodes[:, 0].tolist() == [0] * 4 + [1] * 4 + [2] * 2
    pool = SegmentPool(env.observation_space, env.action_space, n_streams=1, capacity=100)
    pool.add(0, batch)
    assert pool.num_segments(4) == 2 and pool.num_segments(5) == 0  # no segment crosses an end


def test_both_wrappers_record_and_report_the_same_episodes():
    model = fitted_model(Countdown())
    per_env = LearnedReward(HideEpisodeEnds(Countdown(length=3)), reward_model=model)
    batched = VecLearnedReward(DummyVecEnv([lambda: HideEpisodeEnds(Countdown(length=3))]), reward_model=model)
    per_env.reset(seed=0)
    batched.reset()
    actions = np.random.default_rng(0).uniform(-1, 1, (8, 1)).astype(np.float32)
    for action in actions:
        _, reward, _, _, info = per_env.step(action)
        _, rewards, _, infos = batched.step(action[None])
        assert isinstance(reward, float) and rewards.dtype == np.float32
        assert reward == pytest.approx(float(rewards[0]))
        assert info[TRUE_REWARD_KEY] == infos[0][TRUE_REWARD_KEY]
        assert info.get(EPISODE_RETURNS_KEY) == pytest.approx(infos[0].get(EPISODE_RETURNS_KEY))
    one, many = per_env.pop_transitions(), batched.pop_transitions()
    assert one.episodes.tolist() == many.episodes.tolist() == [[0]] * 3 + [[1]] * 3 + [[2]] * 2
    np.testing.assert_array_equal(one.learned_rewards, many.learned_rewards)
    assert per_env.inference_seconds > 0 and batched.inference_seconds > 0


def test_episode_returns_use_the_named_keys():
    env = LearnedReward(Countdown(length=2), reward_model=fitted_model(Countdown()))
    env.reset(seed=0)
    env.step(np.zeros(1, np.float32))
    *_, info = env.step(np.zeros(1, np.float32))
    assert set(info[EPISODE_RETURNS_KEY]) == {TRUE_RETURN_KEY, LEARNED_RETURN_KEY, LENGTH_KEY}
    assert info[EPISODE_RETURNS_KEY][TRUE_RETURN_KEY] == info[TRUE_REWARD_KEY] * 2


def test_both_wrappers_refuse_a_step_before_reset():
    with pytest.raises(gym.error.ResetNeeded, match=r"reset\(\) before step\(\)"):
        LearnedReward(Countdown()).step(np.zeros(1, np.float32))
    with pytest.raises(RuntimeError, match=r"reset\(\) before step\(\)"):
        VecLearnedReward(DummyVecEnv([Countdown])).step(np.zeros((1, 1), np.float32))
    core = RewardCore(Countdown.observation_space, Countdown.action_space, n_envs=1)
    with pytest.raises(RuntimeError, match="reset the envs"):
        core.step(np.zeros((1, 1), np.float32), np.zeros((1, 1)), np.ones(1), np.zeros(1, bool), [{}])


def test_a_reset_mid_episode_starts_a_new_recorded_episode():
    env = LearnedReward(Countdown(length=10))
    env.reset(seed=0)
    env.step(np.zeros(1, np.float32))
    env.reset()  # before the episode ended: the next steps must not join it into one segment
    env.reset()  # nothing stepped since: no empty episode is counted
    env.step(np.zeros(1, np.float32))
    assert env.pop_transitions().episodes[:, 0].tolist() == [0, 1]


def test_swapping_the_model_checks_its_spaces_in_both_wrappers():
    model = fitted_model(Countdown())
    other = fitted_model(gym.make("CartPole-v1"))
    for wrapper in (LearnedReward(Countdown()), VecLearnedReward(DummyVecEnv([Countdown]))):
        wrapper.set_reward_model(model)
        assert wrapper.reward_model is model
        with pytest.raises(ValueError, match="use a reward model made for this env"):
            wrapper.set_reward_model(other)
        assert wrapper.reward_model is model
