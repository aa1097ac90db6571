"""Benchmark: changes to browsers with supasync.web (``supasync serve``) against the hand-written
streaming endpoint of the previous ``examples/fastapi_app.py``.

Not a test: it prints figures and ratios. Run::

    .venv/bin/python bench/web.py                                  # defaults: about 2 minutes
    .venv/bin/python bench/web.py --clients 1000 --rate 200 --seconds 20

The baseline is the pattern the old example showed and users copy: a ``Realtime`` client with
its cache, and per browser a ``StreamingResponse`` over ``async for change in subscription``
(each iterator has its own bounded queue; when one is full the subscription waits for it:
backpressure). It runs in this file (``--baseline-server``). Each server is a process of its
own; the clients are raw HTTP/1.1 connections spread over ``--procs`` worker processes (this
file with ``--client-worker``: chunked reads, a minimal SSE parse, a latency histogram), so the
load generator is not one process's backlog and both servers are read the same way. One local
stack, one table, the same writer. Every figure line carries the machine's load average.

Phases, each run against both servers in the same run (the second one first, so that a
baseline still backlogged by a large fan-out does not spoil it):

1. **fan-out**: ``--clients`` streams connected at once, then ``--rate`` rows/s for
   ``--seconds`` s (one INSERT per row, ``sent_at = clock_timestamp()``). Per server: the
   commit-to-client latency p50/p99 over every delivery, deliveries missing (a client that did
   not get a row within ``--drain`` s after the last write), the server's RSS growth per
   idle stream (``VmRSS`` before and after connecting the streams), and the server's CPU time
   per delivery and in cores (``/proc/PID/stat``: the figure the machine's load moves least).
   On a shared 2-core machine the client workers, PostgreSQL and the stack compete with the
   server for the cores, so at high fan-out the latencies measure the machine as much as the
   server. ``--scales 50,100,250`` runs the same phase at other stream counts (supasync only)
   for the scaling trend.
2. **one stalled client**: ``--healthy`` streams plus one that sends its request and never
   reads (a 4 KiB receive window), rows of ~4 KB at ``--stall-rate`` rows/s for
   ``--stall-seconds`` s (3,000 rows by default: more than the baseline's queue holds). Per
   server: what the healthy clients received, and their p99, against the same phase without the
   stalled client (``--stall-repeat N`` alternates N calm and stalled runs and compares the
   medians).

Targets (issue #15): 1,000 streams at 200 changes/s, p50 <= 50 ms, p99 <= 500 ms, <= 64 KB per
idle stream; a stalled client changes the others' p99 by <= 10 %.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TABLE = "bench_web"
ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- the baseline


def baseline_server(port: int, table: str) -> None:
    """The old examples/fastapi_app.py's stream, as a server (run in its own process)."""
    from contextlib import asynccontextmanager

    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    from supasync import Realtime

    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        rt = Realtime.from_env()
        state["sub"] = rt.subscribe(table)
        async with rt:
            await rt.wait_live(timeout=60)
            await rt.wait_synced(timeout=120)
            yield

    async def ready(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    async def changes(request: Request) -> StreamingResponse:
        sub = state["sub"]

        async def events() -> Any:
            async for change in sub:
                yield f"event: {change.op.lower()}\ndata: {json.dumps(change.to_dict())}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/ready", ready), Route(f"/{table}/changes", changes)],
                    lifespan=lifespan)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning",
                timeout_graceful_shutdown=1)


# --------------------------------------------------------------------------- clients
#
# The streams are read by --procs worker processes (this file with --client-worker), so the
# load generator is not the bottleneck: each reads its share of the streams in chunks (up to
# 64 KiB a read), splits complete events on the blank line and finds the row id and sent_at with
# two regular expressions (no JSON decode). Every arrival is timed with time.time() when its
# chunk was read and compared with sent_at = clock_timestamp() of the INSERT: one clock (the
# machine's), read by PostgreSQL and by the workers. A worker keeps a latency histogram (0.5 ms
# buckets) and a count per stream, not a record per delivery.


_ID = re.compile(rb'"(?:record|new)":\s?\{"id":\s?(\d+)')
_SENT = re.compile(rb'"sent_at":\s?"([^"]+)"')
_SENT_CACHE: dict[bytes, float] = {}
BUCKET_S = 0.0005


def sent_time(raw: bytes) -> float:
    """``sent_at`` as Unix time, parsed once per row (every stream gets the same text)."""
    t = _SENT_CACHE.get(raw)
    if t is None:
        if len(_SENT_CACHE) > 100_000:
            _SENT_CACHE.clear()
        t = _SENT_CACHE[raw] = dt.datetime.fromisoformat(raw.decode()).timestamp()
    return t


class Stream:
    """One SSE connection read in chunks; counts the rows with an id above ``floor``."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.count = 0
        self.connected = False

    async def run(self, port: int, path: str) -> None:
        w = self.worker
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: b\r\nAccept: text/event-stream\r\n\r\n"
                     .encode())
        pending = b""
        try:
            while True:
                chunk = await reader.read(1 << 16)
                if not chunk:
                    return
                now = time.time()
                if not self.connected:
                    self.connected = True
                    w.connected += 1
                    if w.connected == w.streams:
                        w.all_connected.set()
                pending += chunk
                cut = pending.rfind(b"\n\n")
                if cut < 0:
                    continue
                done, pending = pending[:cut], pending[cut + 2:]
                floor, hist = w.floor, w.hist
                got = 0
                for event in done.split(b"\n\n"):
                    ident = _ID.search(event)
                    if ident is None or int(ident.group(1)) <= floor:
                        continue
                    sent = _SENT.search(event)
                    if sent is None:
                        continue
                    got += 1
                    b = int((now - sent_time(sent.group(1))) / BUCKET_S)
                    hist[b] = hist.get(b, 0) + 1
                if got:
                    self.count += got
                    w.arrived.set()
        finally:
            writer.close()


class Worker:
    """A client process's streams (see above)."""

    def __init__(self) -> None:
        self.floor = 1 << 62  # nothing counts until the phase says where it starts
        self.hist: dict[int, int] = {}
        self.connected = 0
        self.streams = 0
        self.all_connected = asyncio.Event()
        self.arrived = asyncio.Event()


async def client_worker(port: int, path: str, n: int) -> None:
    """Run *n* streams; talk to the main process over stdin/stdout, one JSON object a line:
    ``{"connected": n}`` once every stream has its first bytes; then ``{"floor": id}`` in
    counts rows above id; ``{"expect": rows, "drain": s}`` waits until every stream has that
    many rows (or *drain* s) and answers ``{"hist", "missing", "received"}``."""
    w = Worker()
    w.streams = n
    streams = [Stream(w) for _ in range(n)]
    tasks = [asyncio.create_task(s.run(port, path)) for s in streams]
    loop = asyncio.get_running_loop()
    rd = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(rd), sys.stdin)

    def say(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    async with asyncio.timeout(300):
        await w.all_connected.wait()
    say({"connected": n})
    cpu0 = time.process_time()
    while True:
        line = await rd.readline()
        if not line:
            break
        msg = json.loads(line)
        if "floor" in msg:
            w.floor, w.hist = int(msg["floor"]), {}
            cpu0 = time.process_time()
            for s in streams:
                s.count = 0
            say({"ok": True})
        elif "expect" in msg:
            want = int(msg["expect"])
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(float(msg["drain"])):
                    while any(s.count < want for s in streams):
                        w.arrived.clear()
                        await w.arrived.wait()
            say({"hist": w.hist, "cpu": time.process_time() - cpu0,
                 "received": sum(min(s.count, want) for s in streams),
                 "missing": sum(max(0, want - s.count) for s in streams)})
            break
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class Clients:
    """The main process's handle on the worker processes of one phase."""

    def __init__(self, port: int, path: str, clients: int, procs: int, nice: int = 0) -> None:
        shares = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
        self.procs = [subprocess.Popen(
            [sys.executable, __file__, "--client-worker", str(port), path, str(k)],
            preexec_fn=(lambda: os.nice(nice)) if nice else None,
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            for k in shares if k]

    async def ask(self, msg: dict[str, Any] | None) -> list[dict[str, Any]]:
        def one(p: subprocess.Popen[str]) -> dict[str, Any]:
            assert p.stdin is not None and p.stdout is not None
            if msg is not None:
                p.stdin.write(json.dumps(msg) + "\n")
                p.stdin.flush()
            line = p.stdout.readline()
            if not line:
                raise SystemExit("a client worker ended early")
            return dict(json.loads(line))

        return list(await asyncio.gather(*(asyncio.to_thread(one, p) for p in self.procs)))

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def median(values: Any) -> float:
    import statistics

    return float(statistics.median(list(values)))


def quantile(hist: dict[int, int], q: float) -> float:
    """The *q* quantile (0-1) of a merged histogram, in ms (the bucket's upper edge)."""
    total = sum(hist.values())
    if not total:
        return float("nan")
    rank, seen = q * total, 0
    for b in sorted(hist):
        seen += hist[b]
        if seen >= rank:
            return (b + 1) * BUCKET_S * 1000
    return float("nan")


def stalled(port: int, path: str) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: b\r\n\r\n".encode())
    return sock


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def write_rows(db_url: str, rate: float, seconds: float, payload: int) -> list[int]:
    import psycopg

    ids: list[int] = []
    pad = "x" * payload
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        start = time.monotonic()
        n = int(rate * seconds)
        for i in range(n):
            wait = start + i / rate - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)  # pacing the writer
            cur = await conn.execute(f"insert into public.{TABLE} (payload, sent_at) values "
                                     "(%s, clock_timestamp()) returning id", (pad,))
            row = await cur.fetchone()
            assert row is not None
            ids.append(int(row[0]))
    return ids


async def max_id(db_url: str) -> int:
    import psycopg

    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        cur = await conn.execute(f"select coalesce(max(id), 0) from public.{TABLE}")
        row = await cur.fetchone()
        return int(row[0]) if row else 0


async def phase(port: int, pid: int, path: str, clients: int, args: argparse.Namespace,
                db_url: str, *, payload: int = 16, stall: bool = False) -> dict[str, Any]:
    before = rss_kb(pid)
    procs = max(1, min(args.procs, clients))
    group = Clients(port, path, clients, procs, args.client_nice)
    try:
        await group.ask(None)  # every stream connected
        blocked = stalled(port, path) if stall else None
        await asyncio.sleep(2.0)  # let every stream settle before measuring memory
        idle = rss_kb(pid)
        await group.ask({"floor": await max_id(db_url)})
        cpu0, load0 = cpu_s(pid), os.getloadavg()[0]
        rate, seconds = (args.stall_rate, args.stall_seconds) if payload > 100 else (
            args.rate, args.seconds)
        ids = await write_rows(db_url, rate, seconds, payload)
        answers = await group.ask({"expect": len(ids), "drain": args.drain})
        cpu, load1 = cpu_s(pid) - cpu0, os.getloadavg()[0]
        if blocked is not None:
            blocked.close()
    finally:
        group.close()
    hist: dict[int, int] = {}
    for a in answers:
        for b, n in a["hist"].items():
            hist[int(b)] = hist.get(int(b), 0) + n
    received = sum(a["received"] for a in answers)
    return {"p50": quantile(hist, 0.50), "p99": quantile(hist, 0.99),
            "missing": sum(a["missing"] for a in answers), "expected": len(ids) * clients,
            "kb_per_stream": (idle - before) / max(1, clients),
            "cpu_us": cpu / max(1, received) * 1e6, "cpu_share": cpu / seconds,
            "load": (load0 + load1) / 2, "procs": procs,
            "clients_cpu": sum(a["cpu"] for a in answers) / seconds}


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=log.open("w"))


async def wait_http(port: int, path: str, proc: subprocess.Popen[bytes]) -> None:
    import httpx

    async with httpx.AsyncClient() as http:
        for _ in range(1200):
            assert proc.poll() is None, "server exited"
            try:
                if (await http.get(f"http://127.0.0.1:{port}{path}", timeout=5)).status_code \
                        == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)  # polling a child process's readiness
    raise SystemExit(f"server on {port} never became ready")


def show(name: str, r: dict[str, Any]) -> None:
    print(f"  {name:<28} p50 {r['p50']:8.1f} ms  p99 {r['p99']:8.1f} ms  missing "
          f"{r['missing']:>7} of {r['expected']:<8} idle stream {r['kb_per_stream']:5.1f} KB  "
          f"server CPU {r['cpu_us']:5.1f} us/delivery ({r['cpu_share']:.2f} core)  "
          f"clients {r['clients_cpu']:.2f} core  load {r['load']:.1f}", flush=True)


async def run(args: argparse.Namespace) -> None:
    from supasync.devstack.postgres import free_port
    from supasync.devstack.testing import StackProcess

    with StackProcess() as stack:
        stack.sql(f"""
            drop table if exists public.{TABLE};
            create table public.{TABLE} (id bigint generated always as identity primary key,
                                         payload text, sent_at timestamptz not null);
            grant select on public.{TABLE} to anon, authenticated, service_role;
            alter publication supabase_realtime add table public.{TABLE};
        """)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SUPABASE_", "SUPASYNC_"))}
        env.update({k: v for k, v in stack.env.items() if k.startswith("SUPABASE_")})
        env["SUPASYNC_TOKEN_SOURCE"] = "service_role"
        logs = Path(os.environ.get("TMPDIR", "/tmp"))
        p_new, p_old = free_port(), free_port()
        new = start([sys.executable, "-m", "supasync.cli", "serve", "--table", TABLE,
                     "--port", str(p_new), "--quiet"], env, logs / "bench-web-serve.log")
        old = start([sys.executable, __file__, "--baseline-server", str(p_old)], env,
                    logs / "bench-web-baseline.log")
        try:
            await wait_http(p_new, f"/{TABLE}/rows", new)
            await wait_http(p_old, "/ready", old)
            servers = [("supasync serve", p_new, new.pid), ("hand-written", p_old, old.pid)]
            path = f"/{TABLE}/changes"
            # The stalled-client phase first: a baseline backlogged by the fan-out phase
            # would answer it with nothing at all.
            print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} "
                  f"at start; client worker processes: up to {args.procs}", flush=True)
            print(f"one stalled client: {args.healthy} healthy streams, ~4 KB rows, "
                  f"{args.stall_rate:g} rows/s for {args.stall_seconds:g} s", flush=True)
            for name, port, pid in servers if args.healthy else []:
                # Calm and stalled runs alternate --stall-repeat times: on a shared machine
                # one pair's ratio is mostly noise; the medians are compared.
                calms, hits = [], []
                for _ in range(args.stall_repeat):
                    calm = await phase(port, pid, path, args.healthy, args, stack.db_url,
                                       payload=4000)
                    show(f"{name}, none stalled", calm)
                    hit = await phase(port, pid, path, args.healthy, args, stack.db_url,
                                      payload=4000, stall=True)
                    show(f"{name}, one stalled", hit)
                    calms.append(calm)
                    hits.append(hit)
                got = 1 - sum(h["missing"] for h in hits) / max(1, sum(h["expected"]
                                                                      for h in hits))
                p99_calm = median(c["p99"] for c in calms)
                p99_hit = median(h["p99"] for h in hits)
                print(f"  {name}: healthy clients received {got:.1%} with a stalled client; "
                      f"median p99 {p99_hit:.1f} ms vs {p99_calm:.1f} ms calm = "
                      f"{p99_hit / p99_calm:.2f}x (median p50 "
                      f"{median(h['p50'] for h in hits):.1f} vs "
                      f"{median(c['p50'] for c in calms):.1f} ms)", flush=True)
            for n in args.scales:
                print(f"scaling (supasync serve only): {n} streams, {args.rate:g} rows/s for "
                      f"{args.seconds:g} s", flush=True)
                show("supasync serve", await phase(p_new, new.pid, path, n, args,
                                                   stack.db_url))
            print(f"fan-out: {args.clients} streams per server, {args.rate:g} rows/s for "
                  f"{args.seconds:g} s", flush=True)
            fan = {}
            for name, port, pid in servers if not args.no_baseline else servers[:1]:
                fan[name] = await phase(port, pid, path, args.clients, args, stack.db_url)
                show(name, fan[name])
            if args.no_baseline:
                return
            a, b = fan["supasync serve"], fan["hand-written"]
            print(f"  ratio supasync/hand-written: p50 {a['p50'] / b['p50']:.2f}x, "
                  f"p99 {a['p99'] / b['p99']:.2f}x, server CPU per delivery "
                  f"{a['cpu_us'] / b['cpu_us']:.2f}x")
            cut = (logs / "bench-web-serve.log").read_text().count("cut off stream")
            print(f"supasync serve cut off {cut} stream(s)")
        finally:
            for proc in (new, old):
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--healthy", type=int, default=20)
    p.add_argument("--rate", type=float, default=100.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--stall-rate", type=float, default=300.0)
    p.add_argument("--stall-seconds", type=float, default=10.0)
    p.add_argument("--stall-repeat", type=int, default=1,
                   help="calm/stalled pairs per server (medians compared)")
    p.add_argument("--drain", type=float, default=20.0)
    p.add_argument("--procs", type=int, default=4,
                   help="client worker processes reading the streams (default 4)")
    p.add_argument("--scales", type=lambda v: [int(x) for x in v.split(",") if x],
                   default=[], help="also run the fan-out at these stream counts against "
                   "supasync serve only (e.g. 100,250,500), for the scaling trend")
    p.add_argument("--client-nice", type=int, default=0,
                   help="niceness of the client workers (e.g. 10: the server under test "
                   "gets the CPU first; the clients stand for other machines)")
    p.add_argument("--no-baseline", action="store_true",
                   help="fan-out against supasync serve only (exploratory runs)")
    p.add_argument("--baseline-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    p.add_argument("--client-worker", nargs=3, metavar=("PORT", "PATH", "N"),
                   help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.client_worker:
        port, path, n = args.client_worker
        asyncio.run(client_worker(int(port), path, int(n)))
        return
    if args.baseline_server:
        baseline_server(args.baseline_server, TABLE)
        return
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
