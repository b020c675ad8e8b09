import gymnasium as gym
import numpy as np
import pytest

from gym_prefs.cli import main as cli
from gym_prefs.presets import is_mujoco, mujoco_preset, preset_for


def test_mujoco_preset_has_the_papers_settings():
    preset = mujoco_preset("Hopper-v5")
    assert preset.algo == "trpo"
    assert preset.algo_kwargs == {"gamma": 0.995, "gae_lambda": 0.97}
    assert preset.config.initial_label_fraction == 0.25
    assert preset.config.reward_model == {"n_members": 3, "reward_std": 1.0, "reward_mean": 1.0}
    # 1.5 s of simulated time, at most the paper's 60 steps: Hopper steps 0.008 s (1.5 s would
    # be 188 steps), HalfCheetah 0.05 s.
    assert preset.config.segment_length == 60
    assert mujoco_preset("HalfCheetah-v5").config.segment_length == 30


def test_falling_ends_the_episode_unless_the_papers_change_is_asked_for():
    kept = mujoco_preset("Hopper-v5")
    assert kept.env_kwargs == {} and kept.config.reward_model["reward_mean"] == 1.0
    removed = mujoco_preset("Hopper-v5", remove_termination=True)
    assert removed.env_kwargs == {"terminate_when_unhealthy": False}
    assert "reward_mean" not in removed.config.reward_model
    for preset, should_end in ((kept, True), (removed, False)):
        env = gym.make("Hopper-v5", **preset.env_kwargs)
        env.reset(seed=0)
        ended = False
        for _ in range(300):  # full torque on every joint: the hopper falls within a few dozen steps
            _, _, terminated, _, _ = env.step(np.ones(3, dtype=np.float32))
            ended = ended or terminated
        assert ended == should_end


def test_envs_without_termination_or_with_short_episodes():
    cheetah = mujoco_preset("HalfCheetah-v5")
    assert cheetah.env_kwargs == {} and "reward_mean" not in cheetah.config.reward_model
    reacher = mujoco_preset("Reacher-v5")  # 1.5 s would be 75 steps of a 50-step episode
    assert reacher.config.segment_length == 25
    assert reacher.config.reward_model["use_actions"]  # its reward is mostly torque cost
    assert "use_actions" not in cheetah.config.reward_model


def test_envs_that_keep_termination_get_a_positive_reward_centre():
    preset = mujoco_preset("InvertedDoublePendulum-v5")
    assert preset.env_kwargs == {}
    assert preset.config.reward_model["reward_mean"] == 1.0
    assert any("centred on +1" in note for note in preset.notes)


def test_auto_picks_by_env_and_other_algorithms_keep_their_settings():
    assert is_mujoco("Ant-v5") and not is_mujoco("Pendulum-v1")
    assert preset_for("Ant-v5").name == "mujoco"
    assert preset_for("Pendulum-v1").name == "none"
    assert preset_for("Ant-v5", "none").env_kwargs == {}
    sac = preset_for("Hopper-v5", algo="sac")
    assert sac.algo == "sac" and sac.algo_kwargs == {} and sac.config.reward_model["reward_mean"] == 1.0
    with pytest.raises(ValueError, match="not a Gymnasium MuJoCo env"):
        mujoco_preset("CartPole-v1")
    with pytest.raises(ValueError, match="preset must be one of"):
        preset_for("Pendulum-v1", "atari-2600")


def test_cli_applies_the_preset(tmp_path):
    import json

    out = tmp_path / "run"
    args = ["train", "HalfCheetah-v5", "--steps", "256", "--labels", "6", "--n-envs", "1", "--eval-episodes", "1"]
    assert cli([*args, "--out", str(out), "--verbose", "0"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["preset"] == "mujoco" and summary["algo"] == "trpo"
    assert summary["algo_kwargs"] == {"gamma": 0.995, "gae_lambda": 0.97}
    assert summary["callback_kwargs"]["segment_length"] == 30
