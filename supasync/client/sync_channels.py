"""Broadcast/presence channels seen from synchronous code (:meth:`SyncRealtime.channel
<supasync.client.sync.SyncRealtime.channel>`).

The channel itself (:class:`~supasync.client.channels.Channel`) lives on the facade's loop
thread; every method here is thread-safe and blocks until the loop has done the work.
Synchronous handlers run on the facade's handler thread (one at a time, in delivery order),
``async def`` handlers on the loop, as for subscriptions::

    with SyncRealtime(url, key, token=jwt) as rt:
        ch = rt.channel("jobs")
        ch.on_broadcast("cancel", lambda msg: cancel(msg.payload["job"]))
        ch.track({"worker": "w1"})
        ch.send("progress", {"job": 7, "pct": 40})      # returns once acknowledged
        for msg in ch.broadcasts("done", timeout=5): ...
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, Final, Protocol, TypeVar

from ..core.broadcast import Broadcast
from ..core.errors import SupasyncError
from .channels import Channel, ChannelStats

T = TypeVar("T")


class _Facade(Protocol):
    """What a SyncChannel needs of :class:`~supasync.client.sync.SyncRealtime` (a protocol,
    so this module does not import the facade that imports it)."""

    @property
    def closed(self) -> bool: ...

    def _call(self, awaitable: Awaitable[T], *, timeout: float | None = None) -> T: ...

    def _wrap_handler(self, handler: Callable[[Any], Any]) -> Callable[[Any], Any]: ...

__all__ = ["SyncChannel"]

_END: Final = object()


class SyncChannel:
    """A :class:`~supasync.client.channels.Channel` for threads. ``channel`` is the async object
    (touch it only on the loop thread)."""

    def __init__(self, facade: _Facade, channel: Channel) -> None:
        self._facade = facade
        self.channel = channel
        self.topic = channel.topic
        self.private = channel.private
        self.name = channel.name
        self._iterators: list[queue.Queue[object]] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<SyncChannel {self.topic!r}{' private' if self.private else ''}>"

    # -- state ------------------------------------------------------------------------------
    @property
    def live(self) -> bool:
        return self.channel.live

    @property
    def pending(self) -> int:
        return self.channel.pending

    @property
    def stats(self) -> ChannelStats:
        return self.channel.stats

    @property
    def error(self) -> SupasyncError | None:
        return self.channel.error

    def wait_live(self, timeout: float = 30.0) -> None:
        """Block until joined (raises like :meth:`Channel.wait_live`)."""
        self._facade._call(self.channel.wait_live(timeout), timeout=timeout + 5)

    # -- receiving --------------------------------------------------------------------------
    def on_broadcast(self, event: str, handler: Any = None) -> Any:
        """Add a broadcast handler for ``event`` (``"*"``: all); usable as a decorator."""
        if handler is None:
            def decorator(fn: Any) -> Any:
                self.on_broadcast(event, fn)
                return fn
            return decorator
        wrapped: Any = self._facade._wrap_handler(handler)  # generic over the item type

        async def add() -> None:
            self.channel.on_broadcast(event, wrapped)

        self._facade._call(add())
        return handler

    def on_presence(self, handler: Any = None) -> Any:
        """Add a presence handler (gets a :class:`~supasync.core.broadcast.PresenceChange`)."""
        if handler is None:
            def decorator(fn: Any) -> Any:
                self.on_presence(fn)
                return fn
            return decorator
        wrapped: Any = self._facade._wrap_handler(handler)  # generic over the item type

        async def add() -> None:
            self.channel.on_presence(wrapped)

        self._facade._call(add())
        return handler

    def broadcasts(self, event: str | None = None,
                   timeout: float | None = None) -> Iterator[Broadcast]:
        """Yield broadcasts received from this call on (``event``: only that one); stops
        after ``timeout`` seconds without one, or when the facade closes. Nothing is dropped
        while you are slow, up to the channel's ``queue_size``."""
        inbox: queue.Queue[object] = queue.Queue()
        with self._lock:
            self._iterators.append(inbox)

        async def forward(msg: Broadcast) -> None:
            inbox.put(msg)

        forward.__qualname__ = f"broadcasts({self.topic})"

        async def add() -> None:
            self.channel.on_broadcast(event or "*", forward)

        self._facade._call(add())
        if self._facade.closed:
            inbox.put(_END)
        return self._iterate(inbox, timeout)

    @staticmethod
    def _iterate(inbox: queue.Queue[object], timeout: float | None) -> Iterator[Broadcast]:
        while True:
            try:
                item = inbox.get(timeout=timeout)
            except queue.Empty:
                return
            if item is _END:
                inbox.put(_END)
                return
            assert isinstance(item, Broadcast)
            yield item

    def presence(self) -> dict[str, list[dict[str, Any]]]:
        """The current presence state (``{key: [meta, ...]}``)."""
        async def read() -> dict[str, list[dict[str, Any]]]:
            return self.channel.presence()

        return self._facade._call(read())

    # -- sending ----------------------------------------------------------------------------
    def send(self, event: str, payload: Mapping[str, Any] | None = None, *,
             timeout: float | None = None) -> str:
        """Send a broadcast and block until the server acknowledged it; returns its id.

        Raises as :meth:`Channel.send`; ``TimeoutError`` after ``timeout`` seconds (default:
        the facade's ``call_timeout``) - the message then stays queued and is still sent."""
        async def send() -> str:
            msg = self.channel.send_nowait(event, payload)
            return await asyncio.shield(msg.waiter)

        return self._facade._call(send(), timeout=timeout)

    def send_nowait(self, event: str, payload: Mapping[str, Any] | None = None) -> str:
        """Queue a broadcast without waiting for the ack; returns its id (failures are
        logged)."""
        async def queue_it() -> str:
            return self.channel.send_nowait(event, payload).id

        return self._facade._call(queue_it())

    def track(self, meta: Mapping[str, Any]) -> None:
        """Be present with ``meta`` (tracked again after every rejoin)."""
        self._facade._call(self.channel.track(meta))

    def untrack(self) -> None:
        self._facade._call(self.channel.untrack())

    def close(self) -> None:
        """Leave the channel and remove it from the client."""
        self._facade._call(self.channel.close())
        self._end()

    def _end(self) -> None:
        with self._lock:
            for inbox in self._iterators:
                inbox.put(_END)

