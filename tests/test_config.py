import json

import pytest

from gym_prefs import PreferenceCallback, PreferenceConfig
from gym_prefs.presets import atari_preset, preset_for


def test_defaults_are_the_papers():
    config = PreferenceConfig()
    assert (config.initial_label_fraction, config.schedule, config.schedule_scale) == (0.25, "decay", 2e6)
    assert (config.selection, config.candidates_factor, config.fitting) == ("disagreement", 10, "process")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"selection": "best"}, "selection must be one of"),
        ({"fitting": "gpu-cluster"}, "fitting must be one of"),
        ({"schedule": "fast"}, "schedule"),
        ({"segment_length": 0}, "segment_length must be positive"),
        ({"refit_interval": -5}, "refit_interval must be positive"),
        ({"fit_epochs": 0}, "fit_epochs must be positive"),
        ({"learning_rate": 0.0}, "learning_rate must be positive"),
        ({"initial_label_timeout": 0}, "initial_label_timeout must be positive"),
        ({"total_labels": -1}, "total_labels must be >= 0"),
        ({"initial_label_fraction": 1.5}, "fraction"),
    ],
)
def test_bad_values_fail_when_built(settings, message):
    with pytest.raises(ValueError, match=message):
        PreferenceConfig(**settings)
    with pytest.raises(ValueError, match=message):  # the callback checks through the config, before learn()
        PreferenceCallback("oracle", **settings)


def test_an_unknown_setting_names_the_known_ones():
    with pytest.raises(TypeError, match=r"unknown PreferenceCallback setting\(s\) \['total_label'\].*total_labels"):
        PreferenceCallback("oracle", total_label=10)


def test_frozen_and_replace_validates_again():
    config = PreferenceConfig(total_labels=100)
    with pytest.raises(AttributeError):
        config.total_labels = 5  # type: ignore[misc]
    assert config.replace(fit_epochs=3).fit_epochs == 3 and config.fit_epochs == 5
    with pytest.raises(ValueError, match="selection"):
        config.replace(selection="best")


def test_plain_values_round_trip_through_json():
    config = PreferenceConfig(total_labels=20, reward_model={"n_members": 2}, seed=1)
    again = PreferenceConfig(**json.loads(json.dumps(config.to_dict())))
    assert again == config


def test_callback_keywords_override_a_given_config():
    preset = atari_preset("ALE/Pong-v5", total_labels=3300)
    callback = PreferenceCallback("oracle", config=preset.config, seed=3, fit_epochs=2)
    assert callback.config.seed == 3 and callback.config.fit_epochs == 2
    assert callback.config.segment_length == 25 and callback.config.max_comparisons == 3000  # from the preset


def test_presets_return_a_config_with_the_budget():
    assert preset_for("Pendulum-v1", total_labels=123).config.total_labels == 123
    assert preset_for("HalfCheetah-v5", total_labels=321).config.total_labels == 321
    assert preset_for("ALE/Pong-v5", total_labels=1000).config.initial_label_fraction == 0.5


def test_the_label_schedule_follows_the_settings():
    schedule = PreferenceConfig(total_labels=100, initial_label_fraction=0.2, schedule="constant").label_schedule(1000)
    assert schedule.initial == 20 and schedule.due(1000) == 100


def test_the_step_caps_of_fits_are_checked_and_handed_out():
    config = PreferenceConfig(initial_fit_epochs=200, fit_epochs=5, initial_fit_steps=24, fit_steps=4)
    assert config.fit_length(initial=True) == (200, 24) and config.fit_length(initial=False) == (5, 4)
    assert PreferenceConfig().fit_length(initial=True) == (100, None)
    for name in ("initial_fit_steps", "fit_steps"):
        with pytest.raises(ValueError, match=name):
            PreferenceConfig(**{name: 0})


def test_the_first_fit_of_a_run_keeps_to_its_step_cap():
    import gymnasium as gym
    from stable_baselines3 import PPO

    from gym_prefs import LearnedReward

    env = LearnedReward(gym.make("CartPole-v1"))
    callback = PreferenceCallback(
        "oracle", total_labels=16, initial_label_fraction=1.0, segment_length=10, batch_size=4,
        initial_fit_epochs=50, initial_fit_steps=8, fitting="inline", seed=0,
    )  # fmt: skip
    PPO("MlpPolicy", env, n_steps=64, batch_size=64, policy_kwargs={"net_arch": [8]}, seed=0).learn(
        64, callback=callback
    )
    assert callback.num_fits == 1 and callback.last_fit.steps == 8 and callback.last_fit.epochs < 50
