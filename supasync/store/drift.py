"""Schema drift seen in a live change: does a change still fit the stored table? (pure)

A table altered upstream (a column added, dropped or retyped) keeps streaming changes; the
first that no longer fits the stored :class:`~supasync.store.tables.TableShape` starts a
*schema step* in the gate that holds the table (the library's
:class:`~supasync.client.gate.CachedGate` and the mirror's gate): ask PostgREST for the
table's shape, adapt the stored table (in place, or a new read on a type or key change),
then go on. These functions are the hint that starts it; a hint that PostgREST does not
confirm is remembered by its :func:`schema_signature` and not asked again.
"""

from __future__ import annotations

import functools
from typing import Any

from ..core.changes import Change
from .tables import TableShape, canonical_type

__all__ = ["schema_signature", "schema_suspect"]


_EXPECTED: dict[str, tuple[type, ...]] = {
    "int2": (int,), "int4": (int,), "int8": (int,),
    "float4": (int, float, str), "float8": (int, float, str), "numeric": (int, float, str),
    "bool": (bool,),
    "text": (str,), "varchar": (str,), "bpchar": (str,), "uuid": (str,),
    "timestamptz": (str,), "timestamp": (str,), "date": (str,),
}


def schema_signature(change: Change) -> tuple[Any, ...]:
    """What a change says about the table's shape: its column list, its record's keys and
    value kinds. Two changes with the same signature raise the same schema question."""
    new = change.new or {}
    return (
        tuple((c.name, c.type) for c in change.columns),
        tuple(sorted((k, type(v).__name__) for k, v in new.items())),
    )


def schema_suspect(shape: TableShape, change: Change) -> bool:
    """Whether a live change suggests the upstream table no longer has *shape* (pure).

    True when its column list names other columns or types, or when its record holds a
    column the shape lacks, lacks one the shape has, or holds a value of another kind than
    the column's type (``"high"`` in an ``int4`` column). Only a hint: the caller asks
    PostgREST for the real shape, since a server may send a column list cached from before
    the DDL (the local stack does, for up to half a second). Changes carrying server errors
    (truncated or emptied records) are never suspect.
    """
    if change.errors or change.op == "DELETE" or change.new is None:
        return False
    names, types, checks = _plan(shape)
    new = change.new
    if new.keys() != names:
        return True
    if change.columns:
        if len(change.columns) != len(types):
            return True
        for c in change.columns:
            typ = types.get(c.name)
            if typ is None or (typ != c.type and typ != _canonical(c.type)):
                return True
    for col, expected in checks:
        value = new[col]
        if value is None:
            continue
        if isinstance(value, bool) and bool not in expected:
            return True
        if not isinstance(value, expected):
            return True
    return False


# Called for every live change of a cached subscription: what depends on the shape alone is
# worked out once per shape (a few microseconds per change instead of twenty).
_canonical = functools.lru_cache(maxsize=1024)(canonical_type)


@functools.lru_cache(maxsize=256)
def _plan(shape: TableShape) -> tuple[frozenset[str], dict[str, str],
                                      tuple[tuple[str, tuple[type, ...]], ...]]:
    checks = []
    for col, typ in shape.columns:
        expected = (list,) if typ.startswith("_") else _EXPECTED.get(typ)
        if expected is not None:
            checks.append((col, expected))
    return frozenset(shape.column_names), dict(shape.columns), tuple(checks)
