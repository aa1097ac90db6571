"""examples/relay_worker.py as a user runs it: two worker processes share one durable pull
consumer of the relayed stream; one dies before acknowledging and its messages are delivered
again to the other; together they handle every change."""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from supasync.devstack.testing import StackProcess
from supasync.mirror.worker import MirrorTarget
from supasync.relay import Relay, RelayOptions
from supasync.relay.natsserver import NatsServer
from tests.integration.test_examples import Example
from tests.relay_helpers import WAIT, create_table, settings_for, until

pytestmark = pytest.mark.integration


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    d = Path(tempfile.mkdtemp(prefix="supasync-nats-ex-"))
    server = NatsServer(d).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(d, ignore_errors=True)


def _ids(lines: list[str], table: str) -> set[int]:
    return {int(m.group(1)) for line in lines
            if (m := re.search(rf"INSERT public\.{table} \{{\"id\": (\d+)\}}", line))}


async def test_two_workers_share_the_stream_and_a_crash_is_redelivered(
        supabase_stack: StackProcess, nats_server: NatsServer, tmp_path: Path) -> None:
    table = f"ex_relay_{uuid.uuid4().hex[:8]}"
    create_table(supabase_stack, table, 0)
    stop = asyncio.Event()
    relay = Relay(settings_for(supabase_stack), [MirrorTarget("public", table)],
                  RelayOptions(servers=(nats_server.url,), stream="EXAMPLE",
                               subject_prefix="ex", cache=tmp_path / "relay.sqlite",
                               quiet=True, progress=False))
    task = asyncio.create_task(relay.run(stop=stop))
    workers: list[Example] = []
    try:
        await until(lambda: relay.ready.is_set() or task.done(), "the relay")
        assert not task.done(), task.result()
        common = ["--to", nats_server.url, "--stream", "EXAMPLE", "--subject",
                  f"ex.public.{table}", "--durable", "workers", "--ack-wait", "2"]
        w1 = Example("relay_worker.py", [*common, "--name", "w1", "--crash-after", "3"],
                     supabase_stack, tmp_path)
        workers.append(w1)
        await asyncio.to_thread(w1.expect, "consuming")
        w2 = Example("relay_worker.py", [*common, "--name", "w2"], supabase_stack, tmp_path)
        workers.append(w2)
        await asyncio.to_thread(w2.expect, "consuming")
        for i in range(1, 31):
            supabase_stack.sql(f"insert into {table} (id, title) values ({i}, 'job {i}')")
        await asyncio.to_thread(w1.expect, "crashing")
        assert await asyncio.to_thread(w1.proc.wait, WAIT) == 3

        def everything_handled() -> bool:
            for w in workers:
                while not w.lines.empty():
                    w.seen.append(w.lines.get())
            return _ids(w1.seen + w2.seen, table) == set(range(1, 31))

        await until(everything_handled, "every change handled by one of the workers",
                    detail=lambda: "\n".join(w1.seen + w2.seen))
        assert any("(delivery 2)" in line for line in w2.seen), "\n".join(w2.seen)
        assert _ids(w2.seen, table), "the second worker handled changes"
        assert w2.proc.poll() is None, "the worker survived its idle fetches"
        assert w2.interrupt() == 0
    finally:
        for w in workers:
            w.kill()
        stop.set()
        assert await asyncio.wait_for(task, WAIT) == 0
