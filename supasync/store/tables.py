"""The SQLite file a mirror writes: one typed table per mirrored table, plus bookkeeping.

Contract:

* One SQLite table per mirrored table, named after it (``todos``, or ``schema_table`` outside
  ``public``), with the same column names, SQLite types chosen from the PostgreSQL type
  (:func:`sqlite_type`), and the same primary key.
* Values are stored as PostgREST/Realtime render them (PostgreSQL's JSON of the typed value),
  converted per column type (:func:`converter`): booleans become 0/1, json/jsonb, arrays and
  composite values compact JSON text, ``timestamptz`` ISO 8601 text in UTC, bytea bare hex.
  Types are compared in one spelling (:func:`canonical_type`), so PostgREST's ``bigint`` and
  Realtime's ``int8`` are the same column type.
* supasync's own state lives in tables prefixed ``_supasync_``: the mirrored tables with their
  column lists and primary keys (``_supasync_tables``), a key/value store for cursors
  (``_supasync_state``) and the change journal (``_supasync_journal``, written by triggers:
  :mod:`supasync.store.journal`). Every write says its origin (live, replay, snapshot); a first
  snapshot into an empty table is journaled as one reset entry, not row by row.
* :meth:`MirrorStore.apply` writes a batch of changes in one transaction, so a crash never
  leaves half a batch. Opening an existing file resumes; a file that is not SQLite, or a
  SQLite file that is not a supasync mirror but has tables of the same names, is refused
  with :class:`~supasync.core.errors.CacheError` before anything is written.
* Schema changes: :func:`compare_shapes` decides (pure); :meth:`MirrorStore.ensure_table` adds
  and drops columns in place; a changed column type, or a changed primary key, empties the
  table and clears its cursor (``"resnapshot"``) so the caller re-snapshots it.
* Diff repairs never hold keys in memory: :meth:`MirrorStore.begin_sweep`, :meth:`~MirrorStore.mark`
  and :meth:`~MirrorStore.sweep` keep the keys seen upstream in a temporary SQLite table.
* Snapshot pages arrive undecoded: :meth:`MirrorStore.write_page` decodes a PostgREST page
  straight into stored tuples (:func:`~supasync.store.values.page_decoder`) and stores exactly
  what :meth:`~MirrorStore.upsert_rows` / :meth:`~MirrorStore.merge_rows` store for the same
  rows; a page the fast path cannot take goes through those instead.
"""

from __future__ import annotations

import json
import json.encoder
import os
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..core.changes import Change
from ..core.errors import CacheError
from . import commits
from .journal import DEFAULT_KEEP, DEFAULT_MAX_AGE, Journal, JournalRead, Origin
from .values import (
    Converter,
    DecodedPage,
    PageDecodeError,
    PageDecoder,
    canonical_type,
    converter,
    page_decoder,
    row_function,
    sqlite_type,
    to_sqlite,
)

__all__ = [
    "MirrorStore",
    "PageWrite",
    "SchemaAction",
    "SchemaChange",
    "TableShape",
    "canonical_type",
    "compare_shapes",
    "converter",
    "mirror_table_name",
    "sqlite_type",
    "to_sqlite",
]

SchemaAction = Literal["created", "unchanged", "altered", "resnapshot"]


def mirror_table_name(schema: str, table: str) -> str:
    """``todos`` for ``public.todos``, ``sales_orders`` for ``sales.orders``."""
    return table if schema == "public" else f"{schema}_{table}"


def _q(name: str) -> str:
    """Quote an SQLite identifier."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class TableShape:
    """What a mirrored table looks like: ordered (column, PostgreSQL type) and the key.

    Types are stored canonical (:func:`canonical_type`), so a shape read from PostgREST's
    OpenAPI root (``bigint``) equals one built from a live change's columns (``int8``).
    """

    schema: str
    table: str
    columns: tuple[tuple[str, str], ...]
    primary_key: tuple[str, ...]
    #: The local table's name when it is not the mirror's default (:func:`mirror_table_name`):
    #: a cached subscription that shares its table with another (``todos__open``).
    local: str | None = None
    _row: Callable[[Mapping[str, Any]], tuple[Any, ...]] | None = field(
        default=None, compare=False, repr=False
    )
    _key_convs: tuple[Converter | None, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        cols = tuple((str(c), canonical_type(str(t))) for c, t in self.columns)
        object.__setattr__(self, "columns", cols)
        object.__setattr__(self, "primary_key", tuple(self.primary_key))
        object.__setattr__(self, "_row", row_function(cols))
        types = dict(cols)
        object.__setattr__(self, "_key_convs", tuple(
            converter(types.get(c, "text")) for c in self.primary_key))

    @property
    def name(self) -> str:
        return self.local or mirror_table_name(self.schema, self.table)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c for c, _ in self.columns)

    def to_json(self) -> str:
        return json.dumps({"columns": self.columns, "primary_key": self.primary_key})

    def row_values(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        """The row's values in column order, converted the mirror's way (missing: NULL)."""
        assert self._row is not None
        return self._row(row)

    def key_values(self, pk: Sequence[Any]) -> tuple[Any, ...]:
        """A primary-key tuple converted the mirror's way."""
        convs = self._key_convs
        if not any(convs):
            return tuple(pk)
        return tuple(
            f(v) if f is not None else v for f, v in zip(convs, pk, strict=True)
        )


@dataclass(frozen=True)
class SchemaChange:
    """What :func:`compare_shapes` found: the action and the columns concerned."""

    action: SchemaAction
    added: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    retyped: tuple[tuple[str, str, str], ...] = ()  # (column, old type, new type)
    key_changed: bool = False

    def describe(self) -> str:
        """One human sentence (for logs and the status line)."""
        parts = []
        if self.added:
            parts.append("added " + ", ".join(self.added))
        if self.dropped:
            parts.append("dropped " + ", ".join(self.dropped))
        for col, old, new in self.retyped:
            parts.append(f"{col} changed type {old} -> {new}")
        if self.key_changed:
            parts.append("primary key changed")
        return "; ".join(parts) or self.action


def compare_shapes(old: TableShape | None, new: TableShape) -> SchemaChange:
    """Decide what a schema change means for the local table (pure).

    No old shape: ``created``. Same columns and key: ``unchanged``. Columns only added or
    dropped: ``altered`` (done in place, rows kept). A column whose type changed, or a changed
    primary key: ``resnapshot`` (the table is rebuilt and read again).
    """
    if old is None:
        return SchemaChange("created", added=new.column_names)
    old_types, new_types = dict(old.columns), dict(new.columns)
    added = tuple(c for c in new_types if c not in old_types)
    dropped = tuple(c for c in old_types if c not in new_types)
    retyped = tuple(
        (c, old_types[c], new_types[c])
        for c in new_types
        if c in old_types and old_types[c] != new_types[c]
    )
    key_changed = old.primary_key != new.primary_key
    if retyped or key_changed:
        return SchemaChange("resnapshot", added, dropped, retyped, key_changed)
    if added or dropped:
        return SchemaChange("altered", added, dropped)
    if old.columns != new.columns:
        return SchemaChange("altered")  # same columns, another order: keep the new order
    return SchemaChange("unchanged")


@dataclass(frozen=True)
class PageWrite:
    """What :meth:`MirrorStore.write_page` did with one page."""

    rows: int  # rows in the page
    written: int  # rows inserted or changed
    values: list[Any]  # the asked column's values as PostgREST sent them (else empty)


class MirrorStore:
    """A mirror file. Not thread-safe: use it from one thread (the worker's).

    Raises:
        CacheError: the path is a directory, cannot be created or written, is not SQLite, or
            is an SQLite file supasync did not create. Nothing is written in any of these cases.
    """

    MAGIC = "supasync-mirror-1"
    #: SQLite page size of a new mirror file (an existing file keeps its own).
    PAGE_SIZE = 16384
    #: The writer connection's page cache, in KiB (SQLite's own default, ``cache_size=-2000``):
    #: a long-running process's memory stays bounded by this, whatever the file's size.
    CACHE_KIB = 2000
    #: The page cache while a first snapshot is written (:meth:`begin_snapshot` to
    #: :meth:`end_snapshot`): a 200,000-row read-model snapshot took ~6.8 s with 2 MB against
    #: ~5 s with this (bench/cache_store.py, same box), the size the snapshot figures were
    #: measured with before the bound above was fixed.
    SNAPSHOT_CACHE_KIB = 8000

    def __init__(self, path: str | Path, *, journal_keep: int = DEFAULT_KEEP,
                 journal_max_age: float | None = DEFAULT_MAX_AGE, option: str = "--db") -> None:
        # *option*: how the user names this file, for the fixes error messages suggest.
        self.path = Path(path)
        self._commit_key = os.path.realpath(self.path)
        if self.path.exists() and self.path.is_dir():
            raise CacheError(f"{self.path} is a directory; give a file path ({option} "
                             "store.sqlite).")
        parent = self.path.parent if str(self.path.parent) else Path(".")
        if not self.path.exists():
            if not parent.is_dir():
                raise CacheError(f"cannot create {self.path}: the directory {parent} does not "
                                 f"exist. Fix: create it or choose another {option} path.")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise CacheError(f"cannot create {self.path}: the directory {parent} is not "
                                 f"writable. Fix: choose a writable {option} path.")
        elif not os.access(self.path, os.R_OK | os.W_OK):
            raise CacheError(f"cannot write {self.path}: permission denied. Fix: make it "
                             f"writable or choose another {option} path.")
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error as exc:
            raise CacheError(f"cannot open {self.path}: {exc}. Fix: choose a writable path.") \
                from exc
        self.journal = Journal(self.db, keep=journal_keep, max_age=journal_max_age)
        try:
            self._check_and_init(option)  # before any pragma: a foreign file must stay untouched
            # Set again now that the file's page size is final. SQLite sizes a connection's
            # page cache in pages, computed from ``cache_size`` (KiB) and the page size *before*
            # a change of page size (pcache.c, sqlite3PcacheSetPageSize calls
            # numberOfCachePages() before it stores the new szPage): a new file switched from
            # 4 KiB to 16 KiB pages got a cache of ~500 pages, 8 MB instead of 2 MB, which a
            # long run filled a page at a time as the journal grew (issue #17's soak: RSS
            # +6-7 MB/hour for more than an hour, bench/rss_probe.py).
            self.db.execute(f"pragma cache_size=-{self.CACHE_KIB}")
            self.db.execute("pragma journal_mode=wal")
            # Another connection of this process may write the file too (a channel's durable
            # outbox, store/outbox.py): wait for it rather than fail.
            self.db.execute("pragma busy_timeout=5000")
            self.db.execute("pragma synchronous=normal")
            self.db.execute("pragma temp_store=memory")
            self._install_journal()
        except sqlite3.DatabaseError as exc:
            self.db.close()
            raise CacheError(
                f"{self.path} is not a usable SQLite database ({exc}). Fix: point {option} at "
                "a new file or at an existing supasync store file; nothing was written."
            ) from exc
        except CacheError:
            self.db.close()
            raise
        try:
            self._lock_fd = _lock_writer(self.path, option)
        except CacheError:
            self.db.close()
            raise
        self._sql: dict[tuple[str, TableShape], str] = {}
        self._snapshots: set[str] = set()  # tables between begin_snapshot and end_snapshot
        self._decoders: dict[TableShape, PageDecoder] = {}
        #: Pages :meth:`write_page` wrote through the fast path, and through the reference one.
        self.pages_fast = 0
        self.pages_reference = 0
        # The page fast path was built and tested against SQLite with JSON1 (built in since
        # 3.38, an option before); without it every page takes the reference path.
        try:
            self.db.execute("select json('[1]')").fetchone()
            self._json1 = True
        except sqlite3.OperationalError:
            self._json1 = False

    # -- set-up ----------------------------------------------------------------------
    def _check_and_init(self, option: str) -> None:
        tables = {
            r[0] for r in self.db.execute("select name from sqlite_master where type='table'")
        }
        # Tables of supasync's own (``_supasync_*``: e.g. a channel's durable outbox, which
        # may be made before the first cached subscription) do not make a file foreign.
        foreign = {t for t in tables if not t.startswith("_supasync_")}
        if foreign and "_supasync_state" not in tables:
            raise CacheError(
                f"{self.path} is an SQLite file that supasync did not create (tables: "
                f"{', '.join(sorted(foreign)[:5])}). Fix: give {option} a new file; "
                "supasync will not write into a foreign database."
            )
        if "_supasync_state" in tables:
            row = self.db.execute("select value from _supasync_state where key='magic'").fetchone()
            if row is None or row[0] != self.MAGIC:
                raise CacheError(f"{self.path} has an unknown supasync format; use a new file.")
            return
        # A new file: 16 KiB pages (SQLite's default is 4 KiB) make a snapshot's bulk INSERTs
        # about a tenth cheaper in CPU (fewer B-tree pages to fill and split); measured in
        # bench/README.md. Settable only before the first table (and before WAL mode).
        self.db.execute(f"pragma page_size={self.PAGE_SIZE}")
        with self.transaction():
            self.db.execute("create table _supasync_state (key text primary key, value text)")
            self.db.execute(
                "create table _supasync_tables (name text primary key, schema text not null,"
                " tbl text not null, shape text not null, snapshot_complete integer not null"
                " default 0)"
            )
            self.db.execute("insert into _supasync_state values ('magic', ?)", (self.MAGIC,))

    def _install_journal(self) -> None:
        """The journal's tables, and its triggers on every table (files written before the
        journal existed get them here, once; opening reads nothing proportional to a table)."""
        with self.transaction():
            self.journal.install()
            triggers = {r[0] for r in self.db.execute(
                "select name from sqlite_master where type = 'trigger'")}
            for shape in self.tables():
                if f"_supasync_journal_I_{shape.name}" not in triggers:
                    self.journal.install_triggers(shape.name, shape.primary_key)

    def transaction(self) -> _Tx:
        """``with store.transaction():`` one SQLite transaction (nested blocks join it). After
        the outermost commits, the journal's retention is applied when due."""
        return _Tx(self.db, self._after_commit, self.journal.forget_context)

    def _after_commit(self) -> None:
        self.journal.maybe_prune()
        commits.committed(self._commit_key)  # readers in this process look at once

    # -- journal ---------------------------------------------------------------------
    def seq(self) -> int:
        """The journal's newest sequence number."""
        return self.journal.seq()

    def changes_since(self, shape: TableShape, seq: int, *,
                      limit: int | None = None) -> JournalRead:
        """The journal entries of *shape*'s table after *seq*
        (:meth:`~supasync.store.journal.Journal.since`)."""
        return self.journal.since(shape.name, seq, limit=limit)

    def begin_snapshot(self, shape: TableShape) -> None:
        """A first snapshot into the (empty) table starts: one reset entry in the journal
        instead of one entry per row (readers positioned before it read the rows again).

        The table's journal triggers are dropped until :meth:`end_snapshot`: even when they
        journal nothing, SQLite runs them for every inserted row (about a third of a snapshot's
        write time, measured). A process that dies before ``end_snapshot`` gets them back when
        the file is next opened (:meth:`_install_journal`).

        The page cache is :attr:`SNAPSHOT_CACHE_KIB` until the last snapshot under way ends."""
        with self.transaction():
            self.journal.reset(shape.name)
            self.journal.drop_triggers(shape.name)
        self._snapshots.add(shape.name)
        self.db.execute(f"pragma cache_size=-{self.SNAPSHOT_CACHE_KIB}")

    def end_snapshot(self, shape: TableShape) -> None:
        """The snapshot is over (done or not): the table is journaled again; the page cache
        is back to :attr:`CACHE_KIB` once no other snapshot is under way (SQLite frees the
        pages above it)."""
        with self.transaction():
            self.journal.install_triggers(shape.name, shape.primary_key)
        self._snapshots.discard(shape.name)
        if not self._snapshots:
            self.db.execute(f"pragma cache_size=-{self.CACHE_KIB}")

    def close(self) -> None:
        self.db.close()
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # releases the writer's lock

    # -- state -----------------------------------------------------------------------
    def get_state(self, key: str) -> str | None:
        row = self.db.execute("select value from _supasync_state where key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_state(self, key: str, value: str) -> None:
        self.db.execute("insert into _supasync_state values (?, ?) on conflict(key) do update"
                        " set value=excluded.value", (key, value))

    def get_cursor(self, schema: str, table: str) -> dict[str, Any] | None:
        """The repair cursor stored for a table (None: no complete snapshot yet)."""
        text = self.get_state("cursor:" + mirror_table_name(schema, table))
        if text is None:
            return None
        try:
            data = json.loads(text)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def set_cursor(self, schema: str, table: str, cursor: Mapping[str, Any] | None) -> None:
        """Store (or with None, forget) a table's repair cursor; call inside the transaction
        that writes the rows it describes."""
        key = "cursor:" + mirror_table_name(schema, table)
        if cursor is None:
            self.db.execute("delete from _supasync_state where key=?", (key,))
        else:
            self.set_state(key, json.dumps(dict(cursor), default=str))

    def tables(self) -> list[TableShape]:
        """Every mirrored table's shape."""
        out = []
        for (name,) in self.db.execute("select name from _supasync_tables").fetchall():
            shape = self.shape_named(name)
            if shape is not None:
                out.append(shape)
        return out

    def shape(self, schema: str, table: str) -> TableShape | None:
        """The shape of the table mirrored under its default name."""
        return self.shape_named(mirror_table_name(schema, table))

    def shape_named(self, name: str) -> TableShape | None:
        """The shape of the local table *name* (None: no such table in the file)."""
        row = self.db.execute("select schema, tbl, shape from _supasync_tables where name=?",
                              (name,)).fetchone()
        if row is None:
            return None
        schema, table, text = row
        data = json.loads(text)
        local = None if name == mirror_table_name(schema, table) else name
        return TableShape(schema, table, tuple((c, t) for c, t in data["columns"]),
                          tuple(data["primary_key"]), local)

    def snapshot_complete(self, schema: str, table: str) -> bool:
        row = self.db.execute("select snapshot_complete from _supasync_tables where name=?",
                              (mirror_table_name(schema, table),)).fetchone()
        return bool(row and row[0])

    def mark_snapshot_complete(self, schema: str, table: str, complete: bool = True) -> None:
        self.db.execute("update _supasync_tables set snapshot_complete=? where name=?",
                        (int(complete), mirror_table_name(schema, table)))

    # -- schema ----------------------------------------------------------------------
    def check_table(self, shape: TableShape) -> None:
        """Refuse, before anything is written, a shape this file cannot hold.

        Raises:
            CacheError: no primary key, or a table of that name that is not a mirror table.
        """
        if not shape.primary_key:
            raise CacheError(f"{shape.schema}.{shape.table} has no primary key; a mirror needs one "
                             "to apply updates and deletes. Fix: add a primary key upstream.")
        if self.shape_named(shape.name) is None:
            existing = self.db.execute(
                "select 1 from sqlite_master where type='table' and name=?", (shape.name,)
            ).fetchone()
            if existing:
                raise CacheError(f"table {shape.name!r} exists in {self.path} but is not a mirror "
                                 "table; use a new file.")

    def ensure_table(self, shape: TableShape) -> SchemaAction:
        """Create or adapt the table for ``shape``; see the module docstring and
        :func:`compare_shapes`. A ``resnapshot`` empties the table and clears its cursor and
        its snapshot flag."""
        self.check_table(shape)
        old = self.shape_named(shape.name)
        change = compare_shapes(old, shape)
        name = shape.name
        with self.transaction():
            if change.action == "created":
                self._create(shape)
            elif change.action == "resnapshot":
                self.db.execute(f"drop table {_q(name)}")
                self._create(shape)
                self.journal.reset(name)
                self.db.execute("update _supasync_tables set snapshot_complete=0 where name=?",
                                (name,))
                self.set_cursor(shape.schema, shape.table, None)
            elif change.action == "altered":
                for col, typ in shape.columns:
                    if col in change.added:
                        self.db.execute(
                            f"alter table {_q(name)} add column {_q(col)} {sqlite_type(typ)}"
                        )
                for col in change.dropped:
                    self.db.execute(f"alter table {_q(name)} drop column {_q(col)}")
                self.db.execute("update _supasync_tables set shape=? where name=?",
                                (shape.to_json(), name))
        self._sql.clear()
        self._decoders.clear()
        return change.action

    def _create(self, shape: TableShape) -> None:
        if not shape.primary_key:
            raise CacheError(f"{shape.schema}.{shape.table} has no primary key; a mirror needs one "
                             "to apply updates and deletes. Fix: add a primary key upstream.")
        cols = ", ".join(f"{_q(c)} {sqlite_type(t)}" for c, t in shape.columns)
        pk = ", ".join(_q(c) for c in shape.primary_key)
        self.db.execute(f"create table {_q(shape.name)} ({cols}, primary key ({pk}))")
        self.journal.install_triggers(shape.name, shape.primary_key)
        self.db.execute(
            "insert into _supasync_tables (name, schema, tbl, shape) values (?, ?, ?, ?)"
            " on conflict(name) do update set shape=excluded.shape",
            (shape.name, shape.schema, shape.table, shape.to_json()),
        )

    # -- data ------------------------------------------------------------------------
    def _statement(self, kind: str, shape: TableShape) -> str:
        key = (kind, shape)
        found = self._sql.get(key)
        if found is not None:
            return found
        cols = shape.column_names
        names = ", ".join(_q(c) for c in cols)
        marks = ", ".join("?" for _ in cols)
        if kind == "replace_block":  # _block_rows rows of the page fast path
            one = "(" + ", ".join(self._decoder(shape).params) + ")"
            sql = (f"insert or replace into {_q(shape.name)} ({names}) values "
                   + ", ".join([one] * self._block_rows(shape)))
            self._sql[key] = sql
            return sql
        if kind.endswith("_page"):  # the page fast path: PageDecoder.params per column
            params = self._decoder(shape).params
            marks = ", ".join(params)
            kind = kind[: -len("_page")]
            if kind == "mark":
                index = {c: i for i, c in enumerate(cols)}
                keys = ", ".join(params[index[c]] for c in shape.primary_key)
                sql = f"insert or ignore into temp.{self._seen(shape)} values ({keys})"
                self._sql[key] = sql
                return sql
        where = " and ".join(f"{_q(c)} = ?" for c in shape.primary_key)
        if kind == "replace":
            sql = f"insert or replace into {_q(shape.name)} ({names}) values ({marks})"
        elif kind == "put":
            # An upsert, not INSERT OR REPLACE: an existing row is updated (the journal's
            # UPDATE trigger fires), where REPLACE deletes it silently and inserts anew. A row
            # written again unchanged (a live change the repair already applied) is left
            # alone, so the journal - and whatever follows it, the relay, a browser stream -
            # gets no entry for a change that changed nothing.
            others = [c for c in cols if c not in shape.primary_key]
            target = ", ".join(_q(c) for c in shape.primary_key)
            sets = ", ".join(f"{_q(c)} = excluded.{_q(c)}" for c in others)
            differs = " or ".join(f"{_q(c)} is not excluded.{_q(c)}" for c in others)
            sql = (f"insert into {_q(shape.name)} ({names}) values ({marks}) on conflict"
                   f" ({target}) do " + (f"update set {sets} where {differs}" if others
                                         else "nothing"))
        elif kind == "upsert":
            others = [c for c in cols if c not in shape.primary_key]
            target = ", ".join(_q(c) for c in shape.primary_key)
            if others:
                sets = ", ".join(f"{_q(c)} = excluded.{_q(c)}" for c in others)
                differs = " or ".join(f"{_q(c)} is not excluded.{_q(c)}" for c in others)
                sql = (f"insert into {_q(shape.name)} ({names}) values ({marks}) on conflict"
                       f" ({target}) do update set {sets} where {differs}")
            else:
                sql = (f"insert into {_q(shape.name)} ({names}) values ({marks}) on conflict"
                       f" ({target}) do nothing")
        elif kind == "delete":
            sql = f"delete from {_q(shape.name)} where {where}"
        else:
            raise ValueError(kind)
        self._sql[key] = sql
        return sql

    def upsert_rows(self, shape: TableShape, rows: Iterable[Mapping[str, Any]]) -> int:
        """Insert or replace rows into an empty table: a first snapshot's page (inside the
        caller's transaction or autocommit; not journaled row by row, see
        :meth:`begin_snapshot`)."""
        self.journal.context("snapshot", journal=False)
        data = [shape.row_values(r) for r in rows]
        self.db.executemany(self._statement("replace", shape), data)
        return len(data)

    def merge_rows(self, shape: TableShape, rows: Iterable[Mapping[str, Any]]) -> int:
        """Insert new rows and update rows that differ; returns how many were written (rows
        already identical are not rewritten and not counted). Journaled as replayed changes."""
        self.journal.context("replay")
        cur = self.db.executemany(self._statement("upsert", shape),
                                  [shape.row_values(r) for r in rows])
        return cur.rowcount

    def _block_rows(self, shape: TableShape) -> int:
        """Rows per multi-row INSERT: up to 200, within SQLite's limit on parameters."""
        limit = self.db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        return max(1, min(200, limit // max(1, len(shape.columns))))

    def _decoder(self, shape: TableShape) -> PageDecoder:
        found = self._decoders.get(shape)
        if found is None:
            found = self._decoders[shape] = page_decoder(shape.columns)
        return found

    def write_page(self, shape: TableShape, body: bytes, *, merge: bool = False,
                   mark: bool = False, column: str | None = None) -> PageWrite:
        """Write one PostgREST page (the JSON array of row objects, undecoded), inside the
        caller's transaction.

        ``merge=False`` inserts or replaces (:meth:`upsert_rows`: the first snapshot into an
        empty table); ``merge=True`` merges (:meth:`merge_rows`: identical rows are not
        rewritten nor counted). ``mark=True`` also marks the keys for :meth:`sweep` (call
        :meth:`begin_sweep` first). The stored values are exactly those of
        ``upsert_rows``/``merge_rows`` on ``json.loads(body)``: a page the fast path cannot
        take (see :class:`~supasync.store.values.PageDecodeError`, or a value SQLite refuses)
        is written by them instead. *column*'s values, as sent, come back in
        :attr:`PageWrite.values` (a cursor-mode read takes the greatest).

        Raises:
            ValueError: the body is not a JSON array of objects.
        """
        if merge:
            self.journal.context("replay")
        else:
            self.journal.context("snapshot", journal=False)
        page: DecodedPage | None = None
        if self._json1:
            try:
                page = self._decoder(shape).decode(body)
            except PageDecodeError:
                page = None
        if page is not None:
            self.db.execute("savepoint supasync_page")
            try:
                written = self._write_decoded(shape, page, merge)
                if mark:
                    index = {c: i for i, c in enumerate(shape.column_names)}
                    keys = [index[c] for c in shape.primary_key]
                    self.db.executemany(self._statement("mark_page", shape),
                                        [tuple(r[i] for i in keys) for r in page.rows])
            except (sqlite3.Error, OverflowError):
                # SQLite refused a value, an integer beyond 64 bits...: undo the page and let
                # the reference path store it (or raise what it raises).
                self.db.execute("rollback to supasync_page")
                self.db.execute("release supasync_page")
            else:
                self.db.execute("release supasync_page")
                self.pages_fast += 1
                return PageWrite(page.count, written, page.values(column) if column else [])
        self.pages_reference += 1
        rows = json.loads(body)
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ValueError("the page is not a JSON array of row objects")
        written = self.merge_rows(shape, rows) if merge else self.upsert_rows(shape, rows)
        if mark:
            self.mark(shape, [[r[c] for c in shape.primary_key] for r in rows])
        return PageWrite(len(rows), written, [r.get(column) for r in rows] if column else [])

    def _write_decoded(self, shape: TableShape, page: DecodedPage, merge: bool) -> int:
        if not merge:
            # Blocks of rows per statement (one step, one parameter list) cost about a fifth
            # less than a statement per row; the remainder goes one row at a time.
            flat, width = page.flat, page.width
            block = self._block_rows(shape)
            whole = page.count - page.count % block
            if whole:
                sql, step = self._statement("replace_block", shape), block * width
                for start in range(0, whole * width, step):
                    self.db.execute(sql, flat[start : start + step])
            if whole < page.count:
                self.db.executemany(self._statement("replace_page", shape), [
                    flat[i : i + width] for i in range(whole * width, len(flat), width)])
            return page.count
        cur = self.db.executemany(self._statement("upsert_page", shape), page.rows)
        return cur.rowcount

    def delete_keys(self, shape: TableShape, keys: Iterable[Sequence[Any]]) -> int:
        """Delete rows by primary key (journaled as replayed); returns how many existed."""
        self.journal.context("replay")
        data = [shape.key_values(k) for k in keys]
        cur = self.db.executemany(self._statement("delete", shape), data)
        return cur.rowcount

    def update_columns(
        self, shape: TableShape, columns: Sequence[str], rows: Iterable[Mapping[str, Any]]
    ) -> int:
        """Set only ``columns`` of existing rows (a backfill after columns were added)."""
        self.journal.context("replay")
        types = dict(shape.columns)
        convs = [converter(types[c]) for c in columns]
        sets = ", ".join(f"{_q(c)} = ?" for c in columns)
        where = " and ".join(f"{_q(c)} = ?" for c in shape.primary_key)
        data = []
        for row in rows:
            vals = [row.get(c) for c in columns]
            vals = [f(v) if f is not None else v for f, v in zip(convs, vals, strict=True)]
            data.append((*vals, *shape.key_values([row[c] for c in shape.primary_key])))
        cur = self.db.executemany(f"update {_q(shape.name)} set {sets} where {where}", data)
        return cur.rowcount

    # -- mark and sweep (diff repair without holding keys in memory) ---------------------
    def _seen(self, shape: TableShape) -> str:
        return _q("seen_" + shape.name)

    def begin_sweep(self, shape: TableShape) -> None:
        """Start a mark-and-sweep pass: an empty temporary key set for this table."""
        seen = self._seen(shape)
        types = dict(shape.columns)
        # The same declared types as the mirror table's key: with another affinity SQLite
        # could not use this table's index in the sweep (a scan per row).
        cols = ", ".join(f"{_q(c)} {sqlite_type(types.get(c, 'text'))}"
                         for c in shape.primary_key)
        keys = ", ".join(_q(c) for c in shape.primary_key)
        self.db.execute(f"drop table if exists temp.{seen}")
        self.db.execute(f"create temp table {seen} ({cols}, primary key ({keys})) without rowid")

    def mark(self, shape: TableShape, keys: Iterable[Sequence[Any]]) -> None:
        """Record keys present upstream."""
        marks = ", ".join("?" for _ in shape.primary_key)
        self.db.executemany(f"insert or ignore into temp.{self._seen(shape)} values ({marks})",
                            [shape.key_values(k) for k in keys])

    def sweep(self, shape: TableShape) -> int:
        """Delete every row whose key was not marked (journaled as replayed deletes);
        returns how many; ends the pass."""
        self.journal.context("replay")
        seen = self._seen(shape)
        match = " and ".join(f"s.{_q(c)} = t.{_q(c)}" for c in shape.primary_key)
        cur = self.db.execute(f"delete from {_q(shape.name)} as t where not exists"
                        f" (select 1 from temp.{seen} as s where {match})")
        gone = cur.rowcount
        self.db.execute(f"drop table if exists temp.{seen}")
        return gone

    def apply(self, shape: TableShape, changes: Sequence[Change]) -> None:
        """Apply changes in order, in one transaction. Partial records (413) update only the
        columns they carry, so a truncated event never blanks a column."""
        with self.transaction():
            self.apply_in_transaction(shape, changes)

    def apply_in_transaction(self, shape: TableShape, changes: Sequence[Change],
                             origin: Origin = "live") -> None:
        """:meth:`apply` inside the caller's transaction (to commit a cursor with it); each
        change is journaled with *origin* and its commit time."""
        upsert = self._statement("put", shape)
        delete = self._statement("delete", shape)
        context = self.journal.context
        for ch in changes:
            ts = ch.commit_timestamp
            context(origin, None if ts is None else ts.isoformat())
            if ch.op == "DELETE":
                if ch.pk:
                    self.db.execute(delete, shape.key_values(ch.pk))
            elif ch.new is not None and ch.partial:
                self._merge_partial(shape, ch)
            elif ch.new is not None:
                self.db.execute(upsert, shape.row_values(ch.new))

    def _merge_partial(self, shape: TableShape, ch: Change) -> None:
        assert ch.new is not None
        if not ch.pk:
            return
        known = set(shape.column_names)
        cols = [c for c in ch.new if c in known]
        current = self.get_row(shape, ch.pk)
        if not current:
            merged: dict[str, Any] = {c: ch.new[c] for c in cols}
            self.db.execute(self._statement("put", shape), shape.row_values(merged))
            return
        # ``current`` holds stored values: convert only the new ones.
        stored = {**current, **dict(zip(cols, _select(shape.row_values(ch.new),
                                                       shape.column_names, cols), strict=True))}
        names = shape.column_names
        self.db.execute(self._statement("put", shape), tuple(stored.get(c) for c in names))

    def get_row(self, shape: TableShape, pk: Sequence[Any]) -> dict[str, Any]:
        """The stored row with this key ({} if absent), values as stored."""
        where = " and ".join(f"{_q(c)} = ?" for c in shape.primary_key)
        cur = self.db.execute(f"select * from {_q(shape.name)} where {where}",
                              shape.key_values(pk))
        row = cur.fetchone()
        if row is None:
            return {}
        return {d[0]: v for d, v in zip(cur.description, row, strict=True)}

    def rows(self, shape: TableShape) -> list[dict[str, Any]]:
        """Every row, ordered by primary key (for comparisons and tests)."""
        order = ", ".join(_q(c) for c in shape.primary_key)
        cur = self.db.execute(f"select * from {_q(shape.name)} order by {order}")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def count(self, shape: TableShape) -> int:
        row = self.db.execute(f"select count(*) from {_q(shape.name)}").fetchone()
        return int(row[0])


def _lock_writer(path: Path, option: str = "--db") -> int | None:
    """Hold an exclusive lock on ``<file>.lock`` for as long as this process writes *path*.

    Two writers on one file would each believe their cursor: the second is refused, naming
    the first's process id. The lock is an OS file lock (``flock``), released when the file
    descriptor closes - also when the process is killed - so a crash never leaves a stale lock.
    Readers are not affected (SQLite's WAL lets them read while one process writes).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock, as before
        return None
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise CacheError(f"cannot create the lock file {lock_path}: {exc.strerror}. Fix: make "
                         f"the directory writable or choose another {option} path.") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise CacheError(
            f"{path} is being written by another supasync process (pid {holder}); two writers "
            "on one file would corrupt each other's cursor. Fix: stop the other one, or give "
            f"this one another file ({option})."
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _select(values: tuple[Any, ...], names: Sequence[str], wanted: Sequence[str]) -> list[Any]:
    index = {n: i for i, n in enumerate(names)}
    return [values[index[c]] for c in wanted]


class _Tx:
    """``with store.transaction():`` — BEGIN IMMEDIATE / COMMIT, ROLLBACK on error; nests.
    *after_commit* runs once the outermost block has committed, *after_rollback* once it has
    rolled back."""

    def __init__(self, db: sqlite3.Connection,
                 after_commit: Callable[[], object] | None = None,
                 after_rollback: Callable[[], object] | None = None) -> None:
        self.db = db
        self.after_commit = after_commit
        self.after_rollback = after_rollback
        self.outer = False

    def __enter__(self) -> sqlite3.Connection:
        if not self.db.in_transaction:
            self.db.execute("begin immediate")
            self.outer = True
        return self.db

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if not self.outer:
            return
        if exc_type is None:
            self.db.execute("commit")
            if self.after_commit is not None:
                self.after_commit()
        else:
            self.db.execute("rollback")
            if self.after_rollback is not None:
                self.after_rollback()
