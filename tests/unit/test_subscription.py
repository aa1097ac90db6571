"""Subscription: bindings, DELETE matching, the gate call order, isolated handlers, iteration,
bounded queues. No server: payloads are fed the way realtime-py's callback would."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from supasync.client.subscription import (
    ALL_EVENTS,
    Binding,
    DeleteMatcher,
    Emit,
    PassThroughGate,
    Subscription,
    SubscriptionInfo,
    normalize_events,
    plan_bindings,
)
from supasync.core.changes import Change
from supasync.core.errors import ConfigError, FilterError
from supasync.core.filters import as_filter, col
from supasync.core.status import GapRepaired, HandlerFailed


def payload(
    op: str, new: dict[str, Any] | None = None, old: dict[str, Any] | None = None
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "schema": "public",
        "table": "todos",
        "type": op,
        "commit_timestamp": "2026-01-01T00:00:00Z",
        "columns": [],
        "errors": None,
    }
    if new is not None:
        data["record"] = new
    if old is not None:
        data["old_record"] = old
    return {"ids": [1], "data": data}


async def token() -> str:
    return "not-a-real-token"


def info_for(sub: Subscription, reports: list[object]) -> SubscriptionInfo:
    return SubscriptionInfo(
        name=sub.name,
        schema=sub.schema,
        table=sub.table,
        events=sub.events,
        filter=sub.filter,
        columns=sub.columns,
        primary_key=sub.primary_key,
        rest_url="http://127.0.0.1:1/rest/v1",
        api_key="anon",
        token=token,
        report=reports.append,
    )


async def until(predicate: Any) -> None:
    """Wait until predicate() holds, failing after 5 s. It re-checks each time the loop runs
    other tasks: a condition wait on the pipeline's state, not a sleep standing in for one."""
    async with asyncio.timeout(5):
        while not predicate():  # noqa: ASYNC110 - no event exists for "handler list grew"
            await asyncio.sleep(0)


# --------------------------------------------------------------------------- pure parts


def test_normalize_events() -> None:
    assert normalize_events("*") == ALL_EVENTS
    assert normalize_events("insert") == {"INSERT"}
    assert normalize_events(["UPDATE", "delete"]) == {"UPDATE", "DELETE"}
    with pytest.raises(ConfigError, match="unknown event 'TRUNCATE'"):
        normalize_events("TRUNCATE")
    with pytest.raises(ConfigError):
        normalize_events([])


def test_plan_bindings_without_filter_is_one_star_binding() -> None:
    assert plan_bindings(ALL_EVENTS, as_filter(None), ("id",)) == (Binding("*", None),)


def test_plan_bindings_key_filter_lets_the_server_filter_deletes() -> None:
    got = plan_bindings(ALL_EVENTS, as_filter("id=eq.3"), ("id",))
    assert got == (Binding("*", "id=eq.3"),)


def test_plan_bindings_non_key_filter_splits_delete_and_update_off() -> None:
    # The server judges an UPDATE on the new row only (move-outs send nothing): with moves
    # (the default) UPDATEs are subscribed unfiltered and judged locally.
    got = plan_bindings(ALL_EVENTS, col("status").eq("open"), ("id",))
    assert got == (
        Binding("INSERT", "status=eq.open"),
        Binding("UPDATE", None, local_update=True),
        Binding("DELETE", None, local_delete=True),
    )
    # moves=False: the server filters UPDATEs, as before.
    got = plan_bindings(ALL_EVENTS, col("status").eq("open"), ("id",), moves=False)
    assert got == (
        Binding("INSERT", "status=eq.open"),
        Binding("UPDATE", "status=eq.open"),
        Binding("DELETE", None, local_delete=True),
    )


def test_plan_bindings_moves_need_the_update_binding_whatever_the_events() -> None:
    # INSERT only: a move-in is an INSERT for the subscriber, so UPDATEs must arrive.
    got = plan_bindings(frozenset({"INSERT"}), as_filter("status=eq.open"), ("id",))
    assert got == (Binding("INSERT", "status=eq.open"), Binding("UPDATE", None, local_update=True))
    # A key-only filter: the server filters every event correctly, one binding.
    assert plan_bindings(ALL_EVENTS, as_filter("id=eq.3"), ("id",)) == (Binding("*", "id=eq.3"),)


def test_plan_bindings_select_always_carries_the_key_and_the_filter_columns() -> None:
    (binding,) = plan_bindings(frozenset({"INSERT"}), as_filter(None), ("id",), ["title"])
    assert binding.select == ("id", "title")
    got = plan_bindings(ALL_EVENTS, as_filter("done=eq.false"), ("id",), ["title"])
    assert {b.select for b in got} == {("id", "title", "done")}


async def test_pass_through_move_out_is_a_delete_and_move_in_an_insert() -> None:
    # No cache: held = keys delivered in this run; otherwise the old record decides when it
    # carries the filter column (REPLICA IDENTITY FULL).
    got: list[tuple[str, Any, Any]] = []
    sub = Subscription("todos", filter="done=eq.false",
                       handlers=[lambda c: got.append((c.op, c.pk, c.old))])
    await sub._start(info_for(sub, []))
    sub._feed(payload("INSERT", {"id": 7, "done": False}))
    sub._feed(payload("UPDATE", {"id": 7, "done": True}, {"id": 7}))  # held: a move-out
    sub._feed(payload("UPDATE", {"id": 8, "done": True}, {"id": 8}))  # not ours: dropped
    sub._feed(payload("UPDATE", {"id": 9, "done": False}, {"id": 9, "done": True}))  # move-in
    sub._feed(payload("UPDATE", {"id": 10, "done": True}, {"id": 10, "done": False}))  # out
    sub._feed(payload("UPDATE", {"id": 9, "done": False}, {"id": 9}))  # held now: an UPDATE
    sub._feed(payload("DELETE", old={"id": 7}))  # gone already: not ours any more
    await until(lambda: sub.stats.dropped_deletes == 1 and len(got) == 5)
    assert got == [("INSERT", (7,), None), ("DELETE", (7,), {"id": 7}),
                   ("INSERT", (9,), None), ("DELETE", (10,), {"id": 10, "done": False}),
                   ("UPDATE", (9,), {"id": 9})]
    assert sub.stats.dropped_updates == 1
    await sub._close()


async def test_pass_through_with_moves_off_behaves_as_the_server_filters() -> None:
    got: list[str] = []
    sub = Subscription("todos", filter="done=eq.false", moves=False,
                       handlers=[lambda c: got.append(c.op)])
    assert not any(b.local_update for b in sub.bindings)
    await sub._start(info_for(sub, []))
    sub._feed(payload("UPDATE", {"id": 9, "done": False}, {"id": 9}))
    await until(lambda: got == ["UPDATE"])
    await sub._close()


def change(
    op: str, pk: int, new: dict[str, Any] | None = None, old: dict[str, Any] | None = None
) -> Change:
    return Change("public", "todos", op, new, old, (pk,), ("id",), None)  # type: ignore[arg-type]


def test_delete_matcher_by_seen_key_and_by_full_old_record() -> None:
    m = DeleteMatcher(as_filter("status=eq.open"))
    m.observe(change("INSERT", 1, {"id": 1, "status": "open"}))
    assert m.accepts(change("DELETE", 1, old={"id": 1}))
    assert not m.accepts(change("DELETE", 2, old={"id": 2}))  # unknown key, no filter column
    assert m.accepts(change("DELETE", 3, old={"id": 3, "status": "open"}))  # REPLICA IDENTITY FULL
    assert not m.accepts(change("DELETE", 4, old={"id": 4, "status": "done"}))
    m.observe(change("DELETE", 1, old={"id": 1}))
    assert not m.accepts(change("DELETE", 1, old={"id": 1}))  # forgotten once deleted


def test_bad_filter_fails_at_declaration() -> None:
    with pytest.raises(FilterError):
        Subscription("todos", filter="status=eqq.open")


def test_bad_arguments_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        Subscription("")
    with pytest.raises(ConfigError):
        Subscription("todos", queue_size=0)
    with pytest.raises(ConfigError):
        Subscription("todos", primary_key=())
    with pytest.raises(ConfigError, match="callable"):
        Subscription("todos", handlers=["nope"])  # type: ignore[list-item]


# --------------------------------------------------------------------------- delivery


async def test_raising_handler_does_not_stop_its_neighbours(
    caplog: pytest.LogCaptureFixture,
) -> None:
    got_sync: list[Any] = []
    got_async: list[Any] = []

    def bad(c: Change) -> None:
        raise ValueError("handler bug")

    async def good_async(c: Change) -> None:
        got_async.append(c.pk)

    sub = Subscription("todos", handlers=[bad, good_async, lambda c: got_sync.append(c.pk)])
    reports: list[object] = []
    await sub._start(info_for(sub, reports))
    for i in range(3):
        sub._feed(payload("INSERT", {"id": i}))
    await until(lambda: len(got_sync) == 3 and len(got_async) == 3)
    await until(lambda: sum(isinstance(r, HandlerFailed) for r in reports) == 3)
    failures = [r for r in reports if isinstance(r, HandlerFailed)]
    assert [f.count for f in failures] == [1, 2, 3]
    assert failures[0].key == ("public", "todos", (0,))
    assert "bad" in failures[0].handler
    assert "public.todos" in caplog.text and "key=(0,)" in caplog.text
    assert sub.stats.handler_failures == {failures[0].handler: 3}
    assert got_sync == [(0,), (1,), (2,)]
    await sub._close()


async def test_sync_handlers_run_in_a_thread_by_default_or_inline() -> None:
    threads: dict[str, Any] = {}
    loop_thread = threading.current_thread()

    for mode in ("thread", "inline"):
        done = asyncio.Event()

        def handler(c: Change, mode: str = mode, done: asyncio.Event = done) -> None:
            threads[mode] = threading.current_thread()

        sub = Subscription("todos", handlers=[handler], sync_handlers=mode)  # type: ignore[arg-type]
        await sub._start(info_for(sub, []))
        sub._feed(payload("INSERT", {"id": 1}))
        await until(lambda mode=mode: mode in threads)
        await sub._close()
    assert threads["thread"] is not loop_thread
    assert threads["inline"] is loop_thread


async def test_each_iterator_gets_every_change_and_ends_on_close() -> None:
    sub = Subscription("todos")
    await sub._start(info_for(sub, []))
    seen: list[list[Any]] = [[], []]

    async def read(i: int) -> None:
        async for c in sub:
            seen[i].append(c.pk)

    readers = [asyncio.create_task(read(i)) for i in range(2)]
    await until(lambda: len(sub._consumers) == 2)
    for i in range(5):
        sub._feed(payload("INSERT", {"id": i}))
    await until(lambda: all(len(s) == 5 for s in seen))
    await sub._close()
    await asyncio.wait_for(asyncio.gather(*readers), 5)
    assert seen[0] == seen[1] == [(i,) for i in range(5)]


async def test_a_subscription_nobody_consumes_buffers_nothing() -> None:
    # A read model (no handler, no iterator): the pump must never stall on a queue nobody
    # drains (it used to stop at queue_size, and with it the gate's repair).
    sub = Subscription("todos", queue_size=2)
    await sub._start(info_for(sub, []))
    for i in range(10):
        sub._feed(payload("INSERT", {"id": i}))
    await until(lambda: sub.stats.unconsumed == 10)
    assert sub.stats.delivered == 0
    got: list[Change] = []

    async def consume() -> None:
        async for change in sub:
            got.append(change)
            return

    task = asyncio.create_task(consume())
    await until(lambda: bool(sub._consumers))  # the iterator runs: it gets what comes next
    sub._feed(payload("INSERT", {"id": 99}))
    await asyncio.wait_for(task, 5)
    assert [c.pk for c in got] == [(99,)]
    assert got[0].origin == "live" and got[0].subscription == "public.todos"
    await sub._close()


async def test_events_outside_the_declaration_are_dropped() -> None:
    got: list[str] = []
    sub = Subscription("todos", events="INSERT", handlers=[lambda c: got.append(c.op)])
    await sub._start(info_for(sub, []))
    sub._feed(payload("UPDATE", {"id": 1}, {"id": 1}))
    sub._feed(payload("INSERT", {"id": 2}))
    await until(lambda: got == ["INSERT"])
    await sub._close()


async def test_filtered_subscription_matches_unfiltered_deletes_locally() -> None:
    got: list[tuple[str, Any]] = []
    sub = Subscription(
        "todos", filter="status=eq.open", handlers=[lambda c: got.append((c.op, c.pk))]
    )
    await sub._start(info_for(sub, []))
    sub._feed(payload("INSERT", {"id": 1, "status": "open"}))
    sub._feed(payload("DELETE", old={"id": 2}))  # some other row: not ours
    sub._feed(payload("DELETE", old={"id": 1}))  # right behind its INSERT
    sub._feed(payload("INSERT", {"id": 3, "status": "open"}))
    await until(lambda: len(got) == 3)
    assert got == [("INSERT", (1,)), ("DELETE", (1,)), ("INSERT", (3,))]
    assert sub.stats.dropped_deletes == 1
    await sub._close()


async def test_undecodable_payload_is_skipped_and_counted() -> None:
    got: list[Any] = []
    sub = Subscription("todos", handlers=[lambda c: got.append(c.pk)])
    await sub._start(info_for(sub, []))
    sub._feed({"ids": [1], "data": {"type": "INSERT"}})
    sub._feed(payload("INSERT", {"id": 1}))
    await until(lambda: got == [(1,)])
    assert sub.stats.decode_errors == 1
    await sub._close()


class RecordingGate:
    """Records the call order; holds subscribed() open until released."""

    def __init__(self) -> None:
        self.calls: list[Any] = []
        self.release = asyncio.Event()
        self.emit: Emit | None = None

    async def open(self, info: SubscriptionInfo, emit: Emit) -> None:
        self.calls.append("open")
        self.emit = emit

    async def gap(self, reason: str) -> None:
        self.calls.append(("gap", reason))

    async def subscribed(self) -> None:
        self.calls.append("subscribed")
        try:
            await self.release.wait()
            self.calls.append("repaired")
        except asyncio.CancelledError:
            self.calls.append("cancelled")
            raise

    async def live(self, change: Change) -> None:
        self.calls.append(("live", change.pk))
        assert self.emit is not None
        await self.emit(change)

    async def close(self) -> None:
        self.calls.append("close")


async def test_gate_call_order_live_during_repair_and_cancel_on_new_gap() -> None:
    gate = RecordingGate()
    got: list[Any] = []
    sub = Subscription("todos", gate=gate, handlers=[lambda c: got.append(c.pk)])
    await sub._start(info_for(sub, []))
    sub._mark_gap("first-join")
    sub._mark_subscribed()
    await until(lambda: "subscribed" in gate.calls)
    sub._feed(payload("INSERT", {"id": 1}))  # arrives while subscribed() still runs
    await until(lambda: got == [(1,)])
    sub._mark_gap("drop")  # lost during the repair: the repair is cancelled first
    sub._mark_subscribed()
    await until(lambda: gate.calls.count("subscribed") == 2)
    gate.release.set()
    await until(lambda: "repaired" in gate.calls)
    await sub._close()
    assert gate.calls == [
        "open",
        ("gap", "first-join"),
        "subscribed",
        ("live", (1,)),
        "cancelled",
        ("gap", "drop"),
        "subscribed",
        "repaired",
        "close",
    ]


async def test_pass_through_gate_reports_gap_repaired_with_mode_none() -> None:
    reports: list[object] = []
    sub = Subscription("todos", gate=PassThroughGate())
    await sub._start(info_for(sub, reports))
    sub._mark_gap("first-join")
    sub._mark_subscribed()
    await until(lambda: any(isinstance(r, GapRepaired) for r in reports))
    (repaired,) = [r for r in reports if isinstance(r, GapRepaired)]
    assert repaired.mode == "none" and repaired.subscription == "public.todos"
    assert repaired.duration_s >= 0 and (repaired.inserted, repaired.deleted) == (0, 0)
    await sub._close()


async def test_slow_handler_gives_backpressure_then_overflow_asks_for_a_rebuild() -> None:
    release = asyncio.Event()
    handled: list[Any] = []

    async def slow(c: Change) -> None:
        await release.wait()
        handled.append(c.pk)

    overflows: list[int] = []
    sub = Subscription("todos", handlers=[slow], queue_size=2, intake_limit=2)
    await sub._start(info_for(sub, []), on_overflow=lambda: overflows.append(1))
    for i in range(20):
        sub._feed(payload("INSERT", {"id": i}))
    await until(lambda: sub.stats.dropped_overflow > 0)
    # Bounded: at most queue_size in the intake plus one per queue stage is held.
    assert sub.stats.dropped_overflow >= 20 - 2 - 2 - 2 - 2
    assert overflows == [1]  # one rebuild request per overflow episode
    release.set()
    await until(lambda: len(handled) == 20 - sub.stats.dropped_overflow)
    assert handled == sorted(handled)
    await sub._close()


async def test_handler_added_later_with_on_decorator() -> None:
    sub = Subscription("todos")
    await sub._start(info_for(sub, []))
    got: list[Any] = []

    @sub.on
    async def later(c: Change) -> None:
        got.append(c.pk)

    sub._feed(payload("INSERT", {"id": 5}))
    await until(lambda: got == [(5,)])
    await sub._close()
    assert sub.closed


async def test_an_abandoned_iterator_does_not_block_the_others() -> None:
    sub = Subscription("todos", queue_size=1)
    await sub._start(info_for(sub, []))
    got: list[Any] = []

    @sub.on
    async def keep(c: Change) -> None:
        got.append(c.pk)

    stalled = sub.__aiter__()
    pending = asyncio.ensure_future(stalled.__anext__())  # registers, then never reads again
    await until(lambda: len(sub._consumers) == 2)
    for i in range(5):
        sub._feed(payload("INSERT", {"id": i}))
    await until(lambda: sub.stats.delivered >= 2)
    assert sub.stats.delivered < 5  # the stalled reader's full queue holds delivery back
    assert sub._intake_changes > 0
    await pending
    await stalled.aclose()  # type: ignore[attr-defined]  # the app gives up on it
    await until(lambda: len(got) == 5)
    await sub._close()


async def test_a_gate_that_filters_deletes_itself_gets_every_delete() -> None:
    gate = RecordingGate()
    gate.filters_deletes = True  # type: ignore[attr-defined]
    sub = Subscription("todos", filter="status=eq.open", gate=gate)
    await sub._start(info_for(sub, []))
    sub._feed(payload("DELETE", old={"id": 9}))  # unknown to the key set: the gate decides
    await until(lambda: ("live", (9,)) in gate.calls)
    assert sub.stats.dropped_deletes == 0
    await sub._close()


async def test_a_burst_reaches_a_sync_handler_whole_and_in_order() -> None:
    """Regression: sync handlers used to cost one thread hop per change and the intake held only
    queue_size changes, so a 5,000-change burst overflowed and lost most of it."""
    seen: list[int] = []
    threads: set[str] = set()

    def handler(c: Change) -> None:
        threads.add(threading.current_thread().name)
        seen.append(c.pk[0])

    sub = Subscription("todos", handlers=[handler])
    await sub._start(info_for(sub, []), on_overflow=lambda: None)
    for i in range(5000):
        sub._feed(payload("INSERT", {"id": i}))
    await until(lambda: len(seen) == 5000)
    assert seen == list(range(5000))
    assert sub.stats.dropped_overflow == 0
    assert threading.main_thread().name not in threads  # ran off the event loop
    await sub._close()


async def test_a_failing_call_in_a_thread_batch_skips_nothing() -> None:
    seen: list[int] = []

    def handler(c: Change) -> None:
        if c.pk[0] % 3 == 0:
            raise RuntimeError("boom")
        seen.append(c.pk[0])

    sub = Subscription("todos", handlers=[handler])
    await sub._start(info_for(sub, []), on_overflow=lambda: None)
    for i in range(30):
        sub._feed(payload("INSERT", {"id": i}))
    failures = sub.stats.handler_failures
    assert failures is not None
    await until(lambda: sum(failures.values()) == 10)
    assert seen == [i for i in range(30) if i % 3]
    await sub._close()
