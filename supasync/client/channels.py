"""Broadcast and presence channels on the supervised connection.

Usage::

    async with Realtime(url, anon_key, token=jwt) as rt:
        ch = rt.channel("jobs")                     # private=True: RLS on realtime.messages

        @ch.on_broadcast("progress")                # sync or async; "*" for every event
        def show(msg: Broadcast) -> None: ...

        await ch.track({"worker": "w1"})            # tracked again after every rejoin
        await ch.send("progress", {"job": 7, "pct": 40})   # returns once the server acked it
        async for msg in ch.broadcasts("done"): ...

Theory of operation
-------------------
realtime-py 2.34.1 alone loses broadcast and presence on every reconnect (issue #14: an
``ack: True`` send returns ``None``; after a drop a peer's presence is ``[]`` for good; after a
token expiry the channel stays ``CLOSED`` and the next broadcast is lost without an error). A
:class:`Channel` is therefore a member of the same :class:`~supasync.client.connection.Connection`
as the subscriptions (:class:`~supasync.client.connection.ChannelEndpoint`): the connection joins
it on a shard, rebuilds it with the latest token after a drop or an expiry, backs off, and
reports a permanent refusal as a typed error. What the channel adds:

* **Ack'd sends and the outbox.** Every ``send`` goes into an :class:`~supasync.core.broadcast.
  Outbox` (bounded: :class:`~supasync.core.errors.OutboxFull` when full, never a silent drop)
  and one sender task pushes the head, waits for the server's ack (``config.broadcast.ack``,
  realtime-protocol.md §9.1), then takes the next. While the channel is not joined it waits;
  after the rejoin it sends the rest in order. A message whose ack did not come (the socket went,
  or the ack timed out) is sent again with the **same id**, so receivers drop the copy (supasync
  receivers do by default, :class:`~supasync.core.broadcast.SeenIds`). With a cache file the
  outbox is also written to the file (:mod:`supasync.store.outbox`): messages a stopped process
  left behind go out when it opens the channel again. A message the server refuses for good (an
  error reply, or ``max_attempts`` ack timeouts on a joined channel - what a private channel
  without write permission looks like, §9.1) fails its ``send`` with
  :class:`~supasync.core.errors.SendFailed`; on ``close`` the unsent ones fail the same way
  (or stay in the durable outbox, said in the log).
* **Presence.** The channel joins with presence enabled and a presence key that stays the same
  for the channel's life, so peers see the same key come back after a reconnect. ``track(meta)``
  is remembered and pushed again after every join (a rejoin after a drop or a token expiry
  starts a new channel process on the server, which has forgotten it). The state is kept in a
  :class:`~supasync.core.broadcast.PresenceState` across rejoins; handlers get only real joins
  and leaves.
* **Stale frames.** A channel keeps its real topic on every rejoin (peers know it by name), so
  an old join's ``phx_close`` could reach the new channel (realtime-py routes by topic only). The
  realtime-py channel used here (:class:`GuardedChannel`) ignores ``phx_close``/``phx_error``
  whose ``ref`` is not its own join's; and a leave waits for the server's leave reply before the
  topic is joined again (anything the server sent for the old join comes before it).
* **Handlers** run in their own tasks with their own bounded queues (a slow or failing handler
  does not hold up the others or the socket); a failure is logged and published as
  :class:`~supasync.core.status.HandlerFailed`, and delivery goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from realtime import AsyncRealtimeChannel, AsyncRealtimeClient
from realtime.message import (
    ChannelCloseMessage,
    ChannelErrorMessage,
    PresenceDiffMessage,
    PresenceStateMessage,
    ServerMessage,
)
from realtime.types import RealtimeAcknowledgementStatus

from ..core.broadcast import (
    Broadcast,
    Outbox,
    OutgoingMessage,
    PresenceChange,
    PresenceState,
    SeenIds,
    parse_broadcast,
    validate_event,
    validate_topic,
)
from ..core.errors import (
    ChannelUnauthorized,
    ConfigError,
    SendFailed,
    SubscriptionError,
    Unauthorized,
)
from ..core.status import HandlerFailed
from ..core.waiting import wait_event

if TYPE_CHECKING:
    from ..store.outbox import DurableOutbox

__all__ = ["BroadcastHandler", "Channel", "ChannelStats", "GuardedChannel", "PresenceHandler",
           "leave_channel"]

logger = logging.getLogger("supasync.client.channels")

BroadcastHandler = Callable[[Broadcast], Awaitable[None] | None]
PresenceHandler = Callable[[PresenceChange], Awaitable[None] | None]

#: The server's payload limit (3000 KB, realtime-protocol.md §10); bigger sends fail at once
#: instead of timing out (an oversize push gets a reply realtime-py cannot parse, §9.1).
MAX_PAYLOAD_BYTES = 3000 * 1024
#: How far before a gap a rejoin's replay starts (clock skew between client and database).
REPLAY_MARGIN_S = 5.0


@dataclass
class ChannelStats:
    """Counters of one channel (read them any time)."""

    sent: int = 0  # pushes, including re-sends
    acked: int = 0
    failed: int = 0
    received: int = 0
    duplicates: int = 0  # received copies dropped by id
    dropped_overflow: int = 0  # deliveries a full handler/iterator queue could not take
    joins: int = 0
    handler_failures: dict[str, int] = field(default_factory=dict)


class GuardedChannel(AsyncRealtimeChannel):
    """realtime-py's channel, ignoring an older join's close/error frames and handing presence
    frames to supasync's state (see the module docstring)."""

    on_presence_state: Callable[[Mapping[str, Any]], None] = staticmethod(lambda raw: None)
    on_presence_diff: Callable[[Mapping[str, Any]], None] = staticmethod(lambda raw: None)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Set once the channel is closed (a phx_close of this join, or the leave's reply).
        self.closed_event = asyncio.Event()

    def on_close(self) -> None:
        try:
            super().on_close()
        finally:
            self.closed_event.set()

    def _handle_message(self, message: ServerMessage) -> None:
        if isinstance(message, ChannelCloseMessage | ChannelErrorMessage):
            mine = self.join_push.ref
            if message.ref is not None and mine is not None and message.ref != mine:
                logger.debug("%s: ignoring %s of an earlier join", self.topic, message.event)
                return
        if isinstance(message, PresenceStateMessage):
            self.on_presence_state(message.payload)
            return
        if isinstance(message, PresenceDiffMessage):
            self.on_presence_diff(message.payload)
            return
        super()._handle_message(message)


_END = object()
T = TypeVar("T")


class _Consumer(Generic[T]):
    """A handler or an iterator with its own bounded queue."""

    def __init__(self, size: int, accept: Callable[[T], bool],
                 handler: Callable[[T], Awaitable[None] | None] | None = None) -> None:
        self.queue: asyncio.Queue[object] = asyncio.Queue(maxsize=size)
        self.accept = accept
        self.handler = handler
        name = getattr(handler, "__qualname__", None) or repr(handler)
        self.name = f"{getattr(handler, '__module__', '')}.{name}" if handler else "iterator"
        self.task: asyncio.Task[None] | None = None
        self.warned = False


class Channel:
    """One broadcast/presence channel of a :class:`~supasync.client.realtime.Realtime` client.

    Made by :meth:`Realtime.channel <supasync.client.realtime.Realtime.channel>`; see the module
    docstring for the guarantees. Attributes: ``topic``, ``private``, ``name`` (its name in the
    status stream, ``channel:<topic>``), ``presence_key``, ``stats``, ``error`` (the typed error
    once the server refused the channel for good).
    """

    def __init__(
        self,
        topic: str,
        *,
        private: bool = False,
        name: str | None = None,
        receive_own: bool = False,
        presence_key: str | None = None,
        outbox_size: int = 1000,
        send_timeout: float = 10.0,
        max_attempts: int = 5,
        queue_size: int = 1000,
        dedupe: bool = True,
        sync_handlers: str = "thread",
        durable: DurableOutbox | None = None,
        replay_since: float | None = None,
        replay_limit: int | None = None,
    ) -> None:
        self.topic = validate_topic(topic)
        self.private = bool(private)
        if replay_since is not None and not self.private:
            raise ConfigError("replay works on private channels only (the server refuses it "
                              "for public ones)", key="replay_since", fix="pass private=True")
        if replay_limit is not None and not 1 <= replay_limit <= 25:
            raise ConfigError("replay_limit must be from 1 to 25 (the server's maximum)",
                              key="replay_limit", value=str(replay_limit))
        #: Unix time (seconds) the next join asks the server to replay from (§9.4); moved to
        #: the start of each gap once joined, so a rejoin replays what the gap may have missed.
        self.replay_since = replay_since
        self.replay_limit = replay_limit
        self.name = name or f"channel:{topic}"
        self.receive_own = receive_own
        self.presence_key = presence_key or str(uuid.uuid4())
        if send_timeout <= 0 or max_attempts < 1:
            raise ConfigError("send_timeout must be > 0 and max_attempts >= 1")
        self.send_timeout = send_timeout
        self.max_attempts = max_attempts
        self.queue_size = queue_size
        self.sync_handlers = sync_handlers
        self.stats = ChannelStats()
        self._outbox = Outbox(self.topic, outbox_size)
        self._durable = durable
        self._seen = SeenIds() if dedupe else None
        self._presence = PresenceState()
        self._tracked: dict[str, Any] | None = None
        self._consumers: list[_Consumer[Any]] = []
        self._report: Callable[[object], None] = lambda event: None
        self._rt: GuardedChannel | None = None
        self._live = False
        self._live_event = asyncio.Event()
        self._wake = asyncio.Event()
        self._inflight: asyncio.Future[tuple[str, Any]] | None = None
        self._pumping = False
        #: A push failed because the socket went: nothing is pushed until the next join.
        self._stalled = False
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._closed = False
        self._error: SubscriptionError | None = None
        self._remove: Callable[[Channel], Awaitable[None]] | None = None
        if durable is not None:
            for stored in durable.load(self.topic, self.private):
                self._outbox.put(stored.event, stored.payload, mid=stored.id, seq=stored.seq)
            if len(self._outbox):
                logger.info("channel %r: %d messages from the durable outbox will be sent",
                            self.name, len(self._outbox))

    def __repr__(self) -> str:
        state = "closed" if self._closed else "live" if self._live else "not joined"
        return (f"<Channel {self.topic!r}{' private' if self.private else ''} {state}, "
                f"{len(self._outbox)} waiting>")

    # -- state ---------------------------------------------------------------------------
    @property
    def live(self) -> bool:
        """Joined right now (sends go out at once)."""
        return self._live

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def pending(self) -> int:
        """Messages in the outbox (not yet acknowledged)."""
        return len(self._outbox)

    @property
    def error(self) -> SubscriptionError | None:
        return self._error

    @error.setter
    def error(self, value: SubscriptionError | None) -> None:
        # Set by the connection when the server refused the channel for good.
        if isinstance(value, Unauthorized) and not isinstance(value, ChannelUnauthorized) \
                and self.private:
            value = ChannelUnauthorized(value.subscription, value.reason, topic=self.topic)
        self._error = value
        if value is not None:
            self._fail_all(value)
            self._live_event.set()  # wake wait_live so it raises

    async def wait_live(self, timeout: float | None = 30.0) -> None:  # noqa: ASYNC109
        """Wait until the channel is joined.

        Raises:
            ChannelUnauthorized / SubscriptionError: the server refused the channel for good.
            TimeoutError: not joined within ``timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not self._live:
            if self._error is not None:
                raise self._error
            if self._closed:
                raise RuntimeError(f"channel {self.topic!r} is closed")
            self._live_event.clear()
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                raise TimeoutError(f"channel {self.topic!r} not joined within {timeout} s")
            await wait_event(self._live_event, left)
        if self._error is not None:
            raise self._error

    # -- receiving ---------------------------------------------------------------------------
    def on_broadcast(self, event: str, handler: BroadcastHandler | None = None) -> Any:
        """Call ``handler(msg)`` for each broadcast whose event is ``event`` (``"*"``: all;
        compared case-insensitively, as both official clients do). Sync handlers run in a
        thread (or inline with ``sync_handlers="inline"``), async ones on the loop. Without
        ``handler`` it is a decorator."""
        validate_event(event)
        if handler is None:
            def decorator(fn: BroadcastHandler) -> BroadcastHandler:
                self.on_broadcast(event, fn)
                return fn
            return decorator
        if not callable(handler):
            raise ConfigError(f"a handler must be callable, not {type(handler).__name__}")
        self._add_consumer(_Consumer(self.queue_size, _event_matcher(event), handler))
        return handler

    def on_presence(self, handler: PresenceHandler | None = None) -> Any:
        """Call ``handler(change)`` on each presence change (a
        :class:`~supasync.core.broadcast.PresenceChange`: ``joins``, ``leaves``, ``state``).
        Usable as a decorator."""
        if handler is None:
            def decorator(fn: PresenceHandler) -> PresenceHandler:
                self.on_presence(fn)
                return fn
            return decorator
        if not callable(handler):
            raise ConfigError(f"a handler must be callable, not {type(handler).__name__}")
        self._add_consumer(
            _Consumer(self.queue_size, lambda item: isinstance(item, PresenceChange), handler))
        return handler

    async def broadcasts(self, event: str | None = None) -> AsyncIterator[Broadcast]:
        """Iterate the broadcasts received from now on (``event``: only that one); ends when
        the channel closes."""
        match = _event_matcher(event or "*")
        consumer: _Consumer[Any] = _Consumer(self.queue_size, match)
        self._consumers.append(consumer)
        try:
            while True:
                item = await consumer.queue.get()
                if item is _END:
                    return
                assert isinstance(item, Broadcast)
                yield item
        finally:
            with contextlib.suppress(ValueError):
                self._consumers.remove(consumer)

    def presence(self) -> dict[str, list[dict[str, Any]]]:
        """The current presence state: ``{key: [meta, ...]}`` (as last known while down)."""
        return self._presence.snapshot()

    # -- sending -----------------------------------------------------------------------------
    async def send(self, event: str, payload: Mapping[str, Any] | None = None) -> str:
        """Send a broadcast; return its id once the server acknowledged it.

        While the channel is not joined the message waits in the outbox and goes out, in
        order, after the (re)join. Cancelling the call does not withdraw a queued message.

        Raises:
            OutboxFull: ``outbox_size`` messages are waiting already (nothing was queued).
            SendFailed: the server refused the message for good, or the client closed first.
            ChannelUnauthorized / SubscriptionError: the channel was refused for good.
            ConfigError: bad event or payload (not JSON, over 3000 KB).
        """
        msg = self._queue(event, payload, wake=False)
        if not self._pumping and self._ready():
            await self._pump(msg)
        else:
            self._wake.set()
        waiter = msg.waiter
        if waiter.done():  # the usual case after pumping: no shield to allocate
            return waiter.result()  # type: ignore[no-any-return]
        waiter.add_done_callback(_consume_exception)  # in case this caller is cancelled
        return await asyncio.shield(waiter)

    def send_nowait(self, event: str,
                    payload: Mapping[str, Any] | None = None) -> OutgoingMessage:
        """Queue a broadcast and return at once: the returned message's ``waiter`` (a future)
        gives the id once acknowledged, or the error. Raises as :meth:`send` for bad input, a
        full outbox or a failed channel."""
        msg = self._queue(event, payload, wake=True)
        msg.waiter.add_done_callback(_consume_exception)
        return msg

    def _queue(self, event: str, payload: Mapping[str, Any] | None, *,
               wake: bool) -> OutgoingMessage:
        validate_event(event)
        if event == "*":
            raise ConfigError("'*' is for listening; send a named event", key="event")
        if self._error is not None:
            raise self._error
        if self._closed:
            raise SendFailed(self.topic, event, "-", "the channel is closed")
        body = dict(payload or {})
        # The exact size (a JSON encoding) only for payloads that may be near the limit: a
        # rough walk is several times cheaper on the usual small message (bench/broadcast.py).
        # What cannot be serialised fails at push time, for good (see _push).
        size = _rough_size(body, MAX_PAYLOAD_BYTES // 4)
        if size > MAX_PAYLOAD_BYTES // 4:
            try:
                size = len(json.dumps(body, separators=(",", ":")))
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"a broadcast payload must be JSON: {exc}",
                                  key="payload") from exc
        if size > MAX_PAYLOAD_BYTES:
            raise ConfigError(f"the payload is {size} bytes; the server takes at most "
                              f"{MAX_PAYLOAD_BYTES}", key="payload", fix="send less per message")
        msg = self._outbox.put(event, body)
        msg.waiter = asyncio.get_running_loop().create_future()
        if self._durable is not None:
            self._durable.add(self.topic, self.private, msg.seq, msg.id, event, body)
        if wake:
            self._wake.set()
        return msg

    # -- presence ------------------------------------------------------------------------
    async def track(self, meta: Mapping[str, Any]) -> None:
        """Be present on this channel with ``meta`` (a JSON object). Remembered: tracked again
        after every rejoin (drop, token expiry). If the channel is joined this waits for the
        server's ok; otherwise it returns and the join tracks it."""
        if not isinstance(meta, Mapping):
            raise ConfigError("presence meta must be a mapping (a JSON object)", key="meta")
        self._tracked = dict(meta)
        if self._live and self._rt is not None:
            await self._push_presence(self._rt, "track", self._tracked)

    async def untrack(self) -> None:
        """Stop being present (and stop re-tracking after rejoins)."""
        self._tracked = None
        if self._live and self._rt is not None:
            await self._push_presence(self._rt, "untrack", {})

    async def close(self) -> None:
        """Leave the channel and remove it from its client (unsent messages fail, or stay in
        the durable outbox)."""
        if self._remove is not None:
            await self._remove(self)
        else:
            await self._close()

    # -- the connection's side (ChannelEndpoint) ---------------------------------------------
    repairs_gaps = False

    async def _start(self, info: object, report: Callable[[object], None],
                     on_overflow: Callable[[], None]) -> None:
        if self._started:
            return
        self._started = True
        self._report = report
        for consumer in self._consumers:
            self._start_consumer(consumer)
        self._tasks.append(asyncio.create_task(self._sender(), name=f"supasync-send-{self.name}"))

    def _open_channel(self, client: AsyncRealtimeClient) -> AsyncRealtimeChannel:
        broadcast: dict[str, Any] = {"ack": True, "self": self.receive_own}
        if self.replay_since is not None:
            replay: dict[str, Any] = {"since": int(self.replay_since * 1000)}
            if self.replay_limit is not None:
                replay["limit"] = self.replay_limit
            broadcast["replay"] = replay
        params: dict[str, Any] = {"config": {
            "broadcast": broadcast,
            "presence": {"key": self.presence_key, "enabled": True},
            "private": self.private,
        }}
        rt = GuardedChannel(client, f"realtime:{self.topic}",
                             params)
        client.channels[rt.topic] = rt
        rt.on_broadcast("*", lambda raw: self._on_broadcast(rt, raw))
        rt.on_presence_state = lambda raw: self._on_presence(rt, raw, state=True)
        rt.on_presence_diff = lambda raw: self._on_presence(rt, raw, state=False)
        self._rt = rt
        self.stats.joins += 1
        return rt

    async def _leave_channel(self, client: AsyncRealtimeClient,
                             channel: AsyncRealtimeChannel) -> None:
        await leave_channel(client, channel, self.send_timeout)

    def _mark_gap(self, reason: str) -> None:
        if self.replay_since is not None and self._live:
            # Replay from a little before the gap (clocks differ; copies are dropped by id).
            self.replay_since = time.time() - REPLAY_MARGIN_S
        self._live = False
        self._rt = None
        inflight, self._inflight = self._inflight, None
        if inflight is not None and not inflight.done():
            inflight.set_result(("lost", reason))

    def _mark_subscribed(self) -> None:
        self._live = True
        self._stalled = False
        self._live_event.set()
        self._wake.set()
        rt = self._rt
        if self._tracked is not None and rt is not None:
            self._spawn(self._retrack(rt))

    async def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._live = False
        self._live_event.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._durable is not None and len(self._outbox):
            logger.info("channel %r closed with %d unsent messages; they stay in the durable "
                        "outbox (%s) and go out when the channel is opened again",
                        self.name, len(self._outbox), self._durable.path)
            for msg in self._outbox.drain():
                _settle(msg, SendFailed(self.topic, msg.event, msg.id,
                                        "the client closed first; kept in the durable outbox"))
        else:
            self._fail_all(None)
        for consumer in list(self._consumers):
            _force_put(consumer.queue, _END)
        for consumer in self._consumers:
            if consumer.task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await consumer.task

    # -- internals -------------------------------------------------------------------------
    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.append(task)
        task.add_done_callback(self._forget_task)

    def _forget_task(self, task: asyncio.Task[None]) -> None:
        if task in self._tasks:
            self._tasks.remove(task)

    def _fail_all(self, error: BaseException | None) -> None:
        for msg in self._outbox.drain():
            self.stats.failed += 1
            if self._durable is not None:
                self._durable.remove(self.topic, self.private, msg.seq)
            reason = str(error) if error is not None else "the client closed first"
            failure = error if error is not None else SendFailed(
                self.topic, msg.event, msg.id, reason)
            if msg.waiter is None:  # loaded from the durable outbox: no caller to tell
                logger.error("broadcast %r (%s) on %r not sent: %s", msg.event, msg.id,
                             self.topic, reason)
            _settle(msg, failure)

    def _ready(self) -> bool:
        return (self._outbox.head is not None and self._live and self._rt is not None
                and not self._stalled)

    async def _sender(self) -> None:
        """The background pump: drains the outbox whenever the channel is joined and no
        caller's :meth:`send` is pumping already."""
        while True:
            if self._pumping or not self._ready():
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._pump(None)

    async def _pump(self, target: OutgoingMessage | None) -> None:
        """Send heads one at a time (each waiting for its ack) until ``target`` is settled, or
        (None) until the outbox is empty or the channel not joined. One pump at a time: a
        caller of :meth:`send` pumps itself when nothing else does (no hop through the
        background task per message), and hands over to the background task when done."""
        self._pumping = True
        try:
            while self._ready() and not (target is not None and target.waiter.done()):
                await self._send_head()
        finally:
            self._pumping = False
            if self._ready():
                self._wake.set()

    async def _send_head(self) -> None:
        msg, rt = self._outbox.head, self._rt
        assert msg is not None and rt is not None
        outcome, detail = await self._push(rt, msg)
        if outcome == "lost" and self._rt is rt:
            self._stalled = True  # the connection is about to report the loss; wait for it
        if outcome == "ok":
            self.stats.acked += 1
            self._outbox.acked(msg)
            if self._durable is not None:
                self._durable.remove(self.topic, self.private, msg.seq)
            _settle(msg, None, msg.id)
        elif outcome == "error" or (outcome == "timeout" and msg.attempts >= self.max_attempts
                                    and self._live):
            reason = (f"the server answered {detail!r}" if outcome == "error" else
                      f"no ack after {msg.attempts} attempts of {self.send_timeout:g} s")
            if self.private and outcome == "timeout":
                reason += ("; on a private channel this is what a missing write policy "
                           "looks like (the server drops the message without an answer): "
                           "add an RLS policy on realtime.messages `for insert ... with "
                           f"check (realtime.topic() = '{self.topic}')`")
            error = SendFailed(self.topic, msg.event, msg.id, reason)
            logger.error("%s", error)
            self.stats.failed += 1
            self._outbox.fail(msg)
            if self._durable is not None:
                self._durable.remove(self.topic, self.private, msg.seq)
            _settle(msg, error)
        # "lost" / an early timeout: the head is sent again once joined (same id).

    async def _push(self, rt: GuardedChannel, msg: OutgoingMessage) -> tuple[str, Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[str, Any]] = loop.create_future()
        self._inflight = fut

        def reply(kind: str) -> Callable[..., None]:
            def callback(*args: object) -> None:
                if not fut.done():
                    fut.set_result((kind, args[0] if args else None))
            return callback

        msg.attempts += 1
        self.stats.sent += 1
        try:
            push = await rt.push("broadcast", msg.wire_payload(),
                                 timeout=self.send_timeout)  # type: ignore[arg-type]  # realtime-py sleeps a float fine
            push.receive(RealtimeAcknowledgementStatus.Ok, reply("ok")).receive(
                RealtimeAcknowledgementStatus.Error, reply("error")).receive(
                RealtimeAcknowledgementStatus.Timeout, reply("timeout"))
        except asyncio.CancelledError:
            raise
        except (TypeError, ValueError) as exc:  # the payload cannot be serialised: for good
            if not fut.done():
                fut.set_result(("error", f"the payload cannot be sent: {exc}"))
        except Exception as exc:  # the socket went under us: wait for the rejoin
            logger.debug("channel %r: push failed: %s", self.name, exc)
            if not fut.done():
                fut.set_result(("lost", str(exc)))
        try:
            return await fut
        finally:
            if self._inflight is fut:
                self._inflight = None

    async def _push_presence(self, rt: GuardedChannel, event: str,
                             payload: dict[str, Any]) -> None:
        fut: asyncio.Future[tuple[str, Any]] = asyncio.get_running_loop().create_future()

        def reply(kind: str) -> Callable[..., None]:
            def callback(*args: object) -> None:
                if not fut.done():
                    fut.set_result((kind, args[0] if args else None))
            return callback

        push = await rt.push("presence", {"type": "presence", "event": event,
                                          "payload": payload},
                             timeout=self.send_timeout)  # type: ignore[arg-type]  # realtime-py sleeps a float fine
        push.receive(RealtimeAcknowledgementStatus.Ok, reply("ok")).receive(
            RealtimeAcknowledgementStatus.Error, reply("error")).receive(
            RealtimeAcknowledgementStatus.Timeout, reply("timeout"))
        kind, detail = await fut
        if kind == "error":
            raise SendFailed(self.topic, f"presence {event}", self.presence_key,
                             f"the server answered {detail!r}")
        if kind == "timeout":
            raise TimeoutError(f"presence {event} on {self.topic!r}: no answer within "
                               f"{self.send_timeout:g} s (it is tracked again on the next join)")

    async def _retrack(self, rt: GuardedChannel) -> None:
        meta = self._tracked
        if meta is None or self._rt is not rt:
            return
        try:
            await self._push_presence(rt, "track", meta)
            logger.debug("channel %r: presence tracked again", self.name)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("channel %r: re-tracking presence failed: %s", self.name, exc)

    def _on_broadcast(self, rt: GuardedChannel, raw: Mapping[str, Any]) -> None:
        # Runs inside realtime-py's listen task: must never raise.
        try:
            msg = parse_broadcast(self.topic, raw)
            if msg is None:
                return
            self.stats.received += 1
            if self._seen is not None and self._seen.seen(msg.id):
                self.stats.duplicates += 1
                return
            self._deliver(msg)
        except Exception:
            logger.exception("channel %r: a broadcast could not be delivered", self.name)

    def _on_presence(self, rt: GuardedChannel, raw: Mapping[str, Any], *, state: bool) -> None:
        try:
            if self._rt is not rt:
                return
            change = (self._presence.apply_state(raw) if state
                      else self._presence.apply_diff(raw))
            if not change.empty:
                self._deliver(change)
        except Exception:
            logger.exception("channel %r: a presence update could not be applied", self.name)

    def _deliver(self, item: object) -> None:
        for consumer in self._consumers:
            if not consumer.accept(item):
                continue
            try:
                consumer.queue.put_nowait(item)
            except asyncio.QueueFull:
                self.stats.dropped_overflow += 1
                if not consumer.warned:
                    consumer.warned = True
                    logger.warning("channel %r: %s is %d messages behind; dropping what it "
                                   "cannot take (speed it up or raise queue_size)",
                                   self.name, consumer.name, self.queue_size)

    def _add_consumer(self, consumer: _Consumer[Any]) -> None:
        self._consumers.append(consumer)
        if self._started:
            self._start_consumer(consumer)

    def _start_consumer(self, consumer: _Consumer[Any]) -> None:
        if consumer.handler is not None and consumer.task is None:
            consumer.task = asyncio.create_task(self._run_handler(consumer),
                                                name=f"supasync-handler-{consumer.name}")

    async def _run_handler(self, consumer: _Consumer[Any]) -> None:
        handler = consumer.handler
        assert handler is not None
        is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            getattr(handler, "__call__", None))  # noqa: B004 - async callable objects
        threaded = not is_async and self.sync_handlers == "thread"
        while True:
            item = await consumer.queue.get()
            if item is _END:
                return
            try:
                if threaded:
                    result = await asyncio.to_thread(handler, item)
                else:
                    result = handler(item)
                if inspect.isawaitable(result):
                    await result
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._handler_failed(consumer, item, exc)

    def _handler_failed(self, consumer: _Consumer[Any], item: object, exc: Exception) -> None:
        count = self.stats.handler_failures.get(consumer.name, 0) + 1
        self.stats.handler_failures[consumer.name] = count
        key = (item.event, item.id) if isinstance(item, Broadcast) else ("presence",)
        logger.error("handler %s of channel %r failed on %r (%d failures so far); delivery "
                     "continues", consumer.name, self.name, key, count, exc_info=exc)
        try:
            self._report(HandlerFailed(self.name, consumer.name, exc, key, count))
        except Exception:
            logger.exception("reporting a handler failure failed")


async def leave_channel(client: AsyncRealtimeClient, channel: AsyncRealtimeChannel,
                        timeout: float) -> None:  # noqa: ASYNC109 - a bound, not a cancel scope
    """Leave ``channel`` and wait (up to ``timeout``) for the server's leave reply: whatever
    the server sent for this join before it has then been read, so the topic can be joined
    again without an old frame reaching the new channel (the module docstring)."""
    channel.rejoin_timer.reset()
    if client.is_connected and client.channels.get(channel.topic) is channel \
            and not channel.is_closed:
        done = asyncio.get_running_loop().create_future()

        def settle(*_: object) -> None:
            if not done.done():
                done.set_result(None)

        try:
            push = await channel._leave()
            push.receive(RealtimeAcknowledgementStatus.Ok, settle).receive(
                RealtimeAcknowledgementStatus.Error, settle).receive(
                RealtimeAcknowledgementStatus.Timeout, settle)
            if isinstance(channel, GuardedChannel):
                # The server may have closed the channel itself just before (a token expiry:
                # system error, then phx_close): its phx_close then ends the wait, as the
                # reply to our leave - addressed to a topic realtime-py has forgotten - would
                # never be seen.
                closed = asyncio.ensure_future(channel.closed_event.wait())
                try:
                    await asyncio.wait({done, closed}, timeout=timeout,
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    closed.cancel()
            else:
                await asyncio.wait_for(done, timeout)
        except Exception as exc:
            logger.debug("leaving %s failed: %s", channel.topic, exc)
    channel.join_push.destroy()
    client._remove_channel(channel)


def _rough_size(value: object, limit: int) -> int:
    """A cheap over-estimate of ``value``'s JSON size, stopping once above ``limit``."""
    total = 0
    stack = [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, str | bytes):
            total += len(item) * 6 + 2  # \uXXXX escapes at worst
        elif isinstance(item, Mapping):
            total += 2 + 2 * len(item)
            for key, val in item.items():
                stack.append(key)
                stack.append(val)
        elif isinstance(item, list | tuple):
            total += 2 + len(item)
            stack.extend(item)
        else:
            total += 24  # numbers, booleans, null
    return total


def _event_matcher(event: str) -> Callable[[object], bool]:
    wanted = event.lower()

    def accept(item: object) -> bool:
        return isinstance(item, Broadcast) and (wanted == "*" or item.event.lower() == wanted)

    return accept


def _settle(msg: OutgoingMessage, error: BaseException | None, result: Any = None) -> None:
    waiter = msg.waiter
    if waiter is None or waiter.done():
        return
    if error is not None:
        waiter.set_exception(error)
    else:
        waiter.set_result(result)


def _consume_exception(fut: asyncio.Future[Any]) -> None:
    # send_nowait callers may never look at the future: its error is logged where it happens,
    # so asyncio must not report it again as "never retrieved".
    if not fut.cancelled():
        fut.exception()


def _force_put(queue: asyncio.Queue[object], item: object) -> None:
    while True:
        try:
            queue.put_nowait(item)
            return
        except asyncio.QueueFull:
            queue.get_nowait()

