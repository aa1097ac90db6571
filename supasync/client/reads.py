"""A subscription's read model: its cached rows, read from any thread.

A subscription that repairs gaps keeps what its handlers have been given in the client's store
(:mod:`supasync.store.cache`): one typed table per subscription in one SQLite file. This module
reads it for :meth:`Subscription.get <supasync.client.subscription.Subscription.get>`,
``rows``, ``count``, ``seq`` and ``changes_since``, on the calling thread, whichever it is:

* A store file is read through :class:`~supasync.store.reads.StoreReader` - a read-only SQLite
  connection per thread, never the writer's - so a read neither waits for the event loop nor
  blocks it (WAL: readers and the one writer do not wait for each other), and every statement
  sees whole transactions: never half a batch of writes, rows and the journal position of
  :meth:`ReadModel.read` taken together.
* An in-memory cache (``cache="memory:"``) is read from its dict (copied whole under the GIL);
  it keeps no change journal, so ``seq`` stays 0 and ``changes_since`` raises.

``where`` is a supasync filter (``"done=eq.false"``, :mod:`supasync.core.filters`), evaluated in
SQL on the typed columns (an in-memory cache evaluates it in Python, the same predicate the
subscription uses on live changes).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from ..core.errors import CacheError, ConfigError
from ..core.filters import Filter, parse_filter
from ..core.merge import CachedRow
from ..store.journal import JournalRead
from ..store.reads import ReadResult, StoreReader, TableView

__all__ = ["ReadModel", "ReadSource"]


class ReadSource(Protocol):
    """What a gate tells its read model (plain attributes, safe to read from any thread)."""

    #: The store file (None: no file, e.g. an in-memory cache).
    read_path: Path | None
    #: The subscription's table in that file (None until known).
    read_table: str | None
    #: Changes whenever the table's shape may have changed (a reader's cached shape is then
    #: read again).
    read_version: int

    def memory_rows(self) -> list[CachedRow] | None:
        """An in-memory cache's rows (a copy), or None for a store file."""
        ...


_readers: dict[Path, StoreReader] = {}
_views: dict[tuple[Path, str, int], TableView] = {}
_readers_lock = threading.Lock()


def _reader(path: Path) -> StoreReader:
    """One reader per file in the process (each holds a connection per thread)."""
    with _readers_lock:
        found = _readers.get(path)
        if found is None or found._closed:
            found = _readers[path] = StoreReader(path)
        return found


def forget_reader(path: Path | None) -> None:
    """Close the process's reader of *path* (its file is going away)."""
    if path is None:
        return
    with _readers_lock:
        found = _readers.pop(path, None)
    if found is not None:
        found.close()


class ReadModel:
    """Reads of one subscription's cached rows (see the module docstring).

    Args:
        name: the subscription's name (for messages).
        source: its gate, or None when the subscription keeps no rows (``repair="off"``).
        primary_key: the key columns, in order (``get`` takes the values in this order).
    """

    def __init__(self, name: str, source: ReadSource | None,
                 primary_key: Sequence[str]) -> None:
        self.name, self.source, self.primary_key = name, source, tuple(primary_key)

    def _source(self) -> ReadSource:
        if self.source is None:
            raise ConfigError(
                f"subscription {self.name!r} keeps no rows to read", key="repair",
                value="off", fix="subscribe with repair='auto' (the default) to keep its rows "
                "in the client's cache, readable with get/rows/count")
        return self.source

    def _file(self) -> tuple[StoreReader, str] | None:
        source = self._source()
        path, table = source.read_path, source.read_table
        if path is None or table is None or not path.exists():
            return None
        return _reader(path), table

    # -- reads -------------------------------------------------------------------------------
    def get(self, *pk: Any) -> dict[str, Any] | None:
        """The cached row with this primary key (values in key order), or None."""
        if len(pk) != len(self.primary_key):
            raise ConfigError(
                f"subscription {self.name!r}: get() takes the primary key "
                f"({', '.join(self.primary_key)}): {len(self.primary_key)} value(s), got "
                f"{len(pk)}", key="pk", value=pk)
        found = self._file()
        if found is not None:
            reader, table = found
            try:
                return reader.get(table, list(pk), view=self._view(reader, table))
            except CacheError:
                if not self._has_table(reader, table):
                    return None
                raise
        rows = self._memory()
        if rows is None:
            return None
        want = tuple(pk)
        for row in rows:
            if row.pk == want:
                return dict(row.row)
        return None

    def rows(self, where: str | Filter | None = None, *,
             order_by: str | Sequence[str] | None = None,
             limit: int | None = None) -> Iterator[dict[str, Any]]:
        """The cached rows matching *where* (a supasync filter), in *order_by* order (column
        names, ``-name`` for descending; default the primary key), at most *limit*."""
        found = self._file()
        if found is not None:
            reader, table = found
            if not self._has_table(reader, table):
                return iter(())
            return reader.rows(table, where, order_by=order_by, limit=limit)
        return iter(self._memory_rows(where, order_by, limit))

    def count(self, where: str | Filter | None = None) -> int:
        """How many cached rows match *where*."""
        found = self._file()
        if found is not None:
            reader, table = found
            if not self._has_table(reader, table):
                return 0
            return reader.count(table, where)
        return len(self._memory_rows(where, None, None))

    def read(self, where: str | Filter | None = None, *,
             order_by: str | Sequence[str] | None = None,
             limit: int | None = None) -> ReadResult:
        """Rows and the journal position they reflect, taken together: follow the changes
        after ``result.seq`` with :meth:`changes_since` for a hand-off without gap or repeat."""
        found = self._file()
        if found is not None:
            reader, table = found
            if self._has_table(reader, table):
                return reader.read(table, where, order_by=order_by, limit=limit)
            return ReadResult([], reader.seq())
        self._no_journal()
        raise AssertionError("unreachable")

    @property
    def seq(self) -> int:
        """The store's newest journal position (what a read made now reflects); 0 with no
        file yet or an in-memory cache."""
        found = self._file()
        return found[0].seq() if found is not None else 0

    def changes_since(self, seq: int, *, limit: int | None = None) -> JournalRead:
        """The journal entries of this subscription's table after *seq*
        (:class:`~supasync.store.journal.JournalRead`: ``must_refetch`` when *seq* is older
        than the journal keeps, or before the table was filled again)."""
        found = self._file()
        if found is None:
            if self._source().read_path is None:
                self._no_journal()
            raise CacheError(f"subscription {self.name!r} has no rows in the store yet; "
                             "wait_synced() first")
        reader, table = found
        return reader.changes_since(table, seq, limit=limit)

    # -- helpers -----------------------------------------------------------------------------
    def _view(self, reader: StoreReader, table: str) -> TableView:
        """The table's shape, read once per shape version of the writing gate: a lookup is
        then one indexed statement (each statement is a chance to wait for the GIL behind
        the event loop's thread)."""
        key = (reader.path, table, self._source().read_version)
        cached = _views.get(key)
        if cached is None:
            cached = reader.view(table)
            if len(_views) > 256:
                _views.clear()
            _views[key] = cached
        return cached

    def _no_journal(self) -> None:
        raise CacheError(
            f"subscription {self.name!r} is cached in memory, which keeps no change journal; "
            "give the client a cache file (Realtime(cache='app.sqlite')) or leave cache unset "
            "(a temporary file)")

    @staticmethod
    def _has_table(reader: StoreReader, table: str) -> bool:
        try:
            reader.view(table)
        except CacheError:
            return False
        return True

    def _memory(self) -> list[CachedRow] | None:
        return self._source().memory_rows()

    def _memory_rows(self, where: str | Filter | None, order_by: str | Sequence[str] | None,
                     limit: int | None) -> list[dict[str, Any]]:
        rows = self._memory() or []
        flt = parse_filter(where) if isinstance(where, str) else where
        out = [dict(r.row) for r in rows if flt is None or flt.matches(r.row)]
        keys: list[str] = ([order_by] if isinstance(order_by, str) else list(order_by or ())) \
            or list(self.primary_key)
        for key in reversed(keys):
            desc = key.startswith("-") or key.endswith(".desc")
            name = key.lstrip("-").removesuffix(".desc").removesuffix(".asc")
            out.sort(key=lambda r: (r.get(name) is None, r.get(name)), reverse=desc)
        return out[:limit] if limit is not None else out
