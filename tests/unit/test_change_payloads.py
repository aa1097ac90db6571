"""Payload shapes of realtime-protocol.md §5.2, built without a database."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from supasync.devstack.realtime.authorize import TableColumn, TableMeta
from supasync.devstack.realtime.change_payloads import (
    ERROR_400,
    Binding,
    Candidate,
    Channel,
    RenderedRow,
    build_payloads,
    format_commit_timestamp,
    group_by_select,
)
from supasync.devstack.realtime.pg_filters import like_regex, parse_params
from supasync.devstack.realtime.pgoutput import Column, Relation, RowChange
from supasync.devstack.realtime.values import SqlRenderer

T = datetime(2026, 8, 21, 10, 15, 30, 123999, tzinfo=UTC)
REL = Relation(1, "public", "todos", "d", (
    Column("id", 20, -1, True), Column("task", 25, -1, False), Column("done", 16, -1, False)))
META = TableMeta(1, "public", "todos", "public.todos", False, (
    TableColumn("id", "int8", "bigint", True), TableColumn("task", "text", "text", False),
    TableColumn("done", "bool", "boolean", False)))
ALL = frozenset({"id", "task", "done"})


def binding(bid: int, **params: Any) -> Binding:
    p = parse_params({"schema": "public", "table": "todos", **params})
    return Binding(bid, p, like_regex(p.schema), like_regex(p.table), params)


def build(change: RowChange, cand: Candidate, meta: TableMeta = META,
          readable: frozenset[str] = ALL, max_bytes: int = 1 << 20) -> list[dict[str, Any]]:
    renderer = SqlRenderer({})
    rendered = RenderedRow.prepare(change, renderer, max_bytes)
    assert renderer.empty  # fast-path types only
    rendered.resolve(renderer)
    return build_payloads(change, meta, cand, rendered, {("service_role", 1): readable}, {})


def change(op: str, new: Any = None, old: Any = None, kind: str | None = None,
           rel: Relation = REL) -> RowChange:
    return RowChange(op, rel, new, old, kind, 100, T, 7, size=10)


def chan(*bindings: Binding) -> Channel:
    return Channel("k", list(bindings), {"role": "service_role"}, lambda p: None, 0)


def test_insert_shape_and_timestamp() -> None:
    b = binding(3)
    (p,) = build(change("INSERT", {"id": "1", "task": "milk", "done": "f"}),
                 Candidate(chan(b), [b], passed=[b]))
    assert p == {"ids": [3], "data": {
        "schema": "public", "table": "todos", "commit_timestamp": "2026-08-21T10:15:30.123Z",
        "type": "INSERT", "errors": None,
        "columns": [{"name": "id", "type": "int8"}, {"name": "task", "type": "text"},
                    {"name": "done", "type": "bool"}],
        "record": {"id": 1, "task": "milk", "done": False}}}
    assert format_commit_timestamp(change("INSERT")) == "2026-08-21T10:15:30.123Z"


def test_update_default_identity_key_from_new_row() -> None:
    b = binding(1)
    (p,) = build(change("UPDATE", {"id": "1", "done": "t"}), Candidate(chan(b), [b], passed=[b]))
    assert p["data"]["record"] == {"id": 1, "done": True}  # task: unchanged TOAST, absent
    assert p["data"]["old_record"] == {"id": 1}


def test_update_full_identity_fills_unchanged_toast() -> None:
    b = binding(1)
    c = change("UPDATE", {"id": "1", "done": "t"}, {"id": "1", "task": "t0", "done": "f"}, "O")
    (p,) = build(c, Candidate(chan(b), [b], passed=[b]))
    assert p["data"]["record"] == {"id": 1, "task": "t0", "done": True}
    assert p["data"]["old_record"] == {"id": 1, "task": "t0", "done": False}


def test_delete_under_rls_keeps_only_the_key() -> None:
    b = binding(1)
    meta = TableMeta(1, "public", "todos", "public.todos", True, META.columns)
    c = change("DELETE", None, {"id": "1", "task": "t0", "done": "f"}, "O")
    (p,) = build(c, Candidate(chan(b), [b], passed=[b]), meta=meta)
    assert "record" not in p["data"] and p["data"]["old_record"] == {"id": 1}


def test_select_groups_and_privileges() -> None:
    b1, b2, b3 = binding(1, select=["done"]), binding(2), binding(3, select=["done"])
    out = build(change("INSERT", {"id": "1", "task": "x", "done": "t"}),
                Candidate(chan(b1, b2, b3), [b1, b2, b3], passed=[b1, b2, b3]),
                readable=frozenset({"id", "done"}))
    assert [(p["ids"], p["data"]["record"]) for p in out] == [
        ([1, 3], {"id": 1, "done": True}), ([2], {"id": 1, "done": True})]
    assert [c["name"] for c in out[1]["data"]["columns"]] == ["id", "done"]
    assert group_by_select([b1, b2, b1]) == [(("done",), [1]), (None, [2])]


def test_error_shapes_and_413() -> None:
    b = binding(1)
    (p,) = build(change("UPDATE", {"id": "1"}), Candidate(chan(b), [b], error=ERROR_400))
    assert p["data"] == {"schema": "public", "table": "todos", "commit_timestamp": None,
                         "type": "UPDATE", "errors": [ERROR_400], "columns": [],
                         "record": {}, "old_record": {}}
    big = change("INSERT", {"id": "1", "task": "x" * 100, "done": "t"})
    big.size = 5000
    (p,) = build(big, Candidate(chan(b), [b], passed=[b]), max_bytes=1000)
    assert p["data"]["errors"] == ["Error 413: Payload Too Large"]
    assert p["data"]["record"] == {"id": 1, "done": True}


def test_invisible_candidate_gets_nothing() -> None:
    b = binding(1)
    assert build(change("INSERT", {"id": "1"}),
                 Candidate(chan(b), [b], passed=[b], visible=False)) == []
