"""Unit and property tests for supasync.core.filters.

The property tests check that the three renderings of one filter agree on generated rows:

* the model's own predicate, ``Filter.matches``;
* the Realtime string, re-read by ``parse_filter`` and evaluated;
* the PostgREST parameters, evaluated by a tiny PostgREST-parameter evaluator written here
  (independent of supasync's code),

and that all three agree with a reference evaluation working on typed Python values.

NOTE: the same agreement against the real server (the devstack's Realtime filtering and PostgREST
subset on a live PostgreSQL) belongs in an integration test, to be added by the devstack owners
(tests/integration/); these unit tests need no server.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supasync.core.errors import FilterError, SupasyncError
from supasync.core.filters import (
    ALL,
    MAX_IN_VALUES,
    And,
    Condition,
    Filter,
    as_filter,
    col,
    parse_filter,
)

# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("status=eq.open", Condition("status", "eq", "open")),
        ("id=in.(1,2,3)", Condition("id", "in", ("1", "2", "3"))),
        ('name=in.(a,"b,c","d\\"e")', Condition("name", "in", ("a", "b,c", 'd"e'))),
        ("x=not.is.null", Condition("x", "is", "null", negated=True)),
        ("x=is.NULL", Condition("x", "is", "null")),
        ("x=isdistinct.5", Condition("x", "isdistinct", "5")),
        ("t=like.%a_b%", Condition("t", "like", "%a_b%")),
        ("t=imatch.^ab+$", Condition("t", "imatch", "^ab+$")),
        ('t=eq."a,b"', Condition("t", "eq", "a,b")),
        ('t=eq."\\\\"', Condition("t", "eq", "\\")),
        ("t=eq.", Condition("t", "eq", "")),
        ("t=eq.a.b=c", Condition("t", "eq", "a.b=c")),
        ("t=in.()", Condition("t", "in", ())),
        ("t=in.( 1 , 2 )", Condition("t", "in", ("1", "2"))),
        ('t=in.(" 1 ")', Condition("t", "in", (" 1 ",))),
    ],
)
def test_parse_single(text: str, expected: Condition) -> None:
    assert parse_filter(text) == expected


def test_parse_and() -> None:
    f = parse_filter("a=eq.1,b=in.(1,2),c=not.like.x%")
    assert isinstance(f, And)
    assert f.conditions == (
        Condition("a", "eq", "1"),
        Condition("b", "in", ("1", "2")),
        Condition("c", "like", "x%", negated=True),
    )
    assert f.columns == frozenset({"a", "b", "c"})


@pytest.mark.parametrize("text", ["", "   ", "\t"])
def test_parse_empty_is_all(text: str) -> None:
    assert parse_filter(text) is ALL
    assert ALL.to_realtime() == ""
    assert ALL.to_postgrest() == []
    assert ALL.matches({})
    assert ALL.conditions == ()


@pytest.mark.parametrize(
    ("text", "position", "fragment"),
    [
        ("a=eq.1,,b=eq.2", 7, "empty segments"),
        ("a=eq.1,", 7, "empty segments"),
        (",a=eq.1", 0, "empty segments"),
        ("a", 0, "no '='"),
        ("a=foo.1", 2, "unknown operator 'foo'"),
        ("a=EQ.1", 2, "lower case"),
        ("a=not.not.eq.1", 6, "only one not."),
        ('a=eq."x', 5, "unclosed double quote"),
        ("a=in.(1,2", 5, "unclosed '('"),
        ("a=in.1", 5, "wrapped by parentheses"),
        ("a=in.(1,2)x", 10, "after ')'"),
        ("a=in.(1,,2)", 8, "empty value"),
        ("a=is.maybe", 5, "null, true, false or unknown"),
        ("a=eq", 4, "missing '.'"),
        ("=eq.1", 0, "missing column"),
        (" a=eq.1", 0, "whitespace"),
        ("a =eq.1", 1, "whitespace"),
        ('a=eq."x"y', 8, "after the closing quote"),
        ("a=eq.1)", 6, "unbalanced ')'"),
        ("a(=eq.1", 1, "unclosed '('"),
    ],
)
def test_parse_errors_point_at_the_character(text: str, position: int, fragment: str) -> None:
    with pytest.raises(FilterError) as info:
        parse_filter(text)
    err = info.value
    assert err.position == position, str(err)
    assert err.text == text
    assert fragment in err.message
    lines = str(err).splitlines()
    assert lines[1] == "  " + text
    assert lines[2] == "  " + " " * position + "^"


def test_parse_too_many_in_values() -> None:
    text = "a=in.(" + ",".join(str(i) for i in range(MAX_IN_VALUES + 1)) + ")"
    with pytest.raises(FilterError, match="at most 100") as info:
        parse_filter(text)
    assert info.value.position == 5
    parse_filter("a=in.(" + ",".join(str(i) for i in range(MAX_IN_VALUES)) + ")")


def test_filter_error_is_value_error_and_supasync_error() -> None:
    with pytest.raises(ValueError):
        parse_filter("a")
    with pytest.raises(SupasyncError):
        parse_filter("a")


# --------------------------------------------------------------------------- builder


def test_builder_values() -> None:
    assert col("a").eq(1) == Condition("a", "eq", "1")
    assert col("a").eq(True) == Condition("a", "eq", "true")
    assert col("a").eq(1.5) == Condition("a", "eq", "1.5")
    assert col("a").eq(float("nan")).value == "NaN"
    assert col("a").eq(Decimal("1.10")).value == "1.10"
    u = uuid.UUID(int=5)
    assert col("a").eq(u).value == str(u)
    when = dt.datetime(2026, 8, 21, 10, 15, tzinfo=dt.UTC)
    assert col("a").gt(when).value == "2026-08-21T10:15:00+00:00"
    assert col("a").in_([1, "x", False]).value == ("1", "x", "false")
    assert col("a").is_(None) == Condition("a", "is", "null")
    assert col("a").is_(True).value == "true"
    assert col("a").is_("UNKNOWN").value == "unknown"


def test_builder_negation() -> None:
    assert col("a").not_.eq(1) == Condition("a", "eq", "1", negated=True)
    assert ~col("a").eq(1) == Condition("a", "eq", "1", negated=True)
    assert ~~col("a").eq(1) == col("a").eq(1)
    assert (~col("x").is_(None)).to_realtime() == "x=not.is.null"
    assert ~And((col("a").eq(1),)) == col("a").not_.eq(1)


def test_builder_and_flattens() -> None:
    a, b, c = col("a").eq(1), col("b").eq(2), col("c").eq(3)
    f = a & b & c
    assert f.conditions == (a, b, c)
    assert (ALL & a) == a
    assert (a & ALL) == a
    assert isinstance(ALL & a, Condition)
    assert And((a & b, c)) == f
    assert hash(And((a,))) == hash(a)
    assert And((a,)) == a and a == And((a,))
    assert a != b
    assert len({f, And((a, b, c))}) == 1


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: col("a").eq(None), "is_(None)"),
        (lambda: col("a").eq(object()), "cannot use a object"),
        (lambda: col("a").in_("abc"), "iterable"),
        (lambda: col("a").in_([None]), "None"),
        (lambda: col("a").in_(range(101)), "at most 100"),
        (lambda: col("a").is_("maybe"), "is_ takes"),
        (lambda: col(""), "missing column"),
        (lambda: col("a,b"), "reserves"),
        (lambda: col("a").eq(1) | col("b").eq(2), "OR"),
        (lambda: ~(col("a").eq(1) & col("b").eq(2)), "cannot negate"),
        (lambda: Condition("a", "nope", "1"), "unknown operator"),  # type: ignore[arg-type]
        (lambda: Condition("a", "eq", 1), "must be a string"),  # type: ignore[arg-type]
        (lambda: Condition("a", "in", "1"), "tuple"),
        (lambda: Condition("a", "is", "x"), "null, true"),
        (lambda: as_filter(5), "expected a filter"),  # type: ignore[arg-type]
    ],
)
def test_builder_errors(build: Any, fragment: str) -> None:
    with pytest.raises(FilterError, match=re.escape(fragment)):
        build()


def test_as_filter() -> None:
    f = col("a").eq(1)
    assert as_filter(None) is ALL
    assert as_filter(f) is f
    assert as_filter("a=eq.1") == f


def test_legacy_compatible() -> None:
    assert ALL.legacy_compatible
    assert col("a").eq(1).legacy_compatible
    assert col("a").in_([1, 2]).legacy_compatible
    assert not col("a").not_.eq(1).legacy_compatible
    assert not col("a").like("x%").legacy_compatible
    assert not (col("a").eq(1) & col("b").eq(2)).legacy_compatible
    assert not col("a").eq("x,y").legacy_compatible  # needs quoting


# --------------------------------------------------------------------------- renderings


def test_render_examples() -> None:
    f = col("status").eq("open") & col("id").in_([1, 2]) & ~col("x").is_(None)
    assert f.to_realtime() == "status=eq.open,id=in.(1,2),x=not.is.null"
    assert str(f) == f.to_realtime()
    assert f.to_postgrest() == [("status", "eq.open"), ("id", "in.(1,2)"), ("x", "not.is.null")]
    g = col("n").eq(' a,"b"\\ ') & col("m").in_(["a,b", "", "x.y", "p:q", "plain"])
    assert g.to_realtime() == 'n=eq." a,\\"b\\"\\\\ ",m=in.("a,b","",x.y,p:q,plain)'
    assert g.to_postgrest() == [
        ("n", 'eq. a,"b"\\ '),
        ("m", 'in.("a,b","","x.y","p:q",plain)'),
    ]
    assert col("d").isdistinct(3).to_postgrest() == [("d", "isdistinct.3")]
    assert col("r").imatch("^a").to_postgrest() == [("r", "imatch.^a")]
    assert col("r").not_.match("^a").to_postgrest() == [("r", "not.match.^a")]


def test_postgrest_like_star_is_a_superset() -> None:
    f = col("t").like("a*b")
    assert f.to_postgrest() == [("t", "like.a_b")]
    assert f.matches({"t": "a*b"})
    assert not f.matches({"t": "axb"})  # locally exact; PostgREST would also return axb


# --------------------------------------------------------------------------- local predicate


@pytest.mark.parametrize(
    ("f", "row", "expected"),
    [
        (col("a").eq(1), {"a": 1}, True),
        (col("a").eq(1), {"a": 1.0}, True),
        (col("a").eq("1.0"), {"a": 1}, True),
        (col("a").eq("x"), {"a": 1}, False),  # uncastable: fails
        (col("a").not_.eq("x"), {"a": 1}, False),  # ... negated too
        (col("a").eq(1), {}, False),  # absent column fails
        (col("a").is_(None), {}, False),  # even for is
        (col("a").eq(1), {"a": None}, False),
        (col("a").not_.eq(1), {"a": None}, False),  # NULL: not. does not rescue it
        (col("a").neq(1), {"a": None}, False),
        (col("a").is_(None), {"a": None}, True),
        (col("a").not_.is_(None), {"a": None}, False),
        (col("a").is_("unknown"), {"a": None}, True),
        (col("a").is_(True), {"a": True}, True),
        (col("a").is_(False), {"a": True}, False),
        (col("a").not_.is_(False), {"a": None}, True),
        (col("a").isdistinct(1), {"a": None}, True),
        (col("a").isdistinct(1), {"a": 1}, False),
        (col("a").not_.isdistinct(1), {"a": None}, False),
        (col("a").eq(True), {"a": True}, True),
        (col("a").eq("t"), {"a": True}, True),
        (col("a").lt(10), {"a": 9}, True),
        (col("a").lt(10), {"a": 10}, False),
        (col("a").lte(10), {"a": 10}, True),
        (col("a").gt(1.5), {"a": 2}, True),
        (col("a").gte("0.1"), {"a": 0.1}, True),
        (col("a").in_([1, 2]), {"a": 2}, True),
        (col("a").in_([1, "zz"]), {"a": 1}, True),
        (col("a").not_.in_([1, 2]), {"a": 3}, True),
        (col("a").in_([]), {"a": 3}, False),
        (col("s").eq("b"), {"s": "b"}, True),
        (col("s").lt("b"), {"s": "a"}, True),
        (col("s").like("a%"), {"s": "abc"}, True),
        (col("s").like("a_c"), {"s": "abc"}, True),
        (col("s").like("a_c"), {"s": "abbc"}, False),
        (col("s").like("a\\%"), {"s": "a%"}, True),
        (col("s").like("a\\%"), {"s": "ab"}, False),
        (col("s").like("a\\"), {"s": "a\\"}, False),  # trailing escape: invalid pattern
        (col("s").like("A%"), {"s": "abc"}, False),
        (col("s").ilike("A%"), {"s": "abc"}, True),
        (col("s").like("%"), {"s": "line\nbreak"}, True),
        (col("s").like("a%"), {"s": 5}, False),  # like on a non-text value
        (col("s").match("b+"), {"s": "abbc"}, True),
        (col("s").match("^b"), {"s": "abbc"}, False),
        (col("s").imatch("^A"), {"s": "abbc"}, True),
        (col("s").match("("), {"s": "("}, False),  # invalid regex
        (col("t").gt("2026-01-01T00:00:00Z"), {"t": "2026-01-01T01:00:00+02:00"}, False),
        (col("t").lt("2026-01-01 00:00:00+00"), {"t": "2025-12-31T23:59:59.999Z"}, True),
        (col("t").eq("2026-01-01T00:00:00Z"), {"t": "2026-01-01T00:00:00+00:00"}, True),
        (col("u").eq("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"),
         {"u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"}, True),
        (col("j").eq('{"k": [1, 2]}'), {"j": {"k": [1, 2]}}, True),
        (col("j").lt('{"k": 1}'), {"j": {"k": 0}}, False),
        (col("a").eq(1) & col("b").eq(2), {"a": 1, "b": 2}, True),
        (col("a").eq(1) & col("b").eq(2), {"a": 1, "b": 3}, False),
    ],
)
def test_matches(f: Filter, row: Mapping[str, Any], expected: bool) -> None:
    assert f.matches(row) is expected


# --------------------------------------------------------------------------- property tests

# A fixed schema for generated rows: a is int, b is text, c is bool; any may be NULL or absent.
COLUMN_TYPES: dict[str, type] = {"a": int, "b": str, "c": bool}
# Text with every character the two grammars treat specially, and spaces.
TEXT_ALPHABET = "abAB ,()\"\\.:%_*="
ints = st.integers(min_value=-3, max_value=3)
Spec = tuple[str, str, Any, bool]  # (column, op, typed value, negated)


def _like_spec(pattern: str, text: str, ignore_case: bool) -> bool | None:
    """Reference LIKE by dynamic programming over (pattern, text) positions.

    None for an invalid pattern: PostgreSQL raises an error, so the row is never delivered.
    """
    if ignore_case:
        pattern, text = pattern.lower(), text.lower()
    tokens: list[str] = []  # each: "%", "_" or a literal character prefixed with "="
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            if i + 1 == len(pattern):
                return None  # PostgreSQL rejects a trailing escape
            tokens.append("=" + pattern[i + 1])
            i += 2
            continue
        tokens.append(ch if ch in "%_" else "=" + ch)
        i += 1
    reach = {0}
    for tok in tokens:
        nxt: set[int] = set()
        for pos in reach:
            if tok == "%":
                nxt.update(range(pos, len(text) + 1))
            elif pos < len(text) and (tok == "_" or tok[1] == text[pos]):
                nxt.add(pos + 1)
        reach = nxt
    return len(text) in reach


def _regex_spec(pattern: str, text: str, ignore_case: bool) -> bool:
    """Reference for the generated regexes: optional ^, literal letters, optional $."""
    if ignore_case:
        pattern, text = pattern.lower(), text.lower()
    start, end = pattern.startswith("^"), pattern.endswith("$")
    core = pattern[1 if start else 0 : len(pattern) - 1 if end else len(pattern)]
    if start and end:
        return text == core
    if start:
        return text.startswith(core)
    if end:
        return text.endswith(core)
    return core in text


def reference(specs: list[Spec], row: Mapping[str, Any]) -> bool:
    """PostgreSQL semantics on typed values, written without supasync's code."""
    for column, op, value, negated in specs:
        if column not in row:
            return False
        have = row[column]
        if op == "is":
            result = have is None if value in (None, "unknown") else have is value
        elif op == "isdistinct":
            result = have is None or have != value
        elif have is None:
            return False
        elif op == "in":
            result = have in value
        elif op in ("like", "ilike"):
            like = _like_spec(value, have, op == "ilike")
            if like is None:
                return False
            result = like
        elif op in ("match", "imatch"):
            result = _regex_spec(value, have, op == "imatch")
        else:
            result = {
                "eq": have == value, "neq": have != value, "lt": have < value,
                "lte": have <= value, "gt": have > value, "gte": have >= value,
            }[op]
        if result == negated:
            return False
    return True


# Row and filter texts are drawn from one small pool per example, so that they often coincide
# (otherwise quoting mistakes in in-lists would almost never change a result).
pools = st.lists(st.text(alphabet=TEXT_ALPHABET, max_size=4), min_size=1, max_size=4)


@st.composite
def specs(draw: st.DrawFn, pool: list[str]) -> Spec:
    texts = st.sampled_from(pool) | st.text(alphabet=TEXT_ALPHABET, max_size=4)
    column = draw(st.sampled_from(sorted(COLUMN_TYPES)))
    negated = draw(st.booleans())
    if column == "a":
        op = draw(st.sampled_from(["eq", "neq", "lt", "lte", "gt", "gte", "in", "is",
                                   "isdistinct"]))
        values: st.SearchStrategy[Any] = ints
    elif column == "b":
        # "in" and "eq" weighted up: they carry the quoting rules of both grammars.
        op = draw(st.sampled_from(["eq", "eq", "neq", "lt", "lte", "gt", "gte", "in", "in",
                                   "in", "in", "is", "isdistinct", "like", "ilike", "match",
                                   "imatch"]))
        values = texts
    else:
        op = draw(st.sampled_from(["eq", "neq", "in", "is", "isdistinct"]))
        values = st.booleans()
    if op == "in":
        value: Any = draw(st.lists(values, max_size=4))
    elif op == "is":
        value = draw(st.sampled_from([None, "unknown"] + ([True, False] if column == "c" else [])))
    elif op in ("like", "ilike"):
        # '*' is excluded: PostgREST cannot express a literal '*' in a pattern (tested apart).
        value = draw(st.text(alphabet="abA%_\\ ,()\"", max_size=5))
    elif op in ("match", "imatch"):
        value = (draw(st.sampled_from(["", "^"])) + draw(st.text(alphabet="abAB", max_size=3))
                 + draw(st.sampled_from(["", "$"])))
    else:
        value = draw(values)
    return (column, op, value, negated)


def build(specs_: list[Spec]) -> Filter:
    f: Filter = ALL
    for column, op, value, negated in specs_:
        ref = col(column).not_ if negated else col(column)
        method = {"in": ref.in_, "is": ref.is_}.get(op) or getattr(ref, op)
        f = f & method(value)
    return f


@st.composite
def rows(draw: st.DrawFn, pool: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    texts = st.sampled_from(pool)
    for column, strategy in (("a", ints), ("b", texts), ("c", st.booleans())):
        present = draw(st.integers(0, 9))
        if present == 0:
            continue  # absent column
        row[column] = None if present == 1 else draw(strategy)
    return row


# ---- a tiny PostgREST-parameter evaluator, independent of supasync.core.filters


def _pgrst_list(text: str) -> list[str]:
    assert text.startswith("(") and text.endswith(")"), text
    body, items, i = text[1:-1], [], 0
    if not body:
        return []
    while True:
        if i < len(body) and body[i] == '"':
            i += 1
            out = []
            while body[i] != '"':
                if body[i] == "\\":
                    i += 1
                out.append(body[i])
                i += 1
            i += 1
            items.append("".join(out))
        else:
            j = body.find(",", i)
            j = len(body) if j < 0 else j
            items.append(body[i:j])
            i = j
        if i >= len(body):
            return items
        assert body[i] == ",", (body, i)
        i += 1


def _cast(column: str, text: str) -> Any:
    kind = COLUMN_TYPES[column]
    if kind is bool:
        return {"true": True, "false": False}[text]
    return kind(text)


def postgrest_eval(params: list[tuple[str, str]], row: Mapping[str, Any]) -> bool:
    specs_: list[Spec] = []
    for column, expr in params:
        negated = expr.startswith("not.")
        op, _, rest = expr[4 if negated else 0 :].partition(".")
        if op == "in":
            value: Any = [_cast(column, item) for item in _pgrst_list(rest)]
        elif op == "is":
            value = {"null": None, "unknown": "unknown", "true": True, "false": False}[rest]
        elif op in ("like", "ilike"):
            value = rest.replace("*", "%")  # PostgREST's alias
        elif op in ("match", "imatch"):
            value = rest
        else:
            value = _cast(column, rest)
        specs_.append((column, op, value, negated))
    return reference(specs_, row)


@settings(max_examples=1000, deadline=None)
@given(st.data(), pools)
def test_three_renderings_agree(data: st.DataObject, pool: list[str]) -> None:
    specs_ = data.draw(st.lists(specs(pool), max_size=4))
    row = data.draw(rows(pool))
    f = build(specs_)
    expected = reference(specs_, row)
    assert f.matches(row) is expected
    assert parse_filter(f.to_realtime()).matches(row) is expected
    assert postgrest_eval(f.to_postgrest(), row) is expected


@settings(max_examples=300, deadline=None)
@given(pools.flatmap(lambda pool: st.lists(specs(pool), max_size=4)))
def test_realtime_round_trip(specs_: list[Spec]) -> None:
    f = build(specs_)
    text = f.to_realtime()
    assert parse_filter(text) == f
    assert parse_filter(text).to_realtime() == text


column_names = st.text(
    alphabet=st.characters(blacklist_characters='=,()"\\', blacklist_categories=["Cs"]),
    min_size=1,
    max_size=6,
).filter(lambda s: s == s.strip())
ops = st.sampled_from(["eq", "neq", "lt", "lte", "gt", "gte", "like", "ilike", "match",
                       "imatch", "isdistinct"])


@st.composite
def any_conditions(draw: st.DrawFn) -> Condition:
    column = draw(column_names)
    kind = draw(st.integers(0, 2))
    negated = draw(st.booleans())
    if kind == 0:
        return Condition(column, "in", tuple(draw(st.lists(st.text(), max_size=5))), negated)
    if kind == 1:
        return Condition(column, "is", draw(st.sampled_from(["null", "true", "false",
                                                             "unknown"])), negated)
    op: Any = draw(ops)
    return Condition(column, op, draw(st.text()), negated)


@settings(max_examples=400, deadline=None)
@given(st.lists(any_conditions(), max_size=4))
def test_round_trip_arbitrary_text(conds: list[Condition]) -> None:
    f = And(tuple(conds))
    assert parse_filter(f.to_realtime()) == f


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab=.,()\"\\ noteqin", max_size=20))
def test_parser_raises_only_filter_error(text: str) -> None:
    try:
        f = parse_filter(text)
    except FilterError as err:
        assert err.position is None or 0 <= err.position <= len(text)
    else:
        assert parse_filter(f.to_realtime()) == f


@settings(max_examples=500, deadline=None)
@given(st.data(), pools, st.booleans())
def test_in_lists_agree(data: st.DataObject, pool: list[str], negated: bool) -> None:
    # Focused on the two in-list quoting rules: one `in` on text, row drawn from the same pool.
    values = data.draw(st.lists(st.sampled_from(pool), max_size=4))
    row = {"b": data.draw(st.sampled_from(pool))}
    f = col("b").not_.in_(values) if negated else col("b").in_(values)
    expected = (row["b"] in values) != negated
    assert f.matches(row) is expected
    assert parse_filter(f.to_realtime()).matches(row) is expected
    assert postgrest_eval(f.to_postgrest(), row) is expected


@pytest.mark.parametrize(
    ("f", "row", "expected"),
    [
        # timestamptz: a date alone is midnight UTC; offsets are honoured.
        (col("t").eq("2026-01-01"), {"t": "2026-01-01T00:00:00+00:00"}, True),
        (col("t").gt("2026-01-01T10:00:00+02:00"), {"t": "2026-01-01T09:00:00Z"}, True),
        (col("t").eq("2026-01-01T10:00:00"), {"t": "2026-01-01T10:00:00+00:00"}, True),
        # timestamp without time zone: the cast drops the text's offset.
        (col("t").eq("2026-01-01T10:00:00+02:00"), {"t": "2026-01-01T10:00:00"}, True),
        # date columns: the text's date part counts.
        (col("d").eq("2026-01-01T10:00"), {"d": "2026-01-01"}, True),
        (col("d").lt("2026-01-02"), {"d": "2026-01-01"}, True),
        (col("d").eq("2026-01-01"), {"d": "2026-13-45"}, False),
        (col("d").eq("2026-01-01 x"), {"d": "2026-01-01"}, False),
    ],
)
def test_matches_temporal(f: Filter, row: Mapping[str, Any], expected: bool) -> None:
    assert f.matches(row) is expected
