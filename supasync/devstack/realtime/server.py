"""The Realtime server's socket side: the websocket endpoint, one :class:`Connection` per
socket, channels, broadcast, presence, tokens and the fault controls.

Contract:

* ``RealtimeServer(ctx).add_routes(app)`` mounts ``/realtime/v1/websocket`` and
  ``/socket/websocket`` (realtime-protocol.md §1.1) plus the REST broadcast endpoints;
  ``await start()`` starts the change feed (``.feed.ChangeFeed``, optional while it is
  being written), ``await stop()`` closes every socket (1001) and stops the feed.
* Upgrade: ``vsn`` picks the serializer (other values → HTTP 403, empty body); the
  ``apikey`` (query) or ``x-api-key`` (header, wins) must verify, else, after
  ``connect_error_backoff_ms``, HTTP 401 ``{"error": text}`` (§1.3).
* Per socket, frames are handled one at a time in arrival order (a join, including its
  error back-off, holds up the frames behind it, as on the real server, §3.3). Every
  outgoing frame goes through one queue drained by one writer task, so ``set_latency``
  delays frames without reordering them and a slow client only fills its own queue.
* Fault controls: ``drop_connections`` (abort TCP, no close frame), ``close_connections``
  (clean close 1012, "service restart"), ``expire_tokens``, ``set_latency(ms)``,
  ``pause_changes`` / ``resume_changes`` (delegated to the feed). Each returns a dict.

The decisions live in the sans-I/O modules (:mod:`.protocol`, :mod:`.channel`,
:mod:`.presence`, :mod:`.broadcast`); this module only moves bytes, awaits and keeps timers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Final, Protocol

from aiohttp import WSCloseCode, WSMsgType, web

from ..keys import TokenError, verify
from .broadcast import MAX_PAYLOAD_BYTES, BroadcastApi, Hub
from .channel import (
    TOPIC_PREFIX,
    Channel,
    JoinError,
    PgState,
    check_join,
    expiry_delay,
    parse_join_payload,
    sub_topic_of,
)
from .limits import JOINS_CODE, JOINS_TEXT, TenantLimits
from .messages import ChannelAuthorizer, DbMessage, MessagesFeed, PolicyError
from .presence import CallWindow, parse_presence_push
from .protocol import (
    JSON,
    Message,
    ProtocolError,
    Serializer,
    UserBroadcast,
    dumps,
    serializer_for,
)

__all__ = ["WEBSOCKET_PATHS", "Connection", "FeedLike", "RealtimeServer"]

log = logging.getLogger("supasync.devstack.realtime")

WEBSOCKET_PATHS: Final = ("/realtime/v1/websocket", "/socket/websocket")
#: [S] endpoint.ex ``max_frame_size``.
MAX_FRAME_BYTES: Final = 5_000_000
#: A socket whose client does not read is dropped once this many frames wait for it.
MAX_QUEUED_FRAMES: Final = 200_000
#: Close code for operator disconnects (§8.3: 1012 "service restart").
SERVICE_RESTART: Final = 1012
#: What a join with bindings hears when no change feed is running.
NO_FEED_TEXT: Final = "Realtime was unable to connect to the project database"

_CLOSE = object()  # writer-queue sentinel: send a close frame, then stop
_GOING_AWAY = object()  # the same with code 1001 (a join over the tenant's joins limit, §10)


class FeedLike(Protocol):
    """The change feed's interface (engineer B's ``feed.ChangeFeed``)."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def subscribe(self, key: Hashable, bindings: list[tuple[int, dict[str, Any]]],
                        claims: dict[str, Any],
                        deliver: Callable[[dict[str, Any]], None]) -> str | None: ...
    async def update_claims(self, key: Hashable, claims: dict[str, Any]) -> str | None: ...
    async def unsubscribe(self, key: Hashable) -> None: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...


class Connection:
    """One websocket: reads frames, owns its channels, writes through one queue."""

    _ids = itertools.count(1)

    def __init__(self, server: RealtimeServer, ws: web.WebSocketResponse,
                 request: web.Request, serializer: Serializer, token: str) -> None:
        self.id = next(self._ids)
        self.server = server
        self.ws = ws
        self.transport = request.transport
        self.serializer = serializer
        self.token = token
        self.channels: dict[str, Channel] = {}
        self._join_seq = itertools.count(1)
        self._outbox: asyncio.Queue[tuple[float, object]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._timers: dict[Hashable, asyncio.TimerHandle] = {}
        self._feed_chain: dict[Hashable, asyncio.Task[None]] = {}
        self._presence_calls: dict[Hashable, CallWindow] = {}
        self.closing = False

    # -- output ---------------------------------------------------------------------------
    def send(self, msg: Message) -> None:
        self.send_frame(self.serializer.encode(msg))

    def send_frame(self, frame: str | bytes | object) -> None:
        """Queue a frame; never blocks. Frames keep their order whatever the latency."""
        if self.closing and frame is not _CLOSE and frame is not _GOING_AWAY:
            return
        latency = self.server.latency_s
        due = asyncio.get_running_loop().time() + latency if latency > 0 else 0.0
        if self._outbox.qsize() >= MAX_QUEUED_FRAMES:
            log.warning("socket %d: client not reading, dropping it", self.id)
            self.abort()
            return
        self._outbox.put_nowait((due, frame))

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                due, frame = await self._outbox.get()
                if due:
                    delay = due - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)  # the configured latency, by design
                if frame is _CLOSE or frame is _GOING_AWAY:
                    code = SERVICE_RESTART if frame is _CLOSE else WSCloseCode.GOING_AWAY
                    await self.ws.close(code=code, message=b"")
                    return
                if isinstance(frame, bytes):
                    await self.ws.send_bytes(frame)
                elif isinstance(frame, str):
                    await self.ws.send_str(frame)
        except (ConnectionError, RuntimeError) as exc:
            log.debug("socket %d: write failed: %s", self.id, exc)

    def abort(self) -> None:
        """Drop the TCP connection without a close frame."""
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def close_cleanly(self) -> None:
        """Operator disconnect: tell every channel, send what is queued, then close 1012
        ("service restart"; §4 ``Server requested disconnect`` has no ``channel`` key, §8.3)."""
        for channel in self.channels.values():
            self.send(channel.push("system", {"extension": "system", "status": "ok",
                                              "message": "Server requested disconnect"}))
        self.send_frame(_CLOSE)
        self.closing = True

    # -- input ----------------------------------------------------------------------------
    async def run(self) -> None:
        self._writer = asyncio.create_task(self._write_loop())
        idle = self.server.ctx.config.idle_timeout_s or None  # 0 or None: never idle out
        try:
            while True:
                try:
                    raw = await self.ws.receive(timeout=idle)
                except TimeoutError:
                    # Phoenix closes a socket that received nothing for its timeout (§8.1).
                    log.info("socket %d: idle for %ss, closing", self.id, idle)
                    self.closing = True
                    await self.ws.close(code=WSCloseCode.OK, message=b"idle timeout")
                    break
                if raw.type == WSMsgType.TEXT:
                    await self._frame(raw.data, text=True)
                elif raw.type == WSMsgType.BINARY:
                    await self._frame(raw.data, text=False)
                else:  # CLOSE, CLOSING, CLOSED, ERROR
                    break
        finally:
            self.closing = True
            self._teardown()
            if self._writer is not None:
                self._writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._writer

    async def _frame(self, data: str | bytes, *, text: bool) -> None:
        try:
            msg = (self.serializer.decode_text(data) if text
                   else self.serializer.decode_binary(data))  # type: ignore[arg-type]
        except ProtocolError as exc:
            # [S] socket.ex rescues and logs MalformedWebSocketMessage; the socket lives on.
            log.warning("socket %d: MalformedWebSocketMessage: %s", self.id, exc)
            return
        try:
            await self._dispatch(msg)
        except Exception:  # a bug must not take the socket down
            log.exception("socket %d: error handling %s on %s", self.id, msg.event, msg.topic)
            # As a crashed channel process would: phx_error, and the channel is gone.
            channel = self.channels.get(msg.topic)
            if channel is not None and channel.close():
                self.send(Message.error(channel.join_ref, channel.topic))
                self._finish(channel)

    async def _dispatch(self, msg: Message) -> None:
        if msg.topic == "phoenix" and msg.event == "heartbeat":
            self.send(Message.reply(msg.join_ref, msg.ref, "phoenix", "ok", {}))
            return
        if msg.event == "phx_join":
            await self._join(msg)
            return
        channel = self.channels.get(msg.topic)
        if channel is None:
            if msg.event == "phx_leave":  # leaving an unknown topic is fine ([PHXEX])
                self.send(Message.reply(msg.join_ref, msg.ref, msg.topic, "ok", {}))
            else:
                self.send(Message.reply(msg.join_ref, msg.ref, msg.topic, "error",
                                        {"reason": "unmatched topic"}))
            return
        if channel.params.private and msg.event in ("broadcast", "presence"):
            if not await self._may_write(channel, msg.event):
                if msg.event == "presence":
                    self.send(Message.reply(channel.join_ref, msg.ref, msg.topic, "error", {}))
                # A broadcast without write permission is dropped, even with ack (§9.1).
                return
        handler = self._HANDLERS.get(msg.event)
        if handler is None:
            # [S] realtime_channel.ex catch-all handle_in: log at info, no reply.
            log.info("socket %d: ignoring unknown event %r on %s", self.id, msg.event, msg.topic)
            return
        handler(self, channel, msg)

    # -- join -----------------------------------------------------------------------------
    async def _join(self, msg: Message) -> None:
        sub = sub_topic_of(msg.topic)
        if sub is None:
            self.send(Message.reply(msg.join_ref, msg.ref, msg.topic, "error",
                                    {"reason": "unmatched topic"}))
            return
        join_ref = msg.join_ref if msg.join_ref is not None else msg.ref
        old = self.channels.get(msg.topic)
        if old is not None:  # duplicate join: close the old one, then join anew (§3.6)
            if old.close():
                self.send(old.close_message())
                self._finish(old)
        if not self.server.hub.limits.join(time.monotonic()):
            # §10: the join is refused and the socket closed (1001).
            self.send(Message.reply(join_ref, msg.ref, msg.topic, "error",
                                    {"reason": f"{JOINS_CODE}: {JOINS_TEXT}"}))
            self.send_frame(_GOING_AWAY)
            self.closing = True
            return
        params = parse_join_payload(msg.payload)
        if params.problems:
            log.info("socket %d: InvalidJoinPayload on %s: %s", self.id, msg.topic,
                     "; ".join(params.problems))
        ctx = self.server.ctx
        try:
            token, claims = check_join(
                sub, params, socket_token=self.token, secret=ctx.keys.jwt_secret,
                channel_count=len(self.channels), now=time.time())
            policies, replay = await self._authorize(sub, params, claims)
        except JoinError as exc:
            backoff = ctx.config.join_error_backoff_ms / 1000
            if backoff > 0:
                await asyncio.sleep(backoff)  # the real server's join error back-off (§3.5)
            self.send(Message.reply(join_ref, msg.ref, msg.topic, "error",
                                    {"reason": exc.reason}))
            return
        channel = Channel(
            key=(self.id, msg.topic, next(self._join_seq)), topic=msg.topic,
            join_ref=join_ref, params=params, token=token, claims=claims,
            presence_key=params.presence_key or str(uuid.uuid1()),
            broadcast_read=policies[0], presence_read=policies[1])
        self.channels[msg.topic] = channel
        self.server.hub.add(channel, self)
        # The reply goes first; everything else for this join follows it (§11.5).
        self.send(channel.join_reply(msg.ref))
        for stored in replay:  # oldest first, marked replayed (§9.4)
            channel.replayed_ids.add(stored.id)
            self.send(channel.push("broadcast", {
                "event": stored.event, "payload": json.loads(stored.payload), "type": "broadcast",
                "meta": {"replayed": True, "id": stored.id}}))
        if channel.presence_on and channel.presence_read:
            state = self.server.hub.presence_topic(channel.namespace).state()
            self.send(channel.push("presence_state", state))
        if params.replication_ready:
            self.send(channel.system("system", "ok", "Replication connection established"))
        self._arm_token_timer(channel)
        if channel.needs_feed:
            if self.server.feed is None:
                channel.begin_subscribe()
                for m in channel.feed_answer(NO_FEED_TEXT):
                    self.send(m)
            else:
                self._feed_op(channel, self._subscribe)

    async def _authorize(self, sub: str, params: Any, claims: dict[str, Any]
                         ) -> tuple[tuple[bool, bool], list[DbMessage]]:
        """A private join's RLS read check and replay (§9.4-9.5); public joins pass."""
        if not params.private:
            return (True, True), []
        denied = JoinError("Unauthorized",
                           f"You do not have permissions to read from this Channel topic: {sub}")
        authorizer = self.server.authorizer
        try:
            policies = await authorizer.read(sub, claims, presence=params.presence_enabled)
        except PolicyError as exc:
            raise JoinError("RlsPolicyError", f"Error on RLS policy: {exc}") from exc
        if not (policies.broadcast_read or policies.presence_read):
            raise denied
        replay: list[DbMessage] = []
        if params.replay_requested:
            if not policies.broadcast_read:
                raise denied
            options = params.replay if isinstance(params.replay, dict) else {}
            limit = options.get("limit")
            try:
                replay = await authorizer.replay(
                    sub, options["since"], limit if isinstance(limit, int) else None)
            except Exception as exc:
                log.warning("socket %d: replay failed: %s", self.id, exc)
                raise JoinError("UnableToReplayMessages",
                                "Realtime was unable to replay messages") from exc
        return (policies.broadcast_read, policies.presence_read), replay

    async def _may_write(self, channel: Channel, extension: str) -> bool:
        """The private channel's write check for ``extension``, made once (§9.1, §9.5)."""
        allowed = channel.can_write.get(extension)
        if allowed is None:
            allowed = await self.server.authorizer.write(channel.sub_topic, channel.claims,
                                                         extension)
            channel.can_write[extension] = allowed
        return allowed

    # -- channel events ---------------------------------------------------------------------
    def _leave(self, channel: Channel, msg: Message) -> None:
        self.send(Message.reply(channel.join_ref, msg.ref, msg.topic, "ok", {}))
        if channel.close():
            self.send(channel.close_message())
            self._finish(channel)

    def _access_token(self, channel: Channel, msg: Message) -> None:
        value = msg.payload.get("access_token") if isinstance(msg.payload, dict) else None
        outcome, messages = channel.access_token(
            value, self.server.ctx.keys.jwt_secret, time.time())
        for m in messages:
            self.send(m)
        if outcome == "closed":
            self._finish(channel)
        elif outcome == "refreshed":
            self._arm_token_timer(channel)
            if channel.needs_feed and self.server.feed is not None:
                self._feed_op(channel, self._refresh)

    def _broadcast(self, channel: Channel, msg: Message) -> None:
        ack = channel.params.broadcast_ack
        if msg.size > MAX_PAYLOAD_BYTES:
            if ack:  # a bare string response, as the real server sends it (§9.1)
                self.send(Message.reply(channel.join_ref, msg.ref, msg.topic, "error",
                                        "payload_size_exceeded"))
            return
        exclude = None if channel.params.broadcast_self else channel.key
        hub = self.server.hub
        only = _may_read if channel.params.private else None
        if msg.user is not None:
            ub = msg.user
            hub.fanout_user(channel.namespace,
                            UserBroadcast(channel.topic, ub.event, ub.payload, ub.encoding),
                            exclude=exclude, only=only)
        elif isinstance(msg.payload, dict):
            hub.fanout(channel.namespace,
                       Message.fanout(channel.topic, "broadcast", msg.payload), exclude=exclude,
                       only=only)
        else:
            log.info("socket %d: broadcast payload is not an object; dropped", self.id)
            return
        if ack:
            self.send(Message.reply(channel.join_ref, msg.ref, msg.topic, "ok", {}))

    def _presence(self, channel: Channel, msg: Message) -> None:
        window = self._presence_calls.setdefault(channel.key, CallWindow())
        if not window.allow(time.monotonic()):
            self._shutdown(channel, "Client presence rate limit exceeded")
            return
        push = parse_presence_push(msg.payload)
        status, response = push.reply
        self.send(Message.reply(channel.join_ref, msg.ref, msg.topic, status, response))
        hub = self.server.hub
        topic = hub.presence_topic(channel.namespace)
        if push.action == "track" and push.meta is not None:
            channel.presence_on = True  # the first track switches presence on (§9.6)
            diff = topic.track(channel.key, channel.presence_key, push.meta)
        elif push.action == "untrack":
            diff = topic.untrack(channel.key)
        else:
            diff = None
        if diff is not None:
            self._presence_diff(channel, diff)
        hub.drop_presence(channel.namespace)

    def _presence_diff(self, channel: Channel, diff: dict[str, Any]) -> None:
        self.server.hub.fanout(channel.namespace,
                               Message.fanout(channel.topic, "presence_diff", diff),
                               only=lambda ch: ch.presence_on)

    _HANDLERS: Final[dict[str, Callable[[Connection, Channel, Message], None]]] = {
        "phx_leave": _leave,
        "access_token": _access_token,
        "broadcast": _broadcast,
        "presence": _presence,
    }

    # -- ending channels ---------------------------------------------------------------------
    def _shutdown(self, channel: Channel, text: str) -> None:
        for m in channel.shutdown(text):
            self.send(m)
        self._finish(channel)

    def shutdown_channel(self, channel: Channel, text: str) -> None:
        """End a channel with a system error (the hub's rate limit, limits.py)."""
        if self.channels.get(channel.topic) is channel:
            self._shutdown(channel, text)

    def _finish(self, channel: Channel) -> None:
        """Clean up after ``channel.close()``: routing, timers, presence, feed."""
        if self.channels.get(channel.topic) is channel:
            del self.channels[channel.topic]
        hub = self.server.hub
        hub.remove(channel)
        timer = self._timers.pop(channel.key, None)
        if timer is not None:
            timer.cancel()
        self._presence_calls.pop(channel.key, None)
        topic = hub.presence.get(channel.namespace)
        if topic is not None:
            diff = topic.untrack(channel.key)
            if diff is not None:
                self._presence_diff(channel, diff)
            hub.drop_presence(channel.namespace)
        if channel.was_feeding and self.server.feed is not None:
            self._feed_op(channel, self._unsubscribe)

    def _teardown(self) -> None:
        for channel in list(self.channels.values()):
            if channel.close():
                self._finish(channel)
        self.server.connections.discard(self)

    # -- tokens ---------------------------------------------------------------------------
    def _arm_token_timer(self, channel: Channel) -> None:
        old = self._timers.pop(channel.key, None)
        if old is not None:
            old.cancel()
        delay = expiry_delay(channel.claims, time.time())
        loop = asyncio.get_running_loop()
        self._timers[channel.key] = loop.call_later(delay, self._token_timer, channel)

    def _token_timer(self, channel: Channel) -> None:
        self._timers.pop(channel.key, None)
        if channel.closed:
            return
        messages = channel.check_token(self.server.ctx.keys.jwt_secret, time.time())
        if messages:
            for m in messages:
                self.send(m)
            self._finish(channel)
        else:
            self._arm_token_timer(channel)

    def expire_tokens(self, now: float) -> int:
        count = 0
        for channel in list(self.channels.values()):
            messages = channel.expire(now)
            for m in messages:
                self.send(m)
            if messages:
                self._finish(channel)
                count += 1
        return count

    # -- the change feed ---------------------------------------------------------------------
    def _feed_op(self, channel: Channel,
                 op: Callable[[Channel], Awaitable[None]]) -> None:
        """Run feed calls of one channel one after another, in the order asked."""
        prev = self._feed_chain.get(channel.key)

        async def run() -> None:
            if prev is not None:
                await asyncio.wait([prev])
            try:
                await op(channel)
            except Exception:
                log.exception("socket %d: change feed call failed for %s", self.id,
                              channel.topic)

        task = self.server.spawn(run())
        self._feed_chain[channel.key] = task

        def done(t: asyncio.Task[None], key: Hashable = channel.key) -> None:
            if self._feed_chain.get(key) is t:
                del self._feed_chain[key]

        task.add_done_callback(done)

    async def _subscribe(self, channel: Channel) -> None:
        feed = self.server.feed
        if channel.closed or feed is None:
            return
        channel.begin_subscribe()

        def deliver(payload: dict[str, Any]) -> None:
            m = channel.deliver(payload)
            if m is not None:
                self.send(m)

        error = await self._feed_call(feed.subscribe(channel.key, channel.bindings,
                                                     channel.claims, deliver))
        for m in channel.feed_answer(error):
            self.send(m)

    async def _refresh(self, channel: Channel) -> None:
        feed = self.server.feed
        if channel.closed or feed is None:
            return
        if channel.pg is PgState.FAILED and not channel.subscribed_once:
            # Never subscribed: a new token means a new attempt.
            await self._subscribe(channel)
            return
        error = await self._feed_call(feed.update_claims(channel.key, channel.claims))
        for m in channel.feed_answer(error):
            self.send(m)

    async def _unsubscribe(self, channel: Channel) -> None:
        feed = self.server.feed
        if feed is not None:
            await feed.unsubscribe(channel.key)

    async def _feed_call(self, call: Awaitable[str | None]) -> str | None:
        try:
            return await call
        except Exception as exc:
            log.exception("socket %d: change feed raised", self.id)
            return f"{{:error, {exc!r}}}"


class RealtimeServer:
    """The local Realtime server. See the module docstring for the contract."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.hub = Hub(TenantLimits(
            events_per_second=getattr(ctx.config, "max_events_per_second", None),
            joins_per_second=getattr(ctx.config, "max_joins_per_second", None)))
        self.api = BroadcastApi(self.hub, lambda: str(ctx.keys.jwt_secret))
        self.connections: set[Connection] = set()
        self.feed: FeedLike | None = None
        self.authorizer = ChannelAuthorizer(ctx)
        self.messages: MessagesFeed | None = None
        self.latency_s = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()

    def add_routes(self, app: web.Application) -> None:
        for path in WEBSOCKET_PATHS:
            app.router.add_get(path, self.websocket)
        self.api.add_routes(app)

    async def start(self) -> None:
        messages = MessagesFeed(self.ctx, self.deliver_db_message)
        try:
            await messages.start()
            self.messages = messages
        except Exception as exc:  # an older data directory without the realtime schema
            log.warning("Broadcast from Database unavailable: %s", exc)
        try:
            from .feed import ChangeFeed  # type: ignore[import-not-found, unused-ignore]
        except ImportError as exc:
            log.warning("postgres_changes unavailable (no change feed: %s)", exc)
            return
        feed: FeedLike = ChangeFeed(self.ctx)
        await feed.start()
        self.feed = feed

    async def stop(self) -> None:
        conns = list(self.connections)
        for conn in conns:
            conn.closing = True
        if conns:
            # Close frames (1001) go out together; clients that do not answer within a
            # moment are cut off rather than holding up the stack's shutdown.
            closes = [asyncio.ensure_future(c.ws.close(code=WSCloseCode.GOING_AWAY, message=b""))
                      for c in conns]
            await asyncio.wait(closes, timeout=2)
            for fut in closes:
                fut.cancel()
            for conn in conns:
                conn.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        if self.feed is not None:
            feed, self.feed = self.feed, None
            await feed.stop()
        if self.messages is not None:
            messages, self.messages = self.messages, None
            await messages.stop()
        await self.authorizer.close()

    def deliver_db_message(self, m: DbMessage) -> None:
        """An insert into realtime.messages: a user broadcast with ``meta.id`` to its topic's
        channels that may read it and did not get it replayed (§9.3-9.4)."""
        ub = UserBroadcast(TOPIC_PREFIX + m.topic, m.event, m.payload, JSON, {"id": m.id})

        def wanted(ch: Channel) -> bool:
            return ch.broadcast_read and m.id not in ch.replayed_ids

        self.hub.fanout_user((m.private, m.topic), ub, only=wanted)

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- the websocket endpoint ------------------------------------------------------------
    async def websocket(self, request: web.Request) -> web.StreamResponse:
        serializer = serializer_for(request.query.get("vsn"))
        if serializer is None:
            return web.Response(status=403)  # [PHXEX] transports/websocket.ex
        # `x-api-key` wins over the `apikey` query parameter ([S] user_socket.ex).
        token = request.headers.get("x-api-key")
        if token is None:
            token = request.query.get("apikey")
        error: str | None = None
        if not token:
            error = "API key is missing"
        else:
            try:
                verify(token, self.ctx.keys.jwt_secret)
            except TokenError as exc:
                # At connect the real server says just "Token has expired" (§1.3 table).
                error = ("Token has expired" if exc.text.startswith("Token has expired")
                         else exc.text)
        if error is not None:
            backoff = self.ctx.config.connect_error_backoff_ms / 1000
            if backoff > 0:
                await asyncio.sleep(backoff)  # [S] CONNECT_ERROR_BACKOFF_MS
            return web.json_response({"error": error}, status=401, dumps=dumps)
        assert token is not None
        # No permessage-deflate: Phoenix's websocket transport does not compress by default,
        # and deflating every frame costs more than the rest of the send path.
        ws = web.WebSocketResponse(max_msg_size=MAX_FRAME_BYTES, autoping=True, compress=False)
        if not ws.can_prepare(request).ok:
            return web.Response(status=400, text="websocket upgrade expected")
        await ws.prepare(request)
        conn = Connection(self, ws, request, serializer, token)
        self.connections.add(conn)
        try:
            await conn.run()
        finally:
            self.connections.discard(conn)
        return ws

    # -- fault controls --------------------------------------------------------------------
    async def drop_connections(self, sub: str | None = None) -> dict[str, Any]:
        """Abort every socket; with ``sub``, only sockets with a channel whose token's ``sub``
        claim is that value (tests drop one client while its peers stay joined)."""
        if sub is not None and not isinstance(sub, str):
            raise ValueError("sub must be a string")
        conns = [c for c in self.connections if sub is None
                 or any(ch.claims.get("sub") == sub for ch in c.channels.values())]
        for conn in conns:
            conn.abort()
        return {"dropped": len(conns)}

    async def close_connections(self) -> dict[str, Any]:
        conns = list(self.connections)
        for conn in conns:
            conn.close_cleanly()
        return {"closed": len(conns)}

    async def expire_tokens(self) -> dict[str, Any]:
        now = time.time()
        return {"expired": sum(conn.expire_tokens(now) for conn in list(self.connections))}

    async def set_latency(self, ms: float = 0) -> dict[str, Any]:
        if isinstance(ms, bool) or not isinstance(ms, int | float) or ms < 0:
            raise ValueError("ms must be a non-negative number")
        self.latency_s = ms / 1000
        return {"latency_ms": ms}

    async def pause_changes(self) -> dict[str, Any]:
        if self.feed is not None:
            self.feed.pause()
        return {"paused": self.feed is not None}

    async def resume_changes(self) -> dict[str, Any]:
        if self.feed is not None:
            self.feed.resume()
        return {"resumed": self.feed is not None}


def _may_read(channel: Channel) -> bool:
    """Whether a private channel's join found broadcast read allowed (public: always)."""
    return channel.broadcast_read
