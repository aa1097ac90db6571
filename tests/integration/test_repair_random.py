"""Randomised fault test: seeded sequences of writes from several writers interleaved with faults,
through the real client (supasync.Realtime + CachedGate) against the local stack.

Each sequence, per mode (exact, cursor, diff): three writers insert, update and delete rows, some
transactions staying open across later steps and faults; faults are dropped sockets, a stack
restart on the same data directory, expired tokens, paused changes (delivered late), and the
client stopped and started again on the same cache file. At the end every transaction is
committed, one more gap is forced (a dropped socket) and, once its repair is reported (in the
mode asked for), the cache and the handlers' view must both equal the server's rows, and no row
may ever have been shown an older state than one shown before (``updated_at`` never goes back).

Every sequence also runs, on the same client and cache file, a **filtered** subscription
(``v=lt.500``, with writers moving rows across the bound: live move-outs and move-ins) whose
handlers' view and cache must equal the server's matching rows, and a **handler-less**
subscription whose read model (``sub.rows()``) must equal the server's rows. A fourth of the
sequences run ``repair="auto"`` on a table whose ``updated_at`` has only a default (no trigger,
no change log: the case where trusting the column loses updates); ``auto`` must pick diff.
Beside the client, every sequence runs ``supasync mirror``'s worker on a file of its own (its
own socket, so the drops, expiries and stack restarts reach it too; stopped and started with the
client): at the end the mirror file must equal the server's rows as well.

A separate test runs the client in a child process and kills it with SIGKILL between writes and
in the middle of a large batch, restarting it on the same cache file; the handled changes
(logged by the child) and the cache file must equal the server's rows at the end.

By default 51 seeded sequences run (the modes taking turns), plus 6 whose subscription takes its
changes from Broadcast from Database (``source="broadcast"``, a ``realtime.broadcast_changes``
trigger on the table, issue #14); ``--slow`` adds 50 longer ones per mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import tempfile
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from supasync.client.config import Settings
from supasync.client.gate import CachedGate
from supasync.client.realtime import Realtime
from supasync.core.backoff import BackoffPolicy
from supasync.core.changes import Change
from supasync.core.errors import CacheError
from supasync.core.merge import canonical_row, version_value
from supasync.core.status import GapOpened, GapRepaired, StatusEvent, utcnow
from supasync.devstack.testing import StackProcess
from supasync.mirror.worker import MirrorOptions, MirrorTarget, run_mirror
from supasync.repair.repairer import RepairConfig
from supasync.store import open_store
from supasync.store.reads import StoreReader

pytestmark = pytest.mark.integration

WAIT = 60.0
MODES = ("exact", "cursor", "diff")
CI_MODES = ("exact", "cursor", "diff", "auto")
BOUND = 500  # the filtered subscription holds rows with v < BOUND
SLOW_SEEDS = range(2, 52)
IDS = range(1, 16)


@pytest.fixture(scope="module")
def stack() -> Iterator[StackProcess]:
    data_dir = tempfile.mkdtemp(prefix="supasync-test-random-")
    os.chmod(data_dir, 0o755)  # PostgreSQL runs as `postgres` and must enter it
    with StackProcess(data_dir=data_dir) as started:
        started.sql(
            "create or replace function public.rnd_touch() returns trigger language plpgsql as "
            "$$ begin new.updated_at := clock_timestamp(); return new; end $$"
        )
        yield started
    shutil.rmtree(data_dir, ignore_errors=True)


def make_table(stack: StackProcess, *, bare: bool = False) -> str:
    """A table with a trigger bumping ``updated_at`` and exact mode installed; *bare*: only
    ``default clock_timestamp()`` on ``updated_at`` and nothing installed."""
    from supasync.repair import sqlinstall

    name = f"rnd_{uuid.uuid4().hex[:10]}"
    stack.sql(
        f"create table public.{name} (id int primary key, writer int, v int, "
        "updated_at timestamptz not null default clock_timestamp())"
    )
    if not bare:
        stack.sql(
            f"create trigger {name}_touch before update on public.{name} for each row "
            "execute function public.rnd_touch()"
        )
    stack.sql(f"grant all on public.{name} to anon, authenticated, service_role")
    stack.sql(f"alter publication supabase_realtime add table public.{name}")
    if not bare:
        sqlinstall.apply(stack.db_url, [f"public.{name}"])
    return name


class View:
    """The handlers' view, and a check that no row is ever shown an older state."""

    def __init__(self) -> None:
        self.rows: dict[tuple[Any, ...], dict[str, Any]] = {}
        self.last_version: dict[tuple[Any, ...], int] = {}
        self.regressions: list[str] = []
        self.changed = asyncio.Event()

    async def __call__(self, change: Change) -> None:
        self.changed.set()
        if change.op == "DELETE":
            self.rows.pop(change.pk, None)
            return
        assert change.new is not None
        v = version_value(change.new.get("updated_at"))
        if v is not None:
            if v < self.last_version.get(change.pk, v):
                self.regressions.append(f"{change.pk} {change.origin} {change.op} went back")
            self.last_version[change.pk] = max(v, self.last_version.get(change.pk, v))
        self.rows[change.pk] = dict(change.new)


class Writers:
    """Three connections; a writer never touches a row another open transaction holds, so no
    writer ever waits on a lock (the test's event loop stays free)."""

    def __init__(self, db_url: str, table: str, rng: random.Random) -> None:
        self.db_url = db_url
        self.table = table
        self.rng = rng
        self.conns = [psycopg.connect(db_url) for _ in range(3)]
        self.held: list[set[int]] = [set() for _ in self.conns]

    def reconnect(self, db_url: str) -> None:
        """After a stack restart (which ended every session and may move the database port)."""
        self.close()
        self.db_url = db_url
        self.conns = [psycopg.connect(db_url) for _ in range(3)]
        self.held = [set() for _ in self.conns]

    def step(self) -> None:
        w = self.rng.randrange(len(self.conns))
        conn, mine = self.conns[w], self.held[w]
        others = set().union(*(h for i, h in enumerate(self.held) if i != w))
        for _ in range(self.rng.randint(1, 4)):
            free = [i for i in IDS if i not in others]
            if not free:
                break
            row = self.rng.choice(free)
            kind = self.rng.random()
            if kind < 0.5:
                conn.execute(
                    f"insert into public.{self.table} (id, writer, v) values (%s, %s, %s) "
                    "on conflict (id) do update set v = excluded.v, writer = excluded.writer",
                    (row, w, self.rng.randint(0, 1000)),
                )
            elif kind < 0.65:
                conn.execute(
                    f"update public.{self.table} set v = v + 1 where id = %s", (row,)
                )
            elif kind < 0.8:  # across the filtered subscription's bound, either way
                conn.execute(
                    f"update public.{self.table} set v = %s where id = %s",
                    (self.rng.choice([self.rng.randint(0, BOUND - 1),
                                      self.rng.randint(BOUND, 1000)]), row),
                )
            else:
                conn.execute(f"delete from public.{self.table} where id = %s", (row,))
            mine.add(row)
        if self.rng.random() < 0.7:  # else the transaction stays open across later steps
            conn.commit()
            mine.clear()

    def batch(self, first: int, n: int) -> None:
        """*n* new rows (ids from *first*) in one transaction: a large live batch."""
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            conn.execute(f"insert into public.{self.table} (id, writer, v) select g, 9, g"
                         " from generate_series(%s::int, %s::int) g", (first, first + n - 1))

    def commit_all(self) -> None:
        for conn, mine in zip(self.conns, self.held, strict=True):
            conn.commit()
            mine.clear()

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(psycopg.Error):
                conn.close()


def server_rows(stack: StackProcess, table: str,
                where: str = "true") -> dict[tuple[Any, ...], dict[str, Any]]:
    rows = stack.sql(f"select id, to_jsonb(t) from public.{table} t where {where}")
    return {(r[0],): canonical_row(r[1]) for r in rows}


def canon(rows: Any) -> dict[tuple[Any, ...], dict[str, Any]]:
    return {k: canonical_row(v) for k, v in rows.items()}


class Client:
    """One client process's worth of state: Realtime + CachedGates on one cache file - the
    subscription under test, a filtered one (handlers' view *filtered*) and a handler-less one
    (a read model)."""

    def __init__(self, stack: StackProcess, table: str, mode: str, path: Path, view: View,
                 filtered: View, source: str = "postgres_changes"):
        config = RepairConfig(mode=mode, page_size=5, log_page_size=5)  # type: ignore[arg-type]
        self.store = open_store(str(path))  # one writer per file: the gates share it
        self.gate = CachedGate(self.store, repair=config)
        self.rt = Realtime(
            stack.url,
            stack.anon_key,
            token=stack.service_role_key,
            heartbeat_interval=1.0,
            heartbeat_timeout=3.0,
            subscribed_timeout=15.0,
            backoff=BackoffPolicy(initial=0.1, cap=1.0),
        )
        self.sub = self.rt.subscribe(
            table, handler=view, gate=self.gate, primary_key=("id",), name=table,
            source=source,  # type: ignore[arg-type]
        )
        self.filtered = self.rt.subscribe(
            table, handler=filtered, filter=f"v=lt.{BOUND}", primary_key=("id",),
            name=f"{table}_low", gate=CachedGate(self.store, repair=config))
        self.reads = self.rt.subscribe(table, primary_key=("id",), name=f"{table}_reads",
                                       gate=CachedGate(self.store, repair=config))

    async def start(self) -> None:
        repaired = asyncio.ensure_future(self.rt.status.wait_for(self._repaired, WAIT))
        await asyncio.sleep(0)  # the waiter is registered before anything can happen
        await self.rt.start()
        await repaired
        await self.rt.wait_synced(WAIT)

    def _repaired(self, event: StatusEvent) -> bool:
        return isinstance(event, GapRepaired) and event.subscription == self.sub.name

    async def after_fault(self, fault: Any) -> GapRepaired:
        """Run *fault* (blocking, in a thread) and wait until the gap it opens is repaired."""
        started = utcnow()
        # Both waiters are registered before the fault: wait_for sees only later events.
        opened = asyncio.ensure_future(
            self.rt.status.wait_for(lambda e: isinstance(e, GapOpened), WAIT)
        )
        repaired = asyncio.ensure_future(
            self.rt.status.wait_for(
                lambda e: self._repaired(e)
                and isinstance(e, GapRepaired)
                and e.opened_at >= started,
                WAIT * 2,
            )
        )
        await asyncio.sleep(0)
        await asyncio.to_thread(fault)
        gap = await opened
        assert isinstance(gap, GapOpened)
        done = await repaired
        assert isinstance(done, GapRepaired)
        return done

    async def stop(self) -> None:
        await self.rt.aclose()
        self.store.close()


class Mirror:
    """``supasync mirror``'s worker (:func:`run_mirror`) on a file of its own, through the
    same faults as the client (it holds its own socket, so drops, expiries and stack restarts
    reach it too) and stopped and started with it."""

    def __init__(self, stack: StackProcess, table: str, path: Path) -> None:
        self.table, self.path = table, path
        settings = Settings(url=stack.url, realtime_url=stack.realtime_url,
                            anon_key=stack.anon_key, service_role_key=stack.service_role_key,
                            preferred_token_source="service_role", heartbeat_interval=1.0,
                            reconnect_max_delay=1.0)
        options = MirrorOptions(db=path, quiet=True, progress=False, status_interval=60,
                                page_size=5)
        self.stopping = asyncio.Event()
        self.task = asyncio.ensure_future(run_mirror(
            settings, [MirrorTarget("public", table)], options, stop=self.stopping,
            handle_signals=False))

    def rows(self) -> dict[tuple[Any, ...], dict[str, Any]]:
        if self.task.done():  # a worker that ended by itself failed: say how
            raise AssertionError(f"the mirror worker ended: {self.task.result()}")
        if not self.path.exists():
            return {}
        with StoreReader(self.path) as reader:
            try:
                return canon({(r["id"],): r for r in reader.rows(self.table)})
            except CacheError:  # the table is not made yet: not equal yet
                return {}

    async def equal(self, want: dict[Any, Any], what: str) -> None:
        """Wait until the mirror file holds *want* (the worker applies on its own schedule;
        the file is read, not the worker's internals)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while (got := self.rows()) != want:
            if loop.time() > deadline:
                missing = sorted(k for k in want if k not in got)[:5]
                extra = sorted(k for k in got if k not in want)[:5]
                differ = sorted(k for k in want if k in got and got[k] != want[k])[:5]
                raise AssertionError(f"mirror differs ({what}): missing {missing}, extra "
                                     f"{extra}, differing {differ}")
            await asyncio.sleep(0.05)  # poll interval of a condition wait on a file

    async def stop(self) -> None:
        self.stopping.set()
        try:
            code = await asyncio.wait_for(self.task, WAIT)
        except Exception as exc:  # the worker's own traceback, not the await's
            raise AssertionError("the mirror worker failed:\n"
                                 + "".join(traceback.format_exception(exc))) from None
        assert code == 0, f"the mirror worker exited {code}"


async def run_sequence(stack: StackProcess, mode: str, seed: int, steps: int = 8,
                       source: str = "postgres_changes") -> None:
    rng = random.Random(seed * 7919 + len(mode))
    # "auto" runs on a bare table: updated_at has a default and no trigger, nothing installed.
    table = make_table(stack, bare=mode == "auto")
    if source == "broadcast":
        from supasync.repair.broadcast_sql import apply_broadcast

        # The service role reads every private topic (bypassrls): no policy needed here.
        apply_broadcast(stack.db_url, f"public.{table}")
    path = Path(tempfile.mkdtemp(prefix="supasync-test-random-cache-")) / "cache.db"
    view, filtered = View(), View()
    writers = Writers(stack.db_url, table, rng)
    client = Client(stack, table, mode, path, view, filtered, source)
    await client.start()
    mirror = Mirror(stack, table, path.parent / "mirror.sqlite")
    paused = False
    try:
        for _ in range(steps):
            action = rng.choices(
                ["write", "drop", "expire", "pause", "restart-client", "restart-stack"],
                weights=[10, 3, 2, 2, 2, 1 if seed % 3 == 0 else 0],
            )[0]
            if action == "write":
                await asyncio.to_thread(writers.step)
            elif action == "drop":
                await client.after_fault(stack.drop_connections)
            elif action == "expire":
                await client.after_fault(stack.expire_tokens)
            elif action == "pause":
                if paused:
                    await asyncio.to_thread(stack.resume_changes)
                else:
                    await asyncio.to_thread(stack.pause_changes)
                paused = not paused
            elif action == "restart-client":
                await client.stop()
                await mirror.stop()
                await asyncio.to_thread(writers.step)  # written while no client runs
                client = Client(stack, table, mode, path, view, filtered, source)
                await client.start()
                mirror = Mirror(stack, table, path.parent / "mirror.sqlite")
            else:
                if paused:
                    await asyncio.to_thread(stack.resume_changes)
                    paused = False
                await asyncio.to_thread(writers.commit_all)  # a restart ends open transactions
                await client.after_fault(stack.restart)
                await asyncio.to_thread(writers.reconnect, stack.db_url)
        await asyncio.to_thread(writers.commit_all)
        if paused:
            await asyncio.to_thread(stack.resume_changes)
        # One more gap after the last commit: its repair must leave cache == server == view.
        final = await client.after_fault(stack.drop_connections)
        await client.rt.wait_synced(WAIT)  # the other subscriptions' repairs too
        # "auto" on a bare table must not trust updated_at (it has no trigger): diff.
        assert final.mode == ("diff" if mode == "auto" else mode), \
            "the repair ran in the mode asked for, without fallback"
        expected = server_rows(stack, table)
        low = server_rows(stack, table, f"v < {BOUND}")
        assert canon(client.gate.rows()) == expected, f"cache differs (seed {seed}, {mode})"
        assert canon({(r["id"],): r for r in client.reads.rows()}) == expected, \
            f"read model differs (seed {seed}, {mode})"
        assert canon(client.filtered.gate.rows()) == low, \
            f"filtered cache differs (seed {seed}, {mode})"
        # The mirror went through the same faults (and the final drop) on its own socket.
        await mirror.equal(expected, f"seed {seed}, {mode}")

        # Handlers run after the emit queue: wait until they have caught up with the cache.
        async def caught_up(seen: View, want: dict[Any, Any]) -> None:
            while True:
                seen.changed.clear()
                if canon(seen.rows) == want:
                    return
                await seen.changed.wait()

        for seen, want in ((view, expected), (filtered, low)):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(caught_up(seen, want), WAIT)
        assert canon(view.rows) == expected, f"handlers' view differs (seed {seed}, {mode})"
        assert canon(filtered.rows) == low, \
            f"filtered handlers' view differs (seed {seed}, {mode})"
        assert view.regressions == [], f"seed {seed}, {mode}"
    finally:
        writers.close()
        if paused:
            await asyncio.to_thread(stack.resume_changes)
        await client.stop()
        await mirror.stop()
        shutil.rmtree(path.parent, ignore_errors=True)


# CI runs CI_SEQUENCES seeded sequences, the modes (and auto) taking turns; --slow adds 50
# longer ones per mode.
CI_SEQUENCES = 51


CI_CASES = [(seed, CI_MODES[seed % len(CI_MODES)])
            for seed in range(1000, 1000 + CI_SEQUENCES)]


@pytest.mark.parametrize(("seed", "mode"), CI_CASES)
async def test_random_faults_converge(stack: StackProcess, mode: str, seed: int) -> None:
    await run_sequence(stack, mode, seed)


BROADCAST_CASES = [(seed, MODES[seed % len(MODES)]) for seed in range(2000, 2006)]


@pytest.mark.parametrize(("seed", "mode"), BROADCAST_CASES)
async def test_random_faults_converge_broadcast_source(
    stack: StackProcess, mode: str, seed: int,
) -> None:
    await run_sequence(stack, mode, seed, source="broadcast")


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", SLOW_SEEDS)
async def test_random_faults_converge_many(stack: StackProcess, mode: str, seed: int) -> None:
    await run_sequence(stack, mode, seed, steps=12)


# --------------------------------------------------------------------------- a real kill

CHILD = r"""
import asyncio, json, sys
from supasync.client.realtime import Realtime
from supasync.core.backoff import BackoffPolicy
from supasync.client.config import Settings
from supasync.client.gate import CachedGate
from supasync.repair.repairer import RepairConfig
from supasync.core.status import GapRepaired

url, anon, key, table, mode, cache, log = sys.argv[1:8]

async def main():
    out = open(log, "a", encoding="utf-8")

    async def handler(change):
        out.write(json.dumps({"op": change.op, "pk": list(change.pk), "new": change.new}) + "\n")
        out.flush()  # survives SIGKILL: the kernel has it

    rt = Realtime(url, anon, token=key, heartbeat_interval=1.0, heartbeat_timeout=3.0,
                  backoff=BackoffPolicy(initial=0.1, cap=1.0))
    rt.subscribe(table, handler=handler, primary_key=("id",), name=table,
                 gate=CachedGate(cache, repair=RepairConfig(mode=mode, page_size=5,
                                                            log_page_size=5)))

    def on_status(event):
        if isinstance(event, GapRepaired):
            print("repaired", event.opened_at.isoformat(), flush=True)

    rt.status.subscribe(on_status)
    await rt.start()
    await asyncio.Event().wait()  # until killed

asyncio.run(main())
"""


class Child:
    """The client in its own process, so it can be killed with SIGKILL mid-flight."""

    def __init__(self, stack: StackProcess, table: str, mode: str, cache: Path, log: Path):
        self.args = [stack.url, stack.anon_key, stack.service_role_key, table, mode,
                     str(cache), str(log)]
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        import sys

        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD, *self.args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )
        await self.next_repair()

    async def next_repair(self) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), WAIT * 2)
            assert line, "the client process ended"
            if line.startswith(b"repaired"):
                return line.decode().split()[1]

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        await self.proc.wait()

    async def wait_handled(self, log: Path, seen: Any) -> None:
        """Until the child's handler has logged a change for which *seen(item)* is true."""
        import json

        def found() -> bool:
            text = log.read_text(encoding="utf-8") if log.exists() else ""
            return any(seen(json.loads(line)) for line in text.splitlines() if line)

        async def poll() -> None:
            # Another process appends to the file: polling it is the only way to see it.
            while not found():  # noqa: ASYNC110
                await asyncio.sleep(0.005)

        await asyncio.wait_for(poll(), WAIT)


def replay_log(log: Path) -> dict[tuple[Any, ...], dict[str, Any]]:
    import json

    view: dict[tuple[Any, ...], dict[str, Any]] = {}
    for line in log.read_text(encoding="utf-8").splitlines():
        item = json.loads(line)
        if item["op"] == "DELETE":
            view.pop(tuple(item["pk"]), None)
        else:
            view[tuple(item["pk"])] = canonical_row(item["new"])
    return view


@pytest.mark.parametrize("mode", MODES)
async def test_client_killed_and_restarted_on_the_same_cache_file(
    stack: StackProcess, mode: str
) -> None:
    from supasync.store.reads import StoreReader

    rng = random.Random(len(mode))
    table = make_table(stack)
    work = Path(tempfile.mkdtemp(prefix="supasync-test-kill-"))
    cache, log = work / "cache.db", work / "handled.jsonl"
    writers = Writers(stack.db_url, table, rng)
    child = Child(stack, table, mode, cache, log)
    try:
        await child.start()
        for _ in range(4):
            for _ in range(3):
                await asyncio.to_thread(writers.step)
            await child.kill()  # SIGKILL: no clean close, no flush beyond what was committed
            for _ in range(3):
                await asyncio.to_thread(writers.step)  # written while no client runs
            await child.start()
        # SIGKILL in the middle of a batch: 400 rows in one transaction, the child killed as
        # soon as its handler has logged the first of them (the rest still arriving, being
        # delivered and cached), then restarted.
        await asyncio.to_thread(writers.batch, 1000, 400)
        await child.wait_handled(log, lambda item: item["pk"][0] >= 1000)
        await child.kill()
        await child.start()
        await asyncio.to_thread(writers.commit_all)
        # One more gap after the last commit; its repair leaves cache == server == handled.
        await asyncio.to_thread(stack.drop_connections)
        await child.next_repair()
        expected = server_rows(stack, table)
        # The child still runs (it holds the writer's lock): read the file as any reader does.
        with StoreReader(cache) as reader:
            cached = {(r["id"],): canonical_row(r) for r in reader.rows(table)}
        assert cached == expected
        assert replay_log(log) == expected
    finally:
        writers.close()
        if child.proc is not None and child.proc.returncode is None:
            await child.kill()
        shutil.rmtree(work, ignore_errors=True)
