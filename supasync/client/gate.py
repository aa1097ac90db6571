"""CachedGate: a subscription gate with a local cache and gap repair.

It implements :class:`~supasync.client.subscription.Gate`, the seam between a subscription's live
feed and its consumers, over three pieces: the cache (:mod:`supasync.store`: a typed table per
subscription in a store file, the same format as a mirror's), the merge state
(:class:`~supasync.core.merge.Merger`, whose view *is* the cache's table, read by key: no row is
held in Python beyond the batch at hand) and the repair (:mod:`supasync.repair.repairer`). What
the gate adds is the asyncio side:

* ``open()`` reads nothing proportional to the table: the fingerprint and cursor. The first
  ``subscribed()`` of a run asks PostgREST for the table's columns and types (the OpenAPI root,
  one request) and makes or adapts the subscription's table (a column added upstream is
  filled by a full comparison in that repair; a changed type or key starts the table over).

* ``gap()`` starts buffering live changes; ``subscribed()`` (run by the subscription in its own
  task) repairs: replayed changes are emitted page by page, each page's rows written to the
  cache in one transaction, then - under a lock that ``live()`` also takes - the buffered live
  changes are drained and emitted, and the rows, the new cursor and a journal line are written
  in one transaction. Only then is :class:`~supasync.core.status.GapRepaired` reported.
* ``live()`` emits (and writes) a change at once when no repair is running, buffers it otherwise;
  live changes the cache already holds are dropped (:mod:`supasync.core.merge`, *Dedupe*).
* A failed repair (PostgREST unreachable, 5xx, ...) is retried with capped exponential delays
  for as long as the subscription stays up; live changes stay buffered meanwhile. A cancelled
  repair (the subscription was lost again) finishes emitting the page it was emitting - the
  view already holds it - and stops; the next ``subscribed()`` repairs again.
* Cache trouble never stops delivery: a cache that cannot be read is reset (the next repair
  reads everything), a cache that cannot be written is replaced by an in-memory one, and both
  are logged saying so.

Delivery guarantee: a change is emitted before it is written, so a crash between the two
re-delivers it after a restart on the same cache file (at least once, never lost); handlers that
key by primary key see the server's rows. The keys of every delivery are recorded first
(:mod:`supasync.store.inflight`, a file next to the cache) and forgotten once their rows are
cached; a restart delivers the server's state of any key left there again, so a row delivered,
not cached, then deleted upstream while nothing ran still reaches the handlers as a DELETE.

The cache's rows were fetched for one subscription and one subscriber: the fingerprint stored
with them covers table, filter, columns, key and the token's ``role``/``sub``. Opening a cache
written for anything else starts over, so one user's rows never reach another's handlers.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as _dt
import hashlib
import itertools
import json
import logging
import os
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from ..core.changes import Change, change_from_row
from ..core.errors import CacheError, ConfigError, RestError, SupasyncError
from ..core.merge import CachedRow, DictView, Merger, RowWrite, Versioning
from ..core.status import GapRepaired, utcnow
from ..repair.fullread import MISSING_PROBLEM, table_gone
from ..repair.repairer import PageWriter, RepairConfig, Repairer, RepairResult
from ..repair.rest import RawPage, Rest, TableInfo
from ..store import JournalEntry, Store, open_store
from ..store.cache import CacheFile, local_table_name
from ..store.drift import schema_signature, schema_suspect
from ..store.inflight import InFlight, inflight_path
from ..store.memory import MemoryStore
from ..store.tables import TableShape, compare_shapes, mirror_table_name
from .subscription import Emit, SubscriptionInfo
from .watch import GateWatcher, Repaired, WatchedRead

__all__ = ["CachedGate"]

logger = logging.getLogger("supasync.client.gate")

_READ_VERSIONS = itertools.count(1)
#: A read model's full reads (first snapshot, full comparison), as the mirror reads: key
#: ranges read concurrently, pages of up to this many rows and about this many bytes (each
#: request and each page's transaction has a fixed cost on both sides; at most two pages per
#: range wait in memory). A server capping answers lower (Supabase: 1000) is read in its size.
FULL_READ_STREAMS = 3
FULL_READ_PAGE_ROWS = 20_000
FULL_READ_PAGE_BYTES = 4 << 20
_RETRY_FIRST_S = 0.5
_RETRY_MAX_S = 30.0


def _identity(token: str) -> str:
    """``role:sub`` from a JWT's payload (not verified: only used to tell subscribers apart)."""
    parts = token.split(".")
    if len(parts) == 3:
        try:
            raw = parts[1] + "=" * (-len(parts[1]) % 4)
            claims = json.loads(base64.urlsafe_b64decode(raw))
            if isinstance(claims, dict):
                return f"{claims.get('role')}:{claims.get('sub')}"
        except (ValueError, UnicodeDecodeError):
            pass
    return "opaque-key"


class CachedGate:
    """A :class:`~supasync.client.subscription.Gate` that caches rows and repairs every gap.

    Args:
        store: a :class:`~supasync.store.Store` (shared; not closed by the gate), or a path /
            URL for :func:`~supasync.store.open_store` (opened and closed by the gate; None = a
            temporary SQLite file).
        repair: the repair configuration (mode, cursor column, overlap, page size).
        batch_size: rows per cache transaction while a repair writes.
        http_client: an httpx client for PostgREST (not closed by the gate).
        buffer_limit: live changes buffered during a repair at most. Beyond it the buffer
            is dropped (and counted in :attr:`overflows`), and one more full comparison runs
            after the current repair: it starts after the drop, so it sees every change
            dropped; handlers get those rows from it (as replayed changes).
        watcher: told what the gate does (:class:`~supasync.client.watch.GateWatcher`: the
            mirror's figures and progress bar).
        every_change: journal every live change the store applies, in order (the mirror's
            file, which the relay publishes change by change); by default the writes of one
            burst are one per key, the latest.
        snapshot_page_size, snapshot_streams, snapshot_page_bytes: a read model's full reads
            (first snapshot, full comparison): rows per request at most, key ranges read at
            once, and about how large a page's body may grow (at most two pages per range
            wait in memory).
        on_store_error: when given, a store that cannot be written or read stops the gate
            (it is called with the error, and nothing more is written) instead of being
            replaced by an in-memory cache: the mirror, whose file is the product, stops.
        table_name: the store table the rows live in; by default it follows the
            subscription's name (:func:`~supasync.store.cache.local_table_name`: ``todos``,
            or ``todos__open`` for a subscription named ``open``). The mirror names its
            tables after the source alone, whatever its subscriptions are called on a
            client it shares (``supasync serve --identity user``).
    """

    def __init__(
        self,
        store: Store | str | os.PathLike[str] | None = None,
        *,
        repair: RepairConfig | None = None,
        batch_size: int = 500,
        http_client: httpx.AsyncClient | None = None,
        buffer_limit: int = 100_000,
        watcher: GateWatcher | None = None,
        on_store_error: Callable[[Exception], None] | None = None,
        every_change: bool = False,
        snapshot_page_size: int = FULL_READ_PAGE_ROWS,
        snapshot_streams: int = FULL_READ_STREAMS,
        snapshot_page_bytes: int = FULL_READ_PAGE_BYTES,
        table_name: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ConfigError("batch_size must be positive", key="batch_size", value=batch_size)
        if buffer_limit < 1:
            raise ConfigError("buffer_limit must be positive", key="buffer_limit",
                              value=buffer_limit)
        self.buffer_limit = buffer_limit
        self.watcher = watcher or GateWatcher()
        self.every_change = every_change
        self.snapshot_page_size = snapshot_page_size
        self.snapshot_streams = snapshot_streams
        self.snapshot_page_bytes = snapshot_page_bytes
        self.on_store_error = on_store_error
        self._table_name = table_name
        #: The store failure that stopped the gate (only with ``on_store_error``).
        self.store_error: Exception | None = None
        #: How many times live changes overflowed the buffer during a repair.
        self.overflows = 0
        self._overflowed = False
        self._store_spec = store
        self._own_store = not hasattr(store, "write")
        self.store: Store | None = None
        self.config = repair or RepairConfig()
        self.batch_size = batch_size
        self._http = http_client
        self._info: SubscriptionInfo | None = None
        self._emit: Emit | None = None
        self.merger: Merger | None = None
        self._rest: Rest | None = None
        self._repairer: Repairer | None = None
        self._cursor: Mapping[str, Any] | None = None
        self._early: list[Change] = []
        self._pending_rows: list[Any] = []
        # The merger keeps live changes' row writes (one per key, latest wins) until this
        # callback writes them together at the end of the burst (see _schedule_flush).
        self._flush_handle: asyncio.Handle | None = None
        self._gap_open = False
        self._opened_at = utcnow()
        self._reason = "first-join"
        self._lock = asyncio.Lock()
        self.last_result: RepairResult | None = None
        self._inflight = InFlight(None)
        self._suspects: list[tuple[Any, ...]] = []
        self._suspects_done = False
        self._delivering = 0
        self._fingerprint_text = ""
        # A full comparison is due in the next repair (a column was added upstream).
        self._full_read = False
        self._snapshotting = False
        # The schema step (a live change that no longer fits the stored table): the table's
        # shape as last prepared, what the last preparation did, the signatures PostgREST did
        # not confirm (not asked again).
        self._shape_now: TableShape | None = None
        self._described = False  # PostgREST described the table at the last preparation
        self._prepared: str | None = None
        self._schema_ok: set[tuple[Any, ...]] = set()
        # One side task at a time: the schema step, or the re-read of truncated rows.
        self._side_task: asyncio.Task[None] | None = None
        self._reread: dict[tuple[Any, ...], None] = {}
        self._read: WatchedRead | None = None  # the full read under way, told to the watcher
        self._once = False  # repair(): one attempt, its failure raised
        #: Why the subscription is not in sync beyond a plain repair in progress (None when
        #: it is): :data:`~supasync.repair.fullread.MISSING_PROBLEM` while PostgREST says the
        #: table is not there (dropped, renamed, no longer readable by this role); the repair
        #: keeps retrying and clears it once the table is back.
        self.problem: str | None = None
        #: Where the subscription's read model finds its rows (client/reads.py): plain
        #: attributes, read from any thread.
        self.read_path: Path | None = None
        self.read_table: str | None = None
        self.read_version = 0

    # ------------------------------------------------------------------ Gate protocol

    async def open(self, info: SubscriptionInfo, emit: Emit) -> None:
        """Open the cache for *info* and load its rows (resuming a previous run)."""
        self._info, self._emit = info, emit
        if self._own_store:
            spec = self._store_spec
            assert not hasattr(spec, "write")
            try:
                self.store = open_store(spec)
            except CacheError as exc:
                # Delivery matters more than persistence: say so and keep going in memory.
                logger.error(
                    "%s: cannot open the cache (%s); using an in-memory cache - the next "
                    "repair reads everything", info.name, exc,
                )
                self.store = MemoryStore()
        else:
            self.store = self._store_spec  # type: ignore[assignment]
        self._rest = Rest(info.rest_url, info.api_key, info.token, client=self._http)
        cache_path = getattr(self.store, "path", None)
        if cache_path is not None and not getattr(self.store, "temporary", False):
            self._inflight = InFlight(inflight_path(cache_path, info.name))
        fingerprint = self._fingerprint(info, _identity(await info.token()))
        self._fingerprint_text = fingerprint
        store = self._require_store()
        try:
            meta = store.meta(info.name)
            if meta is None:
                store.reset(info.name, fingerprint, reason="new subscription")
            elif meta.fingerprint != fingerprint:
                logger.warning(
                    "%s: the cache holds rows for another table, filter, column list or "
                    "subscriber; starting it over", info.name
                )
                store.reset(info.name, fingerprint, reason="fingerprint changed")
            meta = store.meta(info.name)
            self._cursor = meta.cursor if meta else None
            self._publish_reads()
        except (CacheError, ValueError) as exc:
            logger.error("%s: cache unusable (%s); starting it over", info.name, exc)
            self._cursor = None
            try:
                store.reset(info.name, fingerprint, reason=f"cache unusable: {exc}")
            except CacheError as again:
                logger.error(
                    "%s: cannot reset the cache either (%s); using an in-memory cache - "
                    "every start reads everything again until the file is fixed",
                    info.name, again,
                )
                self._use_memory(f"cache unusable: {again}")
        self._suspects = self._inflight.load()
        if self._suspects:
            logger.warning("%s: %d change(s) were delivered but not cached when the last run "
                           "stopped; the first repair delivers their rows again",
                           info.name, len(self._suspects))

    async def gap(self, reason: str) -> None:
        """The subscription is not live: buffer live changes until the next repair ends."""
        await self._cancel_side_task()  # the next repair prepares the table again anyway
        self._reason = reason
        if not self._gap_open:
            self._opened_at = utcnow()
            self._gap_open = True
        if self.merger is not None:
            self.merger.gap()
        self.watcher.gap(reason)

    async def subscribed(self) -> None:
        """Repair the gap (retrying until it succeeds or the task is cancelled), drain the
        buffered live changes, write rows + cursor, report GapRepaired."""
        info = self._require_info()
        attempt = 0
        while True:
            try:
                if self.merger is None or attempt == 0:
                    # Every repair starts from the table's columns as PostgREST describes them
                    # now (one OpenAPI read): a column added, dropped or retyped while the
                    # feed was away is applied before the rows are read.
                    await self._prepare()
                merger, repairer = self.merger, self._repairer
                assert merger is not None and repairer is not None
                merger.gap()  # idempotent: a first subscribed() without gap() still buffers
                first = self._cursor is None and not self._full_read
                merger.replay_origin = "snapshot" if first else "replay"
                merger.quiet = not info.consumed()
                self.watcher.repairing(first)
                if first and not self._snapshotting and not merger.view:
                    # A first read into an empty table: one journal reset entry, not one
                    # entry per row (the store drops the table's journal triggers meanwhile).
                    self._require_store().begin_snapshot(info.name)
                    self._snapshotting = True
                cursor = None if self._full_read else self._cursor
                # Pages that need no change built go to the store undecoded (the mirror's
                # path): a first read into an empty table (changes are built only for
                # consumers), and a read model's full comparison (done in SQL: merge, mark,
                # sweep; the merger's view is the same table).
                fill: PageWriter | None = None
                if self._can_fill():
                    if self._snapshotting:
                        fill = PageWriter(self._fill_page, **self._read_plan(merger.quiet))
                    elif merger.quiet:
                        fill = self._merge_pages()
                if fill is not None:
                    self._read = WatchedRead(self.watcher, self._count_rows)
                    fill = self._read.wrap(fill)
                result = await repairer.run(cursor, self._sink, fill=fill)
                self._read = None
                if self.store_error is not None:
                    return
                if self._snapshotting:
                    self._snapshotting = False
                    self._require_store().end_snapshot(info.name)
                self._full_read = False
                if self._suspects:
                    await self._redeliver_suspects()
                self._set_problem(None)
                if self._overflowed:
                    # Live changes were dropped: compare the whole table again (this read
                    # starts after the drop); what is buffered from now on goes on top.
                    self._overflowed = False
                    self._full_read = True
                    logger.info("%s: comparing the whole table after the live buffer "
                                "overflowed", info.name)
                    continue
                break
            except Exception as exc:
                if self._read is not None:
                    self._read.abort()
                    self._read = None
                if self._once:
                    raise
                if self.on_store_error is not None and isinstance(
                        exc, CacheError | sqlite3.DatabaseError):
                    self._store_failed(exc)  # retrying cannot mend the file
                    return
                # Any failure - PostgREST down, a 5xx, a malformed answer, even a bug - must not
                # leave the gate buffering forever: retry with capped exponential delays.
                delay = min(_RETRY_MAX_S, _RETRY_FIRST_S * 2**attempt)
                attempt += 1
                if table_gone(exc) and self.problem != MISSING_PROBLEM:
                    # Dropped or renamed upstream: say so once, keep checking (the mirror
                    # reports the same words as the table's state).
                    self._set_problem(MISSING_PROBLEM)
                    logger.warning("%s: %s.%s: %s", info.name, info.schema, info.table,
                                   MISSING_PROBLEM)
                logger.warning(
                    "%s: gap repair failed (attempt %d): %s; retrying in %.1fs",
                    info.name, attempt, exc, delay,
                    exc_info=not isinstance(exc, SupasyncError | httpx.HTTPError),
                )
                # A backoff delay between retries, not a stand-in for synchronisation.
                await asyncio.sleep(delay)
        async with self._lock:
            await self._deliver(merger.finish())
            detail = {
                "mode": result.mode,
                "fallback": result.fallback,
                "inserted": merger.counts.inserted,
                "updated": merger.counts.updated,
                "deleted": merger.counts.deleted,
                "reason": self._reason,
            }
            self._write(merger.take_writes(), cursor=result.cursor,
                        journal=[JournalEntry("repair", detail)])
            if self.store_error is not None:
                return
            self._cursor = result.cursor
            self.last_result = result
            self._gap_open = False
        now = utcnow()
        self.watcher.repaired(Repaired(
            result.mode, repairer.mode_why or "", result.fallback, merger.counts.inserted,
            merger.counts.updated, merger.counts.deleted, self._reason, self._opened_at, now))
        self.watcher.live()
        fields: dict[str, Any] = {
            "subscription": info.name,
            "at": now,
            "opened_at": self._opened_at,
            "duration_s": (now - self._opened_at).total_seconds(),
            "mode": result.mode,
            "inserted": merger.counts.inserted,
            "updated": merger.counts.updated,
            "deleted": merger.counts.deleted,
        }
        if "fallback" in {f.name for f in dataclasses.fields(GapRepaired)}:
            fields["fallback"] = result.fallback
        info.report(GapRepaired(**fields))
        self._kick_reread()  # truncated rows that arrived while the repair ran

    async def repair(self) -> RepairResult | None:
        """Repair once, without a subscription's feed (the mirror's ``--once``): like
        :meth:`subscribed` but a failure is raised instead of retried. Returns the result
        (None if the store failed, with ``on_store_error``)."""
        self._once = True
        try:
            await self.gap("once")
            self.last_result = None
            await self.subscribed()
        finally:
            self._once = False
        return self.last_result

    async def live(self, change: Change) -> None:
        """A live change: emitted now (or buffered while repairing), deduped, cached."""
        if self.merger is None:
            self._early.append(change)
            return
        idle = not self._gap_open and (self._side_task is None or self._side_task.done())
        if idle and self._schema_due(change):
            await self._start_schema_step(change)
            return
        async with self._lock:
            if self.merger.repairing and self.merger.buffered >= self.buffer_limit:
                self._overflow()
            out = self.merger.live(change)
            if out:
                await self._deliver(out)
            if self._flush_handle is None and self.merger.has_writes:
                self._schedule_flush()
        if change.partial and change.op != "DELETE" and change.pk and self._rest is not None:
            # Truncated by the server (Error 413) or TOASTed values left out: the row as
            # merged may hold old values; it is read again by key (in batches, while live
            # changes are buffered so a newer one is never overwritten by the older read).
            self._reread[tuple(change.pk)] = None
            self._kick_reread()

    async def close(self) -> None:
        """Flush pending writes and release the cache and HTTP resources."""
        await self._cancel_side_task()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self.merger is not None and self.store is not None:
            writes = self.merger.take_writes()
            if writes:
                self._write(writes)
            if self._snapshotting and self._info is not None:
                # An interrupted first read: journal the table again (the next run reads on).
                self._snapshotting = False
                try:
                    self.store.end_snapshot(self._info.name)
                except CacheError as exc:
                    logger.warning("%s: %s", self._info.name, exc)
        if self._rest is not None:
            await self._rest.aclose()
        self._inflight.close()
        if self._own_store and self.store is not None:
            self.store.close()
        self.store = None

    # ------------------------------------------------------------------ inspection

    #: This gate matches DELETEs itself: one for a key it does not hold is dropped, one for a
    #: key it holds (from this run or from the cache file) is delivered. A subscription may pass
    #: every DELETE to :meth:`live` instead of filtering them with its own key set, which after a
    #: restart knows only the keys delivered in this run.
    # The gate holds the subscription's rows, so it decides which DELETEs are this
    # subscriber's (subscription.py passes it every DELETE; see Gate.filters_deletes).
    filters_deletes = True
    handles_deletes = True
    #: The merger judges UPDATEs of the unfiltered UPDATE binding against the filter and what
    #: the cache holds: a move-out is delivered as a DELETE with the cached row as ``old``, a
    #: move-in as an INSERT, an UPDATE of a row neither matching nor held is dropped.
    filters_updates = True

    def knows(self, pk: tuple[Any, ...]) -> bool:
        """Whether the cache holds a row with primary key *pk* (delivered and not deleted)."""
        return self.merger is not None and self.merger.holds(tuple(pk))

    def rows(self) -> dict[tuple[Any, ...], Mapping[str, Any]]:
        """The cached rows (what handlers have been given), by primary key. Reads every row
        on the event loop: for tests and small tables (the subscription's read model,
        ``sub.rows()``, reads from any thread without blocking the loop)."""
        if self.merger is None:
            return {}
        return {r.pk: r.row for r in self.merger.snapshot()}

    @property
    def table_name(self) -> str | None:
        """The subscription's table in the store file (None: no file, or not prepared yet)."""
        if self.store is None or self._info is None or self.merger is None:
            return None
        return self.store.table_name(self._info.name)

    @property
    def store_path(self) -> Any:
        """The store file's path (None for an in-memory cache)."""
        return getattr(self.store, "path", None) if self.store is not None else None

    # ------------------------------------------------------------------ internals

    def _require_info(self) -> SubscriptionInfo:
        if self._info is None:
            raise RuntimeError("CachedGate.open() was not called")
        return self._info

    def _require_store(self) -> Store:
        if self.store is None:
            raise RuntimeError("CachedGate is not open (or already closed)")
        return self.store

    @staticmethod
    def _fingerprint(info: SubscriptionInfo, identity: str) -> str:
        doc = {
            "schema": info.schema,
            "table": info.table,
            "filter": str(info.filter),
            "columns": list(info.columns) if info.columns is not None else None,
            "primary_key": list(info.primary_key),
            "identity": identity,
        }
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def _columns_of(self, pk: Sequence[str]) -> tuple[str, ...] | None:
        """The subscription's column list plus what repairs need (None: every column)."""
        info = self._require_info()
        if info.columns is None:
            return None
        cursor_col = self.config.cursor_column
        extra = [cursor_col] if cursor_col else []
        return tuple(dict.fromkeys([*pk, *info.columns, *extra]))

    def _shape(self, pk: Sequence[str], found: TableInfo | None) -> TableShape:
        """The subscription's table: the source's columns (the subscription's, when it lists
        them) with their types, and its key."""
        info = self._require_info()
        types = dict(found.columns) if found is not None else {}
        wanted = self._columns_of(pk)
        names = list(wanted) if wanted is not None else list(types)
        for c in pk:  # a key not described (no OpenAPI entry) still needs a column
            if c not in names:
                names.insert(0, c)
        local = self._table_name or local_table_name(info.name, info.schema, info.table)
        return TableShape(info.schema, info.table,
                          tuple((c, types.get(c, "unknown")) for c in names), tuple(pk),
                          None if local == mirror_table_name(info.schema, info.table)
                          else local)

    async def _prepare(self) -> None:
        """Find the table's key and column types (one OpenAPI read), make or adapt the
        subscription's table, and build the merger and repairer over it."""
        info = self._require_info()
        assert self._rest is not None
        found = await self._rest.table_info(info.schema, info.table)
        if found is None and (self._described or self.on_store_error is not None):
            # Described before, not now: dropped, renamed or hidden from this role (repairs
            # retry; the rows and the merger stay as they are). A gate whose store is the
            # product (the mirror's) never falls back to memory either.
            raise RestError(f"PostgREST does not describe {info.schema}.{info.table} any more",
                            status=404, code="PGRST205")
        pk = tuple(info.primary_key) or (found.primary_key if found is not None else ())
        if not pk:
            raise ConfigError(
                f"cannot find the primary key of {info.schema}.{info.table} in PostgREST's "
                "OpenAPI description; pass primary_key= to the subscription",
                key="primary_key",
            )
        if found is None or (self._columns_of(pk) is None and not found.columns):
            # Nothing says what columns there are: keep the rows in memory.
            if not isinstance(self.store, MemoryStore):
                logger.warning("%s: PostgREST does not describe %s.%s; caching its rows in "
                               "memory", info.name, info.schema, info.table)
                self._use_memory("the table is not described by PostgREST")
        store = self._require_store()
        shape = self._shape(pk, found)
        before = store.shape(info.name) if isinstance(store, CacheFile) else None
        try:
            action = store.prepare(info.name, shape)
        except CacheError as exc:
            logger.error("%s: %s; using an in-memory cache", info.name, exc)
            self._use_memory(f"cache unusable: {exc}")
            store = self._require_store()
            action = store.prepare(info.name, shape)
        self._publish_reads()
        self._described = found is not None
        self._shape_now = shape if isinstance(store, CacheFile) else None
        self._prepared = action
        if before is not None and action in ("altered", "resnapshot"):
            self.watcher.schema_changed(compare_shapes(before, shape).describe(), action)
        if action == "altered":
            logger.info("%s: the table's columns changed upstream; the next repair compares "
                        "every row", info.name)
            self._full_read = self._cursor is not None
        elif action == "resnapshot":
            logger.warning("%s: a column's type or the key changed upstream; the cache starts "
                           "over", info.name)
            self._cursor = None
        if self.merger is not None:
            if action == "unchanged":
                return  # the same table: the merger (and what it buffers) goes on
            # A new shape: a new merger, handed what the old one buffered (first, in order).
            self._early[:0] = self.merger.take_buffer()
        versioning = Versioning(self.config.cursor_column or "updated_at")
        self._make_merger(pk, store.view(info.name, versioning.of), versioning,
                          shape.column_names)

    # ------------------------------------------------------------------ the schema step

    def _schema_due(self, change: Change) -> bool:
        """Whether a live change says the table changed upstream (a column added, dropped or
        retyped: :func:`~supasync.store.drift.schema_suspect`) and that was not ruled out for
        changes like it before. Only a subscription of every column of a typed table asks
        (one with a column list stores fewer columns than its changes carry), and only a
        change with the server's column list."""
        shape, info = self._shape_now, self._info
        if shape is None or info is None or info.columns is not None:
            return False
        if not change.columns:
            # Only a change that says which columns the table has now is a hint (Realtime's
            # postgres_changes always do; a repair's or a test's changes do not).
            return False
        if not schema_suspect(shape, change):
            return False
        return schema_signature(change) not in self._schema_ok

    async def _start_schema_step(self, change: Change) -> None:
        """Buffer live changes (*change* first), then prepare the table again and repair, in
        a task of its own (the subscription's pump must go on taking changes): the same path
        as a gap, so handlers get the rows as they now are, and the buffer after them."""
        info = self._require_info()
        logger.info("%s: a live change does not fit the stored table (a schema change "
                    "upstream?); checking the table's columns", info.name)
        async with self._lock:
            self._flush_live()
            if self._flush_handle is not None:
                self._flush_handle.cancel()
                self._flush_handle = None
            await self.gap("schema change")
            if self.merger is not None:
                self.merger.live(change)  # buffered: subscribed() prepares the table again
            else:
                self._early.append(change)
        signature = schema_signature(change)
        self._side_task = asyncio.create_task(
            self._schema_step(signature), name=f"supasync-schema-{info.name}")

    async def _schema_step(self, signature: tuple[Any, ...]) -> None:
        try:
            await self.subscribed()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("%s: the schema step failed; the next gap repairs the table",
                             self._require_info().name)
            return
        if self._prepared == "unchanged":
            self._schema_ok.add(signature)  # PostgREST says nothing changed: do not ask again
        else:
            self._schema_ok.clear()

    def _set_problem(self, text: str | None) -> None:
        if text != self.problem:
            self.problem = text
            self.watcher.problem(text)

    def _store_failed(self, exc: Exception) -> None:
        if self.store_error is None:
            self.store_error = exc
            logger.error("%s: the store file cannot be written (%s); stopping",
                         self._require_info().name, exc)
            assert self.on_store_error is not None
            self.on_store_error(exc)

    def _overflow(self) -> None:
        assert self.merger is not None
        dropped = self.merger.drop_buffer()
        self.overflows += 1
        self._overflowed = True
        self.watcher.overflowed()
        logger.warning("%s: more than %d live changes arrived during a repair; dropping them "
                       "and comparing the whole table again afterwards",
                       self._require_info().name, dropped)

    def _kick_reread(self) -> None:
        """Start re-reading truncated rows unless a gap or another side task is under way (a
        repair's end kicks it again)."""
        if not self._reread or self._gap_open or self._rest is None:
            return
        task = self._side_task
        if task is not None and not task.done() and task is not asyncio.current_task():
            return
        self._side_task = asyncio.create_task(
            self._reread_partial(), name=f"supasync-reread-{self._require_info().name}")

    async def _reread_partial(self) -> None:
        """Read the rows of truncated live changes again by key and replay them (a repair of
        those keys: live changes are buffered meanwhile and drained on top). A failed read is
        logged; the next gap's repair covers those rows."""
        while self._reread:
            await self._reread_once()

    async def _reread_once(self) -> None:
        info = self._require_info()
        merger, rest = self.merger, self._rest
        keys, self._reread = list(self._reread), {}
        if merger is None or rest is None or not keys:
            return
        async with self._lock:
            self._flush_live()
            merger.gap()
        try:
            rows = await rest.by_keys(
                info.schema, info.table, merger.pk_columns, keys,
                filters=info.filter.to_postgrest(),
                select="*" if merger.columns is None else ",".join(merger.columns))
        except (SupasyncError, httpx.HTTPError) as exc:
            logger.warning("%s: re-reading %d truncated row(s) failed (%s); the next repair "
                           "reads them", info.name, len(keys), exc)
            rows = None
        async with self._lock:
            if rows is not None:
                merger.replay_origin = "replay"
                merger.quiet = not info.consumed()
                found = {merger.key_of(r) for r in rows}
                out = merger.replay_rows(rows)
                out += merger.replay_absent([k for k in keys if k not in found])
                await self._deliver(out)
            await self._deliver(merger.finish())
            self._write(merger.take_writes())

    async def _cancel_side_task(self) -> None:
        task, self._side_task = self._side_task, None
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    def _publish_reads(self) -> None:
        # Called after every (re)preparation of the table: readers' cached shapes go stale.
        # Numbers are unique in the process, so no other gate's shape is ever taken for this.
        self.read_version = next(_READ_VERSIONS)
        store, info = self.store, self._info
        path = getattr(store, "path", None)
        self.read_table = None
        if store is not None and info is not None and path is not None:
            self.read_table = store.table_name(info.name)
        self.read_path = Path(path) if path is not None else None

    def memory_rows(self) -> list[CachedRow] | None:
        """An in-memory cache's rows (a copy, taken whole under the GIL), or None."""
        store = self.store
        if not isinstance(store, MemoryStore) or self._info is None:
            return None
        if self.merger is not None and isinstance(self.merger.view, DictView):
            return list(self.merger.view.values())
        return store.rows(self._info.name)

    def _use_memory(self, reason: str) -> None:
        """Replace the store with an in-memory one (delivery matters more than persistence)."""
        info = self._require_info()
        if self._own_store and self.store is not None:
            try:
                self.store.close()
            except CacheError:
                pass
        memory = MemoryStore()
        memory.reset(info.name, self._fingerprint_text or "memory", reason=reason)
        self.store, self._own_store = memory, True
        self._cursor = None
        self._inflight.close()
        self._inflight = InFlight(None)
        self._publish_reads()

    def _make_merger(self, pk: Sequence[str], view: Any, versioning: Versioning,
                     stored: Sequence[str]) -> None:
        info = self._require_info()
        columns = self._columns_of(pk)
        self.merger = Merger(
            schema=info.schema,
            table=info.table,
            pk_columns=tuple(pk),
            subscription=info.name,
            versioning=versioning,
            matches=info.filter.matches,
            events=frozenset(info.events) or frozenset({"INSERT", "UPDATE", "DELETE"}),
            columns=columns,
            view=view,
            compare_columns=None if isinstance(view, DictView) else tuple(stored),
            every_write=self.every_change,
        )
        assert self._rest is not None
        self._repairer = Repairer(
            self._rest,
            self.merger,
            self.config,
            filters=info.filter.to_postgrest(),
            select="*" if columns is None else ",".join(columns),
        )
        if self._gap_open:
            self.merger.gap()
        early, self._early = self._early, []
        for change in early:
            self.merger.live(change)  # buffered: a repair is pending

    async def _sink(self, changes: list[Change]) -> None:
        """Emit one page of replayed changes, then write its rows (batched transactions).
        The first fill of an empty cache is the subscription's snapshot: the merger gives those
        changes ``origin="snapshot"`` (design.md section 1), later repairs ``origin="replay"``."""
        await self._deliver(changes)
        assert self.merger is not None
        writes = self.merger.take_writes()
        for start in range(0, len(writes), self.batch_size):
            self._write(writes[start : start + self.batch_size])

    def _can_fill(self) -> bool:
        info = self._require_info()
        # PostgREST can only approximate a like pattern holding a literal "*" (filters.py,
        # to_postgrest): those rows need the local predicate, i.e. the merger.
        exact = not any(c.op in ("like", "ilike") and "*" in str(c.value)
                        for c in info.filter.conditions)
        return exact and isinstance(self.store, CacheFile)

    def _merge_pages(self) -> PageWriter:
        """A read model's full comparison in the store (no change is built: nothing consumes
        them): each page merged and its keys marked, then the unmarked rows swept."""
        info = self._require_info()
        merger, store = self.merger, self.store
        assert merger is not None and isinstance(store, CacheFile)
        state = {"first": True, "before": 0, "written": 0}

        async def page(raw: RawPage, column: str | None) -> Sequence[Any]:
            if state["first"]:
                self._flush_live()  # the view's pending writes first: rows in delivery order
                state["before"] = store.count(info.name)
            done = store.merge_page(info.name, raw.body, first=bool(state["first"]),
                                    expected=raw.count, column=column)
            state["written"] += done.written
            state["first"] = False
            return done.values

        async def done() -> None:
            if state["first"]:  # no page at all: the table is empty upstream
                self._flush_live()
                state["before"] = store.count(info.name)
                store.merge_page(info.name, b"[]", first=True)
            deleted = store.sweep(info.name)
            # Inserted rows are those the table gained beyond the deletions; the rest of what
            # was written are updates.
            inserted = max(0, store.count(info.name) - state["before"] + deleted)
            merger.counts.add_many("INSERT", inserted)
            merger.counts.add_many("UPDATE", max(0, state["written"] - inserted))
            merger.counts.add_many("DELETE", deleted)
            merger.view.forget()

        return PageWriter(page, done, **self._read_plan(True))

    async def _count_rows(self) -> int | None:
        """The subscription's row count upstream (a full read's total for the watcher)."""
        info = self._require_info()
        if self._rest is None:
            return None
        return await self._rest.count(info.schema, info.table, info.filter.to_postgrest())

    def _read_plan(self, quiet: bool) -> dict[str, Any]:
        """How a full read into the store is read (the mirror's snapshot path, shared): a read
        model's (*quiet*: nobody receives its rows, so their order does not matter) over
        :data:`FULL_READ_STREAMS` key ranges at once in large pages; one with handlers in key
        order, in the configured page size (each page is decoded and delivered)."""
        if not quiet:
            return {}
        return {"streams": self.snapshot_streams, "page_size": self.snapshot_page_size,
                "max_bytes": self.snapshot_page_bytes}

    async def _fill_page(self, page: RawPage, column: str | None) -> Sequence[Any]:
        """One page of a first snapshot into an empty table: emitted as INSERTs (when
        anything consumes them), then written undecoded in one transaction."""
        info = self._require_info()
        merger, store = self.merger, self.store
        assert merger is not None and isinstance(store, CacheFile)
        if info.consumed() and "INSERT" in merger.events:
            rows = json.loads(page.body)
            pk, schema, table, name = merger.pk_columns, info.schema, info.table, info.name
            await self._deliver([
                change_from_row(schema, table, "INSERT", row, None, pk, origin="snapshot",
                                subscription=name)
                for row in rows])
        # Else nobody would receive them (a read model): nothing is built or delivered, as
        # for any change emitted while nothing consumes (subscription.py, _emit).
        done = store.write_page(info.name, page.body, page.count, column=column)
        merger.counts.add_many("INSERT", done.rows)
        self._settle()
        return done.values

    async def _redeliver_suspects(self) -> None:
        """The server's state of the keys a previous run delivered without caching (see
        :mod:`supasync.store.inflight`), delivered again and cached like a repair's page."""
        info = self._require_info()
        assert self.merger is not None and self._rest is not None
        merger = self.merger
        rows = await self._rest.by_keys(
            info.schema, info.table, merger.pk_columns, self._suspects,
            filters=info.filter.to_postgrest(),
            select="*" if merger.columns is None else ",".join(merger.columns))
        await self._sink(merger.replay_suspects(rows, self._suspects))
        self._suspects = []
        self._suspects_done = True
        self._settle()

    def _settle(self) -> None:
        """Every delivered row is cached (no delivery under way, no write pending): the
        in-flight keys are forgotten."""
        if self._delivering or (self.merger is not None and self.merger.has_writes):
            return
        if self._suspects_done:
            self._suspects_done = False
            self._inflight.redelivered()
        else:
            self._inflight.settled()

    async def _deliver(self, changes: Sequence[Change]) -> None:
        # The view already holds every change of the batch, so the batch is emitted whole even
        # if the task is cancelled meanwhile (once); the cancellation is re-raised afterwards.
        emit = self._emit
        assert emit is not None
        if not changes:
            return
        try:
            if self._info is None or self._info.consumed():
                # (Nothing consumes a read model's deliveries: no loose end to record.)
                self._inflight.mark(c.pk for c in changes if c.pk)
        except OSError as exc:  # delivery matters more: say so, keep going
            logger.warning("%s: cannot record in-flight keys (%s)", self._info.name
                           if self._info is not None else "?", exc)
        self._delivering += 1
        try:
            cancelled = 0
            i = 0
            while i < len(changes):
                try:
                    await emit(changes[i])
                    i += 1
                except asyncio.CancelledError:
                    cancelled += 1
                    if cancelled > 1:
                        raise
            if cancelled:
                raise asyncio.CancelledError
        finally:
            self._delivering -= 1

    def _schedule_flush(self) -> None:
        """Write live changes' rows in one transaction at the end of the current burst.

        One SQLite transaction per live change made caching the most expensive step of
        delivery (0.48x raw realtime-py's throughput in bench/client_throughput.py). The
        callback runs from the event loop's ready queue, i.e. once the subscription's pump has
        taken everything waiting in its intake, so a quiet stream still writes each change at
        once. The merger holds the writes meanwhile (one per key, latest wins), and every other
        write takes them first, so the cache always sees rows in delivery order. A crash before
        the flush loses no change: the cursor has not moved, and the next start's repair
        replays those rows (delivery is at least once, design.md section 2).
        """
        self._flush_handle = asyncio.get_running_loop().call_soon(self._flush_live)

    def _flush_live(self) -> None:
        self._flush_handle = None
        if self.merger is None or self.store is None:
            return
        writes = self.merger.take_writes()
        if not writes:
            return
        try:
            self._write(writes)
        except Exception:  # a loop callback must not raise; say so, the next repair re-reads
            logger.exception("%s: writing live changes to the cache failed",
                             self._info.name if self._info is not None else "?")
            return
        newest = max((w.committed for w in writes if w.committed), default=None)
        self.watcher.applied(len(writes), _dt.datetime.fromisoformat(newest)
                             if newest is not None else None)

    def _write(
        self,
        writes: Sequence[RowWrite],
        *,
        cursor: Mapping[str, Any] | None = None,
        journal: Sequence[JournalEntry] = (),
    ) -> None:
        info = self._require_info()
        store = self._require_store()
        if self.store_error is not None:
            return  # stopped: nothing more is written to a failed file
        try:
            store.write(info.name, writes, cursor=cursor, journal=journal)
            self._settle()
        except (CacheError, sqlite3.DatabaseError) as exc:
            if self.on_store_error is not None:
                self._store_failed(exc)
                return
            if not isinstance(exc, CacheError):
                raise
            logger.error(
                "%s: cannot write the cache (%s); continuing with an in-memory cache - the "
                "next start reads everything again", info.name, exc,
            )
            # Keep what handlers have been given if the file can still be read (a full disk
            # still reads); otherwise the next repair compares everything again (handlers may
            # see rows again: at least once, never lost).
            assert self.merger is not None
            try:
                held = list(self.merger.snapshot())
            except Exception as again:
                logger.error("%s: cannot read the cache either (%s)", info.name, again)
                held = []
            cursor = cursor if cursor is not None else self._cursor
            self._use_memory(f"cache unusable: {exc}")
            memory = self._require_store()
            view = memory.view(info.name, self.merger.versioning.of)
            memory.write(info.name, [RowWrite(r.pk, r.row, r.version) for r in held])
            memory.write(info.name, writes, cursor=cursor if held else None, journal=journal)
            self._cursor = cursor if held else None
            self.merger.view = view
