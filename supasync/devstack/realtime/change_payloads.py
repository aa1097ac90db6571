"""Sans-I/O parts of the change feed: subscription records and the ``{"ids", "data"}``
payloads of realtime-protocol.md §5.2.

The asyncio layer (:mod:`.feed`) decides which channel bindings a change reaches (filters,
RLS); this module turns one decoded change plus those decisions into payloads:

* ``columns``: the table's columns in attribute order that the role may SELECT (and, with a
  ``select`` list, only those plus the primary key), ``type`` = ``pg_type.typname``;
* ``record`` (INSERT/UPDATE): the new row; unchanged TOASTed values are absent unless the full
  old row (REPLICA IDENTITY FULL) carries them;
* ``old_record`` (UPDATE/DELETE): the old identity (DEFAULT: the key, taken from the new row
  when it did not change; FULL: every column); a DELETE on a table with RLS keeps only the key;
* ``errors``: ``null``; ``["Error 413: Payload Too Large"]`` when the change is too big (then
  only values whose JSON text is at most 64 bytes are kept); the 400/401 shapes carry
  ``commit_timestamp: null``, ``columns: []`` and empty records.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .authorize import TableMeta
from .pg_filters import SubscriptionParams
from .pgoutput import RowChange
from .values import SqlRenderer, jsonb_text_length, try_render_fast

Deliver = Callable[[dict[str, Any]], None]

ERROR_413 = "Error 413: Payload Too Large"
ERROR_400 = "Error 400: Bad Request, no primary key"
ERROR_401 = "Error 401: Unauthorized"
#: In a 413 payload, only values whose JSON text fits in this many bytes are kept (§5.2).
SMALL_VALUE_BYTES = 64
#: Raw values longer than this cannot render to ≤ 64 JSON bytes; they are never rendered.
_RENDER_LIMIT = 1024


@dataclass
class Binding:
    """One ``postgres_changes`` entry of a channel: its reply id, parsed params, compiled
    schema/table patterns and the client's raw params (kept for re-validation)."""

    id: int
    params: SubscriptionParams
    schema_re: Any
    table_re: Any
    raw: dict[str, Any]

    def covers(self, schema: str, table: str, op: str) -> bool:
        return (
            self.params.matches_event(op)
            and self.schema_re.fullmatch(schema) is not None
            and self.table_re.fullmatch(table) is not None
        )


@dataclass
class Channel:
    """A subscribed channel: bindings, claims (role = ``claims["role"]``), the callback, and
    the WAL position from which its changes count (commit LSN >= ``start_lsn``)."""

    key: Hashable
    bindings: list[Binding]
    claims: dict[str, Any]
    deliver: Deliver
    start_lsn: int
    role: str = ""

    def __post_init__(self) -> None:
        self.set_claims(self.claims)

    def set_claims(self, claims: dict[str, Any]) -> None:
        self.claims = dict(claims)
        self.role = str(claims.get("role") or "")


@dataclass
class Candidate:
    """One channel interested in one change, and what survived each step."""

    channel: Channel
    bindings: list[Binding]
    error: str | None = None
    passed: list[Binding] = field(default_factory=list)
    visible: bool = True


def format_commit_timestamp(change: RowChange) -> str:
    """``YYYY-MM-DDTHH:MM:SS.mmmZ`` in UTC, milliseconds truncated (``to_char`` ``MS``)."""
    return _format_time(change.commit_time)


@functools.lru_cache(maxsize=256)  # one value per transaction: many changes share it
def _format_time(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def estimated_change_bytes(change: RowChange) -> int:
    # The real server measures wal2json's JSON of the change; ours is text values plus names
    # plus a per-column allowance for the JSON around them (type names, quotes, keys).
    ncols = len(change.new or ()) + len(change.old or ())
    return change.size + 48 * ncols + 128


class RenderedRow:
    """The JSON values of one change's new and old columns."""

    def __init__(self, change: RowChange, oversized: bool) -> None:
        self.change = change
        self.oversized = oversized
        self.new: dict[str, Any] = {}
        self.old: dict[str, Any] = {}
        self._slots: list[tuple[dict[str, Any], str, Any]] = []

    @classmethod
    def prepare(cls, change: RowChange, renderer: SqlRenderer, max_bytes: int) -> RenderedRow:
        self = cls(change, estimated_change_bytes(change) > max_bytes)
        types = {c.name: c for c in change.relation.columns}
        for source, target in ((change.new, self.new), (change.old, self.old)):
            for name, text in (source or {}).items():
                col = types[name]
                if text is None:
                    target[name] = None
                    continue
                ok, value = try_render_fast(col.type_oid, text)
                if ok:
                    target[name] = value
                elif self.oversized and len(text) > _RENDER_LIMIT:
                    continue  # cannot survive the 413 cut; never rendered
                else:
                    slot = renderer.add(col.type_oid, col.type_modifier, text)
                    self._slots.append((target, name, slot))
        return self

    def resolve(self, renderer: SqlRenderer) -> None:
        for target, name, slot in self._slots:
            target[name] = renderer.value(slot)
        self._slots.clear()


def build_payloads(
    change: RowChange,
    meta: TableMeta,
    cand: Candidate,
    rendered: RenderedRow,
    privileges: dict[tuple[str, int], frozenset[str]],
    shared: dict[Any, dict[str, Any]],
) -> list[dict[str, Any]]:
    """The payloads for one channel: one per distinct ``select`` list with matched ids.

    ``data`` objects are shared between channels with the same role, select list and error
    (``shared`` is per change); they must be treated as read-only."""
    role = cand.channel.role
    readable = privileges.get((role, meta.relid), frozenset())
    if cand.error is not None:
        groups = group_by_select(cand.bindings)
    else:
        groups = group_by_select(cand.passed if cand.visible else [])
    oversized = rendered.oversized
    out = []
    for select, ids in groups:
        memo_key = (role, select, cand.error)
        if memo_key in shared:
            out.append({"ids": ids, "data": shared[memo_key]})
            continue
        data: dict[str, Any] = {"schema": meta.schema, "table": meta.table}
        shared[memo_key] = data
        if cand.error is not None:
            data.update(commit_timestamp=None, type=change.op, errors=[cand.error], columns=[])
            if change.op in ("INSERT", "UPDATE"):
                data["record"] = {}
            if change.op in ("UPDATE", "DELETE"):
                data["old_record"] = {}
            out.append({"ids": ids, "data": data})
            continue

        def keep(name: str, is_pk: bool, value: Any, *, _sel: Any = select) -> bool:
            if name not in readable:
                return False
            if _sel is not None and name not in _sel and not is_pk:
                return False
            return not oversized or jsonb_text_length(value) <= SMALL_VALUE_BYTES

        data["commit_timestamp"] = format_commit_timestamp(change)
        data["type"] = change.op
        data["errors"] = [ERROR_413] if oversized else None
        data["columns"] = [
            {"name": c.name, "type": c.typname}
            for c in meta.columns
            if c.name in readable and (select is None or c.name in select or c.is_pk)
        ]
        if change.op in ("INSERT", "UPDATE"):
            record = {}
            for c in meta.columns:
                if c.name in rendered.new:
                    v = rendered.new[c.name]
                elif c.name in rendered.old and change.old_kind == "O":
                    v = rendered.old[c.name]  # unchanged TOAST, filled from the full old row
                else:
                    continue
                if keep(c.name, c.is_pk, v):
                    record[c.name] = v
            data["record"] = record
        if change.op in ("UPDATE", "DELETE"):
            source: dict[str, Any]
            if change.old is not None:
                source = rendered.old
            else:  # key unchanged under DEFAULT identity: the key as in the new row
                source = {k: rendered.new[k] for k in meta.pk if k in rendered.new}
            old_record = {}
            for c in meta.columns:
                if c.name not in source:
                    continue
                if change.op == "DELETE" and meta.rls and not c.is_pk:
                    continue  # RLS cannot secure deletes: key columns only (§5.2)
                if keep(c.name, c.is_pk, source[c.name]):
                    old_record[c.name] = source[c.name]
            data["old_record"] = old_record
        out.append({"ids": ids, "data": data})
    return out


def group_by_select(bindings: list[Binding]) -> list[tuple[tuple[str, ...] | None, list[int]]]:
    if len(bindings) == 1:
        return [(bindings[0].params.select, [bindings[0].id])]
    groups: dict[tuple[str, ...] | None, list[int]] = {}
    for b in bindings:
        ids = groups.setdefault(b.params.select, [])
        if b.id not in ids:
            ids.append(b.id)
    return list(groups.items())

