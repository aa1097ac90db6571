"""A subscription with no handler is a read model (issue #13).

It used to stall at ``queue_size`` rows (1,000 of 4,016): nobody drained the queue its snapshot
was emitted into, so the repair never finished, ``wait_synced`` timed out, closing took 38-54 s
and the temporary cache file was left behind. Now it syncs and stays synced, closes promptly,
and no temporary file outlives its client, whichever way the client is closed.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from supasync import Realtime
from supasync.client.gate import CachedGate
from supasync.client.sync import SyncRealtime
from supasync.devstack.testing import StackProcess

pytestmark = pytest.mark.integration

WAIT = 60.0
ROWS = 4016
PROMPT_S = 10.0  # closing must not wait for anything a handler-less subscription left behind


@pytest.fixture(scope="module")
def stack() -> Iterator[StackProcess]:
    data_dir = tempfile.mkdtemp(prefix="supasync-test-read-model-")
    Path(data_dir).chmod(0o755)  # PostgreSQL runs as `postgres` when tests run as root
    with StackProcess(data_dir=data_dir) as started:
        started.sql(
            "create table public.big (id int primary key, body text not null);"
            "grant all on public.big to anon, authenticated, service_role;"
            "alter publication supabase_realtime add table public.big;"
            f"insert into public.big select g, 'row ' || g from generate_series(1, {ROWS}) g"
        )
        yield started


@pytest.fixture
def tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The temporary directory every temporary cache goes to, for this test alone."""
    where = tmp_path / "tmp"
    where.mkdir()
    monkeypatch.setenv("TMPDIR", str(where))
    monkeypatch.setattr(tempfile, "tempdir", str(where))
    return where


async def test_handler_less_subscription_syncs_and_closes_promptly(
    stack: StackProcess, tmp_dir: Path,
) -> None:
    rt = Realtime(stack.url, stack.anon_key, token=stack.service_role_key)  # temporary cache
    sub = rt.subscribe("big", queue_size=1000)
    async with rt:
        await rt.wait_synced(WAIT)
        gate = sub.gate
        assert isinstance(gate, CachedGate)
        assert len(gate.rows()) == ROWS and sub.count() == ROWS
        assert os.listdir(tmp_dir)  # the temporary cache is there while the client runs
        stack.sql("insert into public.big values (5000, 'live')")
        stack.sql("update public.big set body = 'changed' where id = 1")
        await rt.wait_synced(WAIT)
        # The snapshot went to the store without building a change per row (nobody would
        # receive them); nothing was delivered.
        assert sub.stats.delivered == 0
        started = time.monotonic()
    assert time.monotonic() - started < PROMPT_S
    assert os.listdir(tmp_dir) == []


async def test_no_temporary_cache_outlives_a_client_closed_by_an_exception(
    stack: StackProcess, tmp_dir: Path,
) -> None:
    rt = Realtime(stack.url, stack.anon_key, token=stack.service_role_key)
    rt.subscribe("big")
    with pytest.raises(RuntimeError, match="the app failed"):
        async with rt:
            await rt.wait_synced(WAIT)
            raise RuntimeError("the app failed")
    assert os.listdir(tmp_dir) == []
    # Closing explicitly (and twice) leaves nothing either.
    rt = Realtime(stack.url, stack.anon_key, token=stack.service_role_key)
    rt.subscribe("big")
    await rt.start()
    await rt.wait_synced(WAIT)
    await rt.aclose()
    await rt.aclose()
    assert os.listdir(tmp_dir) == []


def test_sync_facade_handler_less_subscription(stack: StackProcess, tmp_dir: Path) -> None:
    rt = SyncRealtime(stack.url, stack.anon_key, token=stack.service_role_key)
    try:
        rt.subscribe("big")
        rt.wait_synced(WAIT)  # used to fail: "the supasync loop thread did not answer in time"
    finally:
        started = time.monotonic()
        rt.close()
    assert time.monotonic() - started < PROMPT_S
    assert os.listdir(tmp_dir) == []


async def test_an_iterator_that_runs_gets_live_changes(stack: StackProcess,
                                                       tmp_dir: Path) -> None:
    rt = Realtime(stack.url, stack.anon_key, token=stack.service_role_key)
    sub = rt.subscribe("big")
    async with rt:
        await rt.wait_synced(WAIT)
        got: asyncio.Queue[int] = asyncio.Queue()

        async def consume() -> None:
            async for change in sub:
                if change.origin == "live":
                    got.put_nowait(change.pk[0])

        task = asyncio.create_task(consume())
        try:
            # The iterator registers when it first waits (no event exists for that).
            while not sub._consumers:  # noqa: ASYNC110
                await asyncio.sleep(0)
            stack.sql("insert into public.big values (6000, 'seen')")
            assert await asyncio.wait_for(got.get(), WAIT) == 6000
        finally:
            task.cancel()
    assert os.listdir(tmp_dir) == []
