"""The local store: what a subscription has seen, on disk or in memory, and the mirror's tables.

One file format for the client's cache and the mirror: typed tables (one per cached
subscription or mirrored table, same columns and primary key as the source), a change journal,
bookkeeping in ``_supasync_*`` tables.

* :mod:`~supasync.store.tables` - the typed SQLite tables (``MirrorStore``),
  :mod:`~supasync.store.values` - how PostgreSQL values become SQLite values (pure functions),
  :mod:`~supasync.store.journal` - the change journal.
* :mod:`~supasync.store.model` - the cache's contract (:class:`Store`, :class:`CacheMeta`,
  :class:`JournalEntry`); :mod:`~supasync.store.cache` (:class:`CacheFile`, a store file) and
  :mod:`~supasync.store.memory` implement it; :func:`open_store` picks one from a cache URL or
  path. :mod:`~supasync.store.view` - the merger's view of a cached table, read by key.
* :mod:`~supasync.store.reads` - the read model over a file, from any thread.

Layer: above :mod:`supasync.core`, below the client. It may import ``supasync.core`` and nothing
else of supasync (checked by import-linter, ``pyproject.toml``).
"""

from __future__ import annotations

import os

from ..core.errors import ConfigError
from .cache import CacheFile
from .memory import MemoryStore
from .model import JOURNAL_LIMIT, CacheMeta, JournalEntry, Store

__all__ = [
    "JOURNAL_LIMIT",
    "CacheFile",
    "CacheMeta",
    "JournalEntry",
    "MemoryStore",
    "Store",
    "open_store",
]


def open_store(url_or_path: str | os.PathLike[str] | None = None) -> Store:
    """Open the cache a client asked for.

    * ``None``: a store file in a temporary directory, deleted on :meth:`Store.close`.
    * ``"memory:"`` or ``":memory:"``: :class:`~supasync.store.memory.MemoryStore`.
    * ``"sqlite:///path/to/file.db"``, ``"sqlite:relative.db"`` or a plain path: a SQLite file,
      created if missing, resumed if it exists.

    Raises:
        ConfigError: for any other URL scheme.
        CacheError: if the file cannot be opened or is not a supasync cache.
    """
    if url_or_path is None:
        return CacheFile(None)
    text = os.fspath(url_or_path)
    if text in ("memory:", ":memory:", "memory://"):
        return MemoryStore()
    if text.startswith("sqlite:"):
        path = text[len("sqlite:"):]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise ConfigError(
                "the sqlite: cache URL names no file",
                key="cache",
                value=text,
                fix="use sqlite:///absolute/path.db or sqlite:relative.db",
            )
        return CacheFile(path)
    if "://" in text:
        raise ConfigError(
            "unknown cache URL scheme",
            key="cache",
            value=text,
            fix="use a file path, sqlite:///path.db, memory: or leave it unset (temporary file)",
        )
    return CacheFile(text)
