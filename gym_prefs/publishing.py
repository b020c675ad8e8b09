"""Publishing a fitted reward model: to the wrappers, to disk, to a replay buffer and to the logs."""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.utils import safe_mean

from gym_prefs.env_link import RewardWrappers
from gym_prefs.exploration import UncertaintyBonus
from gym_prefs.fitting import FitReport
from gym_prefs.reward_model import RewardEnsemble
from gym_prefs.sb3_internals import relabel_replay_buffer, report_true_return
from gym_prefs.segments import SegmentPool
from gym_prefs.timings import Timings
from gym_prefs.wrappers import EPISODE_RETURNS_KEY, LEARNED_RETURN_KEY, TRUE_RETURN_KEY

__all__ = ["CORRELATION_STEPS", "EpisodeReturns", "Publisher", "correlation", "true_reward_correlation"]

#: Recent steps on which ``reward_model/true_reward_corr`` is measured after each fit.
CORRELATION_STEPS = 2_048


class Publisher:
    """Puts each fitted model to use: the wrappers predict with it, it is saved, buffers relabelled, logged.

    Args:
        model: the run's reward model, which the wrappers share (updated in place).
        wrappers: the training env's reward wrappers.
        save_to: where the model is saved after every fit (``None``: not saved).
        store_path: the store, named in the error when saving fails.
        relabel: relabel an off-policy algorithm's replay buffer after every fit.
        timings: where the time spent is added up.
        exploration: RUNE's bonus for the wrappers to pay beside r̂ (``None``: none).

    Example:
        >>> from gymnasium import spaces
        >>> model = RewardEnsemble(spaces.Box(-1, 1, (2,)), spaces.Discrete(2), seed=0)
        >>> class NoWrappers:
        ...     def push(self, model, exploration_bonus=0.0): pass
        >>> publisher = Publisher(model, NoWrappers(), None, "p.db", relabel=False, timings=Timings())
        >>> publisher.fits
        0
    """

    def __init__(
        self,
        model: RewardEnsemble,
        wrappers: RewardWrappers,
        save_to: Path | None,
        store_path: Path | str,
        relabel: bool,
        timings: Timings,
        exploration: UncertaintyBonus | None = None,
    ) -> None:
        self.model = model
        self.exploration = exploration
        self.wrappers = wrappers
        self.save_to = save_to
        self.store_path = store_path
        self.relabel = relabel
        self.timings = timings
        self.fits = 0
        self.last_report: FitReport | None = None
        self.bonus = 0.0  # the β the wrappers pay now

    def publish(self, state: dict[str, torch.Tensor], report: FitReport, algo: BaseAlgorithm) -> None:
        """Use the fitted ``state`` from now on (it is calibrated already: the trainer normalises it)."""
        self.fits += 1
        self.last_report = report
        bonus = self.bonus = self.bonus_at(algo.num_timesteps) if self.exploration else 0.0
        with self.timings.measure("push"):
            self.model.load_state_dict(state)
            self.wrappers.push(self.model, bonus)
            self._save()
        if self.relabel and isinstance(algo, OffPolicyAlgorithm):
            with self.timings.measure("relabel"):
                relabel_replay_buffer(algo, self.model, bonus)

    def bonus_at(self, timestep: int) -> float:
        """RUNE's β at ``timestep`` (0 without exploration): it decays from one fit to the next."""
        return self.exploration.at(timestep) if self.exploration is not None else 0.0

    def _save(self) -> None:
        if self.save_to is None:
            return
        try:
            self.model.save(self.save_to)
        except OSError as error:  # a full disk, most often: say what is safe and what to do
            raise OSError(
                error.errno,
                f"could not save the reward model to {self.save_to} ({error.strerror or error}). "
                f"Every label is in {self.store_path}: free space (or let this user write that folder) "
                "and start the run again on that store",
            ) from error

    def log(self, logger: Logger, pool: SegmentPool, verbose: int) -> None:
        """Record the last fit's numbers, and how well r̂ follows the true reward on recent steps."""
        report = self.last_report
        if report is None:
            return
        with self.timings.measure("logging"):
            corr = true_reward_correlation(self.model, pool)
        logger.record("reward_model/train_loss", report.train_loss)
        logger.record("reward_model/val_loss", report.val_loss)
        logger.record("reward_model/accuracy", report.accuracy)
        logger.record("reward_model/l2", report.l2)
        logger.record("reward_model/true_reward_corr", corr)
        logger.record("reward_model/fits", self.fits)
        logger.record("reward_model/fit_steps", report.steps)
        if self.exploration is not None:
            logger.record("reward_model/exploration_bonus", self.bonus)
        if report.pseudo_labelled is not None:
            logger.record("reward_model/pseudo_labelled", report.pseudo_labelled)
        if verbose:
            corr_text = "" if np.isnan(corr) else f", corr with true reward {corr:.2f}"
            print(
                f"gym_prefs: fit {self.fits} on {report.pairs} labels ({report.steps} gradient steps): "
                f"train loss {report.train_loss:.3f}, "
                f"val loss {report.val_loss:.3f}, accuracy {report.accuracy:.2f}{corr_text}"
            )


class EpisodeReturns:
    """The true and learned returns of the last 100 episodes, side by side in the logs.

    Example:
        >>> returns = EpisodeReturns()
        >>> returns.observe([{"episode_returns": {"true": 5.0, "learned": 0.5, "l": 10}}])
        >>> list(returns.true)
        [5.0]
    """

    def __init__(self, window: int = 100) -> None:
        self.true: deque[float] = deque(maxlen=window)
        self.learned: deque[float] = deque(maxlen=window)

    def observe(self, infos: Any) -> None:
        """Take the episode ends reported in a step's ``infos``; Monitor's record shows the true return."""
        for info in infos:
            returns = info.get(EPISODE_RETURNS_KEY)
            if returns is None:
                continue
            self.true.append(returns[TRUE_RETURN_KEY])
            self.learned.append(returns[LEARNED_RETURN_KEY])
            report_true_return(info, returns[TRUE_RETURN_KEY])

    def log(self, logger: Logger) -> None:
        if self.true:
            logger.record("rollout/ep_true_rew_mean", safe_mean(list(self.true)))
            logger.record("rollout/ep_learned_rew_mean", safe_mean(list(self.learned)))


def true_reward_correlation(model: RewardEnsemble, pool: SegmentPool) -> float:
    """Correlation of r̂ with the true reward on the pool's latest :data:`CORRELATION_STEPS` steps.

    A pool that records the members' rewards (``pool.members``) gives the rewards the agent was
    paid, by the model in use when each step was taken (steps before the first fit left out);
    any other pool is scored afresh by ``model``.
    """
    if pool.members:
        recent = pool.recent(CORRELATION_STEPS, ["member_rewards", "learned_rewards", "true_rewards"])
        scored = ~np.isnan(recent["member_rewards"]).any(axis=1)
        return correlation(recent["learned_rewards"][scored], recent["true_rewards"][scored])
    recent = pool.recent(CORRELATION_STEPS, ["obs", "actions", "true_rewards"])
    if not len(recent["obs"]):
        return float("nan")
    return correlation(model.predict(recent["obs"], recent["actions"]), recent["true_rewards"])


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of ``a`` and ``b`` (``nan`` when either is constant or too short)."""
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])
