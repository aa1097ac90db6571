"""Mirror reads against a server that caps answers below the page size asked (PostgREST's
``db-max-rows``; Supabase's "Max rows", 1000 by default): a short page is not the end. The
snapshot, a cursor-mode repair (its changed rows and its key scan, whose unmarked keys are
deleted) and a column back-fill must all read the whole table."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from supasync.devstack.testing import StackProcess
from supasync.mirror.sync import MirrorRest, TableSync, shape_from_info
from supasync.repair.repairer import RepairConfig
from supasync.store.tables import MirrorStore, TableShape

pytestmark = pytest.mark.integration

CAP = 50


@pytest.fixture(scope="module")
def capped() -> Iterator[StackProcess]:
    """A stack of its own whose PostgREST returns at most CAP rows per answer."""
    before = os.environ.get("PGRST_DB_MAX_ROWS")
    os.environ["PGRST_DB_MAX_ROWS"] = str(CAP)
    try:
        stack = StackProcess().start()
    finally:
        if before is None:
            os.environ.pop("PGRST_DB_MAX_ROWS")
        else:
            os.environ["PGRST_DB_MAX_ROWS"] = before
    try:
        stack.sql("""
            create table capped (id bigint primary key, title text,
                                 updated_at timestamptz not null default now());
            grant select on capped to anon, authenticated, service_role;
            insert into capped (id, title, updated_at)
            select g * 100, 'row ' || g, timestamptz '2026-01-01' + g * interval '1 second'
              from generate_series(1, 500) g;
        """)
        yield stack
    finally:
        stack.close()


def source(stack: StackProcess, shape: TableShape) -> list[tuple[Any, ...]]:
    with psycopg.connect(stack.db_url, autocommit=True) as conn:
        rows = [json.loads(t) for (t,) in conn.execute("select to_json(c)::text from capped c")]
    return sorted(shape.row_values(r) for r in rows)


def mirror(store: MirrorStore, shape: TableShape) -> list[tuple[Any, ...]]:
    return sorted(tuple(r.values()) for r in store.rows(shape))


def test_the_cap_is_applied(capped: StackProcess) -> None:
    r = httpx.get(f"{capped.url}/rest/v1/capped?order=id&limit=200",
                  headers={"apikey": capped.service_role_key})
    assert len(r.json()) == CAP and r.headers["Content-Range"] == f"0-{CAP - 1}/*"


async def test_snapshot_cursor_repair_and_backfill_read_past_the_cap(capped: StackProcess,
                                                                     tmp_path: Path) -> None:
    async def token() -> str:
        return capped.service_role_key

    rest = MirrorRest(f"{capped.url}/rest/v1", capped.anon_key, token)
    try:
        shape = shape_from_info("public", "capped", await rest.table_info("public", "capped"))
        store = MirrorStore(tmp_path / "mirror.sqlite")
        store.ensure_table(shape)
        sync = TableSync(store, rest, shape, RepairConfig(mode="cursor", page_size=200),
                         snapshot_page_size=200)
        assert len(await sync._key_ranges()) == 3
        first = await sync.repair()
        assert (first.mode, first.inserted) == ("snapshot", 500)
        assert mirror(store, shape) == source(capped, shape)

        capped.sql("""
            update capped set title = title || ' changed', updated_at = now()
             where id % 700 = 0;
            delete from capped where id % 900 = 0;
            insert into capped (id, title) select g * 100 + 1, 'new ' || g
              from generate_series(1, 120) g;
        """)
        again = await sync.repair()
        assert again.mode == "cursor" and again.deleted == 500 // 9
        assert mirror(store, shape) == source(capped, shape)

        capped.sql("alter table capped add column note text;"
                   "update capped set note = 'n' || id where id % 3 = 0")
        await sync.repair()
        assert "note" in sync.shape.column_names
        assert mirror(store, sync.shape) == source(capped, sync.shape)
    finally:
        await rest.aclose()
