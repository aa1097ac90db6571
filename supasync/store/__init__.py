"""The local store: what a subscription has seen, on disk or in memory, and the mirror's tables.

* :mod:`~supasync.store.model` - the cache's contract (:class:`Store`, :class:`CacheMeta`,
  :class:`JournalEntry`); :mod:`~supasync.store.sqlite` and :mod:`~supasync.store.memory`
  implement it; :func:`open_store` picks one from a cache URL or path.
* :mod:`~supasync.store.tables` - the typed SQLite tables a mirror writes (one per source table,
  same columns and primary key), and :mod:`~supasync.store.values` - how PostgreSQL values
  become SQLite values (pure functions).

Layer: above :mod:`supasync.core`, below the client. It may import ``supasync.core`` and nothing
else of supasync (checked by import-linter, ``pyproject.toml``).
"""

from __future__ import annotations

import os

from ..core.errors import ConfigError
from .memory import MemoryStore
from .model import JOURNAL_LIMIT, CacheMeta, JournalEntry, Store
from .sqlite import SqliteStore

__all__ = [
    "JOURNAL_LIMIT",
    "CacheMeta",
    "JournalEntry",
    "MemoryStore",
    "SqliteStore",
    "Store",
    "open_store",
]


def open_store(url_or_path: str | os.PathLike[str] | None = None) -> Store:
    """Open the cache a client asked for.

    * ``None``: SQLite in a temporary file, deleted on :meth:`Store.close`.
    * ``"memory:"`` or ``":memory:"``: :class:`~supasync.store.memory.MemoryStore`.
    * ``"sqlite:///path/to/file.db"``, ``"sqlite:relative.db"`` or a plain path: a SQLite file,
      created if missing, resumed if it exists.

    Raises:
        ConfigError: for any other URL scheme.
        CacheError: if the file cannot be opened or is not a supasync cache.
    """
    if url_or_path is None:
        return SqliteStore(None)
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
        return SqliteStore(path)
    if "://" in text:
        raise ConfigError(
            "unknown cache URL scheme",
            key="cache",
            value=text,
            fix="use a file path, sqlite:///path.db, memory: or leave it unset (temporary file)",
        )
    return SqliteStore(text)
