"""``repair="auto"`` never trusts an unverified cursor (issue #13).

A table whose ``updated_at`` has only ``default now()`` (no trigger; common on Supabase) keeps the
value of the row's INSERT for ever, so a cursor-mode repair misses every UPDATE made during a
gap. The scenario, for the client's cache and for the mirror: the socket drops
(``/_dev/drop-connections``) while ``update items2 set body = 'CHANGED-in-gap' where id = 1``
commits, and the repair of that gap must bring the change (auto -> diff). With supasync's touch
trigger installed (``sqlinstall.apply(..., touch="updated_at")``) auto may and does use the
cursor, and the trigger makes it find the same change.

Making the write fall in the gap deterministically: the stack holds changes in the replication
slot (``pause_changes``) before the write, so the live feed cannot deliver it; the socket drops,
the subscription rejoins and repairs (reading PostgREST, which sees the committed write), and only
after the repair has been checked are changes resumed.
"""

from __future__ import annotations

import asyncio
import io
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supasync import Change, GapRepaired, Realtime
from supasync.client.gate import CachedGate
from supasync.core.backoff import BackoffPolicy
from supasync.core.status import GapOpened, StatusEvent, utcnow
from supasync.devstack.testing import StackProcess
from supasync.repair import sqlinstall

pytestmark = pytest.mark.integration

WAIT = 60.0


@pytest.fixture(scope="module")
def stack() -> Iterator[StackProcess]:
    data_dir = tempfile.mkdtemp(prefix="supasync-test-auto-")
    Path(data_dir).chmod(0o755)  # PostgreSQL runs as `postgres` when tests run as root
    with StackProcess(data_dir=data_dir) as started:
        yield started


def make_items(stack: StackProcess, name: str) -> None:
    """``updated_at`` with a default and no trigger; row 1 is old (outside cursor mode's overlap
    window), row 2 recent, so a cursor repair starts reading after row 1."""
    stack.sql(
        f"create table public.{name} (id int primary key, body text not null, "
        "updated_at timestamptz not null default now());"
        f"grant all on public.{name} to anon, authenticated, service_role;"
        f"alter publication supabase_realtime add table public.{name};"
        f"insert into public.{name} (id, body, updated_at) values "
        "(1, 'original', now() - interval '1 hour'), (2, 'recent', now())"
    )


async def drop_and_write_in_gap(rt: Realtime, stack: StackProcess, sql: str) -> GapRepaired:
    """Hold the live feed, write, drop the socket; return the repair of that gap."""
    t0 = utcnow()

    def repaired_after(event: StatusEvent) -> bool:
        return isinstance(event, GapRepaired) and event.opened_at >= t0

    opened = asyncio.ensure_future(rt.status.wait_for(lambda e: isinstance(e, GapOpened), WAIT))
    repaired = asyncio.ensure_future(rt.status.wait_for(repaired_after, WAIT))
    await asyncio.sleep(0)  # let both waiters register before anything is published
    await asyncio.to_thread(stack.pause_changes)
    try:
        await asyncio.to_thread(stack.sql, sql)
        await asyncio.to_thread(stack.drop_connections)
        await opened
        event = await repaired
    except BaseException:
        await asyncio.to_thread(stack.resume_changes)
        raise
    assert isinstance(event, GapRepaired)
    return event


async def test_client_cache_sees_an_update_made_during_a_gap(stack: StackProcess) -> None:
    make_items(stack, "items2")
    got: list[Change] = []
    rt = Realtime(stack.url, stack.anon_key, token=stack.service_role_key, cache="memory:",
                  backoff=BackoffPolicy(initial=0.1, cap=1.0))
    sub = rt.subscribe("items2", handler=got.append)
    async with rt:
        await rt.wait_synced(WAIT)
        try:
            event = await drop_and_write_in_gap(
                rt, stack, "update public.items2 set body = 'CHANGED-in-gap' where id = 1")
            # Before the fix: GapRepaired(mode='cursor', inserted=0, updated=0, deleted=0) and
            # the cache kept body='original'.
            assert (event.mode, event.inserted, event.updated, event.deleted) == (
                "diff", 0, 1, 0)
            gate = sub.gate
            assert isinstance(gate, CachedGate)
            assert gate.rows()[(1,)]["body"] == "CHANGED-in-gap"
            assert gate.last_result is not None and gate.last_result.cursor == {"mode": "diff"}
            await rt.wait_synced(WAIT)
            assert any(c.origin == "replay" and c.op == "UPDATE" and c.pk == (1,) for c in got)
        finally:
            await asyncio.to_thread(stack.resume_changes)


async def test_touch_trigger_makes_the_cursor_trusted_and_complete(stack: StackProcess) -> None:
    make_items(stack, "items_touched")
    await asyncio.to_thread(sqlinstall.apply, stack.db_url, ["public.items_touched"],
                            touch="updated_at", log=False)
    try:
        # The trigger bumps the column on every write, whatever the writer sends.
        stack.sql("update public.items_touched set body = body, "
                  "updated_at = '2000-01-01' where id = 2")
        (row,) = stack.sql("select updated_at > now() - interval '1 minute' "
                           "from public.items_touched where id = 2")
        assert row[0] is True
        rt = Realtime(stack.url, stack.anon_key, token=stack.service_role_key, cache="memory:",
                      backoff=BackoffPolicy(initial=0.1, cap=1.0))
        sub = rt.subscribe("items_touched")
        async with rt:
            await rt.wait_synced(WAIT)
            try:
                event = await drop_and_write_in_gap(
                    rt, stack,
                    "update public.items_touched set body = 'CHANGED-in-gap' where id = 1")
                assert (event.mode, event.updated) == ("cursor", 1)
                gate = sub.gate
                assert isinstance(gate, CachedGate)
                assert gate.rows()[(1,)]["body"] == "CHANGED-in-gap"
                assert gate._repairer is not None
                assert (gate._repairer.mode_why or "").startswith("auto -> cursor on updated_at")
            finally:
                await asyncio.to_thread(stack.resume_changes)
    finally:
        await asyncio.to_thread(sqlinstall.uninstall, stack.db_url)
    # Uninstalled: the trigger and the RPC are gone, the table stays.
    (count,) = stack.sql("select count(*) from pg_trigger where tgname = 'supasync_touch'")
    assert count[0] == 0


async def test_mirror_sees_an_update_made_during_a_gap(stack: StackProcess,
                                                       tmp_path: Path) -> None:
    from supasync.client.config import Settings
    from supasync.mirror.status import TableFigures
    from supasync.mirror.worker import MirrorOptions, MirrorTarget, run_mirror

    make_items(stack, "items3")
    settings = Settings(url=stack.url, realtime_url=stack.realtime_url,
                        anon_key=stack.anon_key, service_role_key=stack.service_role_key,
                        preferred_token_source="service_role", heartbeat_interval=5.0,
                        reconnect_max_delay=1.0)
    db = tmp_path / "mirror.sqlite"
    said = io.StringIO()
    figures: list[TableFigures] = []
    ready = asyncio.Event()
    stop = asyncio.Event()

    def on_ready(figs: list[TableFigures]) -> None:
        figures[:] = figs
        ready.set()

    opts = MirrorOptions(db=db, quiet=False, err=said, progress=False, status_interval=60)
    worker = asyncio.create_task(run_mirror(settings, [MirrorTarget("public", "items3")], opts,
                                            stop=stop, on_ready=on_ready))

    async def until(cond: Any, what: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while not cond():
            assert loop.time() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.1)  # poll interval of a condition wait (figures are polled)

    def body_of_1() -> Any:
        conn = sqlite3.connect(db)
        try:
            rows = conn.execute('select body from "items3" where id = 1').fetchall()
        finally:
            conn.close()
        return rows[0][0] if rows else None

    try:
        await asyncio.wait_for(ready.wait(), WAIT)
        await until(lambda: figures and figures[0].state == "live", "the mirror to be live")
        before = figures[0].repairs
        await asyncio.to_thread(stack.pause_changes)
        try:
            stack.sql("update public.items3 set body = 'CHANGED-in-gap' where id = 1")
            stack.drop_connections()
            await until(lambda: figures[0].repairs > before and figures[0].state == "live",
                        "the repair of the gap")
            # Before the fix the repair ran in cursor mode and kept body='original'.
            assert figures[0].last_gap_mode == "diff"
            assert body_of_1() == "CHANGED-in-gap"
            # The worker says at start which mode auto picks, and why.
            assert ("public.items3: repair mode auto -> diff: no change log installed and "
                    "updated_at is not bumped by a supasync trigger") in said.getvalue()
        finally:
            await asyncio.to_thread(stack.resume_changes)
    finally:
        stop.set()
        assert await asyncio.wait_for(worker, WAIT) == 0
