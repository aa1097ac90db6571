"""postgres_changes subscription parameters: parsing, error texts, and filter SQL.

Sans-I/O. Behaviour follows realtime-protocol.md §5.1 and §5.3 (server ``subscriptions.ex``
``parse_subscription_params/1`` and the ``subscription_check_filters`` / ``check_equality_op``
SQL), re-implemented here from that documented behaviour:

* :func:`parse_params` turns one client ``postgres_changes`` entry into
  :class:`SubscriptionParams` or raises :class:`ParamsError` whose ``text`` is the exact
  system-error message the real server pushes;
* :func:`parse_filter` implements the filter grammar: comma-AND (commas inside parentheses or
  a double-quoted value do not split), ``not.`` negation, ``in.(a,b)`` → ``{a,b}``, quoted
  values with backslash escapes;
* :func:`params_to_log` and :func:`inspect` reproduce the Elixir renderings used inside error
  texts (``[event: *, schema: public, table: t, filters: [{"id", "eq", "1", false}],
  select: nil]``);
* :func:`filter_sql` gives the SQL that evaluates one operator with both sides cast to the
  column's type, NULL-safe the way the real server is: ordinary operators on NULL fail even
  when negated, ``is`` and ``isdistinct`` are NULL-aware.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

FILTER_OPS: Final = (
    "eq", "neq", "lt", "lte", "gt", "gte", "in", "like", "ilike", "is", "match", "imatch",
    "isdistinct",
)
IS_KEYWORDS: Final = ("null", "true", "false", "unknown")
MAX_IN_VALUES: Final = 100


class ParamsError(ValueError):
    """Invalid subscription parameters; ``text`` is the server's system-error message."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


@dataclass(frozen=True)
class Filter:
    """``column=[not.]op.value``; ``value`` is unquoted, or ``{...}`` for ``in``."""

    column: str
    op: str
    value: str
    negate: bool = False


@dataclass(frozen=True)
class SubscriptionParams:
    event: str  # "*", "INSERT", "UPDATE" or "DELETE"
    schema: str  # may be "*" or contain LIKE wildcards
    table: str
    filters: tuple[Filter, ...]
    select: tuple[str, ...] | None

    def matches_event(self, op: str) -> bool:
        return self.event == "*" or self.event == op

    def log_text(self) -> str:
        return params_to_log(self)


# -- Elixir rendering ------------------------------------------------------------------------


def _inspect_str(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        else:
            out.append(ch)
    text = "".join(out) + '"'
    return text.replace("#{", "\\#{")


def inspect(value: Any) -> str:
    """Elixir's ``inspect/1`` for JSON-decoded values (strings, lists, maps, nil, ...)."""
    if value is None:
        return "nil"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _inspect_str(value)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Filter):
        parts = (_inspect_str(value.column), _inspect_str(value.op), _inspect_str(value.value))
        return "{" + ", ".join(parts) + ", " + inspect(value.negate) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(inspect(v) for v in value) + "]"
    if isinstance(value, dict):
        # Small Elixir maps print their keys in term order; for string keys that is bytewise.
        keys = sorted(value, key=lambda k: str(k).encode())
        return "%{" + ", ".join(f"{inspect(k)} => {inspect(value[k])}" for k in keys) + "}"
    return repr(value)


def _to_log(value: Any) -> str:
    return value if isinstance(value, str) else inspect(value)


def params_to_log(p: SubscriptionParams) -> str:
    """``event: *, schema: public, table: t, filters: [...], select: nil`` (no brackets)."""
    select = list(p.select) if p.select is not None else None
    pairs = [
        ("event", p.event), ("schema", p.schema), ("table", p.table),
        ("filters", list(p.filters)), ("select", select),
    ]
    return ", ".join(f"{k}: {_to_log(v)}" for k, v in pairs)


# -- parameters ------------------------------------------------------------------------------

NO_PARAMS: Final = (
    "No subscription params provided. Please provide at least a `schema` or `table` to "
    "subscribe to: "
)


def _event(params: dict[str, Any]) -> str:
    ev = params.get("event")
    if isinstance(ev, str):
        up = ev.upper()
        if up in ("INSERT", "UPDATE", "DELETE"):
            return up
    return "*"


def parse_params(params: dict[str, Any]) -> SubscriptionParams:
    """Validate one ``postgres_changes`` entry (§5.1). Raises :class:`ParamsError`."""
    event = _event(params)
    select: tuple[str, ...] | None = None
    if "select" in params:
        cols = params["select"]
        if isinstance(cols, list):
            valid = tuple(c for c in cols if isinstance(c, str))
            select = valid or None
        elif isinstance(cols, str):
            raise ParamsError(
                "Error parsing `select` params: expected a list of column name strings, "
                'e.g. select: ["col1", "col2"]'
            )
    schema, table, flt = params.get("schema"), params.get("table"), params.get("filter")
    has = params.__contains__
    filters: tuple[Filter, ...] = ()
    if isinstance(schema, str) and isinstance(table, str) and isinstance(flt, str):
        try:
            filters = tuple(parse_filter(flt))
        except ParamsError as exc:
            raise ParamsError(f"Error parsing `filter` params: {exc.text}") from None
    elif isinstance(schema, str) and isinstance(table, str) and not has("filter"):
        pass
    elif isinstance(schema, str) and not has("table") and not has("filter"):
        table = "*"
    elif isinstance(table, str) and not has("schema") and not has("filter"):
        schema = "public"
    elif has("user_token") or has("auth_token"):
        raise ParamsError(NO_PARAMS + "<redacted>")
    else:
        raise ParamsError(NO_PARAMS + inspect(params))
    assert isinstance(schema, str) and isinstance(table, str)
    if select is not None and (schema == "*" or table == "*"):
        raise ParamsError(
            "Column selection is not supported for wildcard subscriptions. Provide an explicit "
            "schema and table name."
        )
    return SubscriptionParams(event, schema, table, filters, select)


# -- filter grammar --------------------------------------------------------------------------


def split_segments(text: str) -> list[str]:
    """Split on top-level commas: not inside parentheses, not inside a quoted value.

    A double quote opens a quoted value only right after ``.``, ``(`` or ``,`` (the start of a
    value); inside it a backslash escapes the next character.
    """
    segments: list[str] = []
    current: list[str] = []
    depth = 0
    quoted = False
    prev = ""
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if quoted:
            if ch == "\\" and i + 1 < n:
                current.append(ch + text[i + 1])
                prev = text[i + 1]
                i += 2
                continue
            if ch == '"':
                quoted = False
            current.append(ch)
            prev = ch
        elif ch == '"' and prev in (".", "(", ","):
            quoted = True
            current.append(ch)
            prev = ch
        elif ch == "(":
            depth += 1
            current.append(ch)
            prev = ch
        elif ch == ")":
            depth = max(0, depth - 1)
            current.append(ch)
            prev = ch
        elif ch == "," and depth == 0:
            segments.append("".join(current))
            current = []
            prev = ""
        else:
            current.append(ch)
            prev = ch
        i += 1
    segments.append("".join(current))
    return segments


def _unquote(value: str) -> str:
    if not value.startswith('"'):
        return value
    out: list[str] = []
    i, n = 1, len(value)
    while i < n:
        ch = value[i]
        if ch == '"':
            return "".join(out) if i == n - 1 else value
        if ch == "\\" and i + 1 < n:
            out.append(value[i + 1])
            i += 2
            continue
        out.append(ch)
        i += 1
    return value  # unterminated: kept verbatim


def _parse_segment(segment: str) -> Filter:
    trimmed = segment.strip()
    if not trimmed:
        raise ParamsError("filter must not contain empty segments (check for extra commas)")
    parts = trimmed.split("=", 1)
    if len(parts) != 2:
        raise ParamsError(inspect(parts))
    col, rest = parts
    negate = rest.startswith("not.")
    op_value = rest[4:] if negate else rest
    pieces = op_value.split(".", 1)
    if len(pieces) != 2:
        raise ParamsError(inspect(pieces))
    op, value = pieces
    if op not in FILTER_OPS:
        raise ParamsError(inspect([op, value]))
    if op == "in":
        if len(value) >= 2 and value.startswith("(") and value.endswith(")"):
            value = "{" + value[1:-1] + "}"
        else:
            raise ParamsError("`in` filter value must be wrapped by parentheses")
    else:
        value = _unquote(value)
    return Filter(col, op, value, negate)


def parse_filter(text: str) -> list[Filter]:
    """Parse a filter string. Raises :class:`ParamsError` with the detail text only (the
    caller prefixes ``Error parsing `filter` params: ``)."""
    trimmed = text.strip()
    if not trimmed:
        return []
    return [_parse_segment(s) for s in split_segments(trimmed)]


# -- table patterns --------------------------------------------------------------------------


def like_regex(pattern: str) -> re.Pattern[str]:
    """SQL ``LIKE`` with no escape character, ``*`` meaning everything (§5.1)."""
    if pattern == "*":
        return re.compile(r"(?s).*")
    out = []
    for ch in pattern:
        if ch == "%":
            out.append(".*")
        elif ch == "_":
            out.append(".")
        else:
            out.append(re.escape(ch))
    return re.compile("(?s)" + "".join(out))


# -- evaluation SQL --------------------------------------------------------------------------

_CMP: Final = {"eq": "=", "neq": "!=", "lt": "<", "lte": "<=", "gt": ">", "gte": ">=",
               "like": "like", "ilike": "ilike", "match": "~", "imatch": "~*"}


def filter_sql(op: str, negate: bool, type_sql: str, value: str, a: str, b: str) -> str:
    """SQL evaluating one filter: ``a`` is the column value text expression, ``b`` the
    filter value text expression, both cast to ``type_sql`` (a name read from pg_catalog).

    The result is never NULL: a NULL comparison counts as "does not match" (§5.3).
    """
    if op == "isdistinct":
        word = "is not distinct from" if negate else "is distinct from"
        expr = f"{a}::{type_sql} {word} {b}::{type_sql}"
        return f"coalesce({expr}, false)"
    if op == "is":
        if value not in IS_KEYWORDS:  # validated at subscribe; never interpolate anything else
            raise ValueError("invalid value for is filter")
        word = "is not" if negate else "is"
        return f"coalesce({a}::{type_sql} {word} {value.upper()}, false)"
    if op == "in":
        expr = f"{a}::{type_sql} = any({b}::{type_sql}[])"
    else:
        expr = f"{a}::{type_sql} {_CMP[op]} ({b}::{type_sql})"
    if negate:
        expr = f"not ({expr})"
    return f"coalesce({expr}, false)"
