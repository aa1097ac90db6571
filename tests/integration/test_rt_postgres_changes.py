"""postgres_changes end to end: unmodified realtime-py (and a raw V1 socket) against the local
stack, payloads compared field by field with realtime-protocol.md §5.2."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets
from realtime import AsyncRealtimeClient

from supasync.devstack.testing import StackProcess

pytestmark = pytest.mark.integration

WAIT = 15.0
USER_A = "6f1e0000-0000-0000-0000-00000000000a"
USER_B = "6f1e0000-0000-0000-0000-00000000000b"


@pytest.fixture(scope="module")
def supabase_stack(stack: StackProcess) -> StackProcess:
    """This module's own stack (tests/conftest.py) under the plugin's fixture name."""
    return stack


def make_table(stack: StackProcess, name: str, ddl: str) -> None:
    stack.sql(f"drop table if exists public.{name} cascade")
    stack.sql(f"create table public.{name} ({ddl})")
    stack.sql(f"grant all on public.{name} to anon, authenticated, service_role")
    stack.sql(f"alter publication supabase_realtime add table public.{name}")


class Listener:
    """One realtime-py channel with postgres_changes bindings; changes go to a queue."""

    def __init__(self, stack: StackProcess, token: str) -> None:
        self.client = AsyncRealtimeClient(stack.realtime_url, token)
        self.changes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.system: asyncio.Queue[str] = asyncio.Queue()

    async def subscribe(self, topic: str, **binding: Any) -> None:
        await self.client.connect()
        channel = self.client.channel(topic)
        event = binding.pop("event", "*")
        channel.on_postgres_changes(event, lambda p: self.changes.put_nowait(dict(p)), **binding)
        channel.on_system(lambda p: self.system.put_nowait(_message(p)))
        await channel.subscribe()
        message = await asyncio.wait_for(self.system.get(), WAIT)
        assert message == "Subscribed to PostgreSQL"

    async def next(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.changes.get(), WAIT)

    async def close(self) -> None:
        await self.client.close()


def _message(p: Any) -> str:
    if isinstance(p, dict):
        return str(p.get("message"))
    return str(p.message)


async def test_insert_update_delete_through_realtime_py(supabase_stack: StackProcess) -> None:
    s = supabase_stack
    make_table(s, "todos", "id int8 primary key, task text, done bool,"
                           " created_at timestamptz not null default now(), meta jsonb")
    listener = Listener(s, s.service_role_key)
    try:
        await listener.subscribe("pc-todos", table="todos", schema="public")
        s.sql("insert into todos (id, task, done, created_at, meta) values"
              " (1, 'buy milk', false, '2026-08-21 10:15:30.123456+00', '{\"b\": 1, \"a\": 2.50}')")
        s.sql("update todos set done = true where id = 1")
        s.sql("delete from todos where id = 1")
        ins, upd, dele = [await listener.next() for _ in range(3)]
    finally:
        await listener.close()
    columns = [{"name": "id", "type": "int8"}, {"name": "task", "type": "text"},
               {"name": "done", "type": "bool"}, {"name": "created_at", "type": "timestamptz"},
               {"name": "meta", "type": "jsonb"}]
    record = {"id": 1, "task": "buy milk", "done": False,
              "created_at": "2026-08-21T10:15:30.123456+00:00", "meta": {"a": 2.5, "b": 1}}
    for payload in (ins, upd, dele):
        assert isinstance(payload["ids"], list) and len(payload["ids"]) == 1
        data = payload["data"]
        assert data["schema"] == "public" and data["table"] == "todos"
        assert data["errors"] is None and data["columns"] == columns
        ts = data["commit_timestamp"]
        assert len(ts) == 24 and ts[10] == "T" and ts.endswith("Z")
    assert ins["data"]["type"] == "INSERT" and ins["data"]["record"] == record
    assert "old_record" not in ins["data"]
    assert upd["data"]["type"] == "UPDATE"
    assert upd["data"]["record"] == {**record, "done": True}
    assert upd["data"]["old_record"] == {"id": 1}
    assert dele["data"]["type"] == "DELETE" and dele["data"]["old_record"] == {"id": 1}
    assert "record" not in dele["data"]


async def test_filter_and_event_through_realtime_py(supabase_stack: StackProcess) -> None:
    s = supabase_stack
    make_table(s, "items", "id int primary key, tag text")
    listener = Listener(s, s.anon_key)
    try:
        await listener.subscribe("pc-items", event="INSERT", table="items", schema="public",
                                 filter="tag=in.(red,blue)")
        s.sql("insert into items values (1, 'green'), (2, 'red')")
        s.sql("update items set tag = 'blue' where id = 1")
        s.sql("insert into items values (3, 'blue')")
        first, second = await listener.next(), await listener.next()
    finally:
        await listener.close()
    assert [first["data"]["record"]["id"], second["data"]["record"]["id"]] == [2, 3]
    assert {first["data"]["type"], second["data"]["type"]} == {"INSERT"}


async def test_rls_per_user_through_realtime_py(supabase_stack: StackProcess) -> None:
    s = supabase_stack
    make_table(s, "notes", "id int primary key, owner uuid not null, body text")
    s.sql("alter table notes enable row level security")
    s.sql("create policy own on notes for select to authenticated using (owner = auth.uid())")
    a = Listener(s, s.mint({"role": "authenticated", "sub": USER_A}))
    b = Listener(s, s.mint({"role": "authenticated", "sub": USER_B}))
    try:
        await a.subscribe("pc-notes-a", table="notes", schema="public")
        await b.subscribe("pc-notes-b", table="notes", schema="public")
        s.sql("insert into notes values (1, %s, 'for a')", (USER_A,))
        s.sql("insert into notes values (2, %s, 'for b')", (USER_B,))
        got_a, got_b = await a.next(), await b.next()
        assert got_a["data"]["record"]["id"] == 1 and got_b["data"]["record"]["id"] == 2
        s.sql("delete from notes where id = 1")
        # DELETE skips RLS: both get it, with the primary key only
        del_a, del_b = await a.next(), await b.next()
        assert del_a["data"]["old_record"] == del_b["data"]["old_record"] == {"id": 1}
        assert a.changes.empty() and b.changes.empty()
    finally:
        await a.close()
        await b.close()


async def test_system_errors_on_raw_socket(supabase_stack: StackProcess) -> None:
    s = supabase_stack
    make_table(s, "errs", "id int primary key, n int")
    url = f"ws://127.0.0.1:{s.port}/realtime/v1/websocket?apikey={s.anon_key}&vsn=1.0.0"
    cases = [
        ({"event": "*", "schema": "public", "table": "doesnotexist"},
         "Unable to subscribe to changes with given parameters. Please check Realtime is "
         "enabled for the given connect parameters: [event: *, schema: public, table: "
         "doesnotexist, filters: [], select: nil]"),
        ({"event": "*", "schema": "public", "table": "errs", "filter": "nope=eq.1"},
         "Unable to subscribe to changes with given parameters. An exception happened so "
         "please check your connect parameters: [event: *, schema: public, table: errs, "
         'filters: [{"nope", "eq", "1", false}], select: nil]. Exception: ERROR P0001 '
         "(raise_exception) invalid column for filter nope"),
        ({"event": "*", "schema": "public", "table": "errs", "filter": "n=foo.1"},
         'Error parsing `filter` params: ["foo", "1"]'),
    ]
    async with websockets.connect(url) as ws:
        for i, (params, text) in enumerate(cases):
            topic = f"realtime:pc-err-{i}"
            await ws.send(json.dumps({"topic": topic, "event": "phx_join", "ref": str(i),
                                      "payload": {"config": {"postgres_changes": [params]}}}))
            system = None
            while system is None:
                msg = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
                if msg["topic"] == topic and msg["event"] == "system":
                    system = msg["payload"]
            assert system == {"extension": "postgres_changes", "status": "error",
                              "message": text, "channel": f"pc-err-{i}"}


async def test_numeric_keeps_exact_digits_on_the_wire(supabase_stack) -> None:  # type: ignore[no-untyped-def]
    """numeric 1.50 reaches the client as the JSON number 1.50, as to_jsonb renders it."""
    import json as _json

    import websockets

    stack = supabase_stack
    stack.sql("create table if not exists public.exact_num (id int primary key, n numeric,"
              " f float8); alter publication supabase_realtime add table public.exact_num")
    url = (f"ws://127.0.0.1:{stack.port}/realtime/v1/websocket"
           f"?apikey={stack.service_role_key}&vsn=1.0.0")
    async with websockets.connect(url) as ws:
        await ws.send(_json.dumps({"topic": "realtime:exact", "event": "phx_join", "ref": "1",
                                   "payload": {"config": {"postgres_changes": [
                                       {"event": "INSERT", "schema": "public",
                                        "table": "exact_num"}]}}}))
        while True:
            msg = _json.loads(await asyncio.wait_for(ws.recv(), 10))
            if msg["event"] == "system":
                break
        stack.sql("insert into exact_num values (1, 1.50, 0.1)")
        while True:
            raw = await asyncio.wait_for(ws.recv(), 10)
            if '"postgres_changes"' in raw:
                break
    assert '"n":1.50' in raw
    assert '"f":0.1' in raw
