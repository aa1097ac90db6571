"""The SQLite file a mirror writes: one typed table per mirrored table, plus bookkeeping.

Contract:

* One SQLite table per mirrored table, named after it (``todos``, or ``schema_table`` outside
  ``public``), with the same column names, SQLite types chosen from the PostgreSQL type
  (:func:`sqlite_type`), and the same primary key.
* Values are stored as PostgREST/Realtime render them (PostgreSQL's JSON of the typed value),
  converted by :func:`to_sqlite`: booleans become 0/1, JSON objects and arrays become JSON text,
  timestamps stay ISO text.
* supasync's own state lives in tables prefixed ``_supasync_``: the mirrored tables with their
  column lists and primary keys (``_supasync_tables``) and a key/value store for cursors
  (``_supasync_state``).
* :meth:`MirrorStore.apply` writes a batch of changes in one transaction, so a crash never
  leaves half a batch. Opening an existing file resumes; a file that is not SQLite, or a
  SQLite file that is not a supasync mirror but has tables of the same names, is refused
  with :class:`~supasync.errors.CacheError` before anything is written.
* Schema changes: :meth:`MirrorStore.ensure_table` adds and drops columns in place; a changed
  column type, or a changed primary key, is reported (``"resnapshot"``) so the caller
  re-snapshots that table.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .changes import Change
from .errors import CacheError

_INTEGER = {"int2", "int4", "int8", "oid", "xid", "smallint", "integer", "bigint"}
_REAL = {"float4", "float8", "real", "double precision"}
_NUMERIC = {"numeric", "decimal", "money"}
_BOOL = {"bool", "boolean"}

SchemaAction = Literal["created", "unchanged", "altered", "resnapshot"]


def sqlite_type(pg_type: str) -> str:
    """The SQLite column type for a PostgreSQL type name (``typname`` or SQL spelling)."""
    t = pg_type.lower().strip()
    if t.startswith("_") or t.endswith("[]"):
        return "TEXT"  # arrays as JSON text
    if t in _INTEGER or t in _BOOL:
        return "INTEGER"
    if t in _REAL:
        return "REAL"
    if t in _NUMERIC:
        return "NUMERIC"
    return "TEXT"  # text, uuid, timestamps (ISO), json/jsonb (JSON text), enums, bytea (hex)...


def to_sqlite(value: Any) -> Any:
    """Convert one typed JSON value to what the mirror stores."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), sort_keys=False)
    return value


def mirror_table_name(schema: str, table: str) -> str:
    return table if schema == "public" else f"{schema}_{table}"


def _q(name: str) -> str:
    """Quote an SQLite identifier."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class TableShape:
    """What a mirrored table looks like: ordered (column, PostgreSQL type) and the key."""

    schema: str
    table: str
    columns: tuple[tuple[str, str], ...]
    primary_key: tuple[str, ...]

    @property
    def name(self) -> str:
        return mirror_table_name(self.schema, self.table)

    def to_json(self) -> str:
        return json.dumps({"columns": self.columns, "primary_key": self.primary_key})


class MirrorStore:
    """A mirror file. Not thread-safe: use it from one thread (the worker's)."""

    MAGIC = "supasync-mirror-1"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.exists() and self.path.is_dir():
            raise CacheError(f"{self.path} is a directory; give a file path for the mirror "
                             "(e.g. --db mirror.sqlite).")
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None)
            self._check_and_init()  # before any pragma: a foreign file must stay untouched
            self.db.execute("pragma journal_mode=wal")
            self.db.execute("pragma synchronous=normal")
        except sqlite3.DatabaseError as exc:
            raise CacheError(
                f"{self.path} is not a usable SQLite database ({exc}). Fix: point --db at a "
                "new file or at an existing supasync mirror; nothing was written."
            ) from exc
        except OSError as exc:
            raise CacheError(
                f"cannot open {self.path}: {exc}. Fix: choose a writable path."
            ) from exc

    # -- set-up ----------------------------------------------------------------------
    def _check_and_init(self) -> None:
        tables = {
            r[0] for r in self.db.execute("select name from sqlite_master where type='table'")
        }
        if tables and "_supasync_state" not in tables:
            raise CacheError(
                f"{self.path} is an SQLite file that supasync did not create (tables: "
                f"{', '.join(sorted(tables)[:5])}). Fix: use a new file for the mirror; "
                "supasync will not write into a foreign database."
            )
        if "_supasync_state" in tables:
            row = self.db.execute("select value from _supasync_state where key='magic'").fetchone()
            if row is None or row[0] != self.MAGIC:
                raise CacheError(f"{self.path} has an unknown supasync format; use a new file.")
            return
        with self.transaction():
            self.db.execute("create table _supasync_state (key text primary key, value text)")
            self.db.execute(
                "create table _supasync_tables (name text primary key, schema text not null,"
                " tbl text not null, shape text not null, snapshot_complete integer not null"
                " default 0)"
            )
            self.db.execute("insert into _supasync_state values ('magic', ?)", (self.MAGIC,))

    def transaction(self) -> _Tx:
        return _Tx(self.db)

    def close(self) -> None:
        self.db.close()

    # -- state -----------------------------------------------------------------------
    def get_state(self, key: str) -> str | None:
        row = self.db.execute("select value from _supasync_state where key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_state(self, key: str, value: str) -> None:
        self.db.execute("insert into _supasync_state values (?, ?) on conflict(key) do update"
                        " set value=excluded.value", (key, value))

    def shape(self, schema: str, table: str) -> TableShape | None:
        row = self.db.execute("select shape from _supasync_tables where name=?",
                              (mirror_table_name(schema, table),)).fetchone()
        if row is None:
            return None
        data = json.loads(row[0])
        return TableShape(schema, table, tuple((c, t) for c, t in data["columns"]),
                          tuple(data["primary_key"]))

    def snapshot_complete(self, schema: str, table: str) -> bool:
        row = self.db.execute("select snapshot_complete from _supasync_tables where name=?",
                              (mirror_table_name(schema, table),)).fetchone()
        return bool(row and row[0])

    def mark_snapshot_complete(self, schema: str, table: str, complete: bool = True) -> None:
        self.db.execute("update _supasync_tables set snapshot_complete=? where name=?",
                        (int(complete), mirror_table_name(schema, table)))

    # -- schema ----------------------------------------------------------------------
    def ensure_table(self, shape: TableShape) -> SchemaAction:
        """Create or adapt the table for ``shape``; see the module docstring."""
        old = self.shape(shape.schema, shape.table)
        name = shape.name
        with self.transaction():
            if old is None:
                existing = self.db.execute(
                    "select 1 from sqlite_master where type='table' and name=?", (name,)
                ).fetchone()
                if existing:
                    raise CacheError(f"table {name!r} exists in {self.path} but is not a mirror "
                                     "table; use a new file.")
                self._create(shape)
                return "created"
            if old == shape:
                return "unchanged"
            old_types = dict(old.columns)
            new_types = dict(shape.columns)
            changed = [c for c in new_types if c in old_types and old_types[c] != new_types[c]]
            if changed or old.primary_key != shape.primary_key:
                self.db.execute(f"drop table {_q(name)}")
                self._create(shape)
                self.db.execute("update _supasync_tables set snapshot_complete=0 where name=?",
                                (name,))
                return "resnapshot"
            for col, typ in shape.columns:
                if col not in old_types:
                    self.db.execute(
                        f"alter table {_q(name)} add column {_q(col)} {sqlite_type(typ)}"
                    )
            for col in old_types:
                if col not in new_types:
                    self.db.execute(f"alter table {_q(name)} drop column {_q(col)}")
            self.db.execute("update _supasync_tables set shape=? where name=?",
                            (shape.to_json(), name))
            return "altered"

    def _create(self, shape: TableShape) -> None:
        if not shape.primary_key:
            raise CacheError(f"{shape.schema}.{shape.table} has no primary key; a mirror needs one "
                             "to apply updates and deletes. Fix: add a primary key upstream.")
        cols = ", ".join(f"{_q(c)} {sqlite_type(t)}" for c, t in shape.columns)
        pk = ", ".join(_q(c) for c in shape.primary_key)
        self.db.execute(f"create table {_q(shape.name)} ({cols}, primary key ({pk}))")
        self.db.execute(
            "insert into _supasync_tables (name, schema, tbl, shape) values (?, ?, ?, ?)"
            " on conflict(name) do update set shape=excluded.shape",
            (shape.name, shape.schema, shape.table, shape.to_json()),
        )

    # -- data ------------------------------------------------------------------------
    def upsert_rows(self, shape: TableShape, rows: Iterable[Mapping[str, Any]]) -> int:
        """Insert or replace rows (inside the caller's transaction or autocommit)."""
        cols = [c for c, _ in shape.columns]
        sql = (f"insert or replace into {_q(shape.name)} ({', '.join(_q(c) for c in cols)})"
               f" values ({', '.join('?' for _ in cols)})")
        data = [tuple(to_sqlite(r.get(c)) for c in cols) for r in rows]
        self.db.executemany(sql, data)
        return len(data)

    def delete_keys(self, shape: TableShape, keys: Iterable[Sequence[Any]]) -> int:
        where = " and ".join(f"{_q(c)} = ?" for c in shape.primary_key)
        data = [tuple(to_sqlite(v) for v in k) for k in keys]
        self.db.executemany(f"delete from {_q(shape.name)} where {where}", data)
        return len(data)

    def apply(self, shape: TableShape, changes: Sequence[Change]) -> None:
        """Apply changes in order, in one transaction. Partial records (413) update only the
        columns they carry, so a truncated event never blanks a column."""
        with self.transaction():
            for ch in changes:
                if ch.op == "DELETE":
                    self.delete_keys(shape, [ch.pk])
                elif ch.new is not None and ch.partial:
                    self._merge_partial(shape, ch)
                elif ch.new is not None:
                    self.upsert_rows(shape, [ch.new])

    def _merge_partial(self, shape: TableShape, ch: Change) -> None:
        assert ch.new is not None
        known = {c for c, _ in shape.columns}
        cols = [c for c in ch.new if c in known]
        self.upsert_rows(shape, [{**self.get_row(shape, ch.pk), **{c: ch.new[c] for c in cols}}])

    def get_row(self, shape: TableShape, pk: Sequence[Any]) -> dict[str, Any]:
        where = " and ".join(f"{_q(c)} = ?" for c in shape.primary_key)
        cur = self.db.execute(f"select * from {_q(shape.name)} where {where}",
                              tuple(to_sqlite(v) for v in pk))
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


class _Tx:
    """``with store.transaction():`` — BEGIN IMMEDIATE / COMMIT, ROLLBACK on error; nests."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
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
        else:
            self.db.execute("rollback")
