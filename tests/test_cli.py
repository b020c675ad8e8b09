import json

import pytest

from gym_prefs.cli import main as cli


def test_train_leaves_its_artefacts_and_evaluates_on_the_true_reward(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "CartPole-v1", "--steps", "512", "--labels", "10", "--n-envs", "2", "--eval-episodes", "2"]
    assert cli([*args, "--out", str(out), "--segment-length", "5", "--verbose", "0"]) == 0
    for name in ("agent.zip", "reward_model.pt", "progress.csv", "summary.json", "preferences.db"):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["queries"] == 10 and summary["env_id"] == "CartPole-v1"
    assert "true return over 2 episodes" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["train", "fit", "export", "import", "info", "label"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        cli([command, "--help"])
    assert done.value.code == 0
    assert "usage: gym-prefs" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "NoSuchEnv-v0"], "cannot make env 'NoSuchEnv-v0'"),
        (["train", "Pendulum-v1", "--algo", "dqn"], "dqn needs discrete actions"),
        (["train", "CartPole-v1", "--algo", "sac"], "sac needs continuous"),
        (["info", "missing.db"], "no preference store at missing.db"),
    ],
)
def test_bad_input_says_what_to_do(args, message, capsys):
    assert cli(args) == 2
    assert message in capsys.readouterr().err
