"""Benchmark: acknowledged broadcast sends (supasync vs raw realtime-py) and database broadcasts
delivered by the local stack.

Not a test: it prints figures and ratios. Run::

    .venv/bin/python bench/broadcast.py                       # defaults: under a minute
    .venv/bin/python bench/broadcast.py --sends 2000 --rounds 5 --db 50000

One local stack. Two measurements:

* **Ack'd sends** (target: supasync >= 0.9x raw). Each round sends ``--sends`` messages, one at
  a time, each waiting for the server's ack (``config.broadcast.ack``): first with raw
  realtime-py (``channel.push("broadcast", ...)`` and a future resolved by the push's ``ok``
  callback: what an app has to write to know a message arrived), then with supasync
  (``await ch.send(...)``: the outbox, the message id, the ack). Both run in this process on the
  same stack, alternating, ``--rounds`` times; the ratio is of the medians.
* **Presence recovery** (target: visible to peers again within 2 s): a supasync worker tracks
  its presence; its sockets are dropped (``/_dev/drop-connections``), or every token is
  expired (``/_dev/expire-tokens``); the time from the fault to the observer (another supasync
  client) seeing the worker's key again, ``--presence`` times each, default client settings.
* **Database broadcasts** (target: >= 5,000/s to one subscriber). ``--db`` rows are inserted into
  ``realtime.messages`` with ``realtime.send(...)`` in one statement; a raw realtime-py
  subscriber on the topic counts arrivals. Nothing is streamed before the commit (pgoutput
  decodes committed transactions), so the delivery rate is rows / (last arrival - commit);
  the end-to-end rate (from the start of the insert, ``realtime.send``'s per-row
  subtransaction included) is printed too.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from realtime import AsyncRealtimeClient
from realtime.types import RealtimeAcknowledgementStatus

from supasync import Realtime
from supasync.devstack.testing import StackProcess


async def raw_sends(stack: StackProcess, n: int) -> tuple[float, float]:
    client = AsyncRealtimeClient(f"{stack.url}/realtime/v1", stack.anon_key)
    await client.connect()
    try:
        ch = client.channel("bench-raw", {"config": {
            "broadcast": {"ack": True, "self": False},
            "presence": {"key": "", "enabled": False}, "private": False}})
        await ch.subscribe()
        loop = asyncio.get_running_loop()
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(n):
            fut: asyncio.Future[Any] = loop.create_future()
            push = await ch.push("broadcast", {"type": "broadcast", "event": "n",
                                               "payload": {"i": i}})
            push.receive(RealtimeAcknowledgementStatus.Ok,
                         lambda _r, f=fut: f.done() or f.set_result(True))
            await fut
        return n / (time.perf_counter() - start), (time.process_time() - cpu) / n
    finally:
        await client.close()


async def supasync_sends(stack: StackProcess, n: int) -> tuple[float, float]:
    async with Realtime(stack.url, stack.anon_key, repair="off") as rt:
        ch = rt.channel("bench-supasync")
        await ch.wait_live(30)
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(n):
            await ch.send("n", {"i": i})
        return n / (time.perf_counter() - start), (time.process_time() - cpu) / n


async def presence_recovery(stack: StackProcess, rounds: int) -> dict[str, list[float]]:
    from supasync import PresenceChange

    def token(sub: str) -> str:
        return stack.mint({"role": "authenticated", "sub": sub, "aud": "authenticated"})

    times: dict[str, list[float]] = {"drop": [], "expire": []}
    async with Realtime(stack.url, stack.anon_key, token=token("observer"), repair="off") as obs:
        seen = obs.channel("bench-presence")
        changed = asyncio.Event()

        def on_presence(_change: PresenceChange) -> None:
            changed.set()

        seen.on_presence(on_presence)
        await obs.wait_live(30)

        async def until(cond: Any) -> None:
            while not cond():
                changed.clear()
                if not cond():
                    await asyncio.wait_for(changed.wait(), 30)

        for fault in ("drop", "expire") * rounds:
            # A fresh worker each time: "a drop" of a backend that had been up (repeated drops
            # within the backoff's reset_after, 30 s, back off further by design).
            async with Realtime(stack.url, stack.anon_key, token=token("worker"),
                                repair="off") as wk:
                ch = wk.channel("bench-presence", presence_key="worker")
                await ch.track({"w": 1})
                await wk.wait_live(30)
                await until(lambda: "worker" in seen.presence())
                start = time.perf_counter()
                if fault == "drop":
                    await asyncio.to_thread(stack.drop_connections, "worker")
                    await until(lambda: "worker" not in seen.presence())
                else:
                    joins = ch.stats.joins
                    await asyncio.to_thread(stack.expire_tokens)
                    await until(lambda j=joins, c=ch: c.stats.joins > j and seen.live)
                await until(lambda: "worker" in seen.presence())
                times[fault].append(time.perf_counter() - start)
            await until(lambda: "worker" not in seen.presence())
    return times


async def db_broadcasts(stack: StackProcess, n: int) -> tuple[float, float, float]:
    client = AsyncRealtimeClient(f"{stack.url}/realtime/v1", stack.anon_key)
    await client.connect()
    got = 0
    done = asyncio.Event()
    last = 0.0

    def on_msg(_payload: Any) -> None:
        nonlocal got, last
        got += 1
        last = time.perf_counter()
        if got >= n:
            done.set()

    try:
        ch = client.channel("bench-db")
        ch.on_broadcast("tick", on_msg)
        await ch.subscribe()
        start = time.perf_counter()
        await asyncio.to_thread(
            stack.sql,
            "select realtime.send(jsonb_build_object('i', g), 'tick', 'bench-db', false) "
            "from generate_series(1, %s) g", (n,))
        committed = time.perf_counter()
        await asyncio.wait_for(done.wait(), 300)
        return n / (last - start), committed - start, n / (last - committed)
    finally:
        await client.close()


async def main(args: argparse.Namespace) -> None:
    with StackProcess() as stack:
        raw: list[tuple[float, float]] = []
        ours: list[tuple[float, float]] = []
        await raw_sends(stack, 50)  # warm-up
        for r in range(args.rounds):
            raw.append(await raw_sends(stack, args.sends))
            ours.append(await supasync_sends(stack, args.sends))
            print(f"round {r + 1}: raw realtime-py {raw[-1][0]:6.0f} acked sends/s "
                  f"({raw[-1][1] * 1e6:4.0f} us CPU each)   supasync {ours[-1][0]:6.0f}/s "
                  f"({ours[-1][1] * 1e6:4.0f} us)", flush=True)
        rate_raw = statistics.median(x[0] for x in raw)
        rate_ours = statistics.median(x[0] for x in ours)
        cpu_raw = statistics.median(x[1] for x in raw)
        cpu_ours = statistics.median(x[1] for x in ours)
        print(f"ack'd sends: raw median {rate_raw:.0f}/s, supasync median {rate_ours:.0f}/s, "
              f"ratio {rate_ours / rate_raw:.2f}x (target >= 0.9x); client CPU per send "
              f"{cpu_raw * 1e6:.0f} us raw, {cpu_ours * 1e6:.0f} us supasync "
              f"({cpu_raw / cpu_ours:.2f}x)")
        rec = await presence_recovery(stack, args.presence)
        for fault, values in rec.items():
            print(f"presence visible again after {fault}: median {statistics.median(values):.2f}"
                  f" s, max {max(values):.2f} s over {len(values)} (target <= 2 s)")
        runs = [await db_broadcasts(stack, args.db) for _ in range(3)]
        best = max(runs, key=lambda r: r[2])
        print(f"database broadcasts to one subscriber (realtime-py), {args.db} rows in one "
              f"transaction: {best[2]:.0f}/s delivered after the commit (target >= 5000/s); "
              f"{best[0]:.0f}/s end to end including the insert ({best[1]:.2f} s of "
              f"realtime.send); runs after commit: {', '.join(f'{r[2]:.0f}' for r in runs)}")

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sends", type=int, default=500)
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--db", type=int, default=20000)
    p.add_argument("--presence", type=int, default=5)
    asyncio.run(main(p.parse_args()))
