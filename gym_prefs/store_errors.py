"""The errors a preference store raises (re-exported by :mod:`gym_prefs.store`).

They live in a module of their own so that every module of the store (:mod:`gym_prefs.store`,
its ``store_*`` modules and :mod:`gym_prefs.run_lock`) and :mod:`gym_prefs.datasets` can raise
them without importing one another.
"""

from __future__ import annotations

__all__ = ["StoreBusyError", "StoreError"]


class StoreError(ValueError):
    """A file that cannot be used as this store (not a store, damaged, read-only, a newer schema, another env).

    Example:
        >>> try:
        ...     raise StoreError("/tmp/notes.txt is not a gym_prefs preference store")
        ... except ValueError as error:  # a StoreError is a ValueError
        ...     print(error)
        /tmp/notes.txt is not a gym_prefs preference store
    """


class StoreBusyError(StoreError):
    """Another live process holds the store's run lock (see :meth:`PreferenceStore.lock_for_run`).

    Example:
        >>> issubclass(StoreBusyError, StoreError)  # catching StoreError catches this one too
        True
    """
