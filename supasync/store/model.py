"""The cache's contract: one store holds, per subscription, the rows its handlers have been given.

Contract of a :class:`Store` (both implementations, :class:`~supasync.store.memory.MemoryStore`
and the store file's :class:`~supasync.store.cache.CacheFile`, keep it;
``tests/unit/test_cache.py`` runs the same tests on both):

* Per subscription name it keeps the rows (primary key -> row image, in a table shaped like the
  source's: :meth:`Store.prepare`; the merger reads them through :meth:`Store.view`, by key,
  never all at once), a *fingerprint* (what the rows were fetched for: table,
  filter, columns, the subscriber's identity), a *cursor* (the repair's resume position, a small
  JSON object whose shape belongs to :mod:`supasync.repair.repairer`) and a short journal of what
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

Errors: every storage failure is a :class:`~supasync.core.errors.CacheError` saying which file and
what to do.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .tables import SchemaAction, TableShape

from ..core.merge import RowView, RowWrite

__all__ = [
    "JOURNAL_LIMIT",
    "CacheMeta",
    "JournalEntry",
    "Store",
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

    def prepare(self, subscription: str, shape: TableShape) -> SchemaAction:
        """Make (or adapt) the subscription's table for *shape*; see
        :meth:`~supasync.store.cache.CacheFile.prepare`."""
        ...

    def view(self, subscription: str,
             version_of: Callable[[Mapping[str, Any]], int | None]) -> RowView:
        """The merger's view of the subscription's rows (after :meth:`prepare`)."""
        ...

    def table_name(self, subscription: str) -> str | None:
        """Where a reader finds the subscription's rows in the file (None: not in a file)."""
        ...

    def begin_snapshot(self, subscription: str) -> None:
        """A first read fills the empty table (the journal gets one reset entry)."""
        ...

    def end_snapshot(self, subscription: str) -> None: ...

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
