"""Gap repair against the local stack's PostgREST and PostgreSQL (supasync.client.gate/repair/rest).

The gate is driven the way a subscription drives it (open, gap, subscribed, live, close) with no
live feed: "disconnected" simply means the writes below happen while no live change reaches the
gate. After every repair the cache and the handlers' view must equal the rows the subscriber may
see, whatever the mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from supasync.client.gate import CachedGate
from supasync.client.subscription import SubscriptionInfo
from supasync.core.changes import Change
from supasync.core.filters import ALL, Filter, parse_filter
from supasync.core.status import GapRepaired
from supasync.devstack.testing import StackProcess
from supasync.repair import sqlinstall
from supasync.repair.repairer import RepairConfig

pytestmark = pytest.mark.integration

_names = itertools.count()


class Handler:
    """What a subscription's handlers would see: emitted changes applied by primary key."""

    def __init__(self) -> None:
        self.view: dict[tuple[Any, ...], dict[str, Any]] = {}
        self.changes: list[Change] = []
        self.reports: list[object] = []
        self.changed = asyncio.Event()

    async def until(self, expected: dict[tuple[Any, ...], Any]) -> None:
        """Wait (event-driven) until the view equals *expected*; the caller asserts after."""

        async def wait() -> None:
            while True:
                self.changed.clear()
                if normalised(self.view) == expected:
                    return
                await self.changed.wait()

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wait(), 60)

    async def emit(self, change: Change) -> None:
        self.changed.set()
        self.changes.append(change)
        if change.op == "DELETE":
            self.view.pop(change.pk, None)
        else:
            assert change.new is not None
            self.view[change.pk] = dict(change.new)

    def report(self, event: object) -> None:
        self.reports.append(event)

    @property
    def repaired(self) -> GapRepaired:
        last = self.reports[-1]
        assert isinstance(last, GapRepaired)
        return last


@pytest.fixture(scope="module")
def stack() -> Iterator[StackProcess]:
    # Our own stack with a data directory the `postgres` user can enter (mkdtemp makes 0700
    # directories; the shared fixture's directory currently is not reachable when run as root).
    data_dir = tempfile.mkdtemp(prefix="supasync-test-repair-")
    os.chmod(data_dir, 0o755)
    with StackProcess(data_dir=data_dir) as started:
        yield started
    shutil.rmtree(data_dir, ignore_errors=True)


def make_table(stack: StackProcess, *, rls: bool = False) -> str:
    name = f"rep_{next(_names)}_{uuid.uuid4().hex[:6]}"
    stack.sql(
        f"create table public.{name} (id int primary key, owner uuid, kind text, v int, "
        "updated_at timestamptz not null default now())"
    )
    stack.sql(
        f"create trigger {name}_touch before update on public.{name} for each row "
        "execute function public.rep_touch()"
    )
    stack.sql(f"grant all on public.{name} to anon, authenticated, service_role")
    if rls:
        stack.sql(f"alter table public.{name} enable row level security")
        stack.sql(
            f"create policy own on public.{name} for all to authenticated "
            "using (owner = auth.uid()) with check (owner = auth.uid())"
        )
    sqlinstall.apply(stack.db_url, [f"public.{name}"])
    return name


@pytest.fixture(scope="module", autouse=True)
def touch_function(stack: StackProcess) -> None:
    stack.sql(
        "create or replace function public.rep_touch() returns trigger language plpgsql as "
        "$$ begin new.updated_at := clock_timestamp(); return new; end $$"
    )


def info(
    stack: StackProcess,
    table: str,
    handler: Handler,
    *,
    token: str | None = None,
    filter: Filter = ALL,
    name: str | None = None,
) -> SubscriptionInfo:
    tok = token or stack.service_role_key

    async def get_token() -> str:
        return tok

    return SubscriptionInfo(
        name=name or table,
        schema="public",
        table=table,
        events=frozenset({"INSERT", "UPDATE", "DELETE"}),
        filter=filter,
        columns=None,
        primary_key=("id",),
        rest_url=f"{stack.url}/rest/v1",
        api_key=stack.anon_key,
        token=get_token,
        report=handler.report,
    )


def server_rows(
    stack: StackProcess, table: str, where: str = "true", params: Any = None
) -> dict[tuple[Any, ...], dict[str, Any]]:
    rows = stack.sql(
        f"select id, to_jsonb(t) from public.{table} t where {where}", params
    )
    return {(r[0],): r[1] for r in rows}


def normalised(view: dict[tuple[Any, ...], Any]) -> dict[tuple[Any, ...], Any]:
    # Compare the JSON PostgREST sent with PostgreSQL's to_jsonb, timestamps as instants.
    from supasync.core.merge import canonical_row

    return {k: canonical_row(v) for k, v in view.items()}


def writes(stack: StackProcess, table: str, seed: int) -> None:
    """Inserts, updates and deletes while the client is away."""
    stack.sql(
        f"insert into public.{table} (id, kind, v) select g, 'k' || (g %% 3), g from "
        "generate_series(%s::int, %s::int) g",
        (seed * 100, seed * 100 + 29),
    )
    stack.sql(f"update public.{table} set v = v + 1000 where id % 4 = 0")
    stack.sql(f"delete from public.{table} where id % 5 = 0")


async def open_gate(
    stack: StackProcess, table: str, handler: Handler, mode: str, cache: Any = "memory:", **kw: Any
) -> CachedGate:
    gate = CachedGate(cache, repair=RepairConfig(mode=mode, page_size=7, log_page_size=7))  # type: ignore[arg-type]
    await gate.open(info(stack, table, handler, **kw), handler.emit)
    return gate


async def repair(gate: CachedGate, reason: str = "drop") -> None:
    await gate.gap(reason)
    await gate.subscribed()


@pytest.mark.parametrize("mode", ["exact", "cursor", "diff", "auto"])
async def test_repair_converges_in_every_mode(stack: StackProcess, mode: str) -> None:
    table = make_table(stack)
    writes(stack, table, 1)
    handler = Handler()
    gate = await open_gate(stack, table, handler, mode)
    await repair(gate, "first-join")
    assert handler.repaired.mode == "snapshot"
    expected = normalised(server_rows(stack, table))
    assert normalised(gate.rows()) == expected
    assert normalised(handler.view) == expected
    assert {c.origin for c in handler.changes} == {"snapshot"}  # the first fill

    # Away: inserts, updates (one changing nothing visible), deletes.
    writes(stack, table, 2)
    stack.sql(f"update public.{table} set v = -v where id in (101, 102, 201)")
    stack.sql(f"delete from public.{table} where id in (103, 202)")
    handler.changes.clear()
    await repair(gate)
    expected = normalised(server_rows(stack, table))
    assert normalised(gate.rows()) == expected
    assert normalised(handler.view) == expected
    rep = handler.repaired
    want_mode = {"auto": "exact"}.get(mode, mode)
    assert rep.mode == want_mode
    # 103 was cached; 202 and the ids divisible by 5 were born and died while away.
    assert rep.deleted == 1 and rep.updated >= 2 and rep.inserted >= 20
    assert all(c.origin == "replay" for c in handler.changes)
    upd = next(c for c in handler.changes if c.op == "UPDATE" and c.pk == (101,))
    assert upd.old is not None and upd.old["v"] == 101 and upd.new is not None
    assert upd.new["v"] == -101
    dele = next(c for c in handler.changes if c.op == "DELETE" and c.pk == (103,))
    assert dele.old is not None and dele.old["v"] == 103

    # Nothing happened: nothing replayed.
    handler.changes.clear()
    await repair(gate)  # cursor mode re-reads its overlap window but finds no difference
    assert handler.changes == []
    await gate.close()


async def test_exact_mode_catches_a_transaction_open_across_the_repair(
    stack: StackProcess,
) -> None:
    table = make_table(stack)
    handler = Handler()
    gate = await open_gate(stack, table, handler, "exact")
    await repair(gate, "first-join")
    with psycopg.connect(stack.db_url) as slow:
        slow.execute(f"insert into public.{table} (id, kind, v) values (7, 'slow', 1)")
        stack.sql(f"insert into public.{table} (id, kind, v) values (8, 'fast', 1)")
        await repair(gate)
        assert set(gate.rows()) == {(8,)}
        slow.commit()  # commits after the repair read past it
    stack.sql(f"insert into public.{table} (id, kind, v) values (9, 'later', 1)")
    await repair(gate)
    assert handler.repaired.mode == "exact"
    assert set(gate.rows()) == {(7,), (8,), (9,)}
    assert normalised(handler.view) == normalised(server_rows(stack, table))
    await gate.close()


async def test_rls_two_users_each_cache_holds_only_their_rows(stack: StackProcess) -> None:
    table = make_table(stack, rls=True)
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    tok_a = stack.mint({"role": "authenticated", "sub": a})
    tok_b = stack.mint({"role": "authenticated", "sub": b})
    for mode in ("exact", "cursor", "diff"):
        stack.sql(f"truncate public.{table}")
        stack.sql(
            f"insert into public.{table} (id, owner, v) select g, "
            "case when g %% 2 = 0 then %s::uuid else %s::uuid end, g "
            "from generate_series(1, 20) g",
            (a, b),
        )
        ha, hb = Handler(), Handler()
        ga = await open_gate(stack, table, ha, mode, token=tok_a)
        gb = await open_gate(stack, table, hb, mode, token=tok_b)
        await repair(ga, "first-join")
        await repair(gb, "first-join")
        assert set(ga.rows()) == {(i,) for i in range(2, 21, 2)}
        assert set(gb.rows()) == {(i,) for i in range(1, 21, 2)}
        # Row 2 moves from A to B, row 3 is deleted, row 21 is new for A.
        stack.sql(f"update public.{table} set owner = %s where id = 2", (b,))
        stack.sql(f"delete from public.{table} where id = 3")
        stack.sql(f"insert into public.{table} (id, owner, v) values (21, %s, 21)", (a,))
        await repair(ga)
        await repair(gb)
        for gate, handler, who in ((ga, ha, a), (gb, hb, b)):
            expected = normalised(server_rows(stack, table, "owner = %s", (who,)))
            assert normalised(gate.rows()) == expected, mode
            assert normalised(handler.view) == expected, mode
        assert any(c.op == "DELETE" and c.pk == (2,) for c in ha.changes)  # invisible now
        assert any(c.op == "INSERT" and c.pk == (2,) and c.origin == "replay" for c in hb.changes)
        await ga.close()
        await gb.close()


async def test_buffered_live_changes_come_after_replay_and_duplicates_are_dropped(
    stack: StackProcess,
) -> None:
    table = make_table(stack)
    handler = Handler()
    gate = await open_gate(stack, table, handler, "exact")
    await repair(gate, "first-join")
    await gate.gap("drop")
    stack.sql(f"insert into public.{table} (id, kind, v) values (1, 'a', 1)")
    row = server_rows(stack, table)[(1,)]
    # The live INSERT of row 1 arrives after re-subscribing, before the repair read it.
    dup = Change(
        schema="public", table=table, op="INSERT", new=row, old=None, pk=(1,),
        pk_columns=("id",), commit_timestamp=None,
    )
    await gate.live(dup)
    # A later change, committed after the read, arrives during the repair.
    newer = dict(row, v=2, updated_at="2999-01-01T00:00:00+00:00")
    await gate.live(
        Change(schema="public", table=table, op="UPDATE", new=newer, old={"id": 1}, pk=(1,),
               pk_columns=("id",), commit_timestamp=None)
    )
    assert handler.changes == [] or all(c.pk != (1,) for c in handler.changes)
    handler.changes.clear()
    await gate.subscribed()
    assert [(c.op, c.origin) for c in handler.changes] == [("INSERT", "replay"), ("UPDATE", "live")]
    assert handler.view[(1,)]["v"] == 2
    await gate.close()


async def test_restart_on_the_same_cache_file_replays_only_what_changed(
    stack: StackProcess,
) -> None:
    table = make_table(stack)
    writes(stack, table, 1)
    path = Path(tempfile.mkdtemp(prefix="supasync-test-gate-")) / "cache.db"
    for mode in ("exact", "cursor", "diff"):
        path.unlink(missing_ok=True)
        handler = Handler()
        gate = await open_gate(stack, table, handler, mode, cache=str(path))
        await repair(gate, "first-join")
        await gate.close()  # the process stops
        stack.sql(f"update public.{table} set v = v + 1 where id = 101")
        stack.sql(f"insert into public.{table} (id, kind, v) values (9{len(mode)}, 'new', 0)")
        handler.changes.clear()
        gate = await open_gate(stack, table, handler, mode, cache=str(path))
        await repair(gate, "first-join")
        assert handler.repaired.mode == mode
        assert sorted((c.op, c.pk) for c in handler.changes) == sorted(
            [("UPDATE", (101,)), ("INSERT", (int(f"9{len(mode)}"),))]
        )
        assert normalised(gate.rows()) == normalised(server_rows(stack, table))
        await gate.close()


async def test_exact_falls_back_to_diff_when_retention_was_exceeded(stack: StackProcess) -> None:
    table = make_table(stack)
    handler = Handler()
    gate = await open_gate(stack, table, handler, "exact")
    await repair(gate, "first-join")
    stack.sql(f"insert into public.{table} (id, kind, v) values (1, 'x', 1), (2, 'y', 2)")
    stack.sql(f"delete from public.{table} where id = 2")
    stack.sql(
        "update supasync.change_log set logged_at = now() - interval '30 days' "
        "where table_name = %s",
        (table,),
    )
    stack.sql("select supasync.prune()")
    await repair(gate)
    assert handler.repaired.mode == "diff"
    assert gate.last_result is not None and "retention" in (gate.last_result.fallback or "")
    assert set(gate.rows()) == {(1,)}
    await repair(gate)  # the horizon taken before the diff makes the next one exact again
    assert handler.repaired.mode == "exact"
    await gate.close()


async def test_filter_limits_cache_and_row_leaving_filter_is_a_delete(stack: StackProcess) -> None:
    table = make_table(stack)
    stack.sql(
        f"insert into public.{table} (id, kind, v) select g, case when g < 5 then 'keep' "
        "else 'drop' end, g from generate_series(1, 8) g"
    )
    for mode in ("exact", "cursor", "diff"):
        handler = Handler()
        gate = await open_gate(stack, table, handler, mode, filter=parse_filter("kind=eq.keep"))
        await repair(gate, "first-join")
        assert set(gate.rows()) == {(1,), (2,), (3,), (4,)}
        stack.sql(f"update public.{table} set kind = 'drop' where id = 1")
        await repair(gate)
        assert set(gate.rows()) == {(2,), (3,), (4,)}
        assert handler.changes[-1].op == "DELETE" and handler.changes[-1].pk == (1,)
        stack.sql(f"update public.{table} set kind = 'keep' where id = 1")
        await gate.close()


async def test_rls_two_users_through_the_real_client(stack: StackProcess) -> None:
    """Live changes and repairs together: each user's cache and handlers hold exactly the rows
    RLS lets them see; a row moved to the other user is a DELETE after the next repair."""
    from supasync.client.realtime import Realtime
    from supasync.core.backoff import BackoffPolicy
    from supasync.core.status import GapOpened, StatusEvent, utcnow

    table = make_table(stack, rls=True)
    stack.sql(f"alter publication supabase_realtime add table public.{table}")
    users = {"a": str(uuid.uuid4()), "b": str(uuid.uuid4())}
    clients: dict[str, tuple[Realtime, CachedGate, Handler]] = {}
    for who, sub in users.items():
        handler = Handler()
        gate = CachedGate("memory:", repair=RepairConfig(mode="exact"))
        rt = Realtime(
            stack.url, stack.anon_key,
            token=stack.mint({"role": "authenticated", "sub": sub}),
            heartbeat_interval=1.0, heartbeat_timeout=3.0,
            backoff=BackoffPolicy(initial=0.1, cap=1.0),
        )

        async def on_change(change: Change, handler: Handler = handler) -> None:
            await handler.emit(change)

        rt.subscribe(table, handler=on_change, gate=gate, primary_key=("id",), name=table)
        clients[who] = (rt, gate, handler)

    def repaired_since(t: Any) -> Any:
        return lambda e: isinstance(e, GapRepaired) and e.opened_at >= t

    try:
        t0 = utcnow()
        waits = [
            asyncio.ensure_future(rt.status.wait_for(repaired_since(t0), 60))
            for rt, _, _ in clients.values()
        ]
        await asyncio.sleep(0)
        for rt, _, _ in clients.values():
            await rt.start()
        await asyncio.gather(*waits)
        for i in range(1, 9):
            owner = users["a"] if i % 2 else users["b"]
            stack.sql(
                f"insert into public.{table} (id, owner, v) values (%s, %s, %s)", (i, owner, i)
            )
        stack.sql(f"update public.{table} set owner = %s where id = 1", (users["b"],))
        stack.sql(f"delete from public.{table} where id = 2")
        # Force a gap after the writes: its repair settles whatever live delivery left out.
        t1 = utcnow()
        waits = [
            asyncio.ensure_future(rt.status.wait_for(repaired_since(t1), 60))
            for rt, _, _ in clients.values()
        ]
        opened: list[asyncio.Future[StatusEvent]] = [
            asyncio.ensure_future(rt.status.wait_for(lambda e: isinstance(e, GapOpened), 60))
            for rt, _, _ in clients.values()
        ]
        await asyncio.sleep(0)
        await asyncio.to_thread(stack.drop_connections)
        await asyncio.gather(*opened)
        await asyncio.gather(*waits)
        for who, (_rt, gate, handler) in clients.items():
            expected = normalised(server_rows(stack, table, "owner = %s", (users[who],)))
            assert normalised(gate.rows()) == expected, who
            assert expected, who
            await handler.until(expected)  # handlers run behind the delivery queue
            assert normalised(handler.view) == expected, who
            # Every row a handler was ever given belonged to its user.
            for change in handler.changes:
                if change.new is not None:
                    assert change.new["owner"] == users[who], (who, change)
        a_handler = clients["a"][2]
        assert any(c.op == "DELETE" and c.pk == (1,) for c in a_handler.changes)
    finally:
        for rt, _, _ in clients.values():
            await rt.aclose()


async def test_role_without_execute_on_the_rpc_falls_back_and_says_so(stack: StackProcess) -> None:
    table = make_table(stack)
    stack.sql(f"insert into public.{table} (id, kind, v) values (1, 'x', 1)")
    fn = "public.supasync_changes(text, text, text, bigint, integer)"
    stack.sql(f"revoke execute on function {fn} from authenticated")
    try:
        token = stack.mint({"role": "authenticated", "sub": str(uuid.uuid4())})
        handler = Handler()
        gate = await open_gate(stack, table, handler, "exact", token=token)
        await repair(gate, "first-join")
        stack.sql(f"insert into public.{table} (id, kind, v) values (2, 'y', 2)")
        await repair(gate)
        assert handler.repaired.mode == "diff"
        assert gate.last_result is not None
        assert "may not call" in (gate.last_result.fallback or "")
        assert set(gate.rows()) == {(1,), (2,)}
        await gate.close()
    finally:
        stack.sql(f"grant execute on function {fn} to authenticated")


async def test_unusable_cache_file_falls_back_to_memory_and_still_delivers(
    stack: StackProcess,
) -> None:
    table = make_table(stack)
    stack.sql(f"insert into public.{table} (id, kind, v) values (1, 'x', 1)")
    path = Path(tempfile.mkdtemp(prefix="supasync-test-badcache-")) / "cache.db"
    path.write_bytes(b"definitely not sqlite " * 200)
    handler = Handler()
    gate = await open_gate(stack, table, handler, "diff", cache=str(path))
    await repair(gate, "first-join")
    assert handler.repaired.mode == "snapshot"
    assert set(handler.view) == {(1,)}
    await gate.close()


async def test_live_changes_of_a_burst_are_cached_in_one_transaction(
    stack: StackProcess, tmp_path: Path
) -> None:
    """One SQLite transaction per live change made the cache the slowest step of delivery:
    the live changes the pump hands over in one go are written together once it yields, an
    INSERT and a DELETE of one key in the same burst included (the row ends up absent)."""
    from datetime import UTC, datetime

    from supasync.core.changes import change_from_row

    table = make_table(stack)
    handler = Handler()
    gate = await open_gate(stack, table, handler, "diff", cache=str(tmp_path / "c.sqlite"))
    await repair(gate, "first-join")
    store = gate.store
    assert store is not None
    written: list[int] = []
    real_write = store.write

    def counting(subscription: str, writes: Any, **kw: Any) -> None:
        written.append(len(writes))
        real_write(subscription, writes, **kw)

    store.write = counting  # type: ignore[method-assign]
    now = datetime.now(UTC)

    def live(op: Any, row: dict[str, Any]) -> Change:
        return change_from_row("public", table, op, row if op != "DELETE" else None,
                               row if op == "DELETE" else None, ("id",), origin="live",
                               commit_timestamp=now)

    for i in range(50):
        await gate.live(live("INSERT", {"id": 1000 + i, "kind": "k", "v": i}))
    await gate.live(live("UPDATE", {"id": 1001, "kind": "k", "v": -1}))
    await gate.live(live("DELETE", {"id": 1000}))
    assert written == []  # the burst has not ended yet
    await asyncio.sleep(0)  # one loop turn: the flush was scheduled with call_soon before it
    assert written == [50]  # 1000's INSERT and DELETE are one write (latest wins)
    name = gate._require_info().name
    cached = {r.pk: r.row for r in store.rows(name)}
    assert (1000,) not in cached
    assert cached[(1001,)]["v"] == -1 and (1049,) in cached
    assert len(handler.changes) == 52
    await gate.close()


@pytest.mark.parametrize("mode", ["exact", "diff"])
async def test_a_row_delivered_but_not_cached_then_deleted_is_deleted_after_a_restart(
    stack: StackProcess, tmp_path: Path, mode: str
) -> None:
    """A live change reached the handlers, the process died before its row was cached, and
    the row was deleted upstream while nothing ran: the cache and the server then agree that
    it does not exist, and only the in-flight keys (store/inflight.py) tell the restart to
    deliver the DELETE. Without them the handlers kept the row for ever (seen as a flaky
    SIGKILL test in test_repair_random.py)."""
    from supasync.core.changes import change_from_row

    table = make_table(stack)
    writes(stack, table, 1)
    cache = str(tmp_path / "cache.db")
    handler = Handler()
    gate = await open_gate(stack, table, handler, mode, cache)
    await repair(gate, "first-join")
    stack.sql(f"insert into public.{table} (id, kind, v) values (7777, 'live', 1)")
    (row,) = [r for k, r in server_rows(stack, table).items() if k == (7777,)]
    gate._flush_live = lambda: None  # type: ignore[method-assign]  # dies before the flush
    await gate.live(change_from_row("public", table, "INSERT", row, None, ("id",),
                                    origin="live"))
    assert (7777,) in handler.view
    # SIGKILL: nothing more is written (the pending row write is lost with the process).
    assert gate.merger is not None and gate.store is not None
    gate.merger.take_writes()
    gate._inflight.close()
    gate.store.close()
    stack.sql(f"delete from public.{table} where id = 7777")
    survivor = Handler()
    survivor.view = dict(handler.view)  # what the handlers had seen, kept by the application
    again = await open_gate(stack, table, survivor, mode, cache)
    await repair(again, "restart")
    assert (7777,) not in survivor.view
    assert normalised(survivor.view) == normalised(server_rows(stack, table))
    await again.close()
    # Settled: the next start has nothing left to deliver again.
    third = Handler()
    last = await open_gate(stack, table, third, mode, cache)
    assert last._suspects == []
    await last.close()


async def test_an_exact_repair_reads_the_change_log_in_pages_of_the_rpcs_cap(
    stack: StackProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log is read in pages of ``log_page_size`` (default: the RPC's cap, 10,000), not of
    the row page size: a restart after 10,000 changes made ten sequential round trips before
    its first re-read when the log was read 1,000 entries at a time."""
    from supasync.repair.repairer import Repairer

    table = make_table(stack)
    writes(stack, table, 1)
    handler = Handler()
    gate = CachedGate("memory:", repair=RepairConfig(mode="exact", page_size=7))
    await gate.open(info(stack, table, handler), handler.emit)
    await repair(gate, "first-join")
    pages: list[tuple[int, int]] = []
    real = Repairer._log

    async def counted(self: Repairer, since: str | None, after: Any = None,
                      limit: int = 0) -> dict[str, Any] | None:
        answer = await real(self, since, after, limit)
        if limit:
            pages.append((limit, len((answer or {}).get("entries") or [])))
        return answer

    monkeypatch.setattr(Repairer, "_log", counted)
    writes(stack, table, 2)  # 30 inserts and the updates and deletes: far more than 7 entries
    await repair(gate)
    assert handler.repaired.mode == "exact"
    assert len(pages) == 1 and pages[0][0] == 10_000 and pages[0][1] > 7
    assert normalised(gate.rows()) == normalised(server_rows(stack, table))
    await gate.close()
