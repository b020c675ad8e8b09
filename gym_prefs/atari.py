"""Atari as in the paper: standard preprocessing, hidden episode ends, score areas blacked out.

- :func:`preprocessed`: the standard preprocessing (Gymnasium's ``AtariPreprocessing``, as
  published baselines use it): 0-30 no-op starts, frame-skip 4 with the max of the last two
  frames, 84x84 grey with area interpolation.
- :class:`HideEpisodeEnds`: the agent never sees a life lost or a game over; a new game simply
  starts (the reward wrapper inside still sees the real ends, so segments never span them).
- :data:`SCORE_ROWS`: screen rows that show the score (and BeamRider's enemy count, Enduro's
  speedometer), blacked out in the reward model's input so it cannot read the score.
- :func:`make_atari_env`: the whole stack for one game, reward hidden, frames stacked by 4
  (or the same from ale-py's vectorised env, :mod:`gym_prefs.atari_vector`).
"""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np

from gym_prefs.wrappers import EPISODE_ENDED_KEY

__all__ = [
    "PAPER_GAMES",
    "SCORE_ROWS",
    "HideEpisodeEnds",
    "atari_game",
    "make_atari_env",
    "make_atari_eval_env",
    "mask_rows_for",
    "preprocessed",
]

#: Rows of the 210x160 screen to black out for the reward model, per game (start, stop).
SCORE_ROWS: dict[str, list[tuple[int, int]]] = {
    "Pong": [(0, 24)],
    "Breakout": [(0, 17)],
    "BeamRider": [(0, 42)],  # score, sector and the count of enemies left
    "Enduro": [(160, 196)],  # speedometer, odometer and cars left to pass
    "Qbert": [(0, 28)],
    "SpaceInvaders": [(0, 22)],
    "Seaquest": [(0, 20)],
}
#: The paper's seven games.
PAPER_GAMES = tuple(SCORE_ROWS)
SCREEN_ROWS = 210
SIZE = 84


def atari_game(env_id: str) -> str | None:
    """The game name of an ALE env id (``"ALE/Pong-v5"`` -> ``"Pong"``), else ``None``."""
    if not env_id.startswith("ALE/"):
        return None
    return env_id[4:].split("-")[0]


def mask_rows_for(game: str, rows: int = SIZE) -> list[tuple[int, int]]:
    """The game's score rows scaled to an image of ``rows`` rows (rounded outwards)."""
    scale = rows / SCREEN_ROWS
    return [(int(np.floor(a * scale)), int(np.ceil(b * scale))) for a, b in SCORE_ROWS.get(game, [])]


def preprocessed(env: gym.Env[Any, Any]) -> gym.Env[Any, Any]:
    """The preprocessing published Atari baselines use, Gymnasium's ``AtariPreprocessing``.

    0-30 no-op starts, frame-skip 4 with the max of the last two frames, 84x84 grey resized
    with area interpolation (OpenCV), no end at a life lost. ``env`` must be an ALE env made
    with ``frameskip=1``.

    Example:
        >>> import ale_py
        >>> gym.register_envs(ale_py)
        >>> env = preprocessed(gym.make("ALE/Pong-v5", frameskip=1))
        >>> env.reset(seed=0)[0].shape
        (84, 84)
    """
    try:
        import cv2  # noqa: F401  (Gymnasium's wrapper resizes with it)
    except ImportError:
        raise ImportError(
            "Atari preprocessing resizes frames with OpenCV: pip install 'gym-prefs[atari]' (or opencv-python-headless)"
        ) from None
    return gym.wrappers.AtariPreprocessing(
        env, noop_max=30, frame_skip=4, screen_size=SIZE, terminal_on_life_loss=False, grayscale_obs=True
    )


class HideEpisodeEnds(gym.Wrapper[Any, Any, Any, Any]):
    """The agent never sees an episode end: at a game over the next game just starts.

    ``info["episode_ended"]`` marks the step where a real episode ended (the observation
    returned is already the new game's first).

    Example:
        >>> env = HideEpisodeEnds(gym.make("CartPole-v1"))
        >>> _ = env.reset(seed=0)
        >>> any(env.step(0)[2] for _ in range(100))  # the pole falls many times; no step says so
        False
    """

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if terminated or truncated:
            obs, reset_info = self.env.reset()
            info = {**info, **reset_info, EPISODE_ENDED_KEY: True}
        return obs, reward, False, False, info


def _ale(env_id: str, **kwargs: Any) -> gym.Env[Any, Any]:
    """The raw ALE env the preprocessing expects: every frame, no sticky actions."""
    import ale_py

    gym.register_envs(ale_py)
    return gym.make(env_id, frameskip=1, repeat_action_probability=0.0, **kwargs)


def _stacked(env: gym.Env[Any, Any]) -> gym.Env[Any, Any]:
    """Preprocessed frames, stacked by 4: what the agent and the reward model see."""
    return gym.wrappers.FrameStackObservation(preprocessed(env), 4)


def make_atari_env(
    env_id: str,
    n_envs: int = 16,
    seed: int | None = None,
    render_mode: str | None = None,
    vec_env_cls: Any = None,
    learned_reward: bool = True,
    ale_vector: bool = False,
    num_threads: int = 0,
) -> Any:
    """A VecEnv of ``env_id`` as in the paper, its reward hidden behind ``VecLearnedReward``.

    Each env: ALE (no sticky actions) -> :func:`preprocessed` -> 4 stacked frames ->
    :class:`HideEpisodeEnds`; the whole VecEnv then goes into
    :class:`~gym_prefs.VecLearnedReward`, so the reward CNN reads every env's frames in one
    batch (on a CPU core 0.42 ms a frame for 16 envs; one env at a time costs about 1.7x as much) and
    still sees the real episode ends through ``info["episode_ended"]``. SB3's ``Monitor`` sits
    innermost, so ``rollout/ep_rew_mean`` still reports real games. With
    ``learned_reward=False`` the same pipeline keeps the game's reward (a baseline to compare
    against).

    With ``ale_vector=True`` the games run in ale-py's vectorised env instead
    (:class:`~gym_prefs.atari_vector.AleVecEnv`: the same observations, stepped in C++ on
    ``num_threads`` threads, 0 for one per core; faster, but nothing a person could be shown).
    """
    from stable_baselines3.common.env_util import make_vec_env

    from gym_prefs.wrappers import VecLearnedReward

    if ale_vector:
        from gym_prefs.atari_vector import AleVecEnv

        game = atari_game(env_id)
        if game is None:
            raise ValueError(f"{env_id} is not an ALE env id (like 'ALE/Pong-v5')")
        if render_mode is not None or vec_env_cls is not None:
            raise ValueError(
                "ale-py's vector env renders nothing a person could be shown and runs its own threads: "
                "leave ale_vector=False to pass render_mode or vec_env_cls"
            )
        fast = AleVecEnv(game, n_envs, num_threads=num_threads, seed=seed)
        return VecLearnedReward(fast) if learned_reward else fast

    def make(**kwargs: Any) -> gym.Env[Any, Any]:
        return _ale(env_id, **kwargs)

    def wrap(env: gym.Env[Any, Any]) -> gym.Env[Any, Any]:
        return HideEpisodeEnds(_stacked(env))

    env_kwargs = {"render_mode": render_mode} if render_mode else {}
    venv = make_vec_env(
        make, n_envs=n_envs, seed=seed, wrapper_class=wrap, env_kwargs=env_kwargs, vec_env_cls=vec_env_cls
    )
    return VecLearnedReward(venv) if learned_reward else venv


def make_atari_eval_env(env_id: str, n_envs: int = 1, seed: int | None = None) -> Any:
    """``env_id`` as agents are scored on it: the same preprocessing, real game ends, the game's score."""
    from stable_baselines3.common.env_util import make_vec_env

    return make_vec_env(lambda: _ale(env_id), n_envs=n_envs, seed=seed, wrapper_class=_stacked)
