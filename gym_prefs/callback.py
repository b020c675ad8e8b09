"""The Stable-Baselines3 callback that runs the preference loop beside any algorithm.

It only orchestrates: each job is a part built when ``learn()`` starts (see
:class:`~gym_prefs.run_setup.RunParts`): the labelling side asks and collects, a fitter fits,
a publisher puts each fitted model to use.

Logged through SB3's logger: ``preferences/labels`` (trained-on labels),
``preferences/queries``, ``preferences/pending``, ``preferences/skipped``,
``reward_model/train_loss``, ``reward_model/val_loss``, ``reward_model/accuracy``,
``reward_model/l2``, ``reward_model/true_reward_corr`` (Pearson correlation of r̂ with the
true reward on recent steps; see :func:`gym_prefs.publishing.true_reward_correlation`),
``reward_model/fits``, ``reward_model/fit_steps``, and the episode returns side by side:
``rollout/ep_true_rew_mean`` and ``rollout/ep_learned_rew_mean``. SB3's own
``rollout/ep_rew_mean`` is made to show the **true** return too, wherever ``Monitor`` sits.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback

from gym_prefs.config import PreferenceConfig
from gym_prefs.coverage import AskedPairs
from gym_prefs.fitting import FitReport
from gym_prefs.publishing import EpisodeReturns
from gym_prefs.records import SegmentPairs
from gym_prefs.reward_model import RewardEnsemble
from gym_prefs.run_setup import RunParts
from gym_prefs.sb3_internals import learn_horizon, run_policy
from gym_prefs.segments import DEFAULT_SEGMENT_LENGTH
from gym_prefs.selection import select_pairs
from gym_prefs.sources import PERSON_SOURCES, PreferenceSource, make_source
from gym_prefs.store import PreferenceStore
from gym_prefs.timings import Timings

__all__ = ["DEFAULT_SEGMENT_LENGTH", "PreferenceCallback"]


class PreferenceCallback(BaseCallback):
    """Teaches any Stable-Baselines3 algorithm from preferences between clips of its behaviour.

    The training env must be wrapped in :class:`~gym_prefs.LearnedReward` (each env) or
    :class:`~gym_prefs.VecLearnedReward` (the VecEnv). The callback then runs the loop of
    Christiano et al. (2017):

    1. Before RL, it runs the initial policy, asks for ``initial_label_fraction`` of the budget
       on pairs of its segments, waits for the answers and fits the reward model.
    2. Every ``refit_interval`` timesteps (at a rollout boundary) it asks for the labels due
       (pairs chosen by ensemble disagreement or at random), collects the answers that have
       arrived, hands the wrappers the model fitted since the previous update and starts the
       next fit, on all labels, in the background. On-policy algorithms see one reward model
       per rollout; off-policy replay buffers are relabelled with each new model.

    What it logs is listed in :mod:`gym_prefs.callback`.

    Args:
        source: who labels: ``"oracle"``, ``"human"`` (a pygame window), ``"web"`` (a page in a
            browser) or a :class:`~gym_prefs.PreferenceSource`.
        config: the loop's settings (:class:`~gym_prefs.PreferenceConfig`; the defaults if
            ``None``); ``settings`` change single ones.
        store: the :class:`~gym_prefs.PreferenceStore` (or its path) every query and answer
            is committed to, and the reward model saved beside (``*.reward_model.pt``). ``None``:
            ``preferences.db`` beside SB3's logs, else under ``runs/ENV-TIME/``. A run started
            on a store with labels continues from them; a store in use by another live run is
            refused with :class:`~gym_prefs.StoreBusyError`.
        instruction: what a person should teach, shown with every pair (``"human"`` and
            ``"web"`` only; a source object takes its own).
        verbose: 0 silent, 1 a line per fit.
        **settings: any field of :class:`~gym_prefs.PreferenceConfig` (``total_labels``,
            ``segment_length``, ``fitting``, ``seed``, ...), as plain values.

    Example:
        >>> import gymnasium as gym
        >>> from stable_baselines3 import PPO
        >>> import gym_prefs
        >>> import tempfile
        >>> env = gym_prefs.LearnedReward(gym.make("Pendulum-v1"))
        >>> model = PPO("MlpPolicy", env, n_steps=256, seed=0)
        >>> store = tempfile.mkdtemp() + "/preferences.db"
        >>> callback = gym_prefs.PreferenceCallback("oracle", total_labels=20, store=store, seed=0)
        >>> _ = model.learn(1024, callback=callback)
        gym_prefs: labels are stored in .../preferences.db
        >>> callback.num_labels
        20
    """

    def __init__(
        self,
        source: str | PreferenceSource = "oracle",
        *,
        config: PreferenceConfig | None = None,
        store: str | os.PathLike[str] | PreferenceStore | None = None,
        instruction: str | None = None,
        verbose: int = 0,
        **settings: Any,
    ) -> None:
        super().__init__(verbose)
        self.config = PreferenceConfig.from_settings(settings, base=config)
        _check_labels_per_query(source, self.config.labels_per_query)
        self.source = make_source(source, seed=self.config.seed, **_person_kwargs(source, instruction))
        self._owns_source = isinstance(source, str)
        self._store_spec = store
        self.rng = np.random.default_rng(self.config.seed)
        # Pairs asked so far, which k-center selection keeps away from (since this callback
        # was made: a restarted run starts afresh, as its first queries are random anyway).
        self.asked = AskedPairs(capacity=self.config.max_comparisons or 2000)
        self.timings = Timings()
        self.episode_returns = EpisodeReturns()
        self.schedule = self.config.label_schedule(horizon=1)  # until learn() says how long it runs
        self._parts: RunParts | None = None  # built at the first learn(), then kept
        self._interval = self._next_update = 0
        self._exploring = False  # PEBBLE's pre-training runs (exploration_steps)
        self._labels_from = 0  # the timestep the label schedule counts from (after exploring)

    @property
    def parts(self) -> RunParts:
        if self._parts is None:
            raise RuntimeError("the reward model, store and fitter are set up when model.learn() starts")
        return self._parts

    @property
    def reward_model(self) -> RewardEnsemble:
        """The run's :class:`~gym_prefs.RewardEnsemble` (available once ``learn`` has started)."""
        return self.parts.model

    @property
    def store(self) -> PreferenceStore | None:
        return None if self._parts is None else self._parts.store

    @property
    def segment_length(self) -> int | None:
        return self.config.segment_length if self._parts is None else self._parts.segment_length

    @property
    def num_queries(self) -> int:
        """Queries asked so far (the budget counts these), counted in the store."""
        return 0 if self._parts is None else self._parts.labelling.num_asked

    @property
    def num_labels(self) -> int:
        """Labels in the store so far (answers other than "can't tell"), this run's and earlier ones."""
        return 0 if self._parts is None else self._parts.num_labels()

    @property
    def num_fits(self) -> int:
        return 0 if self._parts is None else self._parts.publisher.fits

    @property
    def last_fit(self) -> FitReport | None:
        return None if self._parts is None else self._parts.publisher.last_report

    def time_breakdown(self) -> dict[str, float]:
        """Seconds spent so far in each part of the loop, reward inference in the wrappers included."""
        breakdown = dict(self.timings.seconds)
        return breakdown if self._parts is None else {**breakdown, **self._parts.time_breakdown()}

    # ------------------------------------------------------------------ set-up and tear-down
    def _init_callback(self) -> None:
        # SB3 calls this at every learn(): labels, model and fitter carry over between calls.
        if self._parts is None:
            self._parts = RunParts.build(
                self.config, self.source, self._store_spec, self.training_env, self.logger, self.timings
            )
            # Closed at garbage collection or exit too: no script needs to call close().
            weakref.finalize(self, _close, self._parts, self.source if self._owns_source else None)
        self.parts.attach(self.training_env, self.model, self.config, self.source)

    def close(self) -> None:
        """Stop fitting, close the source and the store the callback opened (also done at exit)."""
        self.source.close()
        if self._parts is not None:
            self._parts.close()

    def _on_training_start(self) -> None:
        cfg = self.config
        horizon = learn_horizon(self.model, self.locals.get("total_timesteps", 1))
        self.parts.check_something_to_learn(cfg.total_labels)
        fresh = self.num_fits == 0 and self.num_queries == 0 and not len(self.parts.comparisons)
        if cfg.exploration_steps and fresh and self.num_timesteps < cfg.exploration_steps:
            # PEBBLE: RL first learns to reach new states; labels and the schedule start after.
            self._exploring = True
            self.parts.wrappers.explore(True)
            horizon = max(1, horizon - (cfg.exploration_steps - self.num_timesteps))
        self.schedule = cfg.label_schedule(horizon)
        self._interval = cfg.refit_interval or max(1, horizon // 50)
        self._next_update = self.num_timesteps + self._interval
        if not self._exploring:
            self._first_fit()

    def _first_fit(self) -> None:
        """Ask the initial share of labels, wait for them and fit on them (before RL, or after exploring)."""
        cfg, parts = self.config, self.parts
        if self.num_queries < self.schedule.initial:
            count = self.schedule.initial - self.num_queries
            if parts.pool.num_segments(parts.segment_length) < 2 * count:  # exploring may have made enough
                with self.timings.measure("initial_rollout"):
                    _roll_out_initial_policy(self.model, parts, count, cfg.initial_steps)
            self._ask(count, required=True)
        elif not (self.num_fits == 0 and (parts.labelling.num_pending or len(parts.comparisons))):
            return
        # Before RL: the initial share answered (a resumed run refits on every stored label too).
        parts.labelling.wait_for_initial(self.schedule.initial, cfg.initial_label_timeout)
        self.parts.start_fit(*cfg.fit_length(initial=True))
        self._apply_fit()

    def _end_exploration(self) -> None:
        """Back to r̂ after PEBBLE's pre-training: the first labels come from the segments it reached."""
        self._exploring = False
        self.parts.wrappers.explore(False)
        self.parts.drain()
        self._labels_from = self.num_timesteps
        self._next_update = self.num_timesteps + self._interval
        self._first_fit()

    def _on_training_end(self) -> None:
        if self._exploring:  # the whole run explored: still leave labels and a model
            self._end_exploration()
        # Use the rest of the budget due by now, and leave a model fitted on every label.
        self._update()
        self._apply_fit()
        if self.parts.labels_since_fit:
            self.parts.start_fit(*self.config.fit_length(initial=False))
            self._apply_fit()
        # What happened since SB3's last log dump would otherwise never reach the logs.
        self.logger.record("time/total_timesteps", self.num_timesteps, exclude="tensorboard")
        self.logger.dump(self.num_timesteps)
        # Nobody should go on answering for a run that has ended (a person's window closes;
        # every answer given is in the store). A later learn() asks the source again.
        self.source.close()

    # ------------------------------------------------------------------ the loop
    def _on_step(self) -> bool:
        self.episode_returns.observe(self.locals.get("infos", ()))
        return True

    def _on_rollout_start(self) -> None:
        if self._exploring:
            self.parts.drain()  # keep the newest states reached: the first segments come from them
            if self.num_timesteps >= self.config.exploration_steps:
                self._end_exploration()
            return
        if self.num_timesteps < self._next_update:
            return
        while self._next_update <= self.num_timesteps:
            self._next_update += self._interval
        self._update()

    def _on_rollout_end(self) -> None:
        self.episode_returns.log(self.logger)

    def _update(self) -> None:
        """Ask for the labels now due, collect answers, apply the last fit, start the next."""
        with self.timings.measure("bookkeeping"):
            self.parts.drain()
        due = min(self.schedule.due(self.num_timesteps - self._labels_from), self.config.total_labels)
        due -= self.num_queries
        if due > 0:
            self._ask(due)
        self.parts.labelling.collect(timeout=0.0)
        # The fit started at the previous update has run beside the last rollout(s): apply it
        # now, waiting for it if need be, so that runs stay reproducible; or, without
        # wait_for_fits, only if it has ended (else it goes on, and RL with it).
        self._apply_fit(wait=self.config.wait_for_fits)
        if self.parts.labels_since_fit and not self.parts.fitter.busy:
            self.parts.start_fit(*self.config.fit_length(initial=False))
        self._log_counts()

    def _ask(self, count: int, required: bool = False) -> None:
        with self.timings.measure("selection"):
            pairs = _select(self.parts, self.config, count, self.rng, required, self.asked)
        if pairs is not None:
            self.parts.labelling.ask(pairs, timestep=self.num_timesteps)

    def _apply_fit(self, wait: bool = True) -> None:
        """Put the running fit's model to use, waiting for it unless ``wait`` is false."""
        if self.parts.apply_fit(self.model, self.logger, self.verbose, self.timings, wait):
            self._log_counts()

    def _log_counts(self) -> None:
        self.parts.labelling.log_counts(self.logger, labels=self.parts.num_labels())


def _select(
    parts: RunParts, config: PreferenceConfig, count: int, rng: np.random.Generator, required: bool, asked: AskedPairs
) -> SegmentPairs | None:
    """``count`` pairs to ask about, or ``None`` while the pool holds no segment yet.

    With ``required`` (or once the pool has filled up without a single segment), having no
    segment to cut is an error; otherwise the request waits for more steps.
    """
    length, pool = parts.segment_length, parts.pool
    if pool.num_segments(length) == 0:
        if required or pool.written.min() >= pool.capacity:
            pool.sample(1, length, rng)  # raises the clear error
        return None
    return select_pairs(pool, parts.model, count, length, config.selection, rng, config.candidates_factor, asked)


def _roll_out_initial_policy(algo: BaseAlgorithm, parts: RunParts, count: int, initial_steps: int | None) -> None:
    """Run the initial policy long enough for ``count`` pairs of segments (nothing is learned)."""
    length, n_envs, pool = parts.segment_length, parts.pool_env.num_envs, parts.pool
    steps = max(initial_steps or count * length, length * n_envs)
    run_policy(algo, steps)
    parts.drain()
    # An initial policy that fails fast (a random Hopper falls after about 20 steps) rarely
    # lasts a segment: run it longer (up to 32 times as long, within the pool) until episodes
    # long enough for twice the segments asked for have been seen.
    ran, limit = steps, min(32 * steps, pool.capacity * n_envs)
    while pool.num_segments(length) < 2 * count and ran < limit:
        run_policy(algo, ran)
        parts.drain()
        ran *= 2


def _person_kwargs(source: str | PreferenceSource, instruction: str | None) -> dict[str, Any]:
    if instruction is None:
        return {}
    if source not in PERSON_SOURCES:
        raise ValueError(
            f"instruction= is shown to a person, so it goes with the source 'human' or 'web', not {source!r} "
            "(a source object takes its own instruction)"
        )
    return {"instruction": instruction}


def _check_labels_per_query(source: str | PreferenceSource, labels_per_query: int) -> None:
    # Only the labelling page has several people; anything else would wait forever for a second.
    name = source if isinstance(source, str) else getattr(source, "name", type(source).__name__)
    if labels_per_query > 1 and name != "web":
        raise ValueError(
            f"labels_per_query={labels_per_query} sends each pair to that many different people on the "
            f"labelling page, so it goes with the source 'web', not {name!r}; leave it at 1 otherwise"
        )


def _close(parts: RunParts, source: PreferenceSource | None) -> None:
    if source is not None:
        source.close()
    parts.close()
