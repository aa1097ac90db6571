"""Gap repair against a server that caps answers below the page size asked (PostgREST's
``db-max-rows``; Supabase's "Max rows", 1000 by default). A repair's key scan asks for 5000 keys
per page: taking the capped first page for the end made every cached row past the cap look
deleted (DELETEs delivered to handlers, rows dropped from the cache)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from supasync import Change, GapRepaired, Realtime
from supasync.devstack.testing import StackProcess
from supasync.repair import sqlinstall

pytestmark = pytest.mark.integration

CAP = 40
ROWS = 300
WAIT = 30.0


@pytest.fixture(scope="module")
def capped() -> Iterator[StackProcess]:
    """A stack of its own whose PostgREST returns at most CAP rows per answer
    (``supasync dev --max-rows``)."""
    stack = StackProcess(extra_args=["--max-rows", str(CAP)]).start()
    try:
        yield stack
    finally:
        stack.close()


def server_rows(stack: StackProcess, table: str) -> dict[int, str]:
    return {int(i): str(t) for i, t in stack.sql(f"select id, title from {table}")}


def cache_client(stack: StackProcess, cache: Path, table: str, mode: str,
                 seen: list[Change]) -> Realtime:
    """A client with a cache file and one subscription whose changes go to *seen*."""
    rt = Realtime(stack.url, stack.anon_key, token=stack.service_role_key, cache=cache,
                  repair=mode)  # type: ignore[arg-type]
    rt.subscribe(table, handler=seen.append,
                 cursor_column="updated_at" if mode == "cursor" else None)
    return rt


@pytest.mark.parametrize("mode", ["diff", "cursor"])
async def test_repairs_read_past_the_cap(capped: StackProcess, tmp_path: Path, mode: str) -> None:
    table = f"capped_{mode}"
    capped.sql(f"""
        create table {table} (id int primary key, title text,
                              updated_at timestamptz not null default now());
        grant select on {table} to anon, authenticated, service_role;
        alter publication supabase_realtime add table {table};
        insert into {table} (id, title) select g, 'row ' || g from generate_series(1, {ROWS}) g;
    """)
    async with httpx.AsyncClient() as http:
        capped_read = await http.get(f"{capped.url}/rest/v1/{table}?order=id&limit=200",
                                     headers={"apikey": capped.service_role_key})
    assert len(capped_read.json()) == CAP  # the stack's --max-rows at work
    def client(seen: list[Change]) -> Realtime:
        return cache_client(capped, tmp_path / "cache.sqlite", table, mode, seen)

    first: list[Change] = []
    async with client(first) as rt:
        await rt.wait_synced(WAIT)
    assert {c.pk[0] for c in first if c.origin == "snapshot"} == set(range(1, ROWS + 1))

    # Away: one row changed, one deleted, one added.
    capped.sql(f"update {table} set title = 'changed', updated_at = now() where id = 250;"
               f"delete from {table} where id = 7;"
               f"insert into {table} (id, title) values ({ROWS + 1}, 'new')")
    second: list[Change] = []
    async with client(second) as rt:
        await rt.wait_synced(WAIT)
        repaired = [e for e in rt.status.history if isinstance(e, GapRepaired)][-1]
    assert (repaired.inserted, repaired.updated, repaired.deleted) == (1, 1, 1)
    assert sorted((c.op, c.pk[0]) for c in second) == [
        ("DELETE", 7), ("INSERT", ROWS + 1), ("UPDATE", 250)]


async def test_exact_repair_reads_changed_keys_past_the_cap(capped: StackProcess,
                                                           tmp_path: Path) -> None:
    """Exact mode re-reads the changed keys 100 at a time (``Rest.by_keys``); with a cap
    below that, the keys past it in each chunk looked deleted: DELETEs for rows that exist."""
    table = "capped_exact"
    capped.sql(f"""
        create table {table} (id int primary key, title text);
        grant select on {table} to anon, authenticated, service_role;
        alter publication supabase_realtime add table {table};
        insert into {table} (id, title) select g, 'row ' || g from generate_series(1, {ROWS}) g;
    """)
    sqlinstall.apply(capped.db_url, [f"public.{table}"])

    def client(seen: list[Change]) -> Realtime:
        return cache_client(capped, tmp_path / "cache.sqlite", table, "exact", seen)

    first: list[Change] = []
    async with client(first) as rt:
        await rt.wait_synced(WAIT)
    assert len({c.pk[0] for c in first}) == ROWS

    # Away: 150 rows changed, 20 deleted (spread through the chunks), 5 added.
    capped.sql(f"update {table} set title = 'changed' where id <= 150;"
               f"delete from {table} where id % 10 = 0 and id > 100;"
               f"insert into {table} (id, title) select g, 'new' from "
               f"generate_series({ROWS + 1}, {ROWS + 5}) g")
    second: list[Change] = []
    async with client(second) as rt:
        await rt.wait_synced(WAIT)
        repaired = [e for e in rt.status.history if isinstance(e, GapRepaired)][-1]
        assert repaired.mode == "exact"
    gone = set(range(110, ROWS + 1, 10))  # deleted (110..150 were updated first)
    assert {c.pk[0] for c in second if c.op == "DELETE"} == gone  # only the rows really gone
    assert (repaired.inserted, repaired.updated, repaired.deleted) == (5, 150 - 5, len(gone))
    state: dict[int, str] = {}
    for c in first + second:
        if c.op == "DELETE":
            state.pop(c.pk[0])
        else:
            assert c.new is not None
            state[c.pk[0]] = c.new["title"]
    assert state == server_rows(capped, table)
