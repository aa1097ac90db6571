"""Benchmark: the local Realtime server's commit-to-client latency and sustained delivery.

Not a test: it prints figures and ratios. Run: ``.venv/bin/python bench/realtime_delivery.py``.

* Latency at a paced write rate (200/s and 2,000/s): each row carries ``sent_at =
  clock_timestamp()`` (taken inside the writing transaction, microsecond precision); the client
  notes arrival time; latency = arrival - sent_at, so it includes the commit.
* Sustained delivery: N rows written as fast as one connection can, timed until the last one
  reached 1 and 10 subscribers (each a raw v1 websocket, the cheapest possible client).
* Baseline measured in the same run: draining the same number of changes straight from a
  logical slot with ``pg_logical_slot_get_binary_changes`` (pgoutput), i.e. the database's own
  decoding rate with no server, no RLS and no JSON. The ratio says how close the server gets to
  that floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import threading
import time
from datetime import datetime
from typing import Any

import psycopg
import websockets

from supasync.devstack.testing import StackProcess

TABLE = "bench_rt"


def setup(stack: StackProcess) -> None:
    stack.sql(f"""
        drop table if exists public.{TABLE};
        create table public.{TABLE} (id bigint generated always as identity primary key,
                                     payload text, sent_at timestamptz not null);
        alter publication supabase_realtime add table public.{TABLE};
    """)


class Subscriber:
    """A raw v1 websocket subscriber recording arrival times of postgres_changes."""

    def __init__(self, stack: StackProcess, name: str) -> None:
        self.url = (f"ws://127.0.0.1:{stack.port}/realtime/v1/websocket"
                    f"?apikey={stack.service_role_key}&vsn=1.0.0")
        self.name = name
        self.arrivals: list[tuple[float, dict[str, Any]]] = []
        self.ready = asyncio.Event()
        self.count_target = 0
        self.done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.ready.wait(), 30)

    async def _run(self) -> None:
        async with websockets.connect(self.url, max_size=None) as ws:
            await ws.send(json.dumps({
                "topic": f"realtime:{self.name}", "event": "phx_join", "ref": "1",
                "payload": {"config": {"postgres_changes": [
                    {"event": "INSERT", "schema": "public", "table": TABLE}]}},
            }))
            async for raw in ws:
                now = time.time()
                msg = json.loads(raw)
                ev = msg.get("event")
                if ev == "system" and msg["payload"].get("message") == "Subscribed to PostgreSQL":
                    self.ready.set()
                elif ev == "postgres_changes":
                    self.arrivals.append((now, msg["payload"]["data"]["record"]))
                    if self.count_target and len(self.arrivals) >= self.count_target:
                        self.done.set()

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()


def writer(db_url: str, rate: float, count: int, batch: int = 1) -> None:
    """Insert ``count`` rows paced at ``rate`` per second (0 = as fast as possible); with
    ``batch`` > 1, that many rows per statement (each row is still one change)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        if batch > 1:
            for start_i in range(0, count, batch):
                n = min(batch, count - start_i)
                conn.execute(f"insert into {TABLE} (payload, sent_at) select 'row ' || g,"
                             " clock_timestamp() from generate_series(1, %s) g", (n,))
            return
        start = time.perf_counter()
        for i in range(count):
            if rate:
                target = start + i / rate
                delay = target - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)  # pacing the load generator, not synchronisation
            conn.execute(f"insert into {TABLE} (payload, sent_at) values (%s, clock_timestamp())",
                         (f"row {i}",))


def latencies(sub: Subscriber) -> list[float]:
    out = []
    for at, rec in sub.arrivals:
        sent = datetime.fromisoformat(rec["sent_at"]).timestamp()
        out.append((at - sent) * 1000)
    return out


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


async def latency_run(stack: StackProcess, rate: int, seconds: float) -> dict[str, float]:
    sub = Subscriber(stack, f"lat{rate}")
    await sub.start()
    count = int(rate * seconds)
    sub.count_target = count
    await asyncio.to_thread(writer, stack.db_url, rate, count)
    await asyncio.wait_for(sub.done.wait(), 60)
    await sub.stop()
    lat = latencies(sub)
    return {"rate": rate, "n": len(lat), "p50": statistics.median(lat), "p99": pct(lat, 0.99)}


async def throughput_run(stack: StackProcess, subscribers: int, count: int) -> dict[str, float]:
    subs = [Subscriber(stack, f"tp{subscribers}_{i}") for i in range(subscribers)]
    for s in subs:
        await s.start()
        s.count_target = count
    t0 = time.perf_counter()
    th = threading.Thread(target=writer, args=(stack.db_url, 0, count, 200))
    th.start()
    await asyncio.to_thread(th.join)
    write_s = time.perf_counter() - t0
    await asyncio.wait_for(asyncio.gather(*(s.done.wait() for s in subs)), 300)
    total = time.perf_counter() - t0
    for s in subs:
        await s.stop()
    return {"subscribers": subscribers, "changes": count, "write_s": write_s,
            "delivered_per_s_per_sub": count / total}


def baseline_slot_drain(stack: StackProcess, count: int) -> float:
    """Changes/s of pgoutput decoding alone, on the same database and the same rows."""
    with psycopg.connect(stack.db_url, autocommit=True) as conn:
        conn.execute(
            "select pg_create_logical_replication_slot('bench_baseline', 'pgoutput', true)"
        )
        writer(stack.db_url, 0, count, 200)
        t0 = time.perf_counter()
        got = conn.execute(
            "select count(*) from pg_logical_slot_get_binary_changes('bench_baseline', NULL, NULL,"
            " 'proto_version', '1', 'publication_names', 'supabase_realtime')").fetchone()
        dt = time.perf_counter() - t0
    assert got is not None
    return count / dt


async def main_async(args: argparse.Namespace) -> None:
    with StackProcess() as stack:
        setup(stack)
        print("commit-to-client latency (raw v1 websocket subscriber):")
        for rate in (200, 2000):
            r = await latency_run(stack, rate, args.seconds)
            print(f"  {rate:>5}/s  n={r['n']:>6}  p50={r['p50']:.1f} ms  p99={r['p99']:.1f} ms")
        base = baseline_slot_drain(stack, args.count)
        print(f"baseline: pgoutput slot drain alone: {base:,.0f} changes/s")
        print("sustained delivery:")
        for n in (1, 10):
            r = await throughput_run(stack, n, args.count)
            print(f"  {n:>2} subscriber(s): {r['delivered_per_s_per_sub']:,.0f} changes/s each "
                  f"(writer alone took {r['write_s']:.2f} s for {args.count}); "
                  f"= {100 * r['delivered_per_s_per_sub'] / base:.2f}% of the slot-drain floor")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=5.0, help="duration of each latency run")
    p.add_argument("--count", type=int, default=20000, help="rows for the throughput runs")
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
