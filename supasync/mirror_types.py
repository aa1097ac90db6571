"""How PostgreSQL values become SQLite values in a mirror (sans-I/O, pure functions).

* :func:`canonical_type` - one spelling per PostgreSQL type, whether it comes from PostgREST's
  OpenAPI root (``format_type``: ``bigint``, ``numeric(10,2)``, ``text[]``) or from a Realtime
  change's column list (``typname``: ``int8``, ``numeric``, ``_text``).
* :func:`sqlite_type` - the declared SQLite type of a column.
* :func:`converter` - how a value (as PostgREST/Realtime render it in JSON) is stored.
* :func:`row_function` - a compiled function turning a row dict into the stored tuple; the
  snapshot calls it once per row, so it is generated as straight-line code.
"""

from __future__ import annotations

import datetime as _dt
import json
import json.encoder
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = [
    "Converter",
    "canonical_type",
    "converter",
    "dumps",
    "row_function",
    "sqlite_type",
    "to_sqlite",
]

_INTEGER = {"int2", "int4", "int8", "oid", "xid", "xid8"}
_REAL = {"float4", "float8"}
_NUMERIC = {"numeric"}
_BOOL = {"bool"}
_JSON = {"json", "jsonb"}

# format_type() spellings (what PostgREST's OpenAPI root gives) -> pg_type.typname (what
# Realtime's ``columns`` give), so both describe a column the same way.
_ALIASES = {
    "bigint": "int8",
    "integer": "int4",
    "int": "int4",
    "smallint": "int2",
    "real": "float4",
    "double precision": "float8",
    "boolean": "bool",
    "character varying": "varchar",
    "character": "bpchar",
    "char": "bpchar",
    "decimal": "numeric",
    "timestamp with time zone": "timestamptz",
    "timestamp without time zone": "timestamp",
    "time with time zone": "timetz",
    "time without time zone": "time",
    "bit varying": "varbit",
}
_MODIFIER = re.compile(r"\(\s*\d+\s*(,\s*-?\d+\s*)?\)")
Converter = Callable[[Any], Any]


def canonical_type(pg_type: str) -> str:
    """One spelling per PostgreSQL type: ``pg_type.typname`` without modifiers or schema.

    ``"bigint"`` and ``"int8"`` give ``int8``; ``"numeric(10,2)"`` gives ``numeric``;
    ``"timestamp(3) with time zone"`` gives ``timestamptz``; ``"text[]"`` and ``"_text"`` give
    ``_text``; ``"public.mood"`` gives ``mood``. Modifiers (length, precision) are dropped: they
    do not change how a value is stored in SQLite, so changing them is not a type change here.
    """
    t = " ".join(pg_type.strip().lower().split())
    array = False
    if t.endswith("[]"):
        array, t = True, t.split("[", 1)[0].strip()
    elif t.startswith("_"):
        array, t = True, t[1:]
    t = " ".join(_MODIFIER.sub("", t).split())
    if "." in t and not t.startswith('"'):
        t = t.rsplit(".", 1)[1]
    t = t.strip('"')
    t = _ALIASES.get(t, t)
    return "_" + t if array else t


def sqlite_type(pg_type: str) -> str:
    """The SQLite column type for a PostgreSQL type (any spelling, see :func:`canonical_type`)."""
    t = canonical_type(pg_type)
    if t.startswith("_"):
        return "TEXT"  # arrays as JSON text
    if t in _INTEGER or t in _BOOL:
        return "INTEGER"
    if t in _REAL:
        return "REAL"
    if t in _NUMERIC:
        return "NUMERIC"
    return "TEXT"  # text, uuid, timestamps (ISO), json/jsonb (JSON text), enums, bytea (hex)...


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _not_json(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# One C encoder built once (json.dumps and JSONEncoder.encode build one per call): a snapshot
# encodes a JSON value per row and column, so this is most of the conversion's cost.
_C_ENCODER = (
    json.encoder.c_make_encoder(  # type: ignore[attr-defined]
        None, _not_json, json.encoder.encode_basestring, None, ":", ",", False, False, True
    )
    if getattr(json.encoder, "c_make_encoder", None) is not None
    else None
)


def _dumps(value: Any) -> str:
    """Compact JSON text, non-ASCII kept (``{"a":[1,"é"]}``)."""
    if _C_ENCODER is not None:
        return "".join(_C_ENCODER(value, 0))
    return _ENCODER.encode(value)


def to_sqlite(value: Any) -> Any:
    """Convert one JSON value whose type is unknown: booleans to 0/1, objects/arrays to JSON."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, dict | list):
        return _dumps(value)
    return value


def _json_value(value: Any) -> Any:
    return None if value is None else _dumps(value)


def _bool_value(value: Any) -> Any:
    return int(value) if isinstance(value, bool) else value


def _timestamptz_value(value: Any) -> Any:
    # PostgreSQL's JSON form is already ISO; only a non-UTC offset (a session TimeZone other
    # than UTC) or a space separator needs the slow path, so every source stores one form.
    if not isinstance(value, str) or (
        len(value) > 19 and value[10] == "T" and value.endswith("+00:00")
    ):
        return value
    try:
        parsed = _dt.datetime.fromisoformat(value)
    except ValueError:
        return value  # infinity, -infinity, BC dates: kept as PostgreSQL wrote them
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=_dt.UTC)
    return parsed.astimezone(_dt.UTC).isoformat()


def _timestamp_value(value: Any) -> Any:
    if isinstance(value, str) and len(value) > 10 and value[10] == " ":
        return value[:10] + "T" + value[11:]
    return value


def _bytea_value(value: Any) -> Any:
    # PostgREST sends ``\\x00ff``; Realtime sends bare hex (``00ff``): store bare hex.
    if isinstance(value, str) and value.startswith("\\x"):
        return value[2:]
    return value


def converter(pg_type: str) -> Converter | None:
    """How a value of this column type is stored (None: as it comes).

    Integers and reals as numbers, booleans as 0/1, json/jsonb, arrays and composite values as
    JSON text, ``timestamptz`` as ISO 8601 in UTC (``2026-01-01T10:00:00.5+00:00``),
    ``timestamp`` as ISO 8601 with a ``T``, bytea as bare hex, everything else as text.
    """
    t = canonical_type(pg_type)
    if t.startswith("_") or t in _JSON:
        return _json_value
    if t in _BOOL:
        return _bool_value
    if t in _INTEGER or t in _REAL or t in _NUMERIC:
        return None
    if t == "timestamptz":
        return _timestamptz_value
    if t == "timestamp":
        return _timestamp_value
    if t == "bytea":
        return _bytea_value
    if t in {"text", "varchar", "bpchar", "uuid", "name", "date", "time", "citext"}:
        return None
    return to_sqlite  # enums, composites, domains, extension types: JSON text if structured


def row_function(
    columns: Sequence[tuple[str, str]],
) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """A function turning a row dict into the stored tuple, compiled for these columns.

    The snapshot calls it once per row, so it is generated as straight-line code (one
    expression per column, the common conversions inlined) rather than a loop over
    converters; a row lacking a column (a partial record) takes the slow path.
    """
    names = [c for c, _ in columns]
    env: dict[str, Any] = {"_dumps": _dumps, "_tstz": _timestamptz_value}
    lines = ["def values(r):"]
    items = []
    for i, (name, typ) in enumerate(columns):
        conv = converter(typ)
        get = f"r[{name!r}]"
        if conv is None:
            items.append(get)
            continue
        lines.append(f"    v{i} = {get}")
        v = f"v{i}"
        if conv is _json_value:
            items.append(f"(None if {v} is None else _dumps({v}))")
        elif conv is _bool_value:
            items.append(f"(int({v}) if {v}.__class__ is bool else {v})")
        elif conv is _timestamptz_value:
            items.append(f"({v} if {v} is None or ({v}.__class__ is str and {v}[10:11] == 'T'"
                         f" and {v}.endswith('+00:00')) else _tstz({v}))")
        else:
            env[f"_c{i}"] = conv
            items.append(f"_c{i}({v})")
    lines.append(f"    return ({', '.join(items)}{',' if len(items) == 1 else ''})")
    exec("\n".join(lines), env)  # column names enter only as repr()-quoted literals
    fast: Callable[[Mapping[str, Any]], tuple[Any, ...]] = env["values"]
    convs = [converter(t) for _, t in columns]

    def values(row: Mapping[str, Any]) -> tuple[Any, ...]:
        try:
            return fast(row)
        except KeyError:  # a partial row: missing columns are NULL
            return tuple(
                (f(row.get(c)) if f is not None else row.get(c))
                for c, f in zip(names, convs, strict=True)
            )

    return values


dumps = _dumps
