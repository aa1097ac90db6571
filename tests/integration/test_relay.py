"""The relay against the local stack and a real NATS server (one node): every change exactly
once in the stream - across a relay's restart, with two relays publishing at once, and after
NATS was unreachable for a while; the stream created when missing, checked when present."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from supasync.core.errors import ConfigError
from supasync.devstack.testing import StackProcess
from supasync.mirror.worker import MirrorTarget
from supasync.relay import Relay, RelayOptions
from supasync.relay.natsserver import NatsServer, free_port
from tests.relay_helpers import (
    WAIT,
    create_table,
    lost,
    read_stream,
    settings_for,
    stream_count,
    until,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def nats_server() -> Iterator[NatsServer]:
    d = Path(tempfile.mkdtemp(prefix="supasync-nats-"))
    server = NatsServer(d).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(d, ignore_errors=True)


class Running:
    """A relay running in this test's event loop."""

    def __init__(self, stack: StackProcess, table: str, options: RelayOptions) -> None:
        self.stop_event = asyncio.Event()
        self.relay = Relay(settings_for(stack), [MirrorTarget("public", table)], options)
        self.task = asyncio.create_task(self.relay.run(stop=self.stop_event))

    async def ready(self) -> None:
        ready = asyncio.create_task(self.relay.ready.wait())
        done, _ = await asyncio.wait({ready, self.task}, timeout=WAIT,
                                     return_when=asyncio.FIRST_COMPLETED)
        if self.task in done:
            self.task.result()
            raise AssertionError("the relay ended before it was ready")
        if ready not in done:
            ready.cancel()
            raise AssertionError(f"the relay was not ready in {WAIT}s: "
                                 f"{self.relay.figures}")

    async def stop(self) -> int:
        self.stop_event.set()
        return await asyncio.wait_for(self.task, WAIT)


def options(server_urls: list[str], stream: str, cache: Path | None, **kw: Any) -> RelayOptions:
    return RelayOptions(servers=tuple(server_urls), stream=stream, subject_prefix=stream.lower(),
                        cache=cache, quiet=True, progress=False, status_interval=0.5,
                        ack_timeout=3.0, retry_cap=0.5, **kw)


def ops(messages: list[Any]) -> Counter[tuple[str, tuple[Any, ...]]]:
    return Counter((m.op, m.pk) for m in messages)


async def test_exactly_once_across_restart_and_two_relays(
        stack: StackProcess, nats_server: NatsServer, tmp_path: Path) -> None:
    create_table(stack, "r_once", 50)
    url, stream = [nats_server.url], "RONCE"
    cache_a = tmp_path / "a.sqlite"
    a = Running(stack, "r_once", options(url, stream, cache_a, snapshot=True))
    await a.ready()
    await until(lambda: _count_is(url, stream, 50), "the snapshot in the stream")
    msgs = await read_stream(url, stream)
    assert len(msgs) == 50 and {m.op for m in msgs} == {"SNAPSHOT"}
    assert msgs[0].subject == "ronce.public.r_once"

    # Live changes: each (op, key) happens once, in its own transaction.
    for i in range(51, 101):
        stack.sql(f"insert into r_once (id, title) values ({i}, 'new {i}')")
    stack.sql("update r_once set title = title || ' upd' where id <= 20")  # one transaction
    for i in range(21, 31):
        stack.sql(f"delete from r_once where id = {i}")
    expected = 50 + 50 + 20 + 10
    await until(lambda: _count_is(url, stream, expected), f"{expected} messages",
                detail=lambda: str(a.relay.figures))
    assert await a.stop() == 0

    # Stopped: changes wait in the database; a restart on the same cache publishes them.
    for i in range(101, 121):
        stack.sql(f"insert into r_once (id, title) values ({i}, 'while away {i}')")
    a = Running(stack, "r_once", options(url, stream, cache_a))
    await a.ready()
    expected += 20
    await until(lambda: _count_is(url, stream, expected), f"{expected} messages after restart",
                detail=lambda: str(a.relay.figures))

    # A second relay (its own cache) publishing the same changes at once.
    b = Running(stack, "r_once", options(url, stream, tmp_path / "b.sqlite"))
    await b.ready()
    for i in range(121, 221):
        stack.sql(f"insert into r_once (id, title) values ({i}, 'both {i}')")
    for i in range(121, 141):
        stack.sql(f"update r_once set n = 1 where id = {i}")
    expected += 120
    await until(lambda: _count_is(url, stream, expected), f"{expected} messages from two relays",
                detail=lambda: f"{a.relay.figures} / {b.relay.figures}")
    await until(lambda: _both_caught_up(a, b), "both relays to catch up",
                detail=lambda: f"{a.relay.figures} / {b.relay.figures}")
    assert await stream_count(url, stream) == expected
    assert await a.stop() == 0
    assert await b.stop() == 0
    msgs = await read_stream(url, stream)
    counts = ops(msgs)
    assert [k for k, n in counts.items() if n > 1] == []
    assert len(msgs) == expected
    assert not lost(msgs, stack, "r_once")
    dup = sum(t.duplicates for r in (a, b) for t in r.relay.figures.tables)
    assert dup > 0, "the second relay's messages were acknowledged as duplicates"
    # Every live change carries its commit time; the snapshot rows do not.
    assert all(m.commit for m in msgs if m.origin == "live")
    upd = [m for m in msgs if m.op == "UPDATE" and m.pk == (5,)]
    assert upd and upd[0].row is not None and upd[0].row["title"] == "row 5 upd"


def _json_status(out: io.StringIO, nats_state: str) -> bool:
    for line in out.getvalue().splitlines():
        record = json.loads(line)  # stdout carries nothing but JSON
        if record.get("event") == "relay_status" and record["nats"] == nats_state:
            t = record["tables"][0]
            if t["pending"] == 50 and t["lag_s"] > 0 and t["position"] is not None:
                return True
    return False


async def _count_is(url: list[str], stream: str, n: int) -> bool:
    got = await stream_count(url, stream)
    assert got <= n, f"{got} messages in the stream, expected {n}: a duplicate"
    return got == n


def _both_caught_up(a: Running, b: Running) -> bool:
    return _journal_done(a) and _journal_done(b)


def _journal_done(r: Running) -> bool:
    import sqlite3

    assert r.relay.cache is not None
    conn = sqlite3.connect(f"file:{r.relay.cache}?mode=ro", uri=True)
    try:
        newest = conn.execute("select max(seq) from _supasync_journal where tbl = 'r_once'"
                              ).fetchone()[0] or 0
        pos = conn.execute("select seq from _supasync_relay").fetchone()
    finally:
        conn.close()
    return pos is not None and pos[0] >= newest and newest > 0


async def test_nats_unreachable_then_back_catches_up(stack: StackProcess,
                                                    tmp_path: Path) -> None:
    create_table(stack, "r_outage", 5)
    server = NatsServer(tmp_path / "nats").start()
    url, stream = [server.url], "ROUTAGE"
    port = free_port()
    out = io.StringIO()
    try:
        r = Running(stack, "r_outage", options(url, stream, tmp_path / "c.sqlite",
                                               metrics_port=port, json_logs=True, out=out))
        await r.ready()
        server.stop()
        await until(lambda: r.relay.figures.nats == "disconnected", "the relay to notice")
        for i in range(6, 56):
            stack.sql(f"insert into r_outage (id, title) values ({i}, 'down {i}')")
        # The database is still followed into the store while NATS is away.
        await until(lambda: r.relay.figures.tables[0].pending == 50, "50 changes pending",
                    detail=lambda: str(r.relay.figures))
        assert r.relay.figures.tables[0].lag_s(time.time()) > 0
        # The lag and the position, in the metrics and the --json status records.
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
        assert 'supasync_relay_pending{table="public.r_outage"} 50' in metrics
        assert "supasync_relay_connected 0" in metrics
        assert 'supasync_mirror_state{table="public.r_outage",state="live"} 1' in metrics
        await until(lambda: _json_status(out, "disconnected"), "a JSON status record",
                    detail=lambda: out.getvalue()[-1500:])
        server.start()
        await until(lambda: _count_is(url, stream, 50), "the 50 changes in the stream",
                    detail=lambda: str(r.relay.figures))
        await until(lambda: r.relay.figures.tables[0].pending == 0, "nothing pending")
        assert await r.stop() == 0
        msgs = await read_stream(url, stream)
        assert sorted(m.pk for m in msgs) == [(i,) for i in range(6, 56)]
    finally:
        server.stop()


async def test_existing_stream_that_does_not_fit_is_a_config_error(
        stack: StackProcess, nats_server: NatsServer, tmp_path: Path) -> None:
    import nats

    create_table(stack, "r_bad", 1)
    nc = await nats.connect(nats_server.url)
    try:
        await nc.jetstream().add_stream(name="ROTHER", subjects=["elsewhere.>"])
    finally:
        await nc.close()
    out = io.StringIO()
    opts = options([nats_server.url], "ROTHER", tmp_path / "x.sqlite")
    opts.subject_prefix = "mine"
    opts.err = out
    r = Running(stack, "r_bad", opts)
    with pytest.raises(ConfigError, match=r"does not take mine\.public\.r_bad"):
        await asyncio.wait_for(r.task, WAIT)
