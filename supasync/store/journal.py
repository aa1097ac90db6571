"""The change journal: every row change a store file applies, numbered, for resumable readers.

Contract:

* Every insert, update and delete of a row in a store table gets a **sequence number** (``seq``,
  SQLite ``AUTOINCREMENT``: strictly increasing, never reused, even after pruning), kept in
  ``_supasync_journal`` with the table, the operation (``I``/``U``/``D``), the primary key (a JSON
  array of the stored key values), the origin (``live``, ``replay``, ``snapshot``) and the commit
  time of the change when known.
* Entries are written by **SQLite triggers** on each store table, in the transaction that writes
  the row: a crash never leaves a row without its entry or an entry without its row, and every
  write path (single changes, merged pages, the snapshot's multi-row inserts, the diff repair's
  sweep) is journaled by the same few lines of SQL. A write that changes nothing (a merge of an
  identical row) writes no entry.
* The writer says what it is writing with :meth:`Journal.context` (origin, commit time); the
  triggers copy it from the one-row ``_supasync_context`` table. A first snapshot into an empty
  table is not journaled row by row: :meth:`Journal.reset` writes one ``S`` entry instead, which
  tells every reader positioned before it to read the rows again (*must refetch*).
* Retention: at most ``keep`` entries and entries no older than ``max_age`` seconds
  (:meth:`Journal.prune`, called by the writer after its transactions). The highest pruned
  ``seq`` is remembered, so :meth:`Journal.since` can tell a reader that its position is older
  than the journal keeps.

Reading (:meth:`Journal.since`) needs only a connection: readers on other threads use their own.
Sources: SQLite's trigger and AUTOINCREMENT semantics (https://sqlite.org/lang_createtrigger.html,
https://sqlite.org/autoinc.html).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "DEFAULT_KEEP",
    "DEFAULT_MAX_AGE",
    "ChangeRecord",
    "Journal",
    "JournalRead",
    "Origin",
]

Origin = Literal["live", "replay", "snapshot"]

#: Entries kept at most, and their age at most (seconds), unless the store is told otherwise.
DEFAULT_KEEP = 100_000
DEFAULT_MAX_AGE = 7 * 24 * 3600.0

# Unix time with fractions, in SQL that SQLite 3.37+ understands (unixepoch('subsec') is 3.42+).
_NOW_SQL = "((julianday('now') - 2440587.5) * 86400.0)"


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True, slots=True)
class ChangeRecord:
    """One journaled row change (``op``: ``I``, ``U``, ``D``; ``S`` marks a reset)."""

    seq: int
    table: str
    op: str
    pk: tuple[Any, ...] | None
    origin: str
    commit_timestamp: str | None
    at: float


@dataclass(frozen=True, slots=True)
class JournalRead:
    """What :meth:`Journal.since` found after a position.

    ``entries`` are in ``seq`` order. ``must_refetch`` is True when the position is older than
    what the journal keeps, or a reset (``S``) of the table lies after it: the reader must read
    the rows again (from ``seq``) instead of applying entries. ``seq`` is the journal's newest
    sequence number when read (the position to continue from once the entries are handled).
    """

    entries: tuple[ChangeRecord, ...]
    must_refetch: bool
    seq: int


class Journal:
    """The journal of one store file, used by its writer (one connection, one thread)."""

    def __init__(self, db: sqlite3.Connection, *, keep: int = DEFAULT_KEEP,
                 max_age: float | None = DEFAULT_MAX_AGE) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.db, self.keep, self.max_age = db, keep, max_age
        self._context: tuple[str, str | None, int] | None = None
        self._aged_at = time.monotonic()
        self.installed = False

    # -- set-up ----------------------------------------------------------------------
    def install(self) -> None:
        """Create the journal's tables if missing (inside the caller's transaction)."""
        self.db.execute(
            "create table if not exists _supasync_journal (seq integer primary key autoincrement,"
            " tbl text not null, op text not null, pk text, origin text not null,"
            " commit_ts text, at real not null)"
        )
        self.db.execute("create index if not exists _supasync_journal_tbl"
                        " on _supasync_journal (tbl, seq)")
        self.db.execute(
            "create table if not exists _supasync_context (id integer primary key check (id = 1),"
            " origin text not null, commit_ts text, journal integer not null)"
        )
        self.db.execute("insert or ignore into _supasync_context values (1, 'live', null, 1)")
        self.installed = True

    def install_triggers(self, table: str, primary_key: Sequence[str]) -> None:
        """(Re)create the three triggers that journal *table*'s row changes."""
        self.drop_triggers(table)
        t = _lit(table)
        for op, event, image in (("I", "insert", "new"), ("U", "update", "new"),
                                 ("D", "delete", "old")):
            key = "json_array(" + ", ".join(f"{image}.{_q(c)}" for c in primary_key) + ")"
            self.db.execute(
                f"create trigger {_q(f'_supasync_journal_{op}_{table}')} after {event} on"
                f" {_q(table)} when (select journal from _supasync_context where id = 1)"
                f" begin insert into _supasync_journal (tbl, op, pk, origin, commit_ts, at)"
                f" select {t}, '{op}', {key}, origin, commit_ts, {_NOW_SQL}"
                f" from _supasync_context where id = 1; end"
            )

    def drop_triggers(self, table: str) -> None:
        for op in "IUD":
            self.db.execute(f"drop trigger if exists {_q(f'_supasync_journal_{op}_{table}')}")

    # -- writing ---------------------------------------------------------------------
    def context(self, origin: Origin, commit_timestamp: str | None = None, *,
                journal: bool = True) -> None:
        """Say what the next writes are: their origin and commit time; ``journal=False``
        writes no entries (a first snapshot, followed by :meth:`reset`). Cheap when unchanged."""
        wanted = (origin, commit_timestamp, int(journal))
        if wanted == self._context:
            return
        self.db.execute("update _supasync_context set origin = ?, commit_ts = ?, journal = ?"
                        " where id = 1", wanted)
        self._context = wanted

    def forget_context(self) -> None:
        """The context row may differ from what was last set (a transaction rolled back): set
        it again on the next :meth:`context` call."""
        self._context = None

    def reset(self, table: str, origin: Origin = "snapshot") -> int:
        """Write an ``S`` entry: every reader positioned before it reads *table* again.
        Returns its ``seq``."""
        cur = self.db.execute(
            "insert into _supasync_journal (tbl, op, pk, origin, commit_ts, at)"
            f" values (?, 'S', null, ?, null, {_NOW_SQL})", (table, origin))
        return int(cur.lastrowid or 0)

    def prune(self, *, now: float | None = None) -> int:
        """Apply the retention (count, then age); returns how many entries went. Call after
        a write transaction (it runs in its own). Cheap: both bounds use the ``seq`` order."""
        newest = self.seq()
        cut = newest - self.keep
        if self.max_age is not None:
            limit = (time.time() if now is None else now) - self.max_age
            row = self.db.execute("select max(seq) from _supasync_journal where at < ?"
                                  " and seq > ?", (limit, max(cut, self.floor()))).fetchone()
            if row and row[0] is not None:
                cut = max(cut, int(row[0]))
        if cut <= self.floor():
            return 0
        in_tx = self.db.in_transaction
        if not in_tx:
            self.db.execute("begin immediate")
        try:
            cur = self.db.execute("delete from _supasync_journal where seq <= ?", (cut,))
            self._raise_floor(cut)
        except BaseException:
            if not in_tx:
                self.db.execute("rollback")
            raise
        if not in_tx:
            self.db.execute("commit")
        return cur.rowcount

    def maybe_prune(self) -> None:
        """:meth:`prune` when due: the count bound is exceeded by a tenth, or a minute has
        passed since the age bound was last applied. Cheap otherwise (two integer reads)."""
        if not self.installed:
            return
        now = time.monotonic()
        over = self.seq() - self.floor() > self.keep + self.keep // 10
        aged = self.max_age is not None and now - self._aged_at >= 60.0
        if over or aged:
            self._aged_at = now
            self.prune()

    def start_at(self, seq: int) -> None:
        """Number this (new) file's changes from after *seq* and count every position up to it
        as pruned: a reader's position kept from another file (a temporary file re-created by
        a restart) is then below the floor (*must refetch*) instead of silently pointing into
        this file's history. Call in a transaction on a file that has journaled nothing.
        SQLite documents that ``sqlite_sequence`` may be written (https://sqlite.org/autoinc.html)."""
        self.db.execute("delete from sqlite_sequence where name = '_supasync_journal'")
        self.db.execute("insert into sqlite_sequence (name, seq) values ('_supasync_journal', ?)",
                        (seq,))
        self._raise_floor(seq)

    def _raise_floor(self, seq: int) -> None:
        self.db.execute(
            "insert into _supasync_state values ('journal_floor', ?) on conflict(key) do update"
            " set value = max(cast(value as integer), cast(excluded.value as integer))",
            (str(seq),))

    # -- reading (any connection) ------------------------------------------------------
    def seq(self) -> int:
        return newest_seq(self.db)

    def floor(self) -> int:
        return journal_floor(self.db)

    def since(self, table: str, seq: int, *, limit: int | None = None) -> JournalRead:
        return read_since(self.db, table, seq, limit=limit)


def newest_seq(db: sqlite3.Connection) -> int:
    """The newest ``seq`` ever given (0 when none): what a read made now reflects."""
    try:
        row = db.execute(
            "select seq from sqlite_sequence where name = '_supasync_journal'").fetchone()
    except sqlite3.OperationalError:  # no AUTOINCREMENT table yet: no journal, nothing written
        return 0
    return int(row[0]) if row else 0


def journal_floor(db: sqlite3.Connection) -> int:
    """The highest ``seq`` pruned or forgotten (0 when none)."""
    row = db.execute("select value from _supasync_state where key = 'journal_floor'").fetchone()
    return int(row[0]) if row else 0


def read_since(db: sqlite3.Connection, table: str, seq: int, *,
               limit: int | None = None) -> JournalRead:
    """The entries of *table* after *seq* (at most *limit*), in one read transaction, so the
    entries, the floor and the newest ``seq`` agree. See :class:`JournalRead`."""
    if seq < 0:
        raise ValueError("a journal position is 0 or more")
    own = not db.in_transaction
    if own:
        db.execute("begin")
    try:
        newest = newest_seq(db)
        if seq > newest:
            raise ValueError(f"position {seq} is ahead of the journal (newest {newest}); it "
                             "comes from another store file")
        if seq < journal_floor(db):
            return JournalRead((), True, newest)
        sql = ("select seq, tbl, op, pk, origin, commit_ts, at from _supasync_journal"
               " where tbl = ? and seq > ? order by seq")
        params: tuple[Any, ...] = (table, seq)
        if limit is not None:
            sql += " limit ?"
            params += (limit,)
        entries = []
        for s, tbl, op, pk, origin, ts, at in db.execute(sql, params):
            if op == "S":
                return JournalRead((), True, newest)
            entries.append(ChangeRecord(s, tbl, op, None if pk is None else tuple(json.loads(pk)),
                                        origin, ts, at))
        # With a limit, the reader continues from the last entry it got, not from the newest.
        last = entries[-1].seq if limit is not None and len(entries) == limit else newest
        return JournalRead(tuple(entries), False, last)
    finally:
        if own:
            db.execute("commit")
