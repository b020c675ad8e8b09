"""The Stable-Baselines3 callback that runs the preference loop beside any algorithm."""

from __future__ import annotations

import copy
import math
import os
import sys
import time
import weakref
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import HumanOutputFormat
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.utils import safe_mean
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

from gym_prefs.clips import ClipInfo
from gym_prefs.comparisons import Comparisons
from gym_prefs.fit_worker import FitWorker, FitWorkerError
from gym_prefs.fitting import FitReport, RewardTrainer
from gym_prefs.reward_model import CUSTOM_CALLABLE, RewardEnsemble
from gym_prefs.schedules import LabelSchedule
from gym_prefs.segments import ClipSpec, Segment, SegmentPool, TransitionBatch, segment_steps, steps_for_bytes
from gym_prefs.selection import SELECTION_METHODS, select_pairs
from gym_prefs.sources import LABELS, PREFERENCE_OF, Answer, PreferenceSource, Query, make_source
from gym_prefs.spaces import shape_of
from gym_prefs.store import PreferenceStore
from gym_prefs.wrappers import LearnedReward, VecLearnedReward, check_model_spaces

__all__ = ["PreferenceCallback"]

#: Segment length when the env does not say how long a step takes (the paper's Atari clips).
DEFAULT_SEGMENT_LENGTH = 25
#: Where the reward model can be fitted (see ``PreferenceCallback(fitting=...)``).
FITTING_MODES = ("process", "thread", "inline")
#: Recent steps on which ``reward_model/true_reward_corr`` is measured after each fit.
CORRELATION_STEPS = 2_048
#: New fitting processes started in one run after the one before died or stalled.
MAX_FIT_WORKER_RESTARTS = 2


class _InProcessFitter:
    """A :class:`RewardTrainer` run in a background thread, or in place."""

    def __init__(self, trainer: RewardTrainer, background: bool) -> None:
        self.trainer = trainer
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gym_prefs-fit") if background else None
        self._future: Future[FitReport] | None = None
        self._job: tuple[Comparisons, int] | None = None

    @property
    def seconds(self) -> float:
        return self.trainer.seconds

    def start(self, data: Comparisons, epochs: int) -> None:
        # A shallow copy fixes which rows this fit sees; rows are never changed in place.
        self._job = (copy.copy(data), epochs)
        if self._executor is not None:
            self._future = self._executor.submit(self.trainer.fit, *self._job)

    def result(self) -> tuple[dict[str, Any], FitReport]:
        # In place, the fit runs here, while the caller waits for it.
        assert self._job is not None
        report = self._future.result() if self._future is not None else self.trainer.fit(*self._job)
        self._future = None
        return self.trainer.model.state_dict(), report

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)


class _RewardWrappers:
    """Finds the reward wrappers of a training env and talks to them, wherever they run."""

    def __init__(self, venv: VecEnv) -> None:
        self.venv = venv
        self.vec_wrapper: VecLearnedReward | None = None
        inner: VecEnv = venv
        while isinstance(inner, VecEnvWrapper):
            if isinstance(inner, VecLearnedReward):
                self.vec_wrapper = inner
                break
            inner = inner.venv
        if self.vec_wrapper is None:
            wrapped = venv.env_is_wrapped(LearnedReward)
            if not all(wrapped):
                missing = [i for i, w in enumerate(wrapped) if not w]
                raise ValueError(
                    "PreferenceCallback needs the training env to hide its reward behind a learned "
                    f"one, but env(s) {missing} are not wrapped. Wrap each env with "
                    "gym_prefs.LearnedReward(env) (e.g. make_vec_env(..., wrapper_class="
                    "gym_prefs.LearnedReward)) or the VecEnv with gym_prefs.VecLearnedReward(venv)."
                )

    @property
    def num_envs(self) -> int:
        return self.venv.num_envs

    def spaces(self) -> tuple[spaces.Space[Any], spaces.Space[Any]]:
        """Observation and action spaces as the reward wrappers see them (inside any stacking)."""
        if self.vec_wrapper is not None:
            return self.vec_wrapper.observation_space, self.vec_wrapper.action_space
        return self.venv.env_method("reward_spaces", indices=[0])[0]

    def current_model(self) -> RewardEnsemble:
        if self.vec_wrapper is not None:
            return self.vec_wrapper.reward_model
        return self.venv.get_attr("reward_model", indices=[0])[0]

    def push(self, model: RewardEnsemble) -> None:
        """Give every wrapper ``model``: shared in this process, a copy in worker processes."""
        if self.vec_wrapper is not None:
            self.vec_wrapper.set_reward_model(model)
        else:
            self.venv.env_method("set_reward_model", model)

    def enable_clips(self) -> ClipInfo:
        """Have every wrapper record clip data for a person's viewer too."""
        if self.vec_wrapper is not None:
            return self.vec_wrapper.enable_clips()
        # An exception inside a SubprocVecEnv worker would end it with a bare EOFError here.
        outcomes = self.venv.env_method("try_enable_clips")
        problems = [outcome for outcome in outcomes if isinstance(outcome, str)]
        if problems:
            raise ValueError(problems[0])
        info: ClipInfo = outcomes[0]
        return info

    def drain(self) -> list[tuple[int, TransitionBatch]]:
        """New steps of every env, as ``(first env index, batch)`` pieces."""
        if self.vec_wrapper is not None:
            return [(0, self.vec_wrapper.pop_transitions())]
        return list(enumerate(self.venv.env_method("pop_transitions")))

    def inference_seconds(self) -> float:
        if self.vec_wrapper is not None:
            return self.vec_wrapper.inference_seconds
        return float(sum(self.venv.get_attr("inference_seconds")))


class PreferenceCallback(BaseCallback):
    """Teaches any Stable-Baselines3 algorithm from preferences between clips of its behaviour.

    The training env must be wrapped in :class:`~gym_prefs.LearnedReward` (each env) or
    :class:`~gym_prefs.VecLearnedReward` (the VecEnv). The callback then runs the loop of
    Christiano et al. (2017):

    1. Before RL starts, it runs the initial policy, asks for ``initial_label_fraction`` of
       the budget on pairs of its segments, waits for the answers and fits the reward model
       for ``initial_fit_epochs``.
    2. Every ``refit_interval`` timesteps (at the next rollout boundary) it cuts segments from
       the recent steps, asks for the labels due by the schedule (pairs chosen by ensemble
       disagreement or at random) and collects whatever answers have arrived. It then hands
       the wrappers the model fitted since the previous update (re-normalised on the labelled
       steps) and starts fitting on all labels for ``fit_epochs`` in the background. On-policy
       algorithms thus see one reward model per rollout; off-policy algorithms get their
       replay buffer relabelled with each new model.

    Logged through SB3's logger: ``preferences/labels`` (trained-on labels),
    ``preferences/queries``, ``preferences/pending``, ``reward_model/train_loss``,
    ``reward_model/val_loss``, ``reward_model/accuracy``, ``reward_model/l2``,
    ``reward_model/true_reward_corr`` (Pearson correlation of r̂ with the true reward on recent
    steps), and the episode returns side by side: ``rollout/ep_true_rew_mean`` and
    ``rollout/ep_learned_rew_mean``. SB3's own ``rollout/ep_rew_mean`` is made to show the
    **true** return too, wherever ``Monitor`` sits.

    Args:
        source: who labels: ``"oracle"`` or a :class:`~gym_prefs.PreferenceSource`.
        total_labels: the label budget (queries asked, including those answered "can't tell").
        segment_length: steps per segment; ``None`` takes 1.5 s of simulated time from the
            env's ``dt``, at most 60 steps (the paper's range), or 25 steps when it has none.
        initial_label_fraction: share of the budget asked before RL starts (paper: 0.25).
        schedule: ``"decay"`` (rate ∝ scale/(T + scale), the paper's) or ``"constant"``.
        schedule_scale: the decay's time scale in timesteps (paper: 2e6).
        selection: ``"disagreement"`` (the paper's) or ``"random"``.
        candidates_factor: candidate pairs sampled per query for disagreement selection.
        refit_interval: timesteps between label requests and refits; ``None`` spreads 50 of
            them over the run.
        initial_fit_epochs: epochs of the first fit, before RL.
        fit_epochs: epochs of each later refit.
        batch_size: labelled pairs per minibatch.
        learning_rate: Adam learning rate of the reward model.
        reward_model: a :class:`~gym_prefs.RewardEnsemble`, a path to a saved one, a dict of
            :class:`~gym_prefs.RewardEnsemble` keyword arguments, or ``None`` to use the
            wrappers' model.
        store: the :class:`~gym_prefs.PreferenceStore` (or its path) that every query and
            answer is committed to. ``None`` puts ``preferences.db`` beside SB3's logs when
            they go to a folder, else under ``runs/ENV-TIME/``; the path is printed. A run
            started on a store with labels continues: it keeps every label, asks only what the
            budget has left, re-asks pending queries and refits before RL resumes. One training
            run at a time: a store that another live run is using is refused with
            :class:`~gym_prefs.StoreBusyError`. The reward model is saved beside the store
            (``*.reward_model.pt``) after every refit.
        pool_size: most recent steps (over all envs) that segments are cut from.
        pool_bytes: memory cap of that pool; image observations get fewer steps.
        max_comparisons: fit on the newest this many labels only (``None``: all; the
            paper's Atari setting: 3,000).
        initial_steps: steps of the initial policy to run before RL (``None``: enough for the
            initial pairs).
        relabel_replay_buffer: relabel an off-policy replay buffer after every refit.
        fitting: where the reward model is fitted. ``"process"`` (default): in a worker
            process while the next rollout runs, as in the paper, where fitting and RL run
            side by side; ``"thread"``: in a background thread (shares the interpreter lock
            with RL); ``"inline"``: in place, RL waits. In the background modes the fit started
            at one update is always applied at the next, so seeded runs are reproducible and
            all three modes give the same models; the agent's reward lags the newest labels by
            one update.
        initial_label_timeout: seconds to wait for the labels asked before RL starts before
            giving up with ``TimeoutError`` (every answer so far stays in the store, and a
            restart goes on from there); ``None`` waits as long as it takes (a person may take
            a while), saying every minute what it waits for.
        seed: seed for segment sampling, bootstrap samples and the oracle.
        verbose: 0 silent, 1 a line per fit.

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
        total_labels: int = 700,
        segment_length: int | None = None,
        initial_label_fraction: float = 0.25,
        schedule: str = "decay",
        schedule_scale: float = 2e6,
        selection: str = "disagreement",
        candidates_factor: int = 10,
        refit_interval: int | None = None,
        initial_fit_epochs: int = 100,
        fit_epochs: int = 5,
        batch_size: int = 64,
        learning_rate: float = 1e-3,
        reward_model: RewardEnsemble | str | dict[str, Any] | None = None,
        store: str | os.PathLike[str] | PreferenceStore | None = None,
        pool_size: int = 50_000,
        pool_bytes: int = 512 * 2**20,
        max_comparisons: int | None = None,
        initial_steps: int | None = None,
        relabel_replay_buffer: bool = True,
        fitting: str = "process",
        initial_label_timeout: float | None = None,
        seed: int | None = None,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        if selection not in SELECTION_METHODS:
            raise ValueError(f"selection must be one of {SELECTION_METHODS}, got {selection!r}")
        if segment_length is not None and segment_length < 1:
            raise ValueError(f"segment_length must be positive, got {segment_length}")
        if refit_interval is not None and refit_interval < 1:
            raise ValueError(f"refit_interval must be positive, got {refit_interval}")
        if initial_label_timeout is not None and not initial_label_timeout > 0:
            raise ValueError(f"initial_label_timeout must be positive or None, got {initial_label_timeout}")
        # Fail on a bad schedule now rather than when learn() starts.
        LabelSchedule(total_labels, 1, initial_label_fraction, schedule, schedule_scale)
        self.source = make_source(source, seed=seed)
        self.total_labels = total_labels
        self.segment_length = segment_length
        self.initial_label_fraction = initial_label_fraction
        self.schedule_kind = schedule
        self.schedule_scale = schedule_scale
        self.selection = selection
        self.candidates_factor = candidates_factor
        self.refit_interval = refit_interval
        self.initial_fit_epochs = initial_fit_epochs
        self.fit_epochs = fit_epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self._reward_model_spec = reward_model
        self._store_spec = store
        self.store: PreferenceStore | None = None
        self.pool_size = pool_size
        self.pool_bytes = pool_bytes
        self.max_comparisons = max_comparisons
        self.initial_steps = initial_steps
        self.relabel_replay_buffer = relabel_replay_buffer
        if fitting not in FITTING_MODES:
            raise ValueError(f"fitting must be one of {FITTING_MODES}, got {fitting!r}")
        self.fitting = fitting
        self.initial_label_timeout = initial_label_timeout
        self.seed = seed
        self.rng = np.random.default_rng(seed)

        self.num_queries = 0  # queries asked so far (the budget counts these)
        self.num_fits = 0
        self.last_fit: FitReport | None = None
        self.timings: dict[str, float] = {}
        self._pending_queries: dict[int, dict[str, np.ndarray]] = {}
        self._ids_in_fit = 0  # labels with smaller ids were given to the newest fit
        self._fitting_now = False
        self._fitter: FitWorker | _InProcessFitter | None = None
        self._worker: FitWorker | None = None
        self._worker_restarts = 0
        self._fit_epochs = 0
        self._skipped = 0
        self._ep_true: deque[float] = deque(maxlen=100)
        self._ep_learned: deque[float] = deque(maxlen=100)
        self._reward_model: RewardEnsemble | None = None
        self._schedule: LabelSchedule | None = None
        self._next_update = 0

    # ------------------------------------------------------------------ public state
    @property
    def reward_model(self) -> RewardEnsemble:
        """The run's :class:`~gym_prefs.RewardEnsemble` (available once ``learn`` has started)."""
        if self._reward_model is None:
            raise RuntimeError("the reward model is set up when model.learn() starts")
        return self._reward_model

    @property
    def num_labels(self) -> int:
        """Labels in the store so far (answers other than "can't tell"), this run's and earlier ones."""
        if self.store is None:
            return 0
        if self.store.closed:
            with PreferenceStore(self.store.path, readonly=True) as store:
                return len(store)
        return len(self.store)

    # ------------------------------------------------------------------ set-up
    def _init_callback(self) -> None:
        # SB3 calls this at every learn(): labels, model and trainer carry over between calls.
        venv = self.training_env
        self._wrappers = _RewardWrappers(venv)
        obs_space, act_space = self._wrappers.spaces()
        if self._reward_model is None:
            self._reward_model = self._build_reward_model(obs_space, act_space)
            if self.segment_length is None:
                self.segment_length = _segment_length_from_dt(venv)
            self.comparisons = Comparisons(obs_space, act_space, self.segment_length, self.max_comparisons)
            self._open_store(venv, obs_space, act_space)
            self._make_fitters(self._reward_model)
        else:
            check_model_spaces(self._reward_model, obs_space, act_space)
        self._wrappers.push(self._reward_model)
        if getattr(self, "_pool_env", None) is not venv:
            clip_spec = self._enable_clips()
            n_envs = venv.num_envs
            capacity = min(self.pool_size, steps_for_bytes(obs_space, act_space, self.pool_bytes, clip_spec))
            self.pool = SegmentPool(obs_space, act_space, n_envs, max(1, capacity // n_envs), clip_spec)
            self._pool_env = venv
        attach = getattr(self.source, "attach", None)
        if callable(attach):
            attach(self.store, self.total_labels)
        # Also at a later learn(): the source was closed when the previous one ended.
        self._ask_pending_again()
        if isinstance(self.model, OffPolicyAlgorithm) and self.relabel_replay_buffer:
            self._check_replay_buffer(self.model)

    def _open_store(self, venv: VecEnv, obs_space: spaces.Space[Any], act_space: spaces.Space[Any]) -> None:
        """Open (or create) the store and take over everything an earlier run left in it."""
        assert self.segment_length is not None
        env_id = _env_id(venv)
        spec = self._store_spec
        if isinstance(spec, PreferenceStore):
            store = spec
            store.check_matches(obs_space, act_space, self.segment_length)
        else:
            path = Path(spec) if spec is not None else self._default_store_path(env_id)
            store = PreferenceStore(path, obs_space, act_space, self.segment_length, env_id=env_id)
        try:
            # One training run per store: a second one would spend the label budget again.
            store.lock_for_run()
        except Exception:
            if store is not spec:
                store.close()
            raise
        self.store = store
        counts = store.counts()
        print(
            f"gym_prefs: labels are stored in {store.path}"
            + (
                f" (continuing with {len(store)} labels, {counts['pending']} queries pending)"
                if counts["queries"]
                else ""
            )
        )
        self._skipped = counts["skipped"]
        if len(store):
            pairs = store.labelled_pairs(last=self.max_comparisons)
            self.comparisons.add(pairs.obs, pairs.actions, pairs.mu, pairs.query_ids)

    def _enable_clips(self) -> ClipSpec | None:
        """Record what a person sees, when the source is a person."""
        assert self.store is not None
        clip_spec = None
        if getattr(self.source, "needs_clips", False):
            info = self._wrappers.enable_clips()
            self.store.set_meta("clips", info.to_json())
            clip_spec = info.spec
        return clip_spec

    def _ask_pending_again(self) -> None:
        """Ask the source again what the store holds as pending (asked, never answered).

        Such queries were asked before a restart, or at an earlier ``learn()`` whose end closed
        the source; they count once against the budget. A source that shows clips to a person
        cannot answer queries stored without clips (asked of an oracle, say): those stay
        pending in the store, are neither waited for nor counted against the person's budget,
        and the run says so.
        """
        assert self.store is not None
        pending = self.store.pending_queries()
        unanswerable = 0
        if getattr(self.source, "needs_clips", False):
            showable = [query for query in pending if self.store.clips(query.id) is not None]
            unanswerable = len(pending) - len(showable)
            if unanswerable:
                print(
                    f"gym_prefs: {unanswerable} pending queries in {self.store.path} were stored without clips "
                    "(asked of another kind of labeler) and cannot be shown to a person; they stay pending there, "
                    "are not waited for and do not count against the label budget."
                )
            pending = showable
        self.num_queries = self.store.counts()["queries"] - unanswerable
        self._pending_queries = {query.id: _pair_of(query) for query in pending}
        if pending:
            self.source.request(pending)

    def _default_store_path(self, env_id: str | None) -> Path:
        """Beside SB3's logs when they are written to a folder, else under ``runs/`` by env and time."""
        logger = self.logger
        # SB3 always names a folder (a temporary one by default); it counts only when some
        # output (CSV, TensorBoard, a log file) is written there.
        writes_files = any(
            not (isinstance(output, HumanOutputFormat) and not output.own_file) for output in logger.output_formats
        )
        if writes_files and logger.get_dir():
            return Path(logger.get_dir()) / "preferences.db"  # type: ignore[arg-type]
        name = (env_id or "env").replace("/", "_")
        return Path("runs").resolve() / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}" / "preferences.db"

    @property
    def reward_model_path(self) -> Path | None:
        """Where the reward model is saved after every refit: beside the store."""
        return self.store.path.with_suffix(".reward_model.pt") if self.store is not None else None

    def _make_fitters(self, model: RewardEnsemble) -> None:
        """Set up fitting on a copy of ``model``, so the model being predicted with never changes mid-fit.

        In ``"process"`` mode the worker process starts now and imports torch while the first
        fit (which RL waits for anyway) runs here; the worker then continues from this trainer.
        """
        trainer = RewardTrainer(model.clone(), **self._trainer_kwargs())
        self._fitter = _InProcessFitter(trainer, background=self.fitting == "thread")
        self._fitters_to_close: list[FitWorker | _InProcessFitter | None] = [self._fitter]
        # A member factory without an import path cannot be rebuilt in another process.
        if self.fitting == "process" and model.factory_path != CUSTOM_CALLABLE:
            with self._timed("fitting_startup"):
                self._worker = FitWorker()
            self._fitters_to_close.append(self._worker)
        # The list, not its items: a worker started later to replace a dead one is closed too.
        weakref.finalize(self, _close_all, self._fitters_to_close)

    def _trainer_kwargs(self) -> dict[str, Any]:
        return {"lr": self.learning_rate, "batch_size": self.batch_size, "seed": self.seed}

    def _replace_dead_worker(self, error: FitWorkerError) -> FitWorker:
        """Start a new fitting process after ``error`` (the old one died or stalled), or give up.

        The new worker continues from the model applied last (the dead one's optimiser state is
        lost, so a seeded run is no longer bit-for-bit reproducible from here). After
        :data:`MAX_FIT_WORKER_RESTARTS` replacements the error is raised: a worker killed again
        and again is usually the out-of-memory killer, which a new process will not escape.
        """
        assert self._worker is not None and self.segment_length is not None
        self._worker.close()
        self._worker_restarts += 1
        if self._worker_restarts > MAX_FIT_WORKER_RESTARTS:
            raise FitWorkerError(
                f"{error}\nThe fitting process was replaced {MAX_FIT_WORKER_RESTARTS} times already; giving up. "
                f"Every label is in {self.store.path if self.store else 'the store'}: start the run again on it."
            ) from error
        print(
            f"gym_prefs: {error}\ngym_prefs: starting a new fitting process "
            f"({self._worker_restarts} of at most {MAX_FIT_WORKER_RESTARTS}); it refits on every label.",
            file=sys.stderr,
        )
        with self._timed("fitting_startup"):
            worker = FitWorker()
            worker.load(
                RewardTrainer(self.reward_model.clone(), **self._trainer_kwargs()),
                self.segment_length,
                self.max_comparisons,
            )
        self._worker = worker
        self._fitters_to_close.append(worker)
        return worker

    def close(self) -> None:
        """Stop the fitting process or thread and close the store (also done at garbage collection)."""
        _close_all([self._fitter, self._worker])
        self.source.close()
        if self.store is not None and self._store_spec is not self.store:
            self.store.close()

    def _build_reward_model(self, obs_space: spaces.Space[Any], act_space: spaces.Space[Any]) -> RewardEnsemble:
        spec = self._reward_model_spec
        if spec is None:
            model = self._wrappers.current_model()
            if not model.is_fitted and self.seed is not None:
                # The wrapper built it before any seed was set: draw its weights from ours.
                model.reset_parameters(self.seed)
        elif isinstance(spec, RewardEnsemble):
            model = spec
        elif isinstance(spec, str):
            model = RewardEnsemble.load(spec)
        elif isinstance(spec, dict):
            kwargs: dict[str, Any] = {"seed": self.seed, **spec}
            model = RewardEnsemble(obs_space, act_space, **kwargs)
        else:
            raise TypeError(f"reward_model must be a RewardEnsemble, a path, a dict or None, got {spec!r}")
        check_model_spaces(model, obs_space, act_space)
        return model

    def _check_replay_buffer(self, algo: OffPolicyAlgorithm) -> None:
        buffer = algo.replay_buffer
        obs_shape = getattr(buffer, "obs_shape", None)
        if obs_shape is None or tuple(obs_shape) != shape_of(self.reward_model.observation_space):
            raise ValueError(
                f"the replay buffer stores observations of shape {obs_shape}, but the reward model "
                f"reads {self.reward_model.observation_space.shape}, so the buffer cannot be "
                "relabelled after a refit. Put the reward wrapper outermost (inside VecNormalize "
                "only), or pass relabel_replay_buffer=False."
            )

    def _on_training_start(self) -> None:
        horizon = int(getattr(self.model, "_total_timesteps", 0)) or int(self.locals.get("total_timesteps", 1))
        self._schedule = LabelSchedule(
            self.total_labels, horizon, self.initial_label_fraction, self.schedule_kind, self.schedule_scale
        )
        self._interval = self.refit_interval or max(1, horizon // 50)
        self._next_update = self.num_timesteps + self._interval
        if self.total_labels == 0 and self.num_queries == 0 and not self.reward_model.is_fitted:
            raise ValueError(
                "total_labels=0 and the store holds no labels, so there is nothing to learn a reward from. "
                "Give a label budget (e.g. total_labels=700), a store with labels, or a fitted reward_model."
            )
        if self.num_queries < self._schedule.initial:
            self._initial_phase(self._schedule.initial - self.num_queries)
        elif self.num_fits == 0 and (self._pending_queries or len(self.comparisons)):
            # Resuming on a store: collect what the initial share still lacks, then refit on
            # every stored label before RL goes on. Later queries are collected during RL.
            self._wait_for_initial_answers()
            self._start_fit(self.initial_fit_epochs)
            self._finish_fit()

    def _initial_phase(self, count: int) -> None:
        """Label pairs from the initial policy and fit before RL starts (waits for answers)."""
        assert self.segment_length is not None
        steps = self.initial_steps or count * self.segment_length
        steps = max(steps, self.segment_length * self.training_env.num_envs)
        with self._timed("initial_rollout"):
            self._run_current_policy(steps)
            self._drain()
            # An initial policy that fails fast (a random Hopper falls after about 20 steps)
            # rarely lasts a segment: run it longer (up to 32 times as long, within the pool)
            # until episodes long enough for twice the segments asked for have been seen.
            ran, limit = steps, min(32 * steps, self.pool.capacity * self.training_env.num_envs)
            while self.pool.num_segments(self.segment_length) < 2 * count and ran < limit:
                self._run_current_policy(ran)
                self._drain()
                ran *= 2
        self._ask(count, required=True)
        self._wait_for_initial_answers()
        self._start_fit(self.initial_fit_epochs)
        self._finish_fit()

    def _wait_for_initial_answers(self) -> None:
        """Collect answers until the initial share of the budget is answered (or skipped).

        Only this share is waited for. The wait ends early when the source says nothing is
        pending any more (a person closed the window with ``on_close="continue"``), and after
        ``initial_label_timeout`` seconds with a ``TimeoutError``; meanwhile it says every
        minute what it waits for, so that a run is never silently stuck before RL.
        """
        if self._initial_answers_missing() > 0:
            self._collect(timeout=0.0)  # a synthetic source has answered already: nothing to say
        missing = self._initial_answers_missing()
        if missing <= 0 or not self.source.pending:
            return
        name = _source_name(self.source)
        print(f"gym_prefs: waiting for {missing} answers from {name!r} before RL starts")
        started = time.monotonic()
        next_note = started + 60.0
        while missing > 0 and self.source.pending:
            self._collect(timeout=1.0)
            missing = self._initial_answers_missing()
            waited = time.monotonic() - started
            if missing > 0 and self.initial_label_timeout is not None and waited >= self.initial_label_timeout:
                assert self.store is not None
                raise TimeoutError(
                    f"gym_prefs: {missing} of the queries asked of {name!r} before RL starts got no answer in "
                    f"{self.initial_label_timeout:g} s. Every answer so far is in {self.store.path}; start the run "
                    "again on that store to go on, or pass initial_label_timeout=None to wait as long as it takes."
                )
            if time.monotonic() >= next_note:
                print(f"gym_prefs: still waiting for {missing} answers from {name!r} ({waited / 60:.0f} min so far)")
                next_note += 60.0

    def _initial_answers_missing(self) -> int:
        """Answers the initial share still lacks (counted in the store), at most those pending."""
        assert self._schedule is not None and self.store is not None
        counts = self.store.counts()
        return min(len(self._pending_queries), self._schedule.initial - counts["answered"] - counts["skipped"])

    def _run_current_policy(self, steps: int) -> None:
        """Step the training env with the current policy, outside of RL (nothing is learned)."""
        algo: BaseAlgorithm = self.model
        env = self.training_env
        obs: Any = algo._last_obs
        dones = np.zeros(env.num_envs, dtype=bool)
        for _ in range(math.ceil(steps / env.num_envs)):
            actions, _ = algo.predict(obs, deterministic=False)
            obs, _, dones, _ = env.step(actions)
        # The algorithm carries on from where these steps left the envs.
        algo._last_obs = obs
        algo._last_episode_starts = dones
        vec_normalize = getattr(algo, "_vec_normalize_env", None)
        if vec_normalize is not None and hasattr(algo, "_last_original_obs"):
            algo._last_original_obs = vec_normalize.get_original_obs()

    # ------------------------------------------------------------------ the loop
    def _on_step(self) -> bool:
        for info in self.locals.get("infos", ()):
            returns = info.get("episode_returns")
            if returns is None:
                continue
            self._ep_true.append(returns["true"])
            self._ep_learned.append(returns["learned"])
            monitor = info.get("episode")
            if monitor is not None:
                # Monitor outside the reward wrapper would report the learned return here.
                monitor["r"] = round(returns["true"], 6)
        return True

    def _on_rollout_start(self) -> None:
        if self.num_timesteps < self._next_update:
            return
        while self._next_update <= self.num_timesteps:
            self._next_update += self._interval
        self._update()

    def _on_rollout_end(self) -> None:
        if self._ep_true:
            self.logger.record("rollout/ep_true_rew_mean", safe_mean(list(self._ep_true)))
            self.logger.record("rollout/ep_learned_rew_mean", safe_mean(list(self._ep_learned)))

    def _on_training_end(self) -> None:
        # Use the rest of the budget due by now, and leave a model fitted on every label.
        self._update()
        self._finish_fit()
        if self.comparisons.next_id > self._ids_in_fit:
            self._start_fit(self.fit_epochs)
            self._finish_fit()
        # What happened since SB3's last log dump would otherwise never reach the logs.
        self.logger.record("time/total_timesteps", self.num_timesteps, exclude="tensorboard")
        self.logger.dump(self.num_timesteps)
        # Nobody should go on answering for a run that has ended (a person's window closes;
        # every answer given is in the store). A later learn() asks the source again.
        self.source.close()

    def _update(self) -> None:
        """Ask for the labels now due, collect answers, apply the last fit, start the next."""
        assert self._schedule is not None
        with self._timed("bookkeeping"):
            self._drain()
        due = min(self._schedule.due(self.num_timesteps), self.total_labels) - self.num_queries
        if due > 0:
            self._ask(due)
        self._collect(timeout=0.0)
        # The fit started at the previous update has run beside the last rollout(s): apply it
        # now, always here (waiting for it if need be), so that runs stay reproducible.
        self._finish_fit()
        if self.comparisons.next_id > self._ids_in_fit:
            self._start_fit(self.fit_epochs)
        self._log_counts()

    def _drain(self) -> None:
        for first_stream, batch in self._wrappers.drain():
            self.pool.add(first_stream, batch)

    def _ask(self, count: int, required: bool = False) -> None:
        """Select ``count`` pairs and hand them to the source.

        With ``required`` (or once the pool has filled up without a single segment), having
        no segment to cut is an error; otherwise the request waits for more steps.
        """
        assert self.segment_length is not None
        if self.pool.num_segments(self.segment_length) == 0:
            if required or self.pool.written.min() >= self.pool.capacity:
                self.pool.sample(1, self.segment_length, self.rng)  # raises the clear error
            return
        with self._timed("selection"):
            pairs = select_pairs(
                self.pool,
                self.reward_model,
                count,
                self.segment_length,
                self.selection,
                self.rng,
                self.candidates_factor,
            )
        assert self.store is not None
        with self._timed("store"):
            # The queries exist on disk before anyone is asked.
            ids = self.store.add_queries(pairs, source=_source_name(self.source), timestep=self.num_timesteps)
        queries = []
        for i, query_id in enumerate(ids):
            # Clips are in the store for the viewer; the fit needs only these.
            pair = {name: array[i] for name, array in pairs.items() if name != "clips"}
            self._pending_queries[query_id] = pair
            queries.append(
                Query(
                    query_id,
                    Segment(pair["obs"][0], pair["actions"][0], pair["true_rewards"][0]),
                    Segment(pair["obs"][1], pair["actions"][1], pair["true_rewards"][1]),
                )
            )
        self.num_queries += count
        with self._timed("labelling"):
            self.source.request(queries)

    def _collect(self, timeout: float | None) -> None:
        with self._timed("labelling"):
            answers = self.source.poll(timeout=timeout)
        self._store(answers)

    def _store(self, answers: list[Answer]) -> None:
        if not answers:
            return
        assert self.store is not None
        answers, problems = self._checked(answers)
        if answers:
            with self._timed("store"):
                # Committed to disk before anything else happens with them, and only then
                # acknowledged to the source.
                committed = [answer.query_id for answer in answers]
                answers = self.store.record_answers(answers)
            acknowledge = getattr(self.source, "acknowledge", None)
            if callable(acknowledge):
                acknowledge(committed)
            self._use(answers)
        if problems:
            # The valid answers of the batch are committed above: a faulty one loses nothing else.
            raise ValueError(
                f"the preference source {_source_name(self.source)!r} returned answers that cannot be used "
                f"({len(problems)}): " + "; ".join(problems[:5]) + (" ..." if len(problems) > 5 else "") + ". "
                "Answers must be gym_prefs.Answer(query_id, label) for ids of the queries it was given, with a "
                f"label in {LABELS}. The valid answers of that batch were stored."
            )

    def _checked(self, answers: list[Any]) -> tuple[list[Answer], list[str]]:
        """Split what a source returned into valid answers and descriptions of the others."""
        assert self.store is not None
        built: list[Answer] = []
        problems: list[str] = []
        for item in answers:
            try:
                # Built anew, so that anything answer-shaped is validated (and its id made an int).
                labeler, seconds = getattr(item, "labeler", "unknown"), getattr(item, "seconds", 0.0)
                built.append(Answer(item.query_id, item.label, labeler, seconds))
            except (AttributeError, TypeError, ValueError) as error:
                problems.append(f"{item!r} ({error})")
        # Not pending here: fine if answered already (delivered twice), else unknown. One look-up.
        stray = [answer.query_id for answer in built if answer.query_id not in self._pending_queries]
        answered = {answer.query_id for answer in self.store.answers_for(stray)}
        valid = []
        for answer in built:
            if answer.query_id in self._pending_queries or answer.query_id in answered:
                valid.append(answer)
            else:
                problems.append(f"{answer!r} (no query with id {answer.query_id} is waiting for an answer)")
        return valid, problems

    def _use(self, answers: list[Answer]) -> None:
        """Add the stored answers to this run's comparisons (the first answer of a query stands)."""
        usable = []
        for answer in answers:
            pair = self._pending_queries.pop(answer.query_id, None)
            if pair is None:
                continue  # not one of this run's queries
            if answer.label == "skip":
                self._skipped += 1
                continue
            usable.append((answer, pair))
        if not usable:
            return
        self.comparisons.add(
            np.stack([pair["obs"] for _, pair in usable]),
            np.stack([pair["actions"] for _, pair in usable]),
            np.array([PREFERENCE_OF[answer.label] for answer, _ in usable], dtype=np.float32),
            np.array([answer.query_id for answer, _ in usable], dtype=np.int64),
        )

    def _start_fit(self, epochs: int) -> None:
        """Start fitting on every label so far (in the background unless ``fitting="inline"``)."""
        if len(self.comparisons) == 0:
            return
        assert self._fitter is not None
        if isinstance(self._fitter, _InProcessFitter) and self._worker is not None and self.num_fits > 0:
            assert self.segment_length is not None
            with self._timed("fitting_handover"):
                try:
                    self._worker.load(self._fitter.trainer, self.segment_length, self.max_comparisons)
                except FitWorkerError as error:  # died while it started: a new one continues instead
                    self._replace_dead_worker(error)
            self._fitter = self._worker
        self._ids_in_fit = self.comparisons.next_id
        self._fit_epochs = epochs
        with self._timed("fitting_handover"):
            try:
                self._fitter.start(self.comparisons, epochs)
            except FitWorkerError as error:
                self._fitter = self._replace_dead_worker(error)
                self._fitter.start(self.comparisons, epochs)
        self._fitting_now = True

    def _finish_fit(self) -> None:
        """Wait for the running fit, if any, and hand its model to the wrappers."""
        if not self._fitting_now:
            return
        assert self._fitter is not None
        with self._timed("waiting_for_fit"):
            while True:
                try:
                    state, report = self._fitter.result()
                    break
                except FitWorkerError as error:  # noticed within a second (a stall: within a minute)
                    self._fitter = self._replace_dead_worker(error)
                    self._fitter.start(self.comparisons, self._fit_epochs)
        self._fitting_now = False
        self.num_fits += 1
        self.last_fit = report
        with self._timed("push"):
            # The fitter normalised the model already (RewardTrainer.fit calibrates it).
            self.reward_model.load_state_dict(state)
            self._wrappers.push(self.reward_model)
            if self.reward_model_path is not None:
                try:
                    self.reward_model.save(self.reward_model_path)
                except OSError as error:  # a full disk, most often: say what is safe and what to do
                    raise OSError(
                        error.errno,
                        f"could not save the reward model to {self.reward_model_path} ({error.strerror or error}). "
                        f"Every label is in {self.store.path if self.store else 'the store'}: free space (or let this "
                        "user write that folder) and start the run again on that store",
                    ) from error
        if isinstance(self.model, OffPolicyAlgorithm) and self.relabel_replay_buffer:
            with self._timed("relabel"):
                self._relabel(self.model)
        with self._timed("logging"):
            recent = self.pool.recent(CORRELATION_STEPS)
            corr = (
                _correlation(self.reward_model.predict(recent["obs"], recent["actions"]), recent["true_rewards"])
                if len(recent["obs"])
                else float("nan")
            )
        self.logger.record("reward_model/train_loss", report.train_loss)
        self.logger.record("reward_model/val_loss", report.val_loss)
        self.logger.record("reward_model/accuracy", report.accuracy)
        self.logger.record("reward_model/l2", report.l2)
        self.logger.record("reward_model/true_reward_corr", corr)
        self.logger.record("reward_model/fits", self.num_fits)
        self._log_counts()
        if self.verbose:
            print(
                f"gym_prefs: fit {self.num_fits} on {report.pairs} labels: train loss {report.train_loss:.3f}, "
                f"val loss {report.val_loss:.3f}, accuracy {report.accuracy:.2f}, corr with true reward {corr:.2f}"
            )

    def _relabel(self, algo: OffPolicyAlgorithm) -> None:
        buffer = algo.replay_buffer
        assert buffer is not None
        size = buffer.buffer_size if buffer.full else buffer.pos
        chunk = max(1, 65_536 // buffer.n_envs)
        for start in range(0, size, chunk):
            stop = min(size, start + chunk)
            actions = buffer.actions[start:stop]
            if isinstance(algo.action_space, spaces.Box):
                # Off-policy algorithms store actions rescaled to [-1, 1].
                actions = algo.policy.unscale_action(actions)
            actions = actions.reshape(stop - start, buffer.n_envs, *shape_of(algo.action_space))
            buffer.rewards[start:stop] = self.reward_model.predict(buffer.observations[start:stop], actions)

    def _log_counts(self) -> None:
        self.logger.record("preferences/labels", self.num_labels)
        self.logger.record("preferences/queries", self.num_queries)
        self.logger.record("preferences/pending", len(self._pending_queries))
        self.logger.record("preferences/skipped", self._skipped)

    @contextmanager
    def _timed(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start

    def time_breakdown(self) -> dict[str, float]:
        """Seconds spent so far in each part of the loop, reward inference in the wrappers included."""
        breakdown = dict(self.timings)
        if hasattr(self, "_wrappers"):
            breakdown["inference"] = self._wrappers.inference_seconds()
        if self._fitter is not None:
            # Unless fitting="inline" this ran beside RL; "waiting_for_fit" is what RL waited.
            breakdown["fitting"] = self._fitter.seconds
        return breakdown


def _pair_of(query: Query) -> dict[str, np.ndarray]:
    return {
        "obs": np.stack([query.first.obs, query.second.obs]),
        "actions": np.stack([query.first.actions, query.second.actions]),
        "true_rewards": np.stack([query.first.true_rewards, query.second.true_rewards]),
    }


def _source_name(source: PreferenceSource) -> str:
    return str(getattr(source, "name", type(source).__name__))


def _env_id(venv: VecEnv) -> str | None:
    if not venv.has_attr("spec"):
        return None
    try:
        spec = venv.get_attr("spec", indices=[0])[0]
    except (AttributeError, TypeError):
        return None
    return getattr(spec, "id", None)


def _close_all(fitters: list[FitWorker | _InProcessFitter | None]) -> None:
    for fitter in fitters:
        if fitter is not None:
            fitter.close()


def _segment_length_from_dt(venv: VecEnv) -> int:
    # Asked first: get_attr of a missing attribute kills a SubprocVecEnv's env worker.
    if not venv.has_attr("dt"):
        return DEFAULT_SEGMENT_LENGTH
    try:
        dt = float(venv.get_attr("dt", indices=[0])[0])
    except (AttributeError, TypeError, ValueError):
        return DEFAULT_SEGMENT_LENGTH
    if not dt > 0:
        return DEFAULT_SEGMENT_LENGTH
    return segment_steps(dt)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])
