"""MirrorGate's contract without a server: buffering during repairs, commit-order application,
buffer overflow forcing a full comparison, batching, schema hints and clean close. The
reading side is a stand-in that writes into a real mirror file."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from supasync.client.subscription import SubscriptionInfo
from supasync.core.changes import Change, Column, change_from_row
from supasync.core.filters import ALL
from supasync.core.status import GapRepaired
from supasync.mirror.gate import MirrorGate
from supasync.mirror.status import TableFigures
from supasync.mirror.sync import RepairOutcome
from supasync.store.tables import MirrorStore, SchemaChange, TableShape, compare_shapes

SHAPE = TableShape("public", "t", (("id", "int8"), ("v", "text")), ("id",))


class FakeSync:
    """Stands in for TableSync: 'upstream' is a dict; repair copies it into the store."""

    def __init__(self, store: MirrorStore) -> None:
        self.store, self.shape = store, SHAPE
        self.name = "public.t"
        self.upstream: dict[int, str] = {}
        self.repairs: list[bool] = []
        self.release = asyncio.Event()
        self.release.set()
        self.filters: list[tuple[str, str]] = []
        self.next_shape: TableShape | None = None

    async def repair(self, *, force_diff: bool = False) -> RepairOutcome:
        self.repairs.append(force_diff)
        snapshot = dict(self.upstream)  # the read happens here...
        await self.release.wait()  # ...and live changes keep arriving meanwhile
        with self.store.transaction():
            self.store.begin_sweep(self.shape)
            self.store.merge_rows(self.shape, [{"id": k, "v": v} for k, v in snapshot.items()])
            self.store.mark(self.shape, [[k] for k in snapshot])
            self.store.sweep(self.shape)
            self.store.mark_snapshot_complete("public", "t")
        return RepairOutcome("diff", None, len(snapshot), 0, 0, {"mode": "diff"})

    async def sync_schema(self, seen: TableShape | None = None) -> SchemaChange:
        new = self.next_shape or self.shape
        change = compare_shapes(self.shape, new)
        if change.action != "unchanged":
            self.store.ensure_table(new)
            self.shape = new
        return change


def ch(op: str, i: int, v: str | None = None, **kw: Any) -> Change:
    new = {"id": i, "v": v} if op != "DELETE" else None
    c = change_from_row("public", "t", op, new, {"id": i}, ("id",), origin="live")  # type: ignore[arg-type]
    cols = (Column("id", "int8"), Column("v", "text"))
    return dataclasses.replace(c, columns=cols, **kw)


@pytest.fixture
def store(tmp_path: Path) -> MirrorStore:
    s = MirrorStore(tmp_path / "m.sqlite")
    s.ensure_table(SHAPE)
    return s


async def open_gate(sync: FakeSync, **kw: Any) -> tuple[MirrorGate, list[object]]:
    reported: list[object] = []

    async def token() -> str:
        return "t"

    info = SubscriptionInfo("public.t", "public", "t", frozenset({"INSERT", "UPDATE", "DELETE"}),
                            ALL, None, ("id",), "http://x", "k", token, reported.append)
    gate = MirrorGate(sync, TableFigures("public.t"), flush_interval=0.01, **kw)  # type: ignore[arg-type]

    async def emit(change: Change) -> None:
        raise AssertionError("the mirror gate emits nothing")

    await gate.open(info, emit)
    return gate, reported


def rows(store: MirrorStore) -> dict[int, str]:
    return {r["id"]: r["v"] for r in store.rows(SHAPE)}


async def test_buffered_changes_apply_after_the_read_in_order(store: MirrorStore) -> None:
    sync = FakeSync(store)
    sync.upstream = {1: "a", 2: "b"}
    gate, reported = await open_gate(sync)
    await gate.gap("first-join")
    sync.release.clear()
    task = asyncio.create_task(gate.subscribed())
    await asyncio.sleep(0)  # let the repair take its read
    # committed after the read, arriving live during the repair
    await gate.live(ch("UPDATE", 1, "a2"))
    await gate.live(ch("INSERT", 3, "c"))
    await gate.live(ch("DELETE", 2))
    await gate.live(ch("UPDATE", 3, "c2"))
    sync.release.set()
    await task
    assert rows(store) == {1: "a2", 3: "c2"}
    assert gate.figures.state == "live" and gate.figures.repairs == 1
    assert isinstance(reported[-1], GapRepaired)
    await gate.close()


async def test_overflow_drops_the_buffer_and_forces_a_diff(store: MirrorStore) -> None:
    sync = FakeSync(store)
    sync.upstream = {1: "a"}
    gate, _ = await open_gate(sync, buffer_limit=3)
    await gate.gap("first-join")
    sync.release.clear()
    task = asyncio.create_task(gate.subscribed())
    await asyncio.sleep(0)
    for i in range(10, 16):
        sync.upstream[i] = f"x{i}"
        await gate.live(ch("INSERT", i, f"x{i}"))
    sync.release.set()
    await task
    assert sync.repairs == [False, True]  # a second, full comparison after the overflow
    assert rows(store) == sync.upstream
    assert gate.figures.buffer_overflows == 1
    await gate.close()


async def test_live_batches_and_close_commits(store: MirrorStore) -> None:
    sync = FakeSync(store)
    gate, _ = await open_gate(sync, batch_size=2)
    await gate.gap("first-join")
    await gate.subscribed()
    await gate.live(ch("INSERT", 1, "a"))
    await gate.live(ch("INSERT", 2, "b"))  # a full batch is written at once
    assert rows(store) == {1: "a", 2: "b"}
    await gate.live(ch("INSERT", 3, "c"))
    await gate.close()  # the pending batch is committed
    assert rows(store) == {1: "a", 2: "b", 3: "c"}
    assert gate.figures.live_applied == 3


async def test_a_gap_discards_the_buffer_of_the_previous_attempt(store: MirrorStore) -> None:
    sync = FakeSync(store)
    sync.upstream = {1: "a"}
    gate, _ = await open_gate(sync)
    await gate.gap("first-join")
    await gate.subscribed()
    await gate.gap("drop")
    await gate.live(ch("INSERT", 9, "stale"))  # before the hole: superseded by the next read
    await gate.gap("drop")
    await gate.subscribed()
    assert rows(store) == {1: "a"}
    assert gate.figures.reconnects == 2
    await gate.close()


async def test_schema_hint_adapts_the_table_then_applies_the_change(store: MirrorStore) -> None:
    sync = FakeSync(store)
    gate, _ = await open_gate(sync)
    await gate.gap("first-join")
    await gate.subscribed()
    sync.next_shape = TableShape("public", "t", (*SHAPE.columns, ("n", "int4")), ("id",))
    change = change_from_row("public", "t", "INSERT", {"id": 5, "v": "e", "n": 7}, None,
                             ("id",), origin="live")
    await gate.live(change)
    assert gate._schema_task is not None
    await gate._schema_task
    assert store.rows(sync.shape) == [{"id": 5, "v": "e", "n": 7}]
    assert gate.figures.schema_changes == 1 and gate.figures.last_schema_change == "added n"
    await gate.close()
