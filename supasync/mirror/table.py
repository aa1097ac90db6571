"""One mirrored table: its gate (the library's, on the mirror file), its figures, its shape.

Since issue #13 a mirror has no gate of its own: each table runs on
:class:`~supasync.client.gate.CachedGate` - the gate of ``Realtime(cache=...)`` - used with no
handler, as a read model on the mirror file (:class:`~supasync.store.cache.CacheFile` over the
worker's :class:`~supasync.store.tables.MirrorStore`). What the mirror adds:

* :class:`TableWatcher` keeps the table's :class:`~supasync.mirror.status.TableFigures` (state,
  repairs, live writes, reconnects, schema changes, overflows, a missing table) and its
  snapshot progress from the gate's :class:`~supasync.client.watch.GateWatcher` calls.
* :class:`MirrorTable` builds the table's gate (every live change journaled, a store failure
  stops the worker) and runs a repair without a feed (``--once``) with the same subscription
  identity as the live one, so both find the same rows and cursor.
* :func:`shape_from_info`: the table's shape as PostgREST describes it, refusing an unknown
  table or one without a primary key before anything is written.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..client.gate import CachedGate
from ..client.subscription import SubscriptionInfo
from ..client.watch import GateWatcher, Repaired
from ..core.errors import ConfigError
from ..core.filters import as_filter
from ..core.status import utcnow
from ..repair.repairer import RepairConfig, RepairResult
from ..repair.rest import TableInfo
from ..store.cache import CacheFile
from ..store.tables import TableShape
from .status import TableFigures

__all__ = ["MirrorTable", "Progress", "TableWatcher", "shape_from_info"]

logger = logging.getLogger("supasync.mirror")

#: A mirror's snapshot pages grow to about this many bytes (a library read model's to half
#: that): fewer, larger requests; at most two pages per key range wait in memory (the worker's
#: peak RSS stays near 100 MB, bench/README.md).
SNAPSHOT_PAGE_BYTES = 8 << 20


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


class TableWatcher(GateWatcher):
    """Keeps a table's :class:`TableFigures` (and its snapshot progress) from its gate's work.

    Args:
        fig: the table's figures (shown by the worker's status line, ``--json``, metrics).
        progress: snapshot progress callbacks (the worker's progress bar).
        say: a line for people (schema changes).
    """

    wants_total = True

    def __init__(self, fig: TableFigures, progress: Progress | None = None,
                 say: Callable[[str], None] | None = None) -> None:
        self.fig = fig
        self.progress = progress or Progress()
        self.say = say or (lambda text: None)
        self.count: Callable[[], int] = lambda: fig.rows
        self.ever_live = False
        #: The last completed repair.
        self.last: Repaired | None = None
        self._resnapshot = False

    def gap(self, reason: str) -> None:
        fig = self.fig
        if reason in ("schema change", "once"):
            return  # not a loss of the feed
        if self.ever_live:
            fig.reconnects += 1  # every loss after the first live moment
            fig.state = "repairing"
        fig.last_gap_reason = reason
        fig.last_gap_at = utcnow()
        fig.last_gap_mode = None

    def repairing(self, snapshot: bool) -> None:
        self.fig.state = "snapshot" if snapshot and not self.ever_live else "repairing"

    def read_started(self, total: int | None) -> None:
        self.progress.started(self.fig.name, total)

    def read_advanced(self, rows: int) -> None:
        self.progress.advanced(self.fig.name, rows)

    def read_finished(self) -> None:
        self.progress.finished(self.fig.name)

    def repaired(self, outcome: Repaired) -> None:
        fig = self.fig
        self.last = outcome
        resnapshot, self._resnapshot = self._resnapshot, False
        if outcome.reason == "schema change" and not resnapshot:
            return  # the table adapted in place: not the repair of a gap
        fig.repairs += 1
        fig.repaired_rows += outcome.inserted + outcome.updated + outcome.deleted
        fig.last_gap_mode = outcome.mode
        fig.last_gap_s = (outcome.at - outcome.opened_at).total_seconds()
        logger.info("%s: %s done (%s): +%d ~%d -%d rows%s", fig.name, outcome.mode,
                    outcome.reason, outcome.inserted, outcome.updated, outcome.deleted,
                    f" (fallback: {outcome.fallback})" if outcome.fallback else "")

    def live(self) -> None:
        self.ever_live = True
        fig = self.fig
        fig.state, fig.problem = "live", None
        fig.rows = self.count()

    def applied(self, rows: int, newest_commit: _dt.datetime | None) -> None:
        fig = self.fig
        fig.live_applied += rows
        if newest_commit is not None:
            fig.last_commit = newest_commit
            fig.last_applied = utcnow()

    def schema_changed(self, description: str, action: str) -> None:
        fig = self.fig
        fig.schema_changes += 1
        fig.last_schema_change = description
        self._resnapshot = action == "resnapshot"
        when = "" if self.ever_live else " while stopped"
        self.say(f"{fig.name}: schema changed{when}: {description}"
                 + ("; re-snapshotting this table" if self._resnapshot else ""))

    def overflowed(self) -> None:
        self.fig.buffer_overflows += 1

    def problem(self, text: str | None) -> None:
        if text is not None:
            self.fig.state, self.fig.problem = "missing", text


@dataclass
class MirrorTable:
    """One mirrored table: where it is (*cache*: the mirror file's cache side), its shape as
    known at start, its repair configuration and the watcher that keeps its figures."""

    schema: str
    table: str
    filter: str | None
    cache: CacheFile
    shape: TableShape
    config: RepairConfig
    watcher: TableWatcher

    def __post_init__(self) -> None:
        self.watcher.count = self.count

    @property
    def name(self) -> str:
        """The table's subscription name, ``schema.table`` (its local table: the mirror's
        name for it, ``todos`` or ``sales_orders``)."""
        return f"{self.schema}.{self.table}"

    def count(self) -> int:
        """The table's rows in the file (0 before its gate made it)."""
        shape = self.cache.shape(self.name)
        return 0 if shape is None else self.cache.tables.count(shape)

    def gate(self, batch_size: int = 500, buffer_limit: int = 100_000,
             on_store_error: Callable[[Exception], None] | None = None,
             **options: Any) -> CachedGate:
        """The table's gate: the library's :class:`~supasync.client.gate.CachedGate` on the
        mirror file with no handler (a read model), every live change journaled (the relay
        publishes them one by one); *options* go to the gate (e.g. ``snapshot_page_size``)."""
        options.setdefault("snapshot_page_bytes", SNAPSHOT_PAGE_BYTES)
        # The file's table is named after the source, not after the subscription: a worker
        # on a shared client subscribes under a prefixed name (web/users.py).
        options.setdefault("table_name", self.shape.name)
        return CachedGate(self.cache, repair=self.config, batch_size=batch_size,
                          buffer_limit=buffer_limit, watcher=self.watcher,
                          on_store_error=on_store_error, every_change=True, **options)

    def info(self, rest_url: str, api_key: str, token: Callable[[], Awaitable[str]],
             primary_key: Sequence[str] | None = None) -> SubscriptionInfo:
        """The subscription's description for a repair without one (``--once``): the same as
        the live subscription's (:meth:`Realtime.subscribe` with this table, filter and key),
        so both find the same rows and cursor in the file."""
        return SubscriptionInfo(
            name=self.name, schema=self.schema, table=self.table,
            events=frozenset({"INSERT", "UPDATE", "DELETE"}), filter=as_filter(self.filter),
            columns=None, primary_key=tuple(primary_key or self.shape.primary_key),
            rest_url=rest_url, api_key=api_key, token=token, report=lambda event: None,
            consumed=lambda: False)

    async def repair_once(self, gate: CachedGate, rest_url: str, api_key: str,
                          token: Callable[[], Awaitable[str]]) -> RepairResult | None:
        """Open *gate* (from :meth:`gate`), repair once (a snapshot the first time), close it.
        Returns the result (None if the store failed); a server failure is raised."""

        async def nothing(change: Any) -> None:
            del change  # a read model: nothing is delivered

        await gate.open(self.info(rest_url, api_key, token), nothing)
        try:
            return await gate.repair()
        finally:
            await gate.close()
