"""The library's gate with what used to be the mirror's alone (issue #13: one gate).

* A read model's first snapshot and full comparisons read the table over parallel key ranges
  (the mirror's snapshot path, :mod:`supasync.repair.fullread`); a subscription with a handler
  still receives its snapshot in key order.
* A live change that no longer fits the stored table (a column added or dropped upstream)
  starts a schema step: the table is adapted and compared, handlers see the rows as they now
  are, and nothing streamed meanwhile is lost.
* Live changes beyond the buffer during a repair are dropped and the table compared once more
  afterwards: nothing is lost, memory stays bounded.
* A live change the server truncated (``Error 413``: values too large left out) is followed
  by a re-read of its row: the store and the handlers end with the whole row.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supasync import Realtime
from supasync.client.gate import CachedGate
from supasync.core.changes import Change
from supasync.devstack.testing import StackProcess
from supasync.repair.fullread import key_ranges
from supasync.repair.rest import Rest

pytestmark = pytest.mark.integration

WAIT = 60.0
SPAN = 150_000  # ids 1, 11, 21, ...: a key span wide enough to be cut into ranges
STEP = 10


@pytest.fixture(scope="module")
def stack() -> Iterator[StackProcess]:
    data_dir = tempfile.mkdtemp(prefix="supasync-test-gate-shared-")
    Path(data_dir).chmod(0o755)  # PostgreSQL runs as `postgres` when tests run as root
    with StackProcess(data_dir=data_dir) as started:
        started.sql(
            "create table public.wide (id bigint primary key, body text not null);"
            "grant all on public.wide to anon, authenticated, service_role;"
            "alter publication supabase_realtime add table public.wide;"
            f"insert into public.wide select g, 'row ' || g from generate_series(1, {SPAN},"
            f" {STEP}) g;"
            "create table public.drift (id int primary key, body text not null);"
            "grant all on public.drift to anon, authenticated, service_role;"
            "alter publication supabase_realtime add table public.drift;"
            "insert into public.drift select g, 'row ' || g from generate_series(1, 50) g;"
            "create table public.huge (id int primary key, small text, big text);"
            "grant all on public.huge to anon, authenticated, service_role;"
            "alter publication supabase_realtime add table public.huge;"
            "insert into public.huge values (1, 'one', 'short');"
            "create table public.burst (id int primary key, body text not null);"
            "grant all on public.burst to anon, authenticated, service_role;"
            "alter publication supabase_realtime add table public.burst;"
            "insert into public.burst select g, 'row ' || g from generate_series(1, 50) g"
        )
        yield started


async def wait_for(predicate: Any, what: str) -> None:
    """Wait until *predicate* holds, at most :data:`WAIT` seconds. Polling the read model
    (and what handlers were given) is what these tests are about: no event says "cached"."""

    async def until() -> None:
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(until(), WAIT)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def server_rows(stack: StackProcess, table: str) -> dict[int, str]:
    return {int(i): str(b) for i, b in stack.sql(f"select id, body from public.{table}")}


async def test_key_ranges_cut_a_wide_integer_key(stack: StackProcess) -> None:
    async def token() -> str:
        return stack.service_role_key

    rest = Rest(stack.url + "/rest/v1", stack.anon_key, token)
    try:
        ranges = await key_ranges(rest, "public", "wide", ["id"], {"id": "bigint"}, [], 3)
        assert len(ranges) == 3
        assert await key_ranges(rest, "public", "wide", ["id"], {"id": "text"}, [], 3) == [[]]
        small = await key_ranges(rest, "public", "wide", ["id"], {"id": "bigint"},
                                 [("id", "lt.100")], 3)
        assert small == [[]]
    finally:
        await rest.aclose()


async def test_read_model_snapshot_and_comparison_over_key_ranges(
    stack: StackProcess, tmp_path: Path,
) -> None:
    cache = tmp_path / "cache.sqlite"
    rt = Realtime(stack.url, stack.anon_key, token=stack.service_role_key, cache=cache,
                  repair="diff")
    sub = rt.subscribe("wide")
    async with rt:
        await rt.wait_synced(WAIT)
        want = server_rows(stack, "wide")
        assert sub.count() == len(want) == SPAN // STEP
        got = {int(r["id"]): r["body"] for r in sub.rows()}
        assert got == want
    # Changes while no client runs; the next start compares the whole table (diff mode) in
    # the store, over the same key ranges.
    stack.sql("update public.wide set body = 'changed' where id % 7 = 1;"
              "delete from public.wide where id % 13 = 2;"
              f"insert into public.wide values ({SPAN + 5}, 'new')")
    rt = Realtime(stack.url, stack.anon_key, token=stack.service_role_key, cache=cache,
                  repair="diff")
    sub = rt.subscribe("wide")
    async with rt:
        await rt.wait_synced(WAIT)
        got = {int(r["id"]): r["body"] for r in sub.rows()}
        assert got == server_rows(stack, "wide")


async def test_a_handler_receives_its_snapshot_in_key_order(
    stack: StackProcess, tmp_path: Path,
) -> None:
    rt = Realtime(stack.url, stack.anon_key, token=stack.service_role_key,
                  cache=tmp_path / "c.sqlite")
    seen: list[int] = []

    async def handler(change: Change) -> None:
        if change.origin == "snapshot":
            seen.append(int(change.pk[0]))

    rt.subscribe("wide", handler=handler)
    async with rt:
        await rt.wait_synced(WAIT)
        await wait_for(lambda: len(seen) == len(server_rows(stack, "wide")), "the snapshot")
    assert seen == sorted(seen)


async def test_a_column_added_then_dropped_upstream_while_live(
    stack: StackProcess, tmp_path: Path,
) -> None:
    rt = Realtime(stack.url, stack.anon_key, token=stack.service_role_key,
                  cache=tmp_path / "drift.sqlite")
    latest: dict[int, dict[str, Any]] = {}

    async def handler(change: Change) -> None:
        if change.new is not None:
            latest[int(change.pk[0])] = dict(change.new)

    sub = rt.subscribe("drift", handler=handler)
    async with rt:
        await rt.wait_synced(WAIT)
        stack.sql("alter table public.drift add column priority int default 3")
        stack.sql("update public.drift set priority = 7, body = 'seven' where id = 1")
        stack.sql("insert into public.drift (id, body) values (60, 'after')")
        await wait_for(lambda: (sub.get(1) or {}).get("priority") == 7
                       and (sub.get(2) or {}).get("priority") == 3
                       and sub.get(60) is not None, "the added column in the store")
        # Handlers got the rows as they now are: the changed row, and the new column of the
        # others through the comparison that followed the table's change.
        await wait_for(lambda: latest.get(1, {}).get("priority") == 7
                       and latest.get(60, {}).get("priority") == 3, "the handler's rows")
        assert sub.gate.problem is None  # type: ignore[attr-defined]

        stack.sql("alter table public.drift drop column priority")
        stack.sql("update public.drift set body = 'dropped' where id = 2")
        await wait_for(lambda: (sub.get(2) or {}).get("body") == "dropped"
                       and "priority" not in (sub.get(2) or {}), "the dropped column")
        got = {int(r["id"]): r["body"] for r in sub.rows()}
        assert got == server_rows(stack, "drift")


async def test_a_truncated_live_change_is_read_again(
    stack: StackProcess, tmp_path: Path,
) -> None:
    rt = Realtime(stack.url, stack.anon_key, token=stack.service_role_key,
                  cache=tmp_path / "huge.sqlite")
    big = 2 * 1024 * 1024
    got: list[Change] = []

    async def handler(change: Change) -> None:
        got.append(change)

    sub = rt.subscribe("huge", handler=handler)
    async with rt:
        await rt.wait_synced(WAIT)
        stack.sql(f"insert into public.huge values (2, 'two', repeat('x', {big}));"
                  f"update public.huge set small = 'uno', big = repeat('y', {big}) where id = 1")
        await wait_for(lambda: len((sub.get(2) or {}).get("big") or "") == big
                       and (sub.get(1) or {}).get("big") == "y" * big, "the whole rows")
        assert sub.get(1)["small"] == "uno"  # type: ignore[index]
        # The live changes came first, partial; the re-read's rows after them.
        live = [c for c in got if c.origin == "live"]
        assert {c.pk for c in live} == {(1,), (2,)} and all(c.partial for c in live)
        await wait_for(lambda: {c.pk for c in got if c.origin == "replay"
                                and len((c.new or {}).get("big") or "") == big}
                       == {(1,), (2,)}, "the re-read rows delivered")


async def test_live_changes_beyond_the_buffer_are_dropped_then_compared(
    stack: StackProcess, tmp_path: Path,
) -> None:
    rt = Realtime(stack.url, stack.anon_key, token=stack.service_role_key)
    gate = CachedGate(tmp_path / "burst.sqlite", buffer_limit=5)
    release = asyncio.Event()
    seen: dict[int, str] = {}

    async def handler(change: Change) -> None:
        await release.wait()  # holds the first snapshot's delivery: the repair stays open
        if change.new is None:
            seen.pop(int(change.pk[0]), None)
        else:
            seen[int(change.pk[0])] = str(change.new["body"])

    sub = rt.subscribe("burst", handler=handler, gate=gate, queue_size=1)
    async with rt:
        await wait_for(lambda: gate.merger is not None and gate.merger.repairing
                       and sub.stats.delivered >= 1, "the first snapshot under way")
        stack.sql("update public.burst set body = 'burst ' || id where id <= 20;"
                  "delete from public.burst where id = 30")
        await wait_for(lambda: gate.overflows >= 1, "the buffer to overflow")
        release.set()
        await rt.wait_synced(WAIT)
        want = server_rows(stack, "burst")
        await wait_for(lambda: seen == want, "the handler's rows to equal the server's")
        assert {int(r["id"]): r["body"] for r in sub.rows()} == want
