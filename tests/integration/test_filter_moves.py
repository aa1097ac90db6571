"""Filter move-outs and move-ins, live (issue #13).

On a ``done=eq.false`` subscription, ``update todos set done = true where id = 7`` sends nothing
when UPDATEs are filtered by the server (it judges the new row only). supasync subscribes
UPDATEs without the server-side filter and judges them locally: the move-out arrives at once as
a DELETE of the row as the subscriber had it, a move-in as an INSERT. Checked for the cache
(gap repair on), without a cache (``repair="off"``), with ``moves=False`` (today's behaviour),
and for a filtered mirror.
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supasync import Change, Realtime
from supasync.client.gate import CachedGate
from supasync.devstack.testing import StackProcess

pytestmark = pytest.mark.integration

WAIT = 30.0


@pytest.fixture(scope="module")
def stack() -> Iterator[StackProcess]:
    data_dir = tempfile.mkdtemp(prefix="supasync-test-moves-")
    Path(data_dir).chmod(0o755)  # PostgreSQL runs as `postgres` when tests run as root
    with StackProcess(data_dir=data_dir) as started:
        yield started


def make_todos(stack: StackProcess, name: str, *, full: bool = False) -> None:
    stack.sql(
        f"create table public.{name} (id int primary key, task text not null, "
        "done boolean not null default false);"
        f"grant all on public.{name} to anon, authenticated, service_role;"
        f"alter publication supabase_realtime add table public.{name};"
        f"insert into public.{name} (id, task, done) values "
        "(7, 'seven', false), (8, 'eight', true), (9, 'nine', false)"
    )
    if full:
        stack.sql(f"alter table public.{name} replica identity full")


class Got:
    """Changes as a handler sees them, with an event to wait on."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Change] = asyncio.Queue()

    def __call__(self, change: Change) -> None:
        self.queue.put_nowait(change)

    async def next_live(self) -> Change:
        while True:
            change = await asyncio.wait_for(self.queue.get(), WAIT)
            if change.origin == "live":
                return change


async def test_cache_delivers_move_out_as_delete_and_move_in_as_insert(
    stack: StackProcess,
) -> None:
    make_todos(stack, "todos_cache")
    got = Got()
    rt = Realtime(stack.url, stack.anon_key, token=stack.service_role_key, cache="memory:")
    sub = rt.subscribe("todos_cache", filter="done=eq.false", handler=got)
    async with rt:
        await rt.wait_synced(WAIT)
        gate = sub.gate
        assert isinstance(gate, CachedGate)
        assert set(gate.rows()) == {(7,), (9,)}
        stack.sql("update public.todos_cache set done = true where id = 7")
        out = await got.next_live()
        # Before: nothing arrived and the cache kept id 7 as done=false until the next gap.
        assert (out.op, out.pk) == ("DELETE", (7,))
        assert out.old == {"id": 7, "task": "seven", "done": False}  # the row it had
        assert (7,) not in gate.rows()
        stack.sql("update public.todos_cache set done = false where id = 8")
        moved_in = await got.next_live()
        assert (moved_in.op, moved_in.pk) == ("INSERT", (8,))
        assert moved_in.new == {"id": 8, "task": "eight", "done": False}
        assert gate.rows()[(8,)]["done"] is False
        # An UPDATE of a row outside the filter delivers nothing; a plain one an UPDATE.
        stack.sql("update public.todos_cache set task = 'still done' where id = 7;"
                  "update public.todos_cache set task = 'NINE' where id = 9")
        plain = await got.next_live()
        assert (plain.op, plain.pk, plain.new) == (
            "UPDATE", (9,), {"id": 9, "task": "NINE", "done": False})
        assert got.queue.empty()


async def test_without_cache_held_keys_and_full_old_records_decide(
    stack: StackProcess,
) -> None:
    make_todos(stack, "todos_plain", full=True)
    got = Got()
    rt = Realtime(stack.url, stack.anon_key, token=stack.service_role_key, repair="off")
    rt.subscribe("todos_plain", filter="done=eq.false", handler=got)
    async with rt:
        await rt.wait_live(WAIT)
        # REPLICA IDENTITY FULL: the old record proves the row matched before.
        stack.sql("update public.todos_plain set done = true where id = 7")
        out = await got.next_live()
        assert (out.op, out.pk) == ("DELETE", (7,))
        assert out.old is not None and out.old["done"] is False
        stack.sql("update public.todos_plain set done = false where id = 8")
        moved_in = await got.next_live()
        assert (moved_in.op, moved_in.pk) == ("INSERT", (8,))


async def test_moves_off_keeps_the_server_filter(stack: StackProcess) -> None:
    make_todos(stack, "todos_off")
    got = Got()
    rt = Realtime(stack.url, stack.anon_key, token=stack.service_role_key, cache="memory:")
    sub = rt.subscribe("todos_off", filter="done=eq.false", handler=got, moves=False)
    async with rt:
        await rt.wait_synced(WAIT)
        stack.sql("update public.todos_off set done = true where id = 7;"
                  "insert into public.todos_off values (10, 'ten', false)")
        first = await got.next_live()
        # The move-out sent nothing: the next live change is the INSERT, and the cache still
        # holds row 7 as it was (until the next gap's repair).
        assert (first.op, first.pk) == ("INSERT", (10,))
        gate = sub.gate
        assert isinstance(gate, CachedGate)
        assert gate.rows()[(7,)]["done"] is False


async def test_filtered_mirror_drops_a_row_that_moves_out(stack: StackProcess,
                                                          tmp_path: Path) -> None:
    from supasync.client.config import Settings
    from supasync.mirror.status import TableFigures
    from supasync.mirror.worker import MirrorOptions, MirrorTarget, run_mirror

    make_todos(stack, "todos_mirror")
    settings = Settings(url=stack.url, realtime_url=stack.realtime_url,
                        anon_key=stack.anon_key, service_role_key=stack.service_role_key,
                        preferred_token_source="service_role")
    db = tmp_path / "mirror.sqlite"
    figures: list[TableFigures] = []
    ready = asyncio.Event()
    stop = asyncio.Event()

    def on_ready(figs: list[TableFigures]) -> None:
        figures[:] = figs
        ready.set()

    def ids() -> set[int]:
        conn = sqlite3.connect(db)
        try:
            return {r[0] for r in conn.execute('select id from "todos_mirror"')}
        except sqlite3.OperationalError:
            return set()
        finally:
            conn.close()

    async def until(cond: Any, what: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while not await asyncio.to_thread(cond):
            assert loop.time() < deadline, f"timed out waiting for {what}; ids {ids()}"
            await asyncio.sleep(0.05)  # poll interval of a condition wait on the file

    opts = MirrorOptions(db=db, quiet=True, progress=False, status_interval=60)
    worker = asyncio.create_task(run_mirror(
        settings, [MirrorTarget("public", "todos_mirror", "done=eq.false")], opts,
        stop=stop, on_ready=on_ready))
    try:
        await asyncio.wait_for(ready.wait(), WAIT)
        await until(lambda: figures and figures[0].state == "live", "the mirror to be live")
        assert ids() == {7, 9}
        repairs = figures[0].repairs
        stack.sql("update public.todos_mirror set done = true where id = 7;"
                  "update public.todos_mirror set done = false where id = 8")
        await until(lambda: ids() == {8, 9}, "the move-out and the move-in")
        assert figures[0].repairs == repairs  # live, not by a repair
        # An UPDATE of a row outside the filter does not bring it in.
        stack.sql("update public.todos_mirror set task = 'x' where id = 7;"
                  "insert into public.todos_mirror values (11, 'eleven', false)")
        await until(lambda: 11 in ids(), "the insert behind the outside UPDATE")
        assert ids() == {8, 9, 11}
    finally:
        stop.set()
        assert await asyncio.wait_for(worker, WAIT) == 0
