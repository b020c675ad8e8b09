"""The settings of the preference loop: one frozen, validated record of plain values."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from gym_prefs.exploration import UncertaintyBonus
from gym_prefs.fitters import FITTING_MODES
from gym_prefs.schedules import LabelSchedule
from gym_prefs.selection import SELECTION_METHODS

__all__ = ["PreferenceConfig"]


@dataclass(frozen=True)
class PreferenceConfig:
    """How :class:`~gym_prefs.PreferenceCallback` runs the loop of Christiano et al. (2017).

    Every field is a plain value (or has one), so a YAML or JSON file (rl-zoo3's
    ``callback:`` entry, say) can give any of them to ``PreferenceCallback(**settings)``.
    Each is checked once, here, so a bad value fails before ``learn()`` starts.

    Attributes:
        total_labels: the label budget (queries asked, including those answered "can't tell").
        segment_length: steps per segment; ``None`` takes 1.5 s of simulated time from the
            env's ``dt``, at most 60 steps (the paper's range), or 25 steps when it has none.
        initial_label_fraction: share of the budget asked before RL starts (paper: 0.25).
        schedule: ``"decay"`` (rate ∝ scale/(T + scale), the paper's) or ``"constant"``.
        schedule_scale: the decay's time scale in timesteps (paper: 2e6).
        selection: how pairs are chosen to be asked about: ``"disagreement"`` (the paper's),
            ``"entropy"``, ``"kcenter"``, ``"kcenter_disagreement"``, ``"kcenter_entropy"``
            (B-Pref's, Lee et al. 2021) or ``"random"``; see :mod:`gym_prefs.selection`.
        candidates_factor: candidate pairs sampled per pair asked, for every selection but
            ``"random"``.
        refit_interval: timesteps between label requests and refits; ``None`` spreads 50 of
            them over the run.
        initial_fit_epochs: epochs of the first fit, before RL.
        fit_epochs: epochs of each later refit.
        initial_fit_steps: at most this many gradient steps (minibatches) in the first fit, which
            then ends before its epochs are done (mid-epoch if need be), so that its cost does not
            grow with the labels; ``None``: ``initial_fit_epochs`` whole. A CNN on a CPU needs it
            (see the Atari preset).
        fit_steps: the same cap for each later refit.
        batch_size: labelled pairs per minibatch.
        learning_rate: Adam learning rate of the reward model.
        reward_model: a :class:`~gym_prefs.RewardEnsemble`, a path to a saved one, a dict of
            :class:`~gym_prefs.RewardEnsemble` keyword arguments, or ``None`` to use the
            wrappers' model.
        pool_size: most recent steps (over all envs) that segments are cut from.
        pool_bytes: memory cap of that pool; image observations get fewer steps.
        recorded_scores: score candidate pairs for ``"disagreement"`` and measure
            ``reward_model/true_reward_corr`` with the rewards every ensemble member gave the
            steps when they were taken (the wrappers keep them), instead of running the networks
            over the candidates again. Those rewards come from the model in use at that step,
            one or a few fits older than the newest. ``None``: on for image observations, where a
            fresh pass over ten times the pairs asked costs seconds to minutes on a CPU; off for
            vectors, where it costs milliseconds.
        max_comparisons: fit on the newest this many labels only (``None``: all; the
            paper's Atari setting: 3,000).
        initial_steps: steps of the initial policy to run before RL (``None``: enough for the
            initial pairs).
        relabel_replay_buffer: relabel an off-policy replay buffer after every refit.
        fitting: where the reward model is fitted. ``"process"`` (default): in a worker
            process while the next rollout runs, as in the paper, where fitting and RL run
            side by side; ``"thread"``: in a background thread (shares the interpreter lock
            with RL); ``"inline"``: in place, RL waits. In the background modes the fit started
            at one update is applied at the next (see ``wait_for_fits``), so seeded runs are
            reproducible and all three modes give the same models; the agent's reward lags the
            newest labels by one update.
        wait_for_fits: at each update, wait for the fit started at the previous one and apply
            it, so that a seeded run is reproducible. ``False``: a fit that has not ended yet
            goes on beside RL and is applied at the first update after it ends, so RL never
            waits for a fit (fitting and RL run asynchronously, as in the paper); the Atari
            preset does so without a GPU, where a fit takes longer than the rollouts between
            two updates. The fit before RL and the one at the end are always waited for.
        initial_label_timeout: seconds to wait for the labels asked before RL starts before
            giving up with ``TimeoutError`` (every answer so far stays in the store, and a
            restart goes on from there); ``None`` waits as long as it takes (a person may take
            a while), saying every minute what it waits for.
        seed: seed for segment sampling, bootstrap samples and the oracle.
        exploration_bonus: RUNE's β_0 (Liang et al. 2022): the agent is paid β_t times the
            standard deviation of the members' rewards on top of r̂, so that it seeks the states
            the labels have not settled yet; 0 (default) turns it off. See
            :mod:`gym_prefs.exploration`.
        exploration_bonus_decay: RUNE's ρ: β_t = β_0 (1 − ρ)^t over timesteps t, applied at each
            refit.
        exploration_steps: PEBBLE's unsupervised pre-training (Lee et al. 2021): for this many
            timesteps at the start of a fresh run, RL is paid a state-entropy reward (how far
            each state lies from its neighbours among the newest 10,000 that its reward wrapper
            saw) instead of r̂, and no
            label is asked; then the initial labels are asked about segments of the states it
            reached, and RL goes on from the policy it learned (as in PEBBLE; an off-policy
            replay buffer is relabelled with r̂). The label schedule then runs over the rest of
            the run. 0 (default): none.
        crop_steps: SURF's temporal cropping (Park et al. 2022): each labelled pair is trained
            on crops of one random length in ``[L - crop_steps, L]`` of its two segments; 0
            (default) trains on whole segments. See :mod:`gym_prefs.semi_supervised`.
        pseudo_label_threshold: SURF's τ: the reward model trains as well on unlabelled pairs
            whose predicted preference is more confident than this (SURF: 0.99 or so), labelled
            with the ensemble's preferred side; ``None`` (default) turns it off.
        unlabelled_ratio: SURF's μ: unlabelled pairs per labelled pair in each minibatch (each
            gradient step then costs about ``1 + μ`` times as much).
        labels_per_query: how many different people answer each query on the labelling page
            (``"web"``); their answers are combined into one (see :func:`gym_prefs.label_desk.combine`)
            and their agreement is logged as ``preferences/agreement``.

    Example:
        >>> config = PreferenceConfig(total_labels=200, fit_epochs=3)
        >>> config.replace(selection="random").selection
        'random'
        >>> PreferenceConfig(fitting="later")
        Traceback (most recent call last):
        ...
        ValueError: fitting must be one of ('process', 'thread', 'inline'), got 'later'
    """

    total_labels: int = 700
    segment_length: int | None = None
    initial_label_fraction: float = 0.25
    schedule: str = "decay"
    schedule_scale: float = 2e6
    selection: str = "disagreement"
    candidates_factor: int = 10
    refit_interval: int | None = None
    initial_fit_epochs: int = 100
    fit_epochs: int = 5
    initial_fit_steps: int | None = None
    fit_steps: int | None = None
    batch_size: int = 64
    learning_rate: float = 1e-3
    reward_model: Any = None
    pool_size: int = 50_000
    pool_bytes: int = 512 * 2**20
    recorded_scores: bool | None = None
    max_comparisons: int | None = None
    initial_steps: int | None = None
    relabel_replay_buffer: bool = True
    fitting: str = "process"
    wait_for_fits: bool = True
    initial_label_timeout: float | None = None
    seed: int | None = None
    labels_per_query: int = 1
    exploration_bonus: float = 0.0
    exploration_bonus_decay: float = 1e-5
    exploration_steps: int = 0
    crop_steps: int = 0
    pseudo_label_threshold: float | None = None
    unlabelled_ratio: int = 4

    def __post_init__(self) -> None:
        if self.selection not in SELECTION_METHODS:
            raise ValueError(f"selection must be one of {SELECTION_METHODS}, got {self.selection!r}")
        if self.fitting not in FITTING_MODES:
            raise ValueError(f"fitting must be one of {FITTING_MODES}, got {self.fitting!r}")
        for name in (
            "segment_length", "refit_interval", "initial_steps", "max_comparisons", "initial_fit_steps", "fit_steps"
        ):  # fmt: skip
            value = getattr(self, name)
            if value is not None and not value >= 1:
                raise ValueError(f"{name} must be positive or None, got {value}")
        positive = ("candidates_factor", "initial_fit_epochs", "fit_epochs", "batch_size", "pool_size", "pool_bytes")
        for name in (*positive, "labels_per_query"):
            if not getattr(self, name) >= 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.initial_label_timeout is not None and not self.initial_label_timeout > 0:
            raise ValueError(f"initial_label_timeout must be positive or None, got {self.initial_label_timeout}")
        self.exploration()  # checks the bonus and its decay
        if self.pseudo_label_threshold is not None and not 0.5 <= self.pseudo_label_threshold < 1:
            raise ValueError(f"pseudo_label_threshold must be in [0.5, 1) or None, got {self.pseudo_label_threshold}")
        if self.exploration_steps < 0:
            raise ValueError(f"exploration_steps must be 0 or more, got {self.exploration_steps}")
        if self.crop_steps < 0 or self.unlabelled_ratio < 1:
            raise ValueError(
                f"crop_steps must be 0 or more and unlabelled_ratio positive, got {self.crop_steps}, "
                f"{self.unlabelled_ratio}"
            )
        if self.segment_length is not None and self.crop_steps >= self.segment_length:
            raise ValueError(f"crop_steps ({self.crop_steps}) must be less than segment_length ({self.segment_length})")
        # The schedule checks the budget, the fraction and the kind.
        LabelSchedule(self.total_labels, 1, self.initial_label_fraction, self.schedule, self.schedule_scale)

    @classmethod
    def from_settings(cls, settings: dict[str, Any], base: PreferenceConfig | None = None) -> PreferenceConfig:
        """``base`` (or the defaults) with ``settings`` changed; unknown names are an error naming the known."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise TypeError(f"unknown PreferenceCallback setting(s) {unknown}; the settings are {sorted(known)}")
        return dataclasses.replace(base or cls(), **settings)

    def replace(self, **changes: Any) -> PreferenceConfig:
        """A copy with ``changes`` (validated again)."""
        return self.from_settings(changes, base=self)

    def label_schedule(self, horizon: int) -> LabelSchedule:
        """The label schedule for a ``learn()`` call of ``horizon`` timesteps."""
        return LabelSchedule(
            self.total_labels, horizon, self.initial_label_fraction, self.schedule, self.schedule_scale
        )

    def fit_length(self, initial: bool) -> tuple[int, int | None]:
        """Epochs and the cap on gradient steps of the first fit (``initial``) or of a refit.

        Example:
            >>> PreferenceConfig(initial_fit_epochs=200, initial_fit_steps=12).fit_length(initial=True)
            (200, 12)
        """
        if initial:
            return self.initial_fit_epochs, self.initial_fit_steps
        return self.fit_epochs, self.fit_steps

    def exploration(self) -> UncertaintyBonus | None:
        """RUNE's bonus, or ``None`` when ``exploration_bonus`` is 0.

        Example:
            >>> PreferenceConfig(exploration_bonus=0.05).exploration()
            UncertaintyBonus(scale=0.05, decay=1e-05)
        """
        bonus = UncertaintyBonus(self.exploration_bonus, self.exploration_bonus_decay)  # checks both
        return bonus if bonus.scale > 0 else None

    def trainer_kwargs(self) -> dict[str, Any]:
        """The :class:`~gym_prefs.RewardTrainer` arguments these settings give."""
        return {
            "lr": self.learning_rate,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "crop": self.crop_steps,
            "pseudo_label_threshold": self.pseudo_label_threshold,
            "unlabelled_ratio": self.unlabelled_ratio,
        }

    def to_dict(self) -> dict[str, Any]:
        """The settings as keyword arguments (for ``PreferenceCallback(**settings)``, a JSON log, ...)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
