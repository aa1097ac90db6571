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

import datetime as _dt
from dataclasses import dataclass

__all__ = ["GateWatcher", "Repaired"]


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
