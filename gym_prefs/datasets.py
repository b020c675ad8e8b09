"""Labels as a portable file: exporting a store's labels to ``.npz`` and importing them into a store.

An export holds every label of a store with its two segments, as NumPy arrays (no pickles):
``obs``, ``actions``, ``true_rewards`` (NaN where unknown), ``mu``, ``labels`` and ``query_ids``
(see :class:`~gym_prefs.records.LabelledPairs`), and ``metadata``, a JSON string with the
spaces, the segment length, the env id and the store's schema version. So labels collected once
can be shared, archived, or merged into another store made for the same env.

Example:
    >>> import tempfile, os
    >>> import numpy as np
    >>> from gymnasium import spaces
    >>> from gym_prefs.records import Answer, SegmentPairs
    >>> folder = tempfile.mkdtemp()
    >>> store = PreferenceStore(os.path.join(folder, "a.db"), spaces.Box(-1, 1, (2,)), spaces.Discrete(2), 3)
    >>> ids = store.add_queries(SegmentPairs(np.zeros((2, 2, 3, 2)), np.zeros((2, 2, 3), int)), source="oracle")
    >>> _ = store.record_answers([Answer(ids[0], "first"), Answer(ids[1], "skip")])
    >>> export_labels(store, os.path.join(folder, "labels.npz"))  # skipped pairs are not labels
    1
    >>> copy = import_labels(os.path.join(folder, "labels.npz"), os.path.join(folder, "b.db"))
    >>> len(copy), copy.labelled_pairs().labels.tolist()
    (1, ['first'])
    >>> copy.close(); store.close()
"""

from __future__ import annotations

import json
import os
import time
import zipfile
from typing import Any, cast

import numpy as np

from gym_prefs.records import Answer, Label, LabelledPairs, SegmentPairs
from gym_prefs.spaces import space_from_config, space_to_config
from gym_prefs.store import SCHEMA_VERSION, PreferenceStore
from gym_prefs.store_errors import StoreError

__all__ = ["EXPORT_FORMAT", "export_labels", "import_labels", "read_export"]

#: The ``format`` in an export's metadata: what tells an export from any other ``.npz`` file.
EXPORT_FORMAT = "gym_prefs.preferences"


def export_labels(store: PreferenceStore, path: str | os.PathLike[str]) -> int:
    """Write every label of ``store`` with its segments to a portable ``.npz`` file; returns the count.

    The file's arrays and metadata are described in the module docstring.
    """
    pairs = store.labelled_pairs()
    metadata = {
        "format": EXPORT_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "observation_space": space_to_config(store.observation_space),
        "action_space": space_to_config(store.action_space),
        "segment_length": store.segment_length,
        "env_id": store.env_id,
        "exported_at": time.time(),
    }
    true_rewards = pairs.true_rewards
    if true_rewards is None:  # (a store always gives them, NaN where unknown; the format has them)
        true_rewards = np.full(pairs.obs.shape[:3], np.nan, dtype=np.float32)
    with open(path, "wb") as handle:
        np.savez_compressed(
            handle,
            obs=pairs.obs,
            actions=pairs.actions,
            mu=pairs.mu,
            query_ids=pairs.query_ids,
            true_rewards=true_rewards,
            labels=pairs.labels,
            metadata=np.array(json.dumps(metadata)),
        )
    return len(pairs)


def read_export(path: str | os.PathLike[str]) -> tuple[dict[str, Any], LabelledPairs]:
    """Read a file written by :func:`export_labels`: its metadata and its labelled pairs.

    Raises:
        StoreError: the file is not a gym_prefs preference export (or not a whole one).
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            metadata = json.loads(str(data["metadata"]))
            pairs = LabelledPairs(
                SegmentPairs(data["obs"], data["actions"], data["true_rewards"]),
                data["mu"],
                data["query_ids"],
                data["labels"],
            )
    # An empty file ends NumPy's reading with EOFError, a cut-off zip with BadZipFile.
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise StoreError(f"{path} is not a gym_prefs preference export ({error})") from error
    if metadata.get("format") != EXPORT_FORMAT:
        raise StoreError(f"{path} is not a gym_prefs preference export")
    return metadata, pairs


def import_labels(export_path: str | os.PathLike[str], store_path: str | os.PathLike[str]) -> PreferenceStore:
    """Create (or extend) a store at ``store_path`` with the labels of an export file.

    Returns:
        The store, open for writing; close it when done.

    Raises:
        StoreError: the export file is not one, or the store at ``store_path`` was made for
            other spaces or another segment length (see :class:`~gym_prefs.store.PreferenceStore`).
    """
    metadata, pairs = read_export(export_path)
    store = PreferenceStore(
        store_path,
        space_from_config(metadata["observation_space"]),
        space_from_config(metadata["action_space"]),
        int(metadata["segment_length"]),
        env_id=metadata.get("env_id"),
    )
    try:
        ids = store.add_queries(pairs.pairs, source="import")
        labels = [cast(Label, str(label)) for label in pairs.labels]
        store.record_answers([Answer(query_id, label, "import") for query_id, label in zip(ids, labels, strict=True)])
    except BaseException:
        store.close()  # the caller never gets the store, so nobody else would close it
        raise
    return store
