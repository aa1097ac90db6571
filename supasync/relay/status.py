"""The relay's figures and how they are shown: status line, JSON record, Prometheus text.

Sans-I/O like :mod:`supasync.mirror.status`: :class:`RelayFigures` holds counters the publisher
updates; the functions take ``now`` and never read a clock.

* **position**: the journal ``seq`` up to which every change of the table is in the stream
  (acknowledged by JetStream);
* **pending**: journal entries of the table after the position (not yet acknowledged);
* **lag**: *now* minus the time the oldest pending entry was journaled - how long the oldest
  change not yet in the stream has been waiting in the store (0 when nothing is pending). While
  NATS is unreachable it grows; once NATS is back it falls as the relay catches up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..mirror.status import format_duration

__all__ = ["RelayFigures", "TableRelay", "relay_metrics", "relay_record", "relay_status_line"]


@dataclass
class TableRelay:
    """Counters of one relayed table (``name`` is ``schema.table``; ``store_name`` its table in
    the store file)."""

    name: str
    store_name: str
    subject: str
    state: str = "waiting"  # waiting (for the first snapshot), relaying, resync
    position: int | None = None
    published: int = 0
    duplicates: int = 0
    resyncs: int = 0
    pending: int = 0
    oldest_pending_at: float | None = None  # unix time the oldest pending entry was journaled
    last_commit: str | None = None

    def lag_s(self, now: float) -> float:
        if not self.pending or self.oldest_pending_at is None:
            return 0.0
        return max(0.0, now - self.oldest_pending_at)


@dataclass
class RelayFigures:
    """The relay's counters: NATS connection state, the stream, every table's."""

    url: str
    stream: str
    tables: list[TableRelay] = field(default_factory=list)
    nats: str = "connecting"  # connecting, connected, disconnected, reconnected
    server: str | None = None  # the server connected to (credentials removed)
    stream_state: str | None = None  # created, present
    publish_failures: int = 0
    last_error: str | None = None


def relay_status_line(f: RelayFigures, now: float) -> str:
    """One line: ``nats connected stream S | public.todos relaying position 10 pending 0
    lag 0.00s published 10 dup 0``."""
    head = f"nats {f.nats} ({f.url}) stream {f.stream}"
    if f.publish_failures:
        head += f" failures {f.publish_failures}"
        if f.last_error:
            head += f" (last: {f.last_error})"
    parts = [head]
    for t in f.tables:
        parts.append(
            f"{t.name} {t.state} position {t.position if t.position is not None else '-'} "
            f"pending {t.pending} lag {format_duration(t.lag_s(now))} published {t.published} "
            f"dup {t.duplicates}")
    return " | ".join(parts)


def relay_record(f: RelayFigures, now: float, at_iso: str) -> dict[str, object]:
    """The status as a JSON-ready dict (``event: "relay_status"``)."""
    return {
        "event": "relay_status",
        "at": at_iso,
        "nats": f.nats,
        "url": f.url,
        "server": f.server,
        "stream": f.stream,
        "publish_failures": f.publish_failures,
        "last_error": f.last_error,
        "tables": [
            {
                "table": t.name,
                "subject": t.subject,
                "state": t.state,
                "position": t.position,
                "pending": t.pending,
                "lag_s": round(t.lag_s(now), 3),
                "published": t.published,
                "duplicates": t.duplicates,
                "resyncs": t.resyncs,
                "last_commit": t.last_commit,
            }
            for t in f.tables
        ],
    }


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def relay_metrics(f: RelayFigures, now: float) -> str:
    """Prometheus text exposition (0.0.4) of the relay's figures."""
    out: list[str] = []

    def family(name: str, kind: str, help_text: str,
               values: Sequence[tuple[str, float]]) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in values:
            out.append(f"{name}{{{labels}}} {value:g}" if labels else f"{name} {value:g}")

    def t(x: TableRelay) -> str:
        return f'table="{_label(x.name)}"'

    family("supasync_relay_connected", "gauge", "1 while connected to NATS.",
           [("", 1.0 if f.nats in ("connected", "reconnected") else 0.0)])
    family("supasync_relay_publish_failures_total", "counter",
           "Batches not acknowledged in full (published again after a backoff).",
           [("", float(f.publish_failures))])
    family("supasync_relay_published_total", "counter",
           "Messages JetStream stored (acknowledged, not duplicates).",
           [(t(x), float(x.published)) for x in f.tables])
    family("supasync_relay_duplicates_total", "counter",
           "Messages JetStream acknowledged as duplicates (already in the stream).",
           [(t(x), float(x.duplicates)) for x in f.tables])
    family("supasync_relay_position", "gauge",
           "Journal sequence number up to which the table's changes are in the stream.",
           [(t(x), float(x.position) if x.position is not None else float("nan"))
            for x in f.tables])
    family("supasync_relay_pending", "gauge", "Journal entries not yet in the stream.",
           [(t(x), float(x.pending)) for x in f.tables])
    family("supasync_relay_lag_seconds", "gauge",
           "Seconds the oldest change not yet in the stream has waited in the store.",
           [(t(x), x.lag_s(now)) for x in f.tables])
    return "\n".join(out) + "\n"
