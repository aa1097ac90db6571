"""A merge view read from a store table: what a cached subscription's handlers have been given.

:class:`StoredView` is the :class:`~supasync.core.merge.RowView` of a subscription whose cache is
a store file (:mod:`supasync.store.cache`). It keeps no per-row state in Python:

* :meth:`~StoredView.get` reads one row by primary key (an indexed lookup on the table's key);
  :meth:`~StoredView.prefetch` reads a batch of keys in one statement (a repair's page, the
  buffered keys of a drained gap) and answers the following ``get`` calls from that batch until
  :meth:`~StoredView.forget` (called by the merger after every batch of writes is taken, so a
  prefetched row is never older than a persisted write).
* Writes are not applied here: the merger keeps them until the gate persists them
  (:meth:`~supasync.core.merge.Merger.take_writes`) and consults them before the view.
* The keys a repair has seen are *marked* in a temporary table on the writer's connection
  (:meth:`~StoredView.mark`), and :meth:`~StoredView.unmarked` walks the table by ``rowid`` for
  rows no read saw, a chunk at a time, so a full comparison holds no key set in memory and may
  delete between chunks.

Rows come back as PostgREST renders them (:func:`~supasync.store.values.decoder`: booleans,
JSON values, ``\\x`` bytea), so the merger compares them with fetched and live rows directly.
Used from the writer's thread only (the event loop's); other threads read the file through
:class:`~supasync.store.reads.StoreReader`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from ..core.merge import CachedRow, Key
from .tables import TableShape
from .values import decoder, sqlite_type

__all__ = ["StoredView"]

#: Keys per prefetch statement (SQLite allows 32,766 parameters since 3.32; this stays well
#: under the 999 of older builds for keys of up to four columns).
_PREFETCH = 200


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class StoredView:
    """The :class:`~supasync.core.merge.RowView` of one store table (module docstring).

    Args:
        db: the store's writer connection (its thread only).
        shape: the table.
        version_of: the row's version (the merger's :class:`~supasync.core.merge.Versioning`).
    """

    def __init__(self, db: sqlite3.Connection, shape: TableShape,
                 version_of: Callable[[Mapping[str, Any]], int | None]) -> None:
        self.db, self.shape, self._version_of = db, shape, version_of
        names = shape.column_names
        self._names = names
        self._decoders = [(i, f) for i, (_, t) in enumerate(shape.columns)
                          if (f := decoder(t)) is not None]
        index = {c: i for i, c in enumerate(names)}
        self._key_index = [index[c] for c in shape.primary_key]
        table = _q(shape.name)
        cols = ", ".join(_q(c) for c in names)
        self._keys_sql = ", ".join(_q(c) for c in shape.primary_key)
        where = " and ".join(f"{_q(c)} = ?" for c in shape.primary_key)
        self._select = f"select {cols} from {table}"
        self._get_sql = f"{self._select} where {where}"
        self._table = table
        self._marks = _q("_supasync_marks_" + shape.name)
        self._marks_made = False
        self._ahead: dict[Key, CachedRow | None] = {}

    # -- decoding -------------------------------------------------------------------------
    def _decode(self, values: Sequence[Any]) -> CachedRow:
        out = list(values)
        for i, f in self._decoders:
            if out[i] is not None:
                out[i] = f(out[i])
        row = dict(zip(self._names, out, strict=True))
        pk = tuple(out[i] for i in self._key_index)
        return CachedRow(pk, row, self._version_of(row))

    # -- RowView ---------------------------------------------------------------------------
    def get(self, pk: Key) -> CachedRow | None:
        if pk in self._ahead:
            return self._ahead[pk]
        found = self.db.execute(self._get_sql, self.shape.key_values(pk)).fetchone()
        return None if found is None else self._decode(found)

    def prefetch(self, keys: Sequence[Key]) -> None:
        wanted = [k for k in keys if k not in self._ahead]
        width = len(self.shape.primary_key)
        for start in range(0, len(wanted), _PREFETCH):
            part = wanted[start : start + _PREFETCH]
            stored = {self.shape.key_values(k): k for k in part}
            params = [v for key in stored for v in key]
            if width == 1:
                where = f"{self._keys_sql} in ({', '.join('?' * len(stored))})"
            else:
                one = "(" + ", ".join("?" * width) + ")"
                where = (f"({self._keys_sql}) in (values "
                         + ", ".join([one] * len(stored)) + ")")
            for pk in part:
                self._ahead[pk] = None
            for values in self.db.execute(f"{self._select} where {where}", params):
                row = self._decode(values)
                asked = stored.get(tuple(values[i] for i in self._key_index))
                if asked is not None:
                    self._ahead[asked] = row

    def put(self, row: CachedRow) -> None:
        self._ahead.pop(row.pk, None)

    def remove(self, pk: Key) -> None:
        self._ahead.pop(pk, None)

    def forget(self) -> None:
        self._ahead.clear()

    def clear_marks(self) -> None:
        if self._marks_made:
            self.db.execute(f"delete from temp.{self._marks}")

    def _make_marks(self) -> None:
        if self._marks_made:
            return
        # The key's declared types, so SQLite compares (and indexes) marks like the table's key.
        types = dict(self.shape.columns)
        cols = ", ".join(f"{_q(c)} {sqlite_type(types.get(c, 'text'))}"
                         for c in self.shape.primary_key)
        self.db.execute(f"create temp table if not exists {self._marks} ({cols},"
                        f" primary key ({self._keys_sql})) without rowid")
        self.db.execute(f"delete from temp.{self._marks}")
        self._marks_made = True

    def mark(self, keys: Iterable[Key]) -> None:
        data = [self.shape.key_values(k) for k in keys]
        if not data:
            return
        self._make_marks()
        marks = ", ".join("?" for _ in self.shape.primary_key)
        self.db.executemany(f"insert or ignore into temp.{self._marks} values ({marks})", data)

    def is_marked(self, pk: Key) -> bool:
        if not self._marks_made:
            return False
        where = " and ".join(f"{_q(c)} = ?" for c in self.shape.primary_key)
        found = self.db.execute(f"select 1 from temp.{self._marks} where {where}",
                                self.shape.key_values(pk)).fetchone()
        return found is not None

    def unmarked(self, chunk: int) -> Iterator[list[CachedRow]]:
        self._make_marks()
        match = " and ".join(f"m.{_q(c)} = t.{_q(c)}" for c in self.shape.primary_key)
        cols = ", ".join(f"t.{_q(c)}" for c in self._names)
        sql = (f"select t.rowid, {cols} from {self._table} as t where t.rowid > ? and not"
               f" exists (select 1 from temp.{self._marks} as m where {match})"
               f" order by t.rowid limit ?")
        after = -(2**63)
        while True:
            found = self.db.execute(sql, (after, chunk)).fetchall()
            if not found:
                return
            after = found[-1][0]
            yield [self._decode(values[1:]) for values in found]

    def rows(self) -> Iterator[CachedRow]:
        for values in self.db.execute(self._select).fetchall():
            yield self._decode(values)

    def __bool__(self) -> bool:
        return self.db.execute(f"select 1 from {self._table} limit 1").fetchone() is not None

    def __len__(self) -> int:
        return int(self.db.execute(f"select count(*) from {self._table}").fetchone()[0])
