"""Every example runs top to bottom in its smoke mode and leaves its artefacts."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize(
    ("script", "artefact", "expected"),
    [
        ("quickstart.py", "pendulum_reward_model.pt", "true return before"),
        ("mujoco_trpo.py", "runs/Hopper-v5-trpo/agent.zip", "Hopper-v5: true return"),
        ("sac_relabelling.py", "runs/pendulum-sac/preferences.db", "buffer matches the newest reward model: True"),
        ("human_backflip.py", "runs/hopper-backflip/agent.zip", "0 labels given; 4 asked"),
        ("atari_a2c.py", "runs/Pong-a2c/reward_model.pt", "Pong: score"),
    ],
)
def test_example_smoke_mode(script, artefact, expected, tmp_path):
    env = dict(os.environ, SDL_VIDEODRIVER="dummy", MUJOCO_GL="egl")
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--smoke"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert expected in done.stdout
    assert (tmp_path / artefact).exists()
