"""What a reward network reads: observations and actions encoded and standardised as tensors.

Vector observations become flat float vectors standardised with statistics of the labelled
data; images become channel-first floats in [0, 1], with any masked rows blacked out;
actions are read (one-hot, or standardised when continuous) only by models that use them.

The standardisation statistics live on the model, as its buffers ``obs_mean``, ``obs_std``,
``act_mean`` and ``act_std`` (so they are saved with its weights and move with it between
devices). :class:`InputEncoder` holds no tensors: it gives their starting values and new
values, and reads them when it encodes a batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from gymnasium import spaces

from gym_prefs.spaces import check_space, encode, encoded_size, image_shape_chw, is_image, shape_of

__all__ = ["InputEncoder", "InputStats"]


class InputStats(NamedTuple):
    """The standardisation of a network's inputs: ``(x - mean) / std``, for observations and actions.

    The field names are those of the model's buffers that hold them.

    Example:
        >>> stats = InputStats(torch.zeros(3), torch.ones(3), torch.zeros(0), torch.ones(0))
        >>> list(stats._asdict())
        ['obs_mean', 'obs_std', 'act_mean', 'act_std']
    """

    obs_mean: torch.Tensor
    obs_std: torch.Tensor
    act_mean: torch.Tensor
    act_std: torch.Tensor


class InputEncoder:
    """Turns raw observation and action batches into a reward network's input tensors.

    Args:
        observation_space: the env's observation space (Box, Discrete, MultiDiscrete or
            MultiBinary).
        action_space: the env's action space (the same kinds).
        network: ``"auto"`` (``"cnn"`` for uint8 image observations, else ``"mlp"``),
            ``"mlp"`` or ``"cnn"``: the CNN reads channel-first images, the MLP flat vectors.
        use_actions: whether the network reads the action as well as the observation.
        image_mask_rows: ``(start, stop)`` rows of image observations to black out.

    Attributes:
        network: ``"mlp"`` or ``"cnn"`` (``"auto"`` resolved).
        obs_shape: one observation as the network reads it: ``(C, H, W)`` or ``(features,)``.
        act_dim: length of the encoded action, 0 when actions are not read.
        image_obs: whether the observations are uint8 images.

    Raises:
        UnsupportedSpaceError: for a space the reward model cannot read (the message says how
            to wrap the env).
        ValueError: for an unknown ``network``, or ``"cnn"`` without image observations.

    Example:
        >>> encoder = InputEncoder(spaces.Box(-1, 1, (3,)), spaces.Discrete(2), use_actions=True)
        >>> encoder.network, encoder.obs_shape, encoder.act_dim
        ('mlp', (3,), 2)
        >>> obs, act = encoder.encode(np.ones((4, 5, 3)), np.zeros((4, 5), int), encoder.initial_stats())
        >>> tuple(obs.shape), tuple(act.shape), act[0, 0].tolist()
        ((4, 5, 3), (4, 5, 2), [1.0, 0.0])
    """

    def __init__(
        self,
        observation_space: spaces.Space[Any],
        action_space: spaces.Space[Any],
        network: str = "auto",
        use_actions: bool = False,
        image_mask_rows: Sequence[Sequence[int]] = (),
    ) -> None:
        check_space(observation_space, "observation")
        check_space(action_space, "action")
        if network not in ("auto", "mlp", "cnn"):
            raise ValueError(f"network must be 'auto', 'mlp' or 'cnn', got {network!r}")
        if network == "cnn" and not is_image(observation_space):
            raise ValueError(f"network='cnn' needs uint8 image observations in [0, 255], got {observation_space}")
        self.observation_space = observation_space
        self.action_space = action_space
        # The element shapes as the env gives them (before encoding).
        self.raw_obs_shape = shape_of(observation_space)
        self.raw_act_shape = shape_of(action_space)
        self.image_obs = is_image(observation_space)
        self.network = ("cnn" if self.image_obs else "mlp") if network == "auto" else network
        self.use_actions = use_actions
        self.image_mask_rows = [(int(a), int(b)) for a, b in image_mask_rows]
        self.act_dim = encoded_size(action_space) if use_actions else 0
        if self.network == "cnn":
            self.obs_shape: tuple[int, ...] = image_shape_chw(observation_space)  # type: ignore[arg-type]
        else:
            self.obs_shape = (encoded_size(observation_space),)

    def initial_stats(self) -> InputStats:
        """Statistics that leave the inputs as they are (zero means, unit deviations).

        Images are never standardised: their statistics are a single unused element, kept so
        that every model has the same buffers.
        """
        obs_size = self.obs_shape[0] if self.network == "mlp" else 1
        return InputStats(
            torch.zeros(obs_size), torch.ones(obs_size), torch.zeros(self.act_dim), torch.ones(self.act_dim)
        )

    def fitted_stats(self, obs: np.ndarray, act: np.ndarray) -> dict[str, np.ndarray]:
        """New values of the statistics that standardise these batches, by :class:`InputStats` field.

        Only vector observations and continuous (``Box``) actions the network reads are
        standardised; the statistics of the others are left out, to stay as they are.
        """
        stats: dict[str, np.ndarray] = {}
        if self.network == "mlp":
            flat = encode(self.observation_space, np.asarray(obs).reshape(-1, *self.raw_obs_shape))
            stats["obs_mean"], stats["obs_std"] = flat.mean(axis=0), flat.std(axis=0) + 1e-6
        if self.use_actions and isinstance(self.action_space, spaces.Box):
            flat = encode(self.action_space, np.asarray(act).reshape(-1, *self.raw_act_shape))
            stats["act_mean"], stats["act_std"] = flat.mean(axis=0), flat.std(axis=0) + 1e-6
        return stats

    def flatten(self, obs: np.ndarray, act: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
        """Batches of any leading shape as ``[count, ...]`` arrays, with the leading shape."""
        obs = np.asarray(obs)
        lead = obs.shape[: obs.ndim - len(self.raw_obs_shape)]
        count = math.prod(lead)
        obs = obs.reshape(count, *self.raw_obs_shape)
        act = np.asarray(act).reshape(count, *self.raw_act_shape)
        return obs, act, lead

    def encode(
        self, obs: np.ndarray, act: np.ndarray, stats: InputStats, device: str | torch.device = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Network inputs ``[*lead, *obs_shape]`` and ``[*lead, act_dim]`` for batches of any leading shape.

        Args:
            obs: observations ``[*lead, *observation shape]``, as the env gives them.
            act: actions ``[*lead, *action shape]`` (read only if the network uses actions).
            stats: the standardisation to apply, on ``device``.
            device: the device of the returned tensors.
        """
        obs = np.asarray(obs)
        act = np.asarray(act)
        lead = obs.shape[: obs.ndim - len(self.raw_obs_shape)]
        count = int(np.prod(lead, dtype=np.int64))
        if self.network == "cnn":
            obs_t = self._images(obs.reshape(count, *self.raw_obs_shape), device)
        else:
            flat = encode(self.observation_space, obs.reshape(count, *self.raw_obs_shape))
            obs_t = (torch.as_tensor(flat, device=device) - stats.obs_mean) / stats.obs_std
        if self.use_actions:
            act_rank = len(self.raw_act_shape)
            act_flat = encode(self.action_space, act.reshape(count, *act.shape[act.ndim - act_rank :]))
            act_t = (torch.as_tensor(act_flat, device=device) - stats.act_mean) / stats.act_std
        else:
            act_t = torch.zeros(count, 0, device=device)
        return obs_t.reshape(*lead, *obs_t.shape[1:]), act_t.reshape(*lead, self.act_dim)

    def _images(self, images: np.ndarray, device: str | torch.device) -> torch.Tensor:
        """``[count, C, H, W]`` floats in [0, 1], masked rows black, from ``[count, ...]`` uint8 images."""
        if images.ndim == 3:
            images = images[:, None]
        elif images.shape[1:] != self.obs_shape:  # channel-last -> channel-first
            images = images.transpose(0, 3, 1, 2)
        # Converted on the device: a uint8 copy moves a quarter of the bytes of a float one.
        obs_t = torch.as_tensor(np.ascontiguousarray(images), device=device).float().div_(255.0)
        for start, stop in self.image_mask_rows:
            obs_t[:, :, start:stop, :] = 0.0
        return obs_t
