"""The Change model, and the one place that knows the server's postgres_changes payload shapes.

Every consumer (handlers, cache, repair, mirror) sees :class:`Change`. Live events are decoded with
:func:`decode_postgres_changes`; rows re-read over PostgREST during repair or the first snapshot are
wrapped with :func:`change_from_row`.

Payload shapes (``docs/realtime-protocol.md`` §5.2): the server pushes
``{"ids": [...], "data": {...}}`` where ``data`` has ``schema``, ``table``, ``type``,
``commit_timestamp``, ``errors``, ``columns``, ``record`` (INSERT/UPDATE) and ``old_record``
(UPDATE/DELETE). The odd shapes the real server sends are all accepted - realtime-py's own model
drops them (§5.2, last paragraph), which is one of the reasons this module exists:

* ``errors`` is ``null``, a list of strings, or (older clients/servers) a single string;
* ``Error 413: Payload Too Large``: ``record``/``old_record`` keep only short values;
* ``Error 400``/``Error 401``: ``columns: []``, ``record``/``old_record`` ``{}`` and
  ``commit_timestamp: null``;
* unchanged TOASTed values are simply absent from ``record`` (§5.2 "Which columns appear").

Such changes come out with ``partial=True``; unknowable fields become ``None`` or ``()``. A
consumer that needs the full row re-reads it by ``pk`` (or, when ``pk == ()``, repairs by diff).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import decimal
import operator
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

from .errors import ChangeDecodeError

__all__ = [
    "OPS",
    "ORIGINS",
    "Change",
    "Column",
    "Op",
    "Origin",
    "change_from_row",
    "decode_postgres_changes",
    "format_timestamp",
    "parse_timestamp",
]

Op = Literal["INSERT", "UPDATE", "DELETE"]
Origin = Literal["live", "replay", "snapshot"]
OPS: frozenset[str] = frozenset(get_args(Op))
ORIGINS: frozenset[str] = frozenset(get_args(Origin))


@dataclass(frozen=True, slots=True)
class Column:
    """A column as the server describes it: name and ``pg_type.typname`` (``int8``, ``_text``)."""

    name: str
    type: str


@dataclass(frozen=True, slots=True)
class Change:
    """One row change, whatever its origin.

    ``new``/``old`` are plain dicts (JSON-typed values for live changes); treat them as
    read-only. ``pk`` is aligned with ``pk_columns``; ``pk == ()`` means the key is unknown
    (e.g. an ``Error 401`` payload). ``commit_timestamp`` is tz-aware UTC or None.

    Attributes:
        schema, table, op: what changed.
        new: the row after (INSERT/UPDATE); None for DELETE or when the server sent nothing.
        old: the row, or only its key columns (REPLICA IDENTITY DEFAULT), before
            (UPDATE/DELETE); None for INSERT or when unknown.
        pk, pk_columns: primary-key values and names.
        commit_timestamp: the transaction's commit time.
        columns: the server's column list (empty for replayed rows).
        origin: ``live`` (from Realtime), ``replay`` (gap repair), ``snapshot`` (first load).
        partial: the record is incomplete (truncated by Error 413, emptied by Error 400/401,
            TOASTed values left out, or no record at all): re-read the row before trusting it.
        errors: the server's error strings, unchanged.
        version: an ordering/dedupe stamp when known (transaction id in exact repair).
        subscription: the subscription name this change was delivered for.

    Raises:
        ValueError: on construction with an unknown ``op``/``origin``, a naive
            ``commit_timestamp``, or ``pk`` not matching ``pk_columns`` (programming errors).
    """

    schema: str
    table: str
    op: Op
    new: Mapping[str, Any] | None
    old: Mapping[str, Any] | None
    pk: tuple[Any, ...]
    pk_columns: tuple[str, ...]
    commit_timestamp: _dt.datetime | None
    columns: tuple[Column, ...] = ()
    origin: Origin = "live"
    partial: bool = False
    errors: tuple[str, ...] = ()
    version: int | None = None
    subscription: str | None = None

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"Change.op must be one of INSERT, UPDATE, DELETE, not {self.op!r}")
        if self.origin not in ORIGINS:
            raise ValueError(
                f"Change.origin must be one of live, replay, snapshot, not {self.origin!r}"
            )
        ts = self.commit_timestamp
        if ts is not None and (ts.tzinfo is None or ts.utcoffset() is None):
            raise ValueError("Change.commit_timestamp must be timezone-aware (UTC), not naive")
        if self.pk and len(self.pk) != len(self.pk_columns):
            raise ValueError(
                f"Change.pk has {len(self.pk)} values but pk_columns names "
                f"{len(self.pk_columns)} columns {self.pk_columns!r}"
            )

    @property
    def key(self) -> tuple[str, str, tuple[Any, ...]]:
        """``(schema, table, pk)``: the row's identity across origins."""
        return (self.schema, self.table, self.pk)

    @property
    def row(self) -> Mapping[str, Any] | None:
        """The most recent known image of the row: ``new`` if present, else ``old``."""
        return self.new if self.new is not None else self.old

    def with_origin(self, origin: Origin) -> Change:
        """A copy with another ``origin``."""
        return dataclasses.replace(self, origin=origin)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: timestamps as ISO 8601 with ``Z``, tuples as lists.

        Row values that are not JSON types (datetimes, dates, UUIDs, Decimals, bytes from replayed
        rows) are converted to strings (bytes: hex, as PostgREST/Realtime send bytea).
        """
        return {
            "schema": self.schema,
            "table": self.table,
            "op": self.op,
            "new": _jsonable(self.new),
            "old": _jsonable(self.old),
            "pk": _jsonable(list(self.pk)),
            "pk_columns": list(self.pk_columns),
            "commit_timestamp": format_timestamp(self.commit_timestamp),
            "columns": [{"name": c.name, "type": c.type} for c in self.columns],
            "origin": self.origin,
            "partial": self.partial,
            "errors": list(self.errors),
            "version": self.version,
            "subscription": self.subscription,
        }


# --------------------------------------------------------------------------- timestamps


def parse_timestamp(value: object) -> _dt.datetime | None:
    """Parse a server timestamp into tz-aware UTC, or None if it is not one.

    Accepts the current ``2026-08-21T10:15:30.123Z`` and older forms: no fraction, microseconds
    (or more digits, truncated), ``+00:00``/``+00`` offsets, a space instead of ``T`` (PostgreSQL
    text output). A timestamp without offset is taken as UTC (Realtime always sends UTC).
    A ``datetime`` passes through (naive taken as UTC). Never raises.
    """
    if type(value) is str:
        # The common case first: what the server sends today parses as is and is UTC already.
        try:
            parsed = _dt.datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if parsed.tzinfo is _dt.UTC:
                return parsed
    if isinstance(value, _dt.datetime):
        parsed = value
    elif isinstance(value, str) and value.strip():
        try:
            # Python 3.11's fromisoformat accepts Z, +HH, any number of fraction digits and a
            # space separator - every form the server has sent over the years.
            parsed = _dt.datetime.fromisoformat(value.strip())
        except ValueError:
            return None
    else:
        return None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        return parsed.replace(tzinfo=_dt.UTC)
    return parsed.astimezone(_dt.UTC)


def format_timestamp(value: _dt.datetime | None) -> str | None:
    """ISO 8601 in UTC with ``Z`` (microseconds shown only when non-zero), or None."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=_dt.UTC)
    return value.astimezone(_dt.UTC).isoformat().replace("+00:00", "Z")


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, _dt.datetime):
        return format_timestamp(value) if value.tzinfo is not None else value.isoformat()
    if isinstance(value, _dt.date | _dt.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, _dt.timedelta):
        return str(value)
    # Last resort: a string is JSON and keeps whatever the value shows of itself.
    return str(value)


# --------------------------------------------------------------------------- decoding


def _errors_of(raw: object) -> tuple[str, ...]:
    # §5.2: null or a list of strings; a bare string is what realtime-py's model expects.
    if raw is None:
        return ()
    if isinstance(raw, str):
        return (raw,) if raw else ()
    if isinstance(raw, list | tuple):
        return tuple(str(e) for e in raw if e is not None and e != "")
    return (str(raw),)


# A table's column list is the same on every change, so the decoded tuple is shared: building
# Column objects per change was a measurable part of decoding (bench/client_throughput.py).
_COLUMNS_CACHE: dict[
    tuple[tuple[object, object], ...], tuple[tuple[Column, ...], frozenset[str]]
] = {}
_COLUMNS_CACHE_MAX = 1024


_NAME_AND_TYPE = operator.itemgetter("name", "type")


_NO_COLUMNS: tuple[tuple[Column, ...], frozenset[str]] = ((), frozenset())


def _columns_and_names(raw: object) -> tuple[tuple[Column, ...], frozenset[str]]:
    """The decoded column list and the set of its names (shared per distinct column list)."""
    if not isinstance(raw, list | tuple):
        return _NO_COLUMNS
    key: tuple[tuple[object, object], ...] | None
    try:
        key = tuple(map(_NAME_AND_TYPE, raw))
        hit = _COLUMNS_CACHE.get(key)
    except (KeyError, TypeError):  # no name/type, not a mapping, unhashable: the slow way
        key, hit = None, None
    if hit is not None:
        return hit
    out: list[Column] = []
    for item in raw:
        if isinstance(item, Mapping) and isinstance(item.get("name"), str):
            typ = item.get("type")
            out.append(Column(item["name"], typ if isinstance(typ, str) else ""))
    found = (tuple(out), frozenset(c.name for c in out))
    if key is not None:
        if len(_COLUMNS_CACHE) >= _COLUMNS_CACHE_MAX:
            _COLUMNS_CACHE.clear()
        _COLUMNS_CACHE[key] = found
    return found


def _record_of(raw: object) -> dict[str, Any] | None:
    """A record dict, or None when absent, not a mapping, or empty ({} = nothing known)."""
    if isinstance(raw, dict) and raw:
        return dict(raw)  # JSON object keys are strings already; a C-level copy
    if isinstance(raw, Mapping) and raw:
        return {str(k): v for k, v in raw.items()}
    return None


_new_object = object.__new__
_set_field = object.__setattr__


def _live_change(
    schema: str,
    table: str,
    op: Op,
    new: dict[str, Any] | None,
    old: dict[str, Any] | None,
    pk: tuple[Any, ...],
    pk_columns: tuple[str, ...],
    commit_timestamp: _dt.datetime | None,
    columns: tuple[Column, ...],
    partial: bool,
    errors: tuple[str, ...],
    subscription: str | None,
) -> Change:
    """A live Change built without ``__post_init__``'s checks, which the decoder has already
    made (op known, timestamp aware, pk aligned or empty): the generated frozen ``__init__``
    plus checks was the largest part of decoding (bench/client_throughput.py)."""
    change = _new_object(Change)
    _set_field(change, "schema", schema)
    _set_field(change, "table", table)
    _set_field(change, "op", op)
    _set_field(change, "new", new)
    _set_field(change, "old", old)
    _set_field(change, "pk", pk)
    _set_field(change, "pk_columns", pk_columns)
    _set_field(change, "commit_timestamp", commit_timestamp)
    _set_field(change, "columns", columns)
    _set_field(change, "origin", "live")
    _set_field(change, "partial", partial)
    _set_field(change, "errors", errors)
    _set_field(change, "version", None)
    _set_field(change, "subscription", subscription)
    return change


def _guess_pk_columns(
    op: str,
    new: Mapping[str, Any] | None,
    old: Mapping[str, Any] | None,
    columns: tuple[Column, ...],
) -> tuple[str, ...]:
    # REPLICA IDENTITY DEFAULT sends exactly the key columns as old_record (§5.2), so its keys are
    # the primary key. Under FULL, old_record holds every column; then "id" is the better guess.
    if op != "INSERT" and old:
        names = tuple(old)
        full = len(columns) > 1 and set(names) >= {c.name for c in columns}
        if full and "id" in old:
            return ("id",)
        return names
    source = new if new is not None else old
    if source is not None and "id" in source:
        return ("id",)
    return ()


def _pk_values(
    pk_columns: tuple[str, ...],
    first: Mapping[str, Any] | None,
    second: Mapping[str, Any] | None,
) -> tuple[Any, ...] | None:
    """Values of *pk_columns* from *first*, falling back to *second*; None if any is missing."""
    values: list[Any] = []
    for name in pk_columns:
        if first is not None and name in first:
            values.append(first[name])
        elif second is not None and name in second:
            values.append(second[name])
        else:
            return None
    return tuple(values)


def decode_postgres_changes(
    payload: Mapping[str, Any],
    *,
    pk_columns: Sequence[str] | None = None,
    subscription: str | None = None,
) -> Change:
    """Decode a postgres_changes payload into a live :class:`Change`.

    Args:
        payload: the server's ``{"ids": [...], "data": {...}}`` or the bare ``data`` dict.
        pk_columns: the table's primary key, if known. When None it is guessed: the keys of
            ``old_record`` for UPDATE/DELETE (that is the key under REPLICA IDENTITY DEFAULT;
            under FULL, ``("id",)`` when present), else ``("id",)`` if the record has ``id``.
            Pass it whenever you can: a guess cannot see a composite key on an INSERT.
        subscription: stored on the change.

    Returns:
        A Change with ``origin="live"``. ``pk`` comes from ``new`` (INSERT/UPDATE) or ``old``
        (DELETE), falling back to the other image; ``()`` if it cannot be found (then
        ``partial=True``).

    Raises:
        ChangeDecodeError: only if ``schema``/``table``/``type`` are missing or not strings, or
        ``type`` is not INSERT/UPDATE/DELETE (any case). Every other odd shape decodes.
    """
    if type(payload) is not dict and not isinstance(payload, Mapping):
        raise ChangeDecodeError(
            f"postgres_changes payload must be a JSON object, got {type(payload).__name__}"
        )
    inner = payload.get("data")
    data: Mapping[str, Any] = (
        inner if type(inner) is dict or isinstance(inner, Mapping) else payload
    )
    schema, table, kind = data.get("schema"), data.get("table"), data.get("type")
    if not isinstance(schema, str) or not schema or not isinstance(table, str) or not table:
        raise ChangeDecodeError(
            "postgres_changes payload has no schema/table "
            f"(got schema={schema!r}, table={table!r}); is this really a postgres_changes event?"
        )
    op = kind.upper() if isinstance(kind, str) else None
    if op not in OPS:
        raise ChangeDecodeError(
            f"postgres_changes payload for {schema}.{table} has type {kind!r}; "
            "expected INSERT, UPDATE or DELETE"
        )
    errors = _errors_of(data.get("errors"))
    columns, names = _columns_and_names(data.get("columns"))
    record = _record_of(data.get("record"))
    old_record = _record_of(data.get("old_record"))
    new = record if op != "DELETE" else None
    old = old_record if op != "INSERT" else None

    partial = bool(errors)
    if op != "DELETE" and new is None:
        partial = True
    if op == "DELETE" and old is None:
        partial = True
    if new is not None and not new.keys() >= names:
        # Unchanged TOASTed values are omitted by wal2json (§5.2); the row image is incomplete.
        partial = True

    pkc = tuple(pk_columns) if pk_columns is not None else _guess_pk_columns(op, new, old, columns)
    first, second = (old, new) if op == "DELETE" else (new, old)
    pk = _pk_values(pkc, first, second) if pkc else None
    if pk is None:
        pk = ()
        partial = True

    return _live_change(
        schema,
        table,
        cast(Op, op),
        new,
        old,
        pk,
        pkc,
        parse_timestamp(data.get("commit_timestamp")),
        columns,
        partial,
        errors,
        subscription,
    )


def change_from_row(
    schema: str,
    table: str,
    op: Op,
    new: Mapping[str, Any] | None,
    old: Mapping[str, Any] | None,
    pk_columns: Sequence[str],
    *,
    origin: Origin,
    commit_timestamp: _dt.datetime | str | None = None,
    version: int | None = None,
    subscription: str | None = None,
) -> Change:
    """Build a Change from rows re-read during repair (``replay``) or the first load (``snapshot``).

    ``pk`` is read from ``new`` (INSERT/UPDATE) or ``old`` (DELETE), falling back to the other.
    ``commit_timestamp`` may be a datetime (naive = UTC) or a string in any form
    :func:`parse_timestamp` accepts.

    Raises:
        ChangeDecodeError: if ``op`` is unknown or a primary-key column is in neither row
            (the caller must select the key columns).
    """
    if op not in OPS:
        raise ChangeDecodeError(f"op must be INSERT, UPDATE or DELETE, not {op!r}")
    pkc = tuple(pk_columns)
    new_d = dict(new) if new is not None else None
    old_d = dict(old) if old is not None else None
    first, second = (old_d, new_d) if op == "DELETE" else (new_d, old_d)
    pk = _pk_values(pkc, first, second)
    if pk is None or not pkc:
        raise ChangeDecodeError(
            f"{op} row for {schema}.{table} lacks primary-key column(s) {list(pkc)!r}; "
            "select the key columns when re-reading rows"
        )
    return Change(
        schema=schema,
        table=table,
        op=op,
        new=new_d if op != "DELETE" else None,
        old=old_d if op != "INSERT" else None,
        pk=pk,
        pk_columns=pkc,
        commit_timestamp=parse_timestamp(commit_timestamp),
        origin=origin,
        version=version,
        subscription=subscription,
    )
