"""The labelling side of the loop: ask a source about pairs, commit everything, collect the labels.

Every query is in the store before the source is asked, and every answer is committed before
the source is told (``acknowledge``) and before it is trained on: the store is the single
source of truth, and the counts here are read from it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from gym_prefs.comparisons import Comparisons
from gym_prefs.records import LABELS, PREFERENCE_OF, SKIP, Answer, LabelledPairs, SegmentPairs
from gym_prefs.sources.base import PreferenceSource
from gym_prefs.store import PreferenceStore
from gym_prefs.timings import Timings

if TYPE_CHECKING:
    from stable_baselines3.common.logger import Logger

__all__ = ["LabellingSide", "source_name"]

#: Seconds between the notes saying what a wait before RL is waiting for.
WAIT_NOTE_SECONDS = 60.0


def source_name(source: PreferenceSource) -> str:
    """How messages and the store name ``source``."""
    return str(getattr(source, "name", type(source).__name__))


class LabellingSide:
    """Asks a :class:`~gym_prefs.PreferenceSource` about pairs and adds its labels to the fitting data.

    Args:
        source: who answers.
        store: where every query and answer is committed.
        comparisons: the fitting data that answered pairs are added to ("can't tell" is not).
        timings: where the time spent in the store and with the source is added up.

    Example:
        >>> import tempfile
        >>> from gymnasium import spaces
        >>> from gym_prefs import SyntheticOracle
        >>> obs_space, act_space = spaces.Box(-1, 1, (2,)), spaces.Discrete(2)
        >>> store = PreferenceStore(tempfile.mkdtemp() + "/p.db", obs_space, act_space, segment_length=3)
        >>> data = Comparisons(obs_space, act_space, segment_length=3)
        >>> side = LabellingSide(SyntheticOracle(seed=0), store, data, Timings())
        >>> pairs = SegmentPairs(np.zeros((4, 2, 3, 2), np.float32), np.zeros((4, 2, 3), np.int64),
        ...                      np.tile([[[1.0], [0.0]]], (4, 1, 3)))
        >>> side.ask(pairs, timestep=0)
        >>> side.collect(timeout=0.0)
        >>> side.num_asked, side.num_pending, len(data)
        (4, 0, 4)
    """

    def __init__(
        self, source: PreferenceSource, store: PreferenceStore, comparisons: Comparisons, timings: Timings
    ) -> None:
        self.source = source
        self.store = store
        self.comparisons = comparisons
        self.timings = timings
        # The pairs of this run's unanswered queries, for the fitting data (clips stay in the store).
        self._pending: dict[int, SegmentPairs] = {}
        # Stored pending queries a person cannot be shown: not asked, not counted.
        self._unshowable = 0

    # ------------------------------------------------------------------ counts (from the store)
    @property
    def num_asked(self) -> int:
        """Queries asked so far, this run's and earlier ones' (the label budget counts these)."""
        return self._counts()["queries"] - self._unshowable

    @property
    def num_skipped(self) -> int:
        """Queries answered "can't tell"."""
        return self._counts()["skipped"]

    @property
    def num_pending(self) -> int:
        """Queries asked of the source and not answered yet."""
        return len(self._pending)

    def _counts(self) -> dict[str, int]:
        if self.store.closed:  # the run closed it: read what it committed
            with PreferenceStore(self.store.path, readonly=True) as reader:
                return reader.counts()
        return self.store.counts()

    def answers_missing(self, initial: int) -> int:
        """Answers (or skips) the first ``initial`` queries still lack, at most those pending."""
        counts = self.store.counts()
        return min(len(self._pending), initial - counts["answered"] - counts["skipped"])

    def log_counts(self, logger: Logger, labels: int) -> None:
        """Record the ``preferences/...`` counts (``labels``: trained-on labels in the store)."""
        counts = self._counts()
        logger.record("preferences/labels", labels)
        logger.record("preferences/queries", counts["queries"] - self._unshowable)
        logger.record("preferences/pending", len(self._pending))
        logger.record("preferences/skipped", counts["skipped"])

    # ------------------------------------------------------------------ asking
    def ask(self, pairs: SegmentPairs, timestep: int) -> None:
        """Commit ``pairs`` as queries, then hand them to the source."""
        with self.timings.measure("store"):
            ids = self.store.add_queries(pairs, source=source_name(self.source), timestep=timestep)
        pairs = pairs.without_clips()
        for i, query_id in enumerate(ids):
            self._pending[query_id] = pairs[i : i + 1]
        with self.timings.measure("labelling"):
            self.source.request(pairs.queries(ids))

    def resume(self) -> None:
        """Ask the source again what the store holds as pending (asked, never answered).

        Such queries were asked before a restart, or at an earlier ``learn()`` whose end closed
        the source; they count once against the budget. A source that shows clips to a person
        cannot answer queries stored without clips (asked of an oracle, say): those stay
        pending in the store, are neither waited for nor counted against the person's budget,
        and the run says so.
        """
        pending = self.store.pending_queries()
        if getattr(self.source, "needs_clips", False):
            showable = [query for query in pending if self.store.clips(query.id) is not None]
            self._unshowable = len(pending) - len(showable)
            if self._unshowable:
                print(
                    f"gym_prefs: {self._unshowable} pending queries in {self.store.path} were stored without clips "
                    "(asked of another kind of labeler) and cannot be shown to a person; they stay pending there, "
                    "are not waited for and do not count against the label budget."
                )
            pending = showable
        self._pending = {query.id: SegmentPairs.of_queries([query]) for query in pending}
        if pending:
            self.source.request(pending)

    # ------------------------------------------------------------------ collecting
    def collect(self, timeout: float | None) -> None:
        """Commit the answers ready now (waiting up to ``timeout``) and add their labels to the data.

        Raises:
            ValueError: if the source returned answers that cannot be used (after committing
                the valid ones of the batch).
        """
        with self.timings.measure("labelling"):
            answers = self.source.poll(timeout=timeout)
        if answers:
            self._commit(answers)

    def wait_for_initial(self, initial: int, timeout: float | None) -> None:
        """Collect answers until the first ``initial`` queries are answered (or skipped).

        The wait ends early when the source says nothing is pending any more (a person closed
        the window with ``on_close="continue"``), and after ``timeout`` seconds with a
        ``TimeoutError``; meanwhile it says every minute what it waits for, so that a run is
        never silently stuck before RL.
        """
        if self.answers_missing(initial) > 0:
            self.collect(timeout=0.0)  # a synthetic source has answered already: nothing to say
        missing = self.answers_missing(initial)
        if missing <= 0 or not self.source.pending:
            return
        name = source_name(self.source)
        print(f"gym_prefs: waiting for {missing} answers from {name!r} before RL starts")
        started = time.monotonic()
        next_note = started + WAIT_NOTE_SECONDS
        while missing > 0 and self.source.pending:
            self.collect(timeout=1.0)
            missing = self.answers_missing(initial)
            waited = time.monotonic() - started
            if missing > 0 and timeout is not None and waited >= timeout:
                raise TimeoutError(
                    f"gym_prefs: {missing} of the queries asked of {name!r} before RL starts got no answer in "
                    f"{timeout:g} s. Every answer so far is in {self.store.path}; start the run again on that "
                    "store to go on, or pass initial_label_timeout=None to wait as long as it takes."
                )
            if time.monotonic() >= next_note:
                print(f"gym_prefs: still waiting for {missing} answers from {name!r} ({waited / 60:.0f} min so far)")
                next_note += WAIT_NOTE_SECONDS

    def _commit(self, answers: list[Any]) -> None:
        valid, problems = self._checked(answers)
        if valid:
            with self.timings.measure("store"):
                # Committed to disk before anything else happens with them, and only then
                # acknowledged to the source.
                committed = [answer.query_id for answer in valid]
                stored = self.store.record_answers(valid)
            acknowledge = getattr(self.source, "acknowledge", None)
            if callable(acknowledge):
                acknowledge(committed)
            self._use(stored)
        if problems:
            # The valid answers of the batch are committed above: a faulty one loses nothing else.
            raise ValueError(
                f"the preference source {source_name(self.source)!r} returned answers that cannot be used "
                f"({len(problems)}): " + "; ".join(problems[:5]) + (" ..." if len(problems) > 5 else "") + ". "
                "Answers must be gym_prefs.Answer(query_id, label) for ids of the queries it was given, with a "
                f"label in {LABELS}. The valid answers of that batch were stored."
            )

    def _checked(self, answers: list[Any]) -> tuple[list[Answer], list[str]]:
        """Split what a source returned into valid answers and descriptions of the others."""
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
        stray = [answer.query_id for answer in built if answer.query_id not in self._pending]
        answered = {answer.query_id for answer in self.store.answers_for(stray)}
        valid = []
        for answer in built:
            if answer.query_id in self._pending or answer.query_id in answered:
                valid.append(answer)
            else:
                problems.append(f"{answer!r} (no query with id {answer.query_id} is waiting for an answer)")
        return valid, problems

    def _use(self, stored: list[Answer]) -> None:
        """Add the stored answers to the fitting data (the first answer of a query stands)."""
        usable: list[tuple[Answer, SegmentPairs]] = []
        for answer in stored:
            pair = self._pending.pop(answer.query_id, None)
            if pair is not None and answer.label != SKIP:  # None: not one of this run's queries
                usable.append((answer, pair))
        if usable:
            self.comparisons.add_labelled(
                LabelledPairs(
                    SegmentPairs.concatenate([pair for _, pair in usable]),
                    np.array([PREFERENCE_OF[answer.label] for answer, _ in usable], dtype=np.float32),
                    np.array([answer.query_id for answer, _ in usable], dtype=np.int64),
                    np.array([answer.label for answer, _ in usable]),
                )
            )
