"""Declared subscriptions: bindings, the gate protocol, DELETE matching, and safe delivery.

A :class:`Subscription` is declared (table, events, filter, columns, primary key, handlers) and
then driven by the connection layer (:mod:`supasync.client.connection`). Changes flow through it
like this::

    binding callback (sync, inside the socket's listen loop; supasync.client.frames)
      └─▶ intake: bounded; overflow drops and asks the connection for a rebuild (a gap)
            └─▶ pump task: decode (changes.decode_postgres_changes), local DELETE matching,
                           gap / subscribed markers in arrival order
                  └─▶ gate.live(change) ──▶ emit(change) ──▶ one bounded queue per handler and
                                                             per iterator (full: backpressure)

Why each piece:

* realtime-py calls postgres_changes callbacks synchronously and a raising callback kills its
  listen task for every channel on the socket (docs/python-clients.md §3), so the callback only
  appends to the intake; nothing user-supplied runs there.
* An ``async def`` handler given to realtime-py never runs (§2.3). Here handlers may be sync or
  async. **Sync handlers run in a worker thread** (``asyncio.to_thread``) so a slow handler
  cannot stall the event loop, heartbeats included; they see changes one at a time, in order
  (the changes already queued go to the thread together, one hop per batch, so a burst costs
  one thread round trip, not one per change).
  Pass ``sync_handlers="inline"`` to run them on the loop instead (cheaper, but they must be
  quick and must not block).
* Every handler is isolated: an exception is logged with the change's table and key, counted per
  handler, reported as :class:`~supasync.core.status.HandlerFailed`, and the handler keeps receiving
  the next changes; other handlers and subscriptions are unaffected.
* Memory is bounded: every consumer queue holds at most ``queue_size`` items and the intake
  (raw payloads realtime-py already parsed) at most ``max(10,000, 10 x queue_size)``, enough
  for a burst while the pipeline catches up. A
  slow consumer makes ``emit`` wait (backpressure); when the intake itself overflows (the
  socket delivers faster than the pipeline drains) changes are dropped, counted, and the
  subscription is rebuilt so the gate can repair the gap - never unbounded growth.
* DELETEs and filters: the server cannot evaluate a filter on a DELETE unless it only touches
  primary-key columns (walrus PR #76; protocol doc §5.3; python-clients.md §7). So for filters on
  other columns the DELETE binding is made without a filter and matched here: a DELETE is
  delivered when its key belongs to a row this subscription has seen match (a key set fed by
  every INSERT/UPDATE it delivered, including replayed and snapshot rows) or when the old record
  carries every filter column and matches (REPLICA IDENTITY FULL). See :class:`DeleteMatcher`.
* UPDATEs and filters (move-outs and move-ins): the server evaluates a filter on the *new* row
  only, so an UPDATE that takes a row out of the filter sends nothing (realtime#414) and one
  that brings a row in arrives as an UPDATE of a row the subscriber never had. With
  ``moves=True`` (the default) a filter on non-key columns gets an UPDATE binding *without* the
  server-side filter, and every UPDATE is judged here against the new row
  (:mod:`supasync.core.moves`): a move-out is delivered as a DELETE, a move-in as an INSERT, an
  UPDATE of a row that neither matches nor was held is dropped. A gate that holds the rows
  (``filters_updates``, e.g. the cache) judges them itself, with exact knowledge of what it
  holds. The cost: every UPDATE of the table (that RLS lets through) crosses the socket.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeAlias

from ..core.changes import Change, decode_postgres_changes
from ..core.errors import ChangeDecodeError, ConfigError
from ..core.filters import Filter, as_filter
from ..core.moves import apply_move, classify_update
from ..core.status import GapRepaired, HandlerFailed, utcnow
from ..store.journal import JournalRead
from ..store.reads import ReadResult
from .reads import ReadModel
from .tokens import TokenKeeper

__all__ = [
    "ALL_EVENTS",
    "Binding",
    "DeleteMatcher",
    "Emit",
    "Gate",
    "Handler",
    "PassThroughGate",
    "Subscription",
    "SubscriptionInfo",
    "SubscriptionStats",
    "normalize_events",
    "plan_bindings",
]

logger = logging.getLogger("supasync.client.subscription")

ALL_EVENTS: frozenset[str] = frozenset({"INSERT", "UPDATE", "DELETE"})

Handler: TypeAlias = Callable[[Change], Awaitable[None] | None]

# --------------------------------------------------------------------------- the gate protocol


class Emit(Protocol):
    """Hand a change to the subscription's consumers; waits while a consumer's queue is full."""

    async def __call__(self, change: Change) -> None: ...


@dataclass(frozen=True)
class SubscriptionInfo:
    """What a gate needs to know about its subscription.

    ``token()`` returns a currently valid access token for PostgREST (the subscriber's own, so
    RLS applies to repair as it does live); ``report(event)`` publishes a status event such as
    :class:`~supasync.core.status.GapRepaired` on the client's status stream.
    """

    name: str
    schema: str
    table: str
    events: frozenset[str]
    filter: Filter
    columns: tuple[str, ...] | None
    primary_key: tuple[str, ...]
    rest_url: str
    api_key: str
    token: Callable[[], Awaitable[str]]
    report: Callable[[object], None]
    #: Whether anything consumes what is emitted now (a handler or a running iterator); a
    #: gate may skip building changes nobody would receive (a read model's snapshot).
    consumed: Callable[[], bool] = lambda: True


class Gate(Protocol):
    """Sits between the live feed and delivery; decides when changes are emitted.

    Call order, made by the subscription (never concurrently except as noted):

    1. ``open(info, emit)`` once, before the first join.
    2. ``gap(reason)`` whenever the subscription is not live: before the first join with
       ``reason="first-join"``, then on a drop, clean close, token expiry, error or restart.
    3. ``subscribed()`` after the server's "Subscribed to PostgreSQL". It runs **in its own
       task** and may take long (a repair); ``live()`` keeps being called meanwhile with every
       live change. When it returns the gap is closed, and the gate reports
       :class:`~supasync.core.status.GapRepaired`. If the subscription is lost again before it
       returns, the task is **cancelled** (and awaited) before ``gap()`` is called again.
    4. ``live(change)`` with every live change, in arrival order.
    5. ``close()`` once at the end (after cancelling a running ``subscribed()``).

    ``emit`` may be awaited from ``live`` and from ``subscribed``; it waits while the delivery
    queue is full (backpressure).

    Optional attribute ``filters_deletes``: a gate that holds the subscription's rows (a cache)
    and itself drops DELETEs for keys it does not hold sets it to True. The subscription then
    passes it every DELETE of the unfiltered DELETE binding instead of pre-filtering them with
    :class:`DeleteMatcher`, whose key set cannot know rows the gate loaded from a persisted
    cache or has not emitted yet during a repair.

    Optional attribute ``filters_updates``: a gate that applies the subscription's filter to
    UPDATEs itself (a move-out becomes a DELETE, a move-in an INSERT, an UPDATE of a row it
    neither holds nor should hold is dropped) sets it to True. The subscription then passes it
    every UPDATE of the unfiltered UPDATE binding (``moves=True``), whatever ``events`` says;
    the gate delivers only the events asked for. Otherwise the subscription judges them with
    :func:`~supasync.core.moves.classify_update`.
    """

    async def open(self, info: SubscriptionInfo, emit: Emit) -> None: ...

    async def gap(self, reason: str) -> None: ...

    async def subscribed(self) -> None: ...

    async def live(self, change: Change) -> None: ...

    async def close(self) -> None: ...


class PassThroughGate:
    """The default gate: emits every live change at once, repairs nothing.

    On ``subscribed()`` it reports :class:`~supasync.core.status.GapRepaired` with ``mode="none"``
    and zero counts, so the status stream always pairs a gap with its end.
    """

    def __init__(self) -> None:
        self._info: SubscriptionInfo | None = None
        self._emit: Emit | None = None
        self._opened_at = utcnow()

    async def open(self, info: SubscriptionInfo, emit: Emit) -> None:
        self._info = info
        self._emit = emit

    async def gap(self, reason: str) -> None:
        del reason
        self._opened_at = utcnow()

    async def subscribed(self) -> None:
        assert self._info is not None, "PassThroughGate.open() was not called"
        now = utcnow()
        self._info.report(
            GapRepaired(
                subscription=self._info.name,
                at=now,
                opened_at=self._opened_at,
                duration_s=(now - self._opened_at).total_seconds(),
                mode="none",
            )
        )

    async def live(self, change: Change) -> None:
        assert self._emit is not None, "PassThroughGate.open() was not called"
        await self._emit(change)

    async def close(self) -> None:
        return None


# --------------------------------------------------------------------------- pure parts


def normalize_events(events: str | Iterable[str]) -> frozenset[str]:
    """``"*"``, ``"insert"``, ``["INSERT", "DELETE"]`` ... -> a frozenset of upper-case event names.

    Raises:
        ConfigError: an unknown event name, or an empty set.
    """
    items = [events] if isinstance(events, str) else list(events)
    out: set[str] = set()
    for item in items:
        name = str(item).strip().upper()
        if name == "*":
            out |= ALL_EVENTS
        elif name in ALL_EVENTS:
            out.add(name)
        else:
            raise ConfigError(
                f"unknown event {item!r}",
                fix='use "*" or any of "INSERT", "UPDATE", "DELETE"',
            )
    if not out:
        raise ConfigError("no events given", fix='use "*" for every event')
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class Binding:
    """One postgres_changes binding to register on the channel before the join.

    ``filter`` is the Realtime filter string or None; ``local_delete`` marks the unfiltered
    DELETE binding whose events :class:`DeleteMatcher` must check, ``local_update`` the
    unfiltered UPDATE binding whose events are judged against the filter locally (move-ins
    and move-outs, :mod:`supasync.core.moves`).
    """

    event: str
    filter: str | None
    select: tuple[str, ...] | None = None
    local_delete: bool = False
    local_update: bool = False


def plan_bindings(
    events: frozenset[str],
    filter: Filter,
    primary_key: Sequence[str],
    columns: Sequence[str] | None = None,
    *,
    moves: bool = True,
) -> tuple[Binding, ...]:
    """The bindings for a subscription, with DELETE (and UPDATE) split off when the server
    cannot filter them the way the subscriber needs.

    The server filters a DELETE only on primary-key columns (walrus PR #76; protocol doc §5.3),
    so a filter naming any other column gets an unfiltered DELETE binding matched locally. It
    filters an UPDATE on the new row only, so with *moves* such a filter also gets an unfiltered
    UPDATE binding, always (move-ins are INSERTs, move-outs DELETEs for the subscriber, even if
    it asked for no UPDATEs). One ``*`` binding is used when all three events share the same filter.
    ``columns`` (``select``) always gains the primary-key columns, so every change carries its
    key, and the filter's columns, so every record can be judged against the filter.
    """
    text = filter.to_realtime() or None
    select: tuple[str, ...] | None = None
    if columns is not None:
        # The filter's columns too: records are judged against the filter locally (the
        # cache's merger, DELETE and UPDATE matching), which needs them.
        select = tuple(dict.fromkeys([*primary_key, *columns, *sorted(filter.columns)]))
    server_filters_delete = text is None or filter.columns <= frozenset(primary_key)
    local_updates = moves and not server_filters_delete
    if events == ALL_EVENTS and server_filters_delete:
        return (Binding("*", text, select),)
    out = []
    for event in ("INSERT", "UPDATE", "DELETE"):
        if event == "UPDATE" and local_updates:
            out.append(Binding("UPDATE", None, select, local_update=True))
            continue
        if event not in events:
            continue
        if event == "DELETE" and not server_filters_delete:
            out.append(Binding("DELETE", None, select, local_delete=True))
        else:
            out.append(Binding(event, text, select))
    return tuple(out)


class DeleteMatcher:
    """Decides locally whether an unfiltered DELETE belongs to a filtered subscription.

    It keeps the set of keys of rows this subscription has delivered as matching (fed with every
    INSERT/UPDATE it delivers, live, replayed or snapshot) and forgets keys on DELETE. A DELETE is
    accepted when its key is in the set, or when the old record holds every filter column and
    matches the filter (possible with REPLICA IDENTITY FULL).

    Approximations (documented, not hidden): with ``moves=False`` an UPDATE that moves a row out
    of the filter produces no event on the server (realtime issue #414), so its key stays and a
    later DELETE of it is still delivered (with ``moves=True`` the move-out is delivered as a
    DELETE and the key forgotten); and rows that existed before the subscription started are
    only known if a gate delivered them as a snapshot. Memory grows with the number of matching
    rows.
    """

    def __init__(self, filter: Filter) -> None:
        self.filter = filter
        self.keys: set[tuple[Any, ...]] = set()

    def observe(self, change: Change) -> None:
        """Record a delivered change (keys of INSERT/UPDATE added, of DELETE removed)."""
        if not change.pk:
            return
        if change.op == "DELETE":
            self.keys.discard(change.pk)
        else:
            self.keys.add(change.pk)

    def accepts(self, change: Change) -> bool:
        """Whether a DELETE received on the unfiltered binding belongs to this subscription."""
        if change.pk and change.pk in self.keys:
            return True
        old = change.old
        if old is not None and self.filter.columns and self.filter.columns <= old.keys():
            return bool(self.filter.matches(old))
        return False


@dataclass
class SubscriptionStats:
    """Counters of one subscription (read them any time)."""

    received: int = 0
    delivered: int = 0
    dropped_overflow: int = 0
    dropped_deletes: int = 0
    dropped_updates: int = 0  # UPDATEs of rows outside the filter (unfiltered UPDATE binding)
    # Changes emitted while no handler or iterator consumed (a read model); a read model's
    # first snapshot into its store is written without building changes, and not counted.
    unconsumed: int = 0
    decode_errors: int = 0
    handler_failures: dict[str, int] | None = None

    def __post_init__(self) -> None:
        if self.handler_failures is None:
            self.handler_failures = {}


# --------------------------------------------------------------------------- consumers

_END = object()
_GAP = "gap"
_SUBSCRIBED = "subscribed"


def _handler_name(handler: Callable[..., Any]) -> str:
    name = getattr(handler, "__qualname__", None) or getattr(handler, "__name__", None)
    module = getattr(handler, "__module__", None)
    if name is None:
        return repr(handler)
    return f"{module}.{name}" if module else str(name)


class _Consumer:
    """A handler or an iterator: its own bounded queue, so it sees every change in order."""

    def __init__(self, size: int, handler: Handler | None = None) -> None:
        self.queue: asyncio.Queue[object] = asyncio.Queue(maxsize=size)
        self.handler = handler
        self.name = _handler_name(handler) if handler is not None else "iterator"
        self.task: asyncio.Task[None] | None = None


# --------------------------------------------------------------------------- the subscription


class Subscription:
    """A declared postgres_changes subscription and its delivery machinery.

    Create it through :meth:`supasync.Realtime.subscribe` (which also names and connects it), or
    directly and pass it to :meth:`~supasync.Realtime.add`.

    Args:
        table: table name.
        schema: schema name.
        events: ``"*"`` or any of ``INSERT``, ``UPDATE``, ``DELETE`` (one, or an iterable).
        filter: a filter string (``"status=eq.open,priority=gt.2"``) or a
            :class:`~supasync.core.filters.Filter`; parsed now, so a bad filter raises
            :class:`~supasync.core.errors.FilterError` before anything connects.
        columns: ask the server for these columns only (``select``); the key and the filter's
            columns are always added.
        primary_key: the table's key columns (to identify rows); default ``("id",)``.
        handlers: callables taking a :class:`~supasync.core.changes.Change`, sync or async.
        name: unique within a client; default ``schema.table`` (plus a suffix if taken).
        queue_size: bound of every handler's/iterator's queue.
        intake_limit: bound of the raw-payload intake (default ``max(10,000, 10 x
            queue_size)``); past it changes are dropped and the subscription rebuilt.
        gate: a :class:`Gate` (default :class:`PassThroughGate`).
        sync_handlers: ``"thread"`` (default) or ``"inline"``: where sync handlers run.
        moves: deliver filter move-outs and move-ins live (default True). With a filter on
            non-key columns, UPDATEs are then subscribed *without* the server-side filter and
            judged locally against the new row: an UPDATE that takes a row out of the filter
            arrives as a DELETE (with the row as the subscriber had it), one that brings a row
            in as an INSERT. **Cost:** every UPDATE of the table that RLS lets through crosses
            the socket, not only those of matching rows. With a cache (gap repair on), what
            the subscriber holds is known exactly. Without one (``repair="off"``/a
            pass-through gate) only the keys delivered in this run are known: a move-out of
            another row is detected only when the old record carries the filter columns
            (REPLICA IDENTITY FULL), and its DELETE carries the server's old record (the key
            only, under the default replica identity). ``moves=False`` keeps the server-side
            filter on UPDATEs: move-outs are then not delivered at all (the row stays in the
            cache, and in handlers' view, until the next gap's repair removes it) and a move-in
            arrives as an UPDATE of a row the subscriber never had (as an INSERT with a cache).

    Iterate with ``async for change in sub``: every iterator gets every change delivered after it
    started, and iteration ends when the subscription is closed.

    Its rows, as its handlers have been given them, are a **read model** when it keeps them
    (gap repair on, the default): :meth:`get`, :meth:`rows`, :meth:`count`, :meth:`read`,
    :attr:`seq` and :meth:`changes_since` read the client's store file from any thread
    (:mod:`supasync.client.reads`). A subscription with no handler and no running iterator is
    only that: it stays subscribed, repaired and synced, and changes emitted while nobody
    consumes are not buffered anywhere - they are dropped for
    delivery (counted in ``stats.unconsumed``), never held until a consumer shows up. A handler
    added later (``on``) or an iterator started later sees changes from then on.
    """

    def __init__(
        self,
        table: str,
        *,
        schema: str = "public",
        events: str | Iterable[str] = "*",
        filter: str | Filter | None = None,
        columns: Sequence[str] | None = None,
        primary_key: Sequence[str] = ("id",),
        handlers: Iterable[Handler] = (),
        name: str | None = None,
        queue_size: int = 1000,
        gate: Gate | None = None,
        sync_handlers: Literal["thread", "inline"] = "thread",
        intake_limit: int | None = None,
        moves: bool = True,
        tokens: TokenKeeper | None = None,
    ) -> None:
        if not table or not isinstance(table, str):
            raise ConfigError("a subscription needs a table name", fix='subscribe("todos")')
        if queue_size < 1:
            raise ConfigError(f"queue_size must be at least 1, not {queue_size}")
        if sync_handlers not in ("thread", "inline"):
            raise ConfigError(f"sync_handlers must be 'thread' or 'inline', not {sync_handlers!r}")
        if not primary_key:
            raise ConfigError(
                "primary_key must name at least one column", fix='primary_key=("id",)'
            )
        self.table = table
        self.schema = schema
        self.events = normalize_events(events)
        self.filter: Filter = as_filter(filter)
        self.columns: tuple[str, ...] | None = tuple(columns) if columns is not None else None
        self.primary_key: tuple[str, ...] = tuple(primary_key)
        self.name = name or f"{schema}.{table}"
        self.queue_size = queue_size
        self.gate: Gate = gate if gate is not None else PassThroughGate()
        self.sync_handlers = sync_handlers
        self.moves = moves
        #: The subscription's own token keeper (a user's token), or None for the client's:
        #: its channel joins and refreshes with it and its repair reads use it, so RLS decides
        #: per subscription and subscriptions of different users can share a socket.
        self.tokens = tokens
        self.bindings = plan_bindings(
            self.events, self.filter, self.primary_key, self.columns, moves=moves
        )
        self.deletes = DeleteMatcher(self.filter)
        self._local_updates = any(b.local_update for b in self.bindings)
        self._gate_filters_updates = bool(getattr(self.gate, "filters_updates", False))
        # Keys are only worth remembering when this subscription matches DELETEs (or judges
        # UPDATEs) itself: a gate that holds the rows (filters_deletes) decides, and unfiltered
        # bindings need no matching - remembering every key then only costs memory.
        self._track_delete_keys = any(
            b.local_delete or b.local_update for b in self.bindings
        ) and not getattr(self.gate, "filters_deletes", False)
        self.stats = SubscriptionStats()
        self.error: BaseException | None = None
        self._handlers: list[Handler] = list(handlers)
        for handler in self._handlers:
            _check_handler(handler)
        self._consumers: list[_Consumer] = []
        self._intake: collections.deque[tuple[str, Any]] = collections.deque()
        self._intake_changes = 0
        self.intake_limit = intake_limit or max(10_000, 10 * self.queue_size)
        self._intake_ready: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._subscribed_task: asyncio.Task[None] | None = None
        self._report: Callable[[object], None] = lambda event: None
        self._on_overflow: Callable[[], None] = lambda: None
        self._overflowing = False
        self._started = False
        self._closed = False

    # -- the read model (client/reads.py) ----------------------------------------------------
    @property
    def reads(self) -> ReadModel:
        """The read model of this subscription's cached rows (any thread)."""
        source = self.gate if hasattr(self.gate, "read_path") else None
        return ReadModel(self.name, source, self.primary_key)  # type: ignore[arg-type]

    def get(self, *pk: Any) -> dict[str, Any] | None:
        """The cached row with this primary key (``sub.get(7)``; composite keys in key
        order), or None. Safe from any thread; an indexed lookup in the store file.

        Raises:
            ConfigError: the subscription keeps no rows (``repair="off"``), or the number of
                values is not the key's.
        """
        return self.reads.get(*pk)

    def rows(self, where: str | Filter | None = None, *,
             order_by: str | Sequence[str] | None = None,
             limit: int | None = None) -> Iterator[dict[str, Any]]:
        """The cached rows matching *where* (a supasync filter such as ``"done=eq.false"``,
        evaluated in SQL), ordered by *order_by* (``"-created_at"`` descending; the key by
        default), at most *limit*. An iterator: large reads stream; from the event loop's
        thread, read large results with ``await asyncio.to_thread(...)``.

        Raises:
            FilterError: *where* does not parse, or names a column the table lacks.
        """
        return self.reads.rows(where, order_by=order_by, limit=limit)

    def count(self, where: str | Filter | None = None) -> int:
        """How many cached rows match *where*."""
        return self.reads.count(where)

    def read(self, where: str | Filter | None = None, *,
             order_by: str | Sequence[str] | None = None,
             limit: int | None = None) -> ReadResult:
        """Rows and the journal position :attr:`seq` they reflect, read together: follow
        :meth:`changes_since` from ``result.seq`` to miss nothing and see nothing twice."""
        return self.reads.read(where, order_by=order_by, limit=limit)

    @property
    def seq(self) -> int:
        """The store's journal position that reads made now reflect (0: no file yet)."""
        return self.reads.seq

    def changes_since(self, seq: int, *, limit: int | None = None) -> JournalRead:
        """The journaled changes of this subscription's rows after *seq*
        (:class:`~supasync.store.journal.JournalRead`; ``must_refetch`` when *seq* is older
        than the journal keeps)."""
        return self.reads.changes_since(seq, limit=limit)

    def __repr__(self) -> str:
        text = self.filter.to_realtime()
        where = f" where {text}" if text else ""
        events = "*" if self.events == ALL_EVENTS else ",".join(sorted(self.events))
        return f"<Subscription {self.name!r} {events} on {self.schema}.{self.table}{where}>"

    # -- app-facing ----------------------------------------------------------------------
    def on(self, handler: Handler) -> Handler:
        """Add a handler (usable as a decorator); it receives changes delivered from now on."""
        _check_handler(handler)
        self._handlers.append(handler)
        if self._started:
            self._add_consumer(_Consumer(self.queue_size, handler))
        return handler

    @property
    def handlers(self) -> tuple[Handler, ...]:
        return tuple(self._handlers)

    @property
    def consumed(self) -> bool:
        """Whether a handler or a running iterator receives what is emitted now."""
        return bool(self._consumers)

    @property
    def closed(self) -> bool:
        return self._closed

    def __aiter__(self) -> AsyncIterator[Change]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Change]:
        if self._closed:
            return
        consumer = _Consumer(self.queue_size)
        self._add_consumer(consumer)
        try:
            while True:
                item = await consumer.queue.get()
                if item is _END:
                    return
                assert isinstance(item, Change)
                yield item
        finally:
            self._remove_consumer(consumer)

    # -- connection-facing ---------------------------------------------------------------
    async def _start(
        self,
        info: SubscriptionInfo,
        *,
        on_overflow: Callable[[], None] = lambda: None,
    ) -> None:
        """Open the gate and start the pump (the connection calls this once)."""
        if self._started:
            return
        self._started = True
        self._report = info.report
        self._on_overflow = on_overflow
        self._intake_ready = asyncio.Event()
        for handler in self._handlers:
            self._add_consumer(_Consumer(self.queue_size, handler))
        await self.gate.open(info, self._emit)
        self._tasks.append(asyncio.create_task(self._pump(), name=f"supasync-pump-{self.name}"))

    def _feed(self, payload: Mapping[str, Any]) -> None:
        """Take a raw postgres_changes payload (sync; called from realtime-py's listen loop)."""
        if self._closed:
            return
        self.stats.received += 1
        if self._intake_changes >= self.intake_limit:
            self.stats.dropped_overflow += 1
            if not self._overflowing:
                self._overflowing = True
                logger.warning(
                    "subscription %r: intake full (%d changes waiting); dropping and "
                    "rebuilding the subscription so its gate can repair the gap. Speed up the "
                    "handlers or raise queue_size.",
                    self.name,
                    self.intake_limit,
                )
                self._on_overflow()
            return
        self._intake_changes += 1
        self._push(("change", payload))

    def _mark_gap(self, reason: str) -> None:
        """The subscription is not live any more (or not yet): ordered after earlier changes."""
        self._push((_GAP, reason))

    def _mark_subscribed(self) -> None:
        """The server confirmed the CDC subscription ("Subscribed to PostgreSQL")."""
        self._overflowing = False
        self._push((_SUBSCRIBED, None))

    def _push(self, item: tuple[str, Any]) -> None:
        if self._closed:
            return
        self._intake.append(item)
        if self._intake_ready is not None:
            self._intake_ready.set()

    async def _close(self) -> None:
        """Stop the pump, close the gate and end iterators. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._cancel_subscribed()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        if self._started:
            try:
                await self.gate.close()
            except Exception:
                logger.exception("gate of subscription %r failed to close", self.name)
        for consumer in list(self._consumers):
            if consumer.task is not None:
                consumer.task.cancel()
            else:
                _force_put(consumer.queue, _END)
        self._consumers.clear()

    # -- internals -----------------------------------------------------------------------
    async def _emit(self, change: Change) -> None:
        """Hand one change to every consumer's queue, in order (the gate calls this).

        There is no dispatcher task between the gate and the consumers: each extra asyncio hop
        cost about 3 us per change (bench/client_throughput.py), a tenth of supasync's whole
        share. A full consumer queue suspends the pump (backpressure). With no consumer at all
        (no handler, no running iterator: a read model) nothing is buffered: the change is
        counted in ``stats.unconsumed`` and that is all - a queue that nobody drains would
        stall the pump, and with it the gate's repair, at ``queue_size`` changes.
        """
        # Keys are recorded when emitted (not when consumed) so a DELETE right behind its
        # INSERT in the intake is already recognised.
        if self._track_delete_keys:
            self.deletes.observe(change)
        if not self._consumers:
            self.stats.unconsumed += 1
            return
        consumers = self._consumers
        if len(consumers) == 1:
            queue = consumers[0].queue
            if queue.full():
                await queue.put(change)
            else:
                queue.put_nowait(change)
        else:
            # A copy: a consumer may come or go while a full queue suspends us.
            for consumer in tuple(consumers):
                if consumer.queue.full():
                    await consumer.queue.put(change)
                else:
                    consumer.queue.put_nowait(change)
        self.stats.delivered += 1

    async def _pump(self) -> None:
        intake = self._intake
        ready = self._intake_ready
        assert ready is not None
        while True:
            if not intake:
                ready.clear()
                await ready.wait()
                continue
            kind, value = intake.popleft()
            if kind == "change":
                self._intake_changes -= 1
                await self._live(value)
            elif kind == _GAP:
                await self._cancel_subscribed()
                try:
                    await self.gate.gap(value)
                except Exception:
                    logger.exception("gate of subscription %r failed on gap", self.name)
            elif kind == _SUBSCRIBED:
                await self._cancel_subscribed()
                self._subscribed_task = asyncio.create_task(
                    self._run_subscribed(), name=f"supasync-subscribed-{self.name}"
                )

    async def _run_subscribed(self) -> None:
        try:
            await self.gate.subscribed()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception(
                "gate of subscription %r failed while catching up; live changes continue",
                self.name,
            )

    async def _cancel_subscribed(self) -> None:
        task, self._subscribed_task = self._subscribed_task, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _live(self, payload: Mapping[str, Any]) -> None:
        try:
            change = decode_postgres_changes(
                payload, pk_columns=self.primary_key, subscription=self.name
            )
        except ChangeDecodeError as exc:
            self.stats.decode_errors += 1
            logger.error("subscription %r: undecodable change skipped: %s", self.name, exc)
            return
        if change.op == "UPDATE" and self._local_updates:
            # The unfiltered UPDATE binding (moves=True): a gate that holds the rows judges it
            # (filters_updates); otherwise it is judged here (core.moves).
            if not self._gate_filters_updates:
                judged = self._judge_update(change)
                if judged is None:
                    self.stats.dropped_updates += 1
                    return
                change = judged
                if change.op not in self.events:
                    return
        elif change.op not in self.events:
            return
        if (
            change.op == "DELETE"
            and self._track_delete_keys  # this subscription matches DELETEs itself
            and not self.deletes.accepts(change)
        ):
            self.stats.dropped_deletes += 1
            return
        try:
            await self.gate.live(change)
        except Exception:
            logger.exception(
                "gate of subscription %r failed on a live %s of %s.%s key=%r",
                self.name,
                change.op,
                change.schema,
                change.table,
                change.pk,
            )

    def _judge_update(self, change: Change) -> Change | None:
        """An UPDATE of the unfiltered binding as this subscriber sees it (no gate holding
        rows): held = delivered as matching in this run, else unknown (the old record decides
        when it carries the filter columns)."""
        held: bool | None = None
        if self._track_delete_keys and change.pk and change.pk in self.deletes.keys:
            held = True
        move = classify_update(self.filter, change.new, change.old, held)
        return apply_move(change, move)

    def _add_consumer(self, consumer: _Consumer) -> None:
        self._consumers.append(consumer)
        if consumer.handler is not None and self._started:
            consumer.task = asyncio.create_task(
                self._run_handler(consumer), name=f"supasync-handler-{consumer.name}"
            )

    def _remove_consumer(self, consumer: _Consumer) -> None:
        if consumer in self._consumers:
            self._consumers.remove(consumer)
        # The pump may be waiting to put into this consumer's full queue: empty it so that
        # put completes and delivery to the others goes on.
        while not consumer.queue.empty():
            consumer.queue.get_nowait()

    async def _run_handler(self, consumer: _Consumer) -> None:
        handler = consumer.handler
        assert handler is not None
        is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            getattr(handler, "__call__", None)  # noqa: B004 - async callable objects
        )
        threaded = not is_async and self.sync_handlers == "thread"
        queue = consumer.queue
        while True:
            item = await queue.get()
            if threaded:
                if item is _END:
                    return
                assert isinstance(item, Change)
                # One thread hop per batch, not per change: a hop costs far more than a small
                # handler (measured in bench/client_throughput.py), and the batch is whatever
                # is already queued, so a quiet stream still gets each change at once.
                batch, ended = self._take_batch(consumer, item)
                await self._run_sync_batch(consumer, handler, batch)
                if ended:
                    return
                continue
            # Everything already queued is handled without going back to the event loop's
            # scheduler between changes (one wake-up per burst, not per change).
            while True:
                if item is _END:
                    return
                assert isinstance(item, Change)
                try:
                    if is_async:
                        await handler(item)  # type: ignore[misc]
                    else:
                        result = handler(item)
                        if result is not None and inspect.isawaitable(result):
                            await result
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._handler_failed(consumer, item, exc)
                try:
                    item = queue.get_nowait()
                except asyncio.QueueEmpty:
                    break

    _MAX_BATCH = 256

    def _take_batch(self, consumer: _Consumer, first: Change) -> tuple[list[Change], bool]:
        """``first`` plus the changes already waiting (up to a bound); True if the end marker
        was among them."""
        batch = [first]
        while len(batch) < self._MAX_BATCH:
            try:
                nxt = consumer.queue.get_nowait()
            except asyncio.QueueEmpty:
                return batch, False
            if nxt is _END:
                return batch, True
            assert isinstance(nxt, Change)
            batch.append(nxt)
        return batch, False

    async def _run_sync_batch(
        self, consumer: _Consumer, handler: Handler, batch: list[Change]
    ) -> None:
        def run() -> list[tuple[Change, object, Exception | None]]:
            # Each change isolated: one failing call does not skip the rest of the batch.
            out: list[tuple[Change, object, Exception | None]] = []
            for change in batch:
                try:
                    out.append((change, handler(change), None))
                except Exception as exc:
                    out.append((change, None, exc))
            return out

        for change, result, exc in await asyncio.to_thread(run):
            if exc is not None:
                self._handler_failed(consumer, change, exc)
            elif inspect.isawaitable(result):
                try:
                    await result
                except asyncio.CancelledError:
                    raise
                except Exception as err:
                    self._handler_failed(consumer, change, err)

    def _handler_failed(self, consumer: _Consumer, change: Change, exc: Exception) -> None:
        failures = self.stats.handler_failures
        assert failures is not None
        count = failures.get(consumer.name, 0) + 1
        failures[consumer.name] = count
        logger.error(
            "handler %s of subscription %r failed on %s of %s.%s key=%r (%d failures so far); "
            "delivery continues",
            consumer.name,
            self.name,
            change.op,
            change.schema,
            change.table,
            change.pk,
            count,
            exc_info=exc,
        )
        try:
            self._report(
                HandlerFailed(
                    subscription=self.name,
                    handler=consumer.name,
                    error=exc,
                    key=change.key,
                    count=count,
                )
            )
        except Exception:
            logger.exception("reporting a handler failure failed")


def _check_handler(handler: object) -> None:
    if not callable(handler):
        raise ConfigError(
            f"a handler must be callable (a function taking a Change), not {type(handler).__name__}"
        )


def _force_put(queue: asyncio.Queue[object], item: object) -> None:
    """Put ``item`` even into a full queue (dropping the oldest), to end an iterator."""
    while True:
        try:
            queue.put_nowait(item)
            return
        except asyncio.QueueFull:
            queue.get_nowait()
