"""Preference sources: who answers "which of these two clips is better?"."""

from __future__ import annotations

from typing import Any

from gym_prefs.sources.base import LABELS, PREFERENCE_OF, Answer, Label, PreferenceSource, Query
from gym_prefs.sources.oracle import SyntheticOracle
from gym_prefs.sources.pygame_labeler import PygameLabeler
from gym_prefs.sources.web_labeler import WebLabeler

__all__ = [
    "LABELS",
    "PREFERENCE_OF",
    "Answer",
    "Label",
    "PreferenceSource",
    "PygameLabeler",
    "Query",
    "SyntheticOracle",
    "WebLabeler",
    "make_source",
]

SOURCE_NAMES = ("oracle", "human", "web")
#: What a source built by name takes for "what to teach".
PERSON_SOURCES = ("human", "web")


def make_source(source: str | PreferenceSource, seed: int | None = None, **kwargs: Any) -> PreferenceSource:
    """Build a source from its name, or check and return a source object.

    Args:
        source: ``"oracle"`` (a perfect :class:`SyntheticOracle`), ``"human"`` (a
            :class:`PygameLabeler` window), ``"web"`` (a :class:`WebLabeler` page) or an object
            following :class:`PreferenceSource`.
        seed: seed for a source built by name.
        **kwargs: constructor arguments for a source built by name.
    """
    if isinstance(source, str):
        if source == "oracle":
            return SyntheticOracle(seed=seed, **kwargs)
        if source == "human":
            return PygameLabeler(**kwargs)
        if source == "web":
            return WebLabeler(**kwargs)
        raise ValueError(
            f"unknown preference source {source!r}; use one of {SOURCE_NAMES} or a PreferenceSource object"
        )
    if not isinstance(source, PreferenceSource):
        raise TypeError(
            f"{source!r} is not a preference source: it needs request(), poll(), pending and close() "
            "(see gym_prefs.PreferenceSource)"
        )
    return source
