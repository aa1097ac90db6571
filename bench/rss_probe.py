"""Where does a long-running process's RSS go? A diagnostic beside ``bench/soak.py``.

Not a test and not a benchmark: it runs the soak's load (a fixed-size table updated at a steady
rate, rotating faults, stack restarts) against several processes at once and, every
``--sample-every`` seconds, reads for each process

* ``/proc/<pid>/smaps``: every mapping's RSS, so the growth can be pinned on the brk heap,
  anonymous mappings (pymalloc arenas are 1 MiB anonymous mmaps; glibc serves requests of
  128 KiB and more with their own mmaps), thread stacks or file mappings;
* from inside the process (a SIGUSR1 handler installed by this file, which then runs the
  process's real code): glibc's ``mallinfo2()`` (heap size, in use, free), pymalloc's arena
  counts from ``sys._debugmallocstats()``, SQLite's ``sqlite3_memory_used()``, the number of
  objects the garbage collector tracks by type, and asyncio's pending tasks by coroutine.

Processes (``--procs``, comma-separated):

* ``bare`` - realtime-py alone: an ``AsyncRealtimeClient`` with one ``postgres_changes``
  channel, rebuilt after every lost socket and rejoined after every expiry, no supasync code;
* ``client`` - the soak's client (``Realtime`` with a cache file and repair on);
* ``tail`` - ``supasync tail --table soak --json --snapshot``;
* ``mirror`` - ``supasync mirror --table soak``;
* ``idle`` - a process that imports what the client imports and sleeps (the floor).

Run::

    .venv/bin/python bench/rss_probe.py --duration 600 --json /tmp/probe.json

It prints, per process, the growth of each measure from the end of the warm-up (the first
``--warmup`` seconds) to the end, and the mappings whose RSS grew most.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


# -- inside a probed process ---------------------------------------------------------------
def _mallinfo2() -> dict[str, int]:
    import ctypes

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = Mallinfo2
    info = libc.mallinfo2()
    return {name: int(getattr(info, name)) for name, _ in Mallinfo2._fields_}


def _pymalloc() -> dict[str, int]:
    """The arena and block counts of ``sys._debugmallocstats()`` (it writes to fd 2)."""
    out = tempfile.TemporaryFile()
    saved = os.dup(2)
    try:
        sys.stderr.flush()
        os.dup2(out.fileno(), 2)
        sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    out.seek(0)
    text = out.read().decode(errors="replace")
    stats: dict[str, int] = {}
    for line in text.splitlines():
        match = re.match(r"^# ([a-z ]+?)\s*=\s*([\d,]+)$", line.strip())
        if match:
            stats[match.group(1).replace(" ", "_")] = int(match.group(2).replace(",", ""))
    return stats


def _sqlite_memory() -> int | None:
    import ctypes

    try:
        lib = ctypes.CDLL("libsqlite3.so.0")
    except OSError:
        return None
    lib.sqlite3_memory_used.restype = ctypes.c_int64
    return int(lib.sqlite3_memory_used())


def _install_diag(out_path: str) -> None:
    """SIGUSR1 appends one JSON line of in-process measures to *out_path*; SIGUSR2 writes a
    tracemalloc snapshot beside it when tracemalloc is on (``PYTHONTRACEMALLOC``)."""
    import asyncio
    import gc

    count = [0]

    def on_usr1(signum: int, frame: Any) -> None:
        types = collections.Counter(type(o).__name__ for o in gc.get_objects())
        record = {
            "t": time.time(),
            "mallinfo2": _mallinfo2(),
            "pymalloc": _pymalloc(),
            "sqlite_memory_used": _sqlite_memory(),
            "gc_objects": sum(types.values()),
            "gc_types": dict(types.most_common(60)),
            # asyncio.tasks._all_tasks: a WeakSet of every task not yet collected (3.11).
            "tasks": sum(1 for t in list(asyncio.tasks._all_tasks) if not t.done()),
            "tasks_done_uncollected": sum(1 for t in list(asyncio.tasks._all_tasks) if t.done()),
            "task_names": dict(collections.Counter(
                getattr(t.get_coro(), "__qualname__", "?") for t in list(asyncio.tasks._all_tasks)
                if not t.done())),
        }
        with open(out_path, "a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")

    def on_usr2(signum: int, frame: Any) -> None:
        import tracemalloc

        if tracemalloc.is_tracing():
            tracemalloc.take_snapshot().dump(f"{out_path}.{count[0]}.tracemalloc")
            count[0] += 1

    signal.signal(signal.SIGUSR1, on_usr1)
    signal.signal(signal.SIGUSR2, on_usr2)
    Path(out_path + ".ready").touch()  # the harness signals only from now on (else: killed)


BARE = r"""
import asyncio, json, sys
from realtime import AsyncRealtimeClient

url, anon, key, log = sys.argv[1:5]

async def main():
    out = open(log, "a", encoding="utf-8")
    loop = asyncio.get_running_loop()
    while True:
        lost = asyncio.Event()
        expired = asyncio.Event()

        def on_change(payload):
            out.write(type(payload).__name__ + "\n")

        def on_state(state, error=None):
            if str(state).endswith("CHANNEL_ERROR") or str(state).endswith("CLOSED"):
                expired.set()

        client = AsyncRealtimeClient(url + "/realtime/v1", token=anon, auto_reconnect=False)
        try:
            await client.set_auth(key)
            await client.connect()
        except Exception:
            await asyncio.sleep(0.2)
            continue

        async def join():
            channel = client.channel("soak")
            channel.on_postgres_changes("*", schema="public", table="soak", callback=on_change)
            await channel.subscribe(on_state)
            return channel

        channel = await join()
        while True:
            await asyncio.sleep(0.2)  # polling the socket's state: a probe, not a client
            if not client.is_connected or (client._listen_task and client._listen_task.done()):
                break
            if expired.is_set():
                expired.clear()
                channel.rejoin_timer.reset()
                channel.join_push.destroy()
                client._remove_channel(channel)
                channel = await join()
        for ch in list(client.channels.values()):
            ch.rejoin_timer.reset()
            ch.join_push.destroy()
        try:
            await asyncio.wait_for(client.close(), 5)
        except Exception:
            pass
        await asyncio.sleep(0.2)

asyncio.run(main())
"""

IDLE = r"""
import asyncio
import supasync.client.realtime, supasync.client.gate, supasync.repair.repairer  # noqa: F401
async def main():
    while True:
        await asyncio.sleep(3600)
asyncio.run(main())
"""


def child_main(argv: list[str]) -> None:
    """``rss_probe.py --child DIAG_FILE MODE ARGS...``: install the handlers, run MODE."""
    diag, mode, *rest = argv
    _install_diag(diag)
    if mode == "code":
        code, *args = rest
        sys.argv = ["-c", *args]
        exec(compile(code, "<probe-child>", "exec"), {"__name__": "__main__"})
    elif mode == "cli":
        sys.argv = ["supasync", *rest]
        from supasync.cli.app import main

        main()
    else:
        raise SystemExit(f"unknown child mode {mode!r}")


# -- the harness ---------------------------------------------------------------------------
def smaps(pid: int) -> list[dict[str, Any]]:
    """Every mapping of *pid*: start, size and RSS (KiB), perms and name."""
    maps: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = re.match(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$", line)
        if head:
            start, end = int(head.group(1), 16), int(head.group(2), 16)
            current = {"start": start, "kb": (end - start) // 1024, "perms": head.group(3),
                       "name": head.group(4) or "[anon]", "rss": 0, "anon": 0}
            maps.append(current)
        elif current is not None and line.startswith("Rss:"):
            current["rss"] = int(line.split()[1])
        elif current is not None and line.startswith("Anonymous:"):
            current["anon"] = int(line.split()[1])
    return maps


def classify(m: dict[str, Any]) -> str:
    name = m["name"]
    if name == "[heap]":
        return "heap (brk)"
    if name.startswith("[stack"):
        return "main stack"
    if name == "[anon]":
        return "anon mmap"
    if name.startswith("["):
        return name
    if m["anon"]:
        return "file, private dirty"
    return "file"


def summarise_maps(maps: list[dict[str, Any]]) -> dict[str, int]:
    out: collections.Counter[str] = collections.Counter()
    for m in maps:
        out[classify(m)] += m["rss"]
    return dict(out)


def map_diff(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[str]:
    """The mappings whose RSS changed most (by start address), largest first."""
    old = {m["start"]: m for m in before}
    rows = []
    for m in after:
        prev = old.pop(m["start"], None)
        grown = m["rss"] - (prev["rss"] if prev else 0)
        if grown:
            rows.append((grown, f"{m['start']:x} {m['kb']:>8} KiB {m['perms']} "
                                f"{classify(m):<18} rss {prev['rss'] if prev else '-':>6} -> "
                                f"{m['rss']:>6} ({grown:+} KiB){'' if prev else ' NEW'}"))
    for m in old.values():
        if m["rss"]:
            rows.append((-m["rss"], f"{m['start']:x} {m['kb']:>8} KiB {m['perms']} "
                                    f"{classify(m):<18} rss {m['rss']} -> gone"))
    rows.sort(key=lambda r: -abs(r[0]))
    return [text for _, text in rows[:12]]


def run(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(HERE))
    from soak import CLIENT, TABLE, Writer, fill_table, start_stack, stop_processes

    work, stack = start_stack("supasync-probe-")
    procs: dict[str, subprocess.Popen[bytes]] = {}
    writer = None
    try:
        env = fill_table(stack, args.rows)
        if args.tracemalloc:
            env["PYTHONTRACEMALLOC"] = str(args.tracemalloc)

        child = [sys.executable, str(Path(__file__).resolve()), "--child"]
        commands = {
            "bare": ["code", BARE, stack.url, stack.anon_key, stack.service_role_key,
                     str(work / "bare.jsonl")],
            "client": ["code", CLIENT, stack.url, stack.anon_key, stack.service_role_key,
                       str(work / "cache.db"), str(work / "handled.jsonl"), "10"],
            "tail": ["cli", "tail", "--table", TABLE, "--json", "--snapshot", "--quiet"],
            "mirror": ["cli", "mirror", "--table", TABLE, "--db", str(work / "mirror.sqlite"),
                       "--quiet"],
            "idle": ["code", IDLE],
        }
        for name in args.procs.split(","):
            diag = work / f"{name}.diag.jsonl"
            procs[name] = subprocess.Popen([*child, str(diag), *commands[name]], env=env,
                                           cwd=work, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL)
        writer = Writer(stack.db_url, args.rows, args.rate, args.seed)
        writer.start()
        faults = [("drop", stack.drop_connections), ("close", stack.close_connections),
                  ("expire", stack.expire_tokens)]
        samples: dict[str, list[dict[str, Any]]] = {n: [] for n in procs}
        started = time.monotonic()
        next_fault, next_restart = started + args.fault_every, started + args.restart_every
        next_sample = started + 5
        done: list[str] = []
        tm_sent = False
        while (now := time.monotonic()) < started + args.duration:
            if now >= next_sample:
                for name, proc in procs.items():
                    if proc.poll() is None and (work / f"{name}.diag.jsonl.ready").exists():
                        proc.send_signal(signal.SIGUSR1)
                        if args.tracemalloc and not tm_sent and now - started >= args.warmup:
                            proc.send_signal(signal.SIGUSR2)
                        samples[name].append({"t": now - started, "maps": smaps(proc.pid),
                                              "load": os.getloadavg()[0]})
                tm_sent = tm_sent or (args.tracemalloc and now - started >= args.warmup)
                next_sample += args.sample_every
            if now >= next_restart:
                stack.restart()
                done.append("restart")
                next_restart += args.restart_every
            elif now >= next_fault:
                kind, action = faults[len(done) % len(faults)]
                try:
                    action()
                    done.append(kind)
                except Exception as exc:
                    done.append(f"{kind} failed: {type(exc).__name__}")
                next_fault += args.fault_every
            time.sleep(max(0.0, min(0.5, min(next_sample, next_fault, next_restart) - now)))
        for name, proc in procs.items():
            if proc.poll() is None and (work / f"{name}.diag.jsonl.ready").exists():
                proc.send_signal(signal.SIGUSR1)
                if args.tracemalloc:
                    proc.send_signal(signal.SIGUSR2)
        # The handlers write their last lines (and snapshots, which take seconds): wait for them.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(
                (work / f"{name}.diag.jsonl.1.tracemalloc").exists()
                for name in procs) if args.tracemalloc else False:
            time.sleep(0.5)
        time.sleep(3)
        report: dict[str, Any] = {"faults": collections.Counter(done), "writes": writer.writes,
                                  "alive": {n: p.poll() is None for n, p in procs.items()},
                                  "processes": {}}
        for name, rows in samples.items():
            diag_lines = [json.loads(line) for line in
                          (work / f"{name}.diag.jsonl").read_text().splitlines() if line]
            report["processes"][name] = describe(rows, diag_lines, args.warmup)
        if args.keep:
            report["work"] = str(work)
        return report
    finally:
        if writer is not None:
            writer.done.set()
        stop_processes(procs.values())
        stack.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def describe(rows: list[dict[str, Any]], diag: list[dict[str, Any]],
             warmup: float) -> dict[str, Any]:
    """Growth of each measure from the first sample after the warm-up to the last."""
    after = [r for r in rows if r["t"] >= warmup] or rows
    first, last = after[0], rows[-1]
    d_first = diag[min(len(diag) - 1, rows.index(first))] if diag else {}
    d_last = diag[-1] if diag else {}

    def rss(sample: dict[str, Any]) -> int:
        return sum(m["rss"] for m in sample["maps"])

    def mib(kib: float) -> float:
        return round(kib / 1024, 2)

    cls_first, cls_last = summarise_maps(first["maps"]), summarise_maps(last["maps"])
    out: dict[str, Any] = {
        "t": [round(first["t"]), round(last["t"])],
        "rss_mib": [mib(rss(first)), mib(rss(last)), mib(rss(last) - rss(first))],
        "rss_series_mib": [mib(rss(r)) for r in rows],
        "by_kind_mib": {k: [mib(cls_first.get(k, 0)), mib(cls_last.get(k, 0)),
                            mib(cls_last.get(k, 0) - cls_first.get(k, 0))]
                        for k in sorted(cls_first.keys() | cls_last.keys())},
        "maps_grown": map_diff(first["maps"], last["maps"]),
    }
    if d_first and d_last:
        mi_a, mi_b = d_first["mallinfo2"], d_last["mallinfo2"]
        out["mallinfo2_mib"] = {k: [mib(mi_a[k] / 1024), mib(mi_b[k] / 1024),
                                    mib((mi_b[k] - mi_a[k]) / 1024)]
                                for k in ("arena", "uordblks", "fordblks", "hblkhd", "keepcost")}
        pa, pb = d_first["pymalloc"], d_last["pymalloc"]
        out["pymalloc"] = {k: [pa.get(k), pb.get(k)] for k in (
            "arenas_allocated_current", "arenas_highwater_mark", "arenas_allocated_total",
            "arenas_reclaimed", "bytes_in_allocated_blocks", "bytes_in_available_blocks",
            "unused_pools") if k in pa or k in pb}
        out["sqlite_memory_used"] = [d_first["sqlite_memory_used"], d_last["sqlite_memory_used"]]
        out["gc_objects"] = [d_first["gc_objects"], d_last["gc_objects"]]
        ta, tb = d_first["gc_types"], d_last["gc_types"]
        diff = {k: tb.get(k, 0) - ta.get(k, 0) for k in ta.keys() | tb.keys()}
        out["gc_types_grown"] = dict(sorted(((k, v) for k, v in diff.items() if v),
                                            key=lambda kv: -abs(kv[1]))[:15])
        out["tasks"] = [d_first["tasks"], d_last["tasks"]]
        out["task_names"] = [d_first.get("task_names"), d_last.get("task_names")]
        out["mallinfo2_series_arena_mib"] = [mib(d["mallinfo2"]["arena"] / 1024) for d in diag]
        out["mallinfo2_series_inuse_mib"] = [mib(d["mallinfo2"]["uordblks"] / 1024)
                                             for d in diag]
        out["pymalloc_arenas_series"] = [d["pymalloc"].get("arenas_allocated_current")
                                         for d in diag]
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child_main(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--warmup", type=float, default=120.0)
    parser.add_argument("--procs", default="bare,client,tail")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--fault-every", type=float, default=20.0)
    parser.add_argument("--restart-every", type=float, default=300.0)
    parser.add_argument("--sample-every", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--tracemalloc", type=int, default=0,
                        help="frames to trace (0: off); snapshots at warm-up end and at the end")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    report = run(args)
    text = json.dumps(report, indent=1)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
