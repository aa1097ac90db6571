"""The supervised connection against the local stack: recovery from drops, clean closes, restarts
and token expiry with no help from the app; handler isolation; sharding; typed permanent errors;
async iteration; no secrets in logs. No mocks on the server path; every wait is on an event or a
status predicate with a timeout."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from supasync import (
    Change,
    ConnectionState,
    FilterError,
    GapOpened,
    GapRepaired,
    HandlerFailed,
    Realtime,
    SubscriptionFailed,
    SubscriptionState,
    TableNotPublished,
)
from supasync.core.backoff import BackoffPolicy
from supasync.core.status import StatusEvent
from supasync.devstack.testing import StackProcess

pytestmark = pytest.mark.integration

WAIT = 30.0  # generous upper bound for anything to happen on a loaded 2-core machine


def _data_dir() -> str:
    # PostgreSQL runs as `postgres` when tests run as root: it must be able to enter the dir.
    path = tempfile.mkdtemp(prefix="supasync-e2-")
    os.chmod(path, 0o755)
    return path


def make_table(stack: StackProcess, *, publish: bool = True) -> str:
    name = f"t_{uuid.uuid4().hex[:10]}"
    stack.sql(
        f"""
        create table {name} (id bigint primary key, title text, status text);
        grant select on {name} to anon, authenticated, service_role;
        """
    )
    if publish:
        stack.sql(f"alter publication supabase_realtime add table {name}")
    return name


def client_for(stack: StackProcess, **kwargs: Any) -> Realtime:
    options: dict[str, Any] = {
        "token": stack.service_role_key,
        "heartbeat_interval": 1.0,
        "heartbeat_timeout": 3.0,
        "subscribed_timeout": 15.0,
        "backoff": BackoffPolicy(initial=0.1, cap=1.0),
    }
    options.update(kwargs)
    options.setdefault("repair", "off")  # these tests are about the transport; repair has its own
    return Realtime(stack.url, stack.anon_key, **options)


@pytest.fixture
async def rt(stack: StackProcess) -> AsyncIterator[Realtime]:
    client = client_for(stack)
    async with client:
        yield client


class Collector:
    """A handler that queues what it receives, so tests can await the next change."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Change] = asyncio.Queue()
        self.seen: list[Change] = []

    async def __call__(self, change: Change) -> None:
        self.seen.append(change)
        await self.queue.put(change)

    async def next(self) -> Change:
        return await asyncio.wait_for(self.queue.get(), WAIT)


async def insert(stack: StackProcess, table: str, row_id: int, status: str = "open") -> None:
    await asyncio.to_thread(
        stack.sql,
        f"insert into {table} (id, title, status) values (%s, %s, %s)",
        (row_id, f"row {row_id}", status),
    )


def gap_repaired(name: str) -> Callable[[StatusEvent], bool]:
    return lambda e: isinstance(e, GapRepaired) and e.subscription == name


async def recovered_after(
    rt: Realtime, stack: StackProcess, fault: Callable[[], Any], reason: str | None = None
) -> None:
    """Apply a fault to a live client and assert the gap is opened and then repaired."""
    (sub,) = rt.subscriptions
    opened = asyncio.ensure_future(
        rt.status.wait_for(lambda e: isinstance(e, GapOpened) and e.subscription == sub.name, WAIT)
    )
    # Registered before the fault so the event cannot be missed; the bound is generous because
    # a stack restart (PostgreSQL stop and start) is slow on a loaded machine.
    repaired = asyncio.ensure_future(rt.status.wait_for(gap_repaired(sub.name), WAIT * 4))
    await asyncio.sleep(0)  # let both waiters register before the fault
    await asyncio.to_thread(fault)
    gap = await opened
    assert isinstance(gap, GapOpened)
    if reason is not None:
        assert gap.reason == reason
    done = await repaired
    assert isinstance(done, GapRepaired)
    assert done.opened_at >= gap.at  # the repair closes this gap, not an earlier one
    await rt.wait_live(WAIT)
    assert rt.status.state is ConnectionState.LIVE


# --------------------------------------------------------------------------- basics


async def test_live_then_changes_arrive_and_async_for_works(
    rt: Realtime, stack: StackProcess
) -> None:
    table = make_table(stack)
    handler = Collector()
    sub = rt.subscribe(table, handler=handler)
    await rt.wait_live(WAIT)
    assert rt.status.subscriptions[sub.name] is SubscriptionState.LIVE

    async def first_two() -> list[Change]:
        out: list[Change] = []
        async for change in sub:
            out.append(change)
            if len(out) == 2:
                break
        return out

    reader = asyncio.create_task(first_two())
    await asyncio.wait_for(_until_consumers(sub, 2), WAIT)  # handler + iterator
    await insert(stack, table, 1)
    await insert(stack, table, 2)
    got = await asyncio.wait_for(reader, WAIT)
    assert [c.pk for c in got] == [(1,), (2,)]
    assert got[0].op == "INSERT" and got[0].table == table and got[0].new is not None
    assert (await handler.next()).pk == (1,)


async def _until_consumers(sub: Any, n: int) -> None:
    while len(sub._consumers) < n:  # noqa: ASYNC110 - registration has no event of its own
        await asyncio.sleep(0)


async def test_filtered_subscription_delivers_only_matching_rows_and_their_deletes(
    rt: Realtime, stack: StackProcess
) -> None:
    table = make_table(stack)
    handler = Collector()
    rt.subscribe(table, filter="status=eq.open", handler=handler)
    await rt.wait_live(WAIT)
    await insert(stack, table, 1, "closed")
    await insert(stack, table, 2, "open")
    await asyncio.to_thread(stack.sql, f"delete from {table} where id = 1")
    await asyncio.to_thread(stack.sql, f"delete from {table} where id = 2")
    first = await handler.next()
    second = await handler.next()
    assert (first.op, first.pk) == ("INSERT", (2,))
    assert (second.op, second.pk) == ("DELETE", (2,))


# --------------------------------------------------------------------------- recovery


@pytest.mark.parametrize(
    ("fault", "reason"), [("drop_connections", "drop"), ("close_connections", "close")]
)
async def test_recovers_from_socket_loss_by_itself(
    rt: Realtime, stack: StackProcess, fault: str, reason: str
) -> None:
    table = make_table(stack)
    handler = Collector()
    rt.subscribe(table, handler=handler)
    await rt.wait_live(WAIT)
    await recovered_after(rt, stack, getattr(stack, fault), reason=reason)
    await insert(stack, table, 10)
    assert (await handler.next()).pk == (10,)
    assert len(rt.connection.clients) == 1  # the old client was discarded, not kept alongside


@pytest.mark.parametrize("fault", ["drop_connections", "close_connections"])
async def test_a_routine_socket_loss_is_one_warning_not_realtime_py_errors(
    rt: Realtime, stack: StackProcess, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    """realtime-py logs a lost socket at ERROR twice, and the server's "Server requested
    disconnect" frame as an 80-line ERROR; on supasync's clients those go to DEBUG and the loss
    is supasync's one WARNING (frames.RoutineLossFilter)."""
    table = make_table(stack)
    rt.subscribe(table, handler=Collector())
    await rt.wait_live(WAIT)
    with caplog.at_level(logging.WARNING):
        await recovered_after(rt, stack, getattr(stack, fault))
    from_realtime_py = [r for r in caplog.records if r.name.startswith("realtime")]
    assert from_realtime_py == [], [r.getMessage()[:120] for r in from_realtime_py]
    assert any(r.name == "supasync.client.connection" and "socket lost" in r.getMessage()
               for r in caplog.records)


async def test_recovers_from_token_expiry_with_no_app_action(
    rt: Realtime, stack: StackProcess
) -> None:
    table = make_table(stack)
    handler = Collector()
    rt.subscribe(table, handler=handler)
    await rt.wait_live(WAIT)
    await recovered_after(rt, stack, stack.expire_tokens, reason="token-expired")
    await insert(stack, table, 11)
    assert (await handler.next()).pk == (11,)


async def test_heartbeat_watchdog_rebuilds_a_silent_socket(
    rt: Realtime, stack: StackProcess
) -> None:
    table = make_table(stack)
    handler = Collector()
    sub = rt.subscribe(table, handler=handler)
    await rt.wait_live(WAIT)
    opened = asyncio.ensure_future(
        rt.status.wait_for(lambda e: isinstance(e, GapOpened) and e.reason == "heartbeat", WAIT)
    )
    await asyncio.sleep(0)
    # Frames from the server now arrive 5 s late: heartbeat replies miss the 3 s deadline.
    await asyncio.to_thread(stack.set_latency, 5000)
    try:
        await opened
    finally:
        await asyncio.to_thread(stack.set_latency, 0)
    await rt.status.wait_for(gap_repaired(sub.name), WAIT * 2)
    await insert(stack, table, 12)
    assert (await handler.next()).pk == (12,)


async def test_dead_listen_task_is_detected_and_the_socket_rebuilt(
    rt: Realtime, stack: StackProcess
) -> None:
    """realtime-py's listen task dies when any callback raises, while ``is_connected`` stays
    true and heartbeats keep the socket open. Plant such a callback on the live channel
    (outside supasync, as a buggy third party would: a broadcast listener) and check the
    supervisor notices."""
    table = make_table(stack)
    handler = Collector()
    sub = rt.subscribe(table, handler=handler)
    await rt.wait_live(WAIT)
    (client,) = rt.connection.clients
    (channel,) = client.channels.values()

    def boom(payload: Any) -> None:
        raise RuntimeError("a callback bug inside realtime-py's listen loop")

    channel.broadcast_callbacks.append(boom)
    opened = asyncio.ensure_future(
        rt.status.wait_for(lambda e: isinstance(e, GapOpened) and e.reason == "listen-died", WAIT)
    )
    await asyncio.sleep(0)
    topic = channel.topic.removeprefix("realtime:")
    async with httpx.AsyncClient(timeout=WAIT) as http:
        sent = await http.post(
            f"{stack.url}/realtime/v1/api/broadcast",
            headers={"apikey": stack.anon_key, "Authorization": f"Bearer {stack.anon_key}"},
            json={"messages": [{"topic": topic, "event": "poke", "payload": {}}]},
        )
        assert sent.status_code == 202
    await opened
    await rt.status.wait_for(gap_repaired(sub.name), WAIT)
    assert rt.connection.clients and rt.connection.clients[0] is not client
    await insert(stack, table, 31)
    assert (await handler.next()).pk == (31,)


async def test_a_raising_postgres_changes_callback_does_not_end_the_listen_loop(
    rt: Realtime, stack: StackProcess
) -> None:
    """Stock realtime-py ends its listen task on the first exception from a postgres_changes
    callback (python-clients.md section 3). supasync reads those frames itself
    (supasync/client/frames.py) and contains a failing callback: the socket stays up and supasync's
    own callback keeps getting every change."""
    table = make_table(stack)
    handler = Collector()
    rt.subscribe(table, handler=handler)
    await rt.wait_live(WAIT)
    (client,) = rt.connection.clients
    (channel,) = client.channels.values()
    binding = channel.postgres_changes_callbacks[0]
    calls: list[int] = []

    def boom(payload: Any) -> None:
        calls.append(1)
        raise RuntimeError("a callback bug")

    channel.postgres_changes_callbacks.insert(0, dataclasses.replace(binding, callback=boom))
    await insert(stack, table, 30)
    await insert(stack, table, 31)
    assert (await handler.next()).pk == (30,)
    assert (await handler.next()).pk == (31,)
    assert len(calls) == 2
    assert rt.connection.clients == [client]
    assert client._listen_task is not None and not client._listen_task.done()


async def test_recovers_from_a_stack_restart(
    supabase_stack_factory: Callable[..., StackProcess],
) -> None:
    data_dir = _data_dir()
    try:
        stack = supabase_stack_factory(data_dir=data_dir)
        table = make_table(stack)
        handler = Collector()
        async with client_for(stack) as rt:
            rt.subscribe(table, handler=handler)
            await rt.wait_live(WAIT)
            await recovered_after(rt, stack, stack.restart)
            await insert(stack, table, 20)
            assert (await handler.next()).pk == (20,)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


# --------------------------------------------------------------------------- isolation


async def test_raising_handler_does_not_stop_its_neighbours(
    rt: Realtime, stack: StackProcess
) -> None:
    table_a, table_b = make_table(stack), make_table(stack)
    calls = 0

    def broken(change: Change) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("handler bug")

    same_sub, other_sub = Collector(), Collector()
    sub_a = rt.subscribe(table_a, handlers=[broken, same_sub])
    rt.subscribe(table_b, handler=other_sub)
    failures = asyncio.ensure_future(
        rt.status.wait_for(lambda e: isinstance(e, HandlerFailed) and e.count == 3, WAIT)
    )
    await rt.wait_live(WAIT)
    for i in range(3):
        await insert(stack, table_a, i)
        await insert(stack, table_b, i)
    assert [(await same_sub.next()).pk for _ in range(3)] == [(0,), (1,), (2,)]
    assert [(await other_sub.next()).pk for _ in range(3)] == [(0,), (1,), (2,)]
    failed = await failures
    assert isinstance(failed, HandlerFailed) and failed.subscription == sub_a.name
    assert calls == 3
    assert rt.status.state is ConnectionState.LIVE


async def test_remove_leaves_the_channel_and_ends_iterators(
    rt: Realtime, stack: StackProcess
) -> None:
    table = make_table(stack)
    keep_handler = Collector()
    gone = rt.subscribe(table)
    rt.subscribe(table, handler=keep_handler, name="kept")
    await rt.wait_live(WAIT)

    async def drain() -> list[Change]:
        return [change async for change in gone]

    reader = asyncio.create_task(drain())
    await asyncio.wait_for(_until_consumers(gone, 1), WAIT)
    await rt.remove(gone)
    assert await asyncio.wait_for(reader, WAIT) == []
    assert gone.name not in rt.status.subscriptions
    (client,) = rt.connection.clients
    assert [ch.topic for ch in client.channels.values() if not ch.is_leaving] == [
        ch.topic for ch in client.channels.values() if ch.topic.startswith("realtime:kept~")
    ]
    await insert(stack, table, 40)
    assert (await keep_handler.next()).pk == (40,)
    assert rt.status.state is ConnectionState.LIVE


# --------------------------------------------------------------------------- sharding


async def test_150_subscriptions_run_over_two_sockets(stack: StackProcess) -> None:
    table = make_table(stack)
    handlers = [Collector() for _ in range(150)]
    async with client_for(stack, subscribed_timeout=60.0) as rt:
        for i, handler in enumerate(handlers):
            rt.subscribe(table, filter=f"id=eq.{i}", handler=handler, name=f"row-{i}")
        await rt.wait_live(WAIT * 4)
        assert rt.connection.shard_count == 2
        clients = rt.connection.clients
        assert len(clients) == 2
        assert sorted(len(c.channels) for c in clients) == [50, 100]
        await insert(stack, table, 0)
        await insert(stack, table, 149)
        assert (await handlers[0].next()).pk == (0,)
        assert (await handlers[149].next()).pk == (149,)
        assert all(h.queue.empty() for h in handlers[1:149])


# --------------------------------------------------------------------------- errors


async def test_bad_filter_fails_before_connecting(stack: StackProcess) -> None:
    rt = client_for(stack)
    with pytest.raises(FilterError) as info:
        rt.subscribe("todos", filter="status=eqq.open")
    assert "eqq" in str(info.value)
    assert rt.connection.clients == []
    await rt.aclose()


async def test_unpublished_table_is_a_typed_error_without_a_rejoin_loop(
    rt: Realtime, stack: StackProcess
) -> None:
    table = make_table(stack, publish=False)
    sub = rt.subscribe(table)
    failed = asyncio.ensure_future(
        rt.status.wait_for(lambda e: isinstance(e, SubscriptionFailed), WAIT)
    )
    with pytest.raises(TableNotPublished) as info:
        await rt.wait_live(WAIT)
    assert info.value.subscription == sub.name
    event = await failed
    assert isinstance(event, SubscriptionFailed) and isinstance(event.error, TableNotPublished)
    assert rt.status.subscriptions[sub.name] is SubscriptionState.FAILED
    assert rt.status.state is ConnectionState.DEGRADED
    # No rejoin loop: the subscription's task has ended after exactly one join, and its
    # channel is gone from the socket (realtime-py's own rejoin timer was cancelled).
    shard = rt.connection._where[sub.name]
    member = shard.members[sub.name]
    assert member.task is not None
    await asyncio.wait_for(asyncio.shield(member.task), WAIT)
    assert member.joins == 1
    for client in rt.connection.clients:
        topics = [ch.topic for ch in client.channels.values() if not ch.is_leaving]
        assert not any(t.startswith(f"realtime:{sub.name}~") for t in topics)


# --------------------------------------------------------------------------- secrets


async def test_tokens_never_appear_in_logs(
    stack: StackProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("realtime", "websockets", "supasync", "httpx"):
        caplog.set_level(logging.DEBUG, logger=name)
    table = make_table(stack)
    user_token = stack.mint({"role": "authenticated", "sub": str(uuid.uuid4())})
    handler = Collector()
    async with client_for(stack, token=user_token) as rt:
        rt.subscribe(table, handler=handler)
        await rt.wait_live(WAIT)
        await recovered_after(rt, stack, stack.drop_connections)
    secrets = [stack.anon_key, stack.service_role_key, user_token, stack.jwt_secret]
    text = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert "Subscribed" in text or "connected" in text  # the logs were captured at all
    for secret in secrets:
        assert secret not in text
        assert secret.split(".")[-1] not in text  # not even the signature part
