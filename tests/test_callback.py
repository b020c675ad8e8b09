"""The callback with every algorithm family, tiny networks and a few thousand steps."""

import csv
import json

import gymnasium as gym
import numpy as np
import pytest
from sb3_contrib import TRPO
from stable_baselines3 import A2C, DQN, PPO, SAC, TD3
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.vec_env import SubprocVecEnv, VecFrameStack

import gym_prefs
from gym_prefs import LearnedReward, PreferenceCallback, VecLearnedReward

TINY = {"net_arch": [16]}


def make_algo(algo_cls, env, seed=0):
    kwargs = {"policy_kwargs": dict(TINY), "seed": seed}  # SB3 mutates policy_kwargs
    if algo_cls in (PPO, TRPO):
        kwargs |= {"n_steps": 256, "batch_size": 64}
    elif algo_cls is A2C:
        kwargs |= {"n_steps": 8}
    elif algo_cls in (SAC, TD3):
        kwargs |= {"learning_starts": 200, "buffer_size": 5000, "train_freq": 4, "gradient_steps": 1}
    elif algo_cls is DQN:
        kwargs |= {"learning_starts": 200, "buffer_size": 5000, "train_freq": 4}
    return algo_cls("MlpPolicy", env, **kwargs)


class RewardProbe(BaseCallback):
    """Checks on every step that the algorithm receives r̂(o, a) from the shared model, not the true reward."""

    def __init__(self, preferences: PreferenceCallback):
        super().__init__()
        self.preferences = preferences
        self.checked = 0
        self.differs = 0
        self.at_start: tuple[int, int] | None = None

    def _on_training_start(self) -> None:
        self.at_start = (self.preferences.num_queries, self.preferences.num_fits)

    def _on_step(self) -> bool:
        if isinstance(self.model, OffPolicyAlgorithm):
            actions = self.locals["actions"]
        else:
            actions = self.locals["clipped_actions"]
        expected = self.preferences.reward_model.predict(self.model._last_obs, actions)
        np.testing.assert_allclose(self.locals["rewards"], expected, rtol=1e-4, atol=1e-5)
        true = np.array([info["true_reward"] for info in self.locals["infos"]])
        self.differs += int(np.any(np.abs(true - self.locals["rewards"]) > 1e-3))
        self.checked += 1
        return True


ALGOS = [
    (PPO, "Pendulum-v1"),
    (A2C, "Pendulum-v1"),
    (TRPO, "Pendulum-v1"),
    (SAC, "Pendulum-v1"),
    (TD3, "Pendulum-v1"),
    (DQN, "CartPole-v1"),
]


@pytest.mark.parametrize(("algo_cls", "env_id"), ALGOS, ids=[a.__name__ for a, _ in ALGOS])
def test_every_algorithm_learns_from_the_learned_reward(algo_cls, env_id):
    env = make_vec_env(env_id, n_envs=2, seed=0, wrapper_class=LearnedReward)
    algo = make_algo(algo_cls, env)
    prefs = PreferenceCallback(
        "oracle", total_labels=40, segment_length=10, refit_interval=512, initial_fit_epochs=20, seed=0
    )
    probe = RewardProbe(prefs)
    algo.learn(3000, callback=CallbackList([prefs, probe]))
    # The initial share was asked and fitted before RL started.
    assert probe.at_start == (10, 1)
    # The whole budget was asked by the end, on the schedule; refits happened along the way.
    assert prefs.num_queries == 40
    assert 0 < prefs.num_labels <= 40
    assert prefs.num_fits >= 3
    # The algorithm saw the learned reward on every step, and it is not the true one.
    assert probe.checked > 0
    assert probe.differs > 0.9 * probe.checked or env_id == "CartPole-v1"
    if isinstance(algo, OffPolicyAlgorithm):
        buffer = algo.replay_buffer
        size = buffer.pos
        actions = buffer.actions[:size]
        if isinstance(algo.action_space, gym.spaces.Box):
            actions = algo.policy.unscale_action(actions)
        actions = actions.reshape(size, 2, *algo.action_space.shape)
        expected = prefs.reward_model.predict(buffer.observations[:size], actions)
        np.testing.assert_allclose(buffer.rewards[:size], expected, rtol=1e-4, atol=1e-5)


def test_labels_follow_the_schedule():
    env = VecLearnedReward(make_vec_env("Pendulum-v1", n_envs=2, seed=0))
    algo = make_algo(PPO, env)
    prefs = PreferenceCallback(
        "oracle", total_labels=60, segment_length=10, refit_interval=512, schedule="constant", seed=0
    )

    seen: list[tuple[int, int]] = []

    class Recorder(BaseCallback):
        def _on_rollout_start(self) -> None:
            seen.append((self.num_timesteps, prefs.num_queries))

        def _on_step(self) -> bool:
            return True

    algo.learn(4096, callback=CallbackList([prefs, Recorder()]))
    schedule = gym_prefs.LabelSchedule(60, 4096, kind="constant")
    for timestep, asked in seen:
        assert asked == schedule.due(timestep) or timestep == 0
    assert prefs.num_queries == 60


def test_subprocess_wrappers_get_the_new_weights_after_every_refit():
    env = make_vec_env("Pendulum-v1", n_envs=2, seed=0, wrapper_class=LearnedReward, vec_env_cls=SubprocVecEnv)
    try:
        algo = make_algo(PPO, env)
        prefs = PreferenceCallback("oracle", total_labels=30, segment_length=10, refit_interval=512, seed=0)
        probe = RewardProbe(prefs)
        algo.learn(2048, callback=CallbackList([prefs, probe]))
        assert prefs.num_fits >= 2 and probe.checked > 0
        # After the final refit, rewards computed inside the workers equal the main process's.
        obs = env.reset()
        actions = np.full((2, 1), 0.3, dtype=np.float32)
        _, rewards, _, _ = env.step(actions)
        np.testing.assert_allclose(rewards, prefs.reward_model.predict(obs, actions), rtol=1e-5)
    finally:
        env.close()


def test_logs_use_sb3_keys_and_show_true_and_learned_returns(tmp_path):
    env = LearnedReward(gym.make("Pendulum-v1", max_episode_steps=100))  # SB3 puts Monitor outside
    algo = make_algo(PPO, env)
    algo.set_logger(configure(str(tmp_path), ["csv"]))
    prefs = PreferenceCallback("oracle", total_labels=30, segment_length=10, refit_interval=256, seed=0)
    algo.learn(1024, callback=prefs)
    with open(tmp_path / "progress.csv") as handle:
        rows = list(csv.DictReader(handle))
    keys = set(rows[-1])
    for key in [
        "preferences/labels",
        "preferences/queries",
        "reward_model/train_loss",
        "reward_model/val_loss",
        "reward_model/accuracy",
        "reward_model/l2",
        "reward_model/true_reward_corr",
        "rollout/ep_true_rew_mean",
        "rollout/ep_learned_rew_mean",
        "rollout/ep_rew_mean",
    ]:
        assert key in keys, key
    last = [r for r in rows if r["rollout/ep_true_rew_mean"]][-1]
    # SB3's ep_rew_mean shows the true return even though Monitor saw the learned one.
    assert float(last["rollout/ep_rew_mean"]) == pytest.approx(float(last["rollout/ep_true_rew_mean"]), rel=1e-3)
    assert float(last["rollout/ep_true_rew_mean"]) != pytest.approx(
        float(last["rollout/ep_learned_rew_mean"]), rel=1e-2
    )


def test_progress_bar_works():
    env = LearnedReward(gym.make("Pendulum-v1"))
    prefs = PreferenceCallback("oracle", total_labels=10, segment_length=10, seed=0)
    make_algo(PPO, env).learn(512, callback=prefs, progress_bar=True)
    assert prefs.num_queries == 10


def test_built_from_plain_config_values():
    config = json.loads(
        '{"source": "oracle", "total_labels": 20, "segment_length": 10, "selection": "random", '
        '"schedule": "constant", "reward_model": {"n_members": 2, "reward_std": 0.5}, "seed": 1}'
    )
    prefs = PreferenceCallback(**config)
    env = LearnedReward(gym.make("Pendulum-v1"))
    make_algo(PPO, env).learn(512, callback=prefs)
    assert prefs.reward_model.n_members == 2 and prefs.reward_model.reward_std == 0.5
    # The wrapper uses the callback's model.
    assert env.reward_model is prefs.reward_model


def test_a_second_learn_call_continues_the_budget():
    env = LearnedReward(gym.make("Pendulum-v1"))
    algo = make_algo(PPO, env)
    prefs = PreferenceCallback("oracle", total_labels=40, segment_length=10, seed=0)
    algo.learn(512, callback=prefs)
    assert prefs.num_queries == 40  # the horizon of the first call is its own total
    labels, fits, model = prefs.num_labels, prefs.num_fits, prefs.reward_model
    algo.learn(512, callback=prefs, reset_num_timesteps=False)
    # Nothing is asked again, no label is lost, and the same model goes on.
    assert prefs.num_queries == 40
    assert prefs.num_labels == labels and prefs.num_fits == fits
    assert prefs.reward_model is model and env.reward_model is model


def test_unwrapped_env_is_a_clear_error():
    algo = make_algo(PPO, make_vec_env("Pendulum-v1", n_envs=2))
    with pytest.raises(ValueError, match=r"gym_prefs\.LearnedReward\(env\)"):
        algo.learn(256, callback=PreferenceCallback("oracle", total_labels=10))


def test_reward_model_for_another_env_is_a_clear_error():
    cartpole = gym.make("CartPole-v1")
    wrong = gym_prefs.RewardEnsemble(cartpole.observation_space, cartpole.action_space)
    algo = make_algo(PPO, LearnedReward(gym.make("Pendulum-v1")))
    with pytest.raises(ValueError, match="use a reward model made for this env"):
        algo.learn(256, callback=PreferenceCallback("oracle", total_labels=10, reward_model=wrong))


def test_replay_buffer_that_cannot_be_relabelled_is_a_clear_error():
    env = VecFrameStack(make_vec_env("Pendulum-v1", n_envs=1, wrapper_class=LearnedReward), 2)
    algo = make_algo(SAC, env)
    with pytest.raises(ValueError, match="relabel_replay_buffer=False"):
        algo.learn(256, callback=PreferenceCallback("oracle", total_labels=10))


def test_too_long_segments_are_a_clear_error():
    algo = make_algo(PPO, LearnedReward(gym.make("Pendulum-v1", max_episode_steps=5)))
    with pytest.raises(ValueError, match="shorter segment_length"):
        algo.learn(256, callback=PreferenceCallback("oracle", total_labels=10, segment_length=20))


class RarelyLongEpisodes(gym.Env):
    """Episodes of 10 steps, except every 20th, which lasts 100 (as a random Hopper rarely stays up)."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self):
        self.episodes = 0
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episodes += 1
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        length = 100 if self.episodes % 20 == 0 else 10
        return np.full(1, self.t / 100, np.float32), float(action), self.t >= length, False, {}


def test_an_initial_policy_that_fails_fast_runs_longer_to_find_whole_segments():
    algo = make_algo(PPO, LearnedReward(RarelyLongEpisodes()))
    prefs = PreferenceCallback("oracle", total_labels=8, segment_length=50, initial_label_fraction=0.5, seed=0)
    algo.learn(128, callback=prefs)  # 200 planned initial steps hold no 50-step episode
    assert prefs.num_labels >= 4


def test_bad_arguments_are_refused_at_construction():
    with pytest.raises(ValueError, match="selection"):
        PreferenceCallback(selection="best")
    with pytest.raises(ValueError, match="schedule"):
        PreferenceCallback(schedule="fast")
    with pytest.raises(ValueError, match="unknown preference source"):
        PreferenceCallback("telepathy")


def test_segment_length_defaults_to_one_and_a_half_seconds():
    algo = make_algo(PPO, LearnedReward(gym.make("Pendulum-v1")))  # dt = 0.05 s
    prefs = PreferenceCallback("oracle", total_labels=4)
    algo.learn(256, callback=prefs)
    assert prefs.segment_length == 30


def test_seeded_runs_are_reproducible_and_every_fitting_mode_gives_the_same_model():
    def run(fitting):
        env = VecLearnedReward(make_vec_env("Pendulum-v1", n_envs=2, seed=0))
        prefs = PreferenceCallback(
            "oracle", total_labels=30, segment_length=10, refit_interval=512, fitting=fitting, seed=0
        )
        make_algo(PPO, env).learn(2048, callback=prefs)
        prefs.close()
        return prefs.reward_model.predict(np.ones((5, 3)), np.zeros((5, 1))), prefs.num_fits

    first, fits = run("process")
    assert fits >= 3
    for mode in ("process", "thread", "inline"):
        again, _ = run(mode)
        np.testing.assert_allclose(again, first, rtol=1e-6, err_msg=mode)


def test_a_callback_nobody_closes_stops_its_fitting_process_and_closes_its_store(tmp_path):
    import gc

    env = LearnedReward(gym.make("Pendulum-v1"))
    prefs = PreferenceCallback("oracle", total_labels=10, segment_length=10, fitting="process", store=tmp_path / "p.db")
    make_algo(PPO, env).learn(512, callback=prefs)
    worker, store = prefs.parts.fitter.worker, prefs.store
    assert worker.alive and store is not None and not store.closed
    del prefs
    gc.collect()
    assert not worker.alive and store.closed  # what it built is closed without a close() call


def test_without_wait_for_fits_rl_goes_on_while_a_refit_runs(monkeypatch, tmp_path):
    import threading

    from gym_prefs import RewardTrainer

    release, fits = threading.Event(), []
    fit = RewardTrainer.fit

    def held_fit(self, data, epochs, max_steps=None):
        fits.append(len(data))
        if len(fits) == 2:  # the first refit beside RL is held until RL has gone on without it
            assert release.wait(60), "RL waited for the refit"
        return fit(self, data, epochs, max_steps)

    monkeypatch.setattr(RewardTrainer, "fit", held_fit)

    class ReleaseLater(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps >= 2048:
                release.set()
            return True

    model = PPO("MlpPolicy", LearnedReward(gym.make("Pendulum-v1")), n_steps=256, seed=0)
    callback = PreferenceCallback(
        "oracle",
        total_labels=40,
        fitting="thread",
        wait_for_fits=False,
        refit_interval=256,
        store=tmp_path / "p.db",
        seed=0,
    )
    model.learn(3072, callback=[callback, ReleaseLater()])
    assert release.is_set() and len(fits) >= 3
    assert callback.last_fit is not None and callback.last_fit.pairs == callback.num_labels  # the end waits


@pytest.mark.parametrize("selection", ["entropy", "kcenter_disagreement"])
def test_every_selection_method_runs_in_a_real_run(selection):
    env = LearnedReward(gym.make("Pendulum-v1"))
    prefs = PreferenceCallback(
        "oracle", total_labels=30, segment_length=10, selection=selection, fitting="inline", seed=0
    )
    make_algo(PPO, env).learn(1024, callback=prefs)
    assert prefs.num_labels == 30
    # k-center remembers the pairs it asked after the first fit (the first ones are random).
    assert (len(prefs.asked) > 0) == selection.startswith("kcenter")
