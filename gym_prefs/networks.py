"""Reward networks for a whole ensemble at once.

Every network here maps inputs for ``n`` members to ``n`` rewards in one call, so that neither
prediction nor fitting loops over members in Python. Inputs come either shared by all members
(``[batch, ...]``, prediction) or one batch per member (``[n, batch, ...]``, fitting on
bootstrap samples); the output is always ``[n, batch]``.

- :class:`EnsembleMLP`: the paper's MuJoCo net, weights stacked along a member axis.
- :class:`EnsembleCNN`: the paper's Atari net, members as groups of a grouped convolution.
- :class:`ModuleEnsemble`: any user module per member (a loop, the price of full freedom).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["EnsembleCNN", "EnsembleLinear", "EnsembleMLP", "MemberFactory", "ModuleEnsemble"]

#: Builds one ensemble member: ``factory(obs_dim_or_shape, act_dim) -> module`` whose
#: ``forward(obs, act)`` maps ``[batch, *obs]`` and ``[batch, act_dim]`` to ``[batch]``.
MemberFactory = Callable[[tuple[int, ...], int], nn.Module]

LEAKY_SLOPE = 0.01


def _per_member(x: torch.Tensor, n_members: int, feature_dims: int) -> torch.Tensor:
    """View ``x`` as ``[n, batch, ...]``, broadcasting a shared ``[batch, ...]`` input."""
    if x.dim() == feature_dims + 1:
        return x.unsqueeze(0).expand(n_members, *x.shape)
    return x


class EnsembleLinear(nn.Module):
    """``n`` independent linear layers applied as one batched matrix product.

    Example:
        >>> layer = EnsembleLinear(3, 4, 2)
        >>> layer(torch.zeros(3, 5, 4)).shape
        torch.Size([3, 5, 2])
    """

    def __init__(self, n_members: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_members, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(n_members, 1, out_features))
        bound = 1.0 / math.sqrt(in_features)
        # Same initial distribution as nn.Linear, drawn independently for every member.
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleMLP(nn.Module):
    """Reward MLP on (observation, action) for every member: hidden layers, leaky ReLU 0.01.

    Args:
        n_members: ensemble size.
        obs_dim: length of the encoded observation.
        act_dim: length of the encoded action (0 to ignore actions).
        hidden_sizes: widths of the hidden layers (the paper: 64, 64).
        dropout: dropout probability after each hidden layer.

    Example:
        >>> net = EnsembleMLP(3, obs_dim=4, act_dim=2)
        >>> net(torch.zeros(10, 4), torch.zeros(10, 2)).shape
        torch.Size([3, 10])
    """

    def __init__(
        self,
        n_members: int,
        obs_dim: int,
        act_dim: int,
        hidden_sizes: Sequence[int] = (64, 64),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.n_members = n_members
        sizes = [obs_dim + act_dim, *hidden_sizes]
        self.hidden = nn.ModuleList(EnsembleLinear(n_members, a, b) for a, b in itertools.pairwise(sizes))
        self.out = EnsembleLinear(n_members, sizes[-1], 1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, act], dim=-1) if act.shape[-1] else obs
        x = _per_member(x, self.n_members, 1)
        for layer in self.hidden:
            x = self.dropout(F.leaky_relu(layer(x), LEAKY_SLOPE))
        return self.out(x).squeeze(-1)


class EnsembleCNN(nn.Module):
    """The paper's Atari reward net for every member, as grouped convolutions.

    Four convolutions (7x7, 5x5, 3x3, 3x3; strides 3, 2, 1, 1; 16 filters each) with batch norm,
    dropout and leaky ReLU 0.01, then a 64-unit layer (which also reads the action, if any) and
    a scalar. Member ``m`` owns channel group ``m`` of every convolution, so batch-norm
    statistics and weights stay separate per member.

    Args:
        n_members: ensemble size.
        obs_shape: channel-first image shape ``(C, H, W)``; pixels are expected in [0, 1].
        act_dim: length of the encoded action (0 to ignore actions).
        dropout: dropout probability on the convolutional layers (the paper: 0.5).
        batch_norm: whether to use batch norm on the convolutional layers.

    Example:
        >>> net = EnsembleCNN(3, obs_shape=(4, 84, 84), act_dim=6).eval()
        >>> net(torch.zeros(2, 4, 84, 84), torch.zeros(2, 6)).shape
        torch.Size([3, 2])
    """

    KERNELS = (7, 5, 3, 3)
    STRIDES = (3, 2, 1, 1)
    FILTERS = 16
    HIDDEN = 64

    def __init__(
        self,
        n_members: int,
        obs_shape: tuple[int, int, int],
        act_dim: int,
        dropout: float = 0.5,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        self.n_members = n_members
        channels, height, width = obs_shape
        layers: list[nn.Module] = []
        in_ch = channels
        for kernel, stride in zip(self.KERNELS, self.STRIDES, strict=True):
            height, width = (height - kernel) // stride + 1, (width - kernel) // stride + 1
            if height < 1 or width < 1:
                raise ValueError(
                    f"images of shape {obs_shape} are too small for the Atari reward CNN "
                    "(it needs at least 43x43 pixels); pass network='mlp' or a "
                    "member_factory to RewardEnsemble"
                )
            out_ch = self.FILTERS
            layers.append(nn.Conv2d(n_members * in_ch, n_members * out_ch, kernel, stride, groups=n_members))
            if batch_norm:
                layers.append(nn.BatchNorm2d(n_members * out_ch))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            layers.append(nn.LeakyReLU(LEAKY_SLOPE))
            in_ch = out_ch
        self.conv = nn.Sequential(*layers)
        self.flat_features = self.FILTERS * height * width
        self.hidden = EnsembleLinear(n_members, self.flat_features + act_dim, self.HIDDEN)
        self.out = EnsembleLinear(n_members, self.HIDDEN, 1)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        n = self.n_members
        if obs.dim() == 4:  # shared input: every member sees the same images
            batch = obs.shape[0]
            # Grouped over copies of the same images, the first convolution is a dense one over
            # the images as they are (its weight is [n * filters, C, k, k]): the same numbers,
            # without the n copies. Every Atari step pays this: the per-step inference of a
            # 100,000-step Pong run on one core took 42 s instead of 71 s.
            first = self.conv[0]
            assert isinstance(first, nn.Conv2d)
            x = self.conv[1:](F.conv2d(obs, first.weight, first.bias, first.stride))
        else:  # [n, batch, C, H, W] -> [batch, n*C, H, W]: member m is channel group m
            batch = obs.shape[1]
            x = self.conv(obs.transpose(0, 1).reshape(batch, -1, *obs.shape[-2:]))
        x = x.reshape(batch, n, -1).transpose(0, 1)  # [n, batch, features]
        if act.shape[-1]:
            x = torch.cat([x, _per_member(act, n, 1)], dim=-1)
        x = F.leaky_relu(self.hidden(x), LEAKY_SLOPE)
        return self.out(x).squeeze(-1)


class ModuleEnsemble(nn.Module):
    """Wraps one user-built module per member behind the ensemble calling convention.

    Example:
        >>> class Linear(nn.Module):
        ...     def __init__(self, obs_shape, act_dim):
        ...         super().__init__()
        ...         self.fc = nn.Linear(obs_shape[0] + act_dim, 1)
        ...     def forward(self, obs, act):
        ...         return self.fc(torch.cat([obs, act], -1)).squeeze(-1)
        >>> net = ModuleEnsemble([Linear((4,), 2) for _ in range(3)])
        >>> net(torch.zeros(5, 4), torch.zeros(5, 2)).shape
        torch.Size([3, 5])
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.n_members = len(self.members)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        per_member = act.dim() == 3  # [n, batch, act_dim] rather than a shared [batch, act_dim]
        outputs = []
        for m, member in enumerate(self.members):
            member_obs = obs[m] if per_member else obs
            member_act = act[m] if per_member else act
            outputs.append(member(member_obs, member_act).reshape(-1))
        return torch.stack(outputs)
