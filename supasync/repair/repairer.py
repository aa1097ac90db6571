"""Gap repair: find what a subscription missed, over PostgREST, in one of three modes.

The Realtime server keeps nothing for a client that was away (``anchors.md`` §3.1), so after
every gap - first join, reconnect, rejoin after token expiry, recovery from an error - the
subscription's cache is brought up to date by reading the server with the subscriber's own token
and filter (so RLS applies exactly as live). What is read goes through the
:class:`~supasync.core.merge.Merger`, which turns differences into replayed Changes.

Modes (``design.md`` §2)
------------------------
``exact``
    Needs supasync's SQL (:mod:`supasync.repair.sqlinstall`). The RPC ``supasync_changes`` returns
    the keys written since the stored *horizon* (a transaction id) and the new horizon
    ``pg_snapshot_xmin`` of the snapshot that read the log. Those keys are re-read through
    PostgREST: present rows are INSERT/UPDATE, absent ones DELETE. A transaction still open at
    the read has an id at or above the new horizon, so it is read again next time: late commits
    are never skipped. Cost: O(changes missed).
``cursor``
    Needs a column every write bumps (``cursor_column``; ``updated_at`` is detected). A column
    with only ``default now()`` is *not* one: it is set on INSERT and never again, so every
    UPDATE made during a gap would be missed. Rows with
    ``cursor >= last_seen - overlap`` are read in keyset pages on ``(cursor, primary key)``;
    deletions are found by a keys-only scan of the filtered table compared with the cache.
    **The overlap window and its limit**: ``now()``/``moddatetime`` values are transaction
    *start* times, not commit order (``anchors.md`` §3.3), so a row stamped ``t`` can commit after
    a read that already passed ``t``. Re-reading from ``last_seen - overlap`` catches every such
    row whose transaction lasted less than ``overlap`` (default 5 minutes). A transaction open
    longer than ``overlap`` that commits *while the subscription is away* is missed until a
    ``diff`` runs (if it commits while the subscription is live, its live change delivers it).
    Rows whose cursor is NULL are never read by the cursor pass (only their deletion is seen).
    Integer cursors get no overlap (they are assumed to be assigned in commit order only if the
    application makes them so). Cost: O(changes) + O(keys).
``diff``
    Needs nothing: the filtered table is read in keyset pages on the primary key and compared with
    the cache. Cost: O(table).

``auto`` never trusts an unverified cursor. It picks exact if the table is logged; else cursor
only if the cursor column is *known* to be bumped on every write: supasync's own trigger sets it
(``supasync sql --touch COLUMN``), which the RPC ``supasync_cursor_columns()`` reports (an
absent RPC, a failed call or a column it does not list means "not verified"); else diff.
``cursor`` asked for explicitly is trusted as given (the caller vouches for the column).
:func:`choose` says which mode ``auto`` stands for and why, in words ``verify``, the mirror
and :class:`Plan` share.
``exact`` falls back to ``diff`` - and says so (:attr:`RepairResult.fallback`) - when the log
is not installed for the table, when entries past the stored horizon were pruned (retention
exceeded), when the table was truncated, or when there is no horizon yet. A cache with no
cursor (new or reset) is always filled by a full read, reported as mode ``snapshot``.

:func:`plan` is the pure decision; :class:`Repairer` does the reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from ..core.changes import Change, parse_timestamp
from ..core.errors import ConfigError, RestError
from ..core.merge import Key, Merger, version_value
from .fullread import full_pages, key_ranges
from .rest import RawPage, Rest
from .sqlinstall import CURSOR_RPC_NAME, RPC_NAME

__all__ = [
    "DEFAULT_OVERLAP",
    "MODES",
    "Capabilities",
    "Plan",
    "RepairConfig",
    "RepairResult",
    "Repairer",
    "capabilities",
    "choose",
    "describe_mode",
    "greatest",
    "log_answer",
    "plan",
    "touched_columns",
    "verified_cursor_columns",
]

logger = logging.getLogger("supasync.repair.repairer")

Mode = Literal["auto", "exact", "cursor", "diff"]
Method = Literal["exact", "cursor", "diff"]
MODES: frozenset[str] = frozenset({"auto", "exact", "cursor", "diff"})
DEFAULT_OVERLAP = _dt.timedelta(minutes=5)
DETECTED_CURSOR_COLUMNS = ("updated_at",)


@dataclass(frozen=True)
class RepairConfig:
    """How a subscription repairs its gaps.

    Args:
        mode: ``auto`` (default), ``exact``, ``cursor`` or ``diff``.
        cursor_column: the column every write bumps (cursor mode, and row versions); None
            detects ``updated_at``.
        overlap: how far before the last seen cursor value cursor mode reads again.
        page_size: rows per PostgREST request.
        log_page_size: change-log entries per request of an exact repair. The default is the
            RPC's own cap (``exact.sql``): an entry is a key and two numbers, so a page costs
            little more than a round trip, and the row page size (1,000) made a restart after
            10,000 changes spend ten sequential round trips before its first re-read.
        rpc: the exact-mode RPC's name.
    """

    mode: Mode = "auto"
    cursor_column: str | None = None
    overlap: _dt.timedelta = DEFAULT_OVERLAP
    page_size: int = 1000
    log_page_size: int = 10_000
    rpc: str = RPC_NAME

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(
                "unknown repair mode",
                key="repair.mode",
                value=self.mode,
                fix="use auto, exact, cursor or diff",
            )
        if self.page_size < 1:
            raise ConfigError(
                "page size must be positive", key="repair.page_size", value=self.page_size
            )
        if self.log_page_size < 1:
            raise ConfigError("log page size must be positive", key="repair.log_page_size",
                              value=self.log_page_size)


@dataclass(frozen=True)
class Capabilities:
    """What the server offers for one table, as found by :meth:`Repairer.probe`.

    ``cursor_column`` is the candidate cursor (configured, reported by supasync's trigger, or
    a detected ``updated_at``); ``cursor_verified`` says that supasync's trigger bumps it on
    every write (``supasync_cursor_columns()`` lists it). Only a verified column is used by
    ``auto``.
    """

    logged: bool
    horizon: str | None
    pruned_max: str | None
    cursor_column: str | None
    cursor_verified: bool = False


@dataclass(frozen=True)
class Plan:
    """What to run: ``mode`` (the method) and ``report`` (the name in ``GapRepaired``),
    ``fallback`` (why a weaker method runs, or None), ``why`` (how the mode was chosen, from
    :func:`choose`)."""

    mode: Method
    report: str
    fallback: str | None = None
    why: str = ""


def choose(config: RepairConfig, caps: Capabilities) -> tuple[Method, str]:
    """The method *config* asks for on a table with *caps*, and why, in words (pure).

    ``auto`` is exact when the change log is installed, cursor only when the cursor column is
    verified (bumped by supasync's trigger), otherwise diff. The reason names what was missing,
    e.g. ``auto -> diff: no change log installed and updated_at is not bumped by a supasync
    trigger``.
    """
    mode = config.mode
    if mode != "auto":
        return mode, f"{mode}: asked for"
    if caps.logged:
        return "exact", "auto -> exact: supasync's change log is installed"
    column = caps.cursor_column
    if column and caps.cursor_verified:
        return "cursor", (
            f"auto -> cursor on {column}: no change log installed; {column} is bumped by "
            "a supasync trigger"
        )
    if column:
        missing = f"{column} is not bumped by a supasync trigger"
    else:
        missing = "no column is bumped by a supasync trigger"
    return "diff", f"auto -> diff: no change log installed and {missing}"


def plan(config: RepairConfig, cursor: Mapping[str, Any] | None, caps: Capabilities) -> Plan:
    """Choose the method for this repair (pure; see the module docstring for the rules)."""
    wanted, why = choose(config, caps)
    if cursor is None:
        return Plan("diff", "snapshot", None, why)
    return replace(_plan(config, wanted, cursor, caps), why=why)


def _plan(
    config: RepairConfig, wanted: str, cursor: Mapping[str, Any], caps: Capabilities
) -> Plan:
    if wanted == "exact":
        if not caps.logged:
            return Plan(
                "diff",
                "diff",
                "exact mode asked for, but the change log is not installed for this table or "
                "the subscriber's role may not call supasync_changes (run `supasync sql "
                "--apply`, or grant EXECUTE)",
            )
        horizon = cursor.get("horizon") if cursor.get("mode") == "exact" else None
        if horizon is None:
            return Plan("diff", "diff", "no exact-mode horizon stored yet (first exact repair)")
        if caps.pruned_max is not None and int(caps.pruned_max) >= int(horizon):
            return Plan(
                "diff",
                "diff",
                "change log retention exceeded: entries after the stored horizon were pruned",
            )
        return Plan("exact", "exact")
    if wanted == "cursor":
        if not caps.cursor_column:
            return Plan(
                "diff",
                "diff",
                "cursor mode asked for, but the table has no cursor column "
                f"({config.cursor_column or 'updated_at'})",
            )
        if cursor.get("mode") != "cursor" or cursor.get("column") != caps.cursor_column:
            return Plan("diff", "diff", "no cursor stored yet for this column")
        return Plan("cursor", "cursor")
    return Plan("diff", "diff")


def touched_columns(answer: Any, schema: str, table: str) -> frozenset[str]:
    """The columns of *schema.table* that ``supasync_cursor_columns()`` says supasync's trigger
    bumps (pure; anything malformed counts as "none")."""
    if not isinstance(answer, list):
        return frozenset()
    return frozenset(
        str(item["column"])
        for item in answer
        if isinstance(item, dict)
        and item.get("schema") == schema
        and item.get("table") == table
        and item.get("column")
    )


async def capabilities(rest: Rest, config: RepairConfig, schema: str, table: str,
                       log: Mapping[str, Any] | None, column: str | None, *,
                       names: Sequence[str] | None = None) -> Capabilities:
    """A table's :class:`Capabilities` from the change log's answer (*log*, None when not
    asked or not installed) and the candidate cursor *column* (of *names*, when known).

    ``auto`` on a table without the change log asks :func:`verified_cursor_columns` which
    columns supasync's trigger bumps: only those are trusted (:func:`choose`), and one of them
    replaces a detected but unverified candidate. Shared by the cache's repairer and the
    mirror's, so both decide the same way.
    """
    logged = bool(log and log.get("logged"))
    verified = False
    if config.mode == "auto" and not logged:
        touched = await verified_cursor_columns(rest, schema, table)
        if names is not None:
            touched &= frozenset(names)
        if not config.cursor_column and touched and column not in touched:
            column = min(touched)
        verified = column is not None and column in touched
    return Capabilities(
        logged=logged,
        horizon=str(log["horizon"]) if logged and log else None,
        pruned_max=str(log["pruned_max"]) if logged and log else None,
        cursor_column=column,
        cursor_verified=verified,
    )


async def verified_cursor_columns(rest: Rest, schema: str, table: str) -> frozenset[str]:
    """Ask ``supasync_cursor_columns()`` which columns of the table supasync's trigger bumps.

    Any failure (the RPC is not installed, the role may not call it, the server is down) means
    "none verified": ``auto`` then does not trust a cursor, it diffs.
    """
    try:
        answer = await rest.rpc(CURSOR_RPC_NAME, {})
    except RestError as exc:
        logger.debug("%s.%s: %s unavailable (%s); no verified cursor column",
                     schema, table, CURSOR_RPC_NAME, exc)
        return frozenset()
    return touched_columns(answer, schema, table)


async def describe_mode(rest: Rest, config: RepairConfig, schema: str, table: str,
                        names: Sequence[str]) -> str:
    """Which repair mode a table with columns *names* gets under *config*, and why (the
    words of :func:`choose`, e.g. ``auto -> diff: no change log installed and updated_at is
    not bumped by a supasync trigger``): the probe a repair makes, without the repair."""
    log: dict[str, Any] | None = None
    if config.mode in ("auto", "exact"):
        log = await log_answer(rest, config, f"{schema}.{table}", None)
    column = None
    if config.cursor_column:
        column = config.cursor_column if config.cursor_column in names else None
    elif config.mode in ("auto", "cursor"):
        column = next((c for c in DETECTED_CURSOR_COLUMNS if c in names), None)
    caps = await capabilities(rest, config, schema, table, log, column, names=names)
    return choose(config, caps)[1]


async def log_answer(rest: Rest, config: RepairConfig, table: str, since: str | None,
                     after: tuple[str, int] | None = None,
                     limit: int = 0) -> dict[str, Any] | None:
    """The exact-mode change log's answer for *table* (``schema.table``) after *since*; None
    when it is not installed or this role may not call it."""
    args: dict[str, Any] = {"p_table": table, "p_since": since, "p_limit": limit}
    if after is not None:
        args["p_after_xid"], args["p_after_id"] = after
    try:
        answer = await rest.rpc(config.rpc, args)
    except RestError as exc:
        # PGRST202 / 404: the function does not exist (exact mode not installed);
        # 42501 (sent as 401/403): this role may not call it. Either way: no exact mode
        # here. JWT problems (PGRST301/303, also 401) are not this and propagate.
        if exc.status == 404 or exc.code in ("PGRST202", "42501"):
            return None
        raise
    return answer if isinstance(answer, dict) else None


@dataclass
class RepairResult:
    """The outcome: the method run and reported, the fallback reason, the new cursor."""

    mode: str
    fallback: str | None
    cursor: dict[str, Any]


Sink = Callable[[list[Change]], Awaitable[None]]
#: Takes a full read's pages undecoded (a store that writes them without a dict per row), with
#: the cursor column whose values (as sent) it returns, or None (it returns nothing then).
PageSink = Callable[[RawPage, str | None], Awaitable[Sequence[Any]]]


def greatest(values: Iterable[Any], best: Any, best_v: int | None) -> tuple[Any, int | None]:
    """The greatest of *values* and *best* as :func:`version_value` orders them, with its
    version (values without one are skipped). Pure."""
    for value in values:
        v = version_value(value)
        if v is not None and (best_v is None or v > best_v):
            best, best_v = value, v
    return best, best_v


async def _nothing() -> None:
    return None


@dataclass(frozen=True)
class PageWriter:
    """Where a full read's pages go when no change needs to be built from them: ``page`` for
    each page, undecoded, then ``done`` once the read has ended (e.g. to sweep the keys no
    page held).

    ``streams``: key ranges read concurrently (:func:`~supasync.repair.fullread.key_ranges`;
    integer single-column keys only), pages then arriving in no particular key order - for a
    writer that does not care (a read model's store; the mirror's). ``page_size`` and
    ``max_bytes``: rows per request and a page body's rough size bound for this read (None:
    the configuration's page size, no bound). Pages are always fetched one ahead.
    """

    page: PageSink
    done: Callable[[], Awaitable[None]] = _nothing
    #: Called once the full read is about to start (after the probe).
    begin: Callable[[], Awaitable[None]] = _nothing
    streams: int = 1
    page_size: int | None = None
    max_bytes: int | None = None


class Repairer:
    """Runs repairs for one subscription.

    Args:
        rest: PostgREST access with the subscriber's token.
        merger: the subscription's merge state (its view is the cache).
        config: the repair configuration.
        filters: the subscription's filter as PostgREST parameters.
        select: the ``select`` parameter (``*`` or the subscription's columns plus the key).
    """

    def __init__(
        self,
        rest: Rest,
        merger: Merger,
        config: RepairConfig,
        *,
        filters: Sequence[tuple[str, str]] = (),
        select: str = "*",
    ) -> None:
        self.rest = rest
        self.merger = merger
        self.config = config
        self.filters = list(filters)
        self.select = select
        self._columns: dict[str, str] | None = None
        #: How the last repair's mode was chosen (:func:`choose`), e.g. ``auto -> diff: ...``.
        self.mode_why: str | None = None

    @property
    def _table(self) -> str:
        return f"{self.merger.schema}.{self.merger.table}"

    async def columns(self) -> dict[str, str]:
        """The table's columns (name -> type) from the OpenAPI root; {} if not described."""
        if self._columns is None:
            info = await self.rest.table_info(self.merger.schema, self.merger.table)
            self._columns = dict(info.columns) if info else {}
        return self._columns

    async def cursor_column(self) -> str | None:
        """The configured cursor column, or ``updated_at`` if the table has one."""
        cols = await self.columns()
        if self.config.cursor_column:
            known = not cols or self.config.cursor_column in cols
            return self.config.cursor_column if known else None
        return next((c for c in DETECTED_CURSOR_COLUMNS if c in cols), None)

    async def _log(self, since: str | None, after: tuple[str, int] | None = None,
                   limit: int = 0) -> dict[str, Any] | None:
        return await log_answer(self.rest, self.config, self._table, since, after, limit)

    async def probe(self) -> Capabilities:
        """Ask the server what this table supports (one RPC, one OpenAPI read at most)."""
        log: dict[str, Any] | None = None
        if self.config.mode in ("auto", "exact"):
            log = await self._log(None)
        column = None
        if self.config.mode in ("auto", "cursor") or self.config.cursor_column:
            column = await self.cursor_column()
        return await capabilities(self.rest, self.config, self.merger.schema, self.merger.table,
                                  log, column)

    async def run(self, cursor: Mapping[str, Any] | None, sink: Sink, *,
                  fill: PageWriter | None = None) -> RepairResult:
        """Repair once. The merger must be repairing (``merger.gap()`` was called); this does
        not call ``merger.finish()``. Replayed changes go to *sink* page by page.

        *fill*: a full read's pages need no change built from them - the view is empty (a
        first snapshot into an empty store table) or nothing consumes them (a read model's
        comparison, done by the store) - so they go to *fill* undecoded instead of through
        the merger (exact and diff reads; a cursor-mode read still goes through *sink*, which
        tracks the cursor's greatest value).

        Raises:
            RestError: PostgREST failed; the caller retries (the merger keeps its buffer).
        """
        self.merger.restart_repair()
        caps = await self.probe()
        chosen = plan(self.config, cursor, caps)
        if chosen.why != self.mode_why:
            logger.info("%s: repair mode %s", self._table, chosen.why)
            self.mode_why = chosen.why
        if chosen.fallback:
            logger.warning("%s: repair falls back to diff: %s", self._table, chosen.fallback)
        if chosen.mode == "exact":
            assert cursor is not None
            new_cursor = await self._exact(str(cursor["horizon"]), caps, sink)
            if new_cursor is None:
                reason = "the table was truncated; comparing the whole table"
                logger.warning("%s: repair falls back to diff: %s", self._table, reason)
                new_cursor = await self._diff_with_horizon(caps, sink, fill)
                return RepairResult("diff", reason, new_cursor)
            return RepairResult("exact", None, new_cursor)
        if chosen.mode == "cursor":
            assert caps.cursor_column is not None and cursor is not None
            new_cursor = await self._cursor(caps.cursor_column, cursor.get("value"), sink)
            return RepairResult("cursor", None, new_cursor)
        # A full read; establish the cursor of the mode future repairs will use.
        wanted, _why = choose(self.config, caps)
        if caps.logged and wanted == "exact":
            new_cursor = await self._diff_with_horizon(caps, sink, fill)
        elif caps.cursor_column and wanted == "cursor":
            if fill is not None:
                # Every row is read: the cursor is the greatest value seen, no key scan.
                best = await self._fill(fill, caps.cursor_column)
                new_cursor = {"mode": "cursor", "column": caps.cursor_column, "value": best}
            else:
                new_cursor = await self._cursor(caps.cursor_column, None, sink)
        else:
            await self._diff(sink, fill)
            new_cursor = {"mode": "diff"}
        return RepairResult(chosen.report, chosen.fallback, new_cursor)

    # ------------------------------------------------------------------ the methods

    async def _diff(self, sink: Sink, fill: PageWriter | None = None) -> None:
        if fill is not None:
            await self._fill(fill)
            return
        # Every key read (and kept by the filter) is marked in the merger's view by
        # replay_rows; the keys it holds that no page showed are deleted upstream, delivered a
        # chunk at a time. No key set is held here: with a store-backed view the marks live in
        # SQLite (merge.py, *Where the view lives*).
        pk = list(self.merger.pk_columns)
        async for page in self.rest.pages(
            self.merger.schema, self.merger.table, order=pk, filters=self.filters,
            select=self.select, page_size=self.config.page_size,
        ):
            await sink(self.merger.replay_rows(page))  # marks the keys it keeps
        await self._sweep(sink)

    async def _fill(self, fill: PageWriter, column: str | None = None) -> Any:
        """A full read whose pages build no change: every page undecoded to *fill*, over
        ``fill.streams`` key ranges read concurrently (the mirror's snapshot path, shared:
        :mod:`supasync.repair.fullread`). Returns the greatest value of *column* (a
        cursor-mode read's new cursor) as PostgREST sent it, None without a column."""
        schema, table = self.merger.schema, self.merger.table
        pk = list(self.merger.pk_columns)
        await fill.begin()
        best: Any = None
        best_v: int | None = None
        ranges: list[list[tuple[str, str]]] = [[]]
        if fill.streams > 1:
            ranges = await key_ranges(self.rest, schema, table, pk, await self.columns(),
                                      self.filters, fill.streams)
        async for page in full_pages(
            self.rest, schema, table, order=pk, filters=self.filters, select=self.select,
            page_size=fill.page_size or self.config.page_size, max_bytes=fill.max_bytes,
            ranges=ranges,
        ):
            best, best_v = greatest(await fill.page(page, column), best, best_v)
        await fill.done()
        return best

    async def _sweep(self, sink: Sink) -> None:
        for changes in self.merger.replay_unmarked():
            await sink(changes)

    async def _diff_with_horizon(self, caps: Capabilities, sink: Sink,
                                 fill: PageWriter | None = None) -> dict[str, Any]:
        # The horizon is taken *before* the read: every transaction below it had finished, so
        # the read sees it; anything at or above is read again by the next exact repair.
        horizon = caps.horizon
        if horizon is None:
            log = await self._log(None)
            horizon = str(log["horizon"]) if log and log.get("logged") else None
        await self._diff(sink, fill)
        return {"mode": "exact", "horizon": horizon} if horizon is not None else {"mode": "diff"}

    async def _exact(
        self, horizon: str, caps: Capabilities, sink: Sink
    ) -> dict[str, Any] | None:
        """Read the log from *horizon*; None means "truncated: diff instead"."""
        keys: dict[Key, int] = {}
        new_horizon: str | None = None
        after: tuple[str, int] | None = None
        while True:
            answer = await self._log(horizon, after, self.config.log_page_size)
            if answer is None or not answer.get("logged"):
                raise RestError(
                    f"the exact-mode change log for {self._table} disappeared during repair; "
                    "was `supasync sql --uninstall` run? The next repair falls back to diff"
                )
            if new_horizon is None:
                new_horizon = str(answer["horizon"])
            entries = answer.get("entries") or []
            for _id, xid, op, pk in entries:
                if op == "T":
                    return None
                keys[tuple(pk)] = max(keys.get(tuple(pk), 0), int(xid))
            # The server caps a page (10000); a short page, by its own limit, is the last.
            if len(entries) < int(answer.get("limit", self.config.page_size)):
                break
            last = entries[-1]
            after = (str(last[1]), int(last[0]))
        del caps
        pk_cols = list(self.merger.pk_columns)
        parts = key_chunks(list(keys))

        async def fetch(part: list[Key]) -> list[dict[str, Any]]:
            return await self.rest.by_keys(
                self.merger.schema, self.merger.table, pk_cols, part,
                filters=self.filters, select=self.select, chunk=len(part),
            )

        # A few reads in flight while the previous chunk is merged and handed over: the
        # re-read is bound by round trips, not by either side's work (bench/cache_store.py).
        ahead: list[asyncio.Task[list[dict[str, Any]]]] = []
        try:
            for i, part in enumerate(parts):
                while len(ahead) < _EXACT_AHEAD and i + len(ahead) < len(parts):
                    ahead.append(asyncio.ensure_future(fetch(parts[i + len(ahead)])))
                rows = await ahead.pop(0)
                found = {self.merger.key_of(r) for r in rows}
                changes: list[Change] = []
                # One call per version (the log's xid per key): the merger reads the view for
                # the whole chunk in one statement.
                by_version: dict[int | None, list[dict[str, Any]]] = {}
                for row in rows:
                    by_version.setdefault(keys.get(self.merger.key_of(row)), []).append(row)
                for version, group in by_version.items():
                    changes += self.merger.replay_rows(group, version=version)
                for k in part:
                    if k not in found:
                        changes += self.merger.replay_absent([k], version=keys[k])
                await sink(changes)
        finally:
            for task in ahead:
                task.cancel()
            for task in ahead:
                with contextlib.suppress(BaseException):
                    await task
        assert new_horizon is not None
        return {"mode": "exact", "horizon": new_horizon}

    async def _cursor(self, column: str, last: Any, sink: Sink) -> dict[str, Any]:
        filters = list(self.filters)
        start = _overlap_start(last, self.config.overlap)
        if start is not None:
            filters.append((column, f"gte.{start}"))
        order = [column, *self.merger.pk_columns]
        best = last
        best_v = version_value(last) if last is not None else None
        async for page in self.rest.pages(
            self.merger.schema, self.merger.table, order=order, filters=filters,
            select=self.select, page_size=self.config.page_size,
        ):
            for row in page:
                v = version_value(row.get(column))
                if v is not None and (best_v is None or v > best_v):
                    best, best_v = row.get(column), v
            await sink(self.merger.replay_rows(page))
        # Deletions: a keys-only scan of the filtered table, compared with the cache.
        pk = list(self.merger.pk_columns)
        async for page in self.rest.pages(
            self.merger.schema, self.merger.table, order=pk, filters=self.filters,
            select=",".join(pk), page_size=max(self.config.page_size, 5000),
        ):
            self.merger.mark_present(self.merger.key_of(row) for row in page)
        await self._sweep(sink)
        return {"mode": "cursor", "column": column, "value": best}


#: Key re-reads of an exact repair in flight at once.
_EXACT_AHEAD = 4
#: A chunk of keys re-read in one request: at most this many keys, and at most this many
#: characters of rendered keys (PostgREST gets them in the URL; proxies commonly refuse URLs
#: beyond 8 KB).
_CHUNK_KEYS = 1000
_CHUNK_CHARS = 6000


def key_chunks(keys: Sequence[Key]) -> list[list[Key]]:
    """Keys cut into chunks for :meth:`~supasync.repair.rest.Rest.by_keys` by count and by the
    length of their rendering (pure)."""
    out: list[list[Key]] = []
    part: list[Key] = []
    size = 0
    for key in keys:
        # ``in.(1,2,3)`` for one key column; ``and(a.eq.x,b.eq.y)`` per key for several.
        width = sum(len(str(v)) + 1 for v in key) + (0 if len(key) == 1 else 8 * len(key))
        if part and (len(part) >= _CHUNK_KEYS or size + width > _CHUNK_CHARS):
            out.append(part)
            part, size = [], 0
        part.append(key)
        size += width
    if part:
        out.append(part)
    return out


def _overlap_start(last: Any, overlap: _dt.timedelta) -> str | None:
    """Where cursor mode starts reading: *last* minus the overlap (timestamps), or *last*."""
    if last is None:
        return None
    if isinstance(last, int) and not isinstance(last, bool):
        return str(last)
    ts = parse_timestamp(last)
    if ts is None:
        return str(last)
    return (ts - overlap).isoformat()
