"""Server-sent events, sans I/O: change events, their wire form, resume positions, filtering and
coalescing. Nothing here touches a socket, a file or the event loop.

Contract:

* A :class:`LiveEvent` is one journaled row change of one table: its journal sequence number
  (``seq``, the SSE ``id:``), the operation (``insert``/``update``/``delete``), the primary key,
  and for inserts and updates the row **as the store held it when the change was read** (the
  journal keeps keys, not row images: the row may already reflect a later change of the same
  key, whose own event follows; an insert or update whose row was gone by then is dropped
  because the delete that removed it follows). A client that applies the events in order ends
  with the store's rows, which is what resuming needs.
* :func:`encode_event` gives the exact bytes of one SSE event (``id:``, ``event:``, ``data:``
  as one line of JSON); :func:`encode_position` an event with only an ``id:`` (the
  EventSource remembers it as its last event id without dispatching anything: WHATWG HTML,
  "server-sent events", *dispatch the event* step 1 then 2), used when a stream starts and
  with every heartbeat so that a client whose events were all filtered out still resumes from
  where the stream really is.
* :func:`parse_position` reads ``Last-Event-ID`` / ``?last_event_id=``.
* :func:`apply_filter` narrows events with a supasync filter: an insert or update whose row
  passes is kept; an update whose row no longer passes becomes a ``delete`` of its key (the
  client may hold the row from before); an insert that does not pass is dropped; a delete is
  always kept (its row is gone, so whether it passed cannot be known; the same as Supabase
  Realtime, which cannot filter deletes). A filter only ever narrows what the stream's
  identity may see.
* :class:`Coalescer` keeps the latest event per key over a window (for dashboards): the
  events it releases are in ``seq`` order, each with its own ``seq``, so resuming from any id a
  client got misses nothing (every key changed after that id is sent again).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from ..core.errors import ConfigError
from ..core.filters import Filter

__all__ = [
    "Coalescer",
    "LiveEvent",
    "Op",
    "apply_filter",
    "encode_comment",
    "encode_event",
    "encode_must_refetch",
    "encode_position",
    "parse_position",
]

Op = Literal["insert", "update", "delete"]

#: The journal's operation letters (store/journal.py) as event names.
OPS: dict[str, Op] = {"I": "insert", "U": "update", "D": "delete"}


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """One row change of one table, as a stream sends it (see the module docstring)."""

    seq: int
    table: str
    op: Op
    key: tuple[Any, ...]
    record: Mapping[str, Any] | None
    origin: str
    commit_timestamp: str | None
    #: its SSE bytes, when already encoded (by the source, once for every stream)
    wire: bytes = dataclasses.field(default=b"", compare=False, repr=False)

    def encoded(self) -> LiveEvent:
        """This event with its SSE bytes attached."""
        return self if self.wire else replace(self, wire=encode_event(self))

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "table": self.table, "op": self.op, "key": list(self.key),
                "record": None if self.record is None else dict(self.record),
                "origin": self.origin, "commit_timestamp": self.commit_timestamp}


def _json(value: Any) -> str:
    # One line: json.dumps escapes newlines inside strings, so a data: field never breaks.
    return json.dumps(value, separators=(",", ":"), default=str, ensure_ascii=False)


def encode_event(event: LiveEvent) -> bytes:
    """The SSE bytes of one change: ``id:`` = seq, ``event:`` = op, ``data:`` = JSON."""
    if event.wire:
        return event.wire
    return f"id: {event.seq}\nevent: {event.op}\ndata: {_json(event.to_dict())}\n\n".encode()


def encode_must_refetch(table: str, seq: int, reason: str) -> bytes:
    """The ``must-refetch`` event. It carries no ``id:``: the client's position stays where it
    was, so an automatic reconnect gets ``must-refetch`` again instead of skipping ahead; the
    client reads ``/rows`` (rows and their ``seq``) and follows ``/changes`` from that seq."""
    data = _json({"table": table, "seq": seq, "reason": reason})
    return f"event: must-refetch\ndata: {data}\n\n".encode()


def encode_position(seq: int, comment: str | None = None) -> bytes:
    """An event with only an ``id:`` (optionally after a ``:`` comment, e.g. a heartbeat)."""
    head = f": {comment}\n" if comment else ""
    return f"{head}id: {seq}\n\n".encode()


def encode_comment(text: str) -> bytes:
    return f": {text}\n\n".encode()


def encode_retry(ms: int) -> bytes:
    """How long an EventSource waits before reconnecting."""
    return f"retry: {int(ms)}\n\n".encode()


def parse_position(header: str | None, query: str | None) -> int | None:
    """The position a client resumes from: the ``Last-Event-ID`` header (what an EventSource
    sends when it reconnects) wins over ``?last_event_id=`` (for the first connection, which
    cannot set headers). None when neither is given.

    Raises:
        ConfigError: not a non-negative integer.
    """
    for name, raw in (("Last-Event-ID", header), ("last_event_id", query)):
        if raw is None or raw.strip() == "":
            continue
        text = raw.strip()
        if not text.isdigit():
            raise ConfigError("a stream position is a journal sequence number (an integer "
                              "of 0 or more)", key=name, value=text[:40],
                              fix="resume with the id of the last event received, or the seq "
                              "that /rows returned")
        return int(text)
    return None


def parse_coalesce(raw: str | None, *, limit_ms: int = 60_000) -> float:
    """``coalesce_ms`` as seconds (0: off).

    Raises:
        ConfigError: not an integer between 0 and *limit_ms*.
    """
    if raw is None or raw.strip() == "":
        return 0.0
    text = raw.strip()
    if not text.isdigit() or int(text) > limit_ms:
        raise ConfigError(f"coalesce_ms is a whole number of milliseconds, 0 to {limit_ms}",
                          key="coalesce_ms", value=text[:40], fix="e.g. coalesce_ms=250")
    return int(text) / 1000.0


def apply_filter(events: Iterable[LiveEvent], where: Filter | None) -> list[LiveEvent]:
    """The events a stream with filter *where* sends (see the module docstring)."""
    if where is None:
        return list(events)
    out: list[LiveEvent] = []
    for ev in events:
        if ev.op == "delete":
            out.append(ev)
        elif ev.record is not None and where.matches(ev.record):
            out.append(ev)
        elif ev.op == "update":
            out.append(replace(ev, op="delete", record=None, wire=b""))  # moved out of it
    return out


class Coalescer:
    """The latest event per (table, key) over a window; :meth:`drain` releases them in ``seq``
    order, each with its own ``seq``. A later event of a key replaces the earlier one, except
    that an update of a row inserted in the same window is released as an insert (with the
    newest row), so a client still learns that the row is new."""

    def __init__(self) -> None:
        self._latest: dict[tuple[str, tuple[Any, ...]], LiveEvent] = {}

    def __len__(self) -> int:
        return len(self._latest)

    def add(self, events: Iterable[LiveEvent]) -> None:
        for ev in events:
            k = (ev.table, ev.key)
            before = self._latest.pop(k, None)  # re-inserted: ordered by its newest seq
            if before is not None and before.op == "insert" and ev.op == "update":
                ev = replace(ev, op="insert", wire=b"")
            self._latest[k] = ev

    def drain(self) -> list[LiveEvent]:
        out = sorted(self._latest.values(), key=lambda e: e.seq)
        self._latest.clear()
        return out
