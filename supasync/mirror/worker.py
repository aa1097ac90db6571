"""The mirror worker: keep tables in a local SQLite file, through anything.

Usage (the ``supasync mirror`` command and ``scripts/mirror`` call :func:`run_mirror_cli`; the
command line itself is :mod:`supasync.cli.mirror`)::

    supasync mirror --table public.todos --table sales.orders --db mirror.sqlite
    supasync mirror --once --db mirror.sqlite          # tables from supasync.toml; for cron

What it does:

* Opens (or creates) the mirror file (:class:`~supasync.store.tables.MirrorStore`), reads each
  table's columns and primary key from PostgREST, and refuses - before writing anything - an
  unknown table, a table without a primary key, an unwritable path, or a file that is not a
  supasync mirror.
* First run: a streaming snapshot in keyset pages (rich progress bar: rows, rows/s, time
  left), then live changes through the supervised :class:`~supasync.client.realtime.Realtime`
  client, whose gate - the library's :class:`~supasync.client.gate.CachedGate`, each table a
  handler-less read model on the mirror file (:mod:`~supasync.mirror.table`) - repairs every gap
  (drops, stack restarts,
  token expiry) with the exact, cursor or diff mode. Later runs resume from the stored cursor
  without a new snapshot. ``--once`` snapshots or repairs and exits.
* SIGINT/SIGTERM: the current batch is finished and committed; exit code 0 (a second signal
  gets its default action).
* One bad table never stops the others: a table whose subscription is refused (dropped,
  renamed, unpublished) is reported (state ``missing`` or ``failed`` with the reason, a
  ``table_failed`` record) and rechecked with backoff; it is subscribed again - and repaired -
  when it is back. A restart with a table missing upstream but present in the mirror file
  mirrors the others.
* A status line every ``--status-interval`` seconds on stderr, and with ``--metrics-port`` a
  Prometheus ``/metrics`` endpoint. With ``--json`` the records (status, snapshot progress,
  repairs, errors) are JSON objects, one per line, on stdout, and log lines are JSON objects on
  stderr: stdout carries nothing but JSON.

Exit codes: 0 done (or stopped by a signal), 1 runtime failure (server unreachable at start;
at the end, a table still missing or refused), 2 bad input (configuration, an API key the
project refuses, unknown table, no primary key, unusable mirror file). Tokens and keys never
appear in the output.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import logging
import random
import sqlite3
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

from ..core.backoff import Backoff, BackoffPolicy
from ..core.errors import (
    ApiKeyRejected,
    CacheError,
    ConfigError,
    FilterError,
    RestError,
    SupasyncError,
)
from ..core.status import utcnow
from ..core.waiting import install_stop_signals, restore_signals, unless_stopped, wait_event
from ..repair.fullread import MISSING_PROBLEM
from ..repair.repairer import RepairConfig, describe_mode
from ..repair.rest import Rest
from ..store.cache import CacheFile
from ..store.tables import MirrorStore, TableShape
from .status import TableFigures, metrics_text, status_line, status_record
from .table import MirrorTable, Progress, TableWatcher, shape_from_info

if TYPE_CHECKING:
    from ..client.config import Settings
    from ..client.realtime import Realtime

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAILURE",
    "EXIT_OK",
    "MirrorOptions",
    "MirrorTarget",
    "mirror_targets",
    "run_mirror",
    "run_mirror_cli",
]

logger = logging.getLogger("supasync.mirror")
T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

#: Rechecks of a table whose subscription was refused (dropped, renamed, unpublished): the
#: first after this many seconds, doubling up to :data:`RECHECK_MAX_S`.
RECHECK_FIRST_S = 1.0
RECHECK_MAX_S = 30.0


@dataclass(frozen=True)
class MirrorTarget:
    """One table to mirror: name, optional filter, repair mode and cursor column."""

    schema: str
    table: str
    filter: str | None = None
    repair: str = "auto"
    cursor_column: str | None = None

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"


@dataclass
class MirrorOptions:
    """How the worker runs (everything but the tables and the connection settings)."""

    db: Path = Path("mirror.sqlite")
    once: bool = False
    json_logs: bool = False
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    status_interval: float = 5.0
    quiet: bool = False
    progress: bool = True
    batch_size: int = 500
    page_size: int = 10_000
    buffer_limit: int = 100_000
    #: seconds between checks that every live table still exists upstream (a table renamed
    #: while its subscription stays joined sends nothing and would otherwise look live)
    presence_interval: float = 30.0
    #: where the ``--json`` records go (stdout for the command)
    out: TextIO = field(default_factory=lambda: sys.stdout)
    #: where people's lines go: status, progress bar, errors (stderr for the command)
    err: TextIO = field(default_factory=lambda: sys.stderr)


def _parse_table(text: str) -> tuple[str, str]:
    parts = text.strip().split(".")
    if len(parts) == 1 and parts[0]:
        return "public", parts[0]
    if len(parts) == 2 and all(parts):
        return parts[0], parts[1]
    raise ConfigError("expected TABLE or SCHEMA.TABLE", key="--table", value=text,
                      fix="e.g. --table public.todos")


def mirror_targets(
    tables: Sequence[str], filter_text: str | None, settings: Settings | None,
    repair: str | None = None,
) -> list[MirrorTarget]:
    """The ``--table`` options (with ``--filter``), or else the tables of ``supasync.toml``.

    Raises:
        ConfigError: no tables at all, a malformed name, ``--filter`` without ``--table``, or
            an unknown repair mode. FilterError: the filter does not parse.
    """
    if repair is not None and repair not in ("auto", "exact", "cursor", "diff"):
        raise ConfigError("unknown repair mode", key="--repair", value=repair,
                          fix="use auto, exact, cursor or diff")
    if filter_text:
        from ..core.filters import parse_filter

        parse_filter(filter_text)  # fail early, with a caret
    if tables:
        out = []
        for text in tables:
            schema, table = _parse_table(text)
            out.append(MirrorTarget(schema, table, filter_text or None, repair or "auto"))
        return out
    if filter_text:
        raise ConfigError("--filter needs --table", fix="add --table TABLE")
    specs = getattr(settings, "subscriptions", ()) or ()
    out = []
    seen: set[str] = set()
    for spec in specs:
        if f"{spec.schema}.{spec.table}" in seen:
            continue
        seen.add(f"{spec.schema}.{spec.table}")
        where: str | None = spec.filter.to_realtime() or None
        mode = repair or (spec.repair if spec.repair != "off" else "diff")
        out.append(MirrorTarget(spec.schema, spec.table, where, mode, spec.cursor_column))
    if not out:
        raise ConfigError(
            "nothing to mirror: no --table given and no [[subscription]] tables in supasync.toml",
            fix="run `supasync mirror --table public.todos --db mirror.sqlite`",
        )
    return out


# --------------------------------------------------------------------------- output


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "event": "log",
            "at": utcnow().isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        return json.dumps(data, default=str)


class _Reporter(Progress):
    """Progress bar and status lines (on ``options.err``), JSON records (``--json``, on
    ``options.out``) for the worker."""

    def __init__(self, options: MirrorOptions, figures: list[TableFigures]) -> None:
        self.options = options
        self.figures = figures
        self._bar: Any = None
        self._tasks: dict[str, Any] = {}
        self._done: dict[str, int] = {}
        self._started: dict[str, float] = {}
        self._total: dict[str, int | None] = {}

    def emit(self, record: dict[str, Any]) -> None:
        if self.options.json_logs:
            self.options.out.write(json.dumps(record, default=str) + "\n")
            self.options.out.flush()

    def say(self, text: str) -> None:
        if self.options.json_logs:
            self.emit({"event": "info", "at": utcnow().isoformat(), "message": text})
        elif not self.options.quiet:
            self.options.err.write(f"supasync mirror: {text}\n")
            self.options.err.flush()

    # -- snapshot progress ---------------------------------------------------------------
    def started(self, table: str, total: int | None) -> None:
        loop = asyncio.get_running_loop()
        self._done[table], self._started[table], self._total[table] = 0, loop.time(), total
        self.emit({"event": "snapshot_started", "table": table, "total": total,
                   "at": utcnow().isoformat()})
        if self.options.json_logs or self.options.quiet or not self.options.progress:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        if self._bar is None:
            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(bar_width=24),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]} rows/s"),
                TimeElapsedColumn(),
                TextColumn("left"),
                TimeRemainingColumn(),
                console=Console(file=self.options.err, stderr=self.options.err is sys.stderr),
                transient=False,
            )
            self._bar.start()
        self._tasks[table] = self._bar.add_task(f"snapshot {table}", total=total, rate="-")

    def advanced(self, table: str, rows: int) -> None:
        self._done[table] = self._done.get(table, 0) + rows
        elapsed = asyncio.get_running_loop().time() - self._started.get(table, 0.0)
        rate = self._done[table] / elapsed if elapsed > 0 else 0.0
        if self._bar is not None and table in self._tasks:
            self._bar.update(self._tasks[table], advance=rows, rate=f"{rate:,.0f}")

    def finished(self, table: str) -> None:
        elapsed = asyncio.get_running_loop().time() - self._started.get(table, 0.0)
        done = self._done.get(table, 0)
        self.emit({"event": "snapshot_finished", "table": table, "rows": done,
                   "seconds": round(elapsed, 3),
                   "rows_per_s": round(done / elapsed) if elapsed > 0 else None})
        if self._bar is not None:
            task = self._tasks.pop(table, None)
            if task is not None:
                self._bar.stop_task(task)
            if not self._tasks:
                self._bar.stop()
                self._bar = None

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    # -- status --------------------------------------------------------------------------
    def status(self) -> None:
        now = utcnow()
        if self.options.json_logs:
            self.emit(status_record(self.figures, now))
        elif not self.options.quiet and self._bar is None:
            self.options.err.write(f"supasync mirror: {status_line(self.figures, now)}\n")
            self.options.err.flush()


class _MetricsHandler(http.server.BaseHTTPRequestHandler):
    """``GET /metrics``: the figures in Prometheus text format; anything else is 404."""

    figures: list[TableFigures] = []

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != "/metrics":
            self.send_error(404)
            return
        body = metrics_text(self.figures, utcnow()).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """No access log: a scrape every few seconds would drown the status lines."""


def _metrics_server(host: str, port: int,
                    figures: list[TableFigures]) -> http.server.ThreadingHTTPServer:
    """Serve ``/metrics`` from a daemon thread (the standard library's HTTP server).

    A scrape only reads counters, so the server needs no event loop and no web framework: the
    mirror stays installable without the local stack's aiohttp. Raises OSError when the port is
    taken, before anything else starts.
    """
    handler = type("MetricsHandler", (_MetricsHandler,), {"figures": figures})
    server = http.server.ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="supasync-metrics", daemon=True).start()
    return server


# --------------------------------------------------------------------------- the worker


async def run_mirror(
    settings: Settings,
    targets: Sequence[MirrorTarget],
    options: MirrorOptions,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[list[TableFigures]], None] | None = None,
    handle_signals: bool = True,
    realtime: Realtime | None = None,
    name_prefix: str = "",
) -> int:
    """Mirror *targets* into ``options.db`` until *stop* is set (or SIGINT/SIGTERM when
    *stop* is None), or once with ``options.once``. Returns the exit code.

    With ``handle_signals=False`` SIGINT/SIGTERM are left to the caller (a program running
    several workers, such as ``supasync serve``'s per-user mirrors, stops them through *stop*).

    With *realtime* (a started or not yet started client owned by the caller) the live
    subscriptions go on that client's sockets instead of a client of their own, each with this
    worker's token as its own (``subscribe(token=...)``: its channel and its repair reads act
    as *settings*' identity), named ``<name_prefix><schema>.<table>``; at the end they are
    removed and the client is left running. Workers of different users thus share sockets.

    Raises:
        ConfigError / CacheError: bad input, raised before anything is written.
        SupasyncError: the server could not be reached at start.
    """
    from ..client.tokens import TokenKeeper

    stop = stop or asyncio.Event()
    # a second signal gets the default action
    installed = install_stop_signals(stop) if handle_signals else []
    if options.db.is_dir():
        raise CacheError(f"{options.db} is a directory; give a file path for the mirror "
                         "(e.g. --db mirror.sqlite).")
    keeper = TokenKeeper.from_settings(settings)
    figures = [TableFigures(t.name) for t in targets]
    reporter = _Reporter(options, figures)
    rest = Rest(settings.rest_url, keeper.api_key, keeper.token)
    metrics: http.server.ThreadingHTTPServer | None = None
    failure: list[str] = []
    store: MirrorStore | None = None
    try:
        await keeper.start()
        described = await _describe_when_up(rest, targets, _api_key_name(settings,
                                                                          keeper.api_key),
                                            options, reporter, stop)
        if described is None:
            return EXIT_OK  # stopped while waiting for the server
        shapes = _known_shapes(options.db, targets, described)
        for fig, seen in zip(figures, described, strict=True):
            if seen is None:
                fig.state, fig.problem = "missing", MISSING_PROBLEM
                reporter.say(f"{fig.name}: missing: {MISSING_PROBLEM}")
        store = MirrorStore(options.db)  # only now: bad table names never create a file
        tables = await _prepare(store, rest, targets, shapes, options, reporter)
        if options.metrics_port is not None:
            metrics = _metrics_server(options.metrics_host, options.metrics_port, figures)
            reporter.say(f"metrics on http://{options.metrics_host}:{options.metrics_port}"
                         "/metrics")
        if options.once:
            await _run_once(settings, keeper, targets, tables, figures, options, reporter,
                            stop, failure)
            if failure:
                _print_error(options, "; ".join(failure))
                return EXIT_FAILURE
            return EXIT_OK
        await _run_live(settings, keeper, targets, tables, figures, options, reporter, stop,
                        failure, on_ready, rest, shared=realtime, name_prefix=name_prefix)
        if failure:
            _print_error(options, "; ".join(failure))
            return EXIT_FAILURE
        return EXIT_OK
    except sqlite3.DatabaseError as exc:
        raise CacheError(damaged_file(options.db, exc)) from exc
    finally:
        reporter.stop()
        restore_signals(installed)
        if metrics is not None:
            metrics.shutdown()
            metrics.server_close()
        await rest.aclose()
        await keeper.aclose()
        if store is not None:
            store.close()


def _api_key_name(settings: Settings, api_key: str) -> str:
    """The setting that holds *api_key* (named in :class:`ApiKeyRejected`)."""
    if api_key and api_key == getattr(settings, "service_role_key", None):
        return "SUPABASE_SERVICE_ROLE_KEY"
    return "SUPABASE_ANON_KEY"


def damaged_file(path: Path, exc: sqlite3.DatabaseError) -> str:
    """What to tell a user whose mirror file SQLite refuses to read or write."""
    text = str(exc)
    if "malformed" in text or "not a database" in text or "corrupt" in text:
        return (f"the mirror file {path} is damaged ({text}). Fix: move it aside and run "
                "again to mirror into a new file (a new snapshot); `sqlite3 FILE .recover` "
                "may save what is readable.")
    return (f"the mirror file {path} cannot be written ({text}). Fix: check the disk (space, "
            "permissions) and run again; the file keeps every batch committed so far.")




async def _describe_when_up(
    rest: Rest, targets: Sequence[MirrorTarget], api_key_name: str,
    options: MirrorOptions, reporter: _Reporter, stop: asyncio.Event,
) -> list[TableShape | None] | None:
    """:func:`_describe`, retried while the failure is transient (:attr:`RestError.transient`:
    PostgREST down or restarting its database connection) - a worker started during an outage
    waits for the server like a running one does, saying so - except with ``--once``, which
    fails at once. None: *stop* was set while waiting."""
    backoff = Backoff(BackoffPolicy(initial=0.5, cap=15.0), random=random.random)
    loop = asyncio.get_running_loop()
    while True:
        try:
            return await _describe(rest, targets, api_key_name)
        except RestError as exc:
            if options.once or not exc.transient:
                raise
            delay = backoff.failure(loop.time())
            reporter.say(f"waiting for the server: {exc}; retrying in {delay:.1f} s")
        if await wait_event(stop, delay):
            return None


async def _describe(rest: Rest, targets: Sequence[MirrorTarget],
                    api_key_name: str = "SUPABASE_ANON_KEY") -> list[TableShape | None]:
    """Every table's shape from PostgREST (None: PostgREST does not describe it); ConfigError
    for a table without primary key or a schema not exposed, :class:`ApiKeyRejected` when the
    gateway refuses the API key."""
    shapes = []
    for target in targets:
        try:
            info = await rest.table_info(target.schema, target.table)
        except RestError as exc:
            if exc.code == "PGRST106" or exc.status == 406:
                raise ConfigError(
                    f"schema {target.schema!r} is not exposed through the API ({exc})",
                    key="--table", value=target.name,
                    fix="add the schema to the exposed schemas (Supabase: Settings > API) or "
                    "mirror a table of an exposed schema",
                ) from exc
            if exc.status == 401 and "api key" in (exc.message or "").lower():
                # The gateway's "Invalid API key": no request will fare better (exit 2).
                raise ApiKeyRejected("", rest_reason=exc.message, key=api_key_name) from exc
            raise
        shapes.append(None if info is None
                      else shape_from_info(target.schema, target.table, info))
    return shapes


def _known_shapes(path: Path, targets: Sequence[MirrorTarget],
                  shapes: list[TableShape | None]) -> list[TableShape]:
    """Fill in the tables PostgREST does not describe (None) with the shapes the mirror file
    already holds for them, read without writing (a missing table that was mirrored before is
    kept and reported ``missing``). A table neither upstream nor in the file is a ConfigError
    (a typo, most likely), raised before anything is written."""
    stored: dict[tuple[str, str], TableShape] = {}
    if any(s is None for s in shapes) and path.is_file():
        with contextlib.suppress(sqlite3.Error):
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                for schema, tbl, text in conn.execute(
                        "select schema, tbl, shape from _supasync_tables"):
                    data = json.loads(text)
                    stored[(schema, tbl)] = TableShape(
                        schema, tbl, tuple((c, t) for c, t in data["columns"]),
                        tuple(data["primary_key"]))
            finally:
                conn.close()
    out = []
    for target, shape in zip(targets, shapes, strict=True):
        if shape is None:
            shape = stored.get((target.schema, target.table))
            if shape is None:
                shape_from_info(target.schema, target.table, None)  # raises the ConfigError
        assert shape is not None
        out.append(shape)
    return out


async def _prepare(
    store: MirrorStore, rest: Rest, targets: Sequence[MirrorTarget],
    shapes: Sequence[TableShape], options: MirrorOptions, reporter: _Reporter,
) -> list[MirrorTable]:
    """Check every table against the file first (nothing written); say for each whether it
    resumes or snapshots, and which repair mode it gets. The gates make or adapt the tables."""
    for shape in shapes:
        store.check_table(shape)
    cache = CacheFile.over(store)
    out = []
    for target, shape, fig in zip(targets, shapes, reporter.figures, strict=True):
        config = RepairConfig(mode=target.repair,  # type: ignore[arg-type]
                              cursor_column=target.cursor_column, page_size=options.page_size)
        meta = cache.meta(target.name)
        resumed = meta is not None and meta.cursor is not None
        reporter.say(f"{target.name}: " + ("resuming from the stored cursor" if resumed
                                           else "no complete snapshot yet: snapshotting"))
        try:
            why = await describe_mode(rest, config, shape.schema, shape.table,
                                      shape.column_names)
            reporter.say(f"{target.name}: repair mode {why}")
        except SupasyncError as exc:  # the first repair retries and says it then
            reporter.say(f"{target.name}: repair mode not known yet ({exc})")
        out.append(MirrorTable(target.schema, target.table, target.filter, cache, shape,
                               config, TableWatcher(fig, reporter, reporter.say)))
    return out


async def _run_once(
    settings: Settings, keeper: Any, targets: Sequence[MirrorTarget],
    tables: Sequence[MirrorTable], figures: list[TableFigures], options: MirrorOptions,
    reporter: _Reporter, stop: asyncio.Event, failure: list[str],
) -> None:
    """``--once``: each table's gate repairs once (a snapshot the first time), no feed."""
    store_errors: list[Exception] = []
    for table, fig in zip(tables, figures, strict=True):
        if stop.is_set():
            break
        if fig.state == "missing":
            failure.append(f"{fig.name} is missing: {fig.problem}")
            continue  # the others are still mirrored; exit 1 at the end
        gate = table.gate(options.batch_size, options.buffer_limit, store_errors.append)
        done = await unless_stopped(
            table.repair_once(gate, settings.rest_url, keeper.api_key, keeper.token), stop)
        if store_errors:
            raise _store_cause(store_errors[0])
        if done is None:
            reporter.say(f"{table.name}: stopped; pages written so far are committed")
            break
        outcome = table.watcher.last
        assert outcome is not None
        fig.rows = table.count()
        fig.state = "done"
        reporter.say(f"{table.name}: {outcome.mode} +{outcome.inserted} "
                     f"~{outcome.updated} -{outcome.deleted}; {fig.rows} rows")
        reporter.emit({"event": "repaired", "table": table.name, "mode": outcome.mode,
                       "why": outcome.why, "fallback": outcome.fallback,
                       "inserted": outcome.inserted, "updated": outcome.updated,
                       "deleted": outcome.deleted, "rows": fig.rows})


def _store_cause(exc: Exception) -> Exception:
    """The SQLite error under a store failure (for :func:`damaged_file`), else *exc*."""
    cause = exc.__cause__
    return cause if isinstance(cause, sqlite3.DatabaseError) else exc


async def _run_live(
    settings: Settings, keeper: Any, targets: Sequence[MirrorTarget],
    tables: Sequence[MirrorTable], figures: list[TableFigures],
    options: MirrorOptions, reporter: _Reporter, stop: asyncio.Event, failure: list[str],
    on_ready: Callable[[list[TableFigures]], None] | None, rest: Rest,
    *, shared: Realtime | None = None, name_prefix: str = "",
) -> None:
    from ..client.realtime import Realtime
    from ..client.subscription import Subscription
    from ..core.backoff import BackoffPolicy
    from ..core.status import ConnectionFailed, GapRepaired, StatusEvent, SubscriptionFailed

    store_errors: list[Exception] = []
    client = shared or Realtime(
        settings.url, keeper.api_key, token=keeper, realtime_url=settings.realtime_url,
        rest_url=settings.rest_url, heartbeat_interval=settings.heartbeat_interval,
        queue_size=max(settings.queue_size, 10_000),
        backoff=BackoffPolicy(cap=float(settings.reconnect_max_delay)),
    )
    if shared is None:
        client.connection.api_key_name = _api_key_name(settings, keeper.api_key)

    def store_failed(exc: Exception) -> None:
        store_errors.append(exc)
        stop.set()

    subs: list[Subscription | None] = [None] * len(targets)
    by_name: dict[str, int] = {}
    refusals = [0] * len(targets)  # consecutive refusals per table: the recheck backoff
    rechecks: dict[int, asyncio.Task[None]] = {}

    def subscribe(i: int) -> None:
        target, table = targets[i], tables[i]
        sub = client.subscribe(target.table, schema=target.schema, filter=target.filter,
                               primary_key=table.shape.primary_key,
                               gate=table.gate(options.batch_size, options.buffer_limit,
                                               store_failed),
                               **({} if shared is None else {
                                   "token": keeper,
                                   "name": f"{name_prefix}{target.schema}.{target.table}"}))
        subs[i] = sub
        by_name[sub.name] = i

    for i, (table, fig) in enumerate(zip(tables, figures, strict=True)):
        fig.rows = table.count()
        subscribe(i)

    def report_table(i: int, state: str, problem: str) -> None:
        fig = figures[i]
        if (fig.state, fig.problem) == (state, problem):
            return
        fig.state, fig.problem = state, problem
        reporter.say(f"{fig.name}: {state}: {problem}")
        reporter.emit({"event": "table_failed", "at": utcnow().isoformat(), "table": fig.name,
                       "state": state, "reason": problem})

    async def lost_table(i: int) -> None:
        """A live table is gone upstream (renamed or dropped while its channel stayed joined,
        so nothing said so): report it and leave its subscription; :func:`recheck` subscribes
        again - and the new gate repairs what was missed - when it is back."""
        report_table(i, "missing", MISSING_PROBLEM)
        old = subs[i]
        if old is not None:
            by_name.pop(old.name, None)
            subs[i] = None
            await client.remove(old)
        task = rechecks.get(i)
        if task is None or task.done():
            rechecks[i] = asyncio.create_task(recheck(i), name=f"supasync-mirror-recheck-{i}")

    async def presence_loop() -> None:
        while not await wait_event(stop, options.presence_interval):  # a periodic check
            for i, (target, fig) in enumerate(zip(targets, figures, strict=True)):
                if fig.state != "live" or stop.is_set():
                    continue
                try:
                    info = await rest.table_info(target.schema, target.table)
                except (SupasyncError, OSError) as exc:
                    logger.debug("%s: presence check failed: %s", target.name, exc)
                    continue
                if info is None and fig.state == "live":
                    await lost_table(i)

    async def recheck(i: int) -> None:
        """The table's subscription was refused: find out whether the table is still there
        (``missing`` if not) and subscribe again once it is (a refusal comes back here, after a
        longer wait each time). Runs until the worker stops."""
        target = targets[i]
        delay = min(RECHECK_MAX_S, RECHECK_FIRST_S * 2 ** refusals[i])
        refusals[i] += 1
        waited = False
        while not stop.is_set():
            try:
                info = await rest.table_info(target.schema, target.table)
            except (SupasyncError, OSError) as exc:
                logger.info("%s: cannot check the table (%s); checking again", target.name,
                            exc)
            else:
                if info is None:
                    report_table(i, "missing", MISSING_PROBLEM)
                elif waited:
                    old = subs[i]
                    if old is not None:
                        by_name.pop(old.name, None)
                        await client.remove(old)
                    reporter.say(f"{target.name}: the table is there; subscribing again")
                    subscribe(i)
                    return
            waited = True
            # A poll interval with backoff (nothing to wait on: the table's return is only
            # seen by asking); a stop ends it at once.
            if await wait_event(stop, delay):
                return
            delay = min(RECHECK_MAX_S, delay * 2)

    def watch(event: StatusEvent) -> None:
        if isinstance(event, ConnectionFailed):
            stop.set()  # the API key was refused: raised below (exit 2)
        elif isinstance(event, SubscriptionFailed):
            # One table refused never stops the others: report it, keep checking it.
            i = by_name.get(event.subscription)
            if i is None:
                return
            reason = getattr(event.error, "reason", None) or str(event.error)
            report_table(i, "failed", f"subscription refused: {reason}")
            task = rechecks.get(i)
            if task is None or task.done():
                rechecks[i] = asyncio.create_task(recheck(i),
                                                  name=f"supasync-mirror-recheck-{i}")
        elif isinstance(event, GapRepaired):
            i = by_name.get(event.subscription)
            if i is not None:
                refusals[i] = 0

    unwatch = client.status.subscribe(watch)

    async def status_loop() -> None:
        while True:
            # A periodic report, not a synchronisation wait.
            await asyncio.sleep(options.status_interval)
            for table, fig in zip(tables, figures, strict=True):
                if fig.state == "live" and not store_errors:
                    try:
                        fig.rows = table.count()
                    except sqlite3.DatabaseError as exc:
                        store_failed(exc)
            reporter.status()

    ticker = asyncio.create_task(status_loop(), name="supasync-mirror-status")
    presence = asyncio.create_task(presence_loop(), name="supasync-mirror-presence")
    try:
        if shared is None:
            async with client:
                if on_ready is not None:
                    on_ready(figures)
                await stop.wait()
        else:
            await client.start()  # idempotent: the caller's client, maybe started already
            if on_ready is not None:
                on_ready(figures)
            await stop.wait()
    finally:
        for task in [ticker, presence, *rechecks.values()]:
            task.cancel()
        for task in [ticker, presence, *rechecks.values()]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if shared is not None:  # leave the shared client running, without this worker
            unwatch()
            for sub in subs:
                if sub is not None:
                    try:
                        await client.remove(sub)
                    except Exception as exc:  # the worker ends anyway; the client lives on
                        logger.warning("%s: leaving the shared client failed: %s", sub.name,
                                       exc)
    if store_errors:
        raise _store_cause(store_errors[0])
    if client.connection.failure is not None:
        raise client.connection.failure
    for table, fig in zip(tables, figures, strict=True):
        fig.rows = table.count()
    reporter.status()
    failure.extend(f"{fig.name} is {fig.state}: {fig.problem}" for fig in figures
                   if fig.state in ("missing", "failed"))


def _print_error(options: MirrorOptions, message: str) -> None:
    from ..core.redact import mask

    text = mask(message)
    if options.json_logs:  # the JSON stream says it too, so a reader of stdout alone knows
        options.out.write(json.dumps({"event": "error", "message": text}) + "\n")
        options.out.flush()
    options.err.write(f"supasync mirror: error: {text}\n")
    options.err.flush()


# --------------------------------------------------------------------------- entry points


def run_mirror_cli(
    *,
    tables: Sequence[str] = (),
    filter_text: str | None = None,
    db: Path | None = None,
    once: bool = False,
    json_logs: bool = False,
    metrics_port: int | None = None,
    repair: str | None = None,
    env_file: Path | None = Path(".env"),
    toml_path: Path | None = Path("supasync.toml"),
    quiet: bool = False,
    env: dict[str, str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    """Load settings, validate, and run the worker; returns the exit code (see module doc).

    Output: with *json_logs*, one JSON record per line on *out* (default stdout) and log
    records as JSON lines on *err*; status lines, the progress bar and errors on *err*
    (default stderr). Logging keeps the level the caller set (the command: ``--log-level``).
    """
    from ..client.config import load_settings
    from ..core.redact import install_redaction

    install_redaction()
    options = MirrorOptions(once=once, json_logs=json_logs, metrics_port=metrics_port,
                            quiet=quiet, out=out or sys.stdout, err=err or sys.stderr)
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    if json_logs:
        handler = logging.StreamHandler(options.err)
        handler.setFormatter(_JsonFormatter())
        for old in saved[0]:
            root.removeHandler(old)
        root.addHandler(handler)
    try:
        settings = load_settings(env, env_file=env_file, toml_path=toml_path)
        targets = mirror_targets(tables, filter_text, settings, repair)
        path = db or (Path(settings.mirror_db) if settings.mirror_db else Path("mirror.sqlite"))
        options.db = path
        return asyncio.run(run_mirror(settings, targets, options, stop=stop))
    except (ConfigError, FilterError, CacheError) as exc:
        _print_error(options, str(exc))
        return EXIT_CONFIG
    except SupasyncError as exc:
        _print_error(options, str(exc))
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        if json_logs:  # give the process its logging back (tests, embedding programs)
            for h in list(root.handlers):
                root.removeHandler(h)
            for h in saved[0]:
                root.addHandler(h)
            root.setLevel(saved[1])
