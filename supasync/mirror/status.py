"""The mirror worker's figures and how they are shown: status line, JSON records, /metrics.

Sans-I/O: :class:`TableFigures` holds counters the worker updates; the functions here turn them
into text and never read a clock themselves (``now`` is always passed in), so they are tested
with plain values. The same figures feed three outputs:

* :func:`status_line` - one human line (``live``/``repairing``/``snapshot``/``missing``/
  ``failed``, lag (:func:`lag_seconds`), rows, reconnects, last gap, the problem if any);
* :func:`status_record` - the same as a JSON-ready dict (``--json`` structured logs);
* :func:`metrics_text` - Prometheus text exposition format 0.0.4 (``--metrics-port``).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "TableFigures",
    "eta_seconds",
    "format_duration",
    "lag_seconds",
    "metrics_text",
    "status_line",
    "status_record",
]


@dataclass
class TableFigures:
    """Counters of one mirrored table (``name`` is ``schema.table``).

    ``state`` is ``starting``, ``snapshot``, ``repairing``, ``live``, ``missing`` (the table
    is gone upstream - dropped or renamed; the worker keeps checking and repairs when it is
    back) or ``failed`` (its subscription was refused for another reason; ``problem`` says
    why). ``last_commit`` is the commit time of the newest live change applied and
    ``last_applied`` when it was applied; the lag shown is :func:`lag_seconds`.
    """

    name: str
    state: str = "starting"
    rows: int = 0
    live_applied: int = 0
    repaired_rows: int = 0
    reconnects: int = 0
    repairs: int = 0
    buffer_overflows: int = 0
    last_commit: _dt.datetime | None = None
    last_applied: _dt.datetime | None = None
    last_gap_reason: str | None = None
    last_gap_at: _dt.datetime | None = None
    last_gap_mode: str | None = None
    last_gap_s: float | None = None
    schema_changes: int = 0
    last_schema_change: str | None = None
    problem: str | None = None

    @property
    def delay_s(self) -> float | None:
        """Seconds from the newest applied change's commit to its write into the mirror (how
        long that change took; it does not grow while nothing arrives - see
        :func:`lag_seconds`)."""
        if self.last_commit is None or self.last_applied is None:
            return None
        return max(0.0, (self.last_applied - self.last_commit).total_seconds())


#: States in which the mirror is known to miss what happened since the gap opened.
_BEHIND = frozenset({"repairing", "snapshot", "missing", "failed"})


def lag_seconds(f: TableFigures, now: _dt.datetime) -> float | None:
    """How far the mirror is behind its source at *now*, in seconds; None when unknown. Pure.

    * While a gap is open (``repairing``, ``snapshot``, ``missing``, ``failed`` after being
      live): *now* minus when the gap opened - everything before it was applied live, nothing
      after it yet. It grows until the repair ends.
    * Otherwise: *now* minus the commit time of the newest change applied. It grows while
      nothing is applied (a frozen feed shows; so does a quiet table - compare with the
      ``live`` counter).
    """
    if f.state in _BEHIND and f.last_gap_at is not None and f.last_gap_mode is None:
        return max(0.0, (now - f.last_gap_at).total_seconds())
    if f.last_commit is None:
        return None
    return max(0.0, (now - f.last_commit).total_seconds())


def format_duration(seconds: float | None) -> str:
    """``0.12s``, ``4.5s``, ``3m05s``, ``2h01m``; ``-`` for unknown."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.2f}s" if seconds < 1 else f"{seconds:.1f}s"
    total = round(seconds)
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s" if total >= 60 else f"{total}s"
    return f"{total // 3600}h{(total % 3600) // 60:02d}m"


def eta_seconds(done: int, total: int | None, elapsed_s: float) -> float | None:
    """Time left for a snapshot at the average rate so far; None when unknowable."""
    if total is None or done <= 0 or elapsed_s <= 0:
        return None
    rate = done / elapsed_s
    return max(0.0, (total - done) / rate)


def _gap(f: TableFigures, now: _dt.datetime) -> str:
    if f.last_gap_at is None:
        return "none"
    ago = format_duration((now - f.last_gap_at).total_seconds())
    took = f" repaired by {f.last_gap_mode} in {format_duration(f.last_gap_s)}" if (
        f.last_gap_mode is not None
    ) else " repairing"
    return f"{f.last_gap_reason} {ago} ago,{took}"


def status_line(figures: Sequence[TableFigures], now: _dt.datetime) -> str:
    """One line for every table: ``public.todos live lag 0.04s rows 1000 ...``."""
    parts = []
    for f in figures:
        problem = f" ({f.problem})" if f.problem and f.state in ("missing", "failed") else ""
        parts.append(
            f"{f.name} {f.state}{problem} lag {format_duration(lag_seconds(f, now))} "
            f"rows {f.rows} live {f.live_applied} reconnects {f.reconnects} "
            f"last gap {_gap(f, now)}"
        )
    return " | ".join(parts)


def status_record(figures: Sequence[TableFigures], now: _dt.datetime) -> dict[str, object]:
    """The status as a JSON-ready dict (one ``event: "status"`` log record)."""
    return {
        "event": "status",
        "at": now.isoformat(),
        "tables": [
            {
                "table": f.name,
                "state": f.state,
                "problem": f.problem,
                "lag_s": lag_seconds(f, now),
                "delay_s": f.delay_s,
                "rows": f.rows,
                "live_applied": f.live_applied,
                "repaired_rows": f.repaired_rows,
                "reconnects": f.reconnects,
                "repairs": f.repairs,
                "buffer_overflows": f.buffer_overflows,
                "last_gap": None
                if f.last_gap_at is None
                else {
                    "reason": f.last_gap_reason,
                    "at": f.last_gap_at.isoformat(),
                    "mode": f.last_gap_mode,
                    "duration_s": f.last_gap_s,
                },
                "schema_changes": f.schema_changes,
            }
            for f in figures
        ],
    }


_STATES = ("starting", "snapshot", "repairing", "live", "missing", "failed")


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def metrics_text(figures: Iterable[TableFigures], now: _dt.datetime) -> str:
    """Prometheus text exposition (version 0.0.4) of the figures."""
    figs = list(figures)
    out: list[str] = []

    def family(name: str, kind: str, help_text: str, values: list[tuple[str, float]]) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in values:
            out.append(f"{name}{{{labels}}} {value:g}" if labels else f"{name} {value:g}")

    def t(f: TableFigures) -> str:
        return f'table="{_label(f.name)}"'

    family("supasync_mirror_rows", "gauge", "Rows in the mirror table.",
           [(t(f), f.rows) for f in figs])
    lags = [(f, lag_seconds(f, now)) for f in figs]
    family("supasync_mirror_lag_seconds", "gauge",
           "How far the mirror is behind: now minus the newest applied change's commit time, "
           "or minus when the open gap began (NaN when unknown).",
           [(t(f), lag if lag is not None else float("nan")) for f, lag in lags])
    family("supasync_mirror_live_changes_total", "counter", "Live changes applied.",
           [(t(f), f.live_applied) for f in figs])
    family("supasync_mirror_repaired_rows_total", "counter",
           "Rows written or deleted by snapshots and gap repairs.",
           [(t(f), f.repaired_rows) for f in figs])
    family("supasync_mirror_reconnects_total", "counter",
           "Times the subscription stopped being live after it first was.",
           [(t(f), f.reconnects) for f in figs])
    family("supasync_mirror_repairs_total", "counter", "Completed snapshots and gap repairs.",
           [(t(f), f.repairs) for f in figs])
    family("supasync_mirror_buffer_overflows_total", "counter",
           "Live buffers dropped during a repair (each forces another full comparison).",
           [(t(f), f.buffer_overflows) for f in figs])
    family("supasync_mirror_schema_changes_total", "counter",
           "Upstream schema changes applied to the mirror.",
           [(t(f), f.schema_changes) for f in figs])
    family("supasync_mirror_state", "gauge", "1 for the table's current state.",
           [(f'{t(f)},state="{s}"', 1.0 if f.state == s else 0.0) for f in figs
            for s in _STATES])
    family("supasync_mirror_last_gap_age_seconds", "gauge",
           "Seconds since the last gap opened (NaN if none).",
           [(t(f), (now - f.last_gap_at).total_seconds() if f.last_gap_at else float("nan"))
            for f in figs])
    return "\n".join(out) + "\n"
