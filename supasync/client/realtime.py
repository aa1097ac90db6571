"""The public entry point: :class:`Realtime`, declared subscriptions over a supervised connection.

Usage::

    async with Realtime(url, anon_key, token=user_jwt_or_keeper) as rt:
        todos = rt.subscribe("todos", events="INSERT", filter="done=eq.false", handler=on_todo)

        @rt.on("orders", events={"INSERT", "UPDATE"})
        async def on_order(change: Change) -> None: ...

        await rt.wait_live(timeout=30)
        async for change in todos:
            ...

The shape follows httpx: a client object holding configuration, used as an async context
manager (``aclose()`` for manual use), with the ``status`` stream as its observable state.
Declaring a subscription parses its filter at once, so a malformed filter raises
:class:`~supasync.core.errors.FilterError` before anything connects.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

from ..core.backoff import BackoffPolicy
from ..core.errors import ApiKeyRejected, ConfigError, SubscriptionError
from ..core.filters import Filter
from ..core.status import (
    ConnectionFailed,
    ConnectionState,
    GapRepaired,
    StatusEvent,
    StatusStream,
    SubscriptionFailed,
    SubscriptionState,
)
from .channels import Channel
from .config import DEFAULT_HEARTBEAT_INTERVAL, url_port_problem
from .connection import Connection, ConnectionOptions
from .reads import forget_reader
from .subscription import Gate, Handler, Subscription
from .tokens import CallableProvider, StaticToken, TokenKeeper

if TYPE_CHECKING:
    from ..store import Store
    from ..store.outbox import DurableOutbox
    from .broadcast_source import BroadcastSource

RepairMode = Literal["auto", "exact", "cursor", "diff", "off"]

__all__ = ["Realtime"]

logger = logging.getLogger("supasync.client.realtime")

TokenArg = str | TokenKeeper | Callable[[], str | Awaitable[str]] | None


def _join_url(base: str, path: str) -> str:
    return base.rstrip("/") + path


class Realtime:
    """A Supabase Realtime client that keeps its subscriptions live.

    Args:
        url: the project URL (``https://<ref>.supabase.co`` or the local stack's
            ``http://127.0.0.1:PORT``).
        api_key: the anon (or publishable) key, sent as the socket's ``apikey``.
        token: who the subscriptions act as (RLS): None for the API key itself; a token string
            (a user's JWT, the service-role key); a :class:`~supasync.client.tokens.TokenKeeper`
            (refreshed
            tokens, owned by the caller); or a callable returning a token (sync or async, called
            again on every refresh).
        realtime_url: override ``<url>/realtime/v1``.
        rest_url: override ``<url>/rest/v1`` (given to gates for gap repair).
        heartbeat_interval / heartbeat_timeout: the heartbeat watchdog (seconds).
        subscribed_timeout: how long a join may wait for "Subscribed to PostgreSQL".
        join_timeout: realtime-py's timeout for the join reply (whole seconds).
        max_channels_per_socket: subscriptions per socket before opening another (default 100).
        queue_size: default bound of each subscription's queues.
        backoff: reconnect/rejoin delay policy.
        sync_handlers: where sync handlers run, ``"thread"`` (default) or ``"inline"``.
        redact_logs: install the token-masking log filter (:mod:`supasync.core.redact`) on start.
        refresh_margin: for a keeper built here, how long a handed-out token must stay valid.
        cache: where subscriptions that repair gaps keep their rows and cursors: None (one
            temporary SQLite file for this client, gone when it closes), ``"memory:"``, a file
            path (kept across runs: a restarted process replays only what it missed) or a
            :class:`~supasync.store.Store`.
        repair: the default gap-repair mode of :meth:`subscribe` (``"off"``: live changes only).
        random: jitter source (tests).
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        token: TokenArg = None,
        realtime_url: str | None = None,
        rest_url: str | None = None,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        heartbeat_timeout: float = 10.0,
        subscribed_timeout: float = 30.0,
        join_timeout: int = 10,
        max_channels_per_socket: int = 100,
        queue_size: int = 1000,
        backoff: BackoffPolicy | None = None,
        sync_handlers: Literal["thread", "inline"] = "thread",
        redact_logs: bool = True,
        refresh_margin: float | None = None,
        cache: str | os.PathLike[str] | Store | None = None,
        repair: RepairMode = "auto",
        random: Callable[[], float] = random.random,
    ) -> None:
        if not url:
            raise ConfigError("the project URL is empty", key="SUPABASE_URL", fix="set it")
        if not api_key:
            raise ConfigError("the API key is empty", key="SUPABASE_ANON_KEY", fix="set it")
        if max_channels_per_socket < 1:
            raise ConfigError("max_channels_per_socket must be at least 1")
        for arg, value in (("url", url), ("realtime_url", realtime_url), ("rest_url", rest_url)):
            problem = url_port_problem(value) if value else None
            if problem is not None:
                raise ConfigError(problem, key=arg, value=value,
                                  fix="use a port from 1 to 65535, or none for the default")
        self.url = url.rstrip("/")
        self.realtime_url = realtime_url or _join_url(self.url, "/realtime/v1")
        self.rest_url = rest_url or _join_url(self.url, "/rest/v1")
        self.queue_size = queue_size
        self.sync_handlers: Literal["thread", "inline"] = sync_handlers
        self._redact_logs = redact_logs
        self._owns_keeper = not isinstance(token, TokenKeeper)
        self.tokens = self._make_keeper(api_key, token, refresh_margin)
        self.status = StatusStream()
        self.connection = Connection(
            self.realtime_url,
            self.tokens,
            rest_url=self.rest_url,
            status=self.status,
            options=ConnectionOptions(
                heartbeat_interval=heartbeat_interval,
                heartbeat_timeout=heartbeat_timeout,
                join_timeout=join_timeout,
                subscribed_timeout=subscribed_timeout,
                max_channels_per_socket=max_channels_per_socket,
                backoff=backoff or BackoffPolicy(),
            ),
            random=random,
        )
        self._subscriptions: dict[str, Subscription] = {}
        self._cache_spec = cache
        self.repair: RepairMode = repair
        self._store: Store | None = cache if hasattr(cache, "write") else None  # type: ignore[assignment]
        self._owns_store = self._store is None
        self._pending: set[asyncio.Task[None]] = set()
        self._channels: dict[str, Channel] = {}
        self._sources: dict[str, BroadcastSource] = {}  # broadcast-sourced subscriptions
        self._outbox: DurableOutbox | None = None
        self._owned_keepers: dict[str, TokenKeeper] = {}  # subscriptions' own, built here
        self._started = False
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"<Realtime {self.realtime_url} {self.status.state.value}, "
            f"{len(self._subscriptions)} subscriptions>"
        )

    @staticmethod
    def _make_keeper(api_key: str, token: TokenArg, margin: float | None) -> TokenKeeper:
        kwargs: dict[str, Any] = {} if margin is None else {"margin": margin}
        if isinstance(token, TokenKeeper):
            return token
        if token is None:
            return TokenKeeper(StaticToken(api_key), api_key=api_key, **kwargs)
        if isinstance(token, str):
            return TokenKeeper(StaticToken(token), api_key=api_key, **kwargs)
        if callable(token):
            return TokenKeeper(CallableProvider(token), api_key=api_key, **kwargs)
        raise ConfigError(
            f"token must be None, a string, a TokenKeeper or a callable, not {type(token).__name__}"
        )

    # -- construction from configuration ---------------------------------------------------
    @classmethod
    def from_settings(
        cls,
        settings: Any,
        *,
        gate_factory: Callable[[Any], Gate | None] | None = None,
        **kwargs: Any,
    ) -> Realtime:
        """A client for :class:`supasync.client.config.Settings`, with its declared subscriptions.

        The token comes from ``TokenKeeper.from_settings(settings)`` (access token, email and
        password, JWT secret, service-role key or anon key, whichever the settings name).
        ``gate_factory(spec)`` may supply a gate per subscription spec (e.g. a repairing cache
        gate); other keyword arguments override constructor options.
        """
        keeper = TokenKeeper.from_settings(settings)
        options: dict[str, Any] = {}
        for attr, option in (
            ("realtime_url", "realtime_url"),
            ("heartbeat_interval", "heartbeat_interval"),
            ("queue_size", "queue_size"),
        ):
            value = getattr(settings, attr, None)
            if value is not None:
                options[option] = value
        rest_url = getattr(settings, "rest_url", None)
        if isinstance(rest_url, str):
            options["rest_url"] = rest_url
        max_delay = getattr(settings, "reconnect_max_delay", None)
        if max_delay is not None:
            options["backoff"] = BackoffPolicy(cap=float(max_delay))
        options.update(kwargs)
        client = cls(settings.url, keeper.api_key, token=keeper, **options)
        client._owns_keeper = True
        if keeper.api_key and keeper.api_key == getattr(settings, "service_role_key", None):
            client.connection.api_key_name = "SUPABASE_SERVICE_ROLE_KEY"
        for spec in getattr(settings, "subscriptions", ()) or ():
            gate = gate_factory(spec) if gate_factory is not None else None
            client.subscribe(
                spec.table,
                schema=spec.schema,
                events=spec.events,
                filter=spec.filter,
                columns=spec.columns,
                primary_key=spec.primary_key or ("id",),
                name=spec.name,
                gate=gate,
                repair=spec.repair,
                cursor_column=spec.cursor_column,
            )
        return client

    @classmethod
    def from_env(cls, **kwargs: Any) -> Realtime:
        """A client from ``SUPABASE_*`` environment variables (and ``.env``), see
        :func:`supasync.client.config.load_settings`."""
        from .config import load_settings

        return cls.from_settings(load_settings(), **kwargs)

    # -- declaring subscriptions ---------------------------------------------------------
    def subscribe(
        self,
        table: str,
        *,
        events: str | Iterable[str] = "*",
        filter: str | Filter | None = None,
        handler: Handler | None = None,
        handlers: Iterable[Handler] = (),
        name: str | None = None,
        schema: str = "public",
        primary_key: Sequence[str] = ("id",),
        columns: Sequence[str] | None = None,
        gate: Gate | None = None,
        queue_size: int | None = None,
        repair: RepairMode | None = None,
        cursor_column: str | None = None,
        moves: bool = True,
        source: Literal["postgres_changes", "broadcast"] = "postgres_changes",
        topic: str | None = None,
        private: bool = True,
        token: TokenArg = None,
    ) -> Subscription:
        """Declare a subscription; it joins when the client starts (or at once if started).

        Gap repair is on by default (``repair="auto"``, or the client's ``repair``): the
        subscription keeps its rows in the client's cache, its first join delivers the
        current rows (``origin="snapshot"``),
        and after every gap (drop, restart, token expiry) it replays what it missed
        (``origin="replay"``) before live changes, in order and deduplicated. ``repair`` may
        force ``"exact"`` (needs ``supasync sql``), ``"cursor"`` (``cursor_column``, default
        ``updated_at``) or ``"diff"``; ``"off"`` delivers live changes only, like the
        official client. A ``gate`` given explicitly replaces all of this.

        With a ``filter`` on non-key columns, ``moves=True`` (the default) delivers filter
        move-outs and move-ins live: an UPDATE that takes a row out of the filter arrives as a
        DELETE (``old`` = the row as delivered), one that brings a row in as an INSERT. The
        cost: UPDATEs are subscribed without the server-side filter, so every UPDATE of the
        table (that RLS lets through) crosses the socket and is judged here. ``moves=False``
        keeps the server-side filter: a move-out is then not delivered until the next gap's
        repair (see :class:`~supasync.client.subscription.Subscription` for the details,
        including what a subscription without cache can know).

        ``source="broadcast"`` receives the table's changes from Broadcast from Database instead
        of postgres_changes: a trigger calling ``realtime.broadcast_changes`` (``supasync sql
        <table> --broadcast`` prints it) sends them to the channel ``topic`` (default: the table
        name), ``private`` by default (authorised by RLS on ``realtime.messages``). Same Change
        model, cache, gap repair and filters (applied here: the server does not filter
        broadcasts); see :mod:`supasync.client.broadcast_source`.

        ``token`` makes the subscription act as someone else than the client (a signed-in
        user's access token, a :class:`~supasync.client.tokens.TokenKeeper` or a callable, as
        the client's ``token``; None: the client's): its channel joins and refreshes with that
        token and its repair reads use it, so RLS decides for that user, while it shares the
        client's sockets with the other subscriptions (postgres_changes only). A keeper built
        here is the client's (started and closed with the subscription).

        Returns the :class:`~supasync.client.subscription.Subscription`: add handlers with ``.on``,
        iterate it with ``async for``, read ``.stats`` and ``.error``.

        Raises:
            FilterError: the filter does not parse (nothing has connected).
            ConfigError: another argument is invalid, or ``name`` is taken.
        """
        all_handlers = [*handlers, *([handler] if handler is not None else [])]
        repair = repair or self.repair
        if gate is None and repair != "off":
            gate = self._repairing_gate(repair, cursor_column)
        own: TokenKeeper | None = None
        if token is not None:
            if source != "postgres_changes":
                raise ConfigError("a token of its own is for postgres_changes subscriptions",
                                  key="token", fix="drop token= or use the default source")
            own = self._make_keeper(self.tokens.api_key, token, None)
        sub = Subscription(
            table,
            schema=schema,
            events=events,
            filter=filter,
            columns=columns,
            primary_key=primary_key,
            handlers=all_handlers,
            name=self._unique_name(name, schema, table),
            queue_size=queue_size or self.queue_size,
            gate=gate,
            sync_handlers=self.sync_handlers,
            moves=moves,
            tokens=own,
        )
        if own is not None and not isinstance(token, TokenKeeper):
            self._owned_keepers[sub.name] = own
        if source == "broadcast":
            from .broadcast_source import BroadcastSource

            wanted = topic or table
            if any((s.topic, s.private) == (wanted, private) for s in self._sources.values()) \
                    or f"channel:{'private:' if private else ''}{wanted}" in self._channels:
                # One channel per topic per socket: realtime-py routes frames by topic.
                raise ConfigError(f"this client already listens to topic {wanted!r}",
                                  key="topic", fix="use one subscription per topic (a filter "
                                  "on it), or another client")
            self._sources[sub.name] = BroadcastSource(sub, wanted, private=private)
            self.connection.endpoint_subscriptions[sub.name] = sub
        elif source != "postgres_changes":
            raise ConfigError("unknown change source", key="source", value=str(source),
                              fix="use 'postgres_changes' (default) or 'broadcast'")
        return self.add(sub)

    def _repairing_gate(self, mode: str, cursor_column: str | None) -> Gate:
        from ..repair.repairer import MODES, RepairConfig
        from .gate import CachedGate

        if mode not in MODES:
            raise ConfigError(
                "unknown repair mode", key="repair", value=mode,
                fix="use auto, exact, cursor, diff or off",
            )
        if self._store is None:
            from ..store import open_store

            self._store = open_store(self._cache_spec)  # type: ignore[arg-type]
        return CachedGate(
            self._store, repair=RepairConfig(mode=mode, cursor_column=cursor_column)  # type: ignore[arg-type]
        )

    @property
    def cache(self) -> Store | None:
        """The store repairing subscriptions keep their rows in (None until one is declared).
        Read a subscription's rows with its read model (``sub.get``, ``sub.rows``...)."""
        return self._store

    def on(
        self, table: str, **kwargs: Any
    ) -> Callable[[Handler], Handler]:
        """Decorator form: ``@client.on("todos", events="INSERT")`` subscribes the function."""

        def decorator(fn: Handler) -> Handler:
            self.subscribe(table, handler=fn, **kwargs)
            return fn

        return decorator

    def add(self, sub: Subscription) -> Subscription:
        """Add a subscription built directly (see :class:`Subscription`)."""
        if self._closed:
            raise ConfigError("this Realtime client is closed; create a new one")
        if sub.name in self._subscriptions:
            raise ConfigError(
                f"a subscription named {sub.name!r} already exists", fix="pass another name="
            )
        self._subscriptions[sub.name] = sub
        if self._started:
            own = self._owned_keepers.get(sub.name)
            if own is not None:
                self._pending_start(own.start())
            task = asyncio.get_running_loop().create_task(
                self.connection.add(self._sources.get(sub.name, sub)))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        return sub

    async def remove(self, sub: Subscription | str) -> None:
        """Leave a subscription and close it (its iterators end)."""
        name = sub if isinstance(sub, str) else sub.name
        found = self._subscriptions.pop(name, None)
        self._sources.pop(name, None)  # a broadcast-sourced one frees its topic
        self.connection.endpoint_subscriptions.pop(name, None)
        if found is not None:
            await self.connection.remove(found)
        own = self._owned_keepers.pop(name, None)
        if own is not None:
            await own.aclose()

    def _pending_start(self, started: Awaitable[object]) -> None:
        async def run() -> None:
            await started

        task = asyncio.get_running_loop().create_task(run())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _unique_name(self, name: str | None, schema: str, table: str) -> str:
        if name is not None:
            return name
        base = f"{schema}.{table}"
        candidate, n = base, 1
        while candidate in self._subscriptions:
            n += 1
            candidate = f"{base}#{n}"
        return candidate

    # -- broadcast and presence channels (supasync.client.channels) -------------------------
    def channel(
        self,
        topic: str,
        *,
        private: bool = False,
        receive_own: bool = False,
        presence_key: str | None = None,
        outbox_size: int = 1000,
        send_timeout: float = 10.0,
        max_attempts: int = 5,
        queue_size: int | None = None,
        dedupe: bool = True,
        replay_since: float | None = None,
        replay_limit: int | None = None,
    ) -> Channel:
        """A broadcast/presence channel on this client's supervised connection.

        It joins when the client starts (or at once if started) and is rejoined with a fresh
        token after every drop or expiry, like a subscription. ``private=True`` asks the server
        to authorise the topic with RLS on ``realtime.messages`` (a refusal is
        :class:`~supasync.core.errors.ChannelUnauthorized`). ``receive_own``: also receive this
        client's own broadcasts (``config.broadcast.self``). ``send`` waits for the server's
        ack; unsent messages wait in an outbox of ``outbox_size`` (kept in the cache file too
        when the client has one). ``dedupe`` drops received copies by message id.
        ``replay_since`` (Unix seconds; private channels only) asks the server to replay the
        database broadcasts of the topic since then at the join (at most ``replay_limit``,
        <= 25, newest; marked ``replayed``), and after every gap from just before it. See
        :class:`~supasync.client.channels.Channel`.

        Raises:
            ConfigError: a bad topic, or a channel for this topic exists already.
        """
        if self._closed:
            raise ConfigError("this Realtime client is closed; create a new one")
        name = f"channel:{topic}" if not private else f"channel:private:{topic}"
        if name in self._channels or name in self._subscriptions:
            raise ConfigError(f"this client already has a channel for {topic!r}",
                              fix="use the Channel you have (rt.channels lists them)")
        channel = Channel(
            topic, private=private, name=name, receive_own=receive_own,
            presence_key=presence_key, outbox_size=outbox_size, send_timeout=send_timeout,
            max_attempts=max_attempts, queue_size=queue_size or self.queue_size, dedupe=dedupe,
            sync_handlers=self.sync_handlers, durable=self._durable_outbox(),
            replay_since=replay_since, replay_limit=replay_limit)
        channel._remove = self._remove_channel
        self._channels[name] = channel
        if self._started:
            task = asyncio.get_running_loop().create_task(self.connection.add(channel))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        return channel

    def _durable_outbox(self) -> DurableOutbox | None:
        from ..store.outbox import DurableOutbox, outbox_path

        if self._outbox is None:
            path = outbox_path(self._store if self._store is not None else self._cache_spec)
            if path is not None:
                self._outbox = DurableOutbox(path)
        return self._outbox

    async def _remove_channel(self, channel: Channel) -> None:
        if self._channels.pop(channel.name, None) is not None and self._started:
            await self.connection.remove(channel)
        await channel._close()

    @property
    def channels(self) -> tuple[Channel, ...]:
        return tuple(self._channels.values())

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        return tuple(self._subscriptions.values())

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> Self:
        """Start connecting in the background; returns at once. Idempotent."""
        if self._closed:
            raise ConfigError("this Realtime client is closed; create a new one")
        if self._started:
            return self
        if self._redact_logs:
            from ..core.redact import install_redaction

            install_redaction()
        self._started = True
        # Start the keeper even when the caller owns it (start is idempotent): a keeper nobody
        # started never refreshes, and its tokens would expire on live channels.
        await self.tokens.start()
        for keeper in list(self._owned_keepers.values()):
            await keeper.start()
        for sub in list(self._subscriptions.values()):
            await self.connection.add(self._sources.get(sub.name, sub))
        for channel in list(self._channels.values()):
            await self.connection.add(channel)
        await self.connection.start()
        return self

    async def aclose(self) -> None:
        """Leave every channel, close the sockets, end iterators and the status stream."""
        if self._closed:
            return
        self._closed = True
        for task in list(self._pending):
            task.cancel()
        try:
            await self.connection.aclose()
            for sub in self._subscriptions.values():
                await sub._close()  # never-started ones (client not started) end iterators too
            for channel in self._channels.values():
                await channel._close()
        finally:
            if self._outbox is not None:
                self._outbox.close()
                self._outbox = None
            # After the gates flushed their last writes - and whatever failed or was cancelled
            # above: a temporary cache file must not outlive its client.
            self._close_store()
            if self._owns_keeper:
                await self.tokens.aclose()
            for keeper in self._owned_keepers.values():
                await keeper.aclose()
            self._owned_keepers.clear()

    def _close_store(self) -> None:
        """Close the cache this client opened (removing it if temporary). Idempotent; also
        called by :class:`~supasync.client.sync.SyncRealtime` once its loop has stopped."""
        store, self._store = (self._store, None) if self._owns_store else (None, self._store)
        if store is not None:
            # Readers of the file in this process (the subscriptions' read models) first: a
            # temporary file goes away with the store.
            path = getattr(store, "path", None)
            forget_reader(Path(path) if path is not None else None)
            store.close()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def wait_live(self, timeout: float | None = 30.0) -> None:  # noqa: ASYNC109
        """Wait until every subscription is live.

        Raises:
            ApiKeyRejected: the project refused the API key (Realtime and PostgREST both
                answered 401); the connection state is ``failed`` and nothing is retried.
            SubscriptionError: a subscription was rejected for good (the typed error, e.g.
                :class:`~supasync.core.errors.TableNotPublished`).
            TimeoutError: not live within ``timeout`` seconds.
        """
        for task in list(self._pending):
            await task
        failed = self._first_failure()
        if failed is not None:
            raise failed
        if self.status.state is ConnectionState.LIVE:
            return

        def done(event: StatusEvent) -> bool:
            return isinstance(event, SubscriptionFailed | ConnectionFailed) or _done_now(
                self.status)

        if not _done_now(self.status):
            await self.status.wait_for(done, timeout)
        failed = self._first_failure()
        if failed is not None:
            raise failed
        if self.status.state is ConnectionState.STOPPED:
            raise RuntimeError("the client stopped before its subscriptions were live")

    async def wait_synced(self, timeout: float | None = 60.0) -> None:  # noqa: ASYNC109
        """Wait until every subscription is live **and** has caught up.

        Caught up means its latest gap has been repaired: the first snapshot of a cache (or,
        with ``repair="off"``, just the join) and the repair after each reconnect have been
        handed to the handlers' queues (:class:`~supasync.core.status.GapRepaired` was published).
        :meth:`wait_live` returns earlier, at the server's "Subscribed to PostgreSQL", while the
        first snapshot may still be on its way.

        Raises:
            SubscriptionError: a subscription was rejected for good.
            TimeoutError: not caught up within ``timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        await self.wait_live(timeout)

        def behind() -> bool:
            return bool(self.status.unrepaired & self._subscriptions.keys())

        while behind():
            left = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                await self.status.wait_for(
                    lambda e: isinstance(e, GapRepaired | SubscriptionFailed | ConnectionFailed)
                    or not behind(),
                    left,
                )
            except TimeoutError:
                raise TimeoutError(
                    f"waited {timeout} s for subscriptions to catch up; still repairing: "
                    f"{sorted(self.status.unrepaired & self._subscriptions.keys())}"
                ) from None
            failed = self._first_failure()
            if failed is not None:
                raise failed

    def _first_failure(self) -> ApiKeyRejected | SubscriptionError | None:
        if self.connection.failure is not None:
            return self.connection.failure
        for name, state in self.status.subscriptions.items():
            if state is SubscriptionState.FAILED:
                sub = self._subscriptions.get(name) or self._channels.get(name)
                if sub is not None and isinstance(sub.error, SubscriptionError):
                    return sub.error
                return SubscriptionError(name, "rejected by the server", retryable=False)
        return None


def _done_now(status: StatusStream) -> bool:
    return status.state in (ConnectionState.LIVE, ConnectionState.FAILED, ConnectionState.STOPPED)
