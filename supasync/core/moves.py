"""Filter move-ins and move-outs: what an UPDATE means for a filtered subscriber (sans-I/O).

The Realtime server evaluates a subscription's filter on the *new* row of an UPDATE only
(``realtime-protocol.md`` §5.3). So on ``done=eq.false``, ``update todos set done = true where
id = 7`` sends nothing at all: the subscriber never learns that row 7 left its view. The reverse
(a row entering the filter) arrives as an UPDATE of a row the subscriber never had.

supasync therefore subscribes UPDATEs of a filtered subscription *without* the server-side
filter (RLS still decides what arrives) and decides here, per UPDATE, against the new row:

============  ==========================  =========================
matches now   the subscriber holds it     delivered as
============  ==========================  =========================
yes           yes                         UPDATE
yes           no                          INSERT (a move-in)
no            yes                         DELETE of the held row (a move-out)
no            no                          nothing
============  ==========================  =========================

"Holds it" is known exactly by a gate with a cache (the :class:`~supasync.core.merge.Merger`'s
view applies the same table). Without one, the caller may only know the keys it delivered in
this run; for a key it does not know, ``held`` is ``None`` and the *old* record decides when it
carries every filter column (REPLICA IDENTITY FULL): it matched before -> held. Otherwise a
row that matches now is delivered as an UPDATE (what the server sends with a server-side
filter) and one that does not is dropped: a move-out of a row that predates the subscription,
under REPLICA IDENTITY DEFAULT, cannot be told from an UPDATE of a row that never matched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Literal

from .changes import Change
from .filters import Filter

__all__ = ["Move", "apply_move", "classify_update"]

Move = Literal["update", "insert", "delete", "drop"]


def _known_match(filter: Filter, row: Mapping[str, Any] | None) -> bool | None:
    """Whether *row* matches, or None when it lacks a filter column (cannot tell)."""
    if row is None or not filter.columns <= row.keys():
        return None
    try:
        return bool(filter.matches(row))
    except (KeyError, TypeError, ValueError):
        return None


def classify_update(
    filter: Filter,
    new: Mapping[str, Any] | None,
    old: Mapping[str, Any] | None,
    held: bool | None,
) -> Move:
    """What an UPDATE received without server-side filtering is for this subscriber.

    Args:
        filter: the subscription's filter.
        new: the UPDATE's new record.
        old: its old record (primary key only unless REPLICA IDENTITY FULL).
        held: whether the subscriber holds the row (True/False), or None if unknown.

    Returns:
        ``"update"``, ``"insert"`` (move-in), ``"delete"`` (move-out) or ``"drop"``. A new
        record lacking a filter column (truncated by ``Error 413``) cannot be judged: it is an
        UPDATE of a held row and dropped otherwise (the next repair settles it).
    """
    now = _known_match(filter, new)
    if held is None:
        before = _known_match(filter, old)
        if now is None:
            return "update" if before else "drop"
        if now:
            return "insert" if before is False else "update"
        return "delete" if before else "drop"
    if now is None:
        return "update" if held else "drop"
    if now:
        return "update" if held else "insert"
    return "delete" if held else "drop"


def apply_move(
    change: Change, move: Move, old_image: Mapping[str, Any] | None = None
) -> Change | None:
    """*change* (an UPDATE) as *move* says: unchanged, an INSERT, a DELETE carrying
    *old_image* (else the change's old record), or None for ``"drop"``."""
    if move == "update":
        return change
    if move == "insert":
        return replace(change, op="INSERT", old=None)
    if move == "delete":
        old = old_image if old_image is not None else (change.old or {})
        return replace(change, op="DELETE", new=None, old=dict(old))
    return None
