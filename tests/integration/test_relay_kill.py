"""``supasync relay`` killed with SIGKILL again and again while changes flow loses nothing and
stores nothing twice: after the last restart, the stream's final state equals the table and no
change is in the stream twice; SIGTERM then exits 0."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from supasync.devstack.testing import StackProcess
from supasync.relay.natsserver import NatsServer
from tests.relay_helpers import (
    Writer,
    create_table,
    env_for,
    lost,
    read_stream,
    stream_count,
    until,
)

pytestmark = pytest.mark.integration

KILLS = 3


@pytest.fixture(scope="module")
def nats_server() -> Iterator[NatsServer]:
    d = Path(tempfile.mkdtemp(prefix="supasync-nats-kill-"))
    server = NatsServer(d).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(d, ignore_errors=True)


class RelayProcess:
    """``python -m supasync.cli relay ...`` with the stack's settings in its environment."""

    def __init__(self, stack: StackProcess, url: str, cache: Path, cwd: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SUPABASE_", "SUPASYNC_"))}
        env.update(env_for(stack))
        self.lines: list[str] = []
        self.relaying = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "supasync.cli", "relay", "--to", url, "--table",
             "public.r_kill", "--stream", "RKILL", "--subject-prefix", "rkill", "--cache",
             str(cache), "--snapshot", "--status-interval", "1", "--env-file", "/dev/null"],
            env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if "publishing to" in line:
                self.relaying.set()

    def tail(self) -> str:
        return "".join(self.lines[-10:])


async def test_sigkill_loses_nothing(stack: StackProcess, nats_server: NatsServer,
                                     tmp_path: Path) -> None:
    create_table(stack, "r_kill", 20)
    url, cache = nats_server.url, tmp_path / "relay.sqlite"
    proc = RelayProcess(stack, url, cache, tmp_path)
    try:
        await until(proc.relaying.is_set, "the relay to start relaying", detail=proc.tail)
    except BaseException:
        proc.proc.kill()
        raise
    writer = Writer(stack, "r_kill", 1000)
    try:
        for _ in range(KILLS):
            before = await stream_count(url, "RKILL")
            await until(lambda b=before: _grew(url, b + 30), "more changes in the stream",
                        detail=proc.tail)
            proc.proc.send_signal(signal.SIGKILL)
            proc.proc.wait(30)
            proc = RelayProcess(stack, url, cache, tmp_path)
            await until(proc.relaying.is_set, "the restarted relay", detail=proc.tail)
    except BaseException:
        proc.proc.kill()  # no relay left behind by a failed test
        raise
    finally:
        writer.stop()
    try:
        problems: list[str] = []

        async def converged() -> bool:
            problems[:] = lost(await read_stream(url, "RKILL"), stack, "r_kill")
            return not problems

        await until(converged, "the stream's state to equal the table",
                    detail=lambda: f"{len(problems)} keys differ, e.g. {problems[:3]}; "
                    f"{proc.tail()}")
    finally:
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(60) == 0, proc.tail()
    msgs = await read_stream(url, "RKILL")
    # No change twice: a change is its key, operation class (insert and update are one: the
    # operation is the store's transition, and an insert that a repair got to first is
    # journaled as an update) and commit time, and its occurrence among those - the message id.
    twice = [k for k, n in Counter(m.msg_id for m in msgs).items() if n > 1]
    assert twice == []
    changes = Counter((m.pk, m.op == "DELETE", m.commit) for m in msgs if m.commit)
    assert max(changes.values()) <= 2  # an insert and an update in one millisecond
    assert writer.count > 30 * KILLS


async def _grew(url: str, n: int) -> bool:
    return await stream_count(url, "RKILL") >= n
