"""How PostgreSQL values become SQLite values in a mirror (sans-I/O, pure functions).

* :func:`canonical_type` - one spelling per PostgreSQL type, whether it comes from PostgREST's
  OpenAPI root (``format_type``: ``bigint``, ``numeric(10,2)``, ``text[]``) or from a Realtime
  change's column list (``typname``: ``int8``, ``numeric``, ``_text``).
* :func:`sqlite_type` - the declared SQLite type of a column.
* :func:`converter` - how a value (as PostgREST/Realtime render it in JSON) is stored.
* :func:`row_function` - a compiled function turning a row dict into the stored tuple (live
  changes, repairs), generated as straight-line code.
* :func:`page_decoder` - the snapshot's path: a whole PostgREST page (the JSON array's bytes)
  decoded by msgspec straight into the stored tuples, with no dict per row. It stores exactly
  what :func:`row_function` stores for the same rows (``tests/unit/test_mirror_fast_page.py``
  holds both paths to that).
"""

from __future__ import annotations

import datetime as _dt
import json
import json.encoder
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

__all__ = [
    "Converter",
    "DecodedPage",
    "PageDecodeError",
    "PageDecoder",
    "canonical_type",
    "converter",
    "decoder",
    "dumps",
    "page_decoder",
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


def _json_text(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _bool_of(value: Any) -> Any:
    return bool(value) if isinstance(value, int) else value


def _bytea_of(value: Any) -> Any:
    return "\\x" + value if isinstance(value, str) else value


def _maybe_json(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def decoder(pg_type: str) -> Converter | None:
    """The inverse of :func:`converter`: a stored value back as PostgREST renders it in JSON
    (None: as stored). Booleans come back as ``True``/``False``, JSON text as Python values,
    bytea as ``\\x``-prefixed hex; timestamps stay ISO 8601 text (UTC for ``timestamptz``)."""
    t = canonical_type(pg_type)
    if t.startswith("_") or t in _JSON:
        return _json_text
    if t in _BOOL:
        return _bool_of
    if t == "bytea":
        return _bytea_of
    if converter(t) is to_sqlite:
        return _maybe_json
    return None


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


# -- whole pages (the snapshot) -------------------------------------------------------------

# Array element types whose JSON PostgreSQL writes itself: numbers, true/false, or strings
# through its escape_json (the same escapes as Python's encoder: \" \\ \b \f \n \r \t,
# other control characters as lower-case \u00XX, nothing else escaped). ``json`` is not
# among them: its text is kept as the user wrote it (any escapes, spacing, duplicate keys).
_CANONICAL_ELEMENTS = frozenset({
    *_INTEGER, *_REAL, *_NUMERIC, *_BOOL, "jsonb", "text", "varchar", "bpchar", "name", "citext",
    "uuid", "date", "time", "timetz", "timestamp", "timestamptz", "interval",
})


def _canonical_json(t: str) -> bool:
    """Whether PostgreSQL's JSON text of a value of canonical type *t* equals Python's compact
    re-encoding once whitespace between tokens is removed, for values without a non-integer
    number: jsonb (keys unique, strings through escape_json, integers as plain digits) and
    arrays of the element types above."""
    return t == "jsonb" or (t.startswith("_") and t[1:] in _CANONICAL_ELEMENTS)


class PageDecodeError(ValueError):
    """The page cannot take the fast path (not an array of objects, a number out of range, a
    lone surrogate...); the caller decodes it with :mod:`json` instead."""


_RAW_NULL = msgspec.Raw(b"null")
_BOOLS: dict[Any, Any] = {True: 1, False: 0, None: None}


def _canonical_text(text: str) -> str:
    # The slow path of a canonical JSON column: Python's own re-encoding.
    return _dumps(json.loads(text))


# Checks of a whole page's column, and the per-value conversion of a column that fails one.
# A check is a few C passes over the column (joins and counts) instead of a few Python
# operations per value; it answers True only if the conversion would return every value
# unchanged, so a page stores the same values either way (tests/unit/test_mirror_fast_page.py).


def _json_clean(column: list[str]) -> bool:
    # Compact JSON texts (str of the msgspec.Raw): none is the JSON null, none has a number
    # that is not an integer. The separator cannot form '.', 'e+', 'e-' or 'null' across values.
    joined = "\x00" + "\x00".join(column) + "\x00"
    return ("." not in joined and "e+" not in joined and "e-" not in joined
            and "\x00null\x00" not in joined)


def _json_fix(text: str) -> str | None:
    if text == "null":
        return None
    if "." not in text and "e+" not in text and "e-" not in text:
        return text
    return _canonical_text(text)


_TENTH = operator.itemgetter(10)


def _timestamptz_clean(column: list[Any]) -> bool:
    # Every value is None, falsy (which _timestamptz_value returns unchanged), or a string
    # with "T" at index 10 that ends in "+00:00" (PostgreSQL's JSON form in a UTC session).
    # One "\n" per value (none inside one) makes each "+00:00\n" the end of a distinct value.
    try:
        values = list(filter(None, column))
        n = len(values)
        if not n:
            return True
        joined = "\n".join(values) + "\n"
        return (joined.count("\n") == n and joined.count("+00:00\n") == n
                and "".join(map(_TENTH, values)).count("T") == n)
    except (TypeError, IndexError):  # not a string; shorter than 11 characters
        return False


def _timestamptz_fix(value: Any) -> Any:
    if value is None or (value.__class__ is str and value[10:11] == "T"
                         and value.endswith("+00:00")):
        return value
    return _timestamptz_value(value)


class DecodedPage:
    """One decoded page: the stored values of every row, row after row, in column order
    (:attr:`flat`: ``width`` values per row), as an INSERT of many rows takes them.

    Canonical JSON columns (jsonb, arrays of canonical elements) hold their compact JSON
    text, as stored.
    """

    __slots__ = ("_decoder", "_structs", "count", "flat", "width")

    def __init__(self, flat: list[Any], structs: list[Any], decoder: PageDecoder) -> None:
        self.flat = flat
        self.count = len(structs)
        self.width = len(decoder.params)
        self._structs = structs
        self._decoder = decoder

    @property
    def rows(self) -> list[tuple[Any, ...]]:
        """The stored tuples, one per row."""
        flat, width = self.flat, self.width
        return [tuple(flat[i : i + width]) for i in range(0, len(flat), width)]

    def values(self, column: str) -> list[Any]:
        """*column*'s values as PostgREST sent them (decoded JSON, before conversion), in
        row order; None where a row lacks the column."""
        field, raw = self._decoder.fields[column]
        got = [getattr(s, field) for s in self._structs]
        if raw:
            return [json.loads(bytes(v)) for v in got]
        return got


class PageDecoder:
    """Decodes PostgREST pages of one table shape into stored tuples (see :func:`page_decoder`).

    Attributes:
        params: per column, the SQL that takes its parameter (``?``: every value arrives
            as stored; canonical JSON columns are compacted with the whole page in C).
        fields: column name -> (struct field name, whether the field holds raw JSON).
    """

    def __init__(self, columns: Sequence[tuple[str, str]]) -> None:
        fields: list[tuple[str, Any, Any]] = []
        rename: dict[str, str] = {}
        params: list[str] = []
        items: list[str] = []
        binds: list[str] = []
        env: dict[str, Any] = {
            "_dumps": _dumps, "_B": _BOOLS, "_to_sqlite": to_sqlite, "_BX": "\\x",
        }
        self.fields: dict[str, tuple[str, bool]] = {}
        self._compact = False
        # Columns whose values are checked page by page rather than value by value: (index,
        # whether a page's column needs no change, the per-value conversion when it does).
        fixups: list[tuple[int, Callable[[list[Any]], bool], Callable[[Any], Any]]] = []
        for i, (name, typ) in enumerate(columns):
            t = canonical_type(typ)
            conv = converter(t)
            f, v = f"f{i}", f"v{i}"
            get = f"s.{f}"
            rename[f] = name
            raw = conv is _json_value and _canonical_json(t)
            self.fields[name] = (f, raw)
            if raw:
                # Kept as PostgreSQL wrote it, compacted with the whole page by msgspec's
                # json.format (whitespace between tokens dropped, every token kept as written,
                # as SQLite's json() does, in one C pass per page instead of one json() call
                # per value): equal to Python's re-encoding unless a number is not an
                # integer (Python would print 1.50 as 1.5). PostgreSQL writes such numbers
                # with a '.' or an exponent sign, so text holding one of those (in a string
                # or not) takes Python's path (_json_fix); JSON null is SQL NULL.
                fields.append((f, msgspec.Raw, _RAW_NULL))
                params.append("?")
                self._compact = True
                items.append(f"str({get}, 'utf-8')")
                fixups.append((i, _json_clean, _json_fix))
                continue
            fields.append((f, Any, None))
            params.append("?")
            if conv is None:
                items.append(get)
                continue
            if conv is _bool_value:
                items.append(f"_B[{get}]")  # anything but true/false/null: KeyError, json path
                continue
            if conv is _timestamptz_value:
                items.append(get)
                fixups.append((i, _timestamptz_clean, _timestamptz_fix))
                continue
            binds.append(f"{v} = {get}")
            if conv is _json_value:
                items.append(f"(None if {v} is None else _dumps({v}))")
            elif conv is _timestamp_value:
                items.append(f"({v}[:10] + 'T' + {v}[11:] if {v}.__class__ is str and len({v})"
                             f" > 10 and {v}[10] == ' ' else {v})")
            elif conv is _bytea_value:
                items.append(f"({v}[2:] if {v}.__class__ is str and {v}.startswith(_BX)"
                             f" else {v})")
            else:
                items.append(f"({v} if {v} is None or {v}.__class__ is str else _to_sqlite({v}))")
        # gc=False: a row struct holds only decoded JSON, which cannot form a cycle.
        struct = msgspec.defstruct("MirrorRow", fields, rename=rename, gc=False)
        self._decoder = msgspec.json.Decoder(list[struct])  # type: ignore[valid-type]
        # One flat list for the page (what a many-row INSERT takes): no tuple per row kept.
        code = "\n".join([
            "def build(rows):", "    out = []", "    for s in rows:",
            *(f"        {b}" for b in binds),
            f"        out += ({', '.join(items)}{',' if len(items) == 1 else ''})",
            "    return out",
        ])
        exec(code, env)  # column names never enter the code: fields are f0, f1, ...
        self._build: Callable[[list[Any]], list[Any]] = env["build"]
        self._fixups = tuple(fixups)
        self.params = tuple(params)

    def decode(self, body: bytes) -> DecodedPage:
        """The page's rows as stored tuples.

        Raises:
            PageDecodeError: the body is not a JSON array of objects msgspec decodes exactly
                as :func:`json.loads` would, or a value is not what its column type sends.
        """
        try:
            if self._compact:  # whitespace between tokens only: the same values decode
                body = msgspec.json.format(body, indent=-1)
            structs = self._decoder.decode(body)
            flat = self._build(structs)
            width = len(self.params)
            for i, clean, fix in self._fixups:
                column = flat[i::width]
                if not clean(column):
                    flat[i::width] = list(map(fix, column))
        except (msgspec.DecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PageDecodeError(str(exc)) from exc
        return DecodedPage(flat, structs, self)


def page_decoder(columns: Sequence[tuple[str, str]]) -> PageDecoder:
    """A :class:`PageDecoder` for these (column, PostgreSQL type) pairs.

    Why it stores the same values as :func:`row_function` fed with ``json.loads`` of the page:
    msgspec decodes JSON scalars to the same Python values as :mod:`json` (floats correctly
    rounded, integers unbounded; it refuses, rather than differs on, lone surrogates and
    numbers out of float range: :class:`PageDecodeError`), the conversions are the
    converters' own code inlined, and canonical JSON columns keep PostgreSQL's text
    compacted by ``msgspec.json.format`` (tokens as written) only where that is provably the
    same text (see :func:`_canonical_json`).
    """
    return PageDecoder(columns)


dumps = _dumps
