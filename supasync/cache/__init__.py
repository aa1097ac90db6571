"""The local cache: one store holds, per subscription, the rows its handlers have been given.

Contract of a :class:`Store` (both implementations, :class:`~supasync.cache.memory.MemoryStore`
and :class:`~supasync.cache.sqlite.SqliteStore`, keep it; ``tests/unit/test_cache.py`` runs
the same tests on both):

* Per subscription name it keeps the rows (primary key -> row image + version, see
  :class:`~supasync.merge.CachedRow`), a *fingerprint* (what the rows were fetched for: table,
  filter, columns, the subscriber's identity), a *cursor* (the repair's resume position, a small
  JSON object whose shape belongs to :mod:`supasync.repair`) and a short journal of what
  happened (repairs, resets), newest last, trimmed to :data:`JOURNAL_LIMIT` entries.
* :meth:`Store.write` applies a batch of row writes, the new cursor (if given) and journal
  entries **in one transaction**: after a crash either all of it is there or none. Callers write
  large repairs in several batches and pass the cursor with the last, so a crash mid-repair
  leaves the old cursor and the next repair simply reads again (every write is idempotent).
* Opening an existing SQLite file resumes where it stopped; :meth:`Store.reset` starts a
  subscription over (used when the fingerprint differs: the rows were fetched for someone or
  something else and must not leak into this subscription).
* Calls are synchronous and short (one batch); the asyncio layer calls them between awaits.
  A store is used by one event loop thread.

Errors: every storage failure is a :class:`~supasync.errors.CacheError` saying which file and
what to do.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import ConfigError
from ..merge import CachedRow, RowWrite

__all__ = [
    "JOURNAL_LIMIT",
    "CacheMeta",
    "JournalEntry",
    "Store",
    "open_store",
]

JOURNAL_LIMIT = 100


@dataclass(frozen=True)
class CacheMeta:
    """A subscription's bookkeeping: ``fingerprint`` and ``cursor`` (None before any repair)."""

    fingerprint: str
    cursor: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class JournalEntry:
    """One line of the journal: ``kind`` (``repair``, ``reset``, ``fallback``...) and details."""

    kind: str
    detail: Mapping[str, Any] = field(default_factory=dict)
    at: _dt.datetime = field(default_factory=lambda: _dt.datetime.now(_dt.UTC))


class Store(Protocol):
    """Where a subscription's rows, cursor and journal live (see the module docstring)."""

    def meta(self, subscription: str) -> CacheMeta | None:
        """The subscription's fingerprint and cursor, or None if the store never saw it."""
        ...

    def rows(self, subscription: str) -> list[CachedRow]:
        """Every cached row of the subscription."""
        ...

    def write(
        self,
        subscription: str,
        writes: Sequence[RowWrite],
        *,
        cursor: Mapping[str, Any] | None = None,
        journal: Sequence[JournalEntry] = (),
    ) -> None:
        """Apply *writes* (``row=None`` deletes), set *cursor* if given and append *journal*,
        all in one transaction. The subscription must have been :meth:`reset` once."""
        ...

    def reset(self, subscription: str, fingerprint: str, *, reason: str = "new") -> None:
        """Forget the subscription's rows and cursor and record *fingerprint* (one transaction)."""
        ...

    def journal(self, subscription: str, limit: int = JOURNAL_LIMIT) -> list[JournalEntry]:
        """The last *limit* journal entries, oldest first."""
        ...

    def close(self) -> None:
        """Release the store (a temporary SQLite file is deleted)."""
        ...


def open_store(url_or_path: str | os.PathLike[str] | None = None) -> Store:
    """Open the cache a client asked for.

    * ``None``: SQLite in a temporary file, deleted on :meth:`Store.close`.
    * ``"memory:"`` or ``":memory:"``: :class:`~supasync.cache.memory.MemoryStore`.
    * ``"sqlite:///path/to/file.db"``, ``"sqlite:relative.db"`` or a plain path: a SQLite file,
      created if missing, resumed if it exists.

    Raises:
        ConfigError: for any other URL scheme.
        CacheError: if the file cannot be opened or is not a supasync cache.
    """
    from .memory import MemoryStore
    from .sqlite import SqliteStore

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
