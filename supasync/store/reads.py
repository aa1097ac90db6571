"""The read model: a store file's rows by key, by filter, counted, with the journal position.

Contract of :class:`StoreReader`:

* **Any thread.** Each thread gets its own read-only SQLite connection to the file (WAL mode
  lets readers and the one writer run side by side: a read never waits for a write
  transaction, nor makes the writer wait). Threads share nothing but the list of connections
  to close.
* **Never half a batch.** Every call runs in one read transaction, so it sees the file as of
  one commit of the writer, which writes a batch (rows and their journal entries) in one
  transaction. :meth:`StoreReader.rows` keeps its transaction open while it is iterated; the
  ``seq`` it reports with :meth:`StoreReader.read` is the journal position of that commit.
* **Values as the server renders them** (:func:`~supasync.store.values.decoder`): booleans
  ``True``/``False``, JSON as Python values, timestamps as ISO 8601 text.
* **Filters in SQL**: a ``where`` is a supasync filter (:func:`~supasync.core.filters.parse_filter`
  text or a :class:`~supasync.core.filters.Filter`). Comparisons on numbers, booleans and text,
  ``in`` lists and ``is`` tests become plain SQL on the stored values (indexes apply); the other
  conditions (timestamps, dates, ``like``/``ilike``, regular expressions, JSON values) call
  :meth:`Filter.matches <supasync.core.filters.Filter.matches>` through an SQL function, so a
  filter selects exactly the rows it selects live.

Nothing here writes: the file may be open in the writer's process, or be a copy.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from ..core.errors import CacheError, FilterError
from ..core.filters import Condition, Filter, as_filter
from .journal import JournalRead, newest_seq, read_since
from .values import Converter, canonical_type, converter, decoder

__all__ = ["ReadResult", "StoreReader", "TableView", "where_sql"]

_INT = {"int2", "int4", "int8", "oid", "xid", "xid8"}
_FLOAT = {"float4", "float8", "numeric"}
_TEXT = {"text", "varchar", "bpchar", "name", "citext"}
_TRUE = {"t", "true", "y", "yes", "on", "1"}
_FALSE = {"f", "false", "n", "no", "off", "0"}
# Text that the live evaluation compares as a date, time or UUID rather than as text.
_SPECIAL = re.compile(r"^\s*(\d{4}-\d{2}-\d{2}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-)")
_SQL_OP = {"eq": "=", "neq": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class TableView:
    """What the reader knows of one store table: its columns (canonical PostgreSQL types), its
    primary key, and how stored values are decoded."""

    name: str
    schema: str
    table: str
    columns: tuple[tuple[str, str], ...]
    primary_key: tuple[str, ...]

    @property
    def types(self) -> dict[str, str]:
        return dict(self.columns)


@dataclass(frozen=True)
class ReadResult:
    """Rows read in one transaction, and the journal position (``seq``) they reflect."""

    rows: list[dict[str, Any]]
    seq: int


# --------------------------------------------------------------------------- filters -> SQL

def _typed(c: Condition, text: str, t: str) -> Any:
    """The filter text as the stored value it is compared with; raises FilterError when the
    text cannot be that type (PostgreSQL refuses such a filter too)."""
    word = text.strip()
    try:
        if t in _INT:
            return int(Decimal(word)) if Decimal(word) == int(Decimal(word)) else _bad(c, t)
        if t in _FLOAT:
            return float(word)
    except (InvalidOperation, ValueError):
        _bad(c, t)
    if t == "bool":
        if word.lower() in _TRUE:
            return 1
        if word.lower() in _FALSE:
            return 0
        _bad(c, t)
    if t == "uuid":
        return word.lower()
    return text


def _bad(c: Condition, t: str) -> Any:
    raise FilterError(f"{c.column}={c.op}.{c.value!r}: the value is not a valid {t}; fix the "
                      "filter's value")


def _native(c: Condition, t: str) -> tuple[str, list[Any]] | None:
    """Plain SQL for a condition on a column of canonical type *t*, or None when only the
    exact evaluation (:meth:`Filter.matches`) can decide it."""
    col = _q(c.column)
    plain = t in _INT or t in _FLOAT or t == "bool" or t in _TEXT or t == "uuid"
    if c.op == "is":
        if c.value in ("null", "unknown"):
            return f"{col} is null", []
        if t == "bool":
            return f"({col} is ?)", [1 if c.value == "true" else 0]
        return None
    if not plain:
        return None
    if t in _TEXT and any(_SPECIAL.match(v) for v in
                          (c.value if isinstance(c.value, tuple) else (c.value,))):
        return None  # compared as instants or UUIDs when both sides look like one (_coerce)
    if c.op in _SQL_OP:
        assert isinstance(c.value, str)
        return f"{col} {_SQL_OP[c.op]} ?", [_typed(c, c.value, t)]
    if c.op == "in":
        assert isinstance(c.value, tuple)
        if not c.value:
            return "0", []
        marks = ", ".join("?" for _ in c.value)
        return f"{col} in ({marks})", [_typed(c, v, t) for v in c.value]
    if c.op == "isdistinct":
        assert isinstance(c.value, str)
        return f"({col} is not ?)", [_typed(c, c.value, t)]
    return None


_EXACT = "supasync_matches"


class _Exact:
    """Conditions evaluated by :meth:`Filter.matches` through an SQL function, per reader."""

    def __init__(self) -> None:
        self._by_key: dict[str, tuple[Condition, Converter | None]] = {}
        self._lock = threading.Lock()

    def key(self, c: Condition, t: str) -> str:
        key = json.dumps([str(c), c.negated, t])
        with self._lock:
            self._by_key.setdefault(key, (c, decoder(t)))
        return key

    def __call__(self, key: str, value: Any) -> int:
        c, dec = self._by_key[key]
        return int(c.matches({c.column: dec(value) if dec is not None and value is not None
                              else value}))


def where_sql(where: str | Filter | None, view: TableView,
              exact: _Exact | None = None) -> tuple[str, list[Any]]:
    """``(sql, params)`` for a WHERE clause ("1" when there is no filter).

    Raises:
        FilterError: a column the table does not have, or a value that cannot be the column's
            type.
    """
    f = as_filter(where) if not isinstance(where, Filter) else where
    types = view.types
    parts: list[str] = []
    params: list[Any] = []
    for c in f.conditions:
        t = types.get(c.column)
        if t is None:
            raise FilterError(f"{view.schema}.{view.table} has no column {c.column!r}; columns: "
                              f"{', '.join(types)}")
        native = _native(c.negate() if c.negated else c, t)
        if native is not None:
            # SQL's three-valued logic is the filter's: a comparison with NULL is NULL, and
            # ``not`` cannot rescue it; ``is``/``is not`` are never NULL (filters.py, _evaluate).
            sql, p = native
            parts.append(f"not ({sql})" if c.negated else f"({sql})")
            params += p
        else:
            if exact is None:
                raise FilterError(f"{c} needs the exact evaluation; use a StoreReader")
            parts.append(f"{_EXACT}(?, {_q(c.column)})")
            params.append(exact.key(c, t))
    return (" and ".join(parts) or "1"), params


def _order_sql(order_by: str | Sequence[str] | None, view: TableView) -> str:
    """``order by`` from ``"col"``, ``"col.desc"``, ``"-col"`` or a list of them; the primary
    key always ends it, so the order is total."""
    items: list[str] = []
    if isinstance(order_by, str):
        order_by = [p for p in order_by.split(",") if p.strip()]
    seen: set[str] = set()
    for raw in order_by or ():
        item = raw.strip()
        desc = item.startswith("-")
        item = item.lstrip("-")
        if item.endswith((".desc", ".asc")):
            item, _, way = item.rpartition(".")
            desc = way == "desc"
        if item not in view.types:
            raise FilterError(f"cannot order by {item!r}: {view.schema}.{view.table} has no such "
                              f"column; columns: {', '.join(view.types)}")
        items.append(f"{_q(item)} {'desc' if desc else 'asc'}")
        seen.add(item)
    items += [_q(c) for c in view.primary_key if c not in seen]
    return ", ".join(items)


# --------------------------------------------------------------------------- the reader

class StoreReader:
    """Read a store file from any thread (see the module docstring).

    Args:
        path: the store file (it must exist and be a supasync store).

    Raises:
        CacheError: the file does not exist or is not a supasync store.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CacheError(f"{self.path} does not exist; nothing to read yet")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._exact = _Exact()
        self._connections: list[sqlite3.Connection] = []
        self._closed = False

    # -- connections ---------------------------------------------------------------------
    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is not None:
            return db
        if self._closed:
            raise CacheError("the store reader is closed")
        uri = self.path.resolve().as_uri() + "?mode=ro"
        try:
            db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            db.execute("pragma query_only = 1")
        except sqlite3.Error as exc:
            raise CacheError(f"cannot read {self.path}: {exc}") from exc
        db.create_function(_EXACT, 2, self._exact, deterministic=True)
        self._local.db = db
        with self._lock:
            self._connections.append(db)
        return db

    def close(self) -> None:
        """Close every thread's connection (a reader closed while a thread iterates rows ends
        that iteration with an error)."""
        self._closed = True
        with self._lock:
            conns, self._connections = self._connections, []
        for db in conns:
            db.close()

    def __enter__(self) -> StoreReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- tables --------------------------------------------------------------------------
    def view(self, name: str) -> TableView:
        """The table's shape, as the writer recorded it (read on every call: one indexed row,
        and a reader never decodes with a shape the writer has since changed).

        Raises:
            CacheError: no such table in the file (yet).
        """
        try:
            row = self._db().execute("select schema, tbl, shape from _supasync_tables where"
                                     " name = ?", (name,)).fetchone()
        except sqlite3.Error as exc:
            raise CacheError(f"{self.path} is not a supasync store ({exc})") from exc
        if row is None:
            raise CacheError(f"{self.path} has no table {name!r} (yet)")
        shape = json.loads(row[2])
        return TableView(name, row[0], row[1],
                         tuple((c, canonical_type(t)) for c, t in shape["columns"]),
                         tuple(shape["primary_key"]))

    # -- reads ---------------------------------------------------------------------------
    def seq(self) -> int:
        """The journal's newest sequence number: what a read made now reflects."""
        return newest_seq(self._db())

    def get(self, name: str, pk: Sequence[Any], *,
            view: TableView | None = None) -> dict[str, Any] | None:
        """The row with this primary key (a sequence, in key column order), or None.

        *view*: the table's shape, when the caller knows it is current (the writing process
        does: :mod:`supasync.client.reads`), saving a read of it."""
        view = view or self.view(name)
        if len(pk) != len(view.primary_key):
            raise ValueError(f"{view.schema}.{view.table}'s primary key has "
                             f"{len(view.primary_key)} column(s) ({', '.join(view.primary_key)});"
                             f" got {len(pk)} value(s)")
        types = view.types
        key = []
        for c, v in zip(view.primary_key, pk, strict=True):
            conv = converter(types[c])
            key.append(conv(v) if conv is not None else v)
        where = " and ".join(f"{_q(c)} = ?" for c in view.primary_key)
        cur = self._db().execute(f"select * from {_q(name)} where {where}", key)
        row = cur.fetchone()
        return None if row is None else _decode(view, cur.description, row)

    def count(self, name: str, where: str | Filter | None = None) -> int:
        """How many rows pass *where*."""
        view = self.view(name)
        sql, params = where_sql(where, view, self._exact)
        row = self._db().execute(f"select count(*) from {_q(name)} where {sql}",
                                 params).fetchone()
        return int(row[0])

    def rows(self, name: str, where: str | Filter | None = None, *,
             order_by: str | Sequence[str] | None = None,
             limit: int | None = None) -> Iterator[dict[str, Any]]:
        """The rows passing *where*, in *order_by* order (then by primary key), at most
        *limit*; read in one transaction that stays open while the iterator is used."""
        view = self.view(name)
        sql, params = where_sql(where, view, self._exact)
        query = f"select * from {_q(name)} where {sql} order by {_order_sql(order_by, view)}"
        if limit is not None:
            if limit < 0:
                raise ValueError("limit must be 0 or more")
            query += f" limit {int(limit)}"
        return self._iterate(view, query, params)

    def _iterate(self, view: TableView, query: str,
                 params: list[Any]) -> Iterator[dict[str, Any]]:
        db = self._db()
        own = not db.in_transaction
        if own:
            db.execute("begin")
        try:
            cur = db.execute(query, params)
            desc = cur.description
            while batch := cur.fetchmany(500):
                for row in batch:
                    yield _decode(view, desc, row)
        finally:
            if own and db.in_transaction:
                db.execute("commit")

    def read(self, name: str, where: str | Filter | None = None, *,
             order_by: str | Sequence[str] | None = None,
             limit: int | None = None) -> ReadResult:
        """:meth:`rows` as a list, with the journal position they reflect (one transaction):
        a consumer that then follows :meth:`changes_since` from that ``seq`` misses nothing
        and sees nothing twice."""
        db = self._db()
        db.execute("begin")
        try:
            seq = newest_seq(db)
            rows = list(self.rows(name, where, order_by=order_by, limit=limit))
        finally:
            db.execute("commit")
        return ReadResult(rows, seq)

    def changes_since(self, name: str, seq: int, *, limit: int | None = None) -> JournalRead:
        """The journal entries of table *name* after *seq* (see
        :class:`~supasync.store.journal.JournalRead`)."""
        return read_since(self._db(), name, seq, limit=limit)


def _decode(view: TableView, desc: Any, row: Sequence[Any]) -> dict[str, Any]:
    types = view.types
    out: dict[str, Any] = {}
    for d, v in zip(desc, row, strict=True):
        name = d[0]
        dec = decoder(types.get(name, "text")) if v is not None else None
        out[name] = dec(v) if dec is not None else v
    return out

