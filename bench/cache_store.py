"""Benchmark: the client's cache on the store file (issue #13) - memory, restart, snapshot and
read-model figures, each against its baseline measured in the same run.

Not a test: it prints figures and ratios. Run::

    .venv/bin/python bench/cache_store.py                  # 200,000 rows: about a minute
    .venv/bin/python bench/cache_store.py --rows 1000000   # the issue's size: a few minutes

One local stack, the table of ``bench/repair_modes.py`` (``bench_repair (id bigint primary key,
updated_at timestamptz, payload text)``, exact mode installed). Every contender runs in its own
child process (multiprocessing, spawn) and is timed **from the child's start**, imports
included, to the moment its subscription is synced (``wait_synced``: the snapshot or repair is
in the store and handed to the handlers). Memory is the child's RSS: its peak
(``VmHWM``) minus its RSS once supasync is imported and the client built, so the figure
is what caching the table costs.

Rounds, in order:

1. **raw PostgREST keyset paging** (httpx, the whole table; the floor of any full read over the
   REST API) - the baseline of the first snapshot.
2. **first snapshot, read model**: a handler-less subscription into a new cache file.
3. **first snapshot, with a handler**: the same with an ``async`` handler that counts changes.
4. ``--changes`` row changes while no client runs (40 % inserts, 40 % updates, 20 % deletes).
5. **restart** on the file of round 2 (exact mode: only the missed changes are read), then the
   read model under load: ``sub.get`` of random keys from another thread while a writer
   updates ``--write-rate`` rows a second, p50/p99 over ``--gets`` lookups.
6. **re-snapshot** (the restart's baseline): a new cache file after the same outage, counted
   the same way.

Targets (issue #13): RSS growth <= 100 MB at 1,000,000 rows and within 20 MB of the figure at
200,000; restart <= 2 s and >= 20x faster than the re-snapshot; first snapshot >= 0.8x raw
paging; ``get`` p99 <= 1 ms while changes stream in.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import sys
import tempfile
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from repair_modes import (
    TABLE,
    child_rest_pages,
    in_child,
    make_changes,
    setup,
)

from supasync.devstack.testing import StackProcess


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    """This process's peak RSS (``VmHWM``: per address space, so a spawned child does not
    inherit its parent's, as ``getrusage``'s ``ru_maxrss`` does across fork and exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_client(env: dict[str, str], cache: str, handler: bool, gets: int,
                 write_rate: int, profile: str | None = None) -> dict[str, Any]:
    """One client from process start to synced; with *gets*, lookups under writes after;
    with *profile*, cProfile from start to synced, dumped there."""
    t0 = time.perf_counter()
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    from supasync import Realtime  # imports are part of "from process start"

    counted = [0]

    async def count(change: Any) -> None:
        counted[0] += 1

    async def run() -> dict[str, Any]:
        rt = Realtime(env["url"], env["anon"], token=env["key"], cache=cache)
        sub = rt.subscribe(TABLE, handler=count if handler else None)
        base = _rss_mb()
        async with rt:
            await rt.wait_synced(3600)
            synced = time.perf_counter() - t0
            if prof is not None and profile:
                prof.disable()
                prof.dump_stats(profile)
            out: dict[str, Any] = {"seconds": synced, "base_mb": base, "peak_mb": _peak_mb(),
                                   "rss_mb": _rss_mb(), "rows": sub.count(),
                                   "handled": counted[0]}
            if gets:
                out.update(await _gets_under_writes(env, sub, gets, write_rate))
        return out

    return asyncio.run(run())


async def _gets_under_writes(env: dict[str, str], sub: Any, gets: int,
                             write_rate: int) -> dict[str, Any]:
    import psycopg

    top = sub.count()
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        rng = random.Random(1)
        with psycopg.connect(env["db"], autocommit=True) as conn:
            while not stop.is_set():
                started = time.perf_counter()
                ids = [rng.randint(1, top) for _ in range(max(1, write_rate // 10))]
                conn.execute(f"update public.{TABLE} set payload = md5(payload)"
                             " where id = any(%s)", (ids,))
                written[0] += len(ids)
                stop.wait(max(0.0, 0.1 - (time.perf_counter() - started)))

    def reader() -> list[float]:
        rng = random.Random(2)
        out = []
        for _ in range(gets):
            key = rng.randint(1, top)
            started = time.perf_counter()
            sub.get(key)
            out.append(time.perf_counter() - started)
        return out

    w = threading.Thread(target=writer, daemon=True)
    w.start()
    t0 = time.perf_counter()
    lat = await asyncio.to_thread(reader)
    seconds = time.perf_counter() - t0
    stop.set()
    w.join(10)
    lat.sort()
    return {"gets": gets, "get_p50_ms": lat[len(lat) // 2] * 1e3,
            "get_p99_ms": lat[int(len(lat) * 0.99)] * 1e3, "get_max_ms": lat[-1] * 1e3,
            "writes_during": written[0], "read_seconds": seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--changes", type=int, default=10_000)
    p.add_argument("--gets", type=int, default=20_000)
    p.add_argument("--write-rate", type=int, default=1000, help="rows updated per second "
                   "while the lookups run")
    p.add_argument("--page", type=int, default=1000)
    p.add_argument("--profile", help="directory for cProfile dumps (start to synced) of the "
                   "snapshot and the restart")
    args = p.parse_args()
    prof = {k: os.path.join(args.profile, f"{k}.prof") if args.profile else None
            for k in ("snapshot", "handler", "restart")}
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    work = tempfile.mkdtemp(prefix="supasync-bench-cache-")
    with StackProcess() as stack:
        print(f"filling {args.rows:,} rows ...", flush=True)
        setup(stack, args.rows, cursor_index=False)
        env = {"url": stack.url, "anon": stack.anon_key, "key": stack.service_role_key,
               "db": stack.db_url}
        raw = in_child(child_rest_pages, env, args.page)
        print(f"raw PostgREST keyset paging: {raw['rows']:,} rows in {raw['seconds']:.2f} s",
              flush=True)
        cache = os.path.join(work, "cache.sqlite")
        snap = in_child(child_client, env, cache, False, 0, 0, prof["snapshot"])
        hand = in_child(child_client, env, os.path.join(work, "handled.sqlite"), True, 0, 0,
                        prof["handler"])
        made = make_changes(env["db"], args.changes, 5)
        restart = in_child(child_client, env, cache, False, args.gets, args.write_rate,
                           prof["restart"])
        resnap = in_child(child_client, env, os.path.join(work, "resnap.sqlite"), False, 0, 0)

    def line(label: str, r: dict[str, Any]) -> None:
        print(f"  {label:<34} {r['seconds']:7.2f} s  rows {r['rows']:>9,}  "
              f"RSS +{r['peak_mb'] - r['base_mb']:6.1f} MB (peak {r['peak_mb']:.0f} MB, "
              f"base {r['base_mb']:.0f})")

    print(f"\n{args.rows:,} rows; outage: {made}")
    line("first snapshot (read model)", snap)
    line("first snapshot (async handler)", hand)
    line(f"restart after {args.changes:,} changes (exact)", restart)
    line("re-snapshot (new file)", resnap)
    print(f"  handler got {hand['handled']:,} changes")
    print("\nratios (same run):")
    print(f"  first snapshot vs raw paging (time ratio raw/supasync): read model "
          f"{raw['seconds'] / snap['seconds']:.2f}x, with handler "
          f"{raw['seconds'] / hand['seconds']:.2f}x   (target >= 0.8x)")
    print(f"  restart {restart['seconds']:.2f} s (target <= 2 s): "
          f"{resnap['seconds'] / restart['seconds']:.1f}x faster than the re-snapshot "
          f"(target >= 20x)")
    print(f"  RSS growth, read model: {snap['peak_mb'] - snap['base_mb']:.1f} MB "
          f"(target <= 100 MB at 1M rows, within 20 MB of the 200k figure)")
    print(f"  sub.get under {restart['writes_during']:,} row updates: p50 "
          f"{restart['get_p50_ms']:.3f} ms, p99 {restart['get_p99_ms']:.3f} ms, max "
          f"{restart['get_max_ms']:.1f} ms over {restart['gets']:,} lookups (target p99 <= 1 ms)")


if __name__ == "__main__":
    main()
