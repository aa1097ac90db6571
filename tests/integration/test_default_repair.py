"""Gap repair is on by default: a subscription's first join delivers the current rows as
``origin="snapshot"``, and a process restarted on the same cache file replays exactly what it
missed (``origin="replay"``) before live changes."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from supasync import Change, GapRepaired, Realtime
from supasync.devstack.testing import StackProcess

WAIT = 30


class Collector:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[Change] = asyncio.Queue()

    def __call__(self, change: Change) -> None:
        self.queue.put_nowait(change)

    async def take(self, n: int) -> list[Change]:
        return [await asyncio.wait_for(self.queue.get(), WAIT) for _ in range(n)]


async def repaired(rt: Realtime) -> GapRepaired:
    event = await rt.status.wait_for(lambda e: isinstance(e, GapRepaired), timeout=WAIT)
    assert isinstance(event, GapRepaired)
    return event


async def test_snapshot_then_replay_after_restart_on_the_cache(
    supabase_stack: StackProcess,
) -> None:
    stack = supabase_stack
    stack.sql("create table public.default_repair (id int primary key, task text);"
              "alter publication supabase_realtime add table public.default_repair;"
              "insert into public.default_repair values (1, 'a'), (2, 'b')")
    cache = Path(tempfile.mkdtemp()) / "cache.sqlite"

    first = Collector()
    rt = Realtime(stack.url, stack.anon_key, token=stack.service_role_key, cache=cache)
    rt.subscribe("default_repair", handler=first)
    async with rt:
        event = await repaired(rt)
        assert event.mode == "snapshot"
        got = await first.take(2)
        assert {(c.op, c.pk, c.origin) for c in got} == {
            ("INSERT", (1,), "snapshot"), ("INSERT", (2,), "snapshot")}

    # While no process listens: an insert, an update and a delete are lost by Realtime.
    stack.sql("insert into public.default_repair values (3, 'c');"
              "update public.default_repair set task = 'A' where id = 1;"
              "delete from public.default_repair where id = 2")

    second = Collector()
    rt = Realtime(stack.url, stack.anon_key, token=stack.service_role_key, cache=cache)
    rt.subscribe("default_repair", handler=second)
    async with rt:
        event = await repaired(rt)
        assert (event.inserted, event.updated, event.deleted) == (1, 1, 1)
        got = {c.pk: c for c in await second.take(3)}
        assert all(c.origin == "replay" for c in got.values())
        assert got[(3,)].op == "INSERT"
        assert got[(1,)].op == "UPDATE" and got[(1,)].old == {"id": 1, "task": "a"}
        assert got[(1,)].new == {"id": 1, "task": "A"}
        assert got[(2,)].op == "DELETE"
        stack.sql("insert into public.default_repair values (4, 'd')")
        (live,) = await second.take(1)
        assert (live.op, live.pk, live.origin) == ("INSERT", (4,), "live")
        assert second.queue.empty()


async def test_wait_synced_returns_once_the_first_snapshot_is_handed_over(
    supabase_stack: StackProcess,
) -> None:
    stack = supabase_stack
    stack.sql("create table public.synced (id int primary key);"
              "alter publication supabase_realtime add table public.synced;"
              "insert into public.synced select generate_series(1, 300)")
    got = Collector()
    rt = Realtime(stack.url, stack.anon_key, token=stack.service_role_key, cache="memory:")
    sub = rt.subscribe("synced", handler=got)
    async with rt:
        await rt.wait_synced(WAIT)
        assert rt.status.unrepaired == frozenset()
        assert any(isinstance(e, GapRepaired) for e in rt.status.history)
        assert sub.stats.delivered == 300  # all of the snapshot is in the handler's queue
        assert len(await got.take(300)) == 300
        await rt.wait_synced(WAIT)  # already caught up: returns at once


async def test_repair_off_is_the_plain_live_stream(supabase_stack: StackProcess) -> None:
    stack = supabase_stack
    stack.sql("create table public.no_repair (id int primary key);"
              "alter publication supabase_realtime add table public.no_repair;"
              "insert into public.no_repair values (1)")
    got = Collector()
    rt = Realtime(stack.url, stack.anon_key, token=stack.service_role_key, repair="off")
    rt.subscribe("no_repair", handler=got)
    async with rt:
        await rt.wait_live(WAIT)
        stack.sql("insert into public.no_repair values (2)")
        (change,) = await got.take(1)
        assert (change.pk, change.origin) == ((2,), "live")
    assert rt.cache is None
