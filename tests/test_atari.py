import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.vec_env import DummyVecEnv

ale_py = pytest.importorskip("ale_py", reason="Atari needs ale-py: pip install 'gym-prefs[atari]'")

from gym_prefs import LearnedReward, RewardEnsemble, VecLearnedReward  # noqa: E402
from gym_prefs.atari import (  # noqa: E402
    PAPER_GAMES,
    SCORE_ROWS,
    HideEpisodeEnds,
    make_atari_env,
    mask_rows_for,
    preprocessed,
)
from gym_prefs.presets import atari_preset, preset_for  # noqa: E402
from gym_prefs.wrappers import EPISODE_ENDED_KEY, EPISODE_RETURNS_KEY, LENGTH_KEY, TRUE_RETURN_KEY  # noqa: E402

gym.register_envs(ale_py)


def test_atari_preset_has_the_papers_settings():
    preset = atari_preset("ALE/BeamRider-v5", total_labels=5500)
    assert preset.algo == "a2c" and preset.policy == "CnnPolicy" and preset.n_envs == 16
    kwargs = preset.algo_kwargs
    assert (kwargs["n_steps"], kwargs["ent_coef"], kwargs["gamma"]) == (5, 0.01, 0.99)
    assert kwargs["learning_rate"](1.0) == pytest.approx(7e-4) and kwargs["learning_rate"](0.0) == 0.0  # decays
    config = preset.config
    assert config.segment_length == 25 and config.total_labels == 5500
    assert config.initial_label_fraction * 5500 == pytest.approx(500)
    assert config.initial_fit_epochs == 200 and config.max_comparisons == 3000
    assert config.reward_model["reward_std"] == 0.05 and config.reward_model["dropout"] == 0.5
    assert preset_for("ALE/Pong-v5").name == "atari"


def test_every_paper_game_has_its_score_area():
    assert set(PAPER_GAMES) == {"BeamRider", "Breakout", "Enduro", "Pong", "Qbert", "SpaceInvaders", "Seaquest"}
    for game in PAPER_GAMES:
        rows = mask_rows_for(game)
        assert rows and all(0 <= a < b <= 84 for a, b in rows)
    assert SCORE_ROWS["Enduro"][0][0] > 100  # Enduro's speedometer is at the bottom


def test_score_pixels_are_zero_in_the_reward_models_input():
    venv = make_atari_env("ALE/Pong-v5", n_envs=1, seed=0)
    obs = venv.reset()
    for _ in range(30):
        obs, *_ = venv.step(np.array([venv.action_space.sample()]))
    settings = atari_preset("ALE/Pong-v5").config.reward_model
    model = RewardEnsemble(venv.observation_space, venv.action_space, seed=0, **settings)
    model.fitted.fill_(True)
    inputs, _ = model.preprocess(obs, np.zeros(1, dtype=np.int64))
    ((start, stop),) = settings["image_mask_rows"]
    assert obs[..., start:stop, :].any()  # the score is on screen ...
    assert not inputs[..., start:stop, :].any()  # ... and not in what the reward model reads
    assert inputs[..., stop:, :].any()
    changed = obs.copy()
    changed[..., start:stop, :] = 255  # a different score
    assert model.predict(changed, np.zeros(1)) == pytest.approx(model.predict(obs, np.zeros(1)))
    venv.close()


def test_the_agent_sees_no_episode_end_but_the_reward_wrapper_does():
    env = HideEpisodeEnds(LearnedReward(gym.make("CartPole-v1")))
    env.reset(seed=0)
    ended = returns = 0
    for _ in range(300):
        _, _, terminated, truncated, info = env.step(env.action_space.sample())
        assert not (terminated or truncated)
        ended += info.get(EPISODE_ENDED_KEY, False)
        returns += EPISODE_RETURNS_KEY in info
    assert ended >= 3 and returns == ended


def test_the_batched_reward_wrapper_ends_episodes_the_agent_never_sees():
    venv = VecLearnedReward(DummyVecEnv([lambda: HideEpisodeEnds(gym.make("CartPole-v1"))] * 2))
    venv.seed(0)
    venv.action_space.seed(0)
    venv.reset()
    ends = []
    for _ in range(300):
        _, _, dones, infos = venv.step(np.array([venv.action_space.sample() for _ in range(2)]))
        assert not dones.any()
        ends.append([info.get(EPISODE_ENDED_KEY, False) for info in infos])
        for info in infos:
            assert (EPISODE_RETURNS_KEY in info) == info.get(EPISODE_ENDED_KEY, False)
            if EPISODE_RETURNS_KEY in info:
                returns = info[EPISODE_RETURNS_KEY]
                assert returns[TRUE_RETURN_KEY] == returns[LENGTH_KEY]  # 1 per step
    ends_array = np.array(ends)
    assert (ends_array.sum(axis=0) >= 3).all()
    # Each recorded step carries its episode id (segments are cut within one id): the id moves
    # on exactly after the steps where an episode ended unseen by the agent.
    episodes = venv.pop_transitions().episodes  # [steps, envs]
    expected = np.vstack([np.zeros((1, 2), dtype=int), np.cumsum(ends_array, axis=0)[:-1]])
    assert ((episodes - episodes[0]) == expected).all()


def test_make_atari_env_predicts_every_env_in_one_batch():
    venv = make_atari_env("ALE/Pong-v5", n_envs=2, seed=0)
    plain = make_atari_env("ALE/Pong-v5", n_envs=1, learned_reward=False)
    assert isinstance(venv, VecLearnedReward) and not isinstance(plain, VecLearnedReward)
    venv.close()
    plain.close()


def test_preprocessing_is_the_standard_one():
    pytest.importorskip("cv2")
    env = preprocessed(gym.make("ALE/Pong-v5", frameskip=1, repeat_action_probability=0.0))
    assert isinstance(env, gym.wrappers.AtariPreprocessing)  # Gymnasium's, as baselines use it
    settings = (env.noop_max, env.frame_skip, env.terminal_on_life_loss, env.grayscale_obs, env.scale_obs)
    assert settings == (30, 4, False, True, False)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (84, 84) and obs.dtype == np.uint8
    _, _, _, _, first = env.step(0)
    _, _, _, _, second = env.step(0)
    assert second["frame_number"] - first["frame_number"] == 4


def test_without_a_gpu_the_atari_preset_caps_its_fits_and_says_so(monkeypatch):
    import torch

    from gym_prefs.presets import ATARI_CPU_FIT_STEPS

    paper = atari_preset("ALE/Pong-v5", paper=True).config
    assert (paper.initial_fit_epochs, paper.initial_fit_steps, paper.fit_steps) == (200, None, None)
    cpu = atari_preset("ALE/Pong-v5", paper=False)
    assert (cpu.config.initial_fit_steps, cpu.config.fit_steps) == ATARI_CPU_FIT_STEPS
    assert any("--paper" in note for note in cpu.notes)
    # A refit outlasts the rollouts between updates on a CPU: RL goes on beside it, and is told so.
    assert paper.wait_for_fits and not cpu.config.wait_for_fits
    assert any("does not wait for refits" in note for note in cpu.notes)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    on_gpu = atari_preset("ALE/Pong-v5").config
    assert on_gpu.initial_fit_steps is None and on_gpu.reward_model["device"] == "cuda"  # as the paper did
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert atari_preset("ALE/Pong-v5").config.initial_fit_steps == ATARI_CPU_FIT_STEPS[0]
    assert atari_preset("ALE/Pong-v5").config.reward_model["device"] == "cpu"
