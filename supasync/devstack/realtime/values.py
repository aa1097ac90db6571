"""Render column values (their PostgreSQL text form) as the JSON that ``to_jsonb`` gives.

The real server casts every wal2json value to its column type and passes it through
``to_jsonb`` (realtime-protocol.md §5.2, ``realtime.cast``). We do the same, in two tiers:

* a fast path in Python (:func:`render_fast`) for types whose text form maps directly onto
  JSON: integers, floats, numeric, bool, the string types, uuid, jsonb, timestamp(tz) and
  date (ISO DateStyle), and bytea;
* everything else (json, arrays, time, interval, enums, composites, domains, extension
  types...) through PostgreSQL itself, batched: one round trip per batch renders every
  pending value, grouped per column type (:class:`SqlRenderer`).

One deliberate exception to "exactly like to_jsonb": bytea is sent as bare hex digits
(``"00ff"``), as the real server does (wal2json's form passed through ``realtime.cast``).

Numbers keep their exact digits: a non-integral number becomes an :class:`ExactNumber`, a
``float`` (so ``json.dumps`` still works) that remembers the text PostgreSQL would print;
:func:`dumps` writes that text verbatim (``1.50`` stays ``1.50``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, Final

import psycopg

#: The JSON value of a column, as Python objects.
JsonValue = Any


class ExactNumber(float):
    """A JSON number that remembers its exact decimal text (``text``)."""

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> ExactNumber:
        obj = super().__new__(cls, text)
        obj.text = text
        return obj

    def __reduce__(self) -> tuple[Any, ...]:
        return (ExactNumber, (self.text,))


def exact_or_float(text: str) -> float:
    """``text`` as a float when Python prints it back identically, else an
    :class:`ExactNumber`. Keeping ExactNumber rare lets the wire layer use the C JSON encoder
    for almost every frame and fall back to :func:`dumps` only when exact digits matter."""
    value = float(text)
    return value if repr(value) == text else ExactNumber(text)


def contains_exact(obj: Any) -> bool:
    """Whether ``obj`` holds an :class:`ExactNumber` anywhere (dicts and lists walked)."""
    if isinstance(obj, ExactNumber):
        return True
    if isinstance(obj, dict):
        return any(contains_exact(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return any(contains_exact(v) for v in obj)
    return False


_NON_FINITE: Final = frozenset({"NaN", "Infinity", "-Infinity"})


def _number(text: str) -> JsonValue:
    # to_jsonb turns a numeric-category value into a jsonb numeric through numeric_in,
    # so exponents are expanded and -0 becomes 0; NaN and infinities become strings.
    if text in _NON_FINITE:
        return text
    if "e" not in text and "E" not in text:
        if "." in text:
            if text.startswith("-") and text.strip("-0.") == "":
                text = text[1:]  # numeric has no negative zero
            return exact_or_float(text)
        return int(text)
    try:
        d = Decimal(text)
    except InvalidOperation:  # pragma: no cover - PostgreSQL never prints this
        return text
    fixed = format(d, "f")
    if d == 0 and fixed.startswith("-"):
        fixed = fixed[1:]
    return exact_or_float(fixed) if "." in fixed else int(fixed)


def _float(text: str) -> JsonValue:
    if text in _NON_FINITE:
        return text
    if text == "-0":
        return 0
    return _number(text)


def _numeric(text: str) -> JsonValue:
    if text in _NON_FINITE:
        return text
    return exact_or_float(text) if "." in text else int(text)


def _bool(text: str) -> JsonValue:
    return text == "t"


def _jsonb(text: str) -> JsonValue:
    # jsonb's text output is already canonical (keys ordered and de-duplicated, numbers in
    # numeric form), which is exactly what to_jsonb(jsonb) gives back.
    return json.loads(text, parse_float=exact_or_float)


def _same(text: str) -> JsonValue:
    return text


class _NeedsSql(Exception):
    """The fast path declines this value; render it through PostgreSQL."""


def _offset(tz: str) -> str:
    # ISO DateStyle prints "+00" or "+05:30"; JSON (XSD) form always has minutes.
    if len(tz) == 3:
        return tz + ":00"
    if len(tz) == 6 and tz[3] == ":":
        return tz
    raise _NeedsSql  # offsets with seconds (historic local mean time)


def _timestamptz(text: str) -> JsonValue:
    # "2026-01-02 03:04:05.123+00" -> "2026-01-02T03:04:05.123+00:00" (DateStyle ISO, the
    # feed's session setting). BC years and odd offsets go to SQL.
    if text in ("infinity", "-infinity"):
        return text
    if text.endswith(" BC") or len(text) < 22 or text[10] != " ":
        raise _NeedsSql
    cut = max(text.rfind("+"), text.rfind("-"))
    if cut < 19:
        raise _NeedsSql
    return text[:10] + "T" + text[11:cut] + _offset(text[cut:])


def _timestamp(text: str) -> JsonValue:
    if text in ("infinity", "-infinity"):
        return text
    if text.endswith(" BC") or len(text) < 19 or text[10] != " ":
        raise _NeedsSql
    return text[:10] + "T" + text[11:]


def _bytea(text: str) -> JsonValue:
    # The one deliberate difference from to_jsonb (which gives "\\x00ff"): wal2json emits
    # bytea as bare hex and the server's realtime.cast passes that string through, so
    # clients get "00ff" (realtime-protocol.md §5.2). Needs bytea_output = hex.
    return text[2:] if text.startswith("\\x") else text


def _date(text: str) -> JsonValue:
    if text.endswith(" BC"):
        raise _NeedsSql
    return text


# Built-in type OIDs are fixed (pg_type.dat); extension types have no fixed OID and always
# take the SQL path.
_FAST: Final[dict[int, Callable[[str], JsonValue]]] = {
    16: _bool,  # bool
    20: int,  # int8
    21: int,  # int2
    23: int,  # int4
    700: _float,  # float4
    701: _float,  # float8
    1700: _numeric,  # numeric
    25: _same,  # text
    1043: _same,  # varchar
    1042: _same,  # bpchar (keeps its padding, like to_jsonb)
    19: _same,  # name
    18: _same,  # "char"
    2950: _same,  # uuid
    26: _same,  # oid: to_jsonb renders it as a string
    3802: _jsonb,  # jsonb
    1184: _timestamptz,  # timestamptz (DateStyle ISO)
    1114: _timestamp,  # timestamp (DateStyle ISO)
    1082: _date,  # date (DateStyle ISO)
    17: _bytea,  # bytea (hex output): bare hex digits, like the real server
}


def has_fast_path(type_oid: int) -> bool:
    return type_oid in _FAST


def render_fast(type_oid: int, text: str | None) -> JsonValue:
    """The ``to_jsonb`` value of ``text`` for a fast-path type. ``None`` renders as ``None``.

    Raises ``KeyError`` for types without a fast path (see :func:`has_fast_path`) and
    :class:`NeedsSql` for the rare values the fast path leaves to PostgreSQL (BC dates).
    Date/time text must come from a session with ``DateStyle`` ISO.
    """
    if text is None:
        return None
    return _FAST[type_oid](text)


NeedsSql = _NeedsSql


class SqlRenderer:
    """Render values of any type through PostgreSQL's ``to_jsonb``, batched.

    Usage: :meth:`add` every (type, text) pair, getting back a slot index; then ``await
    render(conn)`` once; then :meth:`value` per slot. Fast-path types never reach SQL.
    Type names are read from ``pg_catalog`` by OID (``format_type``), never taken from input.
    """

    def __init__(self, type_names: dict[tuple[int, int], str]) -> None:
        # shared cache (oid, typmod) -> format_type(...) text
        self._type_names = type_names
        self._pending: dict[tuple[int, int], list[str]] = {}
        self._results: dict[tuple[int, int], list[JsonValue]] = {}

    def add(self, type_oid: int, typmod: int, text: str) -> tuple[tuple[int, int], int]:
        key = (type_oid, typmod)
        bucket = self._pending.setdefault(key, [])
        bucket.append(text)
        return key, len(bucket) - 1

    def value(self, slot: tuple[tuple[int, int], int]) -> JsonValue:
        key, i = slot
        return self._results[key][i]

    @property
    def empty(self) -> bool:
        return not self._pending

    async def prepare(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Look up the type names not cached yet (call before :meth:`sql_parts`)."""
        missing = [k for k in self._pending if k not in self._type_names]
        if missing:
            await self._load_type_names(conn, missing)

    def sql_parts(self) -> tuple[list[str], list[Any], list[tuple[int, int]]]:
        """Select-list items (one array per type), their parameters, and the type keys, so a
        caller can fold the rendering into a statement of its own; feed the fetched arrays
        back through :meth:`accept`."""
        keys = list(self._pending)
        parts = []
        params: list[Any] = []
        for key in keys:
            # One column per type; with ordinality keeps the output in input order.
            parts.append(
                f"array(select to_jsonb(x.v::{self._type_names[key]})::text"
                " from unnest(%s::text[]) with ordinality as x(v, i) order by x.i)"
            )
            params.append(self._pending[key])
        return parts, params, keys

    def accept(self, keys: Sequence[tuple[int, int]], arrays: Sequence[Any]) -> None:
        for key, texts in zip(keys, arrays, strict=True):
            self._results[key] = [json.loads(t, parse_float=exact_or_float) for t in texts]
            del self._pending[key]

    async def render(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Render everything added so far in one round trip."""
        if not self._pending:
            return
        await self.prepare(conn)
        parts, params, keys = self.sql_parts()
        cur = await conn.execute("select " + ", ".join(parts), params)
        row = await cur.fetchone()
        assert row is not None
        self.accept(keys, row)

    async def _load_type_names(
        self, conn: psycopg.AsyncConnection[Any], keys: Sequence[tuple[int, int]]
    ) -> None:
        cur = await conn.execute(
            "select o, m, format_type(o, nullif(m, -1))"
            " from unnest(%s::oid[], %s::int[]) as x(o, m)",
            [[k[0] for k in keys], [k[1] for k in keys]],
        )
        for oid, mod, name in await cur.fetchall():
            self._type_names[(int(oid), int(mod))] = name


async def render_values(
    conn: psycopg.AsyncConnection[Any], items: Iterable[tuple[int, int, str | None]]
) -> list[JsonValue]:
    """Render (type oid, typmod, text) triples in one go; convenience for tests and tools."""
    items = list(items)
    renderer = SqlRenderer({})
    slots: list[Any] = []
    for oid, mod, text in items:
        if text is None:
            slots.append(("none",))
        elif has_fast_path(oid) and (fast := _try_fast(oid, text)) is not _DECLINED:
            slots.append(("fast", fast))
        else:
            slots.append(("sql", renderer.add(oid, mod, text)))
    await renderer.render(conn)
    out: list[JsonValue] = []
    for s in slots:
        if s[0] == "none":
            out.append(None)
        elif s[0] == "fast":
            out.append(s[1])
        else:
            out.append(renderer.value(s[1]))
    return out


_DECLINED: Final = object()


def _try_fast(oid: int, text: str) -> JsonValue:
    try:
        return render_fast(oid, text)
    except _NeedsSql:
        return _DECLINED


def try_render_fast(oid: int, text: str) -> tuple[bool, JsonValue]:
    """``(True, value)`` when the fast path renders ``text``, else ``(False, None)``."""
    if oid not in _FAST:
        return False, None
    value = _try_fast(oid, text)
    if value is _DECLINED:
        return False, None
    return True, value


# -- exact JSON text ----------------------------------------------------------------------


def _encode(obj: Any, out: list[str]) -> None:
    if isinstance(obj, ExactNumber):
        out.append(obj.text)
    elif isinstance(obj, dict):
        out.append("{")
        first = True
        for k, v in obj.items():
            if not first:
                out.append(",")
            first = False
            out.append(json.dumps(str(k), ensure_ascii=False))
            out.append(":")
            _encode(v, out)
        out.append("}")
    elif isinstance(obj, list | tuple):
        out.append("[")
        for i, v in enumerate(obj):
            if i:
                out.append(",")
            _encode(v, out)
        out.append("]")
    else:
        out.append(json.dumps(obj, ensure_ascii=False))


def dumps(obj: Any) -> str:
    """Compact JSON like ``json.dumps``, but numbers carry PostgreSQL's exact digits."""
    out: list[str] = []
    _encode(obj, out)
    return "".join(out)


def jsonb_text_length(value: JsonValue) -> int:
    """Bytes of the value's jsonb text form (``value::text``), for the 413 column cut."""
    if isinstance(value, ExactNumber):
        return len(value.text)
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return len(json.dumps(value))
    if isinstance(value, str):
        return len(json.dumps(value, ensure_ascii=False).encode())
    out: list[str] = []
    _encode(value, out)
    # jsonb prints ", " and ": " separators; close enough for a 64-byte threshold
    text = "".join(out)
    return len(text.encode()) + text.count(",") + text.count(":")
