"""In-process commit notices: a store file's writer says "committed", its readers in the same
process hear it at once.

Readers of a store file's change journal (``supasync.web``'s hubs) poll the journal position,
because the writer may be another process. When the writer is in the same process - ``supasync
serve`` runs the mirror worker beside the endpoint - polling adds up to one poll interval of
latency to every change. :func:`committed` is called by the store after each outermost commit
(:meth:`supasync.store.tables.MirrorStore.transaction`); :func:`watch` registers a callback for a
file. Callbacks run in the committing thread, so they must be thread-safe and quick (e.g.
``loop.call_soon_threadsafe(event.set)``); an exception in one is logged and does not reach the
writer. Readers keep polling anyway (for writers in other processes).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

__all__ = ["committed", "watch"]

logger = logging.getLogger("supasync.store")

_lock = threading.Lock()
_watchers: dict[str, list[Callable[[], None]]] = {}


def _key(path: str | os.PathLike[str]) -> str:
    return os.path.realpath(Path(path))


def watch(path: str | os.PathLike[str], callback: Callable[[], None]) -> Callable[[], None]:
    """Call *callback* after every commit to the store file *path* in this process; returns
    the function that stops it."""
    key = _key(path)
    with _lock:
        _watchers.setdefault(key, []).append(callback)

    def unwatch() -> None:
        with _lock:
            callbacks = _watchers.get(key)
            if callbacks and callback in callbacks:
                callbacks.remove(callback)
                if not callbacks:
                    del _watchers[key]

    return unwatch


def committed(path: str | os.PathLike[str]) -> None:
    """Tell the watchers of *path* that a transaction on it committed."""
    if not _watchers:  # the common case (nobody reads the file in this process): no work
        return
    key = path if isinstance(path, str) and path in _watchers else _key(path)
    with _lock:
        callbacks = list(_watchers.get(key, ()))
    for callback in callbacks:
        try:
            callback()
        except Exception:
            logger.exception("a commit watcher of %s failed", path)
