"""A snapshot's progress: the total (a ``count=exact`` read, fetched while the first pages
are) is reported before the first rows, every row is counted, and ``started``/``finished``
come in pairs whatever happens: an empty table, a read that fails before its first page."""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path
from typing import Any

import pytest

from supasync.core.errors import RestError
from supasync.devstack.testing import StackProcess
from supasync.mirror.table import Progress
from supasync.repair.repairer import RepairConfig
from supasync.repair.rest import Rest
from supasync.store.tables import MirrorStore
from tests.mirror_helpers import repair_table

pytestmark = pytest.mark.integration


class Recorder(Progress):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def started(self, table: str, total: int | None) -> None:
        self.events.append(("started", total))

    def advanced(self, table: str, rows: int) -> None:
        self.events.append(("advanced", rows))

    def finished(self, table: str) -> None:
        self.events.append(("finished", None))


async def snapshot(stack: StackProcess, table: str, db: Path, revoke: bool = False,
                   recorder: Recorder | None = None) -> Recorder:
    async def token() -> str:
        return stack.service_role_key

    recorder = recorder or Recorder()
    url = f"{stack.url}/rest/v1"
    if revoke:
        # The table is described (its shape is read first), then refused when its rows are.
        rest = Rest(url, stack.anon_key, token)
        try:
            await rest.table_info("public", table)
        finally:
            await rest.aclose()
        stack.sql(f"revoke select on {table} from service_role")
    store = MirrorStore(db)
    try:
        await repair_table(store, url, stack.anon_key, token, table, RepairConfig(mode="diff"),
                           progress=recorder, snapshot_page_size=100)
    finally:
        store.close()
    return recorder


def test_total_first_then_every_row_then_finished(stack: StackProcess, tmp_path: Path) -> None:
    stack.sql("""
        create table progress_rows (id bigint primary key, title text);
        grant select on progress_rows to anon, authenticated, service_role;
        insert into progress_rows select g, 'row ' || g from generate_series(1, 750) g;
    """)
    events = asyncio.run(snapshot(stack, "progress_rows", tmp_path / "m.sqlite")).events
    assert events[0] == ("started", 750)
    assert events[-1] == ("finished", None)
    assert {kind for kind, _ in events[1:-1]} == {"advanced"}
    assert sum(n for _, n in events[1:-1]) == 750


def test_empty_table_reports_its_total(stack: StackProcess, tmp_path: Path) -> None:
    stack.sql("""
        create table progress_empty (id bigint primary key);
        grant select on progress_empty to anon, authenticated, service_role;
    """)
    events = asyncio.run(snapshot(stack, "progress_empty", tmp_path / "m.sqlite")).events
    assert events == [("started", 0), ("finished", None)]


def test_a_read_failing_before_its_first_page_still_pairs_the_events(
    stack: StackProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stack.sql("""
        create table progress_denied (id bigint primary key);
        grant select on progress_denied to anon, authenticated, service_role;
        insert into progress_denied values (1);
    """)
    recorder = Recorder()

    async def run() -> None:
        with pytest.raises(RestError):
            await snapshot(stack, "progress_denied", tmp_path / "m.sqlite", revoke=True,
                           recorder=recorder)

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        asyncio.run(run())
        gc.collect()
    assert recorder.events[-1] == ("finished", None)
    assert [kind for kind, _ in recorder.events] == ["started", "finished"]
    assert "exception was never retrieved" not in caplog.text
