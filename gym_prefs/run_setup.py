"""Building what a preference run needs when ``learn()`` starts: its reward model, store and pool."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.logger import HumanOutputFormat, Logger
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.vec_env import VecEnv

from gym_prefs.comparisons import Comparisons
from gym_prefs.config import PreferenceConfig
from gym_prefs.env_link import RewardWrappers, env_id, link_reward_wrappers, segment_length_from_dt
from gym_prefs.fitters import Fitter, make_fitter
from gym_prefs.label_desk import LABELS_PER_QUERY
from gym_prefs.labelling import LabellingSide
from gym_prefs.publishing import Publisher
from gym_prefs.reward_model import RewardEnsemble
from gym_prefs.sb3_internals import check_relabelable
from gym_prefs.segments import ClipSpec, SegmentPool, steps_for_bytes
from gym_prefs.sources.base import PreferenceSource
from gym_prefs.store import PreferenceStore
from gym_prefs.timings import Timings
from gym_prefs.wrappers import check_model_spaces

__all__ = ["RunParts", "build_reward_model", "default_store_path", "make_pool", "open_run_store"]


def build_reward_model(
    spec: RewardEnsemble | str | dict[str, Any] | None,
    wrappers_model: RewardEnsemble,
    obs_space: spaces.Space[Any],
    act_space: spaces.Space[Any],
    seed: int | None,
) -> RewardEnsemble:
    """The run's reward model from the ``reward_model`` setting (``None``: the wrappers' own)."""
    if spec is None:
        model = wrappers_model
        if not model.is_fitted and seed is not None:
            # The wrapper built it before any seed was set: draw its weights from ours.
            model.reset_parameters(seed)
    elif isinstance(spec, RewardEnsemble):
        model = spec
    elif isinstance(spec, (str, os.PathLike)):
        model = RewardEnsemble.load(spec)
    elif isinstance(spec, dict):
        model = RewardEnsemble(obs_space, act_space, **{"seed": seed, **spec})
    else:
        raise TypeError(f"reward_model must be a RewardEnsemble, a path, a dict or None, got {spec!r}")
    check_model_spaces(model, obs_space, act_space)
    return model


def open_run_store(
    spec: str | os.PathLike[str] | PreferenceStore | None,
    default_path: Path,
    obs_space: spaces.Space[Any],
    act_space: spaces.Space[Any],
    segment_length: int,
    env_id: str | None,
) -> PreferenceStore:
    """Open (or create) the run's store and take the run lock; say where the labels are."""
    if isinstance(spec, PreferenceStore):
        store = spec
        store.check_matches(obs_space, act_space, segment_length)
    else:
        path = Path(spec) if spec is not None else default_path
        store = PreferenceStore(path, obs_space, act_space, segment_length, env_id=env_id)
    try:
        # One training run per store: a second one would spend the label budget again.
        store.lock_for_run()
    except Exception:
        if store is not spec:
            store.close()
        raise
    counts = store.counts()
    continuing = (
        f" (continuing with {len(store)} labels, {counts['pending']} queries pending)" if counts["queries"] else ""
    )
    print(f"gym_prefs: labels are stored in {store.path}{continuing}")
    return store


def default_store_path(logger: Logger, env_id: str | None) -> Path:
    """Beside SB3's logs when they are written to a folder, else under ``runs/`` by env and time."""
    # SB3 always names a folder (a temporary one by default); it counts only when some output
    # (CSV, TensorBoard, a log file) is written there.
    writes_files = any(
        not (isinstance(output, HumanOutputFormat) and not output.own_file) for output in logger.output_formats
    )
    folder = logger.get_dir()
    if writes_files and folder:
        return Path(folder) / "preferences.db"
    name = (env_id or "env").replace("/", "_")
    return Path("runs").resolve() / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}" / "preferences.db"


def make_pool(
    obs_space: spaces.Space[Any],
    act_space: spaces.Space[Any],
    n_envs: int,
    pool_size: int,
    pool_bytes: int,
    clip_spec: ClipSpec | None,
    members: int = 0,
) -> SegmentPool:
    """The pool segments are cut from: ``pool_size`` steps in all, within ``pool_bytes``."""
    capacity = min(pool_size, steps_for_bytes(obs_space, act_space, pool_bytes, clip_spec, members))
    return SegmentPool(obs_space, act_space, n_envs, max(1, capacity // n_envs), clip_spec, members)


@dataclass
class RunParts:
    """The parts of a preference run, built together at the first ``learn()`` and kept after.

    Example:
        ``PreferenceCallback`` builds them with :meth:`build`; they are never half-built.
    """

    wrappers: RewardWrappers
    model: RewardEnsemble
    segment_length: int
    comparisons: Comparisons
    store: PreferenceStore
    owns_store: bool
    labelling: LabellingSide
    fitter: Fitter
    publisher: Publisher
    pool: SegmentPool
    pool_env: VecEnv
    ids_in_fit: int = 0  # labels with smaller ids were given to the newest fit

    @classmethod
    def build(
        cls,
        config: PreferenceConfig,
        source: PreferenceSource,
        store_spec: str | os.PathLike[str] | PreferenceStore | None,
        venv: VecEnv,
        logger: Logger,
        timings: Timings,
    ) -> RunParts:
        wrappers = link_reward_wrappers(venv)
        obs_space, act_space = wrappers.spaces()
        model = build_reward_model(config.reward_model, wrappers.current_model(), obs_space, act_space, config.seed)
        segment_length = config.segment_length or segment_length_from_dt(venv)
        if config.crop_steps >= segment_length:
            raise ValueError(f"crop_steps ({config.crop_steps}) must be less than the segments' {segment_length} steps")
        comparisons = Comparisons(obs_space, act_space, segment_length, config.max_comparisons)
        name = env_id(venv)
        store = open_run_store(store_spec, default_store_path(logger, name), obs_space, act_space, segment_length, name)
        for labelled in store.labelled_pair_chunks(last=config.max_comparisons):
            comparisons.add_labelled(labelled)  # a chunk at a time: stacked frames are held once
        store.set_meta(LABELS_PER_QUERY, str(config.labels_per_query))
        fitter = make_fitter(
            config.fitting, model, config.trainer_kwargs(), segment_length, config.max_comparisons, timings, store.path
        )
        save_to = store.path.with_suffix(".reward_model.pt")
        pool = _pool_for(venv, wrappers, store, config, source, model)
        return cls(
            wrappers=wrappers,
            model=model,
            segment_length=segment_length,
            comparisons=comparisons,
            store=store,
            owns_store=store is not store_spec,
            labelling=LabellingSide(source, store, comparisons, timings),
            fitter=fitter,
            publisher=Publisher(
                model, wrappers, save_to, store.path, config.relabel_replay_buffer, timings, config.exploration()
            ),
            pool=pool,
            pool_env=venv,
        )

    def attach(self, venv: VecEnv, algo: BaseAlgorithm, config: PreferenceConfig, source: PreferenceSource) -> None:
        """Get ready for a ``learn()`` call of ``algo`` on ``venv`` (at every call, the first included).

        The wrappers get the run's model, a new env gets a new pool, the source the store, and
        the source is asked again what is pending (it was closed when the last ``learn()`` ended).
        """
        self.wrappers = self.publisher.wrappers = link_reward_wrappers(venv)
        obs_space, act_space = self.wrappers.spaces()
        check_model_spaces(self.model, obs_space, act_space)
        self.wrappers.push(self.model, self.publisher.bonus_at(algo.num_timesteps))
        if self.pool_env is not venv:
            self.pool = _pool_for(venv, self.wrappers, self.store, config, source, self.model)
            self.pool_env = venv
        attach = getattr(source, "attach", None)
        if callable(attach):  # a person's source shows the store's clips
            attach(self.store, config.total_labels)
        self.labelling.resume()
        if isinstance(algo, OffPolicyAlgorithm) and config.relabel_replay_buffer:
            check_relabelable(algo, self.model)

    def check_something_to_learn(self, total_labels: int) -> None:
        """Raise ``ValueError`` when there is no budget, no stored label and no fitted model."""
        if total_labels == 0 and self.labelling.num_asked == 0 and not self.model.is_fitted:
            raise ValueError(
                "total_labels=0 and the store holds no labels, so there is nothing to learn a reward from. "
                "Give a label budget (e.g. total_labels=700), a store with labels, or a fitted reward_model."
            )

    @property
    def labels_since_fit(self) -> bool:
        """Whether labels arrived that the newest fit has not seen."""
        return self.comparisons.next_id > self.ids_in_fit

    def start_fit(self, epochs: int, max_steps: int | None = None) -> None:
        """Start fitting on every label so far (nothing to do without labels)."""
        if len(self.comparisons):
            self.ids_in_fit = self.comparisons.next_id
            self.fitter.start(self.comparisons, epochs, max_steps)

    def apply_fit(self, algo: BaseAlgorithm, logger: Logger, verbose: int, timings: Timings, wait: bool = True) -> bool:
        """Publish the running fit's model, waiting for it (or, without ``wait``, if it has ended).

        Returns whether a model was published.
        """
        if not self.fitter.busy or not (wait or self.fitter.ready):
            return False
        with timings.measure("waiting_for_fit"):
            result = self.fitter.finish()
        self.publisher.publish(result.state, result.report, algo)
        self.publisher.log(logger, self.pool, verbose)
        return True

    def drain(self) -> None:
        """Move the steps the wrappers recorded since the last drain into the pool."""
        for first_stream, batch in self.wrappers.drain():
            self.pool.add(first_stream, batch)

    def num_labels(self) -> int:
        """Labels in the store (read through a new connection once the run has closed it)."""
        if self.store.closed:
            with PreferenceStore(self.store.path, readonly=True) as reader:
                return len(reader)
        return len(self.store)

    def time_breakdown(self) -> dict[str, float]:
        """Seconds of reward inference in the wrappers and of fitting, wherever it ran."""
        # Unless fitting="inline" the fitting ran beside RL; "waiting_for_fit" is what RL waited.
        return {"inference": self.wrappers.inference_seconds(), "fitting": self.fitter.seconds}

    def close(self) -> None:
        """Stop fitting and close the store if the run opened it (every label is on disk already)."""
        self.fitter.close()
        if self.owns_store:
            self.store.close()


def _pool_for(
    venv: VecEnv,
    wrappers: RewardWrappers,
    store: PreferenceStore,
    config: PreferenceConfig,
    source: PreferenceSource,
    model: RewardEnsemble,
) -> SegmentPool:
    """A new pool for ``venv``'s steps, with clips when a person is shown the segments.

    It keeps the members' rewards of each step as well when selection and logging use them
    (``config.recorded_scores``).
    """
    clip_spec = None
    if getattr(source, "needs_clips", False):
        info = wrappers.enable_clips()
        store.set_meta("clips", info.to_json())
        clip_spec = info.spec
    obs_space, act_space = wrappers.spaces()
    recorded = config.recorded_scores if config.recorded_scores is not None else model.image_obs
    members = model.n_members if recorded else 0
    return make_pool(obs_space, act_space, venv.num_envs, config.pool_size, config.pool_bytes, clip_spec, members)
