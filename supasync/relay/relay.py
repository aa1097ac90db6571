"""The relay: the change stream of tables, published into NATS JetStream.

Usage (the ``supasync relay`` command is :mod:`supasync.cli.relay`; embed with :class:`Relay`)::

    supasync relay --to nats://127.0.0.1:4222 --table public.todos --cache relay.sqlite

How it works - two tasks in one event loop, sharing one store file:

* **The mirror machinery** (:func:`supasync.mirror.worker.run_mirror`) follows the tables into
  the store file (``--cache``): first snapshot, live changes, every gap repaired (exact, cursor or
  diff), resume after a restart. Every row change it applies gets a journal entry in the same
  transaction (:mod:`supasync.store.journal`). It never waits for NATS: while NATS is down, the
  database is still followed and the journal grows.
* **The publisher** reads the journal from its saved position (``_supasync_relay`` in the same
  file, :mod:`~supasync.relay.source`), reads each change's row from the store, publishes the
  messages (:mod:`~supasync.relay.messages`: body = the row as it is when published, a
  ``Nats-Msg-Id`` derived from the change) pipelined, waits for **every** publish ack, and only
  then saves the new position. A failed or timed-out batch is published again after a backoff;
  JetStream drops the messages it already has (duplicate window). So: at least once into the
  broker, exactly once in the stream - across crashes (SIGKILL included), restarts and two
  relays publishing the same changes at once.

First run on a table: the publisher starts it once the first snapshot is complete, at that
position - or, with ``snapshot=True`` (``--snapshot``), publishes every row first (``op``
``SNAPSHOT``). A position the journal no longer covers (pruned after a long NATS outage, or the
table re-snapshotted after a change of primary key) is a **resync**: every row is published
again (``SNAPSHOT``, origin ``resync``) and a warning says so; deletions in that gap cannot be
told.

Without ``cache`` the store is a temporary file, removed at exit: a restart then snapshots
anew and starts from that moment (changes made while the relay was down are not published,
unless ``--snapshot`` republishes every row). Give ``--cache`` to resume where it stopped.

Exit codes as for the mirror: 0 stopped by a signal (or *stop*), 1 runtime failure, 2 bad input
(configuration, an existing stream that does not fit, a missing ``relay`` extra).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import logging
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ..core.backoff import Backoff, BackoffPolicy
from ..core.errors import ConfigError
from ..core.status import utcnow
from ..core.waiting import unless_stopped, wait_event
from ..mirror.status import TableFigures, metrics_text
from ..mirror.worker import MirrorOptions, MirrorTarget, run_mirror
from ..store.tables import mirror_table_name
from .jetstream import (
    StreamSpec,
    await_acks,
    connect,
    ensure_stream,
    nats_module,
    publish_batch,
    safe_url,
    send_batch,
)
from .messages import Message, build_message, check_subject_token, subject_for
from .source import Batch, RelaySource
from .status import RelayFigures, TableRelay, relay_metrics, relay_record, relay_status_line

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from nats.js.client import JetStreamContext

    from ..client.config import Settings

__all__ = ["DEFAULT_STREAM", "DEFAULT_SUBJECT_PREFIX", "Relay", "RelayOptions"]

logger = logging.getLogger("supasync.relay")

DEFAULT_STREAM = "SUPASYNC"
DEFAULT_SUBJECT_PREFIX = "supasync"
DEFAULT_URL = "nats://127.0.0.1:4222"
#: Batches of one table published back to back in one pass (then the other tables' turn).
MAX_ROUNDS = 20


@dataclass
class RelayOptions:
    """How the relay runs (everything but the tables and the Supabase settings)."""

    servers: tuple[str, ...] = (DEFAULT_URL,)
    stream: str = DEFAULT_STREAM
    subject_prefix: str = DEFAULT_SUBJECT_PREFIX
    #: the store file; None: a temporary file (no resume across restarts)
    cache: Path | None = None
    #: publish every row once when a table is first relayed
    snapshot: bool = False
    #: stream settings used when the relay creates the stream
    duplicate_window: float = 120.0
    max_age: float | None = None
    max_bytes: int | None = None
    max_msgs: int | None = None
    replicas: int = 1
    #: messages per batch (one journal read, one pipelined publish, one position write)
    batch_size: int = 1000
    #: seconds to wait for a batch's acks before publishing it again
    ack_timeout: float = 10.0
    #: seconds between journal checks when there is nothing to publish
    poll_interval: float = 0.02
    #: on a stop, seconds to keep publishing what the journal holds
    drain_timeout: float = 5.0
    #: backoff between failed batches (and stream checks)
    retry_cap: float = 5.0
    json_logs: bool = False
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    status_interval: float = 5.0
    quiet: bool = False
    progress: bool = True
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)


def check_options(options: RelayOptions) -> None:
    """Raise ConfigError for options that cannot work, before anything starts."""
    if not options.servers:
        raise ConfigError("no NATS server given", key="--to", fix="e.g. --to nats://127.0.0.1:4222")
    for url in options.servers:
        if not url.startswith(("nats://", "tls://", "ws://", "wss://")):
            raise ConfigError("not a NATS URL", key="--to", value=safe_url(url),
                              fix="write nats://HOST:PORT (several: repeat --to)")
    check_subject_token(options.stream, "stream name", "--stream")
    check_subject_token(options.subject_prefix, "prefix", "--subject-prefix")
    for key, value, minimum in (("--batch-size", options.batch_size, 1),
                                ("--replicas", options.replicas, 1)):
        if value < minimum:
            raise ConfigError(f"must be at least {minimum}", key=key, value=value)
    if options.duplicate_window <= 0:
        raise ConfigError("must be more than 0 seconds (it is what makes the stream drop a "
                          "change published twice)", key="--duplicate-window",
                          value=options.duplicate_window)


class Relay:
    """Follow *targets* into a store file and publish every change into JetStream.

    Args:
        settings: the Supabase settings (:func:`supasync.client.config.load_settings`).
        targets: the tables (:func:`supasync.mirror.worker.mirror_targets`).
        options: :class:`RelayOptions`.

    Raises (from :meth:`run`):
        ConfigError: bad options, an existing stream that does not take the subjects.
        MissingExtra: nats-py is not installed (``pip install 'supasync[relay]'``).
        CacheError / SupasyncError: as :func:`~supasync.mirror.worker.run_mirror`.
    """

    def __init__(self, settings: Settings, targets: Sequence[MirrorTarget],
                 options: RelayOptions | None = None) -> None:
        self.settings = settings
        self.targets = list(targets)
        self.options = options or RelayOptions()
        check_options(self.options)
        for t in self.targets:
            check_subject_token(t.schema, "schema name", "--table")
            check_subject_token(t.table, "table name", "--table")
        o = self.options
        self.figures = RelayFigures(
            url=", ".join(safe_url(u) for u in o.servers), stream=o.stream,
            tables=[TableRelay(t.name, mirror_table_name(t.schema, t.table),
                               subject_for(o.subject_prefix, t.schema, t.table))
                    for t in self.targets])
        self.mirror_figures: list[TableFigures] = []
        self.cache: Path | None = o.cache
        #: set once every table has a position and the stream is there
        self.ready = asyncio.Event()
        self._closing = False

    # -- output ----------------------------------------------------------------------
    def _emit(self, record: dict[str, Any]) -> None:
        if self.options.json_logs:
            self.options.out.write(json.dumps(record, default=str) + "\n")
            self.options.out.flush()

    def _say(self, text: str, level: int = logging.INFO) -> None:
        from ..core.redact import mask

        text = mask(text)
        if self.options.json_logs:
            self._emit({"event": "relay_info" if level < logging.WARNING else "relay_warning",
                        "at": utcnow().isoformat(), "message": text})
        elif not self.options.quiet or level >= logging.WARNING:
            self.options.err.write(f"supasync relay: {text}\n")
            self.options.err.flush()

    def status(self) -> None:
        now = time.time()
        if self.options.json_logs:
            self._emit(relay_record(self.figures, now, utcnow().isoformat()))
        elif not self.options.quiet:
            self.options.err.write(f"supasync relay: {relay_status_line(self.figures, now)}\n")
            self.options.err.flush()

    def metrics(self) -> str:
        """The mirror's and the relay's figures in Prometheus text format."""
        return (metrics_text(self.mirror_figures, utcnow())
                + relay_metrics(self.figures, time.time()))

    # -- running ---------------------------------------------------------------------
    async def run(self, *, stop: asyncio.Event | None = None,
                  on_ready: Callable[[Relay], None] | None = None) -> int:
        """Run until *stop* is set (or SIGINT/SIGTERM when *stop* is None); returns the exit
        code. *on_ready* is called once every table has a position (changes committed from
        then on are published)."""
        nats_module()  # MissingExtra before anything starts
        o = self.options
        stop = stop or asyncio.Event()
        tmpdir: str | None = None
        if self.cache is None:
            tmpdir = tempfile.mkdtemp(prefix="supasync-relay-")
            self.cache = Path(tmpdir) / "relay.sqlite"
            self._say("no --cache: the store is a temporary file; a restart starts from a new "
                      "snapshot (give --cache FILE to resume where it stopped)", logging.WARNING)
        mirror_opts = MirrorOptions(
            db=self.cache, json_logs=o.json_logs, status_interval=o.status_interval,
            quiet=o.quiet, progress=o.progress, out=o.out, err=o.err)
        mirror_ready = asyncio.Event()

        def got_figures(figures: list[TableFigures]) -> None:
            self.mirror_figures = figures
            mirror_ready.set()

        metrics = None
        mirror = asyncio.create_task(
            run_mirror(self.settings, self.targets, mirror_opts, stop=stop,
                       on_ready=got_figures), name="supasync-relay-mirror")
        publisher: asyncio.Task[None] | None = None
        ticker: asyncio.Task[None] | None = None
        try:
            if o.metrics_port is not None:
                metrics = _metrics_server(o.metrics_host, o.metrics_port, self.metrics)
                self._say(f"metrics on http://{o.metrics_host}:{o.metrics_port}/metrics")
            waiter = asyncio.create_task(mirror_ready.wait())
            await asyncio.wait({mirror, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if mirror.done():
                waiter.cancel()
                return mirror.result()
            done = asyncio.Event()
            publisher = asyncio.create_task(self._publish(self.cache, stop, done, on_ready),
                                            name="supasync-relay-publisher")
            ticker = asyncio.create_task(self._status_loop(), name="supasync-relay-status")
            await asyncio.wait({mirror, publisher}, return_when=asyncio.FIRST_COMPLETED)
            if publisher.done() and publisher.exception() is not None:
                stop.set()  # the relay cannot go on (a stream that does not fit): stop all
                with contextlib.suppress(Exception):
                    await mirror
                publisher.result()  # raises
            code = await mirror  # returns once stopped
            done.set()  # the mirror committed its last batch: the publisher drains and ends
            await publisher
            self.status()
            return code
        finally:
            for task in (ticker, publisher, mirror):
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            if metrics is not None:
                metrics.shutdown()
                metrics.server_close()
            if tmpdir is not None:
                shutil.rmtree(tmpdir, ignore_errors=True)
                self.cache = None

    async def publish_store(self, *, stop: asyncio.Event,
                            on_ready: Callable[[Relay], None] | None = None) -> None:
        """Only the publisher: publish the journal of the existing store file
        ``options.cache`` - written by another process (``supasync mirror --db`` on the same
        file) or by a program of yours - until *stop* is set, then what is pending within
        ``drain_timeout``. The tables must be in the file (else they wait).

        Raises:
            ConfigError: no ``cache`` given, or the stream does not fit.
        """
        nats_module()
        if self.cache is None or not self.cache.is_file():
            raise ConfigError("publish_store needs the store file", key="cache",
                              value=str(self.cache), fix="give RelayOptions(cache=PATH) of an "
                              "existing store file")
        written = asyncio.Event()
        written.set()  # no writer of ours to wait for on a stop
        await self._publish(self.cache, stop, written, on_ready)

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.status_interval)  # a periodic report
            self.status()

    # -- the publisher ---------------------------------------------------------------
    async def _publish(self, path: Path, stop: asyncio.Event, mirror_done: asyncio.Event,
                       on_ready: Callable[[Relay], None] | None) -> None:
        """Publish the journal until stopped; see the module docstring."""
        o = self.options
        source = await asyncio.to_thread(RelaySource, path, o.stream)
        backoff = Backoff(BackoffPolicy(initial=0.2, cap=o.retry_cap, reset_after=10.0),
                          random=random.random)
        spec = StreamSpec(o.stream, (f"{o.subject_prefix}.>",), o.duplicate_window, o.max_age,
                          o.max_bytes, o.max_msgs, o.replicas)
        nc: NATS | None = None
        js: JetStreamContext | None = None
        stream_ok = False
        drain_deadline: float | None = None
        loop = asyncio.get_running_loop()
        backlog_at = 0.0
        try:
            while True:
                if stop.is_set() and drain_deadline is None:
                    if not mirror_done.is_set():
                        await mirror_done.wait()
                    drain_deadline = loop.time() + o.drain_timeout
                if drain_deadline is not None and (loop.time() > drain_deadline or js is None):
                    return
                if nc is None:
                    nc = await self._connect(stop)
                    if nc is None:
                        continue  # stopped while connecting: nothing can be drained
                    js = nc.jetstream(publish_async_max_pending=max(4000, 2 * o.batch_size))
                assert js is not None
                try:
                    if not stream_ok:
                        self.figures.stream_state = await asyncio.wait_for(
                            ensure_stream(js, spec, [t.subject for t in self.figures.tables]),
                            o.ack_timeout)
                        stream_ok = True
                        self._say(f"stream {o.stream} {self.figures.stream_state}; publishing "
                                  f"to {spec.subjects[0]}")
                    moved = await self._pass(source, js)
                    backoff.success(loop.time())
                except ConfigError:
                    raise
                except Exception as exc:  # PublishFailed, a timeout, nats-py's errors: retry
                    self.figures.publish_failures += 1
                    self.figures.last_error = f"{type(exc).__name__}: {exc}"[:200]
                    if drain_deadline is not None:
                        self._say(f"stopping with changes not published ({exc}); they are "
                                  "published when the relay runs again", logging.WARNING)
                        return
                    delay = backoff.failure(loop.time())
                    logger.info("publish failed (%s); again in %.2fs", exc, delay)
                    await asyncio.to_thread(self._measure, source)  # the lag grows meanwhile
                    await wait_event(stop, delay)
                    continue
                if not self.ready.is_set() and all(
                        t.position is not None for t in self.figures.tables):
                    self.ready.set()
                    if on_ready is not None:
                        on_ready(self)
                if loop.time() - backlog_at >= 1.0:  # the figures, once a second
                    backlog_at = loop.time()
                    await asyncio.to_thread(self._measure, source)
                if drain_deadline is not None:
                    if not moved:
                        return
                    continue
                if not moved:
                    # Nothing new in the journal: look again shortly (the writer is another
                    # task of this process, but also any process writing the file).
                    await wait_event(stop, o.poll_interval)
        finally:
            if nc is not None:
                self._closing = True  # closing is not "disconnected"
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(nc.close(), 5.0)
                self.figures.nats = "closed"
            await asyncio.to_thread(source.close)

    async def _connect(self, stop: asyncio.Event) -> NATS | None:
        """Connect (nats-py retries for ever); None if *stop* comes first."""
        def on_state(state: str, server: str | None) -> None:
            if self._closing:
                return
            self.figures.server = server
            if state != self.figures.nats:
                self.figures.nats = state
                self._say(f"nats {state}" + (f" to {server}" if server else ""))

        self.figures.nats = "connecting"
        return await unless_stopped(connect(self.options.servers, on_state=on_state), stop)

    async def _pass(self, source: RelaySource, js: JetStreamContext) -> int:
        """One pass over every table: publish one batch of each. Returns how many journal
        entries were relayed (0: nothing new)."""
        o = self.options
        moved = 0
        for t in self.figures.tables:
            if t.position is None:
                saved = await asyncio.to_thread(source.position, t.store_name)
                if saved is not None:
                    t.position = saved[0]
                    t.state = "relaying"
                else:
                    first = await asyncio.to_thread(source.first_position, t.store_name)
                    if first is None:
                        continue  # the first snapshot is not complete yet
                    if o.snapshot:
                        moved += await self._publish_all(source, js, t, "snapshot")
                    else:
                        await asyncio.to_thread(source.save, t.store_name, first, 0)
                        t.position = first
                    t.state = "relaying"
                    self._say(f"{t.name}: relaying to {t.subject} from journal position "
                              f"{t.position}")
                    continue
            assert t.position is not None
            batch, messages = await asyncio.to_thread(self._prepare, source, t.store_name,
                                                      t.position)
            if batch.info is None:
                continue
            if batch.must_refetch:
                self._say(f"{t.name}: the journal no longer covers position {t.position} (pruned "
                          "while NATS was away, or the table was snapshotted again): "
                          "publishing every row again (resync); deletions in that gap are "
                          "not published", logging.WARNING)
                t.resyncs += 1
                moved += await self._publish_all(source, js, t, "resync")
                continue
            if not batch.entries:
                t.position = batch.seq
                continue
            # A pipeline: while a batch's acks are awaited, the next one is read and built (in
            # the worker thread, on the read connection); its position is saved on the write
            # connection once every ack is in. At most MAX_ROUNDS batches per table per pass,
            # so one busy table does not hold up the others.
            for _ in range(MAX_ROUNDS):
                futures = await send_batch(js, messages, o.stream)
                acks = await await_acks(futures, o.ack_timeout)
                # Measured (bench/relay.py): preparing the next batch in the worker thread while
                # the acks come back is slower than doing it after - the thread's Python work
                # and the loop's ack callbacks contend for the one interpreter lock.
                ahead = asyncio.create_task(asyncio.to_thread(
                    self._prepare, source, t.store_name, batch.seq))
                try:
                    await asyncio.to_thread(source.save, t.store_name, batch.seq, acks.stored)
                except BaseException:
                    with contextlib.suppress(Exception):
                        await ahead  # a thread cannot be cancelled: let it finish unused
                    raise
                t.position = batch.seq
                t.published += acks.stored
                t.duplicates += acks.duplicates
                t.last_commit = batch.entries[-1].change.commit_timestamp or t.last_commit
                moved += len(messages)
                batch, messages = await ahead
                if not batch.entries or batch.info is None or batch.must_refetch:
                    break  # the next pass handles what comes next
        return moved

    def _prepare(self, source: RelaySource, name: str, after: int) -> tuple[Batch,
                                                                          list[Message]]:
        """A batch after *after* and its messages (runs in the worker thread)."""
        o = self.options
        batch = source.read_changes(name, after, o.batch_size)
        info = batch.info
        if info is None or not batch.entries:
            return batch, []
        return batch, [
            build_message(o.subject_prefix, info.schema, info.table, e.change.pk or (),
                          info.primary_key, e.change.op, e.change.origin,
                          e.change.commit_timestamp, e.row, e.decoded_key, e.occurrence)
            for e in batch.entries
        ]

    async def _publish_all(self, source: RelaySource, js: JetStreamContext, t: TableRelay,
                           origin: str) -> int:
        """Publish every row (``SNAPSHOT``), then save the position they reflect."""
        o = self.options
        t.state = origin
        info, rows, seq = await asyncio.to_thread(source.read_all, t.store_name)
        self._say(f"{t.name}: publishing {len(rows)} rows ({origin})")
        for i in range(0, len(rows), o.batch_size):
            chunk = rows[i:i + o.batch_size]
            messages: list[Message] = [
                build_message(o.subject_prefix, info.schema, info.table, key, info.primary_key,
                              "R", origin, None, row,
                              tuple(row[c] for c in info.primary_key))
                for key, row in chunk
            ]
            acks = await publish_batch(js, messages, o.stream, o.ack_timeout)
            t.published += acks.stored
            t.duplicates += acks.duplicates
        await asyncio.to_thread(source.save, t.store_name, seq, len(rows))
        t.position = seq
        t.state = "relaying"
        return max(1, len(rows))

    def _measure(self, source: RelaySource) -> None:
        """Pending entries and the oldest one's age, per table (runs in the worker thread)."""
        for t in self.figures.tables:
            if t.position is None:
                continue
            t.pending, t.oldest_pending_at = source.backlog(t.store_name, t.position)


class _MetricsHandler(http.server.BaseHTTPRequestHandler):
    """``GET /metrics``: the mirror's and the relay's figures; anything else is 404."""

    render: Callable[[], str] = staticmethod(lambda: "")

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != "/metrics":
            self.send_error(404)
            return
        body = type(self).render().encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """No access log."""


def _metrics_server(host: str, port: int,
                    render: Callable[[], str]) -> http.server.ThreadingHTTPServer:
    handler = type("RelayMetricsHandler", (_MetricsHandler,), {"render": staticmethod(render)})
    server = http.server.ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="supasync-relay-metrics",
                     daemon=True).start()
    return server


def relay_settings(raw: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``[relay]`` table of ``supasync.toml`` as :class:`RelayOptions` keyword arguments.

    Keys: ``to`` (URL or list), ``stream``, ``subject_prefix``, ``cache``, ``snapshot``,
    ``duplicate_window``, ``max_age`` (seconds), ``max_bytes``, ``max_msgs``, ``replicas``,
    ``batch_size``.

    Raises:
        ConfigError: an unknown key or a value of the wrong type.
    """
    if not raw:
        return {}
    kinds: dict[str, tuple[str, type | tuple[type, ...]]] = {
        "to": ("servers", (str, list)), "stream": ("stream", str),
        "subject_prefix": ("subject_prefix", str), "cache": ("cache", str),
        "snapshot": ("snapshot", bool), "duplicate_window": ("duplicate_window", (int, float)),
        "max_age": ("max_age", (int, float)), "max_bytes": ("max_bytes", int),
        "max_msgs": ("max_msgs", int), "replicas": ("replicas", int),
        "batch_size": ("batch_size", int),
    }
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in kinds:
            raise ConfigError("unknown key", key=f"relay.{key}", source="supasync.toml",
                              fix=f"use one of {', '.join(kinds)}")
        name, kind = kinds[key]
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ConfigError("wrong type", key=f"relay.{key}", value=value,
                              source="supasync.toml",
                              fix=f"write a {getattr(kind, '__name__', 'number or list')}")
        given: Any = raw[key]  # checked above (isinstance narrowed *value* to object)
        if key == "to":
            given = tuple([given] if isinstance(given, str) else given)
            if not all(isinstance(u, str) for u in given):
                raise ConfigError("must be a URL or a list of URLs", key="relay.to",
                                  source="supasync.toml",
                                  fix='write to = ["nats://host1:4222", "nats://host2:4222"]')
        elif key == "cache":
            given = Path(given)
        elif key in ("duplicate_window", "max_age"):
            given = float(given)
        out[name] = given
    return out
