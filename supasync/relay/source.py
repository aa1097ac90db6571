"""The relay's side of the store file: journal batches with their rows, and saved positions.

Contract of :class:`RelaySource`:

* One SQLite connection of its own to the store file the mirror machinery writes (WAL: its reads
  never wait for the writer, nor make it wait). Its calls are made one at a time (the relay's
  publisher runs them in a worker thread, never two at once).
* :meth:`RelaySource.read_changes` reads, **in one read transaction**, the journal entries of a
  table after a position (at most *limit*) and the current rows of their keys: every entry comes
  with the row as it is in that same commit of the writer (None when the key has no row).
* Positions live in the bookkeeping table ``_supasync_relay`` of the same file, one row per
  (stream, table): the journal ``seq`` up to which every entry of the table is in the stream,
  and how many messages were acknowledged. :meth:`RelaySource.save` is called only after
  JetStream acknowledged every message up to that ``seq`` - so a crash at any point republishes
  at most what was in flight, which the stream drops as duplicates (message ids,
  :mod:`~supasync.relay.messages`).
* A table with no saved position has never been relayed into that stream: the relay starts it
  once its first snapshot is complete (:meth:`RelaySource.first_position`), at the
  position of that moment (:meth:`RelaySource.read_all` gives the rows and the ``seq`` they
  reflect, for ``--snapshot``).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import CacheError
from ..store.journal import ChangeRecord, newest_seq, read_since
from ..store.values import Converter, canonical_type, decoder
from .messages import normalise_commit_time, op_class

__all__ = ["LOOKBACK", "Batch", "Entry", "RelaySource", "TableInfo"]

Mark = tuple[Any, str, str | None]

#: Journal entries looked back at to number changes of one key within one commit millisecond
#: (they are adjacent in the journal: a thousand entries is far more than one millisecond holds).
LOOKBACK = 1000


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class TableInfo:
    """A store table as the relay needs it: names, columns (canonical types), key columns."""

    name: str
    schema: str
    table: str
    columns: tuple[tuple[str, str], ...]
    primary_key: tuple[str, ...]

    def decoders(self) -> dict[str, Converter | None]:
        return {c: decoder(t) for c, t in self.columns}

    def decode(self, names: Sequence[str], values: Sequence[Any],
               decs: dict[str, Converter | None]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, v in zip(names, values, strict=True):
            out[name] = _decoded(decs.get(name), v)
        return out


@dataclass(frozen=True, slots=True)
class Entry:
    """A journal entry with the row of its key as read in the same transaction."""

    change: ChangeRecord
    row: dict[str, Any] | None
    decoded_key: tuple[Any, ...]
    #: earlier journal entries of the same key, operation class and commit millisecond
    occurrence: int = 0


@dataclass(frozen=True)
class Batch:
    """What :meth:`RelaySource.read_changes` found: entries (in ``seq`` order) and the position
    to save once they are in the stream (``seq``); ``must_refetch`` as in
    :class:`~supasync.store.journal.JournalRead` (then ``entries`` is empty), the journal's
    newest ``seq``, and the table's shape (None: the table is not in the file yet)."""

    entries: tuple[Entry, ...]
    must_refetch: bool
    seq: int
    newest: int
    info: TableInfo | None


def _decoded(dec: Converter | None, value: Any) -> Any:
    return dec(value) if dec is not None and value is not None else value


class RelaySource:
    """Read journal batches and rows from a store file; keep the relay's positions in it.

    Raises:
        CacheError: the file cannot be opened or is not a supasync store.
    """

    def __init__(self, path: Path, stream: str) -> None:
        self.path, self.stream = path, stream
        try:
            # Two connections: reads (journal batches, rows) and position writes run in
            # different threads at once - the next batch is read while the acks of the current
            # one are awaited and its position saved.
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                      timeout=30.0)
            self.db.execute("pragma busy_timeout = 30000")
            self.wdb = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                       timeout=30.0)
            self.wdb.execute("pragma busy_timeout = 30000")
            # WAL + NORMAL: a position survives a crash of the process; an OS crash may lose
            # the last ones, which only means publishing again what the stream then drops.
            self.wdb.execute("pragma synchronous = normal")
            self.wdb.execute(
                "create table if not exists _supasync_relay (stream text not null, tbl text not"
                " null, seq integer not null, published integer not null default 0,"
                " at real not null, primary key (stream, tbl))")
        except sqlite3.Error as exc:
            raise CacheError(f"cannot use the relay's store file {path}: {exc}") from exc
        self._infos: dict[str, TableInfo] = {}
        # Per table: the seq the last batch ended at, and the (key, class, millisecond) marks
        # of the entries before it (the occurrence numbering continues without a look back).
        self._recent_marks: dict[str, tuple[int, deque[Mark], Counter[Mark]]] = {}

    def close(self) -> None:
        self.db.close()
        self.wdb.close()

    # -- tables -------------------------------------------------------------------------
    def info(self, name: str) -> TableInfo | None:
        """The table's shape as the mirror recorded it (None: not created yet). Read on every
        call: the mirror adapts a table whose upstream shape changed."""
        row = self.db.execute("select schema, tbl, shape from _supasync_tables where name = ?",
                              (name,)).fetchone()
        if row is None:
            return None
        shape = json.loads(row[2])
        info = TableInfo(name, row[0], row[1],
                         tuple((c, canonical_type(t)) for c, t in shape["columns"]),
                         tuple(shape["primary_key"]))
        self._infos[name] = info
        return info

    def first_position(self, name: str) -> int | None:
        """For a table never relayed: the journal's newest ``seq`` once the table's first
        snapshot is complete (read together), else None (wait)."""
        self.db.execute("begin")
        try:
            row = self.db.execute("select snapshot_complete from _supasync_tables where"
                                  " name = ?", (name,)).fetchone()
            return newest_seq(self.db) if row and row[0] else None
        finally:
            self.db.execute("commit")

    # -- positions ----------------------------------------------------------------------
    def position(self, name: str) -> tuple[int, int] | None:
        """``(seq, published)`` saved for the table in this stream, or None (never relayed)."""
        row = self.wdb.execute("select seq, published from _supasync_relay where stream = ?"
                               " and tbl = ?", (self.stream, name)).fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    def save(self, name: str, seq: int, published: int) -> None:
        """Everything of the table up to *seq* is in the stream (call after the acks)."""
        self.wdb.execute(
            "insert into _supasync_relay (stream, tbl, seq, published, at) values (?, ?, ?, ?, ?)"
            " on conflict (stream, tbl) do update set seq = excluded.seq,"
            " published = _supasync_relay.published + excluded.published, at = excluded.at",
            (self.stream, name, seq, published, time.time()))

    def newest(self) -> int:
        return newest_seq(self.db)

    def backlog(self, name: str, after: int) -> tuple[int, float | None]:
        """How many entries of the table lie after *after*, and the journal time of the oldest
        (None when there is none)."""
        row = self.db.execute("select count(*), min(at) from _supasync_journal where tbl = ?"
                              " and seq > ? and op != 'S'", (name, after)).fetchone()
        return int(row[0]), (None if row[1] is None else float(row[1]))

    # -- reads --------------------------------------------------------------------------
    def read_changes(self, name: str, after: int, limit: int) -> Batch:
        """Up to *limit* entries of table *name* after *after*, each with its key's current
        row, and the table's shape, in one read transaction."""
        self.db.execute("begin")
        try:
            info = self.info(name)
            if info is None:
                return Batch((), False, after, newest_seq(self.db), None)
            read = read_since(self.db, info.name, after, limit=limit)
            if read.must_refetch or not read.entries:
                return Batch((), read.must_refetch, read.seq, newest_seq(self.db), info)
            seen = self._marks(info.name, after)
            keys = {c.pk for c in read.entries if c.pk is not None}
            rows = self._rows_by_key(info, keys)
            decs = info.decoders()
            entries = []
            for c in read.entries:
                key = c.pk or ()
                row = rows.get(key)
                if row is not None:
                    decoded = tuple(row[k] for k in info.primary_key)
                else:
                    decoded = tuple(_decoded(decs.get(k), v)
                                    for k, v in zip(info.primary_key, key, strict=False))
                occurrence = 0
                if c.commit_timestamp is not None:
                    mark = (c.pk, op_class(c.op), normalise_commit_time(c.commit_timestamp))
                    occurrence = seen[1][mark]
                    seen[1][mark] += 1
                    seen[0].append(mark)
                    if len(seen[0]) > LOOKBACK:
                        old = seen[0].popleft()
                        seen[1][old] -= 1
                        if not seen[1][old]:
                            del seen[1][old]
                entries.append(Entry(c, None if c.op == "D" else row, decoded, occurrence))
            self._recent_marks[info.name] = (read.seq, *seen)
            return Batch(tuple(entries), False, read.seq, newest_seq(self.db), info)
        finally:
            self.db.execute("commit")

    def _marks(self, name: str, after: int) -> tuple[deque[Mark], Counter[Mark]]:
        """(key, operation class, commit millisecond) of the table's last :data:`LOOKBACK`
        entries up to *after* (oldest first, and counted): what an entry's occurrence counts
        from. Kept from the previous batch when it ended at *after*; else read back."""
        kept = self._recent_marks.get(name)
        if kept is not None and kept[0] == after:
            return kept[1], kept[2]
        marks: deque[Mark] = deque()
        for pk, op, ts in self.db.execute(
                "select pk, op, commit_ts from _supasync_journal where tbl = ? and seq <= ? and"
                " commit_ts is not null and op != 'S' order by seq desc limit ?",
                (name, after, LOOKBACK)):
            key = None if pk is None else tuple(json.loads(pk))
            marks.appendleft((key, op_class(op), normalise_commit_time(ts)))
        return marks, Counter(marks)

    def _rows_by_key(self, info: TableInfo, keys: Iterable[tuple[Any, ...]]
                     ) -> dict[tuple[Any, ...], dict[str, Any]]:
        wanted = [k for k in keys if len(k) == len(info.primary_key)]
        out: dict[tuple[Any, ...], dict[str, Any]] = {}
        if not wanted:
            return out
        decs = info.decoders()
        pk = info.primary_key
        # Chunks keep the statement under SQLite's parameter limit (32766 since 3.32).
        step = max(1, 900 // len(pk))
        for i in range(0, len(wanted), step):
            chunk = wanted[i:i + step]
            if len(pk) == 1:
                where = f"{_q(pk[0])} in ({', '.join('?' for _ in chunk)})"
                params: list[Any] = [k[0] for k in chunk]
            else:
                one = "(" + ", ".join("?" for _ in pk) + ")"
                where = (f"({', '.join(_q(c) for c in pk)}) in (values "
                         + ", ".join([one] * len(chunk)) + ")")
                params = [v for k in chunk for v in k]
            cur = self.db.execute(f"select * from {_q(info.name)} where {where}", params)
            names = [d[0] for d in cur.description]
            index = [names.index(c) for c in pk]
            for raw in cur.fetchall():
                out[tuple(raw[j] for j in index)] = info.decode(names, raw, decs)
        return out

    def read_all(self, name: str) -> tuple[TableInfo, list[tuple[tuple[Any, ...], dict[str, Any]]],
                                            int]:
        """The table's shape, every row as ``(stored key, decoded row)`` in key order, and the
        journal ``seq`` they reflect (one read transaction). Holds the table in memory."""
        self.db.execute("begin")
        try:
            info = self.info(name)
            if info is None:
                raise CacheError(f"{self.path} has no table {name!r}")
            seq = newest_seq(self.db)
            decs = info.decoders()
            order = ", ".join(_q(c) for c in info.primary_key)
            cur = self.db.execute(f"select * from {_q(info.name)} order by {order}")
            names = [d[0] for d in cur.description]
            index = [names.index(c) for c in info.primary_key]
            rows = [(tuple(raw[j] for j in index), info.decode(names, raw, decs))
                    for raw in cur.fetchall()]
            return info, rows, seq
        finally:
            self.db.execute("commit")
