"""The mirror's gate: a subscription whose cache is the mirror file.

:class:`MirrorGate` implements the :class:`~supasync.client.subscription.Gate` protocol for one
table.
Unlike :class:`~supasync.client.gate.CachedGate` it keeps no rows in memory: the SQLite table is the
view, and repairs stream into it (:class:`~supasync.mirror.sync.TableSync`).

Theory of operation
-------------------
* ``gap(reason)``: the subscription is not live. Live changes not yet written are written now
  (they precede the gap), and from here on live changes are **buffered**. The buffer is cleared:
  whatever it held is older than the hole the gap opens, and the next repair reads after it.
* ``subscribed()``: the server is sending changes again, so every commit from now on is either
  seen by the repair's read or arrives live, or both. The repair runs (retried with capped
  delays until it succeeds or the task is cancelled by the next gap), then the buffer is
  applied **in arrival order** (commit order) in batched transactions. Each change carries a
  whole row (or a delete), so applying every change since the subscription went live on top of
  any read made after that moment converges to the server's rows. Then the gate is live.
* The buffer is bounded (``buffer_limit``). On overflow it is dropped and counted, and one more
  full comparison (diff) runs after the current repair: that read starts after the overflow, so
  it sees every dropped change; the changes buffered after the overflow are applied on top.
* ``live(change)`` while live: appended to a batch written in one transaction (with the time of
  the newest commit) when ``batch_size`` changes are waiting or ``flush_interval`` has passed.
  A change with a column list that differs from the table's shape (a column added, dropped or
  retyped upstream) starts a schema step: buffer, adapt the table (in place, or re-snapshot on
  a type change), then apply the buffer. A partial change (``Error 413``) is written with the
  columns it carries and its row is re-read by key.
* ``close()``: the pending batch is written and committed (SIGINT/SIGTERM end cleanly).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from ..client.subscription import Emit, SubscriptionInfo
from ..core.changes import Change
from ..core.errors import SupasyncError
from ..core.filters import ALL, Filter
from ..core.moves import apply_move, classify_update
from ..core.status import GapRepaired, utcnow
from ..store.drift import schema_signature, schema_suspect
from .status import TableFigures
from .sync import MISSING_PROBLEM, RepairOutcome, TableSync, table_gone

__all__ = ["MirrorGate", "schema_signature", "schema_suspect"]

logger = logging.getLogger("supasync.mirror")

_RETRY_FIRST_S = 0.5
_RETRY_MAX_S = 15.0


class MirrorGate:
    """Gate of one mirrored table (see the module docstring).

    Args:
        sync: reads the table over PostgREST into the mirror file.
        figures: the table's counters (shown by the worker).
        batch_size: live changes per transaction at most.
        flush_interval: seconds a live change may wait before its batch is written.
        buffer_limit: live changes buffered during a repair before the buffer is dropped.
        on_repaired: called after every completed repair (the worker's ``--once`` and logs).
        on_store_error: called when the mirror file cannot be written (SQLite refuses: a
            damaged file, a full disk); the gate then stops writing, and the worker stops.
        filter: the table's filter (``--filter``): live UPDATEs are judged against it, so a row
            that leaves the filter is deleted from the mirror at once (not at the next gap).
    """

    #: Every DELETE reaches :meth:`live`; deleting a key the mirror does not hold is harmless.
    filters_deletes = True
    handles_deletes = True
    #: Every UPDATE of a filtered table reaches :meth:`live` (the subscription's unfiltered
    #: UPDATE binding): one whose new row leaves the filter is applied as a DELETE (a move-out;
    #: harmless if the row was not mirrored), one that matches as an upsert (a move-in inserts).
    filters_updates = True

    def __init__(
        self,
        sync: TableSync,
        figures: TableFigures,
        *,
        batch_size: int = 500,
        flush_interval: float = 0.05,
        buffer_limit: int = 100_000,
        on_repaired: Callable[[RepairOutcome], None] | None = None,
        on_store_error: Callable[[sqlite3.DatabaseError], None] | None = None,
        filter: Filter = ALL,
    ) -> None:
        self.sync = sync
        self.filter = filter
        self.figures = figures
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.buffer_limit = buffer_limit
        self.on_repaired = on_repaired or (lambda outcome: None)
        self.on_store_error = on_store_error or (lambda exc: None)
        self.store_error: sqlite3.DatabaseError | None = None
        self._info: SubscriptionInfo | None = None
        self._repairing = True  # until the first repair (the snapshot) is done
        self._buffer: list[Change] = []
        self._overflowed = False
        self._pending: list[Change] = []
        self._reread: dict[tuple[Any, ...], None] = {}
        self._schema_ok: set[tuple[Any, ...]] = set()
        self._schema_sig: tuple[Any, ...] | None = None
        self._schema_task: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._opened_at = utcnow()
        self._reason = "first-join"
        self._ever_live = False
        self._epoch = 0  # bumped by every gap: work started before a gap must not go live
        self.last_outcome: RepairOutcome | None = None
        self.repaired = asyncio.Event()

    # ------------------------------------------------------------------ Gate protocol

    async def open(self, info: SubscriptionInfo, emit: Emit) -> None:
        """Remember the subscription; start the batch flusher. *emit* is not used: the
        mirror file is the only consumer."""
        del emit
        self._info = info
        self._flusher = asyncio.create_task(self._flush_loop(),
                                            name=f"supasync-mirror-flush-{info.name}")

    async def gap(self, reason: str) -> None:
        """Write what is pending, then buffer live changes until the next repair ends."""
        await self._cancel_schema_task()
        self._epoch += 1
        self._flush()
        if not self._repairing or reason != self._reason:
            self._opened_at = utcnow()
        if self._ever_live:
            self.figures.reconnects += 1  # every loss after the first live moment
        self._repairing = True
        self._buffer.clear()
        self._overflowed = False
        self._reason = reason
        self.figures.state = "repairing" if self._ever_live else self.figures.state
        self.figures.last_gap_reason = reason
        self.figures.last_gap_at = self._opened_at
        self.figures.last_gap_mode = None

    async def subscribed(self) -> None:
        """Repair (retrying until it succeeds or is cancelled), apply the buffer, go live."""
        self._repairing = True
        attempt = 0
        force_diff = False
        while True:
            try:
                outcome = await self._repair_once(force_diff)
            except asyncio.CancelledError:
                raise
            except sqlite3.DatabaseError as exc:
                self._store_failed(exc)  # retrying cannot mend the file
                return
            except Exception as exc:
                delay = min(_RETRY_MAX_S, _RETRY_FIRST_S * 2**attempt)
                attempt += 1
                if table_gone(exc):  # dropped or renamed upstream: say so, keep checking
                    self.figures.state = "missing"
                    self.figures.problem = MISSING_PROBLEM
                logger.warning(
                    "%s: repair failed (attempt %d): %s; retrying in %.1fs", self.sync.name,
                    attempt, exc, delay,
                    exc_info=not isinstance(exc, SupasyncError | httpx.HTTPError),
                )
                await asyncio.sleep(delay)  # backoff between retries, not synchronisation
                continue
            if self._overflowed:
                # Changes were dropped: compare everything again, reading after the overflow.
                self._overflowed = False
                force_diff = True
                continue
            break
        self._go_live(outcome)

    async def live(self, change: Change) -> None:
        """Buffer (while repairing) or batch a live change."""
        if change.op == "UPDATE" and self.filter.conditions:
            # Judged as for a subscriber holding the row: a move-out deletes (a no-op for a key
            # not mirrored), anything matching (a move-in too) is upserted.
            move = classify_update(self.filter, change.new, change.old, held=True)
            judged = apply_move(change, move)
            if judged is None:
                return
            change = judged
        if self._repairing:
            self._buffer_change(change)
            return
        if schema_suspect(self.sync.shape, change):
            sig = schema_signature(change)
            if sig not in self._schema_ok:
                self._flush()
                self._repairing = True
                self._buffer_change(change)
                self._schema_sig = sig
                self._schema_task = asyncio.create_task(
                    self._schema_step(), name=f"supasync-mirror-schema-{self.sync.name}")
                return
        self._pending.append(change)
        if len(self._pending) >= self.batch_size:
            self._flush()
        else:
            self._wake.set()

    async def close(self) -> None:
        """Write the pending batch (commit) and stop the flusher."""
        await self._cancel_schema_task()
        if self._flusher is not None:
            self._flusher.cancel()
            try:
                await self._flusher
            except asyncio.CancelledError:
                pass
        if not self._repairing:
            self._flush()

    # ------------------------------------------------------------------ internals

    def _buffer_change(self, change: Change) -> None:
        if len(self._buffer) >= self.buffer_limit:
            logger.warning(
                "%s: more than %d live changes arrived during a repair; dropping them and "
                "comparing the whole table again afterwards", self.sync.name, self.buffer_limit,
            )
            self._buffer.clear()
            self._overflowed = True
            self.figures.buffer_overflows += 1
        self._buffer.append(change)

    async def _repair_once(self, force_diff: bool) -> RepairOutcome:
        if self._ever_live:
            self.figures.state = "repairing"
        elif not self.sync.store.snapshot_complete(self.sync.shape.schema, self.sync.shape.table):
            self.figures.state = "snapshot"
        else:
            self.figures.state = "repairing"
        outcome = await self.sync.repair(force_diff=force_diff)
        if outcome.schema is not None:
            self._note_schema(outcome.schema.describe())
        return outcome

    def _note_schema(self, text: str) -> None:
        self.figures.schema_changes += 1
        self.figures.last_schema_change = text

    def _go_live(self, outcome: RepairOutcome | None) -> None:
        """Apply the buffer in arrival order and switch to live."""
        buffered, self._buffer = self._buffer, []
        for start in range(0, len(buffered), self.batch_size):
            self._write(buffered[start : start + self.batch_size])
        self._repairing = False
        self._ever_live = True
        self.figures.state = "live"
        self.figures.problem = None
        self.figures.rows = self.sync.store.count(self.sync.shape)
        if outcome is None:
            return
        now = utcnow()
        self.last_outcome = outcome
        self.figures.repairs += 1
        self.figures.repaired_rows += outcome.inserted + outcome.updated + outcome.deleted
        self.figures.last_gap_mode = outcome.mode
        self.figures.last_gap_s = (now - self._opened_at).total_seconds()
        info = self._info
        if info is not None:
            info.report(GapRepaired(
                subscription=info.name, at=now, opened_at=self._opened_at,
                duration_s=(now - self._opened_at).total_seconds(), mode=outcome.mode,
                inserted=outcome.inserted, updated=outcome.updated, deleted=outcome.deleted,
            ))
        logger.info(
            "%s: %s done (%s): +%d ~%d -%d rows%s", self.sync.name, outcome.mode, self._reason,
            outcome.inserted, outcome.updated, outcome.deleted,
            f" (fallback: {outcome.fallback})" if outcome.fallback else "",
        )
        self.on_repaired(outcome)
        self.repaired.set()

    async def _schema_step(self) -> None:
        """A live change hinted at a schema change: ask PostgREST for the table's shape and
        adapt the table (in place, or re-snapshot on a type change), then apply the buffer."""
        sig, self._schema_sig = self._schema_sig, None
        epoch = self._epoch
        attempt = 0
        while True:
            try:
                change = await self.sync.sync_schema()
                outcome: RepairOutcome | None = None
                if change.action == "unchanged":
                    if sig is not None:
                        self._schema_ok.add(sig)  # a false alarm: do not ask again
                else:
                    self._schema_ok.clear()
                    self._note_schema(change.describe())
                if not self.sync.store.snapshot_complete(self.sync.shape.schema,
                                                         self.sync.shape.table):
                    outcome = await self._repair_once(False)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = min(_RETRY_MAX_S, _RETRY_FIRST_S * 2**attempt)
                attempt += 1
                logger.warning("%s: schema change failed (attempt %d): %s; retrying in %.1fs",
                               self.sync.name, attempt, exc, delay)
                await asyncio.sleep(delay)  # backoff between retries, not synchronisation
        if epoch == self._epoch:
            self._go_live(outcome)

    async def _cancel_schema_task(self) -> None:
        task, self._schema_task = self._schema_task, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            # Let a batch gather for up to flush_interval (a batching window, not a sync wait).
            await asyncio.sleep(self.flush_interval)
            if not self._repairing:
                self._flush()
                if self._reread:
                    await self._reread_partial()

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            self._write(pending)

    def _store_failed(self, exc: sqlite3.DatabaseError) -> None:
        if self.store_error is None:
            self.store_error = exc
            logger.error("%s: the mirror file cannot be written (%s); stopping", self.sync.name,
                         exc)
            self.on_store_error(exc)

    def _write(self, changes: Sequence[Change]) -> None:
        if self.store_error is not None:
            return  # the worker is stopping: nothing more is written to a failed file
        store, shape = self.sync.store, self.sync.shape
        try:
            with store.transaction():
                store.apply_in_transaction(shape, changes)
        except sqlite3.DatabaseError as exc:
            self._store_failed(exc)
            return
        newest = None
        for ch in changes:
            if ch.partial and ch.op != "DELETE" and ch.pk:
                self._reread[ch.pk] = None
            if ch.commit_timestamp is not None and (newest is None or ch.commit_timestamp >
                                                    newest):
                newest = ch.commit_timestamp
        now = utcnow()
        self.figures.live_applied += len(changes)
        if newest is not None:
            self.figures.last_commit = newest
            self.figures.last_applied = now
        if self._reread:
            self._wake.set()

    async def _reread_partial(self) -> None:
        """Re-read rows whose live change was truncated (Error 413), buffering live changes
        meanwhile so a newer live change is never overwritten by the older read."""
        keys, self._reread = list(self._reread), {}
        shape = self.sync.shape
        epoch = self._epoch
        self._repairing = True
        try:
            rows = await self.sync.rest.by_keys(shape.schema, shape.table, shape.primary_key,
                                                keys, filters=self.sync.filters)
        except SupasyncError as exc:
            logger.warning("%s: re-reading %d truncated rows failed (%s); the next repair "
                           "fixes them", self.sync.name, len(keys), exc)
            rows = []
        if epoch != self._epoch:
            return  # a gap opened meanwhile: its repair covers these rows
        with self.sync.store.transaction():
            self.sync.store.merge_rows(shape, rows)
        self._go_live(None)
