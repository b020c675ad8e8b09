from __future__ import annotations

import os
import subprocess
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("MUJOCO_GL", "egl")
# Tests use tiny networks: one thread each keeps xdist workers from fighting over 2 cores.
torch.set_num_threads(1)


class TinyImageEnv(gym.Env[np.ndarray, int]):
    """A cheap image env: the agent brightens (action 1) or darkens (action 0) a square."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 15}

    def __init__(self, shape: tuple[int, ...] = (48, 48, 3), episode_length: int = 40) -> None:
        self.observation_space = spaces.Box(0, 255, shape, np.uint8)
        self.action_space = spaces.Discrete(2)
        self.episode_length = episode_length
        self._level = 0
        self._t = 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros(self.observation_space.shape, dtype=np.uint8)
        obs[..., :] = self._level
        return obs

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._level = int(self.np_random.integers(0, 256))
        self._t = 0
        return self._obs(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self._level = int(np.clip(self._level + (20 if action == 1 else -20), 0, 255))
        self._t += 1
        return self._obs(), self._level / 255.0, False, self._t >= self.episode_length, {}


class DictObsEnv(gym.Env[dict[str, np.ndarray], int]):
    observation_space = spaces.Dict({"a": spaces.Box(-1, 1, (2,)), "b": spaces.Discrete(3)})
    action_space = spaces.Discrete(2)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action: int) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        return self.observation_space.sample(), 0.0, False, False, {}


class ScriptedSource:
    """Answers every query with ``answer_for(query)``; records what it was told."""

    name = "scripted"

    def __init__(self, answer_for: Any) -> None:
        self.answer_for = answer_for
        self._ready: list[Any] = []
        self.acknowledged: list[int] = []

    def request(self, queries):
        self._ready += [self.answer_for(query) for query in queries]

    def poll(self, timeout=0.0):
        answers, self._ready = self._ready, []
        return answers

    @property
    def pending(self):
        return len(self._ready)

    def close(self):
        pass

    def acknowledge(self, query_ids):
        self.acknowledged += list(query_ids)


@pytest.fixture(autouse=True)
def _run_in_a_temporary_folder(tmp_path, monkeypatch):
    """Runs write default stores under ./runs: keep them out of the repository."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def small_disk(tmp_path):
    """A folder on a 2 MiB file system of its own (a tmpfs), so that filling it fills nothing else."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    folder = tmp_path / "small_disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def store_path(tmp_path):
    """A store of 12 queries with CartPole clips, none answered: what a labelling window opens."""
    # Imported here, not above: only the window's tests train, and the others need not import SB3.
    from viewer_helpers import train_with_a_person_who_never_answers

    path = tmp_path / "p.db"
    train_with_a_person_who_never_answers(path, render_mode="rgb_array")
    return path
