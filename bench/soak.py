"""Soak: the client with a cache, the mirror and ``supasync tail`` through rotating faults.

Not a test: it runs for ``--duration`` seconds and prints what it saw. Run::

    .venv/bin/python bench/soak.py                       # 30 minutes, the issue's target run
    .venv/bin/python bench/soak.py --duration 120        # a short look
    .venv/bin/python bench/soak.py --json report.json    # also write the report as JSON

One local stack, one fixed-size table ``soak (id, v, body, updated_at)`` (updates only, so a
process's memory has no reason to grow with the data). Three consumers, each its own process
so its resources are its own:

* **client** - ``Realtime`` with a cache file, ``repair="auto"``, a handler that logs every
  change it gets (its view is that log replayed); it prints its asyncio task count and every
  ``GapRepaired`` (reason, duration) on stdout;
* **mirror** - ``supasync mirror --table soak --db FILE``;
* **tail** - ``supasync tail --table soak --json --snapshot`` (its view is its output replayed).

Meanwhile a writer updates random rows at ``--rate`` per second, a fault comes every
``--fault-every`` seconds (rotating: drop every socket, close every socket, expire every
token) and the whole stack restarts every ``--restart-every`` seconds. Every ``--sample-every``
seconds each process's RSS, open file descriptors and threads are read from ``/proc`` (and the
client's task count from its output).

At the end the writer stops, and every view (the client's handlers, its cache file, the
mirror file, tail's output) must equal the source table; the report gives, per process, RSS
growth in MB/hour (over the second half of the run: start-up and the first snapshot excluded),
FD/thread/task counts first and last, and the slowest repair after a token expiry. Targets
(issue #17, 30 minutes): RSS growth < 5 MB/h per process, FDs and tasks flat, every view equal,
every expiry repaired within 2 s. Exit code 0 when every view is equal, 1 otherwise (timings
and growth are reported, not judged: they depend on the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import psycopg

from supasync.devstack.testing import StackProcess

TABLE = "soak"

CLIENT = r"""
import asyncio, json, sys
from supasync.client.realtime import Realtime
from supasync.client.gate import CachedGate
from supasync.core.backoff import BackoffPolicy
from supasync.core.status import GapOpened, GapRepaired
from supasync.repair.repairer import RepairConfig

url, anon, key, cache, log, every = sys.argv[1:7]

async def main():
    out = open(log, "a", encoding="utf-8")

    async def handler(change):
        out.write(json.dumps({"op": change.op, "pk": list(change.pk), "new": change.new}) + "\n")
        out.flush()

    rt = Realtime(url, anon, token=key, heartbeat_interval=2.0, heartbeat_timeout=4.0,
                  backoff=BackoffPolicy(initial=0.1, cap=2.0))
    rt.subscribe("soak", handler=handler, primary_key=("id",), name="soak",
                 gate=CachedGate(cache, repair=RepairConfig(mode="auto")))

    reasons = {}

    def on_status(event):
        if isinstance(event, GapOpened):
            reasons[event.subscription] = event.reason
        elif isinstance(event, GapRepaired):
            print(json.dumps({"repaired": event.mode, "duration_s": event.duration_s,
                              "reason": reasons.get(event.subscription)}), flush=True)

    rt.status.subscribe(on_status)
    await rt.start()
    while True:
        print(json.dumps({"tasks": len(asyncio.all_tasks())}), flush=True)
        await asyncio.sleep(float(every))  # a sampling period

asyncio.run(main())
"""


def proc_sample(pid: int) -> dict[str, float]:
    """RSS (MB), open FDs and threads of a process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "rss_mb": int(fields["VmRSS"].split()[0]) / 1024,
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": int(fields["Threads"]),
    }


class Reader(threading.Thread):
    """Collects a child's stdout lines (JSON where they are)."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.records: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def run(self) -> None:
        for line in self.stream:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                with self.lock:
                    self.records.append(record)

    def all(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.records)


class Writer(threading.Thread):
    """Updates random rows at a steady rate until stopped, reconnecting through restarts."""

    def __init__(self, db_url: str, rows: int, rate: float, seed: int) -> None:
        super().__init__(daemon=True)
        self.db_url, self.rows, self.rate = db_url, rows, rate
        self.rng = random.Random(seed)
        self.done = threading.Event()
        self.writes = 0
        self.reconnects = 0

    def run(self) -> None:
        while not self.done.is_set():
            try:
                with psycopg.connect(self.db_url, autocommit=True, connect_timeout=5) as conn:
                    while not self.done.is_set():
                        i = self.rng.randrange(1, self.rows + 1)
                        conn.execute(f"update {TABLE} set v = v + 1, body = %s,"
                                     " updated_at = now() where id = %s",
                                     (f"w{self.writes}", i))
                        self.writes += 1
                        self.done.wait(1.0 / self.rate)  # the write rate, not a sync wait
            except (psycopg.Error, OSError):
                self.reconnects += 1
                self.done.wait(0.2)  # the stack is restarting: try again shortly


def source_rows(db_url: str) -> dict[int, tuple[int, str]]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        return {r[0]: (r[1], r[2]) for r in conn.execute(f"select id, v, body from {TABLE}")}


def replayed(lines: list[dict[str, Any]]) -> dict[int, tuple[int, str]]:
    view: dict[int, tuple[int, str]] = {}
    for item in lines:
        pk = item.get("pk") or []
        if not pk:
            continue
        if item.get("op") == "DELETE":
            view.pop(pk[0], None)
        elif item.get("new"):
            view[pk[0]] = (item["new"]["v"], item["new"]["body"])
    return view


def client_log_view(path: Path) -> dict[int, tuple[int, str]]:
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue  # a line cut by the end of the run
    return replayed(lines)


def tail_view(records: list[dict[str, Any]]) -> dict[int, tuple[int, str]]:
    return replayed([r for r in records if "op" in r])


def cache_view(path: Path) -> dict[int, tuple[int, str]]:
    from supasync.store.reads import StoreReader

    with StoreReader(path) as reader:  # the cache file is a store file: its table is TABLE
        return {r["id"]: (r["v"], r["body"]) for r in reader.rows(TABLE)}


def mirror_view(path: Path) -> dict[int, tuple[int, str]]:
    import sqlite3

    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {r[0]: (r[1], r[2]) for r in conn.execute(f"select id, v, body from {TABLE}")}
    finally:
        conn.close()


def stop_processes(running: Iterable[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every process still running, then wait for each (30 s; SIGKILL after)."""
    procs = list(running)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def growth_mb_per_hour(samples: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of RSS over the second half of the samples, in MB/hour."""
    half = samples[len(samples) // 2:]
    if len(half) < 3:
        return None
    n = len(half)
    mt = sum(t for t, _ in half) / n
    mv = sum(v for _, v in half) / n
    den = sum((t - mt) ** 2 for t, _ in half)
    if den == 0:
        return None
    return sum((t - mt) * (v - mv) for t, v in half) / den * 3600


def start_stack(prefix: str) -> tuple[Path, StackProcess]:
    """A work directory and a local stack started with its data in it."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    data_dir = work / "stack"
    data_dir.mkdir()
    os.chmod(work, 0o755)
    os.chmod(data_dir, 0o755)  # PostgreSQL runs as `postgres` when this runs as root
    stack = StackProcess(data_dir=str(data_dir))
    stack.start()
    return work, stack


def fill_table(stack: StackProcess, rows: int) -> dict[str, str]:
    """The soak's fixed-size table with *rows* rows, published; the environment for the
    processes under test (the stack's settings, the service role)."""
    stack.sql(f"""
        create table {TABLE} (id int primary key, v int not null default 0,
                              body text not null default '',
                              updated_at timestamptz not null default now());
        insert into {TABLE} (id) select g from generate_series(1, {rows}) g;
        grant select on {TABLE} to anon, authenticated, service_role;
        alter publication supabase_realtime add table {TABLE};
    """)
    return {**os.environ, **{k: v for k, v in stack.env.items() if k.startswith("SUPABASE_")},
            "SUPASYNC_TOKEN_SOURCE": "service_role"}


def run(args: argparse.Namespace) -> dict[str, Any]:
    work, stack = start_stack("supasync-soak-")
    procs: dict[str, subprocess.Popen[str]] = {}
    readers: dict[str, Reader] = {}
    writer: Writer | None = None
    try:
        env = fill_table(stack, args.rows)
        cache, log, mirror_db = work / "cache.db", work / "handled.jsonl", work / "mirror.sqlite"
        cli = [sys.executable, "-m", "supasync.cli"]
        commands = {
            "client": [sys.executable, "-c", CLIENT, stack.url, stack.anon_key,
                       stack.service_role_key, str(cache), str(log), str(args.sample_every)],
            "mirror": [*cli, "mirror", "--table", TABLE, "--db", str(mirror_db), "--quiet"],
            "tail": [*cli, "tail", "--table", TABLE, "--json", "--snapshot", "--quiet"],
        }
        for name, command in commands.items():
            procs[name] = subprocess.Popen(command, env=env, cwd=work, text=True,
                                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            stdout = procs[name].stdout
            assert stdout is not None
            readers[name] = Reader(stdout)
            readers[name].start()
        writer = Writer(stack.db_url, args.rows, args.rate, args.seed)
        writer.start()
        faults = [("drop", stack.drop_connections), ("close", stack.close_connections),
                  ("expire", stack.expire_tokens)]
        samples: dict[str, list[dict[str, float]]] = {n: [] for n in procs}
        started = time.monotonic()
        next_fault = started + args.fault_every
        next_restart = started + args.restart_every
        next_sample = started
        done_faults: list[str] = []
        while (now := time.monotonic()) < started + args.duration:
            if now >= next_sample:
                for name, proc in procs.items():
                    if proc.poll() is None:
                        samples[name].append({"t": now - started, **proc_sample(proc.pid)})
                next_sample += args.sample_every
            if now >= next_restart:
                stack.restart()
                done_faults.append("restart")
                next_restart += args.restart_every
            elif now >= next_fault:
                kind, action = faults[len(done_faults) % len(faults)]
                try:
                    action()
                    done_faults.append(kind)
                except Exception as exc:  # the stack may be restarting; try the next one
                    done_faults.append(f"{kind} failed: {exc}")
                next_fault += args.fault_every
            # The loop's own pace: the next sample or fault, at most half a second away.
            time.sleep(max(0.0, min(0.5, min(next_sample, next_fault, next_restart) - now)))
        writer.done.set()
        writer.join(30)
        expected = source_rows(stack.db_url)
        deadline = time.monotonic() + args.settle
        views: dict[str, dict[int, tuple[int, str]]] = {}
        while True:
            views = {
                "client handlers": client_log_view(log),
                "client cache": cache_view(cache),
                "mirror": mirror_view(mirror_db),
                "tail": tail_view(readers["tail"].all()),
            }
            if all(v == expected for v in views.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.5)  # the consumers catch up: poll until equal or the deadline
        alive = {name: proc.poll() is None for name, proc in procs.items()}
        client_records = readers["client"].all()
        tasks = [r["tasks"] for r in client_records if "tasks" in r]
        expiry = [r["duration_s"] for r in client_records
                  if r.get("repaired") and r.get("reason") == "token-expired"]
        report: dict[str, Any] = {
            "duration_s": args.duration, "writes": writer.writes, "faults": done_faults,
            "rows": len(expected), "alive": alive,
            "views_equal": {name: v == expected for name, v in views.items()},
            "differing": {name: sum(1 for k in expected.keys() | v.keys()
                                    if v.get(k) != expected.get(k))
                          for name, v in views.items()},
            "processes": {}, "client_tasks": {"first": tasks[:1], "last": tasks[-1:]},
            "expiry_repairs": {"count": len(expiry), "max_s": max(expiry) if expiry else None},
        }
        for name, rows in samples.items():
            if not rows:
                continue
            report["processes"][name] = {
                "rss_mb": {"first": round(rows[0]["rss_mb"], 1),
                           "last": round(rows[-1]["rss_mb"], 1)},
                "rss_growth_mb_per_h": growth_mb_per_hour([(r["t"], r["rss_mb"])
                                                           for r in rows]),
                "fds": {"first": rows[0]["fds"], "last": rows[-1]["fds"],
                        "max": max(r["fds"] for r in rows)},
                "threads": {"first": rows[0]["threads"], "last": rows[-1]["threads"]},
            }
        return report
    finally:
        if writer is not None:
            writer.done.set()
        stop_processes(procs.values())
        stack.close()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=1800.0, help="seconds (default 1800)")
    parser.add_argument("--rows", type=int, default=2000, help="table size (default 2000)")
    parser.add_argument("--rate", type=float, default=20.0, help="updates per second")
    parser.add_argument("--fault-every", type=float, default=20.0, help="seconds")
    parser.add_argument("--restart-every", type=float, default=300.0, help="seconds")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds")
    parser.add_argument("--settle", type=float, default=120.0,
                        help="seconds the views may take to catch up at the end")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    args = parser.parse_args(argv)
    report = run(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    ok = all(report["views_equal"].values())
    print("every view equals the source" if ok else "A VIEW DIFFERS FROM THE SOURCE",
          file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
