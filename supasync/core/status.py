"""The status model: connection and subscription states, status events, and the status stream.

Theory of operation
-------------------
A supasync client has one **connection state** (:class:`ConnectionState`) and one **subscription
state** per declared subscription (:class:`SubscriptionState`). Both are driven by tables, in the
manner of h11's ``_state.py``: every legal transition is a row in :data:`SUBSCRIPTION_TRANSITIONS`
or :data:`CONNECTION_TRANSITIONS`, and nothing else changes a state.

* A subscription moves on what the server and the socket tell us (:class:`SubscriptionEvent`):
  ``subscribed`` (the server's ``system`` "Subscribed to PostgreSQL", protocol doc §4 - *not*
  the join reply, which comes before CDC is ready), ``lost`` (drop, clean close, token expiry,
  transient error, restart), ``failed`` (a permanent error such as a rejected filter) and
  ``closed`` (the app removed it or the client stopped).
* The connection state is not driven by socket events directly: it is the aggregate of the
  subscription states. :func:`observe` reduces the subscription states to an
  :class:`Observation` and :data:`CONNECTION_TRANSITIONS` maps ``(state, observation)`` to the
  next state. So "live" always means "every declared subscription is receiving changes", and a
  socket that is up but whose channels were all refused is not called live.

The status stream (:class:`StatusStream`) carries immutable events (:class:`StateChanged`,
:class:`SubscriptionStateChanged`, :class:`GapOpened`, :class:`GapRepaired`,
:class:`SubscriptionFailed`, :class:`HandlerFailed`). Publishing never blocks the connection:
each ``async for`` reader has a bounded buffer (oldest events dropped and counted when a reader
stalls), callbacks are called synchronously or scheduled as tasks, and a failing callback is
logged, never propagated.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as _dt
import enum
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias, cast

__all__ = [
    "CONNECTION_TRANSITIONS",
    "SUBSCRIPTION_TRANSITIONS",
    "ConnectionFailed",
    "ConnectionState",
    "GapOpened",
    "GapRepaired",
    "HandlerFailed",
    "IllegalTransition",
    "Observation",
    "StateChanged",
    "StatusEvent",
    "StatusStream",
    "SubscriptionEvent",
    "SubscriptionFailed",
    "SubscriptionState",
    "SubscriptionStateChanged",
    "next_connection_state",
    "next_subscription_state",
    "observe",
    "utcnow",
]

logger = logging.getLogger("supasync.core.status")


def utcnow() -> _dt.datetime:
    """The current time, timezone-aware UTC (the ``at`` of every status event)."""
    return _dt.datetime.now(_dt.UTC)


# --------------------------------------------------------------------------- states


class ConnectionState(enum.StrEnum):
    """The client's overall state, as apps watch it.

    * ``connecting``: subscriptions are joining for the first time (at start, or added later)
      and none has been lost or has failed.
    * ``live``: every declared subscription is receiving changes.
    * ``degraded``: some subscriptions are live, others are recovering or have failed for good
      (see :class:`SubscriptionFailed`).
    * ``reconnecting``: nothing is live and at least one subscription that was live is being
      recovered (socket lost, server restart, ...).
    * ``failed``: the project refused the client itself (its API key: see
      :class:`~supasync.core.errors.ApiKeyRejected` and :class:`ConnectionFailed`). Nothing is
      retried; only closing the client (``stopped``) leaves it. Fix the configuration.
    * ``stopped``: the client was closed. Terminal.
    """

    CONNECTING = "connecting"
    LIVE = "live"
    DEGRADED = "degraded"
    RECONNECTING = "reconnecting"
    FAILED = "failed"
    STOPPED = "stopped"


class SubscriptionState(enum.StrEnum):
    """One subscription's state.

    * ``pending``: declared, first join not yet confirmed by "Subscribed to PostgreSQL".
    * ``live``: the server confirmed the CDC subscription; changes flow.
    * ``gap``: was live, then lost; changes may be missed until it is live again.
    * ``failed``: the server rejected it permanently (bad filter, table not published,
      unauthorised); it is not retried. Fix the subscription and subscribe again.
    * ``closed``: removed by the app, or the client stopped. Terminal.
    """

    PENDING = "pending"
    LIVE = "live"
    GAP = "gap"
    FAILED = "failed"
    CLOSED = "closed"


class SubscriptionEvent(enum.StrEnum):
    """What can happen to a subscription (inputs of :data:`SUBSCRIPTION_TRANSITIONS`)."""

    SUBSCRIBED = "subscribed"
    LOST = "lost"
    FAILED = "failed"
    CLOSED = "closed"


class Observation(enum.StrEnum):
    """The subscription states reduced to what matters for the connection state (:func:`observe`).

    * ``all_live``: every subscription is live (or there are none).
    * ``joining``: none lost or failed; some are still on their first join.
    * ``partial``: some are live, others lost or failed.
    * ``down``: none live, at least one lost after being live.
    * ``failed``: none live or lost, at least one failed (others may still be joining).
    * ``rejected``: the server refused the client itself (its API key), whatever the
      subscriptions' states. Reported by the connection layer, not computed by :func:`observe`.
    * ``stop``: the client is stopping.
    """

    ALL_LIVE = "all_live"
    JOINING = "joining"
    PARTIAL = "partial"
    DOWN = "down"
    FAILED = "failed"
    REJECTED = "rejected"
    STOP = "stop"


class IllegalTransition(RuntimeError):
    """A state machine was asked for a transition its table does not allow (a supasync bug)."""


_S = SubscriptionState
_E = SubscriptionEvent

#: ``(subscription state, event) -> next state``. Missing rows are illegal. ``failed`` only
#: leaves for ``closed``: a permanent rejection is final for that declaration. ``subscribed``
#: is accepted in ``live`` because the server repeats "Subscribed to PostgreSQL" after every
#: access-token refresh and publication change (protocol doc §4).
SUBSCRIPTION_TRANSITIONS: Mapping[
    tuple[SubscriptionState, SubscriptionEvent], SubscriptionState
] = {
    (_S.PENDING, _E.SUBSCRIBED): _S.LIVE,
    (_S.PENDING, _E.LOST): _S.PENDING,
    (_S.PENDING, _E.FAILED): _S.FAILED,
    (_S.PENDING, _E.CLOSED): _S.CLOSED,
    (_S.LIVE, _E.SUBSCRIBED): _S.LIVE,
    (_S.LIVE, _E.LOST): _S.GAP,
    (_S.LIVE, _E.FAILED): _S.FAILED,
    (_S.LIVE, _E.CLOSED): _S.CLOSED,
    (_S.GAP, _E.SUBSCRIBED): _S.LIVE,
    (_S.GAP, _E.LOST): _S.GAP,
    (_S.GAP, _E.FAILED): _S.FAILED,
    (_S.GAP, _E.CLOSED): _S.CLOSED,
    (_S.FAILED, _E.LOST): _S.FAILED,
    (_S.FAILED, _E.FAILED): _S.FAILED,
    (_S.FAILED, _E.CLOSED): _S.CLOSED,
    (_S.CLOSED, _E.LOST): _S.CLOSED,
    (_S.CLOSED, _E.CLOSED): _S.CLOSED,
}

_C = ConnectionState
_O = Observation

#: ``(connection state, observation) -> next state``. Every pair is listed: ``stopped`` is
#: terminal and absorbs everything; ``failed`` (the API key was refused) leaves only for
#: ``stopped``, and every live state goes there on ``rejected``.
CONNECTION_TRANSITIONS: Mapping[tuple[ConnectionState, Observation], ConnectionState] = {
    (_C.CONNECTING, _O.ALL_LIVE): _C.LIVE,
    (_C.CONNECTING, _O.JOINING): _C.CONNECTING,
    (_C.CONNECTING, _O.PARTIAL): _C.DEGRADED,
    (_C.CONNECTING, _O.DOWN): _C.RECONNECTING,
    (_C.CONNECTING, _O.FAILED): _C.DEGRADED,
    (_C.CONNECTING, _O.STOP): _C.STOPPED,
    (_C.LIVE, _O.ALL_LIVE): _C.LIVE,
    # A subscription added while live is joining for the first time: not everything declared
    # is live any more, but nothing was lost either.
    (_C.LIVE, _O.JOINING): _C.CONNECTING,
    (_C.LIVE, _O.PARTIAL): _C.DEGRADED,
    (_C.LIVE, _O.DOWN): _C.RECONNECTING,
    (_C.LIVE, _O.FAILED): _C.DEGRADED,
    (_C.LIVE, _O.STOP): _C.STOPPED,
    (_C.DEGRADED, _O.ALL_LIVE): _C.LIVE,
    (_C.DEGRADED, _O.JOINING): _C.CONNECTING,
    (_C.DEGRADED, _O.PARTIAL): _C.DEGRADED,
    (_C.DEGRADED, _O.DOWN): _C.RECONNECTING,
    (_C.DEGRADED, _O.FAILED): _C.DEGRADED,
    (_C.DEGRADED, _O.STOP): _C.STOPPED,
    (_C.RECONNECTING, _O.ALL_LIVE): _C.LIVE,
    (_C.RECONNECTING, _O.JOINING): _C.CONNECTING,
    (_C.RECONNECTING, _O.PARTIAL): _C.DEGRADED,
    (_C.RECONNECTING, _O.DOWN): _C.RECONNECTING,
    (_C.RECONNECTING, _O.FAILED): _C.DEGRADED,
    (_C.RECONNECTING, _O.STOP): _C.STOPPED,
    **{(c, _O.REJECTED): _C.FAILED
       for c in (_C.CONNECTING, _C.LIVE, _C.DEGRADED, _C.RECONNECTING, _C.FAILED)},
    **{(_C.FAILED, o): _C.FAILED for o in Observation if o is not _O.STOP},
    (_C.FAILED, _O.STOP): _C.STOPPED,
    **{(_C.STOPPED, o): _C.STOPPED for o in Observation},
}


def next_subscription_state(
    state: SubscriptionState, event: SubscriptionEvent
) -> SubscriptionState:
    """Look up a subscription transition.

    Raises:
        IllegalTransition: the table has no row for ``(state, event)``.
    """
    try:
        return SUBSCRIPTION_TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(
            f"subscription cannot go from {state.value!r} on {event.value!r}"
        ) from None


def next_connection_state(state: ConnectionState, observation: Observation) -> ConnectionState:
    """Look up a connection transition (every pair is defined)."""
    return CONNECTION_TRANSITIONS[(state, observation)]


def observe(states: Mapping[str, SubscriptionState] | list[SubscriptionState]) -> Observation:
    """Reduce subscription states to an :class:`Observation`. ``closed`` ones are ignored."""
    values = list(states.values()) if isinstance(states, Mapping) else list(states)
    values = [s for s in values if s is not SubscriptionState.CLOSED]
    live = sum(1 for s in values if s is SubscriptionState.LIVE)
    gap = sum(1 for s in values if s is SubscriptionState.GAP)
    failed = sum(1 for s in values if s is SubscriptionState.FAILED)
    if live == len(values):
        return Observation.ALL_LIVE
    if gap == 0 and failed == 0:
        return Observation.JOINING
    if live:
        return Observation.PARTIAL
    if gap:
        return Observation.DOWN
    return Observation.FAILED


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class StateChanged:
    """The connection state became ``state`` (from ``previous``) at ``at`` because ``reason``."""

    state: ConnectionState
    at: _dt.datetime
    reason: str
    previous: ConnectionState | None = None


@dataclass(frozen=True, slots=True)
class SubscriptionStateChanged:
    """Subscription ``subscription`` moved from ``previous`` to ``state``."""

    subscription: str
    state: SubscriptionState
    at: _dt.datetime
    reason: str
    previous: SubscriptionState | None = None


@dataclass(frozen=True, slots=True)
class GapOpened:
    """Subscription ``subscription`` stopped being live at ``at``: changes may be missed.

    ``reason`` is one of ``first-join``, ``drop``, ``close``, ``token-expired``, ``error``,
    ``restart``, ``heartbeat``, or a server text.
    """

    subscription: str
    at: _dt.datetime
    reason: str


@dataclass(frozen=True, slots=True)
class GapRepaired:
    """The gap opened at ``opened_at`` is closed: the subscription is live and caught up.

    ``mode`` says how missed changes were recovered: ``none`` (nothing was replayed - the
    default pass-through gate), ``exact``, ``cursor``, ``diff`` or ``snapshot``. The counts are
    the replayed changes by kind. ``fallback`` says why a cheaper mode could not be used
    (e.g. the exact-mode log's retention was exceeded), or is None.
    """

    subscription: str
    at: _dt.datetime
    opened_at: _dt.datetime
    duration_s: float
    mode: str
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    fallback: str | None = None


@dataclass(frozen=True, slots=True)
class SubscriptionFailed:
    """The server rejected ``subscription`` permanently; ``error`` is a typed
    :class:`~supasync.core.errors.SubscriptionError` (or another exception) saying why and how to
    fix it.
    """

    subscription: str
    error: BaseException
    at: _dt.datetime = field(default_factory=utcnow)


@dataclass(frozen=True, slots=True)
class ConnectionFailed:
    """The project refused the client itself; ``error`` says why and how to fix it (an
    :class:`~supasync.core.errors.ApiKeyRejected`). Nothing is retried: the connection state is
    ``failed`` until the client is closed.
    """

    error: BaseException
    at: _dt.datetime = field(default_factory=utcnow)


@dataclass(frozen=True, slots=True)
class HandlerFailed:
    """A handler of ``subscription`` raised ``error`` on the change identified by ``key``.

    ``handler`` is the handler's qualified name; ``count`` is how many times it has failed so far.
    Delivery to the other handlers and subscriptions continued.
    """

    subscription: str
    handler: str
    error: BaseException
    key: tuple[Any, ...]
    count: int = 1
    at: _dt.datetime = field(default_factory=utcnow)


StatusEvent: TypeAlias = (
    StateChanged
    | SubscriptionStateChanged
    | GapOpened
    | GapRepaired
    | SubscriptionFailed
    | ConnectionFailed
    | HandlerFailed
)
StatusCallback: TypeAlias = Callable[[StatusEvent], Awaitable[None] | None]

# --------------------------------------------------------------------------- the stream

_CLOSED = object()


class _Reader:
    """One ``async for`` reader: a bounded buffer that drops the oldest events when full."""

    def __init__(self, maxlen: int) -> None:
        self.buffer: collections.deque[object] = collections.deque()
        self.maxlen = maxlen
        self.dropped = 0
        self.wakeup = asyncio.Event()

    def push(self, item: object) -> None:
        if len(self.buffer) >= self.maxlen:
            self.buffer.popleft()
            self.dropped += 1
        self.buffer.append(item)
        self.wakeup.set()


class StatusStream:
    """Status events of one client: iterate, wait, subscribe callbacks, or read the state.

    Usage::

        async for event in client.status:          # every event from now on
            ...
        await client.status.wait_for(ConnectionState.LIVE, timeout=10)
        await client.status.wait_for(lambda e: isinstance(e, GapRepaired), timeout=30)
        unsubscribe = client.status.subscribe(print)
        client.status.state                         # ConnectionState
        client.status.subscriptions                 # {name: SubscriptionState}
        client.status.history                       # recent events, oldest first

    Each ``async for`` reader sees every event published after it started iterating; a reader
    that falls more than ``reader_buffer`` events behind loses the oldest ones (counted in
    :attr:`dropped`) rather than holding the connection back. Iteration ends when the stream is
    closed (the client stopped).

    Only the connection layer publishes; apps read.
    """

    def __init__(self, *, history: int = 500, reader_buffer: int = 1000) -> None:
        self._state = ConnectionState.CONNECTING
        self._subscriptions: dict[str, SubscriptionState] = {}
        self._unrepaired: set[str] = set()
        self._history: collections.deque[StatusEvent] = collections.deque(maxlen=history)
        self._readers: set[_Reader] = set()
        self._callbacks: list[StatusCallback] = []
        self._tasks: set[asyncio.Future[Any]] = set()
        self._reader_buffer = reader_buffer
        self._closed = False
        self.dropped = 0
        self._last_state_event = StateChanged(
            ConnectionState.CONNECTING, utcnow(), "created", None
        )

    # -- reading -------------------------------------------------------------------------
    @property
    def state(self) -> ConnectionState:
        """The current connection state."""
        return self._state

    @property
    def subscriptions(self) -> Mapping[str, SubscriptionState]:
        """A snapshot of every subscription's state by name."""
        return dict(self._subscriptions)

    @property
    def unrepaired(self) -> frozenset[str]:
        """Subscriptions whose latest :class:`GapOpened` has no :class:`GapRepaired` yet (the
        first join counts as a gap: its end is the first snapshot, or nothing to repair)."""
        return frozenset(self._unrepaired)

    @property
    def history(self) -> list[StatusEvent]:
        """The most recent events (up to ``history``), oldest first."""
        return list(self._history)

    @property
    def closed(self) -> bool:
        return self._closed

    def __aiter__(self) -> AsyncIterator[StatusEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[StatusEvent]:
        reader = _Reader(self._reader_buffer)
        if self._closed:
            return
        self._readers.add(reader)
        try:
            while True:
                while reader.buffer:
                    item = reader.buffer.popleft()
                    if item is _CLOSED:
                        return
                    yield cast(StatusEvent, item)
                reader.wakeup.clear()
                await reader.wakeup.wait()
        finally:
            self.dropped += reader.dropped
            self._readers.discard(reader)

    async def wait_for(
        self,
        target: ConnectionState | Callable[[StatusEvent], bool],
        timeout: float | None = None,  # noqa: ASYNC109 - the documented, httpx-like signature
    ) -> StatusEvent:
        """Wait until the connection is in state ``target``, or for an event matching a predicate.

        With a :class:`ConnectionState`, returns at once (with the latest :class:`StateChanged`)
        when the state already is ``target``. With a predicate, waits for the next published
        event for which it returns true (past events are not considered: use :attr:`history`).

        Raises:
            TimeoutError: nothing matched within ``timeout`` seconds (None waits for ever).
            RuntimeError: the stream closed first (the client stopped) - unless the target was
                ``ConnectionState.STOPPED``.
        """
        predicate: Callable[[StatusEvent], bool]
        if isinstance(target, ConnectionState):
            if self._state is target:
                return self._last_state_event
            wanted = target

            def predicate(event: StatusEvent) -> bool:
                return isinstance(event, StateChanged) and event.state is wanted

        else:
            predicate = target
        future: asyncio.Future[StatusEvent] = asyncio.get_running_loop().create_future()

        def check(event: StatusEvent) -> None:
            if not future.done() and predicate(event):
                future.set_result(event)

        self._callbacks.append(check)
        try:
            if self._closed:
                raise RuntimeError("the status stream is closed: the client has stopped")
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            what = target.value if isinstance(target, ConnectionState) else "a matching event"
            raise TimeoutError(
                f"waited {timeout} s for {what}; the connection is {self._state.value}"
            ) from None
        finally:
            self._callbacks.remove(check)

    def subscribe(self, callback: StatusCallback) -> Callable[[], None]:
        """Call ``callback(event)`` for every event from now on; returns an unsubscribe function.

        Sync callbacks run inline when the event is published (keep them short); async ones are
        scheduled as tasks. Exceptions are logged and otherwise ignored.
        """
        self._callbacks.append(callback)

        def unsubscribe() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return unsubscribe

    # -- publishing (connection layer only) ------------------------------------------------
    def publish(self, event: StatusEvent) -> None:
        """Record ``event``; hand it to readers, waiters and callbacks. Never blocks or raises."""
        if self._closed:
            return
        if isinstance(event, StateChanged):
            self._state = event.state
            self._last_state_event = event
        elif isinstance(event, SubscriptionStateChanged):
            self._subscriptions[event.subscription] = event.state
            if event.state in (SubscriptionState.FAILED, SubscriptionState.CLOSED):
                self._unrepaired.discard(event.subscription)
        elif isinstance(event, GapOpened):
            self._unrepaired.add(event.subscription)
        elif isinstance(event, GapRepaired):
            self._unrepaired.discard(event.subscription)
        self._history.append(event)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("= %s", _describe(event))
        for reader in self._readers:
            reader.push(event)
        for callback in list(self._callbacks):
            try:
                result = callback(event)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._tasks.add(task)
                    task.add_done_callback(self._task_done)
            except Exception:
                logger.exception("status callback %r failed on %s", callback, type(event).__name__)

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("async status callback failed", exc_info=task.exception())

    def forget_subscription(self, name: str) -> None:
        """Drop a removed subscription from :attr:`subscriptions`."""
        self._subscriptions.pop(name, None)

    def close(self) -> None:
        """End every ``async for`` reader (after what they have buffered). Idempotent."""
        if self._closed:
            return
        self._closed = True
        for reader in self._readers:
            reader.buffer.append(_CLOSED)
            reader.wakeup.set()


def _describe(event: StatusEvent) -> str:
    if isinstance(event, StateChanged):
        prev_state = event.previous.value if event.previous else None
        return f"connection {prev_state} -> {event.state.value}: {event.reason}"
    if isinstance(event, SubscriptionStateChanged):
        prev = event.previous.value if event.previous else None
        return f"subscription {event.subscription!r} {prev} -> {event.state.value}: {event.reason}"
    if isinstance(event, GapOpened):
        return f"gap opened on {event.subscription!r}: {event.reason}"
    if isinstance(event, GapRepaired):
        return (
            f"gap repaired on {event.subscription!r} after {event.duration_s:.3f} s "
            f"(mode {event.mode}, +{event.inserted} ~{event.updated} -{event.deleted})"
        )
    if isinstance(event, SubscriptionFailed):
        return f"subscription {event.subscription!r} failed: {type(event.error).__name__}"
    if isinstance(event, ConnectionFailed):
        return f"connection failed: {type(event.error).__name__}"
    return (
        f"handler {event.handler} of {event.subscription!r} failed "
        f"({type(event.error).__name__}, {event.count} so far)"
    )
