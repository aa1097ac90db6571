"""Benchmark: supasync's handler throughput and commit-to-handler latency against raw realtime-py.

Not a test: it prints figures and ratios. Run::

    .venv/bin/python bench/client_throughput.py                 # defaults: a few minutes
    .venv/bin/python bench/client_throughput.py --count 100000 --rate 1000 --seconds 30
    .venv/bin/python bench/client_throughput.py --profile /tmp/prof   # cProfile the supasync side

One local stack, one table ``bench_tp (id, payload, sent_at)``. Each *round* runs two consumers
subscribed at once to the same INSERT stream, each in its **own process** (multiprocessing,
spawn): the baseline, raw realtime-py (``AsyncRealtimeClient``, a plain sync callback on
``on_postgres_changes``), and one supasync configuration. Why separate processes and not
alternating runs: both consumers then see exactly the same server output at the same moment
(same batches, same server load), and neither one's event loop steals time from the other's;
alternating runs would compare two different streams on a shared, noisy 2-core machine.
The raw consumer is measured again in every round, so each ratio is against its own baseline.

Rounds (supasync side):

* ``off/sync``   - ``Realtime(..., repair="off")``, a sync handler (the default: it runs in a
  worker thread, one ``asyncio.to_thread`` per batch of queued changes). The transport path.
* ``auto/sync``  - ``repair="auto"`` (the default): the caching gate keeps every live change in
  the client's SQLite cache file (one transaction per burst).
* ``off/async``  - ``repair="off"``, an ``async def`` handler (runs on the loop).
* ``off/inline`` - ``repair="off"``, ``sync_handlers="inline"`` (sync handler on the loop).

Phases of each round:

* latency: ``--rate`` rows/s for ``--seconds`` s, one row per INSERT statement, each stamped
  ``sent_at = clock_timestamp()`` inside its transaction; latency = arrival in the handler -
  sent_at (so it includes the commit and the server). p50 / p99 per consumer.
* throughput: ``--count`` rows written as fast as one connection can, ``--batch`` rows per
  multi-row INSERT; rate = rows / (last arrival in the handler - start of writing).

Consumers report what they got, by row ``id`` (the primary key): the writers return the ids they
wrote (``returning id``), and :func:`count_deliveries` compares the two. A change is *lost* only
when its id never arrived and a *duplicate* only when an id arrived twice (``sent_at`` cannot
tell rows apart: the rows of one multi-row INSERT share its microsecond). A consumer that stops
receiving for ``--idle`` s ends the phase with what arrived (supasync's bounded intake drops
changes and rebuilds the subscription when its handlers fall behind: with ``repair="off"`` those
changes are gone, and the figures say so).
Each consumer also reports its CPU time per change (``time.process_time()``, every thread of its
process), the figure the machine's load does not move.
Targets: supasync >= 0.9x raw throughput, p99 <= 1.2x raw.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import multiprocessing as mp
import os
import pstats
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from multiprocessing.connection import Connection
from typing import Any

import psycopg

from supasync.devstack.testing import StackProcess

TABLE = "bench_tp"

ROUNDS = {
    "off/sync": {"repair": "off", "handler": "sync", "sync_handlers": "thread"},
    "auto/sync": {"repair": "auto", "handler": "sync", "sync_handlers": "thread"},
    "off/async": {"repair": "off", "handler": "async", "sync_handlers": "thread"},
    "off/inline": {"repair": "off", "handler": "sync", "sync_handlers": "inline"},
}


def setup(stack: StackProcess) -> None:
    stack.sql(f"""
        drop table if exists public.{TABLE};
        create table public.{TABLE} (id bigint generated always as identity primary key,
                                     payload text, sent_at timestamptz not null);
        alter publication supabase_realtime add table public.{TABLE};
    """)


# --------------------------------------------------------------------------- consumers
#
# A consumer process: connect, subscribe, say "ready"; then for each phase ("phase", n) collect
# n arrivals (or stop after `idle` seconds without one) and answer with the arrival times, the
# rows' ids and their sent_at values. Handlers only append (time, id, sent_at): the cheapest
# possible work.

Arrival = tuple[float, int, str]  # (arrival time, row id, sent_at)


class Arrivals:
    def __init__(self) -> None:
        self.items: list[Arrival] = []


async def _collect(conn: Connection, arrivals: Arrivals, idle: float,
                   extra: Any = None) -> None:
    while True:
        msg = await asyncio.to_thread(conn.recv)
        if msg[0] == "stop":
            return
        _, target = msg
        arrivals.items = []
        cpu0 = time.process_time()  # every thread of this consumer process
        last_n, last_change = 0, time.monotonic()
        while len(arrivals.items) < target:
            await asyncio.sleep(0.05)  # polling the count; arrival times are taken in handlers
            n = len(arrivals.items)
            if n != last_n:
                last_n, last_change = n, time.monotonic()
            elif time.monotonic() - last_change > idle:
                break
        items, arrivals.items = arrivals.items, []
        cpu = time.process_time() - cpu0
        stats = extra() if callable(extra) else {}
        conn.send(("result", items, stats, cpu))


async def _raw_consumer(port: int, key: str, conn: Connection, idle: float) -> None:
    from realtime import AsyncRealtimeClient

    arrivals = Arrivals()

    def on_insert(payload: Any) -> None:
        record = payload["data"]["record"]
        arrivals.items.append((time.time(), record["id"], record["sent_at"]))

    ready = asyncio.Event()

    def on_system(payload: Any) -> None:
        if "Subscribed to PostgreSQL" in str(getattr(payload, "message", "")):
            ready.set()

    client = AsyncRealtimeClient(f"ws://127.0.0.1:{port}/realtime/v1", token=key)
    await client.connect()
    channel = client.channel("bench-raw")
    channel.on_postgres_changes("INSERT", on_insert, table=TABLE, schema="public")
    channel.on_system(on_system)
    await channel.subscribe()
    await asyncio.wait_for(ready.wait(), 60)
    conn.send(("ready",))
    await _collect(conn, arrivals, idle)
    await client.close()


async def _supasync_consumer(port: int, key: str, conn: Connection, idle: float,
                             spec: dict[str, str], cache_dir: str) -> None:
    from supasync import Realtime

    arrivals = Arrivals()
    items_ref = arrivals

    # Live changes and, with repair on, replayed ones (a gap's INSERTs come back as "replay"
    # rows); the first snapshot of the (truncated) table is empty.
    def on_sync(change: Any) -> None:
        if change.origin != "snapshot":
            items_ref.items.append((time.time(), change.new["id"], change.new["sent_at"]))

    async def on_async(change: Any) -> None:
        if change.origin != "snapshot":
            items_ref.items.append((time.time(), change.new["id"], change.new["sent_at"]))

    handler = on_async if spec["handler"] == "async" else on_sync
    rt = Realtime(f"http://127.0.0.1:{port}", key, token=key, repair=spec["repair"],  # type: ignore[arg-type]
                  sync_handlers=spec["sync_handlers"],  # type: ignore[arg-type]
                  cache=os.path.join(cache_dir, "cache.sqlite3"))
    sub = rt.subscribe(TABLE, events="INSERT", handler=handler)
    async with rt:
        await rt.wait_synced(120)  # live, and the (empty) first snapshot handed over
        conn.send(("ready",))

        def stats() -> dict[str, Any]:
            s = sub.stats
            return {"received": s.received, "dropped_overflow": s.dropped_overflow,
                    "delivered": s.delivered}

        await _collect(conn, arrivals, idle, stats)


def consumer_main(kind: str, port: int, key: str, conn: Connection, idle: float,
                  spec: dict[str, str] | None, cache_dir: str, profile: str | None) -> None:
    if kind == "raw":
        coro = _raw_consumer(port, key, conn, idle)
    else:
        assert spec is not None
        coro = _supasync_consumer(port, key, conn, idle, spec, cache_dir)
    if profile:
        prof = cProfile.Profile()
        prof.enable()
        asyncio.run(coro)
        prof.disable()
        prof.dump_stats(profile)
    else:
        asyncio.run(coro)


# --------------------------------------------------------------------------- writers


def write_paced(db_url: str, rate: float, count: int) -> list[int]:
    """Insert *count* rows at *rate* rows/s, one per statement; returns their ids."""
    ids: list[int] = []
    with psycopg.connect(db_url, autocommit=True) as conn:
        start = time.perf_counter()
        for i in range(count):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)  # pacing the load generator
            row = conn.execute(f"insert into {TABLE} (payload, sent_at) values "
                               "(%s, clock_timestamp()) returning id", (f"row {i}",)).fetchone()
            assert row is not None
            ids.append(row[0])
    return ids


def write_fast(db_url: str, count: int, batch: int) -> list[int]:
    """Insert *count* rows in *batch*-row INSERTs as fast as one connection can; returns their
    ids."""
    ids: list[int] = []
    with psycopg.connect(db_url, autocommit=True) as conn:
        for start in range(0, count, batch):
            n = min(batch, count - start)
            cur = conn.execute(f"insert into {TABLE} (payload, sent_at) select 'row ' || g,"
                               " clock_timestamp() from generate_series(1, %s) g returning id",
                               (n,))
            ids += [r[0] for r in cur.fetchall()]
    return ids


# --------------------------------------------------------------------------- figures


@dataclass(frozen=True)
class Delivery:
    """What one consumer got of the rows written in a phase, told apart by row id.

    ``received``: arrivals; ``distinct``: distinct written ids among them; ``duplicates``:
    arrivals of an id already seen; ``missing``: written ids that never arrived; ``unexpected``:
    arrivals of ids this phase did not write (distinct ids).
    """

    received: int
    distinct: int
    duplicates: int
    missing: int
    unexpected: int


def count_deliveries(arrived: Iterable[int], written: Iterable[int]) -> Delivery:
    """Compare the ids a consumer received with the ids written (pure)."""
    seen = Counter(arrived)
    wanted = set(written)
    return Delivery(
        received=sum(seen.values()),
        distinct=len(wanted & seen.keys()),
        duplicates=sum(n - 1 for n in seen.values()),
        missing=len(wanted - seen.keys()),
        unexpected=len(seen.keys() - wanted),
    )


def delivery_note(d: Delivery) -> str:
    """The problems of a :class:`Delivery` as words for the report, or "" when there are none."""
    notes = []
    if d.missing:
        notes.append(f"{d.missing} LOST")
    if d.duplicates:
        notes.append(f"{d.duplicates} DUPLICATES")
    if d.unexpected:
        notes.append(f"{d.unexpected} rows not written in this phase")
    return f" ({', '.join(notes)})" if notes else ""


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def latencies(items: list[Arrival]) -> list[float]:
    return [(at - datetime.fromisoformat(sent).timestamp()) * 1000 for at, _, sent in items]


class Consumer:
    def __init__(self, ctx: Any, label: str, kind: str, stack: StackProcess, idle: float,
                 spec: dict[str, str] | None, cache_dir: str, profile: str | None) -> None:
        self.label = label
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=consumer_main,
            args=(kind, stack.port, stack.service_role_key, child, idle, spec, cache_dir,
                  profile),
            daemon=True,
        )
        self.proc.start()

    def wait_ready(self, timeout: float = 120) -> None:
        if not self.conn.poll(timeout):
            raise TimeoutError(f"{self.label} not ready")
        assert self.conn.recv()[0] == "ready"

    def phase(self, n: int) -> None:
        self.conn.send(("phase", n))

    def result(self) -> tuple[list[Arrival], dict[str, Any], float]:
        _, items, stats, cpu = self.conn.recv()
        return items, stats, cpu

    def stop(self) -> None:
        self.conn.send(("stop",))
        self.proc.join(30)
        if self.proc.is_alive():
            self.proc.terminate()


def run_round(stack: StackProcess, name: str, args: argparse.Namespace,
              cache_dir: str) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    stack.sql(f"truncate public.{TABLE}")
    profile = None
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
        profile = os.path.join(args.profile, name.replace("/", "-") + ".prof")
    own_dir = os.path.join(cache_dir, name.replace("/", "-"))
    os.makedirs(own_dir, exist_ok=True)
    raw = Consumer(ctx, "raw", "raw", stack, args.idle, None, cache_dir, None)
    sup = Consumer(ctx, name, "supasync", stack, args.idle, ROUNDS[name], own_dir, profile)
    pair = (raw, sup)
    for c in pair:
        c.wait_ready()
    out: dict[str, Any] = {}
    # latency
    n_lat = int(args.rate * args.seconds)
    for c in pair:
        c.phase(n_lat)
    written = write_paced(stack.db_url, args.rate, n_lat)
    for c in pair:
        items, stats, _cpu = c.result()
        lat = latencies(items)
        out[f"lat_{c.label if c is sup else 'raw'}"] = {
            "n": len(lat), "p50": statistics.median(lat) if lat else float("nan"),
            "p99": pct(lat, 0.99) if lat else float("nan"), "stats": stats,
            "delivery": count_deliveries((i for _, i, _ in items), written),
        }
    # throughput
    for c in pair:
        c.phase(args.count)
    t0 = time.time()
    written = write_fast(stack.db_url, args.count, args.batch)
    write_s = time.time() - t0
    for c in pair:
        items, stats, cpu = c.result()
        last = max((at for at, _, _ in items), default=t0)
        # Rows are told apart by id: the rows of one multi-row INSERT share their
        # clock_timestamp() microsecond, so sent_at would count them as duplicates.
        out[f"tp_{c.label if c is sup else 'raw'}"] = {
            "n": len(items), "delivery": count_deliveries((i for _, i, _ in items), written),
            "seconds": last - t0,
            "rate": len(items) / (last - t0) if items else 0.0, "stats": stats,
            "cpu_us": cpu / len(items) * 1e6 if items else float("nan"),
        }
    out["write_s"] = write_s
    for c in pair:
        c.stop()
    return out


def report(name: str, r: dict[str, Any], args: argparse.Namespace) -> None:
    lr, ls = r["lat_raw"], r[f"lat_{name}"]
    tr, ts = r["tp_raw"], r[f"tp_{name}"]
    n_lat = int(args.rate * args.seconds)
    print(f"round {name} (raw realtime-py vs supasync {name}, both subscribed at once):")
    print(f"  latency at {args.rate:g}/s for {args.seconds:g} s ({n_lat} rows):")
    for label, d in (("raw", lr), (name, ls)):
        print(f"    {label:>10}: n={d['n']:>6}  p50={d['p50']:7.1f} ms  p99={d['p99']:7.1f} ms"
              + delivery_note(d["delivery"]) + (f"  {d['stats']}" if d["stats"] else ""))
    print(f"    ratio supasync/raw: p50 {ls['p50'] / lr['p50']:.2f}x  "
          f"p99 {ls['p99'] / lr['p99']:.2f}x (target p99 <= 1.20x)")
    print(f"  throughput, {args.count} rows in {args.batch}-row INSERTs "
          f"(writer alone: {r['write_s']:.2f} s):")
    for label, d in (("raw", tr), (name, ts)):
        print(f"    {label:>10}: got {d['n']:>6}/{args.count} in {d['seconds']:6.2f} s = "
              f"{d['rate']:8,.0f} rows/s, CPU {d['cpu_us']:5.0f} us/change"
              + delivery_note(d["delivery"])
              + (f"  {d['stats']}" if d["stats"] else ""))
    ratio = ts["rate"] / tr["rate"] if tr["rate"] else float("nan")
    lost = ts["delivery"].missing
    print(f"    ratio supasync/raw: {ratio:.2f}x (target >= 0.90x)"
          + (f"; supasync LOST {lost} changes" if lost else ""))
    print(f"    CPU per change supasync/raw: {ts['cpu_us'] / tr['cpu_us']:.2f}x "
          "(whole process, every thread: the cost that does not depend on the machine's load)")
    sys.stdout.flush()


def print_profile(path: str, top: int = 25) -> None:
    print(f"  cProfile of the supasync consumer ({path}), by own time:")
    stats = pstats.Stats(path)
    stats.sort_stats("tottime").print_stats(top)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=20_000, help="rows of the throughput phase")
    p.add_argument("--batch", type=int, default=500, help="rows per INSERT (throughput)")
    p.add_argument("--rate", type=float, default=500, help="rows/s of the latency phase")
    p.add_argument("--seconds", type=float, default=10, help="duration of the latency phase")
    p.add_argument("--idle", type=float, default=15, help="end a phase after this long "
                   "without an arrival")
    p.add_argument("--rounds", default="off/sync,auto/sync,off/async",
                   help=f"comma-separated, from {', '.join(ROUNDS)}")
    p.add_argument("--profile", help="directory for cProfile dumps of the supasync consumers")
    args = p.parse_args()
    names = [n.strip() for n in args.rounds.split(",") if n.strip()]
    for n in names:
        if n not in ROUNDS:
            p.error(f"unknown round {n!r}")
    import tempfile

    with StackProcess() as stack, tempfile.TemporaryDirectory() as cache_dir:
        setup(stack)
        for name in names:
            r = run_round(stack, name, args, cache_dir)
            report(name, r, args)
            if args.profile:
                print_profile(os.path.join(args.profile, name.replace("/", "-") + ".prof"))


if __name__ == "__main__":
    main()
