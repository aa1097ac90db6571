"""The ASGI endpoint: ``GET /<name>/rows`` and ``GET /<name>/changes`` (server-sent events) for
each source, as a Starlette app that mounts in FastAPI or any ASGI app.

Contract:

* ``GET /<name>/rows[?filter=&order=&limit=]`` - ``{"seq": N, "primary_key": [...], "rows":
  [...]}`` and the header ``X-Supasync-Seq: N``: the rows and the journal position they
  reflect, read in one transaction. Following ``/changes?last_event_id=N`` from there misses
  nothing and repeats nothing.
* ``GET /<name>/changes[?filter=&coalesce_ms=&last_event_id=]`` - ``text/event-stream``:
  ``id:`` the journal ``seq``, ``event:`` ``insert``/``update``/``delete``/``must-refetch``,
  ``data:`` the change as one line of JSON (:mod:`supasync.web.events`). A stream resumes after
  the ``Last-Event-ID`` header (sent by an EventSource when it reconnects) or
  ``?last_event_id=``; without either it starts at the newest change. Every stream starts with
  ``retry:`` and an ``id:``-only event (its position), and heartbeats are ``:`` comments with
  the stream's position every ``heartbeat`` seconds. ``must-refetch`` (the position is older
  than the journal keeps, or the table was loaded again) ends the stream: read ``/rows`` and
  follow ``/changes`` from its ``seq``.
* **Slow clients never slow anyone else.** Nothing a stream does waits on another stream: the
  shared part (the :class:`~supasync.web.source.Hub`) only appends to a ring and wakes
  waiters; each stream copies from the ring, or reads the journal in a worker thread, at its
  own pace, into its own buffer of at most ``buffer_bytes`` bytes (so memory per stream is
  bounded whatever its client does). A live stream whose client does not keep up - its buffer
  is full and the last id written to it is more than ``max_lag`` journal entries behind the
  newest - or whose one write waited ``send_timeout`` seconds, is **cut off**: a warning names
  the client, the reason and the last id written to it, and the connection is closed; the
  client reconnects and resumes from its last id (the journal still has what it missed, or it
  is told to refetch). A stream catching up after a resume is not cut off for lagging (it is
  reading what it missed), only for taking nothing. ``/rows`` reads run in worker threads and
  are never behind a stream.
* :meth:`LiveEndpoint.close` ends every stream at once (each gets the end of its response) and
  stops the hubs; call it before the server's own shutdown (:func:`supasync.web.serve` does),
  since servers wait for open responses to finish before they run the app's shutdown.
* Errors are JSON ``{"error": ..., "fix": ...}``: 400 bad query option, 404 unknown name,
  503 the table is not there yet (the mirror is still taking its first snapshot).

Identity: every source is read with the identity that wrote it (``identity="service"``: the
backend's own; the browser presents no token). Nothing a browser sends widens that: a filter
only narrows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ..core.errors import CacheError, ConfigError, FilterError, SupasyncError
from ..core.filters import Filter, parse_filter
from .events import (
    Coalescer,
    apply_filter,
    encode_event,
    encode_must_refetch,
    encode_position,
    encode_retry,
    parse_coalesce,
    parse_position,
)
from .source import Batch, Hub, Source
from .users import Unauthenticated, UserSources, UserSpace

__all__ = ["LiveEndpoint", "StreamStats"]

logger = logging.getLogger("supasync.web")

_STREAM_HEADERS = {
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
    "Connection": "keep-alive",
}


def _error(status: int, message: str, fix: str | None = None,
           headers: Mapping[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if fix:
        body["fix"] = fix
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


class StreamStats:
    """Counters of an endpoint (for tests, benchmarks and a status page)."""

    def __init__(self) -> None:
        self.open = 0
        self.started = 0
        self.cut_off = 0
        self.events = 0
        self.cut_off_reasons: deque[str] = deque(maxlen=100)


class _Target:
    """What a request reads: the source, its hub, and for the ``user`` identity the user's
    space and the time its token expires."""

    def __init__(self, name: str, source: Source, hub: Hub, space: UserSpace | None = None,
                 expires_at: float | None = None) -> None:
        self.name, self.source, self.hub = name, source, hub
        self.space, self.expires_at = space, expires_at


class LiveEndpoint:
    """An ASGI app serving ``/<name>/rows`` and ``/<name>/changes`` for *sources* (identity
    ``service``), or for each signed-in user from *users* (identity ``user``,
    :class:`~supasync.web.users.UserSources`).

    Args:
        sources: name in the URL -> :class:`~supasync.web.source.Source`.
        users: the ``user`` identity instead of *sources*.
        heartbeat: seconds between heartbeat comments on an idle stream.
        buffer_bytes: each stream's buffer of encoded events not yet written.
        max_lag: a live stream with a full buffer whose client is more than this many
            journal entries behind the newest is cut off.
        send_timeout: seconds one write may wait for a client before it is cut off.
        poll_interval: seconds between the hubs' looks at the journal position.
        retry_ms: the ``retry:`` an EventSource waits before reconnecting.
        batch: events a stream takes at most per step.
    """

    def __init__(self, sources: Mapping[str, Source] | None = None, *,
                 users: UserSources | None = None, heartbeat: float = 15.0,
                 buffer_bytes: int = 1 << 20, send_timeout: float = 30.0,
                 poll_interval: float = 0.02, retry_ms: int = 1000, batch: int = 500,
                 ring: int = 10_000, max_lag: int = 10_000) -> None:
        if bool(sources) == (users is not None):
            raise ConfigError("a LiveEndpoint serves either sources (identity service) or "
                              "users (identity user)", key="sources",
                              fix="e.g. LiveEndpoint({'todos': StoreSource('m.sqlite', 'todos')})"
                              " or LiveEndpoint(users=UserSources(settings, targets))")
        self.users = users
        self.identity = "user" if users is not None else "service"
        if buffer_bytes < 4096:
            raise ConfigError("buffer_bytes is at least 4096", key="buffer_bytes",
                              value=buffer_bytes, fix="e.g. buffer_bytes=1 << 20")
        self.sources = dict(sources or {})
        self.heartbeat, self.buffer_bytes = heartbeat, buffer_bytes
        self.send_timeout, self.retry_ms, self.batch = send_timeout, retry_ms, batch
        self.max_lag = max_lag
        self.hubs = {name: Hub(src, poll_interval=poll_interval, ring=ring)
                     for name, src in self.sources.items()}
        self.stats = StreamStats()
        self._closing: asyncio.Event | None = None
        self._streams: set[asyncio.Task[Any]] = set()
        self._watched: dict[_Stream, asyncio.Task[Any]] = {}  # stream -> its sender
        self._ticker: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self.app = Starlette(routes=[
            Route("/{name}/rows", self._rows, methods=["GET"]),
            Route("/{name}/changes", self._changes, methods=["GET"]),
        ])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            # Mounted sub-apps get no lifespan in Starlette/FastAPI; standing alone, this one
            # closes its streams when the server says it shuts down.
            await self._lifespan(receive, send)
            return
        await self.app(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _closing_event(self) -> asyncio.Event:
        if self._closing is None:
            self._closing = asyncio.Event()
        return self._closing

    @property
    def closed(self) -> bool:
        return self._closing is not None and self._closing.is_set()

    def poke(self) -> None:
        """A writer in this process committed: every hub looks now (optional; they poll)."""
        for hub in self.hubs.values():
            hub.poke()

    def _watch(self, stream: _Stream, sender: asyncio.Task[Any]) -> None:
        self._watched[stream] = sender
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.create_task(self._tick(), name="supasync-web-ticker")

    async def _tick(self) -> None:
        """Heartbeats and write time-outs of every stream, from one task (see
        :meth:`_Stream.tick`). It looks 4 times per heartbeat period (at least once a second),
        so a heartbeat comes within 1.25 periods of quiet and a stuck write is cut off within
        a second or a quarter period of ``send_timeout``."""
        step = min(1.0, self.heartbeat / 4, self.send_timeout / 4)
        while not self.closed:
            await asyncio.sleep(step)  # a periodic look, not a synchronisation wait
            now = time.monotonic()
            for stream, sender in list(self._watched.items()):
                stream.tick(now, self.heartbeat, self.send_timeout, sender)

    async def close(self) -> None:
        """End every stream at once and stop following the sources. Idempotent."""
        self._closing_event().set()
        if self._ticker is not None:
            self._ticker.cancel()
        streams = list(self._streams)
        if streams:
            await asyncio.wait(streams)
        for hub in self.hubs.values():
            await hub.close()
        if self.users is not None:
            await self.users.close()

    # -- helpers ---------------------------------------------------------------------------
    async def _target(self, request: Request) -> _Target | Response:
        name = request.path_params["name"]
        names = self.users.names if self.users is not None else list(self.sources)
        if name not in names:
            return _error(404, f"no source named {name!r}", f"use one of: {', '.join(names)}")
        if self.users is None:
            return _Target(name, self.sources[name], self.hubs[name])
        try:
            space = await self.users.space(request)
        except Unauthenticated as exc:
            return _error(401, str(exc), exc.fix, {"WWW-Authenticate": "Bearer"})
        except CacheError as exc:
            return _error(503, f"{name} is not ready for this user: {exc}",
                          "retry in a moment", {"Retry-After": "1"})
        except SupasyncError as exc:
            return _error(503, str(exc), "retry in a moment", {"Retry-After": "1"})
        return _Target(name, space.sources[name], space.hubs[name], space, space.expires_at)

    @staticmethod
    def _filter(request: Request) -> Filter | Response | None:
        text = request.query_params.get("filter")
        if not text:
            return None
        try:
            return parse_filter(text)
        except FilterError as exc:
            return _error(400, f"bad filter: {exc}", "use supasync filter syntax, e.g. "
                          "filter=done=eq.false or filter=and(done.eq.false,id.gt.10)")

    # -- /<name>/rows ----------------------------------------------------------------------
    async def _rows(self, request: Request) -> Response:
        target = await self._target(request)
        if isinstance(target, Response):
            return target
        name, source = target.name, target.source
        where = self._filter(request)
        if isinstance(where, Response):
            return where
        order = request.query_params.get("order") or None
        limit_text = request.query_params.get("limit")
        limit: int | None = None
        if limit_text:
            if not limit_text.isdigit():
                return _error(400, f"limit must be a whole number, got {limit_text[:40]!r}",
                              "e.g. limit=100")
            limit = int(limit_text)
        try:
            got = await asyncio.to_thread(source.read, where, order_by=order, limit=limit)
        except FilterError as exc:
            return _error(400, f"bad filter or order: {exc}", "name columns the table has")
        except CacheError as exc:
            return _error(503, f"{name} is not ready: {exc}", "retry in a moment",
                          {"Retry-After": "1"})
        body = json.dumps({"seq": got.seq, "primary_key": list(got.primary_key),
                           "rows": got.rows}, default=str,
                          separators=(",", ":"), ensure_ascii=False)
        return Response(body, media_type="application/json",
                        headers={"X-Supasync-Seq": str(got.seq)})

    # -- /<name>/changes -------------------------------------------------------------------
    async def _changes(self, request: Request) -> Response:
        if self.closed:
            return _error(503, "the server is shutting down", "reconnect in a moment",
                          {"Retry-After": "1"})
        where = self._filter(request)
        if isinstance(where, Response):
            return where
        target = await self._target(request)
        if isinstance(target, Response):
            return target
        name, source = target.name, target.source
        try:
            start = parse_position(request.headers.get("last-event-id"),
                                   request.query_params.get("last_event_id"))
            window = parse_coalesce(request.query_params.get("coalesce_ms"))
        except ConfigError as exc:
            return _error(400, str(exc), exc.fix)
        try:  # the filter's columns exist, and the table is there
            await asyncio.to_thread(source.read, where, limit=0)
        except FilterError as exc:
            return _error(400, f"bad filter: {exc}", "name columns the table has")
        except CacheError as exc:
            return _error(503, f"{name} is not ready: {exc}", "retry in a moment",
                          {"Retry-After": "1"})
        hub = target.hub
        await hub.start()
        if start is not None and start > max(hub.seq, await asyncio.to_thread(source.seq)):
            return _error(400, f"position {start} is ahead of the journal (newest {hub.seq}); "
                          "it comes from another store", "read /rows again and resume from "
                          "its seq")
        client = request.client
        peer = f"{client.host}:{client.port}" if client else "?"
        return _EventStream(self, _Stream(self, name, source, hub, where, window, start, peer),
                            target)


class _Buffer:
    """A stream's outgoing bytes: at most *limit*, counting what is being written (one chunk
    may exceed it when the buffer is empty, so any event fits)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: deque[bytes] = deque()
        self.size = 0
        self.ready = asyncio.Event()  # something to write
        self.room = asyncio.Event()  # something was written

    def fits(self, n: int) -> bool:
        return self.size == 0 or self.size + n <= self.limit

    def put(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)
        self.ready.set()

    def take(self) -> bytes:
        data = b"".join(self.chunks)
        self.chunks.clear()
        self.ready.clear()
        return data  # still counted in size until written (done())

    def done(self, n: int) -> None:
        self.size -= n
        self.room.set()


class _CutOff(Exception):
    pass


class _Stream:
    """One client's stream: a producer (changes -> buffer) and a sender (buffer -> socket).

    The producer waits while the buffer is full. *Catching up* (from a position behind the
    newest change, until it first reaches it) it waits as long as the client takes bytes: the
    client is reading what it missed, as fast as it can. *Live* (once it reached the newest
    change), a client whose last written id falls more than ``max_lag`` changes behind the
    newest while its buffer is full has fallen behind the live stream: it is cut off."""

    def __init__(self, endpoint: LiveEndpoint, name: str, source: Source, hub: Hub,
                 where: Filter | None, window: float, start: int | None, peer: str) -> None:
        self.ep, self.name, self.source, self.hub = endpoint, name, source, hub
        self.where, self.window, self.start, self.peer = where, window, start, peer
        self.id = next(endpoint._ids)
        self.buffer = _Buffer(endpoint.buffer_bytes)
        self.position = start if start is not None else hub.seq  # all up to here is buffered
        self.sent_id = self.position  # the last position handed to the socket
        self.catching_up = True
        self.ended = asyncio.Event()  # the producer has nothing more (must-refetch)
        # Watched by the endpoint's ticker (LiveEndpoint._tick), not by a timer per write:
        # when the last write ended, and since when the current one waits (None: none).
        self.last_write = time.monotonic()
        self.sending_since: float | None = None
        self.stalled: str | None = None  # why the ticker cut the sender off

    async def _put(self, data: bytes, position: int | None = None) -> None:
        buffer = self.buffer
        while not buffer.fits(len(data)):
            lag = self.hub.seq - self.sent_id
            if not self.catching_up and lag > self.ep.max_lag:
                raise _CutOff(f"the client fell behind the live changes: {lag} changes behind "
                              f"(max_lag {self.ep.max_lag}) with {buffer.size} bytes not yet "
                              f"taken (buffer {buffer.limit} bytes)")
            buffer.room.clear()
            # Woken by the sender (room) or by new changes (the lag grew); deliver() also
            # times out a client that takes nothing at all.
            room = asyncio.ensure_future(buffer.room.wait())
            newer = asyncio.ensure_future(self.hub.wait_beyond(self.hub.seq, None))
            try:
                await asyncio.wait({room, newer}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                room.cancel()
                newer.cancel()
        buffer.put(data)
        if position is not None:
            self.position = position

    async def _next(self, after: int, limit: int) -> Batch:
        batch = self.hub.after(after, limit)
        if batch is None:  # behind the shared ring: read the journal itself
            batch = await asyncio.to_thread(self.source.changes, after, limit=limit)
        return batch

    async def produce(self) -> None:
        """Changes -> buffer until must-refetch (or cancelled).

        ``read`` is how far the stream has read; ``self.position`` how far everything is in
        the buffer (behind ``read`` while coalesced events wait for their window to end)."""
        await self._put(encode_retry(self.ep.retry_ms) + encode_position(self.position))
        coalescer = Coalescer() if self.window > 0 else None
        flush_at: float | None = None
        read = self.position
        loop = asyncio.get_running_loop()
        while True:
            if read >= self.hub.seq:
                self.catching_up = False
            batch = await self._next(read, self.ep.batch)
            if batch.must_refetch:
                if coalescer is not None and len(coalescer):
                    await self._emit(coalescer.drain(), read)
                await self._put(encode_must_refetch(self.name, batch.seq, batch.reason))
                self.ended.set()
                return
            events = apply_filter(batch.events, self.where)
            moved = batch.seq > read
            read = max(read, batch.seq)
            if coalescer is None:
                if moved:
                    await self._emit(events, read)
            else:
                if events:
                    coalescer.add(events)
                    if flush_at is None:
                        flush_at = loop.time() + self.window
                if flush_at is None:
                    self.position = read  # nothing held back: the position moves on
                elif loop.time() >= flush_at:
                    await self._emit(coalescer.drain(), read)
                    flush_at = None
            if moved:
                continue  # maybe more right away
            timeout = None if flush_at is None else max(0.0, flush_at - loop.time())
            await self.hub.wait_beyond(read, timeout)

    async def _emit(self, events: list[Any], position: int) -> None:
        for e in events:
            await self._put(encode_event(e), e.seq)
        self.ep.stats.events += len(events)
        self.position = position

    async def deliver(self, send: Send) -> None:
        """Buffer -> socket (or cancelled). Heartbeats when idle and the cut-off of a write
        that waits too long come from the endpoint's ticker (:meth:`LiveEndpoint._tick`): no
        timer is armed per write, which at a thousand streams was most of a delivery's cost."""
        buffer = self.buffer
        while True:
            if not buffer.chunks:
                if self.ended.is_set():
                    return
                await buffer.ready.wait()
                if not buffer.chunks:
                    continue
            upto = self.position
            data = buffer.take()
            self.sending_since = time.monotonic()
            try:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            except asyncio.CancelledError:
                if self.stalled is not None:
                    raise _CutOff(self.stalled) from None
                raise
            self.sending_since = None
            self.last_write = time.monotonic()
            buffer.done(len(data))
            self.sent_id = upto
            if self.ended.is_set() and not buffer.chunks:
                return

    def tick(self, now: float, heartbeat: float, send_timeout: float,
             sender: asyncio.Task[Any] | None) -> None:
        """The ticker's look at this stream: a heartbeat when nothing was written for
        *heartbeat* s; the sender cut off when one write has waited *send_timeout* s."""
        since = self.sending_since
        if since is not None:
            if now - since >= send_timeout and sender is not None and self.stalled is None:
                self.stalled = f"the client took no bytes for {send_timeout:g} s"
                sender.cancel()
        elif not self.buffer.chunks and now - self.last_write >= heartbeat:
            self.last_write = now  # one heartbeat per period, even if its write is slow
            self.buffer.put(encode_position(self.position, "heartbeat"))  # tiny


class _EventStream(Response):
    """The ASGI response of one stream (see :class:`LiveEndpoint`)."""

    media_type = "text/event-stream"

    def __init__(self, endpoint: LiveEndpoint, stream: _Stream, target: _Target) -> None:
        super().__init__(None, headers=_STREAM_HEADERS, media_type=self.media_type)
        self.target = target
        # No Content-Length: the body is a stream (Response adds "0" for an empty body).
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.ep, self.stream = endpoint, stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ep = self.ep
        task = asyncio.current_task()
        assert task is not None
        ep._streams.add(task)
        ep.stats.open += 1
        ep.stats.started += 1
        space = self.target.space
        if space is not None:
            space.streams += 1
        complete = True
        try:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            complete = await self._run(receive, send)
        finally:
            ep.stats.open -= 1
            ep._streams.discard(task)
            if space is not None:
                space.streams -= 1
                space.last_used = time.monotonic()
        if complete:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _run(self, receive: Receive, send: Send) -> bool:
        """Run until the client leaves, the stream ends, it is cut off or the endpoint closes;
        returns whether the response may be completed (False when the client is gone or not
        taking bytes)."""
        ep, stream = self.ep, self.stream

        async def disconnected() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        async def expiry(at: float) -> None:
            # The token this stream was opened with expires: the stream ends with it.
            await asyncio.sleep(max(0.0, at - time.time()))
            stream.buffer.put(b": token expired\n\n")

        sender = asyncio.create_task(stream.deliver(send))
        ep._watch(stream, sender)
        tasks = {
            asyncio.create_task(stream.produce()): "produce",
            sender: "deliver",
            asyncio.create_task(disconnected()): "disconnected",
            asyncio.create_task(ep._closing_event().wait()): "closing",
        }
        if self.target.expires_at is not None:
            tasks[asyncio.create_task(expiry(self.target.expires_at))] = "expired"
        dropped: list[asyncio.Task[Any]] = []
        try:
            while True:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                finished = {tasks[t] for t in done}
                for t in done:
                    exc = t.exception()
                    if isinstance(exc, _CutOff):
                        self._cut_off(str(exc))
                        return False
                    if exc is not None and not isinstance(exc, CacheError):
                        raise exc
                    if isinstance(exc, CacheError):
                        logger.warning("supasync.web: stream %d of %s ended: %s",
                                       stream.id, stream.name, exc)
                        return True
                if "disconnected" in finished:
                    return False
                if "deliver" in finished or "closing" in finished:
                    return "closing" not in finished or not stream.buffer.size
                if "expired" in finished:
                    stream.ended.set()  # the sender writes what is buffered, then ends
                    for t, n in list(tasks.items()):
                        if n in ("produce", "closing", "expired"):
                            t.cancel()
                            dropped.append(t)
                            del tasks[t]
                    continue
                # the producer ended (must-refetch): the sender delivers what is left
                for t in [t for t in tasks if t in done]:
                    del tasks[t]
        finally:
            ep._watched.pop(stream, None)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, *dropped, return_exceptions=True)

    def _cut_off(self, reason: str) -> None:
        s = self.stream
        self.ep.stats.cut_off += 1
        self.ep.stats.cut_off_reasons.append(reason)
        logger.warning("supasync.web: cut off stream %d of %s (client %s): %s; the last id "
                       "written to it was %d, from which it resumes", s.id, s.name, s.peer,
                       reason, s.sent_id)
