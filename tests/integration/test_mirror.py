"""The mirror worker against the local stack: snapshot, live changes, and surviving worker
restarts, stack restarts, dropped sockets, token expiry, added columns and type changes while
writes continue. After each, the SQLite file must equal the source table row by row (source
rows read with psycopg as ``to_json`` and converted the mirror's way)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from supasync.client.config import Settings
from supasync.devstack.testing import StackProcess
from supasync.mirror.status import TableFigures
from supasync.mirror.worker import MirrorOptions, MirrorTarget, run_mirror
from supasync.store.tables import MirrorStore, TableShape

pytestmark = pytest.mark.integration

WAIT = 60.0


@pytest.fixture(scope="module")
def stack() -> Iterator[StackProcess]:
    data_dir = tempfile.mkdtemp(prefix="supasync-h-mirror-")
    os.chmod(data_dir, 0o755)  # PostgreSQL runs as `postgres` when tests run as root
    s = StackProcess(data_dir=data_dir, jwt_expiry=3600)
    s.start()
    try:
        yield s
    finally:
        s.close()
        shutil.rmtree(data_dir, ignore_errors=True)


def settings_for(stack: StackProcess, **kw: Any) -> Settings:
    base: dict[str, Any] = dict(
        url=stack.url, realtime_url=stack.realtime_url, anon_key=stack.anon_key,
        service_role_key=stack.service_role_key, preferred_token_source="service_role",
        heartbeat_interval=5.0, reconnect_max_delay=2.0,
    )
    base.update(kw)
    return Settings(**base)


def create_table(stack: StackProcess, name: str, rows: int, *, extra: str = "") -> None:
    stack.sql(
        f"""
        drop table if exists {name};
        create table {name} (
            id bigint primary key,
            title text not null,
            done boolean not null default false,
            score numeric(10,2),
            tags text[],
            meta jsonb,
            at timestamptz not null default now(),
            updated_at timestamptz not null default now(){extra}
        );
        grant select on {name} to anon, authenticated, service_role;
        alter publication supabase_realtime add table {name};
        insert into {name} (id, title, done, score, tags, meta)
        select g, 'row ' || g, g % 3 = 0, g * 1.25, array['a', 'b' || g],
               jsonb_build_object('n', g, 'odd', g % 2 = 1)
          from generate_series(1, {rows}) g;
        """
    )


def source_rows(stack: StackProcess, shape: TableShape) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    """The source table's rows, converted the mirror's way, by key."""
    with psycopg.connect(stack.db_url, autocommit=True) as conn:
        cur = conn.execute(f"select to_json(t)::text from {shape.schema}.{shape.table} t")
        out = {}
        for (text,) in cur.fetchall():
            row = json.loads(text)
            values = shape.row_values(row)
            out[shape.key_values([row[c] for c in shape.primary_key])] = values
        return out


def mirror_rows(db: Path, shape: TableShape) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        cols = ", ".join(f'"{c}"' for c in shape.column_names)
        idx = [shape.column_names.index(c) for c in shape.primary_key]
        rows = conn.execute(f'select {cols} from "{shape.name}"').fetchall()
    except sqlite3.OperationalError:
        return {}
    finally:
        conn.close()
    return {tuple(r[i] for i in idx): tuple(r) for r in rows}


def _read_only(db: Path) -> sqlite3.Connection:
    """A reader's connection: the worker holds the file's writer lock while it runs."""
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True)


def current_shape(db: Path, schema: str, table: str) -> TableShape:
    conn = _read_only(db)
    try:
        (text,) = conn.execute("select shape from _supasync_tables where schema = ? and tbl = ?",
                               (schema, table)).fetchone()
    finally:
        conn.close()
    data = json.loads(text)
    return TableShape(schema, table, tuple((c, t) for c, t in data["columns"]),
                      tuple(data["primary_key"]))


async def until(cond: Callable[[], bool], what: str, wait_s: float = WAIT,
                detail: Callable[[], str] = lambda: "") -> None:
    """Wait for a condition (polled), failing with *what* (and *detail()*) after *wait_s*."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while not await asyncio.to_thread(cond):
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}; {detail()}")
        await asyncio.sleep(0.1)  # poll interval of a condition wait


async def equal(stack: StackProcess, db: Path, schema: str, table: str,
                wait_s: float = WAIT) -> None:
    """Wait until the mirror equals the source; on timeout, show the difference."""
    last: list[str] = []

    def check() -> bool:
        shape = current_shape(db, schema, table)
        src, mir = source_rows(stack, shape), mirror_rows(db, shape)
        if src == mir:
            return True
        missing = [k for k in src if k not in mir][:3]
        extra = [k for k in mir if k not in src][:3]
        diff = [(src[k], mir[k]) for k in src if k in mir and src[k] != mir[k]][:2]
        last[:] = [f"{len(src)} source rows, {len(mir)} mirror rows; missing {missing}, "
                   f"extra {extra}, differing {diff}"]
        return False

    try:
        await until(check, f"mirror of {schema}.{table} to equal the source", wait_s)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {last[0] if last else ''}") from None


class Worker:
    """The mirror worker running in this test's event loop."""

    def __init__(self, settings: Settings, targets: list[MirrorTarget], db: Path,
                 **options: Any) -> None:
        self.stop_event = asyncio.Event()
        self.figures: list[TableFigures] = []
        self.ready = asyncio.Event()
        opts = MirrorOptions(db=db, quiet=True, progress=False, status_interval=0.5, **options)

        def on_ready(figures: list[TableFigures]) -> None:
            self.figures = figures
            self.ready.set()

        self.task = asyncio.create_task(
            run_mirror(settings, targets, opts, stop=self.stop_event, on_ready=on_ready))

    async def live(self, wait_s: float = WAIT) -> None:
        await until(lambda: self.ready.is_set() and all(f.state == "live" for f in self.figures),
                    "the worker to be live", wait_s)

    async def stop(self) -> int:
        self.stop_event.set()
        return await asyncio.wait_for(self.task, WAIT)


class Writer:
    """Writes continuously (insert, update, delete) in a thread until stopped."""

    def __init__(self, stack: StackProcess, table: str, start_id: int) -> None:
        self.stack, self.table, self.next_id = stack, table, start_id
        self.done = threading.Event()
        self.count = 0
        self.errors = 0
        self.last_error = ""
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                with psycopg.connect(self.stack.db_url, autocommit=True, connect_timeout=5) as c:
                    while not self.done.is_set():
                        i = self.next_id
                        # An insert committed just before the connection broke (the stack
                        # restarting) is not redone: the retry used to hit the key for ever.
                        c.execute(f"insert into {self.table} (id, title) values (%s, %s) "
                                  "on conflict (id) do nothing", (i, f"new {i}"))
                        c.execute(f"update {self.table} set title = title || '+', "
                                  "updated_at = now() where id = %s", (i // 2,))
                        if i % 5 == 0:
                            c.execute(f"delete from {self.table} where id = %s", (i - 3,))
                        self.next_id += 1
                        self.count += 1
                        self.done.wait(0.005)  # pacing of the writer, not synchronisation
            except (psycopg.Error, OSError) as exc:
                self.errors += 1  # the stack is restarting: reconnect
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.done.wait(0.2)

    def stop(self) -> None:
        self.done.set()
        self.thread.join(30)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Path]:
    yield tmp_path / "mirror.sqlite"


async def test_snapshot_live_and_worker_restart(stack: StackProcess, db: Path) -> None:
    create_table(stack, "m_basic", 2500)
    from supasync.devstack.postgres import free_port

    settings = settings_for(stack)
    targets = [MirrorTarget("public", "m_basic")]
    port = free_port()
    worker = Worker(settings, targets, db, metrics_port=port)
    await worker.live()
    await equal(stack, db, "public", "m_basic")
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    assert 'supasync_mirror_state{table="public.m_basic",state="live"} 1' in metrics
    assert 'supasync_mirror_repairs_total{table="public.m_basic"} 1' in metrics
    stack.sql("insert into m_basic (id, title, meta) values (100000, 'live', '{\"x\": [1, 2]}');"
              "update m_basic set done = true, score = 9.99 where id = 7;"
              "delete from m_basic where id = 8;")
    await equal(stack, db, "public", "m_basic")
    assert await worker.stop() == 0
    # Changes while the worker is down, then a restart: repaired, no new snapshot.
    stack.sql("insert into m_basic (id, title) values (100001, 'while away');"
              "update m_basic set title = 'changed while away' where id = 9;"
              "delete from m_basic where id = 10;")
    worker = Worker(settings, targets, db)
    await worker.live()
    await equal(stack, db, "public", "m_basic")
    fig = worker.figures[0]
    assert fig.repairs == 1
    assert worker.task.done() is False
    assert await worker.stop() == 0


async def test_stack_restart_drops_and_token_expiry_while_writing(
    stack: StackProcess, db: Path
) -> None:
    create_table(stack, "m_faults", 500)
    settings = settings_for(stack, service_role_key=None, jwt_secret=stack.jwt_secret,
                            jwt_claims={"role": "service_role"},
                            preferred_token_source="jwt_secret")
    worker = Worker(settings, [MirrorTarget("public", "m_faults")], db)
    await worker.live()
    writer = Writer(stack, "m_faults", 10_000)
    try:
        await until(lambda: writer.count > 20, "writes")
        stack.drop_connections()
        await until(lambda: worker.figures[0].reconnects >= 1, "a reconnect after the drop")
        await worker.live()
        fig = worker.figures[0]
        repairs = fig.repairs
        stack.expire_tokens()
        await until(lambda: fig.repairs > repairs and fig.state == "live",
                    "the repair after the token expiry")
        await until(lambda: writer.count > 80, "more writes")
        repairs = fig.repairs
        await asyncio.to_thread(stack.restart)
        await until(lambda: fig.repairs > repairs and fig.state == "live",
                    "the repair after the stack restart")
        assert fig.reconnects >= 3
        n = writer.count
        await until(lambda: writer.count > n + 30, "writes after the restart",
                    detail=lambda: f"writer: {writer.count} writes, {writer.errors} errors, "
                                   f"last: {writer.last_error!r}")
    finally:
        writer.stop()
    await equal(stack, db, "public", "m_faults")
    assert await worker.stop() == 0


async def test_added_dropped_column_and_type_change(stack: StackProcess, db: Path) -> None:
    create_table(stack, "m_schema", 300)
    worker = Worker(settings_for(stack), [MirrorTarget("public", "m_schema")], db)
    await worker.live()
    snapshots_before = worker.figures[0].repairs
    stack.sql("alter table m_schema add column priority int default 3;"
              "insert into m_schema (id, title, priority) values (5000, 'with priority', 7);")
    await equal(stack, db, "public", "m_schema")
    shape = current_shape(db, "public", "m_schema")
    assert "priority" in shape.column_names
    assert worker.figures[0].repairs == snapshots_before  # in place, no re-snapshot
    stack.sql("alter table m_schema drop column tags;"
              "update m_schema set title = 'after drop' where id = 1;")
    await equal(stack, db, "public", "m_schema")
    assert "tags" not in current_shape(db, "public", "m_schema").column_names
    assert worker.figures[0].repairs == snapshots_before
    stack.sql("alter table m_schema alter column priority type text;"
              "update m_schema set priority = 'high' where id = 2;")
    await until(lambda: current_shape(db, "public", "m_schema").columns[-1] ==
                ("priority", "text"), "the type change")
    await equal(stack, db, "public", "m_schema")
    # The re-snapshot's rows are in the file before its repair is counted (when it goes live).
    await until(lambda: worker.figures[0].state == "live", "the re-snapshot to go live")
    assert worker.figures[0].repairs == snapshots_before + 1  # the re-snapshot
    assert "priority changed type int4 -> text" in (worker.figures[0].last_schema_change or "")
    assert await worker.stop() == 0


@pytest.mark.parametrize("mode", ["exact", "cursor"])
async def test_repair_modes_across_worker_restarts(stack: StackProcess, db: Path,
                                                   mode: str) -> None:
    from supasync.repair import sqlinstall

    table = f"m_mode_{mode}"
    create_table(stack, table, 400)
    if mode == "exact":
        await asyncio.to_thread(sqlinstall.apply, stack.db_url, [f"public.{table}"])
    settings = settings_for(stack)
    targets = [MirrorTarget("public", table, repair=mode)]
    worker = Worker(settings, targets, db)
    await worker.live()
    await equal(stack, db, "public", table)
    assert await worker.stop() == 0
    stack.sql(f"insert into {table} (id, title) values (9001, 'away');"
              f"update {table} set title = 'away too', updated_at = now() where id = 5;"
              f"delete from {table} where id in (6, 7);")
    worker = Worker(settings, targets, db)
    await worker.live()
    await equal(stack, db, "public", table)
    conn = _read_only(db)
    try:
        (text,) = conn.execute("select value from _supasync_state where key = ?",
                               (f"cursor:{table}",)).fetchone()
    finally:
        conn.close()
    cursor = json.loads(text)
    assert cursor is not None and cursor["mode"] == mode
    assert await worker.stop() == 0


async def test_filtered_mirror(stack: StackProcess, db: Path) -> None:
    create_table(stack, "m_filtered", 90)
    worker = Worker(settings_for(stack),
                    [MirrorTarget("public", "m_filtered", "done=eq.true")], db)
    await worker.live()
    shape = current_shape(db, "public", "m_filtered")
    await until(lambda: len(mirror_rows(db, shape)) == 30, "the filtered snapshot")
    stack.sql("insert into m_filtered (id, title, done) values (500, 'yes', true), "
              "(501, 'no', false); delete from m_filtered where id = 3;")
    await until(lambda: set(mirror_rows(db, shape)) ==
                {(i,) for i in range(6, 91, 3)} | {(500,)}, "the filtered live changes")
    assert await worker.stop() == 0


async def test_interrupted_snapshot_commits_and_restarts(stack: StackProcess, db: Path) -> None:
    create_table(stack, "m_interrupt", 60_000)
    settings = settings_for(stack)
    targets = [MirrorTarget("public", "m_interrupt")]
    worker = Worker(settings, targets, db)

    def some_rows() -> bool:
        if not db.exists():
            return False
        conn = sqlite3.connect(db)
        try:
            (n,) = conn.execute('select count(*) from "m_interrupt"').fetchone()
            return bool(n > 0)
        except sqlite3.OperationalError:
            return False
        finally:
            conn.close()

    await until(some_rows, "the first snapshot pages")
    assert await worker.stop() == 0  # like SIGINT: the page being written is committed
    store = MirrorStore(db)
    try:
        complete = store.snapshot_complete("public", "m_interrupt")
        n = store.count(current_shape(db, "public", "m_interrupt"))
    finally:
        store.close()
    assert n > 0
    if not complete:  # stopped mid-snapshot: the next run reads the table again
        worker = Worker(settings, targets, db)
        await worker.live()
        await equal(stack, db, "public", "m_interrupt")
        assert await worker.stop() == 0


async def test_journal_and_reads_while_mirroring(stack: StackProcess, db: Path) -> None:
    """The mirror file numbers every change it applies (live and repaired) and can be read
    from another thread while the worker writes it."""
    from supasync.store.reads import StoreReader

    create_table(stack, "m_journal", 300)
    settings = settings_for(stack)
    targets = [MirrorTarget("public", "m_journal")]
    worker = Worker(settings, targets, db)
    await worker.live()
    reader = StoreReader(db)
    try:
        first = await asyncio.to_thread(reader.read, "m_journal", "done=eq.true")
        assert len(first.rows) == 100 and all(r["done"] is True for r in first.rows)
        assert reader.changes_since("m_journal", 0).must_refetch  # the snapshot is a reset
        stack.sql("insert into m_journal (id, title) values (5000, 'live');"
                  "update m_journal set title = 'moved' where id = 3;"
                  "delete from m_journal where id = 6;")
        await equal(stack, db, "public", "m_journal")
        live = reader.changes_since("m_journal", first.seq)
        assert [(e.op, e.pk, e.origin) for e in live.entries] == [
            ("I", (5000,), "live"), ("U", (3,), "live"), ("D", (6,), "live")]
        assert all(e.commit_timestamp for e in live.entries)
        assert await asyncio.to_thread(reader.get, "m_journal", [3]) is not None
        assert await worker.stop() == 0
        stack.sql("update m_journal set title = 'away' where id = 9;"
                  "delete from m_journal where id = 12;")
        worker = Worker(settings, targets, db)
        await worker.live()
        await equal(stack, db, "public", "m_journal")
        away = reader.changes_since("m_journal", live.seq)
        assert {(e.op, e.pk, e.origin) for e in away.entries} == {
            ("U", (9,), "replay"), ("D", (12,), "replay")}
        assert (await asyncio.to_thread(reader.get, "m_journal", [9]))["title"] == "away"  # type: ignore[index]
        assert await worker.stop() == 0
    finally:
        reader.close()


async def test_a_worker_started_while_the_server_is_down_waits_for_it(
    stack: StackProcess, db: Path
) -> None:
    """Found by the randomized fault test: a worker started while PostgREST was restarting its
    database connection (503 ``PGRST001``) exited with a traceback; a transient failure at
    start is waited out like one while running (``--once`` still fails at once)."""
    import io

    create_table(stack, "m_late", 40)
    said = io.StringIO()
    await asyncio.to_thread(stack.stop)
    try:
        opts = MirrorOptions(db=db, quiet=False, err=said, progress=False, status_interval=60)
        stop = asyncio.Event()
        figures: list[TableFigures] = []
        task = asyncio.create_task(run_mirror(settings_for(stack),
                                              [MirrorTarget("public", "m_late")], opts,
                                              stop=stop, handle_signals=False,
                                              on_ready=figures.extend))
        await until(lambda: "waiting for the server" in said.getvalue(),
                    "the worker to say it waits", detail=said.getvalue)
        assert not task.done()
        from supasync.core.errors import RestError

        with pytest.raises(RestError) as failed:  # a one-shot run does not wait
            await run_mirror(settings_for(stack), [MirrorTarget("public", "m_late")],
                             MirrorOptions(db=db.with_name("once.sqlite"), once=True,
                                           quiet=True, progress=False),
                             handle_signals=False)
        assert failed.value.transient
    finally:
        await asyncio.to_thread(stack.start)
    await until(lambda: bool(figures) and figures[0].state == "live", "the worker to be live",
                detail=said.getvalue)
    await equal(stack, db, "public", "m_late")
    stop.set()
    assert await asyncio.wait_for(task, WAIT) == 0
