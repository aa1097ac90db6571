"""The PostgREST subset's sans-I/O core: query strings and headers in, typed models and SQL out.

Contract:

* :func:`parse_read` turns the query parameters of a request into a :class:`ReadQuery`
  (``select`` with embedded resources, filters, ``and``/``or`` trees, ``order``,
  ``limit``/``offset``, and the same on embedded resources: ``author.name=eq.x``). Anything it
  cannot parse raises :class:`ApiError` with PostgREST's code ``PGRST100`` (HTTP 400); so does an
  identifier holding a NUL byte (it would be cut short at the NUL, a different identifier).
* An :class:`Embed` names a related resource; :mod:`.rest_embed` resolves it against the
  catalog's foreign keys into a :class:`Join`, which the builders here turn into a
  ``LATERAL`` subquery: a JSON object (or null) for a to-one relationship, a JSON array for a
  to-many one; ``!inner`` drops the rows whose embedding is null or empty.
* :func:`parse_prefer` and :func:`parse_range` read the ``Prefer`` and ``Range`` headers.
* The ``*_sql`` builders compose SQL from those models with :mod:`psycopg.sql` only:
  identifiers through :class:`~psycopg.sql.Identifier`, user values through
  :class:`~psycopg.sql.Literal` (an untyped string literal, so PostgreSQL casts it to the
  column's type exactly as PostgREST's own queries do); queries carry no ``%s`` placeholders,
  so a ``%`` in a value can never be mistaken for one. Type names that
  appear as SQL text come from the catalog (``format_type``), never from the request.
* Every read returns one ``text`` column per row holding the row's JSON as PostgreSQL renders
  it (``row_to_json``), so values are exactly what PostgREST would send; :func:`csv_sql` gives
  ``text/csv`` the way PostgREST builds it (a header of column names, then each row's composite
  text without its parentheses).

Nothing here touches the network or the database; :mod:`supasync.devstack.rest` does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from psycopg import sql

# -- errors ---------------------------------------------------------------------------------


class ApiError(Exception):
    """An error with PostgREST's body shape ``{"code","message","details","hint"}``."""

    def __init__(self, status: int, code: str, message: str, details: Any = None,
                 hint: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.hint = hint

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "details": self.details, "hint": self.hint,
                "message": self.message}


def parse_error(message: str, details: str | None = None) -> ApiError:
    """PostgREST's ``PGRST100``: the query string could not be parsed."""
    return ApiError(400, "PGRST100", message, details)


# -- models ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Path:
    """A column, optionally followed by JSON arrows (``data->a->>b``)."""

    column: str
    arrows: tuple[tuple[str, str], ...] = ()  # (("->" | "->>"), key)

    @property
    def default_name(self) -> str:
        return self.arrows[-1][1] if self.arrows else self.column


@dataclass(frozen=True)
class Field:
    """One item of ``select``: ``*`` or ``alias:path::cast``."""

    path: Path | None  # None means ``*``
    alias: str | None = None
    cast: str | None = None


@dataclass(frozen=True)
class Embed:
    """One item of ``select`` naming a related resource: ``alias:name!hint!inner(items)``.

    ``name`` is a table, a foreign-key column or a foreign-key constraint name; ``hint``
    picks one of several relationships. An empty ``select`` (``name()``) embeds nothing into
    the output but still joins (with ``!inner``, it filters).
    """

    name: str
    select: tuple[Field | Embed, ...]
    alias: str | None = None
    hint: str | None = None
    inner: bool = False

    @property
    def label(self) -> str:
        """The key of the embedding in the output, and in embedded filters' paths."""
        return self.alias or self.name


SelectItem = Field | Embed


@dataclass(frozen=True)
class Condition:
    """``path=[not.]op[(modifier)].value``."""

    path: Path
    op: str
    value: str | tuple[str, ...]
    negated: bool = False
    modifier: str | None = None  # "any" / "all", or the fts config


@dataclass(frozen=True)
class Logic:
    """``and=(...)`` / ``or=(...)`` trees, possibly negated."""

    kind: Literal["and", "or"]
    items: tuple[Condition | Logic, ...]
    negated: bool = False


Filter = Condition | Logic


@dataclass(frozen=True)
class OrderTerm:
    path: Path
    desc: bool = False
    nulls: Literal["first", "last"] | None = None


@dataclass
class EmbedParams:
    """Filters, order and window of one embedded resource (``author.name=eq.x``,
    ``books.order=title``, ``books.limit=2``)."""

    filters: list[Filter] = field(default_factory=list)
    order: tuple[OrderTerm, ...] = ()
    limit: int | None = None
    offset: int | None = None


@dataclass
class ReadQuery:
    """Everything a GET (or the filter part of a PATCH/DELETE/RPC) asks for."""

    select: tuple[SelectItem, ...] = (Field(None),)
    embedded: dict[tuple[str, ...], EmbedParams] = field(default_factory=dict)
    filters: list[Filter] = field(default_factory=list)
    order: tuple[OrderTerm, ...] = ()
    limit: int | None = None
    offset: int | None = None
    columns: tuple[str, ...] | None = None
    on_conflict: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Join:
    """An :class:`Embed` resolved against the catalog (by :mod:`.rest_embed`).

    ``on`` pairs a column of the embedding relation with one of ``table`` (aliased ``alias``,
    unique in the query); ``via`` names a junction table for a many-to-many relationship,
    whose pairs are ``(junction column, outer column)`` then ``(junction column, inner
    column)``. ``joins`` are the nested embeddings, in the order of ``embed.select``.
    """

    embed: Embed
    schema: str
    table: str
    alias: str
    on: tuple[tuple[str, str], ...]
    to_one: bool
    params: EmbedParams
    joins: tuple[Join, ...] = ()
    via: tuple[str, tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]] | None = None

    @property
    def lateral(self) -> str:
        """The name of the LATERAL subquery holding this embedding's JSON (column ``j``)."""
        return f"{self.alias}_j"


@dataclass
class Preferences:
    """The ``Prefer`` header; unknown preferences are ignored as PostgREST does (lenient)."""

    return_: Literal["minimal", "representation", "headers-only"] | None = None
    count: Literal["exact", "planned", "estimated"] | None = None
    resolution: Literal["merge-duplicates", "ignore-duplicates"] | None = None
    missing_default: bool = False
    single_object: bool = False  # params=single-object
    applied: list[str] = field(default_factory=list)


# -- lexing helpers -------------------------------------------------------------------------

OPERATORS = {
    "eq": "=", "neq": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<=",
    "like": "LIKE", "ilike": "ILIKE", "match": "~", "imatch": "~*",
    "cs": "@>", "cd": "<@", "ov": "&&", "sl": "<<", "sr": ">>", "nxr": "&<", "nxl": "&>",
    "adj": "-|-",
}
SPECIAL_OPS = {"in", "is", "isdistinct", "fts", "plfts", "phfts", "wfts"}
FTS_FUNCS = {"fts": "to_tsquery", "plfts": "plainto_tsquery", "phfts": "phraseto_tsquery",
             "wfts": "websearch_to_tsquery"}
IS_VALUES = {"null": "NULL", "not_null": "NOT NULL", "true": "TRUE", "false": "FALSE",
             "unknown": "UNKNOWN"}
RESERVED = {"select", "order", "limit", "offset", "columns", "on_conflict", "and", "or",
            "not.and", "not.or"}
_OP_RE = re.compile(r"^(not\.)?([a-z]+)(?:\(([^)]*)\))?\.(.*)$", re.S)


def split_top(text: str, sep: str = ",", *, braces: bool = True) -> list[str]:
    """Split on ``sep`` outside parentheses, braces and double quotes (backslash escapes in
    quotes).

    Braces hold array literals (``tags.cs.{a,b}``), whose commas do not split. A text whose
    braces do not balance (``name.eq.a{b``: a plain character in a value) is split again with
    braces as plain characters.
    """
    parts: list[str] = []
    buf: list[str] = []
    depth = 0
    curly = 0
    quoted = False
    escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
            if depth < 0:
                raise parse_error(f'"failed to parse logic tree ({text})"',
                                  "unbalanced parentheses")
        elif braces and not quoted and ch == "{":
            curly += 1
        elif braces and not quoted and ch == "}" and curly > 0:
            curly -= 1
        elif not quoted and depth == 0 and curly == 0 and ch == sep:
            parts.append("".join(buf))
            buf = []
            continue
        buf.append(ch)
    if braces and curly and not quoted and depth == 0:
        return split_top(text, sep, braces=False)
    if quoted or depth != 0:
        raise parse_error(f'"failed to parse ({text})"', "unbalanced quotes or parentheses")
    parts.append("".join(buf))
    return parts


def _first_outside_quotes(text: str, target: str) -> int:
    """Index of the first ``target`` character outside double quotes, or -1."""
    quoted = False
    escaped = False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif not quoted and ch == target:
            return i
    return -1


def _split_dots(text: str) -> list[str]:
    """``a.b."c.d"`` → ``["a", "b", '"c.d"']``: split at dots outside double quotes."""
    parts: list[str] = []
    while (i := _first_outside_quotes(text, ".")) != -1:
        parts.append(text[:i])
        text = text[i + 1:]
    parts.append(text)
    return parts


def reject_nul(text: str, what: str) -> None:
    """PostgREST's parse error for a NUL byte where an identifier is read.

    PostgreSQL identifiers cannot hold NUL, and quoting one for SQL would cut it at the NUL
    (``body\\x00junk`` would read ``body``): refuse the whole parameter, as PostgREST does.
    """
    at = text.find("\x00")
    if at != -1:
        shown = text.replace("\x00", "\\NUL")
        raise parse_error(f'"failed to parse {what} ({shown})" (line 1, column {at + 1})',
                          'unexpected "\\NUL" expecting letter, digit, "_", "$", "->", "::", '
                          '"(", "," or end of input')


def unquote(text: str) -> str:
    """``"a,b"`` → ``a,b``; unquoted text is returned unchanged."""
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    return text


def parse_path(text: str) -> Path:
    """``col``, ``"odd col"``, ``data->a->>b``."""
    text = text.strip()
    pieces = re.split(r"(->>|->)", text)
    column = unquote(pieces[0])
    if not column:
        raise parse_error(f'"failed to parse field ({text})"', "empty column name")
    arrows: list[tuple[str, str]] = []
    for i in range(1, len(pieces), 2):
        key = unquote(pieces[i + 1])
        if not key:
            raise parse_error(f'"failed to parse field ({text})"', "empty JSON key")
        arrows.append((pieces[i], key))
    return Path(column, tuple(arrows))


# -- parsers --------------------------------------------------------------------------------


def parse_select(text: str) -> tuple[SelectItem, ...]:
    """``select=*,a,b:c,d::text,data->x,alias:table!hint!inner(*,nested(x))``.

    Spreads (``...rel(...)``) and aggregates (``id.sum()``) are not supported (PGRST100).
    """
    reject_nul(text, "select parameter")
    return _parse_items(text, text) or (Field(None),)


_ALIAS_RE = re.compile(r'^("(?:[^"\\]|\\.)*"|[^:"]+):(?!:)(.*)$', re.S)


def _parse_items(text: str, whole: str) -> tuple[SelectItem, ...]:
    fields: list[SelectItem] = []
    for raw in split_top(text, braces=False):
        item = raw.strip()
        if not item:
            continue
        if item.startswith("..."):
            raise parse_error(f'"failed to parse select parameter ({whole})"',
                              "spreads are not supported by the supasync devstack")
        paren = _first_outside_quotes(item, "(")
        if paren != -1:
            fields.append(_parse_embed(item, paren, whole))
            continue
        if item == "*":
            fields.append(Field(None))
            continue
        alias: str | None = None
        m = _ALIAS_RE.match(item)
        if m:
            alias, item = unquote(m.group(1)), m.group(2)
        cast: str | None = None
        if "::" in item:
            item, cast = item.rsplit("::", 1)
            if not valid_cast(cast):
                raise parse_error(f'"failed to parse select parameter ({text})"',
                                  f"invalid cast {cast!r}")
        fields.append(Field(parse_path(item), alias, cast))
    return tuple(fields)


def _parse_embed(item: str, paren: int, whole: str) -> Embed:
    """``alias:name!hint!inner(items)``; ``paren`` is the index of the opening parenthesis."""
    if not item.endswith(")"):
        raise parse_error(f'"failed to parse select parameter ({whole})"',
                          f"expected ')' at the end of {item!r}")
    head, body = item[:paren].strip(), item[paren + 1:-1]
    alias: str | None = None
    m = _ALIAS_RE.match(head)
    if m:
        alias, head = unquote(m.group(1).strip()), m.group(2).strip()
    name, *mods = head.split("!")
    name = unquote(name.strip())
    if not name or (not head.startswith('"') and ("." in name or "->" in name)):
        raise parse_error(f'"failed to parse select parameter ({whole})"',
                          "aggregates are not supported by the supasync devstack"
                          if "." in name else f"expected a relation name before '(' in {item!r}")
    hint: str | None = None
    inner = False
    for mod in (x.strip() for x in mods):
        if mod in ("inner", "left"):
            inner = mod == "inner"
        elif mod and hint is None:
            hint = unquote(mod)
        else:
            raise parse_error(f'"failed to parse select parameter ({whole})"',
                              f"unexpected hint {mod!r} in {item!r}")
    return Embed(name, _parse_items(body, whole), alias, hint, inner)


# Casts become SQL text, so they are limited to one type-name token (``int8``, ``text[]``) or
# one of these spelled-out type names: nothing else can reach the query.
MULTIWORD_TYPES = frozenset({
    "double precision", "character varying", "timestamp with time zone",
    "timestamp without time zone", "time with time zone", "time without time zone",
    "bit varying"})
_CAST_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def valid_cast(cast: str) -> bool:
    """True if ``cast`` is a single type-name token or a known multi-word type (± ``[]``)."""
    base = cast.removesuffix("[]")
    return bool(_CAST_TOKEN.fullmatch(base)) or base.lower() in MULTIWORD_TYPES


def parse_condition(path: Path, expr: str, *, in_logic: bool) -> Condition:
    """``[not.]op[(mod)].value`` for ``path``."""
    m = _OP_RE.match(expr)
    if not m:
        raise parse_error(f'"failed to parse filter ({expr})"', "expected an operator and a value")
    negated, op, modifier, value = bool(m.group(1)), m.group(2), m.group(3), m.group(4)
    if op not in OPERATORS and op not in SPECIAL_OPS:
        raise parse_error(f'"failed to parse filter ({expr})"', f"unknown operator {op!r}")
    if modifier is not None and op not in FTS_FUNCS and modifier not in ("any", "all"):
        raise parse_error(f'"failed to parse filter ({expr})"', f"unknown modifier {modifier!r}")
    if op == "in":
        if not (value.startswith("(") and value.endswith(")")):
            raise parse_error(f'"failed to parse filter ({expr})"', "in needs a (list)")
        inner = value[1:-1]
        items = tuple(unquote(v) for v in split_top(inner)) if inner else ()
        return Condition(path, op, items, negated)
    if op == "is":
        if value.lower() not in IS_VALUES:
            raise parse_error(f'"failed to parse filter ({expr})"',
                              "is accepts null, not_null, true, false or unknown")
        return Condition(path, op, value.lower(), negated)
    if in_logic:
        value = unquote(value)
    return Condition(path, op, value, negated, modifier)


def parse_logic(kind: str, text: str, negated: bool) -> Logic:
    """``(a.eq.1,or(b.gt.2,c.is.null))`` for ``kind`` in and/or."""
    if not (text.startswith("(") and text.endswith(")")):
        raise parse_error(f'"failed to parse logic tree ({text})"', "expected (...)")
    items: list[Filter] = []
    for raw in split_top(text[1:-1]):
        item = raw.strip()
        m = re.match(r"^(not\.)?(and|or)(\(.*\))$", item, re.S)
        if m:
            items.append(parse_logic(m.group(2), m.group(3), bool(m.group(1))))
            continue
        col, dot, rest = _split_column(item)
        if not dot:
            raise parse_error(f'"failed to parse logic tree ({text})"', f"bad condition {item!r}")
        reject_nul(col, "logic tree")
        items.append(parse_condition(parse_path(col), rest, in_logic=True))
    if not items:
        raise parse_error(f'"failed to parse logic tree ({text})"', "empty logic tree")
    return Logic("and" if kind == "and" else "or", tuple(items), negated)


def _split_column(item: str) -> tuple[str, str, str]:
    """Split ``col.op.value`` at the first dot outside quotes."""
    if item.startswith('"'):
        end = item.find('"', 1)
        while end != -1 and item[end - 1] == "\\":
            end = item.find('"', end + 1)
        if end == -1:
            return item, "", ""
        col, rest = item[: end + 1], item[end + 1:]
        return (col, ".", rest[1:]) if rest.startswith(".") else (item, "", "")
    # Keep JSON arrows with the column: data->a.eq.1 → column part "data->a".
    col, dot, rest = item.partition(".")
    return col, dot, rest


def parse_order(text: str) -> tuple[OrderTerm, ...]:
    """``order=a,b.desc,c.asc.nullsfirst``."""
    terms: list[OrderTerm] = []
    for raw in split_top(text):
        parts = raw.strip().split(".")
        if not parts[0]:
            raise parse_error(f'"failed to parse order ({text})"', "empty column")
        desc = False
        nulls: Literal["first", "last"] | None = None
        for mod in parts[1:]:
            if mod in ("asc", "desc"):
                desc = mod == "desc"
            elif mod in ("nullsfirst", "nullslast"):
                nulls = "first" if mod == "nullsfirst" else "last"
            else:
                raise parse_error(f'"failed to parse order ({text})"', f"unknown modifier {mod!r}")
        terms.append(OrderTerm(parse_path(parts[0]), desc, nulls))
    return tuple(terms)


def _non_negative(name: str, value: str) -> int:
    if not re.fullmatch(r"\d+", value):
        raise parse_error(f'"failed to parse {name} parameter ({value})"',
                          "expected a non-negative integer")
    return int(value)


def parse_read(params: list[tuple[str, str]], *, skip: frozenset[str] = frozenset()) -> ReadQuery:
    """Parse query parameters (in order, repeated keys allowed) into a :class:`ReadQuery`.

    Args:
        params: the request's query items.
        skip: keys that are not filters (an RPC's argument names on GET).
    """
    q = ReadQuery()
    for key, value in params:
        if key in skip or key == "apikey":
            continue
        if key == "select":
            q.select = parse_select(value)
            continue
        reject_nul(key, "tree path")
        if key in ("order", "columns", "on_conflict"):
            reject_nul(value, key if key == "order" else f"{key} parameter")
        parts = _split_dots(key)
        if len(parts) > 1 and key not in ("not.and", "not.or") and "->" not in parts[0]:
            _parse_embedded_param(q, parts, value)
        elif key == "order":
            q.order = q.order + parse_order(value)
        elif key == "limit":
            q.limit = _non_negative("limit", value)
        elif key == "offset":
            q.offset = _non_negative("offset", value)
        elif key == "columns":
            q.columns = tuple(unquote(c.strip()) for c in split_top(value) if c.strip())
        elif key == "on_conflict":
            q.on_conflict = tuple(unquote(c.strip()) for c in split_top(value) if c.strip())
        elif key in ("and", "or", "not.and", "not.or"):
            negated = key.startswith("not.")
            q.filters.append(parse_logic(key.removeprefix("not."), value, negated))
        else:
            q.filters.append(parse_condition(parse_path(key), value, in_logic=False))
    return q


def _parse_embedded_param(q: ReadQuery, parts: list[str], value: str) -> None:
    """``author.name=eq.x``, ``books.order=title``, ``books.limit=2``, ``books.or=(...)``."""
    last = parts[-1]
    path = parts[:-1]
    if len(parts) > 2 and parts[-2] == "not" and last in ("and", "or"):
        path, last = parts[:-2], "not." + last
    if any(not p for p in path):
        raise parse_error(f'"failed to parse tree path ({".".join(parts)})"', "empty name")
    sub = q.embedded.setdefault(tuple(unquote(p) for p in path), EmbedParams())
    if last == "order":
        reject_nul(value, "order")
        sub.order = sub.order + parse_order(value)
    elif last in ("limit", "offset"):
        setattr(sub, last, _non_negative(last, value))
    elif last in ("and", "or", "not.and", "not.or"):
        sub.filters.append(parse_logic(last.removeprefix("not."), value,
                                       last.startswith("not.")))
    elif last in ("select", "columns", "on_conflict"):
        raise parse_error(f'"failed to parse tree path ({".".join(parts)})"',
                          f"{last} is not allowed on an embedded resource")
    else:
        sub.filters.append(parse_condition(parse_path(last), value, in_logic=False))


def parse_prefer(values: list[str]) -> Preferences:
    """Read every ``Prefer`` header value (comma-separated ``key=value`` tokens)."""
    p = Preferences()
    for header in values:
        for token in header.split(","):
            token = token.strip()
            key, _, val = token.partition("=")
            key, val = key.strip(), val.strip()
            if key == "return" and val in ("minimal", "representation", "headers-only"):
                p.return_ = val  # type: ignore[assignment]
            elif key == "count" and val in ("exact", "planned", "estimated"):
                p.count = val  # type: ignore[assignment]
            elif key == "resolution" and val in ("merge-duplicates", "ignore-duplicates"):
                p.resolution = val  # type: ignore[assignment]
            elif key == "missing" and val == "default":
                p.missing_default = True
            elif key == "params" and val == "single-object":
                p.single_object = True
            else:
                continue
            p.applied.append(f"{key}={val}")
    return p


def parse_range(header: str | None) -> tuple[int, int | None] | None:
    """``Range: 0-9`` (items) → (0, 9); ``5-`` → (5, None); anything else → None (ignored)."""
    if not header:
        return None
    m = re.fullmatch(r"\s*(?:items=)?(\d+)-(\d*)\s*", header)
    if not m:
        return None
    lo = int(m.group(1))
    hi = int(m.group(2)) if m.group(2) else None
    if hi is not None and hi < lo:
        return None
    return lo, hi


def effective_window(q: ReadQuery, range_: tuple[int, int | None] | None
                     ) -> tuple[int, int | None]:
    """Combine ``offset``/``limit`` with a ``Range`` header: (offset, limit or None)."""
    offset = q.offset or 0
    limit = q.limit
    if range_ is not None:
        lo, hi = range_
        start = max(offset, lo)
        ends = [e for e in (None if limit is None else offset + limit - 1, hi) if e is not None]
        end = min(ends) if ends else None
        offset = start
        limit = None if end is None else max(0, end - start + 1)
    return offset, limit


# -- SQL composition ------------------------------------------------------------------------


def path_sql(p: Path, alias: str | None = None) -> sql.Composable:
    """A column reference with its JSON arrows, qualified by ``alias`` when given."""
    out: sql.Composable = sql.Identifier(alias, p.column) if alias else sql.Identifier(p.column)
    for arrow, key in p.arrows:
        key_sql = sql.Literal(int(key)) if re.fullmatch(r"-?\d+", key) else sql.Literal(key)
        out = sql.SQL("({} {} {})").format(out, sql.SQL(arrow), key_sql)
    return out


def condition_sql(c: Condition, alias: str | None) -> sql.Composable:
    col = path_sql(c.path, alias)
    expr: sql.Composable
    if c.op == "in":
        assert isinstance(c.value, tuple)
        if not c.value:
            expr = sql.SQL("false")
        else:
            expr = sql.SQL("{} IN ({})").format(
                col, sql.SQL(", ").join(sql.Literal(v) for v in c.value))
    elif c.op == "is":
        expr = sql.SQL("{} IS {}").format(col, sql.SQL(IS_VALUES[str(c.value)]))
    elif c.op == "isdistinct":
        expr = sql.SQL("{} IS DISTINCT FROM {}").format(col, sql.Literal(c.value))
    elif c.op in FTS_FUNCS:
        func = sql.SQL(FTS_FUNCS[c.op])
        if c.modifier:
            expr = sql.SQL("{} @@ {}({}::regconfig, {})").format(
                col, func, sql.Literal(c.modifier), sql.Literal(c.value))
        else:
            expr = sql.SQL("{} @@ {}({})").format(col, func, sql.Literal(c.value))
    else:
        value = str(c.value)
        if c.op in ("like", "ilike"):
            value = value.replace("*", "%")
        op = sql.SQL(OPERATORS[c.op])
        if c.modifier in ("any", "all"):
            if c.op in ("like", "ilike"):
                value = value.replace("*", "%")
            expr = sql.SQL("{} {} {}({})").format(col, op, sql.SQL(c.modifier.upper()),
                                                  sql.Literal(value))
        else:
            expr = sql.SQL("{} {} {}").format(col, op, sql.Literal(value))
    return sql.SQL("NOT ({})").format(expr) if c.negated else expr


def filter_sql(f: Filter, alias: str | None) -> sql.Composable:
    if isinstance(f, Condition):
        return condition_sql(f, alias)
    joiner = sql.SQL(" AND " if f.kind == "and" else " OR ")
    inner = sql.SQL("({})").format(joiner.join(filter_sql(i, alias) for i in f.items))
    return sql.SQL("NOT {}").format(inner) if f.negated else inner


def where_sql(filters: list[Filter], alias: str | None) -> sql.Composable:
    if not filters:
        return sql.SQL("")
    return sql.SQL(" WHERE {}").format(
        sql.SQL(" AND ").join(filter_sql(f, alias) for f in filters))


def order_sql(order: tuple[OrderTerm, ...], alias: str | None) -> sql.Composable:
    if not order:
        return sql.SQL("")
    terms = []
    for t in order:
        direction = sql.SQL("DESC" if t.desc else "ASC")
        term = sql.SQL("{} {}").format(path_sql(t.path, alias), direction)
        if t.nulls:
            term = sql.SQL("{} NULLS {}").format(term, sql.SQL(t.nulls.upper()))
        terms.append(term)
    return sql.SQL(" ORDER BY {}").format(sql.SQL(", ").join(terms))


def window_sql(offset: int, limit: int | None) -> sql.Composable:
    out: sql.Composable = sql.SQL("")
    if limit is not None:
        out = sql.SQL(" LIMIT {}").format(sql.Literal(limit))
    if offset:
        out = sql.SQL("{} OFFSET {}").format(out, sql.Literal(offset))
    return out


def fields_sql(fields: tuple[SelectItem, ...], alias: str,
               joins: tuple[Join, ...] = ()) -> sql.Composable:
    """The select list: the fields, and for each :class:`Embed` (in order) its ``joins`` entry's
    JSON (an array for a to-many embedding, never null; nothing for an empty embedding)."""
    items: list[sql.Composable] = []
    pending = iter(joins)
    for f in fields:
        if isinstance(f, Embed):
            j = next(pending, None)
            if j is None or j.embed is not f:
                raise parse_error(f'"failed to parse select parameter ({f.label}(...))"',
                                  "resource embedding is not supported here by the "
                                  "supasync devstack")
            if not f.select:
                continue  # ``rel()``: joins, filters, adds nothing
            value: sql.Composable = sql.SQL("{}.j").format(sql.Identifier(j.lateral))
            if not j.to_one:
                value = sql.SQL("coalesce({}, '[]'::json)").format(value)
            items.append(sql.SQL("{} AS {}").format(value, sql.Identifier(f.label)))
            continue
        if f.path is None:
            items.append(sql.SQL("{}.*").format(sql.Identifier(alias)))
            continue
        expr = path_sql(f.path, alias)
        if f.cast:
            expr = sql.SQL("{}::{}").format(expr, sql.SQL(f.cast))  # valid_cast() checked it
        name = f.alias or f.path.default_name
        items.append(sql.SQL("{} AS {}").format(expr, sql.Identifier(name)))
    return sql.SQL(", ").join(items)


def joins_sql(joins: tuple[Join, ...], outer: str, *, only_inner: bool = False
              ) -> sql.Composable:
    """``LEFT|INNER JOIN LATERAL (...) AS <alias>_j`` for each embedding of ``outer``.

    The subquery yields one row whose column ``j`` is the embedding's JSON: a to-one embedding
    has no row when nothing matches (null under LEFT), a to-many one always has one row
    (``json_agg``: null when empty). ``!inner`` keeps only the rows whose ``j`` is not null.
    """
    out: list[sql.Composable] = []
    for j in joins:
        if only_inner and not j.embed.inner:
            continue
        out.append(sql.SQL(" {} JOIN LATERAL ({}) AS {} ON {}").format(
            sql.SQL("INNER" if j.embed.inner else "LEFT"), embed_sql(j, outer),
            sql.Identifier(j.lateral),
            sql.SQL("{}.j IS NOT NULL").format(sql.Identifier(j.lateral)) if j.embed.inner
            else sql.SQL("TRUE")))
    return sql.Composed(out)


def embed_sql(j: Join, outer: str) -> sql.Composed:
    """The subquery of one embedding: its rows related to the current ``outer`` row, filtered,
    ordered and windowed, aggregated into one JSON value ``j``."""
    inner = j.alias
    conds: list[sql.Composable] = []
    source: sql.Composable = sql.SQL("{} AS {}").format(relation_sql(j.schema, j.table),
                                                        sql.Identifier(inner))
    if j.via is None:
        conds += [sql.SQL("{} = {}").format(sql.Identifier(inner, ic), sql.Identifier(outer, oc))
                  for oc, ic in j.on]
    else:
        junction, to_outer, to_inner = j.via
        jn = f"{inner}_via"
        source = sql.SQL("{} JOIN {} AS {} ON {}").format(
            source, relation_sql(j.schema, junction), sql.Identifier(jn),
            sql.SQL(" AND ").join(
                sql.SQL("{} = {}").format(sql.Identifier(jn, jc), sql.Identifier(inner, ic))
                for jc, ic in to_inner))
        conds += [sql.SQL("{} = {}").format(sql.Identifier(jn, jc), sql.Identifier(outer, oc))
                  for jc, oc in to_outer]
    conds += [filter_sql(f, inner) for f in j.params.filters]
    body = sql.SQL("SELECT {} FROM {}{} WHERE {}{}{}").format(
        fields_sql(j.embed.select, inner, j.joins), source, joins_sql(j.joins, inner),
        sql.SQL(" AND ").join(conds), order_sql(j.params.order, inner),
        window_sql(j.params.offset or 0, j.params.limit))
    agg = "row_to_json(_x)" if j.to_one else "json_agg(_x)"
    return sql.SQL("SELECT {} AS j FROM ({}) AS _x").format(sql.SQL(agg), body)


def relation_sql(schema: str, name: str) -> sql.Composable:
    return sql.Identifier(schema, name)


EXPLAIN_OPTIONS = ("analyze", "verbose", "settings", "buffers", "wal")


def explain_sql(query: sql.Composable, fmt: Literal["json", "text"],
                options: tuple[str, ...]) -> sql.Composed:
    """``EXPLAIN (FORMAT ..., <options>) <query>``; ``options`` only from
    :data:`EXPLAIN_OPTIONS` (others are dropped: nothing from the request reaches the SQL)."""
    opts: list[sql.Composable] = [sql.SQL("FORMAT {}").format(sql.SQL(fmt.upper()))]
    opts += [sql.SQL(o.upper()) for o in EXPLAIN_OPTIONS if o in options]
    return sql.SQL("EXPLAIN ({}) {}").format(sql.SQL(", ").join(opts), query)


def json_rows_sql(inner: sql.Composable, strip_nulls: bool = False) -> sql.Composed:
    """Wrap a row-producing query so each row comes back as one JSON text value."""
    fn = "json_strip_nulls(row_to_json(_r))" if strip_nulls else "row_to_json(_r)"
    return sql.SQL("SELECT {}::text FROM ({}) AS _r").format(sql.SQL(fn), inner)


def joined_rows_sql(rows: sql.Composable) -> sql.Composed:
    """One row ``(count, text)`` for a query of one JSON text per row: how many rows, and their
    texts joined with ``,`` in the query's order (NULL for none), so a page of rows crosses
    the wire and the driver as one value.

    A plain aggregate reads its input in the order the subquery produces it; no sort or hash
    stands between them (and an unordered query has no order to keep).
    """
    return sql.SQL("SELECT count(*), string_agg(_j.j, ',') FROM ({}) AS _j(j)").format(rows)


def rows_sql(rel: sql.Composable, q: ReadQuery, offset: int, limit: int | None,
             alias: str = "_t", joins: tuple[Join, ...] = ()) -> sql.Composed:
    """The GET query's rows (the selected columns, embeddings as JSON), filtered, ordered and
    windowed; :func:`read_sql` and :func:`csv_sql` render them."""
    a = sql.Identifier(alias)
    return sql.SQL("SELECT {} FROM {} AS {}{}{}{}{}").format(
        fields_sql(q.select, alias, joins), rel, a, joins_sql(joins, alias),
        where_sql(q.filters, alias), order_sql(q.order, alias), window_sql(offset, limit))


def read_sql(rel: sql.Composable, q: ReadQuery, offset: int, limit: int | None,
             strip_nulls: bool = False, alias: str = "_t", joins: tuple[Join, ...] = ()
             ) -> sql.Composed:
    """The GET query: one JSON text per row, filtered, ordered and windowed.

    ``alias`` names the relation in the query (the table's own name reads best in errors).
    """
    return json_rows_sql(rows_sql(rel, q, offset, limit, alias, joins), strip_nulls)


def csv_sql(rows: sql.Composable) -> sql.Composed:
    """One row ``(count, text)``: the rows of ``rows`` as PostgREST's ``text/csv``.

    The first line holds the column names (none when there are no rows), each further line a
    row's composite text without its parentheses: PostgreSQL quotes a value holding a comma,
    a quote, a parenthesis, a backslash or white space in double quotes, doubles quotes and
    backslashes inside them, and leaves NULL empty. Lines are joined by ``\\n``; no newline at
    the end.
    """
    return sql.SQL(
        "WITH _c AS MATERIALIZED ({}) SELECT count(*), "
        "(SELECT coalesce(string_agg(_k, ','), '') FROM json_object_keys("
        "(SELECT row_to_json(_h) FROM _c AS _h LIMIT 1)) AS _k) || chr(10) || "
        "coalesce(string_agg(substr(_c::text, 2, length(_c::text) - 2), chr(10)), '') "
        "FROM _c").format(rows)


def count_sql(rel: sql.Composable, q: ReadQuery, alias: str = "_t",
              joins: tuple[Join, ...] = ()) -> sql.Composed:
    """``count(*)`` of the filtered relation (no window), for ``Prefer: count=exact``; only
    ``!inner`` embeddings can change it."""
    return sql.SQL("SELECT count(*) FROM {} AS {}{}{}").format(
        rel, sql.Identifier(alias), joins_sql(joins, alias, only_inner=True),
        where_sql(q.filters, alias))


def returning_sql(write: sql.Composable, q: ReadQuery, strip_nulls: bool = False,
                  alias: str = "_t", joins: tuple[Join, ...] = ()) -> sql.Composed:
    """``WITH _w AS (<write> RETURNING alias.*)`` then the selected fields as JSON text."""
    a = sql.Identifier(alias)
    inner = sql.SQL("SELECT {} FROM _w AS {}{}{}").format(
        fields_sql(q.select, alias, joins), a, joins_sql(joins, alias),
        order_sql(q.order, alias))
    return sql.SQL("WITH _w AS ({} RETURNING {}.*) {}").format(
        write, a, json_rows_sql(inner, strip_nulls))


def insert_sql(rel: sql.Composable, columns: list[str], rows_json: str,
               conflict: tuple[str, ...] | None, resolution: str | None,
               alias: str = "_t") -> sql.Composed:
    """``INSERT`` of the rows in ``rows_json`` (a JSON array of objects).

    Missing keys become NULL (``json_populate_recordset``); callers group rows by key set
    for ``missing=default`` so absent columns keep their defaults.
    """
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    if columns:
        body = sql.SQL("INSERT INTO {} AS {} ({}) SELECT {} FROM json_populate_recordset("
                       "NULL::{}, {}::json)").format(rel, sql.Identifier(alias), cols, cols, rel,
                                                   sql.Literal(rows_json))
    else:
        body = sql.SQL("INSERT INTO {} AS {} DEFAULT VALUES").format(rel, sql.Identifier(alias))
    if resolution and conflict:
        target = sql.SQL(", ").join(sql.Identifier(c) for c in conflict)
        if resolution == "ignore-duplicates":
            body = sql.SQL("{} ON CONFLICT ({}) DO NOTHING").format(body, target)
        else:
            sets = [c for c in columns if c not in conflict] or list(conflict)
            assignments = sql.SQL(", ").join(
                sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c))
                for c in sets)
            body = sql.SQL("{} ON CONFLICT ({}) DO UPDATE SET {}").format(body, target, assignments)
    return body


def update_sql(rel: sql.Composable, columns: list[str], body_json: str, filters: list[Filter],
               alias: str = "_t") -> sql.Composed:
    """``UPDATE`` setting ``columns`` from ``body_json`` (a JSON object)."""
    assignments = sql.SQL(", ").join(
        sql.SQL("{} = _b.{}").format(sql.Identifier(c), sql.Identifier(c)) for c in columns)
    return sql.SQL("UPDATE {} AS {} SET {} FROM (SELECT * FROM json_populate_record(NULL::{}, "
                   "{}::json)) AS _b{}").format(rel, sql.Identifier(alias), assignments, rel,
                                                sql.Literal(body_json), where_sql(filters, alias))


def delete_sql(rel: sql.Composable, filters: list[Filter], alias: str = "_t") -> sql.Composed:
    return sql.SQL("DELETE FROM {} AS {}{}").format(rel, sql.Identifier(alias),
                                                    where_sql(filters, alias))
