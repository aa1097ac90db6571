"""Benchmark: catching up after an outage - gap repair modes (exact, cursor, diff) against a
re-snapshot and raw PostgREST paging, on one table, in the same run.

Not a test: it prints figures and ratios. Run::

    .venv/bin/python bench/repair_modes.py                    # 200,000 rows: a few minutes
    .venv/bin/python bench/repair_modes.py --rows 1000000     # the full size
    .venv/bin/python bench/repair_modes.py --modes exact --changes 10000

One local stack, one table ``bench_repair (id bigint primary key, updated_at timestamptz,
payload text)``, filled with ``insert ... select generate_series`` (``updated_at`` spread one
second apart, ending an hour ago, so cursor mode's 5-minute overlap re-reads only recent rows),
a trigger bumping ``updated_at`` on every update, exact mode installed with
``supasync.repair.sqlinstall.apply`` after the fill. Each contender runs in its own child process
(multiprocessing, spawn), so its peak RSS (``resource.getrusage``) is its own.

For each mode (``repair=exact|cursor|diff``), in one child:

1. a client with a persistent cache file subscribes and completes its first snapshot
   (``GapRepaired(mode="snapshot")``), then closes - the outage begins;
2. ``--changes`` row changes are made (40 % inserts of new ids, 40 % updates, 20 % deletes);
3. a new client on the same cache file starts; timed from its start (constructing the client,
   loading the cache file, connecting, joining, repairing) to its ``GapRepaired`` event;
   ``GapRepaired.duration_s`` (from the gap's opening at the gate's open) is printed too;
4. zero lost changes is checked twice: the gate's rows (``gate.rows()``, what handlers were
   given) and, after closing, the cache file's rows, each against the server's rows
   (id, payload, updated_at).

Baselines, same run, each in its own child:

* **re-snapshot** - a fresh client with an empty cache after the same outage: time to its
  snapshot ``GapRepaired`` (what you pay without a cache). The first snapshot of each mode's
  first client is printed as well.
* **raw PostgREST keyset paging** - httpx, ``order=id.asc&id=gt.<last>&limit=<page>``, the
  whole table, nothing else (the floor of any full read over the REST API).

Handlers are ``async def`` that only count (a sync handler runs in a worker thread per change,
which would time the thread hand-off rather than the repair). Targets: exact at least 20x
faster than the re-snapshot; zero lost changes in every mode.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import multiprocessing as mp
import os
import pstats
import random
import resource
import sys
import tempfile
import time
from datetime import datetime
from typing import Any

import psycopg

from supasync.devstack.testing import StackProcess

TABLE = "bench_repair"
NAME = f"public.{TABLE}"


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- database side


def setup(stack: StackProcess, rows: int, cursor_index: bool) -> float:
    t0 = time.perf_counter()
    stack.sql(f"""
        drop table if exists public.{TABLE};
        create table public.{TABLE} (id bigint primary key,
                                     updated_at timestamptz not null default now(),
                                     payload text);
        create or replace function public.bench_repair_touch() returns trigger
          language plpgsql as $$ begin new.updated_at := clock_timestamp(); return new; end $$;
        create trigger bench_repair_touch before update on public.{TABLE}
          for each row execute function public.bench_repair_touch();
        insert into public.{TABLE} (id, updated_at, payload)
          select g, now() - interval '1 hour' - make_interval(secs => {rows} - g),
                 md5(g::text) from generate_series(1, {rows}) g;
        {f"create index on public.{TABLE} (updated_at, id);" if cursor_index else ""}
        analyze public.{TABLE};
        alter publication supabase_realtime add table public.{TABLE};
        grant select on public.{TABLE} to anon, authenticated, service_role;
    """)
    from supasync.repair.sqlinstall import apply

    apply(stack.db_url, [NAME])
    return time.perf_counter() - t0


def make_changes(db_url: str, n: int, seed: int) -> dict[str, int]:
    """*n* row changes: 40 % inserts (new ids), 40 % updates, 20 % deletes (disjoint keys), in
    transactions of 500 rows."""
    rng = random.Random(seed)
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(f"select coalesce(max(id), 0) from public.{TABLE}").fetchone()
        top = int(row[0]) if row else 0
        ids = [r[0] for r in conn.execute(f"select id from public.{TABLE}").fetchall()]
        n_ins, n_upd = int(n * 0.4), int(n * 0.4)
        n_del = n - n_ins - n_upd
        picked = rng.sample(ids, n_upd + n_del)
        upd, dele = picked[:n_upd], picked[n_upd:]
        new_ids = list(range(top + 1, top + 1 + n_ins))
        step = 500
        for i in range(0, n_ins, step):
            conn.execute(f"insert into public.{TABLE} (id, payload) select g, 'new ' || g"
                         " from unnest(%s::bigint[]) g", (new_ids[i:i + step],))
        for i in range(0, n_upd, step):
            conn.execute(f"update public.{TABLE} set payload = payload || ' upd'"
                         " where id = any(%s)", (upd[i:i + step],))
        for i in range(0, n_del, step):
            conn.execute(f"delete from public.{TABLE} where id = any(%s)", (dele[i:i + step],))
    return {"inserted": n_ins, "updated": n_upd, "deleted": n_del}


def server_rows(db_url: str) -> dict[int, tuple[str, datetime]]:
    with psycopg.connect(db_url) as conn:
        return {r[0]: (r[1], r[2]) for r in
                conn.execute(f"select id, payload, updated_at from public.{TABLE}")}


def compare(cached: dict[Any, Any], server: dict[int, tuple[str, datetime]]) -> dict[str, int]:
    """Differences between cached rows (pk tuple -> row dict) and the server's rows."""
    seen: dict[int, tuple[Any, Any]] = {}
    for pk, row in cached.items():
        seen[int(pk[0])] = (row.get("payload"), row.get("updated_at"))
    missing = sum(1 for k in server if k not in seen)
    extra = sum(1 for k in seen if k not in server)
    stale = 0
    for k, (payload, at) in seen.items():
        want = server.get(k)
        if want is None:
            continue
        at_dt = datetime.fromisoformat(at) if isinstance(at, str) else at
        if payload != want[0] or at_dt != want[1]:
            stale += 1
    return {"missing": missing, "extra": extra, "stale": stale}


# --------------------------------------------------------------------------- clients


class Counter:
    def __init__(self) -> None:
        self.by: dict[str, int] = {}

    async def __call__(self, change: Any) -> None:
        key = f"{change.origin}:{change.op}"
        self.by[key] = self.by.get(key, 0) + 1


async def timed_client(env: dict[str, str], mode: str, cache: str, *,
                       verify: bool = False, profile: str | None = None) -> dict[str, Any]:
    """Start a client, time it to its GapRepaired, optionally verify, close it; with
    *profile*, cProfile from the start to GapRepaired and dump the stats there."""
    from supasync import Realtime
    from supasync.core.status import GapRepaired

    counter = Counter()
    prof = cProfile.Profile() if profile else None
    if prof is not None:
        prof.enable()
    t0 = time.perf_counter()
    rt = Realtime(env["url"], env["anon"], token=env["key"], repair=mode,  # type: ignore[arg-type]
                  cache=cache)
    sub = rt.subscribe(TABLE, handler=counter)
    waiting = asyncio.ensure_future(rt.status.wait_for(
        lambda e: isinstance(e, GapRepaired), 1800))
    await asyncio.sleep(0)  # let the waiter register before anything is published
    await rt.start()
    event = await waiting
    seconds = time.perf_counter() - t0
    if prof is not None and profile:
        prof.disable()
        prof.dump_stats(profile)
    assert isinstance(event, GapRepaired)
    out: dict[str, Any] = {
        "seconds": seconds, "mode": event.mode, "duration_s": event.duration_s,
        "inserted": event.inserted, "updated": event.updated, "deleted": event.deleted,
        "fallback": event.fallback, "handled": dict(counter.by),
    }
    if verify:
        gate = sub.gate
        rows = gate.rows() if hasattr(gate, "rows") else {}
        out["gate_vs_server"] = compare(rows, server_rows(env["db"]))
    await rt.aclose()
    if verify:
        from supasync.store import open_store

        store = open_store(cache)
        stored = {r.pk: r.row for r in store.rows(NAME)}
        store.close()
        out["file_vs_server"] = compare(stored, server_rows(env["db"]))
    return out


def child_mode(env: dict[str, str], mode: str, changes: int, seed: int, workdir: str,
               profile: str | None) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        cache = os.path.join(workdir, f"cache-{mode}.sqlite3")
        first = await timed_client(env, mode, cache)
        made = make_changes(env["db"], changes, seed)
        second = await timed_client(env, mode, cache, verify=True, profile=profile)
        out = {"first": first, "made": made, "second": second, "peak_mb": _peak_mb()}
        return out

    return asyncio.run(run())


def child_resnapshot(env: dict[str, str], workdir: str, profile: str | None) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        cache = os.path.join(workdir, "cache-resnapshot.sqlite3")
        r = await timed_client(env, "diff", cache, verify=True, profile=profile)
        r["peak_mb"] = _peak_mb()
        return r

    return asyncio.run(run())


def child_rest_pages(env: dict[str, str], page: int) -> dict[str, Any]:
    import httpx

    headers = {"apikey": env["anon"], "Authorization": f"Bearer {env['key']}"}
    t0 = time.perf_counter()
    n, last = 0, None
    with httpx.Client(base_url=env["url"] + "/rest/v1", headers=headers, timeout=120) as http:
        while True:
            params = {"select": "*", "order": "id.asc", "limit": str(page)}
            if last is not None:
                params["id"] = f"gt.{last}"
            r = http.get(f"/{TABLE}", params=params)
            r.raise_for_status()
            rows = r.json()
            n += len(rows)
            if len(rows) < page:
                break
            last = rows[-1]["id"]
    return {"rows": n, "seconds": time.perf_counter() - t0, "peak_mb": _peak_mb()}


def _call(q: Any, fn: Any, args: tuple[Any, ...]) -> None:
    try:
        q.put(("ok", fn(*args)))
    except BaseException as exc:  # reported to the parent, which prints it
        import traceback

        q.put(("error", f"{exc!r}\n{traceback.format_exc()}"))


def in_child(fn: Any, *args: Any) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_call, args=(q, fn, args))
    p.start()
    status, value = q.get()
    p.join()
    if status != "ok":
        raise RuntimeError(f"child {fn.__name__} failed: {value}")
    result: dict[str, Any] = value
    return result


# --------------------------------------------------------------------------- report


def print_profile(path: str, what: str = "restarted client", top: int = 20) -> None:
    print(f"  cProfile of the {what} ({path}), supasync functions by cumulative time:")
    stats = pstats.Stats(path)
    stats.sort_stats("cumulative").print_stats(r"supasync/", top)
    print("  ... and everything by own time:")
    stats.sort_stats("tottime").print_stats(top)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=200_000, help="table size (full run: 1000000)")
    p.add_argument("--changes", type=int, default=10_000, help="row changes during the outage")
    p.add_argument("--modes", default="cursor,exact,diff",
                   help="comma-separated, run in this order (cursor first: the others' "
                   "outage writes would fall inside its overlap window)")
    p.add_argument("--page", type=int, default=1000, help="page size of the raw REST baseline "
                   "(supasync's default page size is 1000)")
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--cursor-index", action="store_true", help="index (updated_at, id): "
                   "cursor mode reads in that order (without it, every page is a full scan)")
    p.add_argument("--profile", help="directory for cProfile dumps of each restarted client "
                   "(start to GapRepaired); the top functions are printed")
    args = p.parse_args()
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in ("exact", "cursor", "diff"):
            p.error(f"unknown mode {m!r}")

    with StackProcess() as stack, tempfile.TemporaryDirectory() as workdir:
        fill_s = setup(stack, args.rows, args.cursor_index)
        env = {"url": stack.url, "anon": stack.anon_key, "key": stack.service_role_key,
               "db": stack.db_url}
        print(f"table {NAME}: {args.rows:,} rows, filled (+ exact mode installed"
              f"{', index on (updated_at, id)' if args.cursor_index else ''}) in "
              f"{fill_s:.1f} s; {args.changes:,} changes per outage")
        sys.stdout.flush()
        results: dict[str, dict[str, Any]] = {}
        for i, mode in enumerate(modes):
            prof = os.path.join(args.profile, f"{mode}.prof") if args.profile else None
            r = in_child(child_mode, env, mode, args.changes, args.seed + i, workdir, prof)
            results[mode] = r
            f, s = r["first"], r["second"]
            print(f"mode {mode}:")
            print(f"  first client (empty cache): {f['mode']} in {f['seconds']:.2f} s "
                  f"(+{f['inserted']:,} rows)")
            print(f"  outage: {r['made']}")
            print(f"  restarted client: GapRepaired mode={s['mode']} in {s['seconds']:.2f} s "
                  f"from start (duration_s {s['duration_s']:.2f}); replayed +{s['inserted']} "
                  f"~{s['updated']} -{s['deleted']}"
                  + (f"; FALLBACK: {s['fallback']}" if s["fallback"] else ""))
            print(f"  handlers saw: {s['handled']}")
            print(f"  gate rows vs server: {s['gate_vs_server']}; cache file vs server: "
                  f"{s['file_vs_server']}; peak RSS {r['peak_mb']:.0f} MB")
            if prof:
                print_profile(prof)
            sys.stdout.flush()
        prof = os.path.join(args.profile, "resnapshot.prof") if args.profile else None
        snap = in_child(child_resnapshot, env, workdir, prof)
        print(f"baseline re-snapshot (fresh client, empty cache): {snap['seconds']:.2f} s "
              f"({snap['inserted']:,} rows, mode={snap['mode']}); vs server "
              f"{snap['file_vs_server']}; peak RSS {snap['peak_mb']:.0f} MB")
        if prof:
            print_profile(prof, "fresh client's snapshot")
        pages = in_child(child_rest_pages, env, args.page)
        print(f"baseline raw PostgREST keyset paging (httpx, {args.page}/page): "
              f"{pages['rows']:,} rows in {pages['seconds']:.2f} s "
              f"({pages['rows'] / pages['seconds']:,.0f} rows/s); peak RSS "
              f"{pages['peak_mb']:.0f} MB")
        print("summary: repair time from the client's start (includes loading the cache "
              "file) and from the gap's opening (GapRepaired.duration_s: join + repair);\n"
              "ratios = re-snapshot (from start) / mode, and raw full read / mode:")
        for mode, r in results.items():
            s = r["second"]
            lost = sum(s["gate_vs_server"].values()) + sum(s["file_vs_server"].values())
            print(f"  {mode:>6}: from start {s['seconds']:7.2f} s  re-snapshot/mode "
                  f"{snap['seconds'] / s['seconds']:6.1f}x  raw-pages/mode "
                  f"{pages['seconds'] / s['seconds']:5.1f}x | from gap {s['duration_s']:6.2f} s "
                  f"re-snapshot/mode {snap['seconds'] / s['duration_s']:6.1f}x | "
                  f"lost/stale/extra rows: {lost}  peak RSS {r['peak_mb']:.0f} MB")
        if "exact" in results:
            s = results["exact"]["second"]
            ratio = snap["seconds"] / s["seconds"]
            gap_ratio = snap["seconds"] / s["duration_s"]
            print(f"  target exact >= 20x faster than re-snapshot: from start {ratio:.1f}x "
                  f"({'met' if ratio >= 20 else 'NOT met'}), from the gap {gap_ratio:.1f}x "
                  f"({'met' if gap_ratio >= 20 else 'NOT met'})")


if __name__ == "__main__":
    main()
