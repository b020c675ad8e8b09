"""Batched inference in memory-bounded chunks: how many rows a forward pass may take, and the loop.

Selection, calibration and relabelling run a reward ensemble over many transitions at once.
They do so :func:`rows_per_batch` rows at a time, so that the working memory stays near
:data:`INFERENCE_BATCH_BYTES` whatever the size of the observations.

Example:
    >>> row = inference_row_bytes((4, 84, 84), act_dim=0, n_members=3)
    >>> rows_per_batch(row)
    264
    >>> double = lambda obs, act: torch.as_tensor(obs * 2.0)[None]
    >>> run_in_batches(double, np.arange(5.0), np.zeros(5), batch_size=2, row_bytes=row).tolist()
    [[0.0, 2.0, 4.0, 6.0, 8.0]]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

__all__ = [
    "INFERENCE_ACTIVATION_FACTOR",
    "INFERENCE_BATCH_BYTES",
    "inference_row_bytes",
    "rows_per_batch",
    "run_in_batches",
]

# Batched inference (selection, calibration, relabelling) runs in batches of about this many
# bytes of working memory, whatever the observations. A fixed 4096 rows was harmless for vectors
# but, at about 24 MiB a row, would need 96 GiB for 512x512x3 images (the kernel killed such a
# run at 21 GB).
INFERENCE_BATCH_BYTES = 256 * 2**20
# Peak memory of an inference forward pass per row, in units of 4 bytes x members x the widest
# layer (the input for the CNN). Measured (peak RSS growth per row, 3 members, CPU): CNN on
# 512x512x3 images 2.65, on 84x84x4 2.8 (the float copy of the input, its per-member copies and
# two convolution outputs live at once); MLP 17 -> (64, 64) 3.0.
INFERENCE_ACTIVATION_FACTOR = 3


def inference_row_bytes(
    obs_shape: Sequence[int], act_dim: int, n_members: int, hidden_sizes: Sequence[int] = ()
) -> int:
    """Estimated peak working memory of one row of an inference forward pass, in bytes.

    Args:
        obs_shape: one observation as the network reads it.
        act_dim: length of the encoded action (0 if the network does not read actions).
        n_members: members of the ensemble.
        hidden_sizes: hidden widths of the built-in MLP; empty for the CNN or a member
            network of the user's.
    """
    inputs = math.prod(obs_shape) + act_dim
    # The MLP's input is shared (a broadcast view) but every member holds its hidden layers. The
    # CNN copies the input for every member and its layers are narrower than the input; a user's
    # member network is assumed to hold about its input per member.
    widest = max([inputs, *hidden_sizes])
    return 4 * n_members * widest * INFERENCE_ACTIVATION_FACTOR


def rows_per_batch(row_bytes: int) -> int:
    """Rows of ``row_bytes`` each that fit :data:`INFERENCE_BATCH_BYTES`, at least 1."""
    return max(1, INFERENCE_BATCH_BYTES // row_bytes)


@torch.inference_mode()
def run_in_batches(
    members: Callable[[np.ndarray, np.ndarray], torch.Tensor],
    obs: np.ndarray,
    act: np.ndarray,
    batch_size: int | None,
    row_bytes: int,
) -> torch.Tensor:
    """``members`` (rewards ``[n, rows]`` of a batch) over ``count`` transitions, ``[n, count]``.

    Args:
        members: maps observations and actions ``[rows, ...]`` to rewards ``[n, rows]``.
        obs: observations ``[count, ...]``.
        act: actions ``[count, ...]``.
        batch_size: rows per call of ``members``; ``None`` for :func:`rows_per_batch`.
        row_bytes: the working memory of a row (:func:`inference_row_bytes`), for the default.

    Raises:
        ValueError: if ``batch_size`` is less than 1.
    """
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be a positive number of rows, or None for the default; got {batch_size}")
    batch_size = rows_per_batch(row_bytes) if batch_size is None else int(batch_size)
    count = len(obs)
    if count <= batch_size:  # the per-step path: no chunking, no concatenation
        return members(obs, act)
    chunks = [members(obs[i : i + batch_size], act[i : i + batch_size]) for i in range(0, count, batch_size)]
    return torch.cat(chunks, dim=1)
