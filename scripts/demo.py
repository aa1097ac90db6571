"""The supasync demo: a mirror that survives anything, shown end to end.

Run it with ``scripts/demo`` (about a minute). It

1. starts the local Supabase-compatible stack (PostgreSQL with logical decoding plus the
   Realtime, REST and auth servers on one port) and creates and fills a table;
2. runs the mirror worker (``supasync mirror``) into a local SQLite file: a streaming snapshot
   with a progress bar, then live changes; and the library beside it: a ``Realtime`` client
   whose cached subscription has no handler - a read model in its own store file (the same
   format), looked up from another thread while the writes stream in;
3. writes continuously while it cuts every websocket, restarts the whole stack (same port,
   same data), and expires every token - the worker repairs each gap (exact mode: supasync's
   change log) and says so on its status line;
4. stops the writes and shows that the mirror equals the source, row by row, with the figures;
5. stops the worker (SIGINT-like stop: the batch is committed) and starts it again: it resumes
   from its cursor without a new snapshot.

``--rows N`` changes the table size (default 200,000); ``--keep DIR`` keeps the mirror file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console
from rich.table import Table

from supasync import Realtime
from supasync.client.config import Settings
from supasync.devstack.testing import StackProcess
from supasync.mirror.status import TableFigures, format_duration
from supasync.mirror.worker import MirrorOptions, MirrorTarget, run_mirror
from supasync.repair import sqlinstall
from supasync.store.reads import StoreReader
from supasync.store.tables import TableShape

console = Console(stderr=True)
TABLE = "demo_items"


def create_table(stack: StackProcess, rows: int) -> None:
    stack.sql(
        f"""
        create table {TABLE} (
          id bigint primary key,
          title text not null,
          done boolean not null default false,
          price numeric(10,2),
          tags text[],
          meta jsonb,
          updated_at timestamptz not null default now()
        );
        grant select on {TABLE} to anon, authenticated, service_role;
        alter publication supabase_realtime add table {TABLE};
        insert into {TABLE} (id, title, done, price, tags, meta)
        select g, 'item ' || g, g % 4 = 0, (g % 500) + 0.99, array['t' || (g % 7)],
               jsonb_build_object('n', g, 'even', g % 2 = 0)
          from generate_series(1, {rows}) g;
        """
    )
    sqlinstall.apply(stack.db_url, [f"public.{TABLE}"])  # exact-mode change log


class Writer:
    """Inserts, updates and deletes continuously in a thread, reconnecting across restarts."""

    def __init__(self, stack: StackProcess, first_id: int) -> None:
        self.stack, self.next_id = stack, first_id
        self.done = threading.Event()
        self.writes = 0
        self.reconnects = 0
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                with psycopg.connect(self.stack.db_url, autocommit=True, connect_timeout=5) as c:
                    while not self.done.is_set():
                        i = self.next_id
                        with c.transaction():
                            # "on conflict": a commit whose answer the restart swallowed is
                            # not retried into a duplicate key for ever.
                            c.execute(f"insert into {TABLE} (id, title, meta) values (%s, %s, "
                                      "%s) on conflict (id) do nothing",
                                      (i, f"new {i}", json.dumps({"n": i})))
                            c.execute(f"update {TABLE} set done = not done, updated_at = now()"
                                      " where id = %s", (i % 5000 + 1,))
                            if i % 3 == 0:
                                c.execute(f"delete from {TABLE} where id = %s", (i - 2,))
                        self.next_id += 1
                        self.writes += 3 if i % 3 == 0 else 2
                        self.done.wait(0.01)  # about 100 transactions a second
            except psycopg.Error:
                self.reconnects += 1  # the stack is restarting
                self.done.wait(0.3)

    def stop(self) -> None:
        self.done.set()
        self.thread.join(30)


def compare(stack: StackProcess, db: Path) -> tuple[int, int, int]:
    """(source rows, mirror rows, rows that differ or are missing on either side)."""
    # Read as any other process would: the worker holds the file's writer lock.
    with StoreReader(db) as reader:
        view = reader.view(TABLE)
    shape = TableShape("public", TABLE, view.columns, view.primary_key)
    with psycopg.connect(stack.db_url, autocommit=True) as conn:
        source = {}
        for (text,) in conn.execute(f"select to_json(t)::text from {TABLE} t"):
            row = json.loads(text)
            source[row["id"]] = shape.row_values(row)
    mirror = _mirror_rows(db, shape)
    differ = sum(1 for k in source.keys() | mirror.keys() if source.get(k) != mirror.get(k))
    return len(source), len(mirror), differ


def _mirror_rows(db: Path, shape: TableShape) -> dict[Any, tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        cols = ", ".join(f'"{c}"' for c in shape.column_names)
        return {r[0]: tuple(r) for r in conn.execute(f'select {cols} from "{shape.name}"')}
    finally:
        conn.close()


async def until(cond: Callable[[], bool], what: str, wait_s: float = 90.0) -> None:
    """Wait for a condition, evaluated in a thread so the worker's loop never stalls."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while not await asyncio.to_thread(cond):
        if loop.time() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)  # poll interval of a condition wait


class Worker:
    def __init__(self, settings: Settings, db: Path) -> None:
        self.stop_event = asyncio.Event()
        self.figures: list[TableFigures] = []
        options = MirrorOptions(db=db, status_interval=3.0, err=sys.stderr)
        self.task = asyncio.create_task(run_mirror(
            settings, [MirrorTarget("public", TABLE, repair="exact")], options,
            stop=self.stop_event, on_ready=self._ready))

    def _ready(self, figures: list[TableFigures]) -> None:
        self.figures = figures

    @property
    def fig(self) -> TableFigures:
        return self.figures[0] if self.figures else TableFigures(TABLE)

    async def live(self) -> None:
        await until(lambda: self.fig.state == "live" or self.task.done(), "the mirror to be live")
        if self.task.done():
            raise RuntimeError(f"the worker stopped: exit code {self.task.result()}")

    async def stop(self) -> int:
        self.stop_event.set()
        return await self.task


async def story(stack: StackProcess, db: Path, rows: int) -> bool:
    settings = Settings(
        url=stack.url, realtime_url=stack.realtime_url, anon_key=stack.anon_key,
        jwt_secret=stack.jwt_secret, jwt_claims={"role": "service_role"},
        preferred_token_source="jwt_secret", heartbeat_interval=5.0, reconnect_max_delay=2.0,
    )
    console.rule("[bold]2. the mirror worker: snapshot, then live")
    t0 = time.perf_counter()
    worker = Worker(settings, db)
    await worker.live()
    snap_s = time.perf_counter() - t0
    console.print(f"[green]live[/green]: {rows:,} rows snapshotted in {snap_s:.1f}s "
                  f"({rows / snap_s:,.0f} rows/s, incl. start-up) into {db}")

    console.rule("[bold]3. writing continuously, and breaking things")
    writer = Writer(stack, rows + 1)
    await until(lambda: writer.writes > 200, "the first writes")

    async def fault(title: str, action: Callable[[], object]) -> None:
        before = worker.fig.repairs
        console.print(f"[bold yellow]>> {title}[/bold yellow] (writes so far: {writer.writes})")
        await asyncio.to_thread(action)
        await until(lambda: worker.fig.repairs > before and worker.fig.state == "live",
                    f"the repair after: {title}")
        f = worker.fig
        console.print(f"   gap '{f.last_gap_reason}' repaired by [cyan]{f.last_gap_mode}"
                      f"[/cyan] in {format_duration(f.last_gap_s)}; writes so far "
                      f"{writer.writes}")
        n = writer.writes
        await until(lambda: writer.writes > n + 150, "writes after the repair")

    reader = StoreReader(db)  # the read model: any thread, while the worker writes
    position = reader.seq()

    # The library: a cached subscription without a handler is a read model of its own store
    # file (the mirror's format), read from any thread.
    t0 = time.perf_counter()
    # Tokens minted from the JWT secret, as the mirror's: they are refreshed after the expiry.
    client = Realtime.from_settings(settings, cache=db.with_name("client-cache.sqlite"))
    items = client.subscribe(TABLE)
    await client.start()
    await client.wait_synced(300)
    console.print(f"[green]library[/green]: Realtime(cache=...) subscription with no handler "
                  f"synced in {time.perf_counter() - t0:.1f}s ({items.count():,} rows)")

    async def client_look_up() -> None:
        def read() -> tuple[float, dict[str, Any] | None, int]:
            t = time.perf_counter()
            row = items.get(rows // 3)
            return time.perf_counter() - t, row, items.count("id=gt.0")
        took, row, count = await asyncio.to_thread(read)
        console.print(f"   [cyan]library read model[/cyan] (another thread): "
                      f"items.get({rows // 3}) in {took * 1000:.2f} ms -> "
                      f"{row['title'] if row else 'absent'!r}; items.count('id=gt.0') = "
                      f"{count:,}")

    async def look_up() -> None:
        def read() -> tuple[float, dict[str, object] | None, int, int]:
            t = time.perf_counter()
            row = reader.get(TABLE, [rows // 2])
            took = time.perf_counter() - t
            return took, row, reader.count(TABLE), len(reader.changes_since(TABLE,
                                                                            position).entries)
        took, row, count, journaled = await asyncio.to_thread(read)
        console.print(f"   [cyan]read model[/cyan] (another thread, writes streaming in): "
                      f"get(id={rows // 2}) in {took * 1000:.2f} ms -> "
                      f"{'found' if row else 'absent'}; {count:,} rows; {journaled:,} changes "
                      "journaled since the snapshot")

    await look_up()
    await client_look_up()
    await fault("cutting every websocket (no close frame)", stack.drop_connections)
    await fault("restarting the whole stack (PostgreSQL, Realtime, REST)", stack.restart)
    await fault("expiring every token", stack.expire_tokens)
    await look_up()
    await client_look_up()
    reader.close()
    writer.stop()
    console.print(f"writes stopped: {writer.writes} row writes in total "
                  f"(the writer itself reconnected {writer.reconnects} times)")

    console.rule("[bold]4. the mirror equals the source")
    result: tuple[int, int, int] = (0, 0, -1)

    def same() -> bool:
        nonlocal result
        result = compare(stack, db)
        return result[2] == 0

    await until(same, "the mirror to catch up")
    await until(lambda: items.count() == result[0], "the library's read model to catch up")
    console.print(f"library read model == source: {items.count():,} rows")
    await client.aclose()
    f = worker.fig
    table = Table("figure", "value")
    table.add_row("rows in the source table", f"{result[0]:,}")
    table.add_row("rows in the mirror", f"{result[1]:,}")
    table.add_row("rows that differ (compared column by column)", f"[bold green]{result[2]}")
    table.add_row("live changes applied", f"{f.live_applied:,}")
    table.add_row("gaps repaired (snapshot included)", str(f.repairs))
    table.add_row("reconnects", str(f.reconnects))
    table.add_row("last change's commit-to-mirror delay", format_duration(f.delay_s))
    table.add_row("snapshot", f"{rows:,} rows in {snap_s:.1f}s")
    console.print(table)
    code = await worker.stop()
    console.print(f"worker stopped with exit code {code} (pending batch committed)")

    console.rule("[bold]5. a new run resumes without a snapshot")
    stack.sql(f"insert into {TABLE} (id, title) values (0, 'written while the worker was off')")
    worker = Worker(settings, db)
    await worker.live()
    f = worker.fig
    console.print(f"resumed: repaired by [cyan]{f.last_gap_mode}[/cyan] in "
                  f"{format_duration(f.last_gap_s)} (no snapshot)")
    await until(lambda: compare(stack, db)[2] == 0, "the mirror to equal the source")
    rows_now = (await asyncio.to_thread(compare, stack, db))[1]
    console.print(f"mirror == source again: {rows_now:,} rows")
    await worker.stop()
    return result[2] == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--keep", type=Path, default=None, help="keep the mirror file here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="supasync-demo-"))
    os.chmod(work, 0o755)  # PostgreSQL runs as `postgres` when the demo runs as root
    (work / "stack").mkdir()
    os.chmod(work / "stack", 0o755)
    db = (args.keep or work) / "mirror.sqlite"
    console.rule("[bold]1. the local stack and a table")
    stack = StackProcess(data_dir=work / "stack")
    try:
        stack.start()
        console.print(f"SUPABASE_URL={stack.url}   (keys are printed by `supasync dev`; "
                      "hidden here)")
        t0 = time.perf_counter()
        create_table(stack, args.rows)
        console.print(f"public.{TABLE}: {args.rows:,} rows in {time.perf_counter() - t0:.1f}s;"
                      " exact-mode change log installed (`supasync sql`)")
        ok = asyncio.run(story(stack, db, args.rows))
    finally:
        stack.close()
        shutil.rmtree(work, ignore_errors=True)
    console.rule("[bold green]done" if ok else "[bold red]mirror differs")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
