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
from supasync.mirror.table import shape_from_info
from supasync.repair.fullread import key_ranges
from supasync.repair.repairer import RepairConfig
from supasync.repair.rest import Rest
from supasync.store.tables import MirrorStore, TableShape
from tests.mirror_helpers import repair_table

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

    url = f"{capped.url}/rest/v1"
    rest = Rest(url, capped.anon_key, token)
    try:
        shape = shape_from_info("public", "capped", await rest.table_info("public", "capped"))
        assert len(await key_ranges(rest, "public", "capped", shape.primary_key,
                                    dict(shape.columns), [], 3)) == 3
    finally:
        await rest.aclose()
    config = RepairConfig(mode="cursor", page_size=200)
    store = MirrorStore(tmp_path / "mirror.sqlite")
    try:
        first, done, _ = await repair_table(store, url, capped.anon_key, token, "capped",
                                            config, snapshot_page_size=200)
        assert (first.mode, done.inserted) == ("snapshot", 500)
        assert mirror(store, shape) == source(capped, shape)

        capped.sql("""
            update capped set title = title || ' changed', updated_at = now()
             where id % 700 = 0;
            delete from capped where id % 900 = 0;
            insert into capped (id, title) select g * 100 + 1, 'new ' || g
              from generate_series(1, 120) g;
        """)
        again, done, _ = await repair_table(store, url, capped.anon_key, token, "capped",
                                            config, snapshot_page_size=200)
        assert again.mode == "cursor" and done.deleted == 500 // 9
        assert mirror(store, shape) == source(capped, shape)

        capped.sql("alter table capped add column note text;"
                   "update capped set note = 'n' || id where id % 3 = 0")
        _, _, shape = await repair_table(store, url, capped.anon_key, token, "capped", config,
                                         snapshot_page_size=200)
        assert "note" in shape.column_names
        assert mirror(store, shape) == source(capped, shape)
    finally:
        store.close()
