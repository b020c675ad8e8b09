"""What a person sees: cheap clip data recorded during training, frames made when shown.

Rendering every training step would cost far more than the step (MuJoCo renders a 240x240
frame in about 0.06 s on a CPU; 0.005 s without the shadows, reflections and multisampling that
clips are shown without), so the wrappers record only what is needed to show a step later, and
only when a person labels:

- **MuJoCo envs**: the simulator state (``qpos``, ``qvel``), a few dozen numbers a step. The
  viewer restores each state into its own copy of the env and renders it there.
- **Other envs** (Atari, classic control, ...): the env's own ``rgb_array`` frame, shrunk
  so that its longer side is at most ``MAX_FRAME_SIDE`` pixels. An Atari screen is already
  that small and costs almost nothing to copy.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

__all__ = ["MAX_DISPLAY_FPS", "MAX_FRAME_SIDE", "ClipInfo", "ClipRenderer", "capture_clip", "clip_info_for"]

#: Recorded frames are shrunk (by whole-pixel striding) until no side is longer than this.
MAX_FRAME_SIDE = 256
#: Clips play at the env's frame rate, showing at most this many frames a second.
MAX_DISPLAY_FPS = 25.0


@dataclass
class ClipInfo:
    """How an env's clips are recorded and shown (plain values, stored in the store's metadata).

    Attributes:
        kind: ``"state"`` (MuJoCo states, rendered by the viewer) or ``"frame"`` (frames).
        shape: per-step shape of the recorded data.
        dtype: its dtype name.
        fps: the env's frame rate in simulated time (``metadata["render_fps"]`` or ``1 / dt``).
        env_id: the env id, to rebuild the env that renders states.
        env_kwargs: keyword arguments the env was made with.
        stride: frames were shrunk by taking every ``stride``-th pixel.

    Example:
        >>> info = ClipInfo("state", (18,), "float64", fps=20.0, env_id="HalfCheetah-v5")
        >>> ClipInfo.from_json(info.to_json()) == info
        True
    """

    kind: str
    shape: tuple[int, ...]
    dtype: str
    fps: float
    env_id: str | None = None
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    stride: int = 1

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ClipInfo:
        values = json.loads(text)
        values["shape"] = tuple(values["shape"])
        return cls(**values)

    @property
    def spec(self) -> tuple[tuple[int, ...], Any]:
        """Shape and dtype, as recorders want them."""
        return self.shape, np.dtype(self.dtype)


def _is_mujoco(env: gym.Env[Any, Any]) -> bool:
    unwrapped = env.unwrapped
    data = getattr(unwrapped, "data", None)
    return hasattr(unwrapped, "set_state") and hasattr(data, "qpos") and hasattr(data, "qvel")


def _fps(env: gym.Env[Any, Any]) -> float:
    fps = env.metadata.get("render_fps") if env.metadata else None
    if fps:
        return float(fps)
    dt = getattr(env.unwrapped, "dt", None)
    return 1.0 / float(dt) if dt else 30.0


def _plain_kwargs(spec: Any) -> dict[str, Any]:
    kwargs = dict(getattr(spec, "kwargs", {}) or {})
    kwargs.pop("render_mode", None)
    try:
        json.dumps(kwargs)
    except TypeError:
        return {}
    return kwargs


def clip_info_for(env: gym.Env[Any, Any]) -> ClipInfo:
    """Decide how to record clips of ``env`` (which must have been reset).

    Raises:
        ValueError: if a person could not be shown this env: it is not MuJoCo and was not made
            with ``render_mode="rgb_array"``.
    """
    spec = env.spec
    if _is_mujoco(env) and spec is not None:
        data = env.unwrapped.data  # type: ignore[attr-defined]
        size = int(data.qpos.size + data.qvel.size)
        return ClipInfo("state", (size,), "float64", _fps(env), spec.id, _plain_kwargs(spec))
    if env.render_mode != "rgb_array":
        name = spec.id if spec is not None else type(env.unwrapped).__name__
        raise ValueError(
            f"a person labelling clips needs to see the env, but {name} was made with "
            f"render_mode={env.render_mode!r}. Make it with gym.make({name!r}, render_mode='rgb_array') "
            "(for Atari too: the person sees the colour screen, the agent its usual observations)."
        )
    frame = np.asarray(env.render())
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"env.render() returned an array of shape {frame.shape}, not an RGB frame")
    stride = max(1, math.ceil(max(frame.shape[:2]) / MAX_FRAME_SIDE))
    shape = frame[::stride, ::stride].shape
    return ClipInfo("frame", tuple(shape), "uint8", _fps(env), spec.id if spec else None, {}, stride)


def capture_clip(env: gym.Env[Any, Any], info: ClipInfo) -> np.ndarray:
    """The clip data of ``env``'s current step."""
    if info.kind == "state":
        data = env.unwrapped.data  # type: ignore[attr-defined]
        return np.concatenate([data.qpos, data.qvel])
    frame = np.asarray(env.render())
    return frame[:: info.stride, :: info.stride]


def _render_cheaply(env: gym.Env[Any, Any]) -> None:
    # Software OpenGL (MUJOCO_GL=egl or osmesa without a GPU) spends most of a frame on the shadow
    # map, the floor's mirror image and multisampling: HalfCheetah at 240 px takes 58 ms a frame
    # with them and 4 ms without. None helps a person judge the motion (the page smooths the
    # scaled-up frame anyway), and this copy of the env only renders. Set before the first render,
    # which makes the OpenGL context from these settings.
    model = getattr(env.unwrapped, "model", None)
    if model is not None:
        model.vis.quality.shadowsize = 0
        model.vis.quality.offsamples = 0
        model.mat_reflectance[:] = 0


class ClipRenderer:
    """Turns recorded clip data into frames to show, at most ``MAX_DISPLAY_FPS`` of them a second.

    Args:
        info: how the clips were recorded.
        size: side in pixels of frames rendered from MuJoCo states.

    Example:
        >>> info = ClipInfo("frame", (4, 4, 3), "uint8", fps=50.0)
        >>> renderer = ClipRenderer(info)
        >>> renderer.frames(np.zeros((10, 4, 4, 3), np.uint8)).shape, renderer.display_fps
        ((5, 4, 4, 3), 25.0)
    """

    def __init__(self, info: ClipInfo, size: int = 240) -> None:
        self.info = info
        self.size = size
        self.step = max(1, math.ceil(info.fps / MAX_DISPLAY_FPS))
        self._env: gym.Env[Any, Any] | None = None

    @property
    def display_fps(self) -> float:
        """Frames a second that show the clip at the env's real speed."""
        return self.info.fps / self.step

    def _render_env(self) -> gym.Env[Any, Any]:
        if self._env is None:
            assert self.info.env_id is not None
            kwargs = {**self.info.env_kwargs, "width": self.size, "height": self.size}
            self._env = gym.make(self.info.env_id, render_mode="rgb_array", **kwargs)
            self._env.reset(seed=0)
            _render_cheaply(self._env)
        return self._env

    def frames(self, clip: np.ndarray) -> np.ndarray:
        """Frames ``[n, H, W, 3]`` for one segment's clip data ``[length, ...]``."""
        shown = clip[:: self.step]
        if self.info.kind == "frame":
            return np.asarray(shown)
        env = self._render_env()
        unwrapped = env.unwrapped
        nq = unwrapped.data.qpos.size  # type: ignore[attr-defined]
        frames = []
        for state in shown:
            unwrapped.set_state(state[:nq], state[nq:])  # type: ignore[attr-defined]
            frames.append(np.asarray(env.render()))
        return np.stack(frames)

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
