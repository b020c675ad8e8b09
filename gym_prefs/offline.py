"""Fitting a reward model from stored labels, without an agent or an env."""

from __future__ import annotations

from typing import Any

from gym_prefs.comparisons import Comparisons
from gym_prefs.fitting import FitReport, RewardTrainer
from gym_prefs.reward_model import RewardEnsemble
from gym_prefs.store import PreferenceStore

__all__ = ["fit_from_store"]


def fit_from_store(
    store: PreferenceStore,
    epochs: int = 200,
    last: int | None = None,
    seed: int | None = 0,
    learning_rate: float = 1e-3,
    batch_size: int = 64,
    **model_kwargs: Any,
) -> tuple[RewardEnsemble, FitReport]:
    """Fit a fresh :class:`~gym_prefs.RewardEnsemble` to the labels of a store.

    Labels collected once can train many agents: fit a model here, then hand it to
    ``LearnedReward(env, reward_model=...)`` or ``PreferenceCallback(reward_model=...)``.

    Args:
        store: the store to read.
        epochs: passes over the labels.
        last: use only the newest this many labels.
        seed: seed of the initial weights, bootstrap samples and minibatch order.
        learning_rate: Adam learning rate.
        batch_size: labelled pairs per minibatch.
        **model_kwargs: :class:`~gym_prefs.RewardEnsemble` arguments (``reward_std``, ...).

    Returns:
        The fitted model (normalised on the labelled steps) and the fit report.

    Example:
        >>> import tempfile
        >>> import numpy as np
        >>> from gymnasium import spaces
        >>> from gym_prefs.records import Answer, SegmentPairs
        >>> store = PreferenceStore(tempfile.mkdtemp() + "/p.db", spaces.Box(-1, 1, (1,)), spaces.Discrete(2), 3)
        >>> obs = np.random.default_rng(0).uniform(-1, 1, (40, 2, 3, 1))
        >>> ids = store.add_queries(SegmentPairs(obs, np.zeros((40, 2, 3), int)), source="import")
        >>> better = obs[:, 0].sum((1, 2)) > obs[:, 1].sum((1, 2))
        >>> _ = store.record_answers([Answer(i, "first" if b else "second") for i, b in zip(ids, better)])
        >>> model, report = fit_from_store(store, epochs=50)
        >>> report.pairs
        40
    """
    pairs = store.labelled_pairs(last=last)
    if len(pairs) == 0:
        raise ValueError(f"the store {store.path} holds no labels to fit to")
    model = RewardEnsemble(store.observation_space, store.action_space, seed=seed, **model_kwargs)
    data = Comparisons(store.observation_space, store.action_space, store.segment_length)
    data.add_labelled(pairs)
    trainer = RewardTrainer(model, lr=learning_rate, batch_size=batch_size, seed=seed)
    report = trainer.fit(data, epochs)
    return model, report
