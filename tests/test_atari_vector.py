"""ale-py's vectorised Atari env behind the paper's pipeline: the same frames, hidden game ends."""

import gymnasium as gym
import numpy as np
import pytest

ale_py = pytest.importorskip("ale_py", reason="Atari needs ale-py: pip install 'gym-prefs[atari]'")
pytest.importorskip("ale_py.vector_env", reason="AleVecEnv needs ale-py 0.11 or newer")

from gym_prefs import VecLearnedReward  # noqa: E402
from gym_prefs.atari import make_atari_env, preprocessed  # noqa: E402
from gym_prefs.atari_vector import AleVecEnv  # noqa: E402
from gym_prefs.wrappers import EPISODE_ENDED_KEY, EPISODE_RETURNS_KEY, TRUE_RETURN_KEY  # noqa: E402

gym.register_envs(ale_py)


def test_it_shows_the_agent_the_frames_of_the_python_pipeline():
    pytest.importorskip("cv2")
    fast = AleVecEnv("Pong", num_envs=1, num_threads=1, seed=0, noop_max=0)
    plain = gym.make("ALE/Pong-v5", frameskip=1, repeat_action_probability=0.0)
    slow = gym.wrappers.FrameStackObservation(preprocessed(plain), 4)
    slow.env.noop_max = 0  # the Python pipeline's AtariPreprocessing, without its random no-ops
    first_fast, (first_slow, _) = fast.reset(), slow.reset(seed=0)
    np.testing.assert_array_equal(first_fast[0, -1], first_slow[-1])  # the first frame itself
    assert not first_fast[0, :-1].any()  # stacked behind black frames (Gymnasium repeats the first)
    rng = np.random.default_rng(0)
    for step in range(60):
        action = int(rng.integers(0, 6))
        obs, reward, *_ = fast.step(np.array([action]))
        expected, expected_reward, *_ = slow.step(action)
        if step >= 3:  # once the padding has left the stack, every frame is the same
            np.testing.assert_array_equal(obs[0], expected)
        assert reward[0] == expected_reward
    fast.close()
    slow.close()


def test_the_agent_never_sees_a_game_end_but_the_reward_wrapper_does():
    venv = VecLearnedReward(AleVecEnv("Pong", num_envs=2, num_threads=1, seed=0))
    venv.reset()
    rng = np.random.default_rng(0)
    ended, returns, score = [], [], np.zeros(2)
    for _ in range(2_000):  # a random Pong game lasts about 800 steps
        _, _, dones, infos = venv.step(rng.integers(0, 6, 2))
        assert not dones.any()
        score += [info["true_reward"] for info in infos]
        for i, info in enumerate(infos):
            if info.get(EPISODE_ENDED_KEY):
                ended.append(i)
                assert info["episode"]["r"] == info[EPISODE_RETURNS_KEY][TRUE_RETURN_KEY] == score[i]
                returns.append(score[i])
                score[i] = 0.0
    assert ended and all(r < 0 for r in returns)  # random play loses Pong
    episodes = venv.pop_transitions().episodes
    assert episodes[-1].sum() >= len(ended)  # the recorder started a new episode at every end
    venv.close()


def test_a_preference_run_trains_on_it():
    from stable_baselines3 import A2C

    from gym_prefs import PreferenceCallback
    from gym_prefs.presets import atari_preset

    venv = make_atari_env("ALE/Pong-v5", n_envs=4, seed=0, ale_vector=True, num_threads=1)
    preset = atari_preset("ALE/Pong-v5", total_labels=8, paper=False)
    model = A2C("CnnPolicy", venv, seed=0, **preset.algo_kwargs)
    callback = PreferenceCallback("oracle", config=preset.config, total_labels=8, initial_fit_steps=1, fit_steps=1)
    model.learn(400, callback=callback)
    assert callback.num_queries == 8
    assert callback.num_fits >= 1 and callback.parts.pool.members == 3  # images: scores recorded
    callback.close()
    venv.close()


def test_it_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="renders nothing"):
        make_atari_env("ALE/Pong-v5", n_envs=2, ale_vector=True, render_mode="rgb_array")
    venv = AleVecEnv("Pong", num_envs=2, num_threads=1)
    with pytest.raises(AttributeError, match="make_atari_env"):
        venv.env_method("render")
    venv.close()
