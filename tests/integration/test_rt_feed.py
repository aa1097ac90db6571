"""ChangeFeed against a real PostgreSQL: payload shapes (§5.2), filters (§5.1/§5.3), RLS,
413, error texts, activation point, pause/resume and ordering."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest

from supasync.devstack.app import StackConfig, StackContext
from supasync.devstack.keys import StackKeys
from supasync.devstack.postgres import Cluster
from supasync.devstack.realtime.feed import ChangeFeed

pytestmark = pytest.mark.integration

TIMEOUT = 10.0
_keys = itertools.count(1)

ANON = {"role": "anon"}
SERVICE = {"role": "service_role"}
USER_A = "6f1e0000-0000-0000-0000-00000000000a"
USER_B = "6f1e0000-0000-0000-0000-00000000000b"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    c.start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
async def feed(cluster: Cluster) -> AsyncIterator[ChangeFeed]:
    ctx = StackContext(StackConfig(max_record_bytes=1_048_576), StackKeys.generate(), cluster)
    f = ChangeFeed(ctx)
    await f.start()
    try:
        yield f
    finally:
        await f.stop()


@pytest.fixture
def db(cluster: Cluster) -> Iterator[psycopg.Connection[Any]]:
    with cluster.connect() as conn:
        yield conn  # type: ignore[misc]


class Sink:
    """Collects deliveries; wait for a count with a timeout (no sleeps)."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self._changed = asyncio.Event()

    def __call__(self, payload: dict[str, Any]) -> None:
        self.items.append(payload)
        self._changed.set()

    async def wait(self, n: int, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
        async def _until() -> None:
            while len(self.items) < n:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(_until(), timeout)
        return self.items

    @property
    def data(self) -> list[dict[str, Any]]:
        return [p["data"] for p in self.items]


def table(db: psycopg.Connection[Any], name: str, ddl: str, *, publish: bool = True) -> None:
    db.execute(f"drop table if exists public.{name} cascade")
    db.execute(f"create table public.{name} ({ddl})")
    db.execute(f"grant all on public.{name} to anon, authenticated, service_role")
    if publish:
        db.execute(f"alter publication supabase_realtime add table public.{name}")


async def sub(
    feed: ChangeFeed,
    params: dict[str, Any] | list[dict[str, Any]],
    claims: dict[str, Any] | None = None,
) -> tuple[Any, Sink]:
    plist = params if isinstance(params, list) else [params]
    sink = Sink()
    key = next(_keys)
    err = await feed.subscribe(key, [(i + 1, p) for i, p in enumerate(plist)], claims or SERVICE, sink)
    assert err is None, err
    return key, sink


async def marker(db: psycopg.Connection[Any], feed: ChangeFeed) -> Sink:
    """Subscribe to a marker table and write to it: once the marker arrives, every change
    committed before it has been dispatched (commit order)."""
    table(db, "zz_marker", "id serial primary key")
    _, sink = await sub(feed, {"event": "*", "schema": "public", "table": "zz_marker"})
    db.execute("insert into zz_marker default values")
    await sink.wait(1)
    return sink


async def test_insert_update_delete_payloads(feed: ChangeFeed, db: psycopg.Connection[Any]) -> None:
    table(db, "todos", "id int8 primary key, task text, done bool")
    _, sink = await sub(feed, {"event": "*", "schema": "public", "table": "todos"})
    db.execute("insert into todos values (1, 'buy milk', false)")
    db.execute("update todos set done = true where id = 1")
    db.execute("delete from todos where id = 1")
    items = await sink.wait(3)
    assert [p["ids"] for p in items] == [[1], [1], [1]]
    ins, upd, dele = (p["data"] for p in items)
    cols = [{"name": "id", "type": "int8"}, {"name": "task", "type": "text"},
            {"name": "done", "type": "bool"}]
    assert list(ins) == ["schema", "table", "commit_timestamp", "type", "errors", "columns",
                         "record"]
    assert ins["schema"] == "public" and ins["table"] == "todos" and ins["type"] == "INSERT"
    assert ins["errors"] is None and ins["columns"] == cols
    assert ins["record"] == {"id": 1, "task": "buy milk", "done": False}
    ts = ins["commit_timestamp"]
    assert len(ts) == 24 and ts[10] == "T" and ts.endswith("Z") and ts[19] == "."
    assert upd["type"] == "UPDATE" and upd["record"] == {"id": 1, "task": "buy milk", "done": True}
    assert upd["old_record"] == {"id": 1}
    assert "record" not in dele and dele["type"] == "DELETE"
    assert dele["old_record"] == {"id": 1} and dele["columns"] == cols
