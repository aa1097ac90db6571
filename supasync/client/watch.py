"""What a cached subscription's gate is doing, for whoever shows it (the mirror's figures).

:class:`~supasync.client.gate.CachedGate` calls a :class:`GateWatcher` at each step of its
work: a gap, a repair starting, a full read's progress, a repair done, live rows written, a
schema change, a buffer overflow, a problem (the table missing upstream), the store failing.
Every method is a no-op here; a watcher overrides what it shows. The mirror worker's watcher
(:mod:`supasync.mirror.worker`) keeps the table's
:class:`~supasync.mirror.status.TableFigures` and its progress bar; a library user may pass one
to log or count. Methods are called on the event loop and must not block.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as _dt
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..repair.repairer import PageWriter
from ..repair.rest import RawPage

__all__ = ["GateWatcher", "Repaired", "WatchedRead"]


@dataclass(frozen=True)
class Repaired:
    """A repair that completed: how (``mode``, ``why`` it was chosen, the ``fallback`` if
    a weaker method ran), what it changed, for which ``reason`` (the gap's, or ``schema
    change``) and when the gap opened."""

    mode: str
    why: str
    fallback: str | None
    inserted: int
    updated: int
    deleted: int
    reason: str
    opened_at: _dt.datetime
    at: _dt.datetime


class GateWatcher:
    """Callbacks of a gate's work (see the module docstring); no-ops by default."""

    #: Whether a full read should count the rows it will read first (``HEAD`` with an exact
    #: count, a scan on the server) for :meth:`read_started`'s total.
    wants_total = False

    def gap(self, reason: str) -> None:
        """The subscription is not live (*reason*: ``first-join``, ``reconnect``, ...)."""

    def repairing(self, snapshot: bool) -> None:
        """A repair starts (or is retried); *snapshot*: a first read of the table."""

    def read_started(self, total: int | None) -> None:
        """A full read of the table starts (*total* rows, if counted)."""

    def read_advanced(self, rows: int) -> None:
        """*rows* more rows of the full read were written."""

    def read_finished(self) -> None:
        """The full read ended (completed or interrupted)."""

    def repaired(self, outcome: Repaired) -> None:
        """A repair completed (the buffered live changes are applied next)."""

    def live(self) -> None:
        """The gate is live: changes are written as they arrive."""

    def applied(self, rows: int, newest_commit: _dt.datetime | None) -> None:
        """*rows* live changes were written (the newest committed at *newest_commit*)."""

    def schema_changed(self, description: str, action: str) -> None:
        """The table's columns changed upstream (*action*: ``altered`` in place, or
        ``resnapshot``: read again)."""

    def overflowed(self) -> None:
        """Live changes overflowed the buffer during a repair (dropped; compared again)."""

    def problem(self, text: str | None) -> None:
        """Why the table is not in sync beyond a repair in progress (None: cleared)."""


class WatchedRead:
    """One full read into the store, told to a :class:`GateWatcher` (the mirror's progress
    bar): :meth:`wrap` a read's :class:`~supasync.repair.repairer.PageWriter` so that
    ``read_started`` (with the row count as total, when the watcher wants one and *count* is
    given: a scan on the server, run beside the first pages) comes before the first page,
    ``read_advanced`` after each, and ``read_finished`` at its end. :meth:`abort` ends a read
    that failed: started and finished always come in pairs, whatever happens."""

    def __init__(self, watcher: GateWatcher,
                 count: Callable[[], Awaitable[int | None]] | None = None) -> None:
        self.watcher = watcher
        self._count = count if watcher.wants_total else None
        self._open = False  # the read began (its count may be under way)
        self._started = False  # the watcher was told it started
        self._counting: asyncio.Task[int | None] | None = None

    def wrap(self, fill: PageWriter) -> PageWriter:
        """*fill*, telling the watcher how the read advances."""

        async def begin() -> None:
            await fill.begin()
            self._open = True
            if self._count is not None:
                self._counting = asyncio.ensure_future(self._count())

        async def page(raw: RawPage, column: str | None) -> Sequence[Any]:
            await self._start()
            values = await fill.page(raw, column)
            self.watcher.read_advanced(raw.count)
            return values

        async def done() -> None:
            await self._start()  # no page: an empty table
            await fill.done()
            self._open = self._started = False
            self.watcher.read_finished()

        return dataclasses.replace(fill, page=page, done=done, begin=begin)

    def abort(self) -> None:
        """The read failed (or never ran): stop the count; finish what was started."""
        task, self._counting = self._counting, None
        if task is not None:
            task.cancel()
        if self._open:
            if not self._started:
                self.watcher.read_started(None)
            self._open = self._started = False
            self.watcher.read_finished()

    async def _start(self) -> None:
        if not self._started:
            counting, self._counting = self._counting, None
            self._started = True
            self.watcher.read_started(await counting if counting is not None else None)
