"""The snapshot's fast path against PostgreSQL's own JSON: rows of awkward values of many types,
read through the local stack's PostgREST, stored by the fast path (undecoded pages) and by the
reference path (decoded rows, Python converters) must be identical, value and type; and a whole
snapshot (several key ranges, many pages, cursor mode) must equal the reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from supasync.devstack.testing import StackProcess
from supasync.mirror.table import shape_from_info
from supasync.repair.fullread import key_ranges
from supasync.repair.repairer import RepairConfig
from supasync.repair.rest import Rest
from supasync.store.tables import MirrorStore, TableShape
from tests.mirror_helpers import repair_table

pytestmark = pytest.mark.integration

SCHEMA = """
drop table if exists fast_awkward;
drop type if exists fast_mood;
drop type if exists fast_address;
create type fast_mood as enum ('happy', 'so-so', 'caf\u00e9 "q"');
create type fast_address as (street text, no int, extra json);
create table fast_awkward (
  id bigint primary key,
  title text, done boolean, score float8, price numeric(20,4), plain numeric, small real,
  at timestamptz, local timestamp, meta jsonb, raw json, tags text[], nums float8[],
  ints int[], docs jsonb[], olds json[], blob bytea, mood fast_mood, addr fast_address,
  uid uuid, day date, clock time, span interval, updated_at timestamptz
);
grant select on fast_awkward to anon, authenticated, service_role;
insert into fast_awkward values
 (1000, 'plain', true, 1.5, 1000.25, 0.1, 1.5, '2026-01-01 10:00:00+00', '2026-01-01 10:00:00',
  '{"n": 1, "tag": "t1"}', '{"a":1}', '{a,b}', '{1,2}', '{1,2,3}', array['{"k": 1}'::jsonb],
  array['{"k" : 1}'::json], '\\x00ff', 'happy', row('Main', 5, '{"x" : [1, 2]}'),
  '6f1c2a4e-0000-4000-8000-000000000001', '2026-01-01', '10:00:00.5', '1 day 02:00:00',
  '2026-01-02 00:00:00+00'),
 (2000, E'caf\u00e9 "q" \\\\ \\n\\t\\x01\\x1f \U0001F600 \u4e2d', false, -0.0, 1.5, 1.50, 'NaN',
  '2026-01-01 10:00:00.5+02', '2026-01-01 10:00:00.123456',
  E'{"s": "caf\u00e9 \\\\"q\\\\" \\\\\\\\ \\\\n\\\\u0001", "k, x": "a: b", "nested":'
  ' {"list": [1, "two", null, true, false, {}], "empty": []}}',
  '{"a" : 1, "a": "\\u00e9", "b":[1.0, 2.50]}', array['x,y', '"z"', null], '{1e300,1.5e-07,-2.5}',
  '{}', array['{"n": 1.50}'::jsonb, null], array['{"b":1,"b":2}'::json], '\\xdeadbeef', 'so-so',
  row(null, null, null), null, '0044-03-15 BC', '23:59:59.999999', '-3 years', null),
 (3000, null, null, 'Infinity', 'NaN', 'NaN', '-Infinity', 'infinity', '-infinity', 'null',
  'null', '{}', '{}', '{}', '{}', '{}', '', E'caf\u00e9 "q"', row('a.b', -1, 'null'), null, null,
  null, null, '2026-01-03 00:00:00.25+00'),
 (4000, '', true, 1e300, 123456789012345.25, 123456789012345678901234567890.123456789, 0.1,
  '0044-03-15 10:00:00+00 BC', '2026-01-01 10:00:00', '"just a string"', '"x"', '{"1.5"}',
  '{{1.5},{2}}', '{{1,2},{3,4}}', array['"s"'::jsonb, '5'::jsonb], array['[]'::json], null,
  null, null, null, null, null, null, '2026-01-01 00:00:00+00'),
 (5000, 'big', false, 100, 5, 123456789012345678901234567890.5, 3,
  '2026-06-30 23:59:59.999999-07:30',
  null, '123456789012345678901234567890', '[1,{"x":[]}]', '{"e+1","e-1"}', '{NaN,Infinity}',
  '{}', array['true'::jsonb], null, null, null, null, null, null, null, null, null),
 (6000, 'json numbers', true, 0.1, -0.5, -0.5, 2.5e-10,
  null, null, '{"price": 1.50, "big": 1000000000000000000000, "neg": -5, "e": 1e5}',
  '{"deep": {"deeper": [1e5, 1E-3]}}', null, null, null, null, null, null, null, null, null,
  null, null, null, null);
insert into fast_awkward (id, title, meta, tags, score, at, updated_at)
select g * 1000, 'row ' || g, jsonb_build_object('n', g, 'half', g / 2.0, 'name', 'n' || g),
       array['t' || g], g * 1.25, timestamptz '2026-01-01' + g * interval '1 minute',
       timestamptz '2026-02-01' + g * interval '1 second'
  from generate_series(7, 80) g;
"""


def typed(rows: list[dict[str, Any]]) -> list[list[tuple[str, str, Any]]]:
    """Rows with each value's type, so 1, 1.0 and True do not compare equal."""
    return [[(k, type(v).__name__, v) for k, v in r.items()] for r in rows]


@pytest.fixture(scope="module")
def table(stack: StackProcess) -> str:
    stack.sql(SCHEMA)
    return "fast_awkward"


def rest_for(stack: StackProcess, client: httpx.AsyncClient | None = None) -> Rest:
    async def token() -> str:
        return stack.service_role_key

    return Rest(f"{stack.url}/rest/v1", stack.anon_key, token, client=client)


async def reference_store(rest: Rest, shape: TableShape, path: Path) -> MirrorStore:
    """The table read as decoded rows and stored by the Python converters."""
    store = MirrorStore(path)
    store.ensure_table(shape)
    async for page in rest.pages("public", shape.table, order=["id"], page_size=1000):
        with store.transaction():
            store.upsert_rows(shape, page)
    return store


async def test_fast_page_equals_reference_on_postgres_json(stack: StackProcess, table: str,
                                                           tmp_path: Path) -> None:
    rest = rest_for(stack)
    try:
        shape = shape_from_info("public", table, await rest.table_info("public", table))
        want = await reference_store(rest, shape, tmp_path / "reference.sqlite")
        fast = MirrorStore(tmp_path / "fast.sqlite")
        fast.ensure_table(shape)
        pages = 0
        async for page in rest.raw_pages("public", table, order=["id"], page_size=1000):
            pages += 1
            assert page.body.startswith(b"[{") and page.count == 80
            with fast.transaction():
                done = fast.write_page(shape, page.body)
            assert done.rows == page.count
        assert pages == 1 and (fast.pages_fast, fast.pages_reference) == (1, 0)
        assert typed(fast.rows(shape)) == typed(want.rows(shape))
        # The merge path (a re-snapshot into a non-empty table) agrees too and rewrites nothing.
        fast.begin_sweep(shape)
        async for page in rest.raw_pages("public", table, order=["id"], page_size=1000):
            with fast.transaction():
                assert fast.write_page(shape, page.body, merge=True, mark=True).written == 0
        with fast.transaction():
            assert fast.sweep(shape) == 0
        assert typed(fast.rows(shape)) == typed(want.rows(shape))
        assert fast.pages_reference == 0
    finally:
        await rest.aclose()


async def test_snapshot_over_key_ranges_and_pages(stack: StackProcess, table: str,
                                                  tmp_path: Path) -> None:
    rest = rest_for(stack)
    try:
        shape = shape_from_info("public", table, await rest.table_info("public", table))
        want = await reference_store(rest, shape, tmp_path / "reference.sqlite")
        assert len(await key_ranges(rest, "public", table, shape.primary_key,
                                    dict(shape.columns), [], 3)) == 3
    finally:
        await rest.aclose()

    async def token() -> str:
        return stack.service_role_key

    store = MirrorStore(tmp_path / "mirror.sqlite")
    try:
        result, done, _ = await repair_table(store, f"{stack.url}/rest/v1", stack.anon_key,
                                             token, table, RepairConfig(mode="cursor"),
                                             snapshot_streams=3, snapshot_page_size=7)
        assert typed(store.rows(shape)) == typed(want.rows(shape))
        assert store.pages_fast >= 80 // 7 and store.pages_reference == 0
        # cursor mode (asked for: auto no longer trusts an updated_at no trigger bumps): the
        # greatest updated_at, as PostgREST sent it
        assert result.cursor == {"mode": "cursor", "column": "updated_at",
                                 "value": "2026-02-01T00:01:20+00:00"}
        assert done.inserted == 80
    finally:
        store.close()


async def test_raw_pages_end_on_an_empty_page_and_size_pages_by_bytes(stack: StackProcess,
                                                                     table: str) -> None:
    limits: list[int] = []

    async def seen(request: httpx.Request) -> None:
        limits.append(int(request.url.params["limit"]))

    async with httpx.AsyncClient(event_hooks={"request": [seen]}) as client:
        rest = rest_for(stack, client)
        # A short first page does not end the read (a server may cap answers below the
        # limit): an empty page does; a page shorter than an earlier one does too.
        counts = [p.count async for p in rest.raw_pages("public", table, order=["id"],
                                                        page_size=100)]
        assert (counts, limits) == ([80], [100, 100])
        limits.clear()
        counts = [p.count async for p in rest.raw_pages("public", table, order=["id"],
                                                        page_size=50)]
        assert (counts, limits) == ([50, 30], [50, 50])
        # Pages sized by bytes: a small first page, then as many rows as fit.
        limits.clear()
        pages = [p async for p in rest.raw_pages("public", table, order=["id"], page_size=64,
                                                 max_bytes=4000)]
        assert sum(p.count for p in pages) == 80 and limits[0] == 64 // 8
        assert max(limits[1:]) < 64  # rows of ~400 bytes: about 9 fit in 4000 bytes
        assert all(len(p.body) < 1.5 * 4000 for p in pages)
