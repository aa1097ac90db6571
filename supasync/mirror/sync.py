"""Reading one table over PostgREST straight into the mirror file: snapshot and gap repair.

:class:`TableSync` is the mirror's counterpart of :class:`~supasync.repair.repairer.Repairer`. It
uses the
same modes and the same pure decision (:func:`supasync.repair.repairer.plan`), but its view of the
table
*is* the SQLite table, so memory stays bounded whatever the table's size:

``snapshot`` (no cursor stored yet)
    Keyset pages on the primary key, each written in its own transaction while the next page
    is being fetched. Pages stay undecoded until the store decodes them straight into stored
    tuples (:meth:`MirrorStore.write_page`: no dict per row). Into an empty table rows are
    simply inserted; if the table already holds rows (an interrupted snapshot, or a
    re-snapshot) it runs as ``diff``. An interrupted snapshot is **not resumed mid-table**:
    the next run reads the table again from the start, keeping and comparing the rows already
    written.
``diff``
    The same pages, merged into the table (rows that are identical are not rewritten), keys
    marked in a temporary SQLite table, then every unmarked row deleted (mark and sweep).
``exact``
    The change-log RPC from the stored horizon; changed keys re-read with ``Rest.by_keys``,
    absent keys deleted; retention exceeded, truncate or no horizon fall back to ``diff``.
``cursor``
    Rows whose cursor column is at or after the stored value minus the overlap, then a
    keys-only scan with mark and sweep for deletions.

Each repair starts by reading the table's columns (``Rest.table_info``) and applying a schema
change first (:meth:`TableSync.sync_schema`): added/dropped columns in place (added columns are
back-filled from the rows where they are not NULL), a changed type or key re-snapshots the
table. The cursor is written in the same transaction as the repair's last rows.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..core.errors import ConfigError, RestError
from ..core.merge import version_value
from ..repair.fullread import MISSING_PROBLEM, full_pages, key_ranges, table_gone
from ..repair.repairer import (
    DETECTED_CURSOR_COLUMNS,
    Capabilities,
    Plan,
    RepairConfig,
    _overlap_start,
    capabilities,
    choose,
    plan,
)
from ..repair.rest import RawPage, Rest, TableInfo, content_range_total
from ..store.tables import MirrorStore, PageWrite, SchemaChange, TableShape, compare_shapes

__all__ = ["MISSING_PROBLEM", "MirrorRest", "Progress", "RepairOutcome", "TableSync",
           "shape_from_info", "table_gone"]

logger = logging.getLogger("supasync.mirror")

def _greatest(values: Iterable[Any], best: Any, best_v: int | None) -> tuple[Any, int | None]:
    """The greatest of *values* and *best* as :func:`version_value` orders them, with its
    version (values without one are skipped)."""
    for value in values:
        v = version_value(value)
        if v is not None and (best_v is None or v > best_v):
            best, best_v = value, v
    return best, best_v


class MirrorRest(Rest):
    """:class:`~supasync.repair.rest.Rest` plus a row count (``Prefer: count=exact``)."""

    async def count(
        self, schema: str, table: str, filters: Sequence[tuple[str, str]] = ()
    ) -> int | None:
        """How many rows the subscriber sees (None if the server does not say)."""
        params = [("select", "*"), *filters, ("limit", "1")]
        try:
            resp = await self._send("HEAD", table, schema=schema, params=params,
                                    prefer="count=exact")
        except RestError:  # unreachable or refused: the read itself will say why
            return None
        return content_range_total(resp.headers.get("Content-Range"))


def shape_from_info(schema: str, table: str, info: TableInfo | None) -> TableShape:
    """The mirror shape of a table as PostgREST describes it.

    Raises:
        ConfigError: the table is unknown (or invisible to this role), or has no primary key.
    """
    if info is None:
        raise ConfigError(
            f"table {schema}.{table} not found: PostgREST does not describe it for this role",
            key="--table",
            value=f"{schema}.{table}",
            fix="check the name (schema.table), that it exists, and that the role the mirror "
            "uses (SUPASYNC_TOKEN_SOURCE, e.g. service_role) may select from it",
        )
    if not info.primary_key:
        raise ConfigError(
            f"table {schema}.{table} has no primary key; a mirror needs one to apply updates "
            "and deletes",
            key="--table",
            value=f"{schema}.{table}",
            fix=f"add one upstream: alter table {schema}.{table} add primary key (...)",
        )
    return TableShape(schema, table, tuple(info.columns.items()), info.primary_key)


class Progress:
    """Snapshot progress callbacks (the worker shows a progress bar); no-ops by default."""

    def started(self, table: str, total: int | None) -> None:
        """A full read of *table* begins; *total* rows if known."""

    def advanced(self, table: str, rows: int) -> None:
        """*rows* more rows were written."""

    def finished(self, table: str) -> None:
        """The full read ended (completed or interrupted)."""


@dataclass
class RepairOutcome:
    """What a repair did: the method, why it fell back, row counts and the new cursor."""

    mode: str
    fallback: str | None
    inserted: int
    updated: int
    deleted: int
    cursor: dict[str, Any]
    schema: SchemaChange | None = None
    why: str = ""  # how the mode was chosen (repairer.choose), e.g. "auto -> diff: ..."


class TableSync:
    """Snapshot and repair one table into a :class:`MirrorStore`.

    Args:
        store: the mirror file (shared by every table of the worker).
        rest: PostgREST with the mirror's token.
        shape: the table's current shape (already ensured in the store).
        config: the repair mode, cursor column, overlap and page size.
        filters: the table's filter as PostgREST parameters (only matching rows are mirrored).
        progress: snapshot progress callbacks.
        streams: concurrent key ranges for full reads (integer keys only).
        snapshot_page_size: at most this many rows per request in full reads. Each request
            and each page's transaction has a fixed cost on both sides, so pages are large
            (the local stack joins answers of up to 20000 rows in PostgreSQL); a server that
            caps answers lower (Supabase: 1000 by default) is read in its own page size.
        snapshot_page_bytes: a full read's page body stays about this small (rows per
            request shrink for wide rows), bounding memory: at most two pages per stream wait.
    """

    def __init__(
        self,
        store: MirrorStore,
        rest: MirrorRest,
        shape: TableShape,
        config: RepairConfig,
        *,
        filters: Sequence[tuple[str, str]] = (),
        progress: Progress | None = None,
        streams: int = 3,
        snapshot_page_size: int = 20_000,
        snapshot_page_bytes: int = 8 << 20,
    ) -> None:
        self.store = store
        self.streams = streams
        self.snapshot_page_size = snapshot_page_size
        self.snapshot_page_bytes = snapshot_page_bytes
        self.rest = rest
        self.shape = shape
        self.config = config
        self.filters = list(filters)
        self.progress = progress or Progress()
        self.on_schema: Callable[[SchemaChange], None] = lambda change: None
        self.mode_why: str | None = None  # the last repair's choose() reason (logged on change)

    @property
    def name(self) -> str:
        return f"{self.shape.schema}.{self.shape.table}"

    # ------------------------------------------------------------------ schema

    async def sync_schema(self, seen: TableShape | None = None) -> SchemaChange:
        """Bring the local table to the upstream shape (from *seen*, a live change's columns,
        or else ``Rest.table_info``). Added columns are back-filled; a type change empties the
        table for a re-snapshot (the next :meth:`repair` reads it all again)."""
        if seen is None:
            info = await self.rest.table_info(self.shape.schema, self.shape.table)
            seen = shape_from_info(self.shape.schema, self.shape.table, info)
        change = compare_shapes(self.shape, seen)
        if change.action == "unchanged":
            return change
        action = self.store.ensure_table(seen)
        self.shape = seen
        if action == "resnapshot":
            logger.warning("%s: %s: re-snapshotting this table", self.name, change.describe())
        else:
            logger.warning("%s: schema change applied in place: %s", self.name,
                           change.describe())
            if change.added:
                await self._backfill(change.added)
        self.on_schema(change)
        return change

    async def _backfill(self, columns: Sequence[str]) -> None:
        pk = list(self.shape.primary_key)
        for col in columns:
            async for page in self._raw_pages(pk, [*self.filters, (col, "not.is.null")],
                                              ",".join(dict.fromkeys([*pk, col])),
                                              self.config.page_size):
                with self.store.transaction():
                    self.store.update_columns(self.shape, [col], _rows(page))

    # ------------------------------------------------------------------ repair

    async def probe(self) -> Capabilities:
        """What the server offers: the change log (exact) and a cursor column."""
        log: dict[str, Any] | None = None
        if self.config.mode in ("auto", "exact"):
            log = await self._log(None)
        column = None
        names = self.shape.column_names
        if self.config.cursor_column:
            column = self.config.cursor_column if self.config.cursor_column in names else None
        elif self.config.mode in ("auto", "cursor"):
            column = next((c for c in DETECTED_CURSOR_COLUMNS if c in names), None)
        return await capabilities(self.rest, self.config, self.shape.schema, self.shape.table,
                                  log, column, names=names)

    async def describe_mode(self) -> str:
        """Which repair mode this table gets and why (e.g. ``auto -> diff: no change log
        installed and updated_at is not bumped by a supasync trigger``)."""
        return choose(self.config, await self.probe())[1]

    async def repair(self, *, force_diff: bool = False) -> RepairOutcome:
        """Bring the table up to date with the server (schema first, then rows).

        ``force_diff`` compares the whole table whatever the cursor says (after a live buffer
        overflowed). Raises RestError/ConfigError on server failures; every page written so
        far stays committed, so a retry (or the next run) continues from a consistent file.
        """
        schema = await self.sync_schema()
        cursor = self.store.get_cursor(self.shape.schema, self.shape.table)
        if not self.store.snapshot_complete(self.shape.schema, self.shape.table):
            cursor = None
        caps = await self.probe()
        chosen = plan(self.config, cursor, caps)
        if chosen.why != self.mode_why:
            logger.info("%s: repair mode %s", self.name, chosen.why)
            self.mode_why = chosen.why
        if force_diff and chosen.mode != "diff":
            chosen = Plan("diff", "diff", "the live buffer overflowed during a repair",
                          chosen.why)
        if chosen.fallback:
            logger.warning("%s: repair falls back to diff: %s", self.name, chosen.fallback)
        before = self.store.count(self.shape)
        written = deleted = 0
        mode, fallback = chosen.report, chosen.fallback
        if chosen.mode == "exact":
            assert cursor is not None
            got = await self._exact(str(cursor["horizon"]))
            if got is None:
                fallback = "the table was truncated; comparing the whole table"
                logger.warning("%s: repair falls back to diff: %s", self.name, fallback)
                mode = "diff"
                written, deleted, new_cursor = await self._full(caps, before)
            else:
                written, deleted, new_cursor = got
        elif chosen.mode == "cursor":
            assert caps.cursor_column is not None and cursor is not None
            written, deleted, new_cursor = await self._cursor(caps.cursor_column,
                                                              cursor.get("value"))
        else:
            written, deleted, new_cursor = await self._full(caps, before)
        after = self.store.count(self.shape)
        inserted = max(0, after - before + deleted)
        return RepairOutcome(mode, fallback, inserted, max(0, written - inserted), deleted,
                             new_cursor, schema if schema.action != "unchanged" else None,
                             chosen.why)

    def _finish(self, cursor: Mapping[str, Any]) -> None:
        """Commit the cursor and mark the snapshot complete (inside a transaction)."""
        self.store.set_cursor(self.shape.schema, self.shape.table, cursor)
        self.store.mark_snapshot_complete(self.shape.schema, self.shape.table)

    def _raw_pages(
        self, order: Sequence[str], filters: Sequence[tuple[str, str]], select: str,
        page_size: int, streams: Sequence[Sequence[tuple[str, str]]] = ((),),
    ) -> AsyncIterator[RawPage]:
        """Keyset pages left undecoded (for :meth:`MirrorStore.write_page`), each body about
        :attr:`snapshot_page_bytes` at most, fetched ahead (the shared
        :func:`~supasync.repair.fullread.full_pages`, also the library gate's)."""
        return full_pages(self.rest, self.shape.schema, self.shape.table, order=order,
                          filters=filters, select=select, page_size=page_size,
                          max_bytes=self.snapshot_page_bytes, ranges=streams)

    def _write(self, page: RawPage, *, merge: bool, mark: bool, column: str | None
               ) -> PageWrite:
        """One page in its own transaction (:meth:`MirrorStore.write_page`).

        Raises:
            RestError: the answer is not a list of rows, or holds another number of rows
                than its ``Content-Range`` says (the page is rolled back).
        """
        with self.store.transaction():
            try:
                done = self.store.write_page(self.shape, page.body, merge=merge, mark=mark,
                                             column=column)
            except ValueError as exc:
                raise RestError(f"PostgREST answered a read of {self.name} with something "
                                f"that is not a list of rows: {exc}") from exc
            if done.rows != page.count:
                raise RestError(f"PostgREST's Content-Range says {page.count} rows of "
                                f"{self.name} but the answer holds {done.rows}")
        return done

    async def _key_ranges(self) -> list[list[tuple[str, str]]]:
        """``self.streams`` key ranges of the table (:func:`~supasync.repair.fullread.
        key_ranges`)."""
        return await key_ranges(self.rest, self.shape.schema, self.shape.table,
                                self.shape.primary_key, dict(self.shape.columns), self.filters,
                                self.streams)

    async def _full(self, caps: Capabilities, before: int) -> tuple[int, int, dict[str, Any]]:
        """A full read (snapshot into an empty table, else mark-and-sweep diff)."""
        horizon = caps.horizon
        if horizon is None and caps.logged:
            log = await self._log(None)
            horizon = str(log["horizon"]) if log and log.get("logged") else None
        # The horizon is taken before the read: every transaction below it is visible to it.
        wanted, _why = choose(self.config, caps)
        if caps.logged and wanted == "exact" and horizon is not None:
            cursor: dict[str, Any] = {"mode": "exact", "horizon": horizon}
        elif caps.cursor_column and wanted == "cursor":
            cursor = {"mode": "cursor", "column": caps.cursor_column, "value": None}
        else:
            cursor = {"mode": "diff"}
        sweep = before > 0
        pk = list(self.shape.primary_key)
        column = cursor.get("column")
        best: Any = None
        best_v: int | None = None
        # The row count (for the progress total: a scan of the table on the server) runs
        # while the first pages are fetched, not before them; progress starts once it is in.
        counting: asyncio.Task[int | None] | None = asyncio.create_task(
            self.rest.count(self.shape.schema, self.shape.table, self.filters),
            name=f"supasync-mirror-count-{self.name}")
        written = 0
        snapshotting = False
        try:
            if sweep:
                self.store.begin_sweep(self.shape)
            else:
                self.store.begin_snapshot(self.shape)
                snapshotting = True
            ranges = await self._key_ranges()
            async for page in self._raw_pages(pk, self.filters, "*", self.snapshot_page_size,
                                              ranges):
                if counting is not None:
                    self.progress.started(self.name, await counting)
                    counting = None
                done = self._write(page, merge=sweep, mark=sweep, column=column)
                written += done.written
                # A cursor-mode snapshot keeps the greatest cursor value, compared as
                # version_value() orders them, over the values as sent (before conversion).
                best, best_v = _greatest(done.values, best, best_v)
                self.progress.advanced(self.name, done.rows)
            if counting is not None:  # no page: an empty table
                self.progress.started(self.name, await counting)
                counting = None
            if column:
                cursor["value"] = best
            with self.store.transaction():
                deleted = self.store.sweep(self.shape) if sweep else 0
                self._finish(cursor)
        finally:
            if snapshotting:
                self.store.end_snapshot(self.shape)
            if counting is not None:  # the read failed before its first page
                counting.cancel()
                if counting.done() and not counting.cancelled():
                    counting.exception()  # retrieved: the read's own error is what matters
                self.progress.started(self.name, None)
            self.progress.finished(self.name)
        return written, deleted, cursor

    async def _log(self, since: str | None, after: tuple[str, int] | None = None,
                   limit: int = 0) -> dict[str, Any] | None:
        args: dict[str, Any] = {"p_table": self.name, "p_since": since, "p_limit": limit}
        if after is not None:
            args["p_after_xid"], args["p_after_id"] = after
        try:
            answer = await self.rest.rpc(self.config.rpc, args)
        except RestError as exc:
            if exc.status == 404 or exc.code == "PGRST202":
                return None  # exact mode is not installed
            raise
        return answer if isinstance(answer, dict) else None

    async def _exact(self, horizon: str) -> tuple[int, int, dict[str, Any]] | None:
        keys: dict[tuple[Any, ...], None] = {}
        new_horizon: str | None = None
        after: tuple[str, int] | None = None
        while True:
            answer = await self._log(horizon, after, self.config.page_size)
            if answer is None or not answer.get("logged"):
                raise RestError(f"the exact-mode change log for {self.name} disappeared during "
                                "repair; the next repair falls back to diff")
            if new_horizon is None:
                new_horizon = str(answer["horizon"])
            entries = answer.get("entries") or []
            for _id, _xid, op, pk in entries:
                if op == "T":
                    return None
                keys[tuple(pk)] = None
            if len(entries) < int(answer.get("limit", self.config.page_size)):
                break
            last = entries[-1]
            after = (str(last[1]), int(last[0]))
        pk_cols = list(self.shape.primary_key)
        ordered = list(keys)
        written = deleted = 0
        for start in range(0, len(ordered), 500):
            part = ordered[start : start + 500]
            rows = await self.rest.by_keys(self.shape.schema, self.shape.table, pk_cols, part,
                                           filters=self.filters)
            found = {self.shape.key_values([r[c] for c in pk_cols]) for r in rows}
            gone = [k for k in part if self.shape.key_values(k) not in found]
            with self.store.transaction():
                written += self.store.merge_rows(self.shape, rows)
                deleted += self.store.delete_keys(self.shape, gone)
        assert new_horizon is not None
        cursor = {"mode": "exact", "horizon": new_horizon}
        with self.store.transaction():
            self._finish(cursor)
        return written, deleted, cursor

    async def _cursor(self, column: str, last: Any) -> tuple[int, int, dict[str, Any]]:
        filters = list(self.filters)
        start = _overlap_start(last, self.config.overlap)
        if start is not None:
            filters.append((column, f"gte.{start}"))
        order = [column, *self.shape.primary_key]
        best, best_v = last, version_value(last) if last is not None else None
        written = 0
        async for page in self._raw_pages(order, filters, "*", self.config.page_size):
            done = self._write(page, merge=True, mark=False, column=column)
            written += done.written
            best, best_v = _greatest(done.values, best, best_v)
        pk = list(self.shape.primary_key)
        self.store.begin_sweep(self.shape)
        async for page in self._raw_pages(pk, self.filters, ",".join(pk),
                                          self.snapshot_page_size, await self._key_ranges()):
            with self.store.transaction():
                self.store.mark(self.shape, [[r[c] for c in pk] for r in _rows(page)])
        cursor = {"mode": "cursor", "column": column, "value": best}
        with self.store.transaction():
            deleted = self.store.sweep(self.shape)
            self._finish(cursor)
        return written, deleted, cursor


def _rows(page: RawPage) -> list[dict[str, Any]]:
    """A page's rows decoded (small pages: key columns, one column)."""
    try:
        rows = json.loads(page.body)
    except ValueError as exc:
        raise RestError(f"PostgREST answered with something that is not JSON: {exc}") from exc
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise RestError("PostgREST answered a read with something that is not a list of rows")
    return rows
