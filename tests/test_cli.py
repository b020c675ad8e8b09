import json

import numpy as np
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
    assert list(out.glob("events.out.tfevents.*")), "no TensorBoard log"
    assert "true return over 2 episodes" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["train", "eval", "plot", "fit", "export", "import", "info", "label"])
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


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    runs = []
    for seed in (0, 1):
        out = tmp_path_factory.mktemp("runs") / f"pendulum-{seed}"
        args = ["train", "Pendulum-v1", "--steps", "8192", "--labels", "12", "--eval-episodes", "1"]
        assert cli([*args, "--seed", str(seed), "--out", str(out), "--verbose", "0", "--segment-length", "10"]) == 0
        runs.append(out)
    return runs


def test_eval_scores_a_saved_agent_on_the_true_reward(two_runs, capsys):
    assert cli(["eval", str(two_runs[0]), "--episodes", "2"]) == 0
    assert "Pendulum-v1 / ppo: true return over 2 episodes" in capsys.readouterr().out
    agent = two_runs[0] / "agent.zip"
    assert cli(["eval", str(agent), "--episodes", "1"]) == 2  # a bare .zip needs the env and algorithm
    assert "--env ENV_ID --algo ALGO" in capsys.readouterr().err
    assert cli(["eval", str(agent), "--env", "Pendulum-v1", "--algo", "ppo", "--episodes", "1"]) == 0


def test_plot_draws_every_run_with_the_logged_data(two_runs, tmp_path):
    from gym_prefs.plots import CURVES, load_curves, plot_runs

    figure = plot_runs(two_runs, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    for axis, (key, _) in zip(figure.axes, CURVES, strict=True):
        lines = axis.get_lines()
        assert len(lines) == 2  # one per run
        for line, run in zip(lines, two_runs, strict=True):
            _, values = load_curves(run)[key]
            assert len(values) >= 1
            np.testing.assert_array_equal(line.get_ydata(), values)
    labels = load_curves(two_runs[0])["preferences/labels"][1]
    assert labels[-1] == 12 and np.all(np.diff(labels) >= 0)
    assert cli(["plot", str(two_runs[0]), "--out", str(tmp_path / "one.png")]) == 0


def test_plot_of_a_folder_without_logs_says_so(tmp_path, capsys):
    assert cli(["plot", str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    assert "progress.csv" in capsys.readouterr().err


def test_label_hands_its_arguments_to_the_window_program(monkeypatch, capsys):
    import gym_prefs.viewer

    calls = []
    monkeypatch.setattr(gym_prefs.viewer, "main", lambda argv, prog: calls.append((argv, prog)) or 0)
    args = ["runs/x/preferences.db", "--instruction", "run", "--labeler", "ann", "--exit-when-done"]
    assert cli(["label", *args]) == 0
    assert calls == [(args, "gym-prefs label")]
    monkeypatch.undo()
    with pytest.raises(SystemExit):
        cli(["label", "--help"])
    usage = capsys.readouterr().out
    assert usage.startswith("usage: gym-prefs label [-h]") and "--exit-with PID" in usage
    with pytest.raises(SystemExit):
        cli(["--help"])
    assert "label a store's pending clip pairs in a window" in capsys.readouterr().out


def test_label_of_a_missing_store_says_so(tmp_path, capsys):
    assert cli(["label", str(tmp_path / "missing.db")]) == 2
    assert f"gym-prefs: no preference store at {tmp_path / 'missing.db'}" in capsys.readouterr().err
    assert not (tmp_path / "missing.db").exists()


def test_an_atari_run_from_the_command_line_leaves_its_artefacts_and_says_what_it_chose(tmp_path, capsys):
    pytest.importorskip("ale_py")
    pytest.importorskip("cv2")
    out = tmp_path / "pong"
    args = ["train", "ALE/Pong-v5", "--algo", "a2c", "--labels", "6", "--steps", "320", "--n-envs", "4"]
    assert cli([*args, "--eval-episodes", "1", "--out", str(out), "--verbose", "0", "--no-progress"]) == 0
    for name in ("agent.zip", "reward_model.pt", "progress.csv", "summary.json", "preferences.db"):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["preset"] == "atari" and summary["queries"] == 6
    settings = summary["callback_kwargs"]
    printed = capsys.readouterr().out
    if settings["initial_fit_steps"] is not None:  # no GPU here: the fits are cut, and it says so
        assert f"first fit is cut to {settings['initial_fit_steps']} gradient steps" in printed
    assert "true return over 1 episodes" in printed


def test_ale_vector_is_refused_where_a_person_labels_or_the_env_is_not_atari(tmp_path, capsys):
    pytest.importorskip("ale_py")
    out = tmp_path / "run"
    for args in (["ALE/Pong-v5", "--labeler", "web"], ["Pendulum-v1"]):
        assert cli(["train", *args, "--ale-vector", "--out", str(out)]) == 2
        assert "--ale-vector runs Atari games for the oracle" in capsys.readouterr().err
    assert not out.exists()


def test_bad_settings_are_refused_before_a_run_folder_is_made(tmp_path, capsys):
    out = tmp_path / "run"
    for args, message in (
        (["--exploration-bonus", "-1"], "exploration_bonus must be 0 or more"),
        (["--segment-length", "0"], "segment_length must be positive"),
    ):
        assert cli(["train", "Pendulum-v1", *args, "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
    assert not out.exists()
