"""More from each label: SURF's pseudo-labels and temporal cropping (Park et al. 2022).

- **Temporal cropping.** A preference between two clips usually still holds between slightly
  shorter stretches of them, so each labelled pair is trained on as two crops of one random
  length ``L'`` in ``[L - crop, L]``, each at its own random offset inside its segment (and so
  inside its episode). Both crops have the same length, so their returns compare fairly.
- **Pseudo-labels.** Pairs nobody labelled are given the side the ensemble prefers, where it is
  confident: ``max(P, 1 - P) > threshold`` for the members' mean ``P[first > second]``. Pairs
  below the threshold get no label. The fit then trains on them beside the real labels.

SURF draws its unlabelled pairs from the replay buffer. Here they pair the segments of
*different* labelled pairs, which the fitter already holds: no further data travels to the
fitting process or stays in memory (a few thousand labelled segments make millions of such
pairs), at the price of covering only states that were once asked about.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["crop_pairs", "pseudo_labels", "unlabelled_pairs"]


def crop_pairs(
    obs: np.ndarray, actions: np.ndarray, crop: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random crops of one length ``L'`` in ``[L - crop, L]`` of every segment, each at its own offset.

    Args:
        obs: ``[pairs, 2, L, *obs_shape]`` pairs of segments.
        actions: ``[pairs, 2, L, *action_shape]``.
        crop: most steps to cut off (``0 <= crop < L``).
        rng: where the length and offsets come from.

    Returns:
        ``obs`` and ``actions`` cut to ``[pairs, 2, L', ...]``.

    Example:
        >>> steps = np.tile(np.arange(10), (1, 2, 1))  # one pair of segments: steps 0..9 each
        >>> obs, _ = crop_pairs(steps, steps, crop=3, rng=np.random.default_rng(0))
        >>> 7 <= obs.shape[-1] <= 10, bool(np.all(np.diff(obs, axis=-1) == 1))
        (True, True)
    """
    pairs, length = obs.shape[0], obs.shape[2]
    if not 0 <= crop < length:
        raise ValueError(f"crop must be in [0, {length}) for segments of {length} steps, got {crop}")
    kept = int(rng.integers(length - crop, length + 1))
    starts = rng.integers(0, length - kept + 1, size=(pairs, 2))
    steps = starts[..., None] + np.arange(kept)  # [pairs, 2, L']
    rows, sides = np.arange(pairs)[:, None, None], np.arange(2)[None, :, None]
    return obs[rows, sides, steps], actions[rows, sides, steps]


def unlabelled_pairs(rows: np.ndarray, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``count`` new pairs made of the segments of labelled ``rows``, never both from one row.

    Returns:
        ``(pair_rows, sides)``, each ``[count, 2]``: pair ``i`` is segment ``sides[i, 0]`` of
        row ``pair_rows[i, 0]`` against segment ``sides[i, 1]`` of row ``pair_rows[i, 1]``.

    Example:
        >>> pair_rows, sides = unlabelled_pairs(np.array([3, 5, 8]), 4, np.random.default_rng(0))
        >>> pair_rows.shape, bool(np.all(pair_rows[:, 0] != pair_rows[:, 1]))
        ((4, 2), True)
    """
    if len(rows) < 2:
        raise ValueError("unlabelled pairs need the segments of at least two labelled pairs")
    first = rng.integers(0, len(rows), size=count)
    # A second row drawn from the others: shift by 1 .. len - 1, so never the same row.
    second = (first + rng.integers(1, len(rows), size=count)) % len(rows)
    return np.stack([rows[first], rows[second]], axis=1), rng.integers(0, 2, size=(count, 2))


def pseudo_labels(prob_first: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The ensemble's preferred side of each pair, and where it is confident enough to use it.

    Args:
        prob_first: ``[pairs]`` the members' mean ``P[first > second]``.
        threshold: the confidence ``max(P, 1 - P)`` a pair must exceed to get a label.

    Returns:
        ``(labels, mask)``: ``labels`` 1.0 where the first is preferred, else 0.0; ``mask``
        true where the pair gets its label.

    Example:
        >>> labels, mask = pseudo_labels(torch.tensor([0.999, 0.6, 0.001]), threshold=0.99)
        >>> labels.tolist(), mask.tolist()
        ([1.0, 1.0, 0.0], [True, False, True])
    """
    confidence = torch.maximum(prob_first, 1.0 - prob_first)
    return (prob_first > 0.5).to(prob_first.dtype), confidence > threshold
