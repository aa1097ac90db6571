"""The supervised connection: realtime-py sockets that never give up, sharded, watched, rebuilt.

Theory of operation
-------------------
realtime-py 2.34.1 leaves a backend without events in several ways (docs/python-clients.md §3):
it stops reconnecting after ``max_retries``; it never checks heartbeat replies; it rejoins a
subscription the server rejected for good (a bad filter) in an endless loop; it drops a channel
for ever after "Token has expired"; ``close()`` then ``connect()`` leaves channels falsely
JOINED. This module owns the policy so realtime-py only moves frames:

* Every ``AsyncRealtimeClient`` is built with ``auto_reconnect=False``: when its socket goes, the
  client is **discarded** and a new one is built with new channels and a fresh token
  (``await tokens.token()`` first) after a jittered backoff (:mod:`supasync.core.backoff`) that
  never runs out.
* **Shards.** At most ``max_channels_per_socket`` (100, the server's default channel limit per
  socket, protocol doc §10) subscriptions share a socket; more open more sockets. Each
  subscription is one channel with a unique topic; the topic also changes on every rejoin
  (``<name>~<n>``), because realtime-py does not filter frames by ``join_ref`` (§3 of the client
  notes) and a late ``phx_close`` of an old join must not hit the new channel.
* **Heartbeat watchdog.** A heartbeat with our own ref is sent every ``heartbeat_interval``; if
  its reply does not come within ``heartbeat_timeout`` the socket counts as dead and is rebuilt.
  realtime-py drops replies on the ``phoenix`` topic (no channel has that topic), so the
  client's channel table is given a lookup hook that hands ``phoenix`` frames to the watchdog
  (:class:`_ChannelTable`); realtime-py itself is not modified. A reply proves both that the
  server's socket process answers and that our listen task is reading. A finished listen task
  while ``is_connected`` is still true is detected too.
* **Live means "Subscribed to PostgreSQL".** The join reply comes before the CDC subscription
  exists (protocol doc §4, supabase-js #1599), so a subscription is live only on that ``system``
  message; without it within ``subscribed_timeout`` the channel is rebuilt.
* **Errors.** realtime-py turns every ``system`` error and join error into ``CHANNEL_ERROR`` and
  arms its own rejoin timer (``_async/channel.py`` ``on_error``, ``on_join_push_error``). The
  subscribe callback here cancels that timer at once (``rejoin_timer.reset()``) and decides with
  :func:`~supasync.core.errors.classify_system_error`: a permanent error (bad filter, unknown column
  or table, not in the publication, unauthorised) leaves the channel and reports
  :class:`~supasync.core.status.SubscriptionFailed` with the typed error; "Token has expired" forces
  ``tokens.refresh()`` and rejoins that subscription; anything else rejoins it after backoff.
* **A refused API key.** A handshake answered HTTP 401 may be a wrong key or a server in the
  middle of a restart. The supervisor asks PostgREST with the same key (``GET <rest>/``); only
  when that answers 401 too (:func:`api_key_rejected`) is the key wrong for good: the typed
  :class:`~supasync.core.errors.ApiKeyRejected` is published (:class:`ConnectionFailed`, state
  ``failed``) and nothing is retried. Otherwise the connect is retried after backoff.
* **Tokens.** Before every connect and every join the current token is fetched; on every
  refresh (``tokens.on_change``) it is pushed to the live sockets with ``client.set_auth``,
  which also rewrites the stored join payloads.
* **Tokens per subscription.** A subscription may carry its own token keeper
  (``Subscription.tokens``, e.g. one signed-in user's): its channel joins with that token in
  the ``phx_join`` payload and gets that keeper's refreshes as an ``access_token`` push on its
  own topic (:class:`~supasync.client.frames.OwnTokenChannel`; the server authorises each
  channel on its own, protocol doc §3.2, §7.2), a "Token has expired" on it refreshes that
  keeper only, and its gate's repair reads use that token (:class:`SubscriptionInfo`). So
  subscriptions of many users share the sockets, each under its own RLS; one user's token
  being refused or expiring ends only that user's channel.

The pure parts (:class:`HeartbeatMonitor`, :func:`assign_shard`, :func:`channel_outcome`) take
the clock and inputs as arguments and are unit-tested without a server.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import itertools
import json
import logging
import random as _random
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ParamSpec, Protocol

import websockets.exceptions
from realtime import AsyncRealtimeChannel, AsyncRealtimeClient
from realtime.message import Message
from realtime.types import RealtimeSubscribeStates

from ..core.backoff import Backoff, BackoffPolicy
from ..core.errors import ApiKeyRejected, SubscriptionError, classify_system_error
from ..core.redact import mask
from ..core.status import (
    ConnectionFailed,
    GapOpened,
    GapRepaired,
    HandlerFailed,
    Observation,
    StateChanged,
    StatusEvent,
    StatusStream,
    SubscriptionEvent,
    SubscriptionFailed,
    SubscriptionState,
    SubscriptionStateChanged,
    next_connection_state,
    next_subscription_state,
    observe,
    utcnow,
)
from ..core.waiting import wait_event
from .config import DEFAULT_HEARTBEAT_INTERVAL
from .frames import OwnTokenChannel, TappedRealtimeClient
from .subscription import Subscription, SubscriptionInfo

__all__ = [
    "ChannelEndpoint",
    "Connection",
    "ConnectionOptions",
    "HeartbeatMonitor",
    "Outcome",
    "TokenSource",
    "api_key_rejected",
    "assign_shard",
    "channel_outcome",
    "handshake_refusal",
    "rejoin_delay",
]

logger = logging.getLogger("supasync.client.connection")

#: The least wait before rejoining after a rate-limit error (protocol doc §3.5, §10).
RATE_LIMIT_MIN_DELAY = 10.0
_RATE_LIMITED = re.compile(r"RateLimitReached|Too many", re.IGNORECASE)

#: Heartbeat refs we send; realtime-py's own heartbeats have ``ref: null``.
HEARTBEAT_PREFIX = "supasync-hb-"


class ChannelEndpoint(Protocol):
    """A broadcast/presence channel supervised like a subscription
    (:class:`supasync.client.channels.Channel`): the connection joins, rejoins (fresh token,
    backoff, shards) and fails it exactly as a subscription; the endpoint builds its realtime-py
    channel and decides what "joined" and "lost" mean for its outbox and presence. It is live at
    the join reply (there is no "Subscribed to PostgreSQL" for a channel without bindings)."""

    name: str
    #: True for an endpoint that feeds a repairing subscription (a broadcast-sourced one):
    #: its gaps are published (GapOpened) like a subscription's.
    repairs_gaps: bool

    @property
    def error(self) -> SubscriptionError | None: ...

    @error.setter
    def error(self, value: SubscriptionError | None) -> None: ...

    async def _start(self, info: SubscriptionInfo | None, report: Callable[[object], None],
                     on_overflow: Callable[[], None]) -> None: ...

    def _open_channel(self, client: AsyncRealtimeClient) -> AsyncRealtimeChannel: ...

    async def _leave_channel(
        self, client: AsyncRealtimeClient, channel: AsyncRealtimeChannel) -> None: ...

    def _mark_gap(self, reason: str) -> None: ...

    def _mark_subscribed(self) -> None: ...

    async def _close(self) -> None: ...


class TokenSource(Protocol):
    """What the connection needs from a token keeper
    (:class:`supasync.client.tokens.TokenKeeper`)."""

    @property
    def api_key(self) -> str: ...

    async def token(self) -> str: ...

    async def refresh(self, *, reason: str) -> str: ...

    def on_change(self, callback: Callable[[str], Awaitable[None] | None]) -> Callable[[], None]:
        ...


@dataclass(frozen=True)
class ConnectionOptions:
    """Tuning of the supervisor. The defaults suit Supabase; tests shorten the timings.

    Attributes:
        heartbeat_interval: seconds between our heartbeats.
        heartbeat_timeout: a heartbeat without reply for this long means the socket is dead.
        join_timeout: realtime-py's push timeout for ``phx_join`` (whole seconds).
        subscribed_timeout: seconds to wait for "Subscribed to PostgreSQL" after a join before
            rebuilding the channel (the first subscriber of a project can take several seconds).
        max_channels_per_socket: subscriptions per socket before another socket is opened.
        backoff: reconnect/rejoin delays.
    """

    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    heartbeat_timeout: float = 10.0
    join_timeout: int = 10
    subscribed_timeout: float = 30.0
    max_channels_per_socket: int = 100
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)


# --------------------------------------------------------------------------- pure parts


class HeartbeatMonitor:
    """Heartbeat bookkeeping with the clock passed in.

    ``due(now)`` says when to send, ``sent(now)`` returns the ref to send, ``replied(ref, now)``
    records a reply, ``dead(now)`` is true once a heartbeat has waited ``timeout`` seconds, and
    ``next_deadline(now)`` is when something will next need doing.
    """

    def __init__(self, interval: float, timeout: float, *, prefix: str = HEARTBEAT_PREFIX) -> None:
        self.interval = interval
        self.timeout = timeout
        self.prefix = prefix
        self._counter = itertools.count(1)
        self._outstanding: dict[str, float] = {}
        self._next_send = 0.0
        self.last_reply: float | None = None

    def start(self, now: float) -> None:
        """A socket opened at ``now``: the first heartbeat goes one interval later."""
        self._outstanding.clear()
        self._next_send = now + self.interval
        self.last_reply = None

    def due(self, now: float) -> bool:
        return now >= self._next_send

    def sent(self, now: float) -> str:
        ref = f"{self.prefix}{next(self._counter)}"
        self._outstanding[ref] = now
        self._next_send = now + self.interval
        return ref

    def replied(self, ref: str | None, now: float) -> None:
        if ref is not None and self._outstanding.pop(ref, None) is not None:
            self.last_reply = now

    def dead(self, now: float, *, joins_pending: int = 0) -> bool:
        """Whether a heartbeat has gone unanswered for ``timeout`` seconds.

        Never while joins are pending: the server's socket process handles a join
        synchronously - including the 5 s sleep before every join error - and answers nothing
        else meanwhile (protocol doc §3.3), so silence then is expected, not death. Joins
        always end (reply or realtime-py's join timeout), after which the verdict applies.
        """
        if joins_pending:
            return False
        return any(now - at >= self.timeout for at in self._outstanding.values())

    def joins_settled(self, now: float) -> None:
        """The last pending join ended at ``now``: heartbeats sent meanwhile are queued behind
        it on the server, so their timeout starts now rather than when they were sent."""
        for ref, at in self._outstanding.items():
            self._outstanding[ref] = max(at, now)

    def next_deadline(self, now: float, *, joins_pending: int = 0) -> float:
        """When :meth:`due` or :meth:`dead` can next change (without new replies)."""
        deadlines = [self._next_send]
        if not joins_pending:
            deadlines.extend(at + self.timeout for at in self._outstanding.values())
        return max(now, min(deadlines))


def assign_shard(sizes: Sequence[int], limit: int) -> int:
    """The shard for a new subscription: the first with room, else a new one (``len(sizes)``)."""
    for index, size in enumerate(sizes):
        if size < limit:
            return index
    return len(sizes)


class Outcome(enum.StrEnum):
    """What a channel event means for its subscription (see :func:`channel_outcome`)."""

    JOINED = "joined"  # join reply ok; still waiting for "Subscribed to PostgreSQL"
    SOCKET = "socket"  # the socket went away: the shard rebuilds everything
    RETRY = "retry"  # rejoin this subscription after backoff
    TOKEN = "token"  # refresh the token, then rejoin
    FAILED = "failed"  # permanent: stop and report


def error_text(error: BaseException | None) -> str:
    """The server's text inside realtime-py's ``Exception(json.dumps(payload))``."""
    if error is None:
        return ""
    text = str(error)
    try:
        payload = json.loads(text)
    except ValueError:
        return text
    if isinstance(payload, dict):
        for key in ("message", "reason"):
            value = payload.get(key)
            if isinstance(value, str):
                return value
    return text


def channel_outcome(
    status: str, error: BaseException | None, subscription: str
) -> tuple[Outcome, str, SubscriptionError | None]:
    """Decide what a realtime-py subscribe-callback event means. Pure.

    Args:
        status: ``SUBSCRIBED``, ``CHANNEL_ERROR``, ``TIMED_OUT`` or ``CLOSED``.
        error: the exception realtime-py passed (JSON of the server payload, a websockets
            ``ConnectionClosed``, or a plain message).
        subscription: the subscription's name, for the typed error.

    Returns:
        ``(outcome, reason, typed error or None)``.
    """
    if status == RealtimeSubscribeStates.SUBSCRIBED:
        return Outcome.JOINED, "joined", None
    if status == RealtimeSubscribeStates.TIMED_OUT:
        return Outcome.RETRY, "join timed out", None
    if status == RealtimeSubscribeStates.CLOSED:
        return Outcome.RETRY, "channel closed by the server", None
    if isinstance(error, websockets.exceptions.ConnectionClosed):
        # A close frame from the server (1000, 1001, 1012 "service restart" ...) is a clean
        # close; none at all (1006) means the connection dropped.
        return Outcome.SOCKET, "close" if error.rcvd is not None else "drop", None
    text = error_text(error)
    if "mismatch between server and client bindings" in text:
        # The server echoed different bindings: the same request will not fare better.
        return Outcome.FAILED, text, SubscriptionError(subscription, text, retryable=False)
    typed = classify_system_error(text or "unknown channel error", subscription)
    if not typed.retryable:
        return Outcome.FAILED, text, typed
    if "token has expired" in text.lower():
        return Outcome.TOKEN, "token-expired", typed
    return Outcome.RETRY, text or "channel error", typed


def handshake_refusal(error: BaseException) -> tuple[int, str] | None:
    """The HTTP status and server text of a refused websocket handshake, or None. Pure.

    The Realtime server answers a bad ``apikey`` with e.g. 401 ``{"error": "The token provided
    is not a valid JWT"}`` (protocol doc §1.3); ``websockets`` raises ``InvalidStatus``.
    """
    if not isinstance(error, websockets.exceptions.InvalidStatus):
        return None
    response = error.response
    text = ""
    try:
        payload = json.loads(response.body or b"")
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        for key in ("error", "message"):
            value = payload.get(key)
            if isinstance(value, str):
                text = value
                break
    return response.status_code, text


def api_key_rejected(handshake_status: int | None, rest_status: int | None) -> bool:
    """Whether a refused handshake means the API key is wrong for good. Pure.

    Args:
        handshake_status: the HTTP status of the refused websocket handshake (None: the connect
            failed some other way).
        rest_status: what PostgREST answered to a request with the same key (None: not asked,
            or no answer at all).

    Only a 401 confirmed by a 401 from PostgREST counts: a server restarting (or a gateway
    briefly unsure of its keys) can answer one 401, and a supervised connection prefers to
    retry over giving up on a transient error.
    """
    return handshake_status == 401 and rest_status == 401


# --------------------------------------------------------------------------- asyncio layer


class _HeartbeatSink:
    """Receives the frames realtime-py would drop on the ``phoenix`` topic."""

    def __init__(self, shard: _Shard) -> None:
        self._shard = shard

    def _handle_message(self, message: Any) -> None:
        shard = self._shard
        shard.monitor.replied(getattr(message, "ref", None), asyncio.get_running_loop().time())


class _ChannelTable(dict[str, Any]):
    """realtime-py's ``client.channels``, plus a lookup hook for ``phoenix`` frames.

    realtime-py routes each frame with ``self.channels.get(message.topic)``; iteration, ``len``
    and every other lookup see only real channels.
    """

    def __init__(self, sink: _HeartbeatSink) -> None:
        super().__init__()
        self._sink = sink

    def get(self, key: str, default: Any = None) -> Any:
        if key == "phoenix":
            return self._sink
        return super().get(key, default)


def rejoin_delay(outcome: Outcome, reason: str, backoff: Backoff, now: float, *,
                 fresh_token_tried: bool) -> float:
    """Seconds to wait before rejoining a subscription whose channel the server ended.

    A token expiry is not a server failure: the rejoin goes at once, with the fresh token the
    caller has just obtained, and the backoff's count is left alone - counting expiries made
    every rejoin after frequent ones wait longer (0.2 s, 1 s, 4 s ... 20 s: issue #17), because
    the count starts over only after ``reset_after`` seconds live. Only when the fresh token
    did not help (*fresh_token_tried*: expired again before "Subscribed") does an expiry count
    as a failure. Everything else backs off; rate limits wait at least
    :data:`RATE_LIMIT_MIN_DELAY` (realtime-py waits 30 s for these codes:
    ``_async/channel.py`` ``RATE_LIMITED_REJOIN_DELAY_SECONDS``), as retrying one quickly only
    extends it.
    """
    if outcome is Outcome.TOKEN and not fresh_token_tried:
        return 0.0
    delay = backoff.failure(now)
    if _RATE_LIMITED.search(reason):
        delay = max(delay, RATE_LIMIT_MIN_DELAY)
    return delay


@dataclass(eq=False)
class _Member:
    """One subscription's runtime inside a shard."""

    sub: Subscription | ChannelEndpoint
    backoff: Backoff
    channel: AsyncRealtimeChannel | None = None
    task: asyncio.Task[None] | None = None
    signal: asyncio.Event = field(default_factory=asyncio.Event)
    outcome: tuple[Outcome, str, SubscriptionError | None] | None = None
    live: bool = False
    joins: int = 0
    #: A rejoin with a fresh token after an expiry is under way (cleared at "Subscribed").
    fresh_token_tried: bool = False
    #: Stops following the subscription's own token keeper (None: it has none).
    unwatch: Callable[[], None] | None = None

    def settle(self, outcome: Outcome, reason: str, error: SubscriptionError | None) -> None:
        """Record the first terminal outcome of the current channel and wake the member task."""
        if self.outcome is None:
            self.outcome = (outcome, reason, error)
            self.signal.set()


@dataclass(eq=False)
class _Shard:
    index: int
    monitor: HeartbeatMonitor
    backoff: Backoff
    members: dict[str, _Member] = field(default_factory=dict)
    client: AsyncRealtimeClient | None = None
    task: asyncio.Task[None] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    lost_reason: str | None = None
    connects: int = 0
    joins_pending: int = 0


class Connection:
    """Supervises the sockets and channels of a set of subscriptions. Used by
    :class:`supasync.Realtime`; apps rarely need it directly.

    Args:
        realtime_url: ``ws(s)://host/realtime/v1`` (or ``http(s)://``; realtime-py converts).
        tokens: the token keeper.
        rest_url: PostgREST base URL, handed to gates through :class:`SubscriptionInfo`.
        status: the status stream to publish on (a new one by default).
        options: timings and limits.
        random: ``() -> float`` for backoff jitter (injectable for tests).
        client_factory: builds realtime-py clients (default
            :class:`~supasync.client.frames.TappedRealtimeClient`: realtime-py's own client, reading
            postgres_changes frames without its per-frame validation).
    """

    def __init__(
        self,
        realtime_url: str,
        tokens: TokenSource,
        *,
        rest_url: str = "",
        status: StatusStream | None = None,
        options: ConnectionOptions | None = None,
        random: Callable[[], float] = _random.random,
        client_factory: Callable[..., AsyncRealtimeClient] = TappedRealtimeClient,
    ) -> None:
        self.realtime_url = realtime_url
        self.tokens = tokens
        self.rest_url = rest_url
        self.status = status if status is not None else StatusStream()
        self.options = options or ConnectionOptions()
        self._random = random
        self._factory = client_factory
        self._shards: list[_Shard] = []
        self._states: dict[str, SubscriptionState] = {}
        self._where: dict[str, _Shard] = {}
        self._topics = itertools.count(1)
        self._started = False
        self._closing = False
        self._unsubscribe_tokens: Callable[[], None] | None = None
        #: The setting that holds the API key, named in :class:`ApiKeyRejected`.
        self.api_key_name = "SUPABASE_ANON_KEY"
        #: Set when the project refused the client itself (nothing is retried any more).
        self.failure: ApiKeyRejected | None = None
        #: Subscriptions fed by an endpoint (e.g. Broadcast from Database), by name.
        self.endpoint_subscriptions: dict[str, Subscription] = {}

    # -- observation ---------------------------------------------------------------------
    @property
    def clients(self) -> list[AsyncRealtimeClient]:
        """The realtime-py clients currently connected (one per active shard)."""
        return [s.client for s in self._shards if s.client is not None and s.client.is_connected]

    @property
    def shard_count(self) -> int:
        """Shards that hold at least one subscription."""
        return sum(1 for s in self._shards if s.members)

    def state_of(self, name: str) -> SubscriptionState | None:
        return self._states.get(name)

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Start supervising (idempotent). Subscriptions added before or after are joined."""
        if self._started:
            return
        self._started = True
        self._unsubscribe_tokens = self.tokens.on_change(self._push_token)
        for shard in self._shards:
            self._ensure_shard_task(shard)
        self._update_connection("started")

    async def add(self, sub: Subscription | ChannelEndpoint) -> None:
        """Add a subscription (or a broadcast/presence channel, :class:`ChannelEndpoint`): open
        its gate, then join it on a shard with room.

        Raises:
            ValueError: a subscription with this name is already present.
        """
        if sub.name in self._where:
            raise ValueError(f"a subscription named {sub.name!r} already exists; pass name=...")
        own = _own_tokens(sub)
        if own is not None and not (isinstance(self._factory, type)
                                    and issubclass(self._factory, TappedRealtimeClient)):
            raise ValueError("a subscription with its own token needs the default client "
                             "factory (TappedRealtimeClient)")
        member = _Member(sub=sub, backoff=Backoff(self.options.backoff, random=self._random))
        # The gate opens first: if it fails (e.g. its cache cannot be opened) nothing is
        # registered and the error reaches the caller.
        if isinstance(sub, Subscription):
            await sub._start(self._info(sub), on_overflow=lambda: self._overflow(member))
        else:
            await sub._start(self._info_for(sub.name) if sub.repairs_gaps else None,
                             lambda event: self.status.publish(_as_status_event(event)),
                             lambda: self._overflow(member))
        # The shard is chosen after the last await, so concurrent add() calls cannot all pick
        # the same shard and overfill it.
        shard = self._shard_with_room()
        self._where[sub.name] = shard
        self._set_state(sub.name, SubscriptionState.PENDING, "declared", None)
        if isinstance(sub, Subscription) or sub.repairs_gaps:  # a channel has none to repair
            self.status.publish(GapOpened(sub.name, utcnow(), "first-join"))
        sub._mark_gap("first-join")
        if own is not None:
            async def pushed(token: str) -> None:
                await self._push_member_token(member, token)

            member.unwatch = own.on_change(pushed)
        shard.members[sub.name] = member
        shard.wake.set()  # a shard left empty waits for members: it connects again
        if self._started:
            self._ensure_shard_task(shard)
            if shard.client is not None and shard.client.is_connected:
                member.task = asyncio.create_task(self._run_member(shard, shard.client, member))
        self._update_connection(f"subscription {sub.name!r} added")

    def _shard_with_room(self) -> _Shard:
        sizes = [len(s.members) for s in self._shards]
        index = assign_shard(sizes, self.options.max_channels_per_socket)
        if index == len(self._shards):
            self._shards.append(
                _Shard(
                    index=index,
                    monitor=HeartbeatMonitor(
                        self.options.heartbeat_interval, self.options.heartbeat_timeout
                    ),
                    backoff=Backoff(self.options.backoff, random=self._random),
                )
            )
        return self._shards[index]

    async def remove(self, sub: Subscription | ChannelEndpoint) -> None:
        """Leave the subscription's channel and close it (its iterators end)."""
        shard = self._where.pop(sub.name, None)
        if shard is None:
            return
        member = shard.members.pop(sub.name)
        if member.unwatch is not None:
            member.unwatch()
        await self._stop_member(shard, member)
        self._transition(sub.name, SubscriptionEvent.CLOSED, "removed")
        await sub._close()
        self._states.pop(sub.name, None)
        self.status.forget_subscription(sub.name)
        shard.wake.set()
        self._update_connection(f"subscription {sub.name!r} removed")

    async def aclose(self) -> None:
        """Stop everything: leave channels, close sockets and subscriptions, publish ``stopped``."""
        if self._closing:
            return
        self._closing = True
        if self._unsubscribe_tokens is not None:
            self._unsubscribe_tokens()
        for shard in self._shards:
            if shard.task is not None:
                shard.task.cancel()
            for member in shard.members.values():
                if member.unwatch is not None:
                    member.unwatch()
        for shard in self._shards:
            if shard.task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await shard.task
            for member in shard.members.values():
                await self._stop_member(shard, member)
            if shard.client is not None:
                await self._discard_client(shard.client)
                shard.client = None
        for shard in self._shards:
            for name, member in list(shard.members.items()):
                self._transition(name, SubscriptionEvent.CLOSED, "client closed")
                await member.sub._close()
        self._publish_connection(Observation.STOP, "client closed")
        self.status.close()

    # -- shard supervision ---------------------------------------------------------------
    def _ensure_shard_task(self, shard: _Shard) -> None:
        if shard.task is None or shard.task.done():
            shard.task = asyncio.create_task(
                self._run_shard(shard), name=f"supasync-shard-{shard.index}"
            )

    async def _run_shard(self, shard: _Shard) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing and self.failure is None:
            if not shard.members:
                if shard.client is not None:
                    await self._discard_client(shard.client)
                    shard.client = None
                shard.wake.clear()
                await shard.wake.wait()
                continue
            client = await self._connect(shard)
            if client is None:
                if self.failure is not None:
                    return
                delay = shard.backoff.failure(loop.time())
                logger.info("shard %d: reconnecting in %.2f s", shard.index, delay)
                await asyncio.sleep(delay)
                continue
            shard.backoff.success(loop.time())
            shard.client = client
            for name, member in shard.members.items():
                if self._states.get(name) is SubscriptionState.FAILED:
                    continue  # rejected for good: a new socket does not make it acceptable
                member.task = asyncio.create_task(self._run_member(shard, client, member))
            reason = await self._watch(shard, client)
            shard.client = None
            for member in list(shard.members.values()):
                await self._stop_member(shard, member, leave=False)
                self._lost(member, reason)
            await self._discard_client(client)
            if self._closing or reason == "idle":
                continue
            delay = shard.backoff.failure(loop.time())
            logger.warning(
                "shard %d: socket lost (%s); reconnecting in %.2f s", shard.index, reason, delay
            )
            await asyncio.sleep(delay)  # a backoff wait; aclose() cancels it

    async def _connect(self, shard: _Shard) -> AsyncRealtimeClient | None:
        try:
            token = await self.tokens.token()
            client = self._factory(
                self.realtime_url,
                token=self.tokens.api_key,
                auto_reconnect=False,
                timeout=self.options.join_timeout,
            )
            client.channels = _ChannelTable(_HeartbeatSink(shard))
            await client.set_auth(token)
            await client.connect()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            refused = handshake_refusal(exc)
            logger.warning(
                "shard %d: cannot connect to Realtime: %s: %s%s",
                shard.index,
                type(exc).__name__,
                mask(str(exc)),
                f" ({mask(refused[1])})" if refused and refused[1] else "",
            )
            if refused is not None and refused[0] == 401:
                await self._check_api_key(refused)
            return None
        shard.connects += 1
        shard.lost_reason = None
        shard.monitor.start(asyncio.get_running_loop().time())
        listen = client._listen_task
        if listen is not None:
            listen.add_done_callback(lambda task: self._listen_ended(shard, task))
        logger.info("shard %d: connected (%d subscriptions)", shard.index, len(shard.members))
        return client

    async def _check_api_key(self, refused: tuple[int, str]) -> None:
        """The handshake answered 401: ask PostgREST with the same key whether it is wrong for
        good (:func:`api_key_rejected`); if so, fail the connection (nothing is retried)."""
        rest_status, rest_text = await self._probe_rest()
        if self.failure is not None:
            return  # another shard found out first
        if not api_key_rejected(refused[0], rest_status):
            logger.info("Realtime refused the API key (HTTP %d) but PostgREST answered %s: "
                        "retrying", refused[0], rest_status)
            return
        self._reject(ApiKeyRejected(refused[1], rest_reason=rest_text, status=refused[0],
                                    key=self.api_key_name))

    async def _probe_rest(self) -> tuple[int | None, str | None]:
        """``GET <rest_url>/`` with the API key alone: ``(status, message)``, or ``(None,
        None)`` when there is no REST URL or no answer."""
        if not self.rest_url:
            return None, None
        import httpx

        try:
            async with httpx.AsyncClient(timeout=10.0) as http:
                response = await http.get(self.rest_url.rstrip("/") + "/",
                                          headers={"apikey": self.tokens.api_key})
        except (httpx.HTTPError, OSError) as exc:
            logger.info("checking the API key with PostgREST failed: %s", type(exc).__name__)
            return None, None
        message: str | None = None
        with contextlib.suppress(ValueError):
            body = response.json()
            if isinstance(body, dict) and isinstance(body.get("message"), str):
                message = body["message"]
        return response.status_code, message

    def _reject(self, error: ApiKeyRejected) -> None:
        """The project refused the client itself: publish it and stop every shard."""
        if self.failure is not None:
            return
        self.failure = error
        logger.error("%s", error)
        self.status.publish(ConnectionFailed(error))
        self._publish_connection(Observation.REJECTED, type(error).__name__)
        for shard in self._shards:
            shard.wake.set()

    def _listen_ended(self, shard: _Shard, task: asyncio.Task[Any]) -> None:
        """realtime-py's listen task finished: wake the watchdog (and collect its exception,
        which asyncio would otherwise report only when the task is garbage-collected)."""
        if not task.cancelled() and task.exception() is not None:
            logger.warning(
                "shard %d: realtime-py's listen task died: %s: %s",
                shard.index,
                type(task.exception()).__name__,
                mask(str(task.exception())),
            )
        shard.wake.set()

    async def _watch(self, shard: _Shard, client: AsyncRealtimeClient) -> str:
        """Return why the socket must be rebuilt: drop, close, heartbeat, listen-died, idle."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            if not shard.members:
                return "idle"
            if shard.lost_reason is not None:
                return shard.lost_reason
            listen = client._listen_task
            if not client.is_connected:
                return "drop"
            if listen is not None and listen.done():
                # realtime-py's listen task ended while the socket object is still held:
                # nothing would ever be received again (python-clients.md §3).
                return "listen-died"
            if shard.monitor.dead(now, joins_pending=shard.joins_pending):
                return "heartbeat"
            if shard.monitor.due(now):
                ref = shard.monitor.sent(now)
                try:
                    await client.send(
                        Message(topic="phoenix", event="heartbeat", payload={}, ref=ref)
                    )
                except Exception as exc:
                    logger.info("shard %d: heartbeat send failed: %s", shard.index, exc)
                    return "drop"
            now = loop.time()
            timeout = shard.monitor.next_deadline(now, joins_pending=shard.joins_pending) - now
            shard.wake.clear()
            # Not asyncio.wait_for: on 3.11 it can swallow aclose()'s cancellation, and this
            # loop would then never end (see supasync.core.waiting).
            await wait_event(shard.wake, max(timeout, 0.01))

    async def _discard_client(self, client: AsyncRealtimeClient) -> None:
        """Close a client for good; its channels' timers are cancelled so nothing revives it."""
        for channel in list(client.channels.values()):
            channel.rejoin_timer.reset()
            channel.join_push.destroy()
        try:
            await asyncio.wait_for(client.close(), 5)
        except Exception as exc:  # a broken socket may fail to close cleanly; it is gone anyway
            logger.debug("closing a discarded realtime client failed: %s", exc)

    # -- one subscription's channel --------------------------------------------------------
    async def _run_member(
        self, shard: _Shard, client: AsyncRealtimeClient, member: _Member
    ) -> None:
        loop = asyncio.get_running_loop()
        name = member.sub.name
        while not self._closing and client.is_connected:
            try:
                channel = await self._join(shard, client, member)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("subscription %r: join failed: %s", name, mask(str(exc)))
                member.settle(Outcome.RETRY, "join failed", None)
                channel = None
            outcome, reason, error = await self._await_outcome(member)
            member.channel = None
            if channel is not None:
                await self._leave_member(client, member, channel)
            if outcome is Outcome.SOCKET:
                shard.lost_reason = shard.lost_reason or reason
                shard.wake.set()
                return
            if outcome is Outcome.FAILED:
                self._fail(member, error or SubscriptionError(name, reason, retryable=False))
                return
            self._lost(member, reason)
            if outcome is Outcome.TOKEN:
                logger.info("subscription %r: token expired; refreshing and rejoining", name)
                try:
                    # The subscription's own keeper if it has one: only its user's token.
                    await (_own_tokens(member.sub) or self.tokens).refresh(
                        reason="token-expired")
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    logger.warning("subscription %r: token refresh failed: %s", name, exc)
            delay = rejoin_delay(outcome, reason, member.backoff, loop.time(),
                                 fresh_token_tried=member.fresh_token_tried)
            member.fresh_token_tried = member.fresh_token_tried or (
                outcome is Outcome.TOKEN and delay == 0.0)
            logger.info("subscription %r: %s; rejoining in %.2f s", name, reason, delay)
            await asyncio.sleep(delay)

    async def _join(
        self, shard: _Shard, client: AsyncRealtimeClient, member: _Member
    ) -> AsyncRealtimeChannel:
        sub = member.sub
        own = _own_tokens(sub)
        if own is None:
            token = await self.tokens.token()
            if client.access_token != token:
                await client.set_auth(token)
        else:
            token = await own.token()
        member.joins += 1
        if not isinstance(sub, Subscription):
            return await self._join_endpoint(shard, client, member, sub)
        topic = f"{sub.name}~{next(self._topics)}"
        channel: AsyncRealtimeChannel
        if own is not None and isinstance(client, TappedRealtimeClient):
            channel = client.channel_with_token(topic, token)
        else:
            channel = client.channel(topic)
        for binding in sub.bindings:
            channel.on_postgres_changes(
                binding.event,  # type: ignore[arg-type]  # realtime-py's str enum
                callback=_contained(sub._feed),
                table=sub.table,
                schema=sub.schema,
                filter=binding.filter,
                select=list(binding.select) if binding.select is not None else None,
            )

        # Both callbacks run inside realtime-py's listen task, where an exception would end
        # the task and silence every channel of the socket (python-clients.md §3): never raise.
        @_contained
        def on_system(payload: Any) -> None:
            if member.channel is not channel:
                return
            if payload.extension == "postgres_changes" and "Subscribed" in payload.message:
                self._subscribed(member)

        @_contained
        def on_state(status: RealtimeSubscribeStates, error: Exception | None) -> None:
            if member.channel is not channel:
                return
            if status != RealtimeSubscribeStates.SUBSCRIBED:
                # We decide about rejoins, not realtime-py's timer (see module docstring).
                channel.rejoin_timer.reset()
            outcome, reason, typed = channel_outcome(status, error, sub.name)
            if outcome is Outcome.JOINED:
                logger.debug("subscription %r: joined %s", sub.name, channel.topic)
                return
            if outcome is Outcome.SOCKET and shard.lost_reason is None:
                # Recorded here, synchronously, so the watchdog (woken by the same socket
                # loss) reports a clean close as "close" rather than a generic "drop".
                shard.lost_reason = reason
                shard.wake.set()
            member.settle(outcome, reason, typed)

        channel.on_system(on_system)
        return await self._subscribe_member(shard, client, member, channel, on_state)

    async def _join_endpoint(
        self, shard: _Shard, client: AsyncRealtimeClient, member: _Member, sub: ChannelEndpoint
    ) -> AsyncRealtimeChannel:
        """Join a broadcast/presence channel: live at the join reply (see ChannelEndpoint)."""
        channel = sub._open_channel(client)

        @_contained
        def on_state(status: RealtimeSubscribeStates, error: Exception | None) -> None:
            if member.channel is not channel:
                return
            if status != RealtimeSubscribeStates.SUBSCRIBED:
                channel.rejoin_timer.reset()  # we decide about rejoins (module docstring)
            outcome, reason, typed = channel_outcome(status, error, sub.name)
            if outcome is Outcome.JOINED:
                logger.debug("channel %r: joined", sub.name)
                self._subscribed(member, "joined")
                return
            if outcome is Outcome.SOCKET and shard.lost_reason is None:
                shard.lost_reason = reason
                shard.wake.set()
            member.settle(outcome, reason, typed)

        return await self._subscribe_member(shard, client, member, channel, on_state)

    async def _subscribe_member(
        self, shard: _Shard, client: AsyncRealtimeClient, member: _Member,
        channel: AsyncRealtimeChannel,
        on_state: Callable[[RealtimeSubscribeStates, Exception | None], None],
    ) -> AsyncRealtimeChannel:
        """Make *channel* the member's and join it (a subscription's or a channel endpoint's:
        both settle through *on_state*); on a socket already gone the member settles as a
        drop without joining."""
        member.outcome = None
        member.signal.clear()
        member.live = False
        member.channel = channel
        if not client.is_connected:
            member.settle(Outcome.SOCKET, "drop", None)
            return channel
        shard.joins_pending += 1
        try:
            await channel.subscribe(on_state)
        finally:
            shard.joins_pending -= 1
            if not shard.joins_pending:
                shard.monitor.joins_settled(asyncio.get_running_loop().time())
                shard.wake.set()  # the heartbeat verdict applies again
        return channel

    async def _leave_member(
        self, client: AsyncRealtimeClient, member: _Member, channel: AsyncRealtimeChannel
    ) -> None:
        if isinstance(member.sub, Subscription):
            await self._leave(client, channel)
        else:
            await member.sub._leave_channel(client, channel)

    async def _await_outcome(
        self, member: _Member
    ) -> tuple[Outcome, str, SubscriptionError | None]:
        """Wait for the current channel's outcome, enforcing the "Subscribed" deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.subscribed_timeout
        while member.outcome is None:
            # No await between the check above and clear(): callbacks cannot slip in between.
            member.signal.clear()
            if member.live:
                await member.signal.wait()
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                member.settle(
                    Outcome.RETRY,
                    f"no 'Subscribed to PostgreSQL' within {self.options.subscribed_timeout:g} s",
                    None,
                )
                break
            await wait_event(member.signal, remaining)
        outcome = member.outcome
        assert outcome is not None
        return outcome

    async def _leave(self, client: AsyncRealtimeClient, channel: AsyncRealtimeChannel) -> None:
        channel.rejoin_timer.reset()
        if client.is_connected and client.channels.get(channel.topic) is channel:
            try:
                await channel.unsubscribe()
            except Exception as exc:
                logger.debug("leaving %s failed: %s", channel.topic, exc)
        else:
            channel.join_push.destroy()
            client._remove_channel(channel)

    async def _stop_member(self, shard: _Shard, member: _Member, *, leave: bool = True) -> None:
        task, member.task = member.task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        channel, member.channel = member.channel, None
        if channel is not None and leave and shard.client is not None:
            await self._leave_member(shard.client, member, channel)

    # -- state bookkeeping -----------------------------------------------------------------
    def _subscribed(self, member: _Member, reason: str = "Subscribed to PostgreSQL") -> None:
        if member.live:
            return  # repeated after access_token refreshes (protocol doc §4): nothing changed
        member.live = True
        member.fresh_token_tried = False
        member.backoff.success(asyncio.get_running_loop().time())
        member.signal.set()
        name = member.sub.name
        if self._states.get(name) not in (SubscriptionState.PENDING, SubscriptionState.GAP):
            return  # failed, closed or removed meanwhile
        self._transition(name, SubscriptionEvent.SUBSCRIBED, reason)
        member.sub._mark_subscribed()

    def _lost(self, member: _Member, reason: str) -> None:
        member.live = False
        name = member.sub.name
        previous = self._states.get(name)
        if previous is None or previous in (SubscriptionState.FAILED, SubscriptionState.CLOSED):
            return
        self._transition(name, SubscriptionEvent.LOST, reason)
        if previous is SubscriptionState.LIVE:
            if isinstance(member.sub, Subscription) or member.sub.repairs_gaps:
                self.status.publish(GapOpened(name, utcnow(), reason))
            member.sub._mark_gap(reason)

    def _fail(self, member: _Member, error: SubscriptionError) -> None:
        member.live = False
        name = member.sub.name
        member.sub.error = error
        logger.error("subscription %r failed permanently: %s", name, error)
        self._transition(name, SubscriptionEvent.FAILED, type(error).__name__)
        self.status.publish(SubscriptionFailed(name, error))

    def _overflow(self, member: _Member) -> None:
        member.settle(Outcome.RETRY, "overflow", None)

    def _transition(self, name: str, event: SubscriptionEvent, reason: str) -> None:
        previous = self._states.get(name)
        if previous is None:
            return
        self._set_state(name, next_subscription_state(previous, event), reason, previous)
        self._update_connection(f"{name}: {reason}")

    def _set_state(
        self,
        name: str,
        state: SubscriptionState,
        reason: str,
        previous: SubscriptionState | None,
    ) -> None:
        self._states[name] = state
        if state is not previous:
            self.status.publish(SubscriptionStateChanged(name, state, utcnow(), reason, previous))

    def _update_connection(self, reason: str) -> None:
        if self._closing or not self._started:
            return
        self._publish_connection(observe(self._states), reason)

    def _publish_connection(self, observation: Observation, reason: str) -> None:
        previous = self.status.state
        state = next_connection_state(previous, observation)
        if state is not previous:
            self.status.publish(StateChanged(state, utcnow(), reason, previous))

    def _info_for(self, name: str) -> SubscriptionInfo | None:
        """The SubscriptionInfo of the subscription an endpoint feeds (set by the endpoint's
        owner through :attr:`endpoint_subscriptions`)."""
        sub = self.endpoint_subscriptions.get(name)
        return self._info(sub) if sub is not None else None

    def _info(self, sub: Subscription) -> SubscriptionInfo:
        def report(event: object) -> None:
            self.status.publish(_as_status_event(event))

        return SubscriptionInfo(
            name=sub.name,
            schema=sub.schema,
            table=sub.table,
            events=sub.events,
            filter=sub.filter,
            columns=sub.columns,
            primary_key=sub.primary_key,
            rest_url=self.rest_url,
            api_key=self.tokens.api_key,
            # Repair reads act as the subscription's own token when it has one: RLS decides.
            token=(sub.tokens or self.tokens).token,
            report=report,
            consumed=lambda: sub.consumed,
        )

    async def _push_token(self, token: str) -> None:
        """Give a refreshed token to every live socket (pushes + join payloads, §7.2)."""
        for shard in self._shards:
            client = shard.client
            if client is not None and client.is_connected:
                try:
                    await client.set_auth(token)
                except Exception as exc:
                    logger.warning("shard %d: pushing a new token failed: %s", shard.index, exc)


    async def _push_member_token(self, member: _Member, token: str) -> None:
        """Give a subscription's own refreshed token to its channel only (an ``access_token``
        push on its topic, and its stored join payload for rejoins)."""
        shard = self._where.get(member.sub.name)
        channel = member.channel
        client = shard.client if shard is not None else None
        if (isinstance(channel, OwnTokenChannel) and isinstance(client, TappedRealtimeClient)
                and client.is_connected):
            try:
                await client.set_channel_token(channel, token)
            except Exception as exc:
                logger.warning("subscription %r: pushing its new token failed: %s",
                               member.sub.name, mask(str(exc)))


def _own_tokens(sub: Subscription | ChannelEndpoint) -> TokenSource | None:
    """A subscription's own token keeper (None: it acts with the connection's)."""
    return sub.tokens if isinstance(sub, Subscription) else None


_P = ParamSpec("_P")


def _contained(fn: Callable[_P, None]) -> Callable[_P, None]:
    """Wrap a callback realtime-py runs in its listen task so it logs instead of raising."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> None:
        try:
            fn(*args, **kwargs)
        except Exception:
            logger.exception("supasync callback %s failed (contained)", fn.__qualname__)

    return wrapper


def _as_status_event(event: object) -> StatusEvent:
    allowed = (
        StateChanged,
        SubscriptionStateChanged,
        GapOpened,
        GapRepaired,
        SubscriptionFailed,
        ConnectionFailed,
        HandlerFailed,
    )
    if not isinstance(event, allowed):
        raise TypeError(f"not a status event: {type(event).__name__}")
    return event

