"""Broadcast and presence channels of supasync's client against the local stack (issue #14):
ack'd sends, the outbox across drops (in order, duplicates dropped by id), presence tracked
again after a drop and after a token expiry, handler isolation, the durable outbox."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from supasync import Realtime
from supasync.client.channels import Channel
from supasync.core.broadcast import Broadcast, PresenceChange
from supasync.core.errors import OutboxFull, SendFailed
from supasync.core.status import HandlerFailed
from supasync.devstack.testing import StackProcess

pytestmark = pytest.mark.integration

WAIT = 30.0


def user(stack: StackProcess, sub: str) -> str:
    return stack.mint({"role": "authenticated", "sub": sub, "aud": "authenticated"})


def client(stack: StackProcess, sub: str, **kwargs: Any) -> Realtime:
    return Realtime(stack.url, stack.anon_key, token=user(stack, sub), heartbeat_interval=1.0,
                    heartbeat_timeout=3.0, repair="off", **kwargs)


async def until(cond: Callable[[], bool], event: asyncio.Event, what: str,
                timeout: float = WAIT) -> None:  # noqa: ASYNC109
    """Wait for ``cond()``, re-checked whenever ``event`` is set."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        event.clear()
        if cond():
            return
        left = deadline - loop.time()
        if left <= 0:
            raise AssertionError(f"timed out waiting for {what}")
        try:
            await asyncio.wait_for(event.wait(), left)
        except TimeoutError:
            pass


class Inbox:
    """Collects a channel's broadcasts; ``changed`` is set on each."""

    def __init__(self, ch: Channel) -> None:
        self.items: list[Broadcast] = []
        self.changed = asyncio.Event()
        ch.on_broadcast("*", self.take)

    async def take(self, msg: Broadcast) -> None:
        self.items.append(msg)
        self.changed.set()


async def test_send_returns_after_ack_and_peer_receives_with_id(stack: StackProcess) -> None:
    async with client(stack, "recv-1") as rx, client(stack, "send-1") as tx:
        inbox = Inbox(rx.channel("room-ack"))
        ch = tx.channel("room-ack")
        await rx.wait_live(WAIT)
        await tx.wait_live(WAIT)
        mid = await ch.send("hello", {"text": "hi"})
        assert ch.stats.acked == 1 and ch.pending == 0
        await until(lambda: len(inbox.items) == 1, inbox.changed, "the broadcast")
        got = inbox.items[0]
        assert (got.topic, got.event, got.payload, got.id, got.replayed) == (
            "room-ack", "hello", {"text": "hi"}, mid, False)
        # Not to itself unless asked (config.broadcast.self).
        assert ch.stats.received == 0


async def test_outbox_survives_drops_in_order_without_duplicates(stack: StackProcess) -> None:
    """200 messages while the sender's sockets are dropped again and again: all arrive, in
    order, the re-sent copies dropped by id."""
    total = 200
    async with client(stack, "recv-2") as rx:
        inbox = Inbox(rx.channel("room-outbox"))
        await rx.wait_live(WAIT)
        async with client(stack, "send-2") as tx:
            ch = tx.channel("room-outbox")
            waiters: list[asyncio.Future[str]] = []
            drops = 0
            for batch in range(5):
                # Queue 40, and drop the sender's sockets as soon as the batch's first message
                # was acknowledged: the rest are in flight or waiting when the socket goes.
                waiters += [ch.send_nowait("n", {"n": 40 * batch + i}).waiter for i in range(40)]
                await asyncio.wait_for(asyncio.shield(waiters[40 * batch]), WAIT)
                result = await asyncio.to_thread(stack.drop_connections, "send-2")
                drops += result["dropped"]
            ids = await asyncio.wait_for(asyncio.gather(*waiters), WAIT * 2)
        await until(lambda: len(inbox.items) >= total, inbox.changed, "all 200 messages")
        assert [m.payload["n"] for m in inbox.items] == list(range(total))
        assert [m.id for m in inbox.items] == ids
        assert drops == 5
        assert ch.stats.joins >= 5  # the last drop may come after the last ack


async def test_presence_tracked_again_after_drop_and_expiry(stack: StackProcess) -> None:
    async with client(stack, "observer") as obs, client(stack, "worker") as wk:
        seen = obs.channel("workers")
        changed = asyncio.Event()
        changes: list[PresenceChange] = []

        def on_presence(change: PresenceChange) -> None:
            changes.append(change)
            changed.set()

        seen.on_presence(on_presence)
        ch = wk.channel("workers", presence_key="worker-1")
        await ch.track({"worker": "w1", "jobs": 0})
        await obs.wait_live(WAIT)
        await wk.wait_live(WAIT)

        def visible() -> bool:
            return seen.presence().get("worker-1") == [{"worker": "w1", "jobs": 0}]

        await until(visible, changed, "the worker's presence")
        joins_before = ch.stats.joins
        await asyncio.to_thread(stack.drop_connections, "worker")
        await until(lambda: "worker-1" not in seen.presence(), changed, "the leave")
        await until(visible, changed, "presence again after the drop")
        assert ch.stats.joins > joins_before

        joins_before = ch.stats.joins
        await asyncio.to_thread(stack.expire_tokens)
        await until(lambda: ch.stats.joins > joins_before and visible(), changed,
                    "presence again after the token expiry")
        await until(lambda: seen.live and ch.live, changed, "both rejoined", timeout=WAIT)
        assert any("worker-1" in c.joins for c in changes)
        await ch.untrack()
        await until(lambda: "worker-1" not in seen.presence(), changed, "the untrack")


async def test_failing_handler_does_not_stop_the_others(stack: StackProcess) -> None:
    async with client(stack, "recv-3") as rx, client(stack, "send-3") as tx:
        rch = rx.channel("room-iso")
        good: list[int] = []
        done = asyncio.Event()

        @rch.on_broadcast("n")
        def bad(msg: Broadcast) -> None:
            raise RuntimeError("boom")

        @rch.on_broadcast("N")  # event names compare case-insensitively
        async def ok(msg: Broadcast) -> None:
            good.append(msg.payload["n"])
            done.set()

        failures: list[HandlerFailed] = []

        def record(event: object) -> None:
            if isinstance(event, HandlerFailed):
                failures.append(event)
                done.set()

        rx.status.subscribe(record)
        ch = tx.channel("room-iso")
        await rx.wait_live(WAIT)
        await tx.wait_live(WAIT)
        for i in range(3):
            await ch.send("n", {"n": i})
        await until(lambda: good == [0, 1, 2] and len(failures) == 3, done,
                    "the good handler's messages and the bad one's failures")
        assert list(rch.stats.handler_failures.values()) == [3]
        assert [f.subscription for f in failures] == ["channel:room-iso"] * 3


async def test_iterator_and_outbox_limits(stack: StackProcess) -> None:
    async with client(stack, "recv-4") as rx, client(stack, "send-4") as tx:
        rch = rx.channel("room-iter")
        ch = tx.channel("room-iter", outbox_size=2)
        await rx.wait_live(WAIT)
        await tx.wait_live(WAIT)

        async def first_two() -> list[Any]:
            out = []
            async for msg in rch.broadcasts("keep"):
                out.append(msg.payload)
                if len(out) == 2:
                    return out
            return out

        reader = asyncio.create_task(first_two())
        await asyncio.sleep(0)  # let the iterator register before anything is sent
        await ch.send("skip", {"x": 0})
        await ch.send("keep", {"x": 1})
        await ch.send("keep", {"x": 2})
        assert await asyncio.wait_for(reader, WAIT) == [{"x": 1}, {"x": 2}]
        # A payload that is not JSON fails for good (it is not retried for ever), and the
        # channel goes on sending.
        with pytest.raises(SendFailed, match="cannot be sent"):
            await ch.send("bad", {"o": object()})
        await ch.send("ok", {"x": 3})
        ch.send_nowait("a", {})
        ch.send_nowait("b", {})
        with pytest.raises(OutboxFull, match="outbox of channel 'room-iter' is full"):
            ch.send_nowait("c", {})
    # Closing a client fails what is still waiting (nothing vanishes quietly).
    tx2 = client(stack, "send-5")
    queued = tx2.channel("never-started").send_nowait("x", {})
    await tx2.aclose()
    with pytest.raises(SendFailed, match="closed first"):
        await queued.waiter


async def test_durable_outbox_sends_what_a_closed_client_left(
    stack: StackProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    cache = tmp_path / "app.db"
    # A client that never connects (a port nothing listens on) queues two messages and closes.
    offline = Realtime("http://127.0.0.1:9", stack.anon_key, cache=str(cache), repair="off")
    await offline.start()
    ch = offline.channel("room-durable")
    first = ch.send_nowait("n", {"n": 1})
    ch.send_nowait("n", {"n": 2})
    with caplog.at_level(logging.INFO, logger="supasync.client.channels"):
        await offline.aclose()
    assert "stay in the durable outbox" in caplog.text
    with pytest.raises(SendFailed, match="kept in the durable outbox"):
        await first.waiter

    async with client(stack, "recv-6") as rx:
        inbox = Inbox(rx.channel("room-durable"))
        await rx.wait_live(WAIT)
        async with client(stack, "send-6", cache=str(cache)) as tx:
            again = tx.channel("room-durable")
            assert again.pending == 2
            await tx.wait_live(WAIT)
            await until(lambda: len(inbox.items) == 2, inbox.changed, "the stored messages")
            assert [m.payload for m in inbox.items] == [{"n": 1}, {"n": 2}]
            assert inbox.items[0].id == first.id


def test_sync_facade_channels(stack: StackProcess) -> None:
    """The same API from threads: blocking send (acked), sync handlers on the handler thread,
    an iterator, presence."""
    import threading

    from supasync.client.sync import SyncRealtime

    def sync_client(sub: str) -> SyncRealtime:
        return SyncRealtime(stack.url, stack.anon_key, token=user(stack, sub), repair="off")

    with sync_client("sync-rx") as rx, sync_client("sync-tx") as tx:
        got: list[Broadcast] = []
        arrived = threading.Event()

        def on_msg(msg: Broadcast) -> None:
            got.append(msg)
            arrived.set()

        rch = rx.channel("room-sync")
        rch.on_broadcast("ping", on_msg)
        present = threading.Event()

        def on_presence(change: PresenceChange) -> None:
            if change.state.get("sync-worker") == [{"role": "worker"}]:
                present.set()

        rch.on_presence(on_presence)
        stream = rch.broadcasts("ping", timeout=WAIT)
        ch = tx.channel("room-sync", presence_key="sync-worker")
        ch.track({"role": "worker"})
        rx.wait_live(WAIT)
        tx.wait_live(WAIT)
        ids = [ch.send("ping", {"i": i}) for i in range(3)]
        assert [next(stream).id for _ in range(3)] == ids
        assert arrived.wait(WAIT)
        assert present.wait(WAIT)
        assert rch.presence().get("sync-worker") == [{"role": "worker"}]
        assert ch.pending == 0 and ch.stats.acked == 3
