"""Turning Gymnasium spaces into the flat float inputs a reward network reads.

One encoder serves observations and actions alike: ``Box`` vectors are flattened, ``Box``
images stay images (scaled to [0, 1] by the network), ``Discrete`` and ``MultiDiscrete``
become one-hot vectors, ``MultiBinary`` becomes 0/1 floats. Anything else is refused with a
message that names the space and says how to make it supported.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from gymnasium import spaces

__all__ = [
    "UnsupportedSpaceError",
    "check_space",
    "encode",
    "encoded_size",
    "image_shape_chw",
    "is_image",
    "shape_of",
    "space_from_config",
    "space_to_config",
    "spaces_match",
]


def shape_of(space: spaces.Space[Any]) -> tuple[int, ...]:
    """The element shape of a supported space (never ``None``)."""
    if space.shape is None:
        raise UnsupportedSpaceError(f"{space!r} has no fixed shape")
    return tuple(space.shape)


class UnsupportedSpaceError(ValueError):
    """Raised for a space the reward model cannot read (Dict, Tuple, Text, Graph, ...)."""


def is_image(space: spaces.Space[Any]) -> bool:
    """Whether ``space`` holds images: a uint8 ``Box`` in [0, 255] with 2 or 3 dimensions.

    Three-dimensional boxes may be channel-last (HWC) or channel-first (CHW); the smaller of
    the first and last axis is taken as channels, as Stable-Baselines3 does.
    """
    if not isinstance(space, spaces.Box) or space.dtype != np.uint8:
        return False
    if len(space.shape) not in (2, 3):
        return False
    return bool(np.all(space.low == 0) and np.all(space.high == 255))


def image_shape_chw(space: spaces.Box) -> tuple[int, int, int]:
    """Channel-first shape of an image space (2-D spaces get one channel)."""
    shape = space.shape
    if len(shape) == 2:
        return (1, shape[0], shape[1])
    if _channels_first(shape):
        return (shape[0], shape[1], shape[2])
    return (shape[2], shape[0], shape[1])


def _channels_first(shape: tuple[int, ...]) -> bool:
    return len(shape) == 3 and shape[0] < shape[2]


def check_space(space: spaces.Space[Any], role: str) -> None:
    """Raise :class:`UnsupportedSpaceError` unless the reward model can read ``space``.

    Args:
        space: an observation or action space.
        role: ``"observation"`` or ``"action"``, used in the message.
    """
    if isinstance(space, (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)):
        return
    hint = {
        "observation": "wrap the env in gymnasium.wrappers.FlattenObservation (before "
        "gym_prefs.LearnedReward) so observations become one Box vector",
        "action": "wrap the env in a gymnasium ActionWrapper that exposes a Box, Discrete, "
        "MultiDiscrete or MultiBinary action space",
    }[role]
    raise UnsupportedSpaceError(
        f"gym_prefs cannot read the {role} space {space!r}: the reward model supports Box, "
        f"Discrete, MultiDiscrete and MultiBinary {role}s. To use this env, {hint}."
    )


def encoded_size(space: spaces.Space[Any]) -> int:
    """Length of the flat float vector :func:`encode` makes from one element of ``space``."""
    if isinstance(space, spaces.Box):
        return math.prod(space.shape)
    if isinstance(space, spaces.Discrete):
        return int(space.n)
    if isinstance(space, spaces.MultiDiscrete):
        return int(np.sum(space.nvec))
    if isinstance(space, spaces.MultiBinary):
        return math.prod(space.shape)
    raise UnsupportedSpaceError(f"cannot encode {space!r}")


def encode(space: spaces.Space[Any], batch: np.ndarray) -> np.ndarray:
    """Encode a batch of elements of ``space`` as float32 ``[batch, encoded_size]`` rows.

    Images are not handled here (the CNN reads them as they are). The leading axis of
    ``batch`` is the batch axis.

    Example:
        >>> encode(spaces.Discrete(3), np.array([0, 2])).tolist()
        [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    """
    batch = np.asarray(batch)
    if isinstance(space, spaces.Discrete):
        index = batch.reshape(-1).astype(np.int64) - int(space.start)
        return np.eye(int(space.n), dtype=np.float32)[index]
    if isinstance(space, spaces.MultiDiscrete):
        nvec = space.nvec.reshape(-1)
        index = batch.reshape(len(batch), -1).astype(np.int64) - space.start.reshape(-1)
        offsets = np.concatenate([[0], np.cumsum(nvec)[:-1]])
        out = np.zeros((len(batch), int(nvec.sum())), dtype=np.float32)
        rows = np.arange(len(batch))[:, None]
        out[rows, index + offsets] = 1.0
        return out
    return batch.reshape(len(batch), encoded_size(space)).astype(np.float32, copy=False)


def space_to_config(space: spaces.Space[Any]) -> dict[str, Any]:
    """A plain-value description of ``space`` (for saving a reward model without pickle)."""
    if isinstance(space, spaces.Box):
        return {
            "type": "Box",
            "shape": list(space.shape),
            "dtype": str(space.dtype),
            "low": _compact(space.low),
            "high": _compact(space.high),
        }
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": space.nvec.tolist(), "start": space.start.tolist()}
    if isinstance(space, spaces.MultiBinary):
        return {"type": "MultiBinary", "n": np.asarray(space.n).tolist()}
    raise UnsupportedSpaceError(f"cannot describe {space!r}")


def space_from_config(config: dict[str, Any]) -> spaces.Space[Any]:
    """Inverse of :func:`space_to_config`."""
    kind = config["type"]
    if kind == "Box":
        shape = tuple(config["shape"])
        dtype = np.dtype(config["dtype"])
        low = np.broadcast_to(np.asarray(config["low"], dtype=dtype), shape)
        high = np.broadcast_to(np.asarray(config["high"], dtype=dtype), shape)
        return spaces.Box(low=low, high=high, shape=shape, dtype=dtype)
    if kind == "Discrete":
        return spaces.Discrete(config["n"], start=config["start"])
    if kind == "MultiDiscrete":
        return spaces.MultiDiscrete(config["nvec"], start=config["start"])
    if kind == "MultiBinary":
        return spaces.MultiBinary(config["n"])
    raise UnsupportedSpaceError(f"unknown space type {kind!r} in a saved reward model")


def _compact(bound: np.ndarray) -> Any:
    """A scalar when every entry of ``bound`` is equal, else the full nested list."""
    flat = bound.reshape(-1)
    if flat.size and np.all(flat == flat[0]):
        return flat[0].item()
    return bound.tolist()


def spaces_match(a: spaces.Space[Any], b: spaces.Space[Any]) -> bool:
    """Whether two spaces have the same type, shape and dtype (bounds are not compared)."""
    return (
        type(a) is type(b)
        and a.shape == b.shape
        and a.dtype == b.dtype
        and (
            not isinstance(a, spaces.Discrete) or a.n == b.n  # type: ignore[attr-defined]
        )
    )
