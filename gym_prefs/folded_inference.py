"""The per-step fast path of a reward MLP ensemble: its layers folded into a few NumPy products.

With the input standardisation folded into the first layer and each member's normalisation
into the last, a prediction is a handful of batched matrix products. On the CPU they run in
NumPy: for a few transitions torch's per-call dispatch costs more than the arithmetic (30
against 13 µs for 4 HalfCheetah steps). Larger batches run in torch, which follows
``torch.set_num_threads``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from gym_prefs.networks import LEAKY_SLOPE, EnsembleLinear, EnsembleMLP
from gym_prefs.spaces import encode

if TYPE_CHECKING:
    from gym_prefs.reward_model import RewardEnsemble

__all__ = ["FOLDED_MAX_ROWS", "FoldedMlp"]

# Batches up to this many transitions (the per-step ones) take the folded NumPy path; larger
# ones run in torch, which follows torch.set_num_threads.
FOLDED_MAX_ROWS = 256


class FoldedMlp:
    """Folded NumPy copies of a :class:`~gym_prefs.RewardEnsemble`'s MLP, refolded when it changes.

    The folded weights are rebuilt whenever one of the model's weights or buffers changed in
    place (torch counts such changes in each tensor's ``_version``). A model whose tensors are
    replaced (``.to(device)``, new networks) must build a new ``FoldedMlp``.

    Args:
        model: the ensemble to fold; read again at every refold.

    Example:
        >>> import gymnasium as gym
        >>> from gym_prefs import RewardEnsemble
        >>> env = gym.make("Pendulum-v1")
        >>> model = RewardEnsemble(env.observation_space, env.action_space, seed=0)
        >>> folded = FoldedMlp(model)
        >>> folded.serves(4), folded.serves(FOLDED_MAX_ROWS + 1)
        (True, False)
        >>> obs, act = np.zeros((4, 3)), np.zeros((4, 1))
        >>> np.allclose(folded.predict_members(obs, act), model.predict_members(obs, act), atol=1e-5)
        True
    """

    def __init__(self, model: RewardEnsemble) -> None:
        self._model = model
        self._sources = [*model.parameters(), *model.buffers()]
        self._layers: list[tuple[np.ndarray, np.ndarray]] = []
        self._key: tuple[int, ...] = ()

    def serves(self, rows: int) -> bool:
        """Whether a batch of ``rows`` transitions takes this path: an MLP on the CPU, few rows."""
        model = self._model
        return isinstance(model.net, EnsembleMLP) and model.device.type == "cpu" and rows <= FOLDED_MAX_ROWS

    def predict_members(self, obs: np.ndarray, act: np.ndarray) -> np.ndarray:
        """Every member's normalised reward, ``[members, count]`` float32, for flattened transitions.

        Args:
            obs: observations ``[count, *observation shape]``, as the environment gives them.
            act: actions ``[count, *action shape]`` (read only if the model uses actions).
        """
        key = tuple(t._version for t in self._sources)
        if key != self._key:
            self._layers, self._key = self._fold(), key
        model = self._model
        x = encode(model.observation_space, obs)
        if model.use_actions:
            x = np.concatenate([x, encode(model.action_space, act)], axis=1)
        *hidden, (out_weight, out_bias) = self._layers
        h = x  # [batch, inputs], shared by the members: matmul broadcasts it to [members, batch, hidden]
        for weight, bias in hidden:
            h = np.matmul(h, weight) + bias
            h = np.maximum(h, LEAKY_SLOPE * h)  # leaky ReLU (slope < 1)
        rewards = np.matmul(h, out_weight) + out_bias  # [members, batch, 1]
        return rewards[..., 0].astype(np.float32, copy=False)

    @torch.inference_mode()
    def _fold(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(weight, bias) of every layer, standardisation in the first and normalisation in the last.

        Without hidden layers the output layer is both.
        """
        model = self._model
        net = model.net
        assert isinstance(net, EnsembleMLP)
        mean = torch.cat([model.obs_mean, model.act_mean])
        std = torch.cat([model.obs_std, model.act_std])
        linears = [layer for layer in net.hidden if isinstance(layer, EnsembleLinear)] + [net.out]
        layers: list[tuple[torch.Tensor, torch.Tensor]] = [(layer.weight, layer.bias) for layer in linears]
        weight, bias = layers[0]
        layers[0] = (weight / std[None, :, None], bias - torch.matmul((mean / std)[None, None, :], weight))
        weight, bias = layers[-1]
        scale = model.scale[:, None, None]
        layers[-1] = (weight * scale, (bias - model.offset[:, None, None]) * scale)
        return [(w.float().cpu().numpy(), b.float().cpu().numpy()) for w, b in layers]
