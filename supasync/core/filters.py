"""Filters: one immutable model, a parser, a builder, and three renderings.

A filter is an AND of conditions ``column [not.]op value`` - the only shape Supabase Realtime
accepts (``docs/realtime-protocol.md`` §5.1; there is no OR). The same object renders as

* the Realtime filter string (:meth:`Filter.to_realtime`) for the channel join,
* PostgREST query parameters (:meth:`Filter.to_postgrest`) for repair and snapshots,
* a local predicate (:meth:`Filter.matches`) for DELETEs, replayed rows and older servers.

Build one with :func:`col`, or parse text with :func:`parse_filter`::

    f = col("status").eq("open") & col("priority").in_([1, 2]) & ~col("owner").is_(None)
    f.to_realtime()   # 'status=eq.open,priority=in.(1,2),owner=not.is.null'
    f.to_postgrest()  # [('status', 'eq.open'), ('priority', 'in.(1,2)'), ('owner', 'not.is.null')]
    f.matches({"status": "open", "priority": 2, "owner": "u1"})   # True

Realtime grammar (§5.1): segments separated by commas (not inside parentheses or double quotes),
each ``column=[not.]op.value``; ``in`` takes ``(a,b,"c,d")`` with at most 100 values; a value in
double quotes is unquoted with backslash escapes (``\\"`` and ``\\\\``); ``is`` takes
``null``/``true``/``false``/``unknown``. Values are kept as the strings the server receives; the
server casts them to the column's type, and :meth:`Filter.matches` does the same against the
row's typed JSON values.

Local semantics follow the server's SQL (§5.3): a NULL or absent column fails every ordinary
operator, negated or not; ``is`` and ``isdistinct`` are NULL-aware. Approximations (documented,
deliberate): text compares by code point (PostgreSQL uses the database collation); ``match`` uses
Python's ``re`` (PostgreSQL uses POSIX ARE - the common subset agrees); ``ilike``/``imatch`` fold
case with ``re.IGNORECASE`` (PostgreSQL uses the locale's ``lower()``); json/jsonb and array values
compare only for (in)equality, as JSON (``{a,b}`` array-literal text is not parsed); an unquoted
``null`` inside an ``in`` list is the string "null" here (PostgreSQL's array literal makes it NULL,
which can never match). A filter value the row's type cannot take (``abc`` for a number) fails the
condition, negated or not; the server would have refused such a subscription.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Literal, cast, get_args

from .errors import FilterError

__all__ = [
    "ALL",
    "IS_VALUES",
    "MAX_IN_VALUES",
    "OPERATORS",
    "And",
    "ColumnRef",
    "Condition",
    "Filter",
    "FilterOp",
    "as_filter",
    "col",
    "parse_filter",
]

FilterOp = Literal[
    "eq", "neq", "lt", "lte", "gt", "gte", "in", "like", "ilike", "is", "match", "imatch",
    "isdistinct",
]
OPERATORS: Final[tuple[str, ...]] = get_args(FilterOp)
#: Operators servers before 2026-06 accept (§5.1): single segment, no ``not.``.
LEGACY_OPERATORS: Final = frozenset({"eq", "neq", "lt", "lte", "gt", "gte", "in"})
IS_VALUES: Final = frozenset({"null", "true", "false", "unknown"})
#: The server rejects ``in`` lists longer than this (§5.1, §10).
MAX_IN_VALUES: Final = 100

# Characters that force quoting in the Realtime grammar (same set realtime-js quotes, §5.1).
_RT_SPECIAL: Final = frozenset(',()"\\')
# PostgREST's reserved characters inside in-lists: , . : ( ) plus the quote and backslash.
_PGRST_SPECIAL: Final = frozenset(',.:()"\\')
# Characters a column name cannot hold without breaking the Realtime grammar.
_COLUMN_FORBIDDEN: Final = frozenset('=,()"\\')


class Filter:
    """An AND of :class:`Condition` objects; :class:`Condition` and :class:`And` are the forms.

    Two filters are equal when they have the same conditions in the same order, whichever form
    they take (``Condition(...) == And((Condition(...),))``).
    """

    __slots__ = ()

    @property
    def conditions(self) -> tuple[Condition, ...]:
        """The AND-ed conditions, in order (empty for :data:`ALL`)."""
        raise NotImplementedError

    @property
    def columns(self) -> frozenset[str]:
        """Every column the filter reads."""
        return frozenset(c.column for c in self.conditions)

    @property
    def legacy_compatible(self) -> bool:
        """Whether servers before 2026-06 can run this filter (§5.1).

        True for no condition, or one non-negated condition with eq/neq/lt/lte/gt/gte/in whose
        rendering needs no double quotes (old servers do not unquote).
        """
        conds = self.conditions
        if not conds:
            return True
        if len(conds) != 1:
            return False
        c = conds[0]
        return c.op in LEGACY_OPERATORS and not c.negated and '"' not in c.to_realtime()

    def to_realtime(self) -> str:
        """The Realtime ``filter`` string; ``""`` for :data:`ALL`.

        Values containing ``, ( ) " \\`` or surrounding whitespace are double-quoted with
        backslash escapes, so ``parse_filter(f.to_realtime()) == f``.
        """
        return ",".join(_render_realtime(c) for c in self.conditions)

    def to_postgrest(self) -> list[tuple[str, str]]:
        """PostgREST query parameters, one ``(column, "[not.]op.value")`` per condition.

        ``in`` lists use PostgREST's quoting (items with ``, . : ( ) " \\``, surrounding space or
        empty are double-quoted, ``"`` and ``\\`` backslash-escaped). Repeated columns give
        repeated parameters, which PostgREST AND-s. URL-encoding is left to the HTTP client.

        One unavoidable difference: PostgREST reads ``*`` in like/ilike patterns as ``%`` and has
        no escape for it, so a literal ``*`` is sent as ``_`` (any one character) - PostgREST then
        returns a superset; re-check rows with :meth:`matches`.
        """
        return [(c.column, _render_postgrest(c)) for c in self.conditions]

    def matches(self, row: Mapping[str, Any]) -> bool:
        """Whether *row* (typed JSON values, as in a change's record) passes every condition."""
        return all(_evaluate(c, row) for c in self.conditions)

    def __and__(self, other: Filter) -> Filter:
        if not isinstance(other, Filter):
            return NotImplemented
        conds = self.conditions + other.conditions
        return conds[0] if len(conds) == 1 else And(conds)

    def __or__(self, other: object) -> Filter:
        raise FilterError(
            "Realtime filters cannot express OR; subscribe twice (one filter each) or "
            "subscribe without the condition and filter locally with .matches()"
        )

    def __invert__(self) -> Filter:
        conds = self.conditions
        if len(conds) == 1:
            return conds[0].negate()
        raise FilterError(
            f"cannot negate an AND of {len(conds)} conditions: the Realtime grammar has no OR; "
            "negate single conditions instead"
        )

    def __str__(self) -> str:
        return self.to_realtime()


@dataclass(frozen=True, slots=True)
class Condition(Filter):
    """One condition ``column [not.]op value``.

    ``value`` is the text the server receives: a ``str`` for every operator except ``in``, which
    takes a tuple of strings; ``is`` values are normalised to lower case and must be one of
    null/true/false/unknown. Build conditions with :func:`col` rather than by hand: it turns
    Python values into that text.

    Raises:
        FilterError: bad column name, unknown operator, wrong value type, bad ``is`` value, or
            more than 100 ``in`` values.
    """

    column: str
    op: FilterOp
    value: str | tuple[str, ...]
    negated: bool = False

    def __post_init__(self) -> None:
        _check_column(self.column)
        if self.op not in OPERATORS:
            raise FilterError(
                f"unknown operator {self.op!r}; expected one of {', '.join(OPERATORS)}"
            )
        if self.op == "in":
            value = self.value
            if isinstance(value, str) or not isinstance(value, tuple | list):
                raise FilterError(
                    f"`in` on {self.column!r} needs a tuple of strings, got {value!r}"
                )
            items = tuple(value)
            if not all(isinstance(v, str) for v in items):
                raise FilterError(f"`in` values on {self.column!r} must be strings: {items!r}")
            if len(items) > MAX_IN_VALUES:
                raise FilterError(
                    f"`in` on {self.column!r} has {len(items)} values; the server allows at "
                    f"most {MAX_IN_VALUES}: split the subscription or filter locally"
                )
            object.__setattr__(self, "value", items)
        elif not isinstance(self.value, str):
            raise FilterError(
                f"the value of {self.column}={self.op} must be a string, got {self.value!r}; "
                f"use col({self.column!r}).{self.op}(...) to convert Python values"
            )
        elif self.op == "is":
            lowered = self.value.lower()
            if lowered not in IS_VALUES:
                raise FilterError(
                    f"`is` takes null, true, false or unknown, not {self.value!r}"
                )
            object.__setattr__(self, "value", lowered)

    @property
    def conditions(self) -> tuple[Condition, ...]:
        return (self,)

    def negate(self) -> Condition:
        """The same condition with ``not.`` toggled."""
        return Condition(self.column, self.op, self.value, not self.negated)


@dataclass(frozen=True, slots=True, eq=False)
class And(Filter):
    """An AND of conditions (nested :class:`And` given to the constructor are flattened)."""

    items: tuple[Filter, ...]

    def __post_init__(self) -> None:
        flat: list[Condition] = []
        for item in self.items:
            if not isinstance(item, Filter):
                raise FilterError(f"And() takes conditions, got {item!r}")
            flat.extend(item.conditions)
        object.__setattr__(self, "items", tuple(flat))

    @property
    def conditions(self) -> tuple[Condition, ...]:
        # __post_init__ flattened every item to a Condition.
        return cast(tuple[Condition, ...], self.items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Filter):
            return NotImplemented
        return self.items == other.conditions

    def __hash__(self) -> int:
        return hash(self.items[0]) if len(self.items) == 1 else hash(self.items)

    def __repr__(self) -> str:
        return "ALL" if not self.items else f"And({self.items!r})"


#: The empty filter: matches every row, renders as ``""`` and ``[]``.
ALL: Final[Filter] = And(())


# --------------------------------------------------------------------------- builder


def _check_column(name: object, text: str = "", offset: int = 0) -> None:
    if not isinstance(name, str) or not name:
        raise FilterError("missing column name before '='", text, offset if text else None)
    if name != name.strip():
        pos = offset if name[0].isspace() else offset + len(name.rstrip())
        raise FilterError(
            f"column name {name!r} has surrounding whitespace; remove it",
            text,
            pos if text else None,
        )
    for i, ch in enumerate(name):
        if ch in _COLUMN_FORBIDDEN:
            raise FilterError(
                f"column name {name!r} contains {ch!r}, which the filter grammar reserves",
                text,
                offset + i if text else None,
            )


def _to_text(value: object, where: str) -> str:
    """The filter text for a Python value (what PostgreSQL would accept as input)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, float):
        # PostgreSQL spells the special values NaN, Infinity and -Infinity.
        special = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
        return special.get(repr(value), repr(value))
    if isinstance(value, _dt.datetime | _dt.date | _dt.time):
        return value.isoformat()
    if value is None:
        raise FilterError(
            f"{where}: None is never equal or unequal to anything in SQL; "
            "use .is_(None) / ~col(...).is_(None) or .isdistinct(...)"
        )
    raise FilterError(
        f"{where}: cannot use a {type(value).__name__} as a filter value; pass a str, int, "
        "float, bool, Decimal, UUID, date or datetime"
    )


class ColumnRef:
    """Builds conditions on one column: ``col("status").eq("open")``.

    ``col("x").not_.eq(1)`` and ``~col("x").eq(1)`` both give ``x=not.eq.1``.
    """

    __slots__ = ("_name", "_negated")

    def __init__(self, name: str, negated: bool = False) -> None:
        _check_column(name)
        self._name = name
        self._negated = negated

    @property
    def name(self) -> str:
        return self._name

    @property
    def not_(self) -> ColumnRef:
        """The same column, with the next condition negated."""
        return ColumnRef(self._name, not self._negated)

    def _make(self, op: FilterOp, value: object) -> Condition:
        text = _to_text(value, f"col({self._name!r}).{op}")
        return Condition(self._name, op, text, self._negated)

    def eq(self, value: object) -> Condition:
        return self._make("eq", value)

    def neq(self, value: object) -> Condition:
        return self._make("neq", value)

    def lt(self, value: object) -> Condition:
        return self._make("lt", value)

    def lte(self, value: object) -> Condition:
        return self._make("lte", value)

    def gt(self, value: object) -> Condition:
        return self._make("gt", value)

    def gte(self, value: object) -> Condition:
        return self._make("gte", value)

    def like(self, pattern: str) -> Condition:
        """SQL LIKE: ``%`` any run, ``_`` any one character, backslash escapes."""
        return self._make("like", pattern)

    def ilike(self, pattern: str) -> Condition:
        return self._make("ilike", pattern)

    def match(self, regex: str) -> Condition:
        """Regular-expression search (PostgreSQL ``~``)."""
        return self._make("match", regex)

    def imatch(self, regex: str) -> Condition:
        """Case-insensitive regular-expression search (PostgreSQL ``~*``)."""
        return self._make("imatch", regex)

    def isdistinct(self, value: object) -> Condition:
        """``IS DISTINCT FROM value``: like neq, but a NULL column counts as distinct."""
        return self._make("isdistinct", value)

    def in_(self, values: Iterable[object]) -> Condition:
        if isinstance(values, str | bytes):
            raise FilterError(
                f"col({self._name!r}).in_ takes an iterable of values, not a single string"
            )
        where = f"col({self._name!r}).in_"
        return Condition(self._name, "in", tuple(_to_text(v, where) for v in values),
                         self._negated)

    def is_(self, value: bool | str | None) -> Condition:
        """IS NULL / TRUE / FALSE / UNKNOWN, from None, True, False or ``"unknown"``."""
        if value is None:
            text = "null"
        elif isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str) and value.lower() in IS_VALUES:
            text = value.lower()
        else:
            raise FilterError(
                f"col({self._name!r}).is_ takes None, True, False or 'unknown', not {value!r}"
            )
        return Condition(self._name, "is", text, self._negated)


def col(name: str) -> ColumnRef:
    """Start a condition on column *name*."""
    return ColumnRef(name)


def as_filter(value: str | Filter | None) -> Filter:
    """``None`` -> :data:`ALL`, a string -> :func:`parse_filter`, a Filter -> itself."""
    if value is None:
        return ALL
    if isinstance(value, Filter):
        return value
    if isinstance(value, str):
        return parse_filter(value)
    raise FilterError(
        f"expected a filter string, a Filter or None, got {type(value).__name__}"
    )


# --------------------------------------------------------------------------- parser


def _split(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Split text[start:end] at commas outside double quotes and parentheses."""
    pieces: list[tuple[int, int]] = []
    parens: list[int] = []
    quote_at = -1
    piece_start = start
    i = start
    while i < end:
        ch = text[i]
        if quote_at >= 0:
            if ch == "\\":
                i += 2
                continue
            if ch == '"':
                quote_at = -1
        elif ch == '"':
            quote_at = i
        elif ch == "(":
            parens.append(i)
        elif ch == ")":
            if not parens:
                raise FilterError(
                    "unbalanced ')'; quote values that contain parentheses", text, i
                )
            parens.pop()
        elif ch == "," and not parens:
            pieces.append((piece_start, i))
            piece_start = i + 1
        i += 1
    if quote_at >= 0:
        raise FilterError(
            'unclosed double quote; close it, or escape a literal quote as \\"', text, quote_at
        )
    if parens:
        raise FilterError("unclosed '('", text, parens[-1])
    pieces.append((piece_start, end))
    return pieces


def _unquote(text: str, start: int, end: int) -> str:
    """Value text[start:end]: unquoted if it starts with a double quote, else taken as is."""
    if start >= end or text[start] != '"':
        return text[start:end]
    out: list[str] = []
    i = start + 1
    while i < end:
        ch = text[i]
        if ch == "\\" and i + 1 < end:
            out.append(text[i + 1])
            i += 2
            continue
        if ch == '"':
            if i != end - 1:
                raise FilterError(
                    "unexpected text after the closing quote; quote the whole value", text, i + 1
                )
            return "".join(out)
        out.append(ch)
        i += 1
    raise FilterError('unclosed double quote', text, start)


def _closing_paren(text: str, start: int, end: int) -> int:
    """Index of the ')' matching the '(' at *start* (quotes respected); -1 if none."""
    depth = 0
    in_quote = False
    i = start
    while i < end:
        ch = text[i]
        if in_quote:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_quote = False
        elif ch == '"':
            in_quote = True
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _parse_in(text: str, start: int, end: int) -> tuple[str, ...]:
    if start >= end or text[start] != "(":
        raise FilterError(
            "`in` filter value must be wrapped by parentheses, e.g. in.(1,2,3)", text, start
        )
    close = _closing_paren(text, start, end)
    if close < 0:
        raise FilterError("unclosed '('", text, start)
    if close != end - 1:
        raise FilterError("unexpected text after ')'", text, close + 1)
    inner_start, inner_end = start + 1, end - 1
    if inner_start == inner_end:
        return ()
    items: list[str] = []
    for s, e in _split(text, inner_start, inner_end):
        # PostgreSQL array literals ignore whitespace around unquoted elements.
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        if s == e:
            raise FilterError(
                'empty value in `in` list; write "" for an empty string', text, s
            )
        items.append(_unquote(text, s, e))
    if len(items) > MAX_IN_VALUES:
        raise FilterError(
            f"`in` list has {len(items)} values; the server allows at most {MAX_IN_VALUES}",
            text,
            start,
        )
    return tuple(items)


def _parse_segment(text: str, start: int, end: int) -> Condition:
    if not text[start:end].strip():
        raise FilterError(
            "filter must not contain empty segments (check for extra commas)", text, start
        )
    eq = text.find("=", start, end)
    if eq < 0:
        raise FilterError("expected column=op.value, found no '='", text, start)
    _check_column(text[start:eq], text, start)
    pos = eq + 1
    negated = text.startswith("not.", pos, end)
    if negated:
        pos += 4
    dot = text.find(".", pos, end)
    op = text[pos:dot] if dot >= 0 else text[pos:end]
    if op not in OPERATORS:
        hint = ""
        if op.lower() in OPERATORS:
            hint = f" (operators are lower case: {op.lower()})"
        elif op == "not":
            hint = " (only one not. is allowed)"
        raise FilterError(
            f"unknown operator {op!r}{hint}; expected one of {', '.join(OPERATORS)}", text, pos
        )
    if dot < 0:
        raise FilterError(f"missing '.' and value after {op!r}", text, end)
    vstart = dot + 1
    if op == "in":
        return Condition(text[start:eq], "in", _parse_in(text, vstart, end), negated)
    value = _unquote(text, vstart, end)
    if op == "is" and value.lower() not in IS_VALUES:
        raise FilterError(
            f"`is` takes null, true, false or unknown, not {value!r}", text, vstart
        )
    return Condition(text[start:eq], cast(FilterOp, op), value, negated)


def parse_filter(text: str) -> Filter:
    """Parse a Realtime filter string (§5.1) into a :class:`Filter`.

    Empty or whitespace-only text gives :data:`ALL`; one segment gives a :class:`Condition`,
    several an :class:`And`.

    Raises:
        FilterError: with ``position`` at the offending character: an empty segment, a missing
            ``=`` or ``.``, an unknown operator, an unclosed quote or parenthesis, an ``in`` value
            without parentheses or with more than 100 values, a bad ``is`` value, or a column
            name with reserved characters or surrounding whitespace.
    """
    if not isinstance(text, str):
        raise FilterError(f"a filter must be a string, got {type(text).__name__}")
    if not text.strip():
        return ALL
    conds = [_parse_segment(text, s, e) for s, e in _split(text, 0, len(text))]
    return conds[0] if len(conds) == 1 else And(tuple(conds))


# --------------------------------------------------------------------------- renderings


def _quote(value: str, special: frozenset[str], quote_empty: bool) -> str:
    needs = (
        (quote_empty and value == "")
        or value != value.strip()
        or any(ch in special for ch in value)
    )
    if not needs:
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _render_realtime(c: Condition) -> str:
    head = f"{c.column}={'not.' if c.negated else ''}{c.op}."
    if isinstance(c.value, tuple):
        return head + "(" + ",".join(_quote(v, _RT_SPECIAL, True) for v in c.value) + ")"
    if c.op == "is":
        return head + c.value
    return head + _quote(c.value, _RT_SPECIAL, False)


def _render_postgrest(c: Condition) -> str:
    head = f"{'not.' if c.negated else ''}{c.op}."
    if isinstance(c.value, tuple):
        return head + "(" + ",".join(_quote(v, _PGRST_SPECIAL, True) for v in c.value) + ")"
    if c.op in ("like", "ilike"):
        # PostgREST turns every '*' into '%' (no escape exists); '_' is the closest superset.
        return head + c.value.replace("*", "_")
    # Single-value operators take the rest of the parameter verbatim in PostgREST.
    return head + c.value


# --------------------------------------------------------------------------- local evaluation

_MISSING: Final = object()
_TRUE_WORDS: Final = frozenset({"t", "true", "y", "yes", "on", "1"})
_FALSE_WORDS: Final = frozenset({"f", "false", "n", "no", "off", "0"})
_TIMESTAMP_RE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
_DATE_RE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATE_PREFIX_RE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}")
_UUID_RE: Final = re.compile(r"^[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}$")


class _Uncastable(Exception):
    """The filter text cannot be cast to the row value's type (the server rejects such filters)."""


def _as_datetime(text: str) -> _dt.datetime | None:
    try:
        return _dt.datetime.fromisoformat(text.strip())
    except ValueError:
        return None


def _temporal(row_value: str, text: str) -> tuple[Any, Any] | None:
    """Row and filter as dates/datetimes when the row value is one, mirroring the server's cast
    of the filter text to the column type; None when they are not temporal."""
    if _DATE_RE.match(row_value):
        # A date column: '2026-01-01T10:00'::date is that day.
        right = _as_datetime(text) if _DATE_PREFIX_RE.match(text.strip()) else None
        left = _as_datetime(row_value)
        return (left.date(), right.date()) if left and right else None
    if not (_TIMESTAMP_RE.match(row_value) and _DATE_PREFIX_RE.match(text.strip())):
        return None
    left, right = _as_datetime(row_value), _as_datetime(text)
    if left is None or right is None:
        return None
    if left.tzinfo is None:
        # timestamp without time zone: the cast ignores any offset in the text.
        return left, right.replace(tzinfo=None)
    if right.tzinfo is None:
        # timestamptz: text without offset is read in the session zone, UTC on Supabase.
        right = right.replace(tzinfo=_dt.UTC)
    return left, right


def _coerce(row_value: Any, text: str) -> tuple[Any, Any]:
    """(row side, filter side) as comparable Python values, cast to the row value's type."""
    if isinstance(row_value, bool):
        word = text.strip().lower()
        if word in _TRUE_WORDS:
            return row_value, True
        if word in _FALSE_WORDS:
            return row_value, False
        raise _Uncastable
    if isinstance(row_value, int):
        try:
            return Decimal(row_value), Decimal(text.strip())
        except InvalidOperation:
            raise _Uncastable from None
    if isinstance(row_value, float):
        try:
            return row_value, float(text)
        except ValueError:
            raise _Uncastable from None
    if isinstance(row_value, str):
        temporal = _temporal(row_value, text)
        if temporal is not None:
            return temporal
        if _UUID_RE.match(row_value) and _UUID_RE.match(text.strip()):
            return uuid.UUID(row_value), uuid.UUID(text.strip())
        return row_value, text
    if isinstance(row_value, dict | list):
        try:
            return row_value, json.loads(text)
        except ValueError:
            raise _Uncastable from None
    raise _Uncastable


@functools.lru_cache(maxsize=256)
def _like_regex(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    parts: list[str] = []
    chars: Iterator[str] = iter(pattern)
    for ch in chars:
        if ch == "\\":
            # PostgreSQL's default LIKE escape is backslash; a trailing one is an error there.
            nxt = next(chars, None)
            if nxt is None:
                raise _Uncastable
            parts.append(re.escape(nxt))
        elif ch == "%":
            parts.append(".*")
        elif ch == "_":
            parts.append(".")
        else:
            parts.append(re.escape(ch))
    flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
    return re.compile("".join(parts), flags)


@functools.lru_cache(maxsize=256)
def _regex(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    try:
        return re.compile(pattern, re.IGNORECASE if ignore_case else 0)
    except re.error:
        raise _Uncastable from None


def _compare(op: str, row_value: Any, text: str) -> bool:
    left, right = _coerce(row_value, text)
    if op == "eq":
        return bool(left == right)
    if op == "neq":
        return bool(left != right)
    if isinstance(left, dict | list):
        raise _Uncastable  # JSON values are compared for (in)equality only here
    try:
        if op == "lt":
            return bool(left < right)
        if op == "lte":
            return bool(left <= right)
        if op == "gt":
            return bool(left > right)
        if op == "gte":
            return bool(left >= right)
    except TypeError:
        raise _Uncastable from None
    raise AssertionError(f"not a comparison operator: {op}")


def _evaluate(c: Condition, row: Mapping[str, Any]) -> bool:
    value = row.get(c.column, _MISSING) if isinstance(row, Mapping) else _MISSING
    if value is _MISSING:
        return False  # §5.3: a filter on a column absent from the change fails
    if c.op == "is":
        if c.value in ("null", "unknown"):
            result = value is None
        else:
            result = value is (c.value == "true")
        return result != c.negated
    if c.op == "isdistinct":
        assert isinstance(c.value, str)
        if value is None:
            result = True
        else:
            try:
                left, right = _coerce(value, c.value)
                result = bool(left != right)
            except _Uncastable:
                result = True
        return result != c.negated
    if value is None:
        return False  # NULL makes the comparison NULL, and not. cannot rescue it (§5.3)
    try:
        if c.op == "in":
            assert isinstance(c.value, tuple)
            result = False
            for item in c.value:
                try:
                    if _compare("eq", value, item):
                        result = True
                        break
                except _Uncastable:
                    continue
        elif c.op in ("like", "ilike", "match", "imatch"):
            assert isinstance(c.value, str)
            if not isinstance(value, str):
                return False
            if c.op in ("like", "ilike"):
                result = _like_regex(c.value, c.op == "ilike").fullmatch(value) is not None
            else:
                result = _regex(c.value, c.op == "imatch").search(value) is not None
        else:
            assert isinstance(c.value, str)
            result = _compare(c.op, value, c.value)
    except _Uncastable:
        return False
    return result != c.negated
