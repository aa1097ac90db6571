"""The server's filter grammar and subscription-parameter rules (realtime-protocol.md §5.1)."""

from __future__ import annotations

from typing import Any

import pytest

from supasync.devstack.realtime.pg_filters import (
    Filter,
    ParamsError,
    SubscriptionParams,
    filter_sql,
    inspect,
    like_regex,
    params_to_log,
    parse_filter,
    parse_params,
    split_segments,
)


@pytest.mark.parametrize(("text", "expected"), [
    ("subject=eq.hey", [Filter("subject", "eq", "hey")]),
    ("subject=in.(hidee,ho)", [Filter("subject", "in", "{hidee,ho}")]),
    ("subject=not.like.hey%", [Filter("subject", "like", "hey%", True)]),
    ("id=gt.0,id=lt.100", [Filter("id", "gt", "0"), Filter("id", "lt", "100")]),
    ("", []),
    ("   ", []),
    ('area=eq."Oslo, Norway"', [Filter("area", "eq", "Oslo, Norway")]),
    ('s=eq."a\\"b\\\\c"', [Filter("s", "eq", 'a"b\\c')]),
    ('s=eq."unterminated', [Filter("s", "eq", '"unterminated')]),
    ('s=eq."a"b', [Filter("s", "eq", '"a"b')]),
    ("s=eq.a.b.c", [Filter("s", "eq", "a.b.c")]),
    ("s=eq.", [Filter("s", "eq", "")]),
    ("n=is.null", [Filter("n", "is", "null")]),
    ("n=not.is.null", [Filter("n", "is", "null", True)]),
    ("n=isdistinct.5", [Filter("n", "isdistinct", "5")]),
    ("s=imatch.^a(b|c)", [Filter("s", "imatch", "^a(b|c)")]),
    ('id=in.("a,b",c),x=eq.1', [Filter("id", "in", '{"a,b",c}'), Filter("x", "eq", "1")]),
    (" id=eq.1 , x=eq.2 ", [Filter("id", "eq", "1"), Filter("x", "eq", "2")]),
    ("a=eq.x=y", [Filter("a", "eq", "x=y")]),
    ("col=eq.(1,2)", [Filter("col", "eq", "(1,2)")]),
])
def test_parse(text: str, expected: list[Filter]) -> None:
    assert parse_filter(text) == expected


@pytest.mark.parametrize(("text", "detail"), [
    ("subject=foo.hey", '["foo", "hey"]'),
    ("undefined", '["undefined"]'),
    ("id=eq", '["eq"]'),
    ("id=not.eq", '["eq"]'),
    ("id=eq.1,,x=eq.2", "filter must not contain empty segments (check for extra commas)"),
    ("id=eq.1,", "filter must not contain empty segments (check for extra commas)"),
    ("id=in.1,2", "`in` filter value must be wrapped by parentheses"),
    ("id=in.(1,2", "`in` filter value must be wrapped by parentheses"),
    ('s=wat."q\\"x"', '["wat", "\\"q\\\\\\"x\\""]'),
])
def test_parse_errors(text: str, detail: str) -> None:
    with pytest.raises(ParamsError) as info:
        parse_filter(text)
    assert info.value.text == detail


def test_split_respects_parentheses_and_quotes() -> None:
    assert split_segments('a=in.(1,2),b=eq."x,y",c=eq.z') == [
        "a=in.(1,2)", 'b=eq."x,y"', "c=eq.z"]
    # a quote only opens a value after '.', '(' or ','
    assert split_segments('a"b=eq.1,c=eq.2') == ['a"b=eq.1', "c=eq.2"]
    assert split_segments("a=eq.)),b=eq.1") == ["a=eq.))", "b=eq.1"]


PUBLIC_T = {"event": "*", "schema": "public", "table": "t"}


@pytest.mark.parametrize(("params", "expected"), [
    (PUBLIC_T, SubscriptionParams("*", "public", "t", (), None)),
    ({"schema": "public"}, SubscriptionParams("*", "public", "*", (), None)),
    ({"table": "t"}, SubscriptionParams("*", "public", "t", (), None)),
    ({"event": "insert", "schema": "s", "table": "t", "filter": "a=eq.1"},
     SubscriptionParams("INSERT", "s", "t", (Filter("a", "eq", "1"),), None)),
    ({"event": "bogus", "schema": "s", "table": "t", "select": ["b", 3, "a"]},
     SubscriptionParams("*", "s", "t", (), ("b", "a"))),
    ({"event": "Delete", "schema": "s", "table": "t", "select": []},
     SubscriptionParams("DELETE", "s", "t", (), None)),
    ({"event": 5, "schema": "s", "table": "t"}, SubscriptionParams("*", "s", "t", (), None)),
])
def test_params(params: dict[str, Any], expected: SubscriptionParams) -> None:
    assert parse_params(params) == expected


NO = ("No subscription params provided. Please provide at least a `schema` or `table` to "
      "subscribe to: ")


@pytest.mark.parametrize(("params", "text"), [
    ({}, NO + "%{}"),
    ({"event": "*", "schema": None, "table": "t"},
     NO + '%{"event" => "*", "schema" => nil, "table" => "t"}'),
    ({"schema": "public", "filter": "a=eq.1"},
     NO + '%{"filter" => "a=eq.1", "schema" => "public"}'),
    ({"table": "t", "schema": "public", "filter": None},
     NO + '%{"filter" => nil, "schema" => "public", "table" => "t"}'),
    ({"event": "*", "user_token": "secret"}, NO + "<redacted>"),
    ({"schema": "s", "table": "t", "select": "a,b"},
     'Error parsing `select` params: expected a list of column name strings, e.g. select: '
     '["col1", "col2"]'),
    ({"schema": "*", "table": "t", "select": ["a"]},
     "Column selection is not supported for wildcard subscriptions. Provide an explicit "
     "schema and table name."),
    ({"schema": "s", "table": "t", "filter": "a=nope.1"},
     'Error parsing `filter` params: ["nope", "1"]'),
])
def test_params_errors(params: dict[str, Any], text: str) -> None:
    with pytest.raises(ParamsError) as info:
        parse_params(params)
    assert info.value.text == text


def test_params_to_log() -> None:
    p = parse_params({"event": "*", "schema": "public", "table": "test",
                      "filter": "notacolumn=eq.123"})
    assert params_to_log(p) == ('event: *, schema: public, table: test, filters: '
                                '[{"notacolumn", "eq", "123", false}], select: nil')
    p = parse_params({"event": "UPDATE", "schema": "public", "table": "t",
                      "filter": "a=not.in.(1,2)", "select": ["x"]})
    assert params_to_log(p) == ('event: UPDATE, schema: public, table: t, filters: '
                                '[{"a", "in", "{1,2}", true}], select: ["x"]')


def test_inspect() -> None:
    assert inspect(None) == "nil"
    assert inspect([1, "a", True, {"k": [None]}]) == '[1, "a", true, %{"k" => [nil]}]'
    assert inspect('q"\\\n#{x}') == '"q\\"\\\\\\n\\#{x}"'


def test_like_regex() -> None:
    assert like_regex("*").fullmatch("anything")
    assert like_regex("a_b").fullmatch("axb") and not like_regex("a_b").fullmatch("ab")
    assert like_regex("to%").fullmatch("todos") and not like_regex("to%").fullmatch("xtodos")
    assert like_regex("a.b").fullmatch("a.b") and not like_regex("a.b").fullmatch("axb")
    assert not like_regex("Todos").fullmatch("todos")


def test_filter_sql_shapes() -> None:
    assert filter_sql("eq", False, "integer", "1", "a", "b") == (
        "coalesce(a::integer = (b::integer), false)")
    assert filter_sql("eq", True, "integer", "1", "a", "b") == (
        "coalesce(not (a::integer = (b::integer)), false)")
    assert filter_sql("in", False, "text", "{x}", "a", "b") == (
        "coalesce(a::text = any(b::text[]), false)")
    assert filter_sql("is", True, "boolean", "unknown", "a", "b") == (
        "coalesce(a::boolean is not UNKNOWN, false)")
    assert filter_sql("isdistinct", True, "integer", "5", "a", "b") == (
        "coalesce(a::integer is not distinct from b::integer, false)")
    with pytest.raises(ValueError):
        filter_sql("is", False, "boolean", "1; drop table x", "a", "b")
