"""An in-memory :class:`~supasync.store.Store`: for tests and for caches that need not outlive
the process. Same contract as the cache file (:mod:`supasync.store.cache`); "one transaction"
is trivially true because nothing else sees the dicts mid-write."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..core.errors import CacheError
from ..core.merge import CachedRow, DictView, RowWrite
from .model import JOURNAL_LIMIT, CacheMeta, JournalEntry
from .tables import SchemaAction, TableShape

__all__ = ["MemoryStore"]


class MemoryStore:
    """Rows, cursors and journals in dicts."""

    def __init__(self) -> None:
        self._meta: dict[str, CacheMeta] = {}
        self._rows: dict[str, DictView] = {}
        self._journal: dict[str, list[JournalEntry]] = {}
        self._closed = False

    def _check(self, subscription: str) -> None:
        if self._closed:
            raise CacheError("the memory cache is closed; open a new store")
        if subscription not in self._meta:
            raise CacheError(
                f"subscription {subscription!r} is not in the cache; call reset() before write()"
            )

    def meta(self, subscription: str) -> CacheMeta | None:
        return self._meta.get(subscription)

    def prepare(self, subscription: str, shape: TableShape) -> SchemaAction:
        self._check(subscription)
        return "unchanged"

    def view(self, subscription: str,
             version_of: Callable[[Mapping[str, Any]], int | None]) -> DictView:
        """The subscription's rows themselves: the merger's view and the store are one dict
        (writing a row the view already holds changes nothing)."""
        self._check(subscription)
        return self._rows[subscription]

    def rows(self, subscription: str) -> list[CachedRow]:
        """Every cached row (tests)."""
        return list(self._rows.get(subscription, DictView()).values())

    def table_name(self, subscription: str) -> str | None:
        return None

    def begin_snapshot(self, subscription: str) -> None:
        pass

    def end_snapshot(self, subscription: str) -> None:
        pass

    def write(
        self,
        subscription: str,
        writes: Sequence[RowWrite],
        *,
        cursor: Mapping[str, Any] | None = None,
        journal: Sequence[JournalEntry] = (),
    ) -> None:
        self._check(subscription)
        rows = self._rows[subscription]
        for w in writes:
            if w.row is None:
                rows.pop(tuple(w.pk), None)
            else:
                rows[tuple(w.pk)] = CachedRow(tuple(w.pk), dict(w.row), w.version)
        if cursor is not None:
            self._meta[subscription] = CacheMeta(self._meta[subscription].fingerprint, dict(cursor))
        self._append(subscription, journal)

    def _append(self, subscription: str, journal: Sequence[JournalEntry]) -> None:
        entries = self._journal.setdefault(subscription, [])
        entries.extend(journal)
        del entries[:-JOURNAL_LIMIT]

    def reset(self, subscription: str, fingerprint: str, *, reason: str = "new") -> None:
        if self._closed:
            raise CacheError("the memory cache is closed; open a new store")
        self._meta[subscription] = CacheMeta(fingerprint, None)
        self._rows[subscription] = DictView()
        self._append(subscription, [JournalEntry("reset", {"reason": reason})])

    def journal(self, subscription: str, limit: int = JOURNAL_LIMIT) -> list[JournalEntry]:
        return list(self._journal.get(subscription, [])[-limit:])

    def close(self) -> None:
        self._closed = True
