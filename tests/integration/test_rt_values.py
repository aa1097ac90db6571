"""values.py renders column text exactly as PostgreSQL's own ``to_jsonb`` does."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest

from supasync.devstack.postgres import Cluster
from supasync.devstack.realtime.values import (
    ExactNumber,
    dumps,
    has_fast_path,
    jsonb_text_length,
    render_values,
    try_render_fast,
)

pytestmark = pytest.mark.integration

FAST_CASES: list[tuple[str, str]] = [
    ("int2", "-32768"), ("int2", "32767"), ("int4", "0"), ("int4", "-2147483648"),
    ("int8", "9223372036854775807"), ("int8", "-9223372036854775808"),
    ("float8", "1.5"), ("float8", "-0"), ("float8", "0"), ("float8", "NaN"),
    ("float8", "Infinity"), ("float8", "-Infinity"), ("float8", "1e100"), ("float8", "1e-5"),
    ("float8", "1e-20"), ("float8", "123456789012345678"), ("float8", "0.1"),
    ("float8", "2.2250738585072014e-308"), ("float8", "1.7976931348623157e308"),
    ("float8", "-123.456e-7"), ("float4", "3.4028235e38"), ("float4", "1.5e-7"),
    ("float4", "0.1"), ("float4", "NaN"), ("float4", "-0"),
    ("numeric", "1.50"), ("numeric", "0"), ("numeric", "-0.0"), ("numeric", "NaN"),
    ("numeric", "Infinity"), ("numeric", "-Infinity"),
    ("numeric", "123456789012345678901234567890.123456789012345678901234567890"),
    ("numeric", "-0.000000000000000000001"), ("numeric", "1e30"), ("numeric(10,3)", "2.5"),
    ("bool", "true"), ("bool", "false"),
    ("text", "plain"), ("text", ""), ("text", "unicode: é ü 中文 🎉"),
    ("text", 'quote " backslash \\ newline \n tab \t ctrl \x01'),
    ("varchar(10)", "abc"), ("char(5)", "ab"), ("name", "a_name"), ('"char"', "x"),
    ("uuid", "6f1e0000-0000-0000-0000-00000000000a"), ("oid", "4294967295"),
    ("jsonb", '{"b": 1, "a": [1, 2.50, "x", null, true], "aa": {"z": -0.0}}'),
    ("jsonb", "1e3"), ("jsonb", '"str"'), ("jsonb", "null"), ("jsonb", "[]"),
    ("jsonb", '{"big": 123456789012345678901234567890.5}'),
    ("timestamptz", "2026-08-21 10:15:30.123456+00"), ("timestamptz", "2026-08-21 10:15:30+02"),
    ("timestamptz", "infinity"), ("timestamptz", "-infinity"),
    ("timestamp", "2026-08-21 10:15:30.5"), ("timestamp", "2000-01-01 00:00:00"),
    ("date", "2026-02-28"), ("date", "infinity"),
]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    c.start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
async def aconn(cluster: Cluster) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    conn = await psycopg.AsyncConnection.connect(cluster.dsn, autocommit=True)
    await conn.execute("set datestyle = 'ISO, MDY'")
    try:
        yield conn
    finally:
        await conn.close()


def exact(jsonb_text: str) -> str:
    """PostgreSQL's jsonb text, re-written compactly with every number's digits kept."""
    return dumps(json.loads(jsonb_text, parse_float=ExactNumber))


async def facts(
    conn: psycopg.AsyncConnection[Any], typ: str, literal: str
) -> tuple[int, int, str, str]:
    cur = await conn.execute(
        f"select pg_typeof(x)::oid::int, -1, format('%%s', x), to_jsonb(x)::text"
        f" from (select %s::{typ} as x) s",
        [literal],
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), row[2], row[3]


@pytest.mark.parametrize(("typ", "literal"), FAST_CASES)
async def test_fast_path_equals_to_jsonb(
    aconn: psycopg.AsyncConnection[Any], typ: str, literal: str
) -> None:
    oid, _, text, expected = await facts(aconn, typ, literal)
    assert has_fast_path(oid), typ
    ok, value = try_render_fast(oid, text)
    assert ok, (typ, text)
    assert dumps(value) == exact(expected), (typ, text)


async def test_fast_path_numbers_are_plain_python(aconn: psycopg.AsyncConnection[Any]) -> None:
    oid, _, text, _ = await facts(aconn, "numeric", "1.50")
    ok, value = try_render_fast(oid, text)
    assert ok
    assert isinstance(value, ExactNumber) and value == 1.5 and value.text == "1.50"
    assert json.dumps({"v": value}) == '{"v": 1.5}'  # still a float for plain json
    oid, _, text, _ = await facts(aconn, "int8", "9223372036854775807")
    assert try_render_fast(oid, text) == (True, 9223372036854775807)


SQL_CASES: list[tuple[str, str]] = [
    ("json", '{"b": 1, "a": 2, "a": 3, "c": 1.50}'),
    ("json", "[1, 2.0, {\"y\": 1, \"x\": 2}]"),
    ("int4[]", "{1,2,NULL,3}"), ("text[]", '{"a,b",c,NULL,"q\\"x"}'),
    ("numeric[]", "{1.50,2,NaN}"), ("int4[][]", "{{1,2},{3,4}}"),
    ("interval", "1 year 2 mons 3 days 04:05:06.5"),
    ("time", "10:15:30.25"), ("timetz", "10:15:30+02"),
    ("timestamptz", "0044-03-15 12:00:00+00 BC"), ("date", "0044-03-15 BC"),
    ("inet", "10.0.0.1/8"), ("point", "(1,2)"), ("bit(3)", "101"), ("money", "12.34"),
    ("int4range", "[1,10)"), ("tsvector", "a fat cat"), ("xml", "<a>1</a>"),
]


@pytest.mark.parametrize(("typ", "literal"), SQL_CASES)
async def test_sql_path_equals_to_jsonb(
    aconn: psycopg.AsyncConnection[Any], typ: str, literal: str
) -> None:
    cur = await aconn.execute(
        f"select pg_typeof(x)::oid::int, format('%%s', x), to_jsonb(x)::text"
        f" from (select %s::{typ} as x) s",
        [literal],
    )
    row = await cur.fetchone()
    assert row is not None
    oid, text, expected = int(row[0]), row[1], row[2]
    typmod = 3 if typ == "bit(3)" else -1
    (value,) = await render_values(aconn, [(oid, typmod, text)])
    assert dumps(value) == exact(expected), typ


async def test_composite_enum_domain_and_nulls(aconn: psycopg.AsyncConnection[Any]) -> None:
    await aconn.execute("drop type if exists v_pair cascade")
    await aconn.execute("drop type if exists v_mood cascade")
    await aconn.execute("drop domain if exists v_pos cascade")
    await aconn.execute("create type v_pair as (a int, b text)")
    await aconn.execute("create type v_mood as enum ('sad', 'happy')")
    await aconn.execute("create domain v_pos as int check (value > 0)")
    items = []
    expected = []
    for typ, lit in (("v_pair", '(1,"x y")'), ("v_mood", "happy"), ("v_pos", "7")):
        cur = await aconn.execute(
            f"select pg_typeof(x)::oid::int, format('%%s', x), to_jsonb(x)::text"
            f" from (select %s::{typ} as x) s",
            [lit],
        )
        row = await cur.fetchone()
        assert row is not None
        items.append((int(row[0]), -1, row[1]))
        expected.append(exact(row[2]))
    items.append((23, -1, None))
    got = await render_values(aconn, items)
    assert [dumps(v) for v in got[:3]] == expected
    assert got[3] is None


async def test_bytea_is_bare_hex_like_the_real_server(
    aconn: psycopg.AsyncConnection[Any],
) -> None:
    # The real server sends wal2json's bare hex (§5.2), not to_jsonb's "\\x..." string.
    oid, _, text, expected = await facts(aconn, "bytea", "\\x00ff10")
    assert json.loads(expected) == "\\x00ff10"
    assert try_render_fast(oid, text) == (True, "00ff10")


def test_jsonb_text_length() -> None:
    assert jsonb_text_length("abc") == 5
    assert jsonb_text_length(12) == 2
    assert jsonb_text_length(ExactNumber("1.50")) == 4
    assert jsonb_text_length(None) == 4
    assert jsonb_text_length({"a": 1}) == len('{"a": 1}')
    assert jsonb_text_length("é") == 4


def test_dumps_keeps_digits() -> None:
    assert dumps({"n": ExactNumber("1.50"), "l": [1, "x", None, True]}) == (
        '{"n":1.50,"l":[1,"x",null,true]}'
    )
