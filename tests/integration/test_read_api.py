"""The read model of a cached subscription (issue #13): ``sub.get/rows/count/read/seq/
changes_since`` on Realtime and SyncRealtime, from any thread, over one store file whose format
is the mirror's (a typed table per subscription, the change journal).

Before: the only read was ``rt.cache.rows(name)`` (every row, the event loop's thread only:
"SQLite objects created in a thread can only be used in that same thread"), nothing on
SyncRealtime; the cache file held JSON rows that no other SQLite client could query.
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
import threading
from pathlib import Path

import pytest

from supasync import Realtime
from supasync.client.gate import CachedGate
from supasync.client.sync import SyncRealtime
from supasync.core.errors import CacheError, ConfigError
from supasync.devstack.testing import StackProcess
from supasync.store.view import StoredView

pytestmark = pytest.mark.integration

WAIT = 60.0
ROWS = 500


def _table(stack: StackProcess, name: str) -> str:
    stack.sql(
        f"create table public.{name} (id int primary key, body text not null,"
        " done boolean not null default false, meta jsonb);"
        f"grant all on public.{name} to anon, authenticated, service_role;"
        f"alter publication supabase_realtime add table public.{name};"
        f"insert into public.{name} select g, 'row ' || g, g % 3 = 0, jsonb_build_object('g', g)"
        f" from generate_series(1, {ROWS}) g"
    )
    return name


def _cache() -> Path:
    return Path(tempfile.mkdtemp(prefix="supasync-test-read-api-")) / "app.sqlite"


async def test_reads_on_the_async_client_from_any_thread(supabase_stack: StackProcess) -> None:
    stack = supabase_stack
    table = _table(stack, "read_api_async")
    cache = _cache()
    rt = Realtime(stack.url, stack.anon_key, token=stack.service_role_key, cache=cache)
    sub = rt.subscribe(table)  # no handler: a read model
    async with rt:
        await rt.wait_synced(WAIT)
        gate = sub.gate
        assert isinstance(gate, CachedGate) and gate.merger is not None
        # The merger reads the table by key: no row is held in Python.
        assert isinstance(gate.merger.view, StoredView)
        assert sub.count() == ROWS
        assert sub.get(7) == {"id": 7, "body": "row 7", "done": False, "meta": {"g": 7}}
        assert sub.get(ROWS + 1) is None
        assert [r["id"] for r in sub.rows("id=lt.4")] == [1, 2, 3]
        assert [r["id"] for r in sub.rows("done=eq.true", order_by="-id", limit=2)] == [498, 495]
        assert sub.count("done=eq.true") == ROWS // 3
        # Another thread: no "SQLite objects created in a thread" error, no call into the loop.
        assert await asyncio.to_thread(sub.get, 9) == {"id": 9, "body": "row 9", "done": True,
                                                       "meta": {"g": 9}}
        first = sub.read("id=lt.3")
        assert [r["id"] for r in first.rows] == [1, 2]
        stack.sql(f"update public.{table} set body = 'changed' where id = 1;"
                  f"delete from public.{table} where id = 2;"
                  f"insert into public.{table} (id, body) values (1000, 'new')")

        async def arrived() -> None:
            # Polling the read model is what the test is about: no event says "cached".
            while sub.get(1000) is None or sub.get(2) is not None:  # noqa: ASYNC110
                await asyncio.sleep(0.02)

        await asyncio.wait_for(arrived(), WAIT)
        assert sub.get(1) is not None and sub.get(1)["body"] == "changed"  # type: ignore[index]
        read = sub.changes_since(first.seq)
        assert not read.must_refetch
        assert {(e.op, e.pk) for e in read.entries} == {("U", (1,)), ("D", (2,)),
                                                        ("I", (1000,))}
        assert all(e.origin == "live" and e.commit_timestamp for e in read.entries)
        assert sub.seq >= read.entries[-1].seq
    # Any SQLite client reads the file: a typed table named like the source table.
    with sqlite3.connect(f"{cache.as_uri()}?mode=ro", uri=True) as db:
        assert db.execute(f"select body, done from {table} where id = 3").fetchone() == (
            "row 3", 1)


def test_reads_on_the_sync_facade(supabase_stack: StackProcess) -> None:
    stack = supabase_stack
    table = _table(stack, "read_api_sync")
    with SyncRealtime(stack.url, stack.anon_key, token=stack.service_role_key,
                      cache=_cache()) as rt:
        sub = rt.subscribe(table)
        rt.wait_synced(WAIT)
        assert sub.count() == ROWS
        assert sub.get(5) == {"id": 5, "body": "row 5", "done": False, "meta": {"g": 5}}
        assert len(list(sub.rows("body=like.row 1%"))) == 111  # 1, 10-19, 100-199
        seen: list[object] = []
        worker = threading.Thread(target=lambda: seen.append(sub.get(6)))
        worker.start()
        worker.join(WAIT)
        assert seen == [{"id": 6, "body": "row 6", "done": True, "meta": {"g": 6}}]
        assert sub.seq >= 0
        with pytest.warns(DeprecationWarning, match="next"):
            with pytest.raises(TimeoutError):
                sub.get(timeout=0.05)  # the older spelling of next()


async def test_two_subscriptions_of_one_table_get_their_own_tables(
    supabase_stack: StackProcess,
) -> None:
    stack = supabase_stack
    table = _table(stack, "read_api_two")
    cache = _cache()
    rt = Realtime(stack.url, stack.anon_key, token=stack.service_role_key, cache=cache)
    every = rt.subscribe(table)
    done = rt.subscribe(table, name="open", filter="done=eq.false")
    async with rt:
        await rt.wait_synced(WAIT)
        assert every.count() == ROWS
        assert done.count() == ROWS - ROWS // 3
        assert done.get(3) is None and done.get(4) is not None
    with sqlite3.connect(f"{cache.as_uri()}?mode=ro", uri=True) as db:
        names = {r[0] for r in db.execute("select name from sqlite_master where type='table'")}
    assert {table, f"{table}__open"} <= names


async def test_a_restart_reads_the_file_at_once_and_replays_only_what_it_missed(
    supabase_stack: StackProcess,
) -> None:
    stack = supabase_stack
    table = _table(stack, "read_api_restart")
    cache = _cache()
    rt = Realtime(stack.url, stack.anon_key, token=stack.service_role_key, cache=cache)
    rt.subscribe(table)
    async with rt:
        await rt.wait_synced(WAIT)
    stack.sql(f"update public.{table} set body = 'while away' where id = 10")
    replayed: list[object] = []
    got = asyncio.Event()

    def handler(change: object) -> None:
        replayed.append(change)
        got.set()

    rt = Realtime(stack.url, stack.anon_key, token=stack.service_role_key, cache=cache,
                  sync_handlers="inline")
    sub = rt.subscribe(table, handler=handler)
    async with rt:
        # Before the first repair: last run's rows, readable at once.
        assert sub.get(10) == {"id": 10, "body": "row 10", "done": False, "meta": {"g": 10}}
        await rt.wait_synced(WAIT)
        assert sub.get(10)["body"] == "while away"  # type: ignore[index]

        await asyncio.wait_for(got.wait(), WAIT)
    assert [(c.op, c.pk, c.origin) for c in replayed] == [  # type: ignore[attr-defined]
        ("UPDATE", (10,), "replay")]


async def test_reads_without_a_file(supabase_stack: StackProcess) -> None:
    stack = supabase_stack
    table = _table(stack, "read_api_memory")
    rt = Realtime(stack.url, stack.anon_key, token=stack.service_role_key, cache="memory:")
    sub = rt.subscribe(table)
    live = rt.subscribe(table, name="live-only", repair="off")
    async with rt:
        await rt.wait_synced(WAIT)
        assert sub.count() == ROWS and sub.get(2) is not None
        assert [r["id"] for r in sub.rows("id=gt.497", order_by="-id")] == [500, 499, 498]
        assert sub.seq == 0
        with pytest.raises(CacheError, match="keeps no change journal"):
            sub.changes_since(0)
        with pytest.raises(ConfigError, match="keeps no rows"):
            live.get(1)
        with pytest.raises(ConfigError, match="primary key"):
            sub.get(1, 2)


async def test_memory_does_not_grow_with_the_table(supabase_stack: StackProcess) -> None:
    """Issue #13: a cached subscription held every row in Python (+648 MB at 1,000,000 rows;
    a restart loaded the whole file). Now the rows stay in SQLite: what Python allocates while
    a 60,000-row table is snapshotted - with a handler receiving every row - and while a
    restart on the file repairs it, is a small constant (pages in flight), not ~600 bytes a
    row (36 MB here)."""
    import tracemalloc

    stack = supabase_stack
    rows = 20_000
    stack.sql(
        "create table public.read_api_big (id int primary key, body text not null);"
        "grant all on public.read_api_big to anon, authenticated, service_role;"
        "alter publication supabase_realtime add table public.read_api_big;"
        f"insert into public.read_api_big select g, 'row ' || g from generate_series(1, {rows}) g"
    )
    cache = _cache()
    seen = [0]

    async def count(change: object) -> None:
        seen[0] += 1

    for run in ("snapshot", "restart"):
        tracemalloc.start()
        try:
            rt = Realtime(stack.url, stack.anon_key, token=stack.service_role_key, cache=cache)
            sub = rt.subscribe("read_api_big", handler=count)
            async with rt:
                await rt.wait_synced(WAIT)
                assert sub.count() == rows
                _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        print(f"{run}: Python allocated at most {peak / 2**20:.1f} MB")
        assert peak < 6 * 2**20, f"{run}: Python allocated {peak / 2**20:.1f} MB"
        stack.sql("update public.read_api_big set body = 'changed' where id % 1000 = 0")
    assert seen[0] == rows + rows // 1000  # the snapshot, then the restart's replayed updates


async def test_a_read_model_compares_in_the_store(supabase_stack: StackProcess) -> None:
    """A handler-less subscription's full comparison (diff mode: no change log) runs in SQLite
    (pages merged undecoded, keys marked, the rest swept) and reports what it found."""
    from supasync.core.status import GapRepaired

    stack = supabase_stack
    table = _table(stack, "read_api_diff")
    cache = _cache()
    rt = Realtime(stack.url, stack.anon_key, token=stack.service_role_key, cache=cache,
                  repair="diff")
    first = rt.subscribe(table)
    async with rt:
        await rt.wait_synced(WAIT)
        seq = first.seq
    stack.sql(f"insert into public.{table} (id, body) values (2000, 'new');"
              f"update public.{table} set body = 'changed', done = true where id in (5, 6);"
              f"delete from public.{table} where id in (7, 8, 9)")
    events: list[GapRepaired] = []
    rt = Realtime(stack.url, stack.anon_key, token=stack.service_role_key, cache=cache,
                  repair="diff")
    rt.status.subscribe(lambda e: events.append(e) if isinstance(e, GapRepaired) else None)
    sub = rt.subscribe(table)
    async with rt:
        await rt.wait_synced(WAIT)
        assert sub.count() == ROWS - 2
        assert sub.get(2000) == {"id": 2000, "body": "new", "done": False, "meta": None}
        assert sub.get(5)["body"] == "changed" and sub.get(7) is None  # type: ignore[index]
        # The comparison ran through the store's page path, not through the merger.
        gate = sub.gate
        assert isinstance(gate, CachedGate) and gate.store is not None
        assert gate.store.tables.pages_fast >= 1  # type: ignore[attr-defined]
        read = sub.changes_since(seq)
        assert not read.must_refetch
        assert {(e.op, e.pk) for e in read.entries} == {
            ("I", (2000,)), ("U", (5,)), ("U", (6,)), ("D", (7,)), ("D", (8,)), ("D", (9,))}
    (event,) = events
    assert (event.mode, event.inserted, event.updated, event.deleted) == ("diff", 1, 2, 3)
