"""The relay into a three-node JetStream cluster, stream replicated on all three (R3): one node
is killed with SIGKILL while changes flow, the relay carries on through the other two (nats-py
reconnects; a batch not acknowledged is published again), and the stream ends with every
change once - its final state equal to the table."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from supasync.devstack.testing import StackProcess
from supasync.mirror.worker import MirrorTarget
from supasync.relay import Relay, RelayOptions
from supasync.relay.natsserver import NatsCluster
from tests.relay_helpers import (
    WAIT,
    Writer,
    create_table,
    lost,
    nats,
    read_stream,
    settings_for,
    stream_count,
    until,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster() -> Iterator[NatsCluster]:
    d = Path(tempfile.mkdtemp(prefix="supasync-nats-cluster-"))
    c = NatsCluster(d).start()
    try:
        yield c
    finally:
        c.stop()
        shutil.rmtree(d, ignore_errors=True)


async def test_node_killed_while_changes_flow(stack: StackProcess, cluster: NatsCluster,
                                              tmp_path: Path) -> None:
    create_table(stack, "r_cluster", 10)
    urls, name = cluster.urls, "RCLUSTER"
    stop = asyncio.Event()
    relay = Relay(settings_for(stack), [MirrorTarget("public", "r_cluster")],
                  RelayOptions(servers=tuple(urls), stream=name, subject_prefix="rcluster",
                               cache=tmp_path / "relay.sqlite", snapshot=True, replicas=3,
                               quiet=True, progress=False, ack_timeout=3.0, retry_cap=0.5))
    task = asyncio.create_task(relay.run(stop=stop))
    await until(lambda: relay.ready.is_set() or task.done(), "the relay to be ready",
                detail=lambda: str(relay.figures))
    assert not task.done(), task.result()

    nc = await nats.connect(urls)
    try:
        info = await nc.jetstream().stream_info(name)
        assert info.config.num_replicas == 3
        assert str(getattr(info.config.storage, "value", info.config.storage)) == "file"
    finally:
        await nc.close()

    writer = Writer(stack, "r_cluster", 1000)
    alive = urls
    try:
        await until(lambda: _at_least(urls, name, 100), "changes in the stream")
        # Kill the node the relay is connected to: it must move to another one.
        victim = next(n for n in cluster.nodes if n.url == relay.figures.server)
        alive = [u for u in urls if u != victim.url]
        victim.kill()
        before = await stream_count(alive, name)
        await until(lambda: _at_least(alive, name, before + 200),
                    "changes flowing with a node down", detail=lambda: str(relay.figures))
        assert relay.figures.server in alive
    finally:
        writer.stop()
    problems: list[str] = []

    async def converged() -> bool:
        problems[:] = lost(await read_stream(alive, name), stack, "r_cluster")
        return not problems

    await until(converged, "the stream's state to equal the table", WAIT,
                detail=lambda: f"{len(problems)} keys differ, e.g. {problems[:3]}; "
                f"{relay.figures}")
    stop.set()
    assert await asyncio.wait_for(task, WAIT) == 0
    msgs = await read_stream(alive, name)
    assert [k for k, n in Counter(m.msg_id for m in msgs).items() if n > 1] == []
    assert writer.count >= 100


async def _at_least(urls: list[str], name: str, n: int) -> bool:
    return await stream_count(urls, name) >= n
