"""The threaded facade: supasync's Realtime client from synchronous code (Django, Flask, Celery).

supabase-py has no synchronous Realtime client (``docs/python-clients.md`` §2.4). This module
runs the asyncio client (:class:`supasync.client.realtime.Realtime`) on a background thread with
its own event loop and gives synchronous code the same API::

    from supasync.client.sync import SyncRealtime

    def on_todo(change):                      # a plain function
        print(change.op, change.new)

    with SyncRealtime.from_env() as rt:        # SUPABASE_* from the environment / .env
        rt.subscribe("todos", handler=on_todo)
        rt.wait_live(timeout=30)
        ...                                    # the app keeps running; changes arrive meanwhile

    # or iterate, from any thread:
    sub = rt.subscribe("todos", events="INSERT")
    for change in sub.iter(timeout=5):         # stops after 5 s without a change
        ...

Threads (the contract):

* ``supasync-loop``: the event loop. It owns the connection, the token keeper and every
  subscription; no user code runs there unless you pass ``async def`` handlers.
* ``supasync-handler``: one dedicated worker thread that calls every synchronous handler of this
  facade, one change at a time, in delivery order. So a handler may block (a database write, an
  HTTP call) without stalling heartbeats, handlers never run concurrently with each other, and
  thread-bound resources (a Django database connection) stay on one thread. A handler that
  raises is logged and reported (``HandlerFailed``) and keeps receiving the next changes.
* Your threads: every public method here is thread-safe and blocks until the loop thread has
  done the work (with a timeout). Do not call them from an ``async def`` handler (that would
  deadlock the loop; it raises ``RuntimeError`` instead).

Shutdown is clean: :meth:`SyncRealtime.close` (also on ``with`` exit, and at interpreter exit
through :mod:`atexit` if the app forgot) closes the client, ends every ``iter()``, stops the loop
and joins both threads. Processes that fork (gunicorn, Celery prefork): create the facade in the
child (e.g. in ``post_fork`` / ``worker_process_init``); a facade used across ``fork`` raises.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import functools
import inspect
import logging
import os
import queue
import threading
import warnings
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar

from ..core.changes import Change
from ..core.errors import SupasyncError
from ..core.filters import Filter
from ..store.journal import JournalRead
from ..store.reads import ReadResult
from .tokens import TokenKeeper

if TYPE_CHECKING:
    from ..core.filters import Filter
    from ..core.status import ConnectionState, StatusEvent
    from .config import Settings
    from .realtime import Realtime
    from .subscription import Gate, Subscription

__all__ = ["SyncRealtime", "SyncSubscription"]

log = logging.getLogger(__name__)

T = TypeVar("T")
SyncHandler = Callable[[Change], Any]

#: Default time a blocking call waits for the loop thread (seconds).
CALL_TIMEOUT: Final = 30.0
_END: Final = object()


class SyncSubscription:
    """A subscription seen from synchronous code (made by :meth:`SyncRealtime.subscribe`).

    Attributes mirror the async :class:`~supasync.client.subscription.Subscription` (``name``,
    ``table``, ``schema``); :attr:`subscription` is the async object itself (touch it only on the
    loop thread).

    Reads: :meth:`get` (``sub.get(7)``), :meth:`rows`, :meth:`count`, :meth:`read`,
    :attr:`seq` and :meth:`changes_since` read the subscription's cached rows from the calling
    thread (the read model; see :mod:`supasync.client.reads`).

    Iteration: the first call to :meth:`iter` (or :meth:`next`) opens a buffer that from then on
    receives every change of this subscription until the facade closes; changes delivered before
    that first call are not in it (when the subscription has no handler, the async side holds
    them until the buffer opens). The buffer holds at most ``queue_size`` changes; beyond that the
    subscription waits for you (backpressure) instead of growing without bound.
    """

    def __init__(self, facade: SyncRealtime, subscription: Subscription) -> None:
        self._facade = facade
        self.subscription = subscription
        self.name: str = subscription.name
        self.table: str = subscription.table
        self.schema: str = subscription.schema
        self._queue: queue.Queue[object] = queue.Queue()
        self._space: asyncio.Semaphore | None = None
        self._opened = False
        self._open_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<SyncSubscription {self.name!r} on {self.schema}.{self.table}>"

    def on(self, handler: SyncHandler) -> SyncHandler:
        """Add a handler (usable as a decorator). Sync handlers run on the handler thread."""
        self._facade._call(self._add_handler(handler))
        return handler

    async def _add_handler(self, handler: SyncHandler) -> None:
        self.subscription.on(self._facade._wrap_handler(handler))

    # -- iteration --------------------------------------------------------------------------

    def iter(self, timeout: float | None = None) -> Iterator[Change]:
        """Yield changes as they arrive, from the calling thread.

        The buffer opens when ``iter()`` is called (not at the first ``next()``), so a change
        made after this call returns is never missed.

        Args:
            timeout: stop (return, no exception) after this many seconds without a change;
                None waits for ever. Iteration also stops when the facade is closed.
        """
        self._open()
        return self._iterate(timeout)

    def _iterate(self, timeout: float | None) -> Iterator[Change]:
        while True:
            item = self._take(timeout)
            if item is None:
                return
            yield item

    def __iter__(self) -> Iterator[Change]:
        return self.iter()

    def get(self, *pk: Any, timeout: float | None = None) -> Any:
        """``sub.get(7)``: the cached row with this primary key, or None (the read model, as
        on :meth:`Subscription.get <supasync.client.subscription.Subscription.get>`; any
        thread, no call into the loop).

        Called with no key (``sub.get()`` / ``sub.get(timeout=...)``) it is the older spelling
        of :meth:`next`, kept working with a ``DeprecationWarning``."""
        if pk:
            return self.subscription.get(*pk)
        warnings.warn("SyncSubscription.get() without a key is next(); sub.get(*pk) reads "
                      "a cached row", DeprecationWarning, stacklevel=2)
        return self.next(timeout)

    # The read model: the subscription's cached rows, read on the calling thread from the
    # store file (client/reads.py), never through the loop thread.
    def rows(self, where: str | Filter | None = None, *,
             order_by: str | Sequence[str] | None = None,
             limit: int | None = None) -> Iterator[dict[str, Any]]:
        """See :meth:`Subscription.rows <supasync.client.subscription.Subscription.rows>`."""
        return self.subscription.rows(where, order_by=order_by, limit=limit)

    def count(self, where: str | Filter | None = None) -> int:
        """See :meth:`Subscription.count <supasync.client.subscription.Subscription.count>`."""
        return self.subscription.count(where)

    def read(self, where: str | Filter | None = None, *,
             order_by: str | Sequence[str] | None = None,
             limit: int | None = None) -> ReadResult:
        """See :meth:`Subscription.read <supasync.client.subscription.Subscription.read>`."""
        return self.subscription.read(where, order_by=order_by, limit=limit)

    @property
    def seq(self) -> int:
        """See :attr:`Subscription.seq <supasync.client.subscription.Subscription.seq>`."""
        return self.subscription.seq

    def changes_since(self, seq: int, *, limit: int | None = None) -> JournalRead:
        """See :meth:`Subscription.changes_since
        <supasync.client.subscription.Subscription.changes_since>`."""
        return self.subscription.changes_since(seq, limit=limit)

    def next(self, timeout: float | None = None) -> Change:
        """The next change. Raises ``TimeoutError`` after ``timeout`` seconds, and
        :class:`~supasync.core.errors.SupasyncError` if the facade is closed."""
        self._open()
        item = self._take(timeout)
        if item is None:
            if self._facade.closed:
                raise SupasyncError(f"subscription {self.name!r}: the client is closed")
            raise TimeoutError(f"no change on {self.name!r} within {timeout} s")
        return item

    def _take(self, timeout: float | None) -> Change | None:
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is _END:
            self._queue.put(_END)  # keep ending later calls too
            return None
        loop = self._facade._loop
        if self._space is not None and loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._space.release)
        assert isinstance(item, Change)
        return item

    def _open(self) -> None:
        with self._open_lock:
            if self._opened:
                return
            self._opened = True
        if self._facade.closed:
            self._queue.put(_END)
            return
        self._facade._call(self._open_on_loop())

    async def _open_on_loop(self) -> None:
        self._space = asyncio.Semaphore(self.subscription.queue_size)

        async def to_iterators(change: Change) -> None:
            assert self._space is not None
            await self._space.acquire()
            self._queue.put(change)

        to_iterators.__qualname__ = f"iter({self.name})"
        self.subscription.on(to_iterators)

    def _end(self) -> None:
        self._queue.put(_END)


class SyncRealtime:
    """Run a :class:`supasync.client.realtime.Realtime` on a background thread; use it
    synchronously.

    Args:
        url: project URL (``SUPABASE_URL``).
        api_key: anon or service-role key.
        token: as for :class:`~supasync.client.realtime.Realtime`: None (the API key), a token
        string, a
            callable, or a :class:`~supasync.client.tokens.TokenKeeper` - which the facade then
            starts and closes on its loop thread (its listeners run there too).
        client_factory: instead of ``url``/``api_key``: a zero-argument callable returning the
            async client; it is called on the loop thread (``Realtime.from_settings`` uses it).
        call_timeout: how long blocking calls wait for the loop thread.
        **options: further keyword arguments for ``Realtime``.

    Nothing starts until :meth:`start` or ``with``. See the module documentation for the
    threading contract.
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        token: Any = None,
        client_factory: Callable[[], Realtime] | None = None,
        call_timeout: float = CALL_TIMEOUT,
        **options: Any,
    ) -> None:
        if client_factory is None:
            if not url or not api_key:
                raise SupasyncError(
                    "SyncRealtime needs url and api_key, or client_factory "
                    "(or use SyncRealtime.from_env())"
                )
            client_factory = functools.partial(_make_client, url, api_key, token, options)
        self._factory = client_factory
        self._keeper = token if isinstance(token, TokenKeeper) else None
        self.call_timeout = call_timeout
        self._client: Realtime | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._worker: concurrent.futures.ThreadPoolExecutor | None = None
        self._subs: list[SyncSubscription] = []
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._started = False
        self._closed = False

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_settings(
        cls, settings: Settings, *, call_timeout: float = CALL_TIMEOUT, **options: Any
    ) -> SyncRealtime:
        """A facade for ``Realtime.from_settings(settings, **options)``; the settings'
        subscriptions (from ``supasync.toml``) are declared by the async client as it does for
        itself. ``options`` (``cache=``, ``repair=``, ...) go to the async client."""

        def factory() -> Realtime:
            from .realtime import Realtime

            return Realtime.from_settings(settings, **options)

        return cls(client_factory=factory, call_timeout=call_timeout)

    @classmethod
    def from_env(
        cls,
        *,
        env_file: str | Path = ".env",
        toml_path: str | Path = "supasync.toml",
        **kwargs: Any,
    ) -> SyncRealtime:
        """Settings from the environment, ``.env`` and ``supasync.toml`` (see
        :func:`supasync.client.config.load_settings`). Raises ConfigError on bad settings."""
        from .config import load_settings

        settings = load_settings(env_file=Path(env_file), toml_path=Path(toml_path))
        return cls.from_settings(settings, **kwargs)

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def client(self) -> Realtime:
        """The async client (use it only on the loop thread, e.g. from async handlers)."""
        if self._client is None:
            raise SupasyncError("SyncRealtime is not started: call start() or use `with`")
        return self._client

    def start(self) -> Self:
        """Start the loop and handler threads and the client (connecting in the background).

        Returns at once after the client has started; use :meth:`wait_live` to wait for the
        subscriptions. Idempotent. Raises the client's start-up error (e.g. AuthError).
        """
        self._check_process()
        with self._lock:
            if self._closed:
                raise SupasyncError("SyncRealtime is closed; create a new one")
            if self._started:
                return self
            self._started = True
            ready = threading.Event()
            self._worker = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="supasync-handler"
            )
            self._thread = threading.Thread(
                target=self._run_loop, args=(ready,), name="supasync-loop", daemon=True
            )
            self._thread.start()
            ready.wait()
            atexit.register(self.close)
        try:
            declared = self._call(self._start_client())
        except BaseException:
            self.close()
            raise
        with self._lock:
            self._subs.extend(SyncSubscription(self, sub) for sub in declared)
        return self

    def _run_loop(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        ready.set()
        try:
            loop.run_forever()
        finally:
            try:
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    async def _start_client(self) -> list[Subscription]:
        if self._keeper is not None:
            await self._keeper.start()
        client = self._factory()
        self._client = client
        await client.__aenter__()
        return list(client.subscriptions)  # declared by the factory (e.g. supasync.toml)

    def close(self, timeout: float | None = None) -> None:
        """Close the client, end every ``iter()``, stop and join the threads. Idempotent.

        Args:
            timeout: how long to wait for the client to close (default ``call_timeout``).
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            atexit.unregister(self.close)
            loop, thread, worker = self._loop, self._thread, self._worker
        if os.getpid() != self._pid:
            return  # a forked child: the threads are not ours
        if loop is not None and thread is not None and thread.is_alive():
            try:
                self._submit(self._aclose()).result(timeout or self.call_timeout)
            except Exception as exc:
                log.warning("closing the realtime client failed: %r", exc)
            loop.call_soon_threadsafe(loop.stop)
            if threading.current_thread() is not thread:
                thread.join(timeout or self.call_timeout)
        close_store = getattr(self._client, "_close_store", None)
        if close_store is not None and (thread is None or not thread.is_alive()):
            # However the close above went (timed out, failed), the loop is gone: remove a
            # temporary cache now rather than leaving it in the temp directory.
            close_store()
        for sub in self._subs:
            sub._end()
        if worker is not None:
            # From the handler thread itself (a handler called close()), do not wait for it:
            # it ends once that handler returns.
            worker.shutdown(wait=not _on_thread(worker), cancel_futures=True)

    async def _aclose(self) -> None:
        try:
            if self._client is not None:
                await self._client.aclose()
        finally:
            if self._keeper is not None:
                await self._keeper.aclose()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "started" if self._started else "new"
        return f"<SyncRealtime {state} subscriptions={[s.name for s in self._subs]}>"

    # -- the API -------------------------------------------------------------------------------

    def subscribe(
        self,
        table: str,
        *,
        schema: str = "public",
        events: str | Iterable[str] = "*",
        filter: str | Filter | None = None,
        handler: SyncHandler | None = None,
        name: str | None = None,
        primary_key: Sequence[str] | None = None,
        columns: Sequence[str] | None = None,
        gate: Gate | None = None,
        **options: Any,
    ) -> SyncSubscription:
        """Declare a subscription (see :meth:`supasync.client.realtime.Realtime.subscribe`).

        ``handler`` may be a plain function (called on the handler thread) or an ``async def``
        (called on the loop thread). Starts the facade if needed. Raises FilterError /
        ConfigError for a bad declaration, here in the calling thread.
        """
        self.start()
        kwargs: dict[str, Any] = {"schema": schema, "events": events, **options}
        if filter is not None:
            kwargs["filter"] = filter
        if name is not None:
            kwargs["name"] = name
        if primary_key is not None:
            kwargs["primary_key"] = tuple(primary_key)
        if columns is not None:
            kwargs["columns"] = tuple(columns)
        if gate is not None:
            kwargs["gate"] = gate
        if handler is not None:
            kwargs["handler"] = self._wrap_handler(handler)

        async def declare() -> Subscription:
            return self.client.subscribe(table, **kwargs)

        sub = SyncSubscription(self, self._call(declare()))
        with self._lock:
            self._subs.append(sub)
            if self._closed:
                sub._end()
        return sub

    def wait_live(self, timeout: float = 30.0) -> None:
        """Block until every subscription is live (starting the facade if needed).

        Raises:
            TimeoutError: not live within ``timeout`` seconds.
            SubscriptionError: a subscription was rejected for good (bad filter, table not
                published, unauthorised).
        """
        self.start()
        self._call(self.client.wait_live(timeout), timeout=timeout + 5)

    def wait_synced(self, timeout: float = 60.0) -> None:
        """Block until every subscription is live and caught up (its first snapshot or latest
        repair handed to the handlers); see :meth:`supasync.Realtime.wait_synced`.

        Raises:
            TimeoutError: not caught up within ``timeout`` seconds.
            SubscriptionError: a subscription was rejected for good.
        """
        self.start()
        self._call(self.client.wait_synced(timeout), timeout=timeout + 5)

    @property
    def state(self) -> ConnectionState:
        """The connection state (``connecting``, ``live``, ``degraded``, ``reconnecting``,
        ``stopped``); reading it is thread-safe."""
        return self.client.status.state

    @property
    def subscriptions(self) -> list[SyncSubscription]:
        """Every subscription: those declared here and those from the settings."""
        return list(self._subs)

    def subscription(self, name: str) -> SyncSubscription:
        """The subscription called ``name`` (e.g. one declared in ``supasync.toml``)."""
        for sub in self._subs:
            if sub.name == name:
                return sub
        raise KeyError(name)

    def on_status(self, callback: Callable[[StatusEvent], Any]) -> Callable[[], None]:
        """Call ``callback(event)`` on the handler thread for every status event; returns an
        unsubscribe function."""
        worker = self._worker
        if worker is None:
            self.start()
            worker = self._worker
        assert worker is not None

        def forward(event: StatusEvent) -> None:
            if not self._closed:
                worker.submit(_logged, callback, event)

        async def register() -> Callable[[], None]:
            return self.client.status.subscribe(forward)

        unsubscribe = self._call(register())

        def threadsafe_unsubscribe() -> None:
            loop = self._loop
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(unsubscribe)

        return threadsafe_unsubscribe

    # -- plumbing ------------------------------------------------------------------------------

    def _wrap_handler(self, handler: SyncHandler) -> SyncHandler:
        if _is_async(handler):
            return handler

        async def on_handler_thread(change: Change) -> None:
            loop = asyncio.get_running_loop()
            worker = self._worker
            if worker is None or self._closed:
                return
            result = await loop.run_in_executor(worker, handler, change)
            if inspect.isawaitable(result):
                await result

        on_handler_thread.__qualname__ = getattr(handler, "__qualname__", repr(handler))
        on_handler_thread.__name__ = getattr(handler, "__name__", "handler")
        return on_handler_thread

    def _check_process(self) -> None:
        if os.getpid() != self._pid:
            raise SupasyncError(
                "this SyncRealtime was created in another process (before a fork); "
                "create it in the worker process instead"
            )

    def _submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        loop = self._loop
        if loop is None or loop.is_closed():
            coro.close()
            raise SupasyncError("SyncRealtime is not running")
        return asyncio.run_coroutine_threadsafe(coro, loop)

    def _call(self, awaitable: Awaitable[T], *, timeout: float | None = None) -> T:
        self._check_process()
        if self._thread is not None and threading.current_thread() is self._thread:
            if inspect.iscoroutine(awaitable):
                awaitable.close()
            raise RuntimeError(
                "SyncRealtime's blocking API was called from its own event loop (an async "
                "handler?); use the async client (SyncRealtime.client) there instead"
            )
        coro: Coroutine[Any, Any, T] = (
            awaitable if inspect.iscoroutine(awaitable) else _await(awaitable)
        )
        future = self._submit(coro)
        try:
            return future.result(timeout if timeout is not None else self.call_timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError("the supasync loop thread did not answer in time") from None


def _make_client(url: str, api_key: str, token: Any, options: dict[str, Any]) -> Realtime:
    from .realtime import Realtime

    if token is not None:
        options = {**options, "token": token}
    return Realtime(url, api_key, **options)


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


def _is_async(fn: object) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - async callable objects
    )


def _on_thread(worker: concurrent.futures.ThreadPoolExecutor) -> bool:
    return any(t is threading.current_thread() for t in getattr(worker, "_threads", ()))


def _logged(callback: Callable[[Any], Any], event: Any) -> None:
    try:
        callback(event)
    except Exception:
        log.exception("status callback %r failed", callback)
