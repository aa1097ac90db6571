"""Benchmark: changes to browsers with supasync.web (``supasync serve``) against the hand-written
streaming endpoint of the previous ``examples/fastapi_app.py``.

Not a test: it prints figures and ratios. Run::

    .venv/bin/python bench/web.py                                  # defaults: about 2 minutes
    .venv/bin/python bench/web.py --clients 1000 --rate 200 --seconds 20

The baseline is the pattern the old example showed and users copy: a ``Realtime`` client with
its cache, and per browser a ``StreamingResponse`` over ``async for change in subscription``
(each iterator has its own bounded queue; when one is full the subscription waits for it:
backpressure). It runs in this file (``--baseline-server``). Each server is a process of its
own; the clients are raw HTTP/1.1 connections in this process (asyncio, a minimal SSE parse),
so both servers are read the same way. One local stack, one table, the same writer.

Phases, each run against both servers in the same run (the second one first, so that a
baseline still backlogged by a large fan-out does not spoil it):

1. **fan-out**: ``--clients`` streams connected at once, then ``--rate`` rows/s for
   ``--seconds`` s (one INSERT per row, ``sent_at = clock_timestamp()``). Per server: the
   commit-to-client latency p50/p99 over every delivery, deliveries missing (a client that did
   not get a row within ``--drain`` s after the last write), the server's RSS growth per
   idle stream (``VmRSS`` before and after connecting the streams), and the server's CPU time
   per delivery (``/proc/PID/stat``: the figure the machine's load moves least). On a shared
   2-core machine the clients (one Python process) compete with the server for the cores, so
   at high fan-out the latencies measure the machine as much as the server.
2. **one stalled client**: ``--healthy`` streams plus one that sends its request and never
   reads (a 4 KiB receive window), rows of ~4 KB at ``--stall-rate`` rows/s for
   ``--stall-seconds`` s (3,000 rows by default: more than the baseline's queue holds). Per
   server: what the healthy clients received, and their p99, against the same phase without the
   stalled client.

Targets (issue #15): 1,000 streams at 200 changes/s, p50 <= 50 ms, p99 <= 500 ms, <= 64 KB per
idle stream; a stalled client changes the others' p99 by <= 10 %.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import re
import signal
import socket
import statistics
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


_ID = re.compile(rb'"(?:record|new)":\s?\{"id":\s?(\d+)')
_SENT = re.compile(rb'"sent_at":\s?"([^"]+)"')
_SENT_CACHE: dict[bytes, float] = {}


def sent_time(raw: bytes) -> float:
    """``sent_at`` as Unix time, parsed once per row (every client gets the same text)."""
    t = _SENT_CACHE.get(raw)
    if t is None:
        t = _SENT_CACHE[raw] = dt.datetime.fromisoformat(raw.decode()).timestamp()
    return t


class Client:
    """One SSE connection: row id -> arrival latency (s), from the event's ``sent_at``. The
    line is not decoded as JSON: two regular expressions and a cached timestamp parse keep the
    clients' CPU (in this one process) small next to the servers'."""

    def __init__(self, arrived: asyncio.Event) -> None:
        self.latency: dict[int, float] = {}
        self.arrived = arrived
        self.task: asyncio.Task[None] | None = None

    async def run(self, port: int, path: str) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: b\r\nAccept: text/event-stream\r\n\r\n"
                     .encode())
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                if not line.startswith(b"data: "):
                    continue
                now = time.time()
                ident, sent = _ID.search(line), _SENT.search(line)
                if ident is None or sent is None:
                    continue
                self.latency.setdefault(int(ident.group(1)), now - sent_time(sent.group(1)))
                self.arrived.set()
        finally:
            writer.close()


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


async def phase(port: int, pid: int, path: str, clients: int, args: argparse.Namespace,
                db_url: str, *, payload: int = 16, stall: bool = False) -> dict[str, Any]:
    before = rss_kb(pid)
    arrived = asyncio.Event()
    cs = [Client(arrived) for _ in range(clients)]
    for c in cs:
        c.task = asyncio.create_task(c.run(port, path))
    blocked = stalled(port, path) if stall else None
    await asyncio.sleep(2.0)  # let every stream connect and settle before measuring memory
    idle = rss_kb(pid)
    cpu0 = cpu_s(pid)
    rate, seconds = (args.stall_rate, args.stall_seconds) if payload > 100 else (
        args.rate, args.seconds)
    ids = await write_rows(db_url, rate, seconds, payload)
    want = set(ids)
    try:
        async with asyncio.timeout(args.drain):
            while any(not want <= c.latency.keys() for c in cs):
                arrived.clear()
                await arrived.wait()
    except TimeoutError:
        pass  # what has not arrived by now counts as missing
    cpu = cpu_s(pid) - cpu0
    lat = sorted(v for c in cs for k, v in c.latency.items() if k in want)
    missing = sum(len(want - c.latency.keys()) for c in cs)
    for c in cs:
        assert c.task is not None
        c.task.cancel()
    await asyncio.gather(*(c.task for c in cs if c.task), return_exceptions=True)
    if blocked is not None:
        blocked.close()
    q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [float("nan")] * 99
    return {"p50": q[49] * 1000, "p99": q[98] * 1000, "missing": missing,
            "expected": len(want) * clients,
            "kb_per_stream": (idle - before) / max(1, clients),
            "cpu_us": cpu / max(1, len(lat)) * 1e6}


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
          f"server CPU {r['cpu_us']:5.1f} us/delivery")


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
            print(f"one stalled client: {args.healthy} healthy streams, ~4 KB rows, "
                  f"{args.stall_rate:g} rows/s for {args.stall_seconds:g} s")
            for name, port, pid in servers:
                calm = await phase(port, pid, path, args.healthy, args, stack.db_url,
                                   payload=4000)
                show(f"{name}, none stalled", calm)
                hit = await phase(port, pid, path, args.healthy, args, stack.db_url,
                                  payload=4000, stall=True)
                show(f"{name}, one stalled", hit)
                got = 1 - hit["missing"] / max(1, hit["expected"])
                print(f"  {name}: healthy clients received {got:.1%} with a stalled client; "
                      f"p99 {hit['p99'] / calm['p99']:.2f}x the calm p99")
            print(f"fan-out: {args.clients} streams per server, {args.rate:g} rows/s for "
                  f"{args.seconds:g} s")
            fan = {}
            for name, port, pid in servers:
                fan[name] = await phase(port, pid, path, args.clients, args, stack.db_url)
                show(name, fan[name])
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
    p.add_argument("--drain", type=float, default=20.0)
    p.add_argument("--baseline-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.baseline_server:
        baseline_server(args.baseline_server, TABLE)
        return
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
