"""One bad table never stops the others (issue #17): in a two-table mirror, a table dropped or
renamed upstream is reported (state ``missing`` with the reason, in the figures, the JSON
records and the status line) while the other goes on being mirrored and repaired and stays equal
to its source row by row; a renamed table that comes back is repaired; a restart with a table
missing upstream mirrors the others and exits 1 at the end. Waits are on conditions with
timeouts."""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from supasync.devstack.testing import StackProcess
from supasync.mirror.status import TableFigures
from supasync.mirror.worker import EXIT_FAILURE, MirrorOptions, MirrorTarget, run_mirror

from .test_mirror import Worker, create_table, equal, settings_for, until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack() -> Iterator[StackProcess]:
    data_dir = tempfile.mkdtemp(prefix="supasync-mirror-missing-")
    os.chmod(data_dir, 0o755)  # PostgreSQL runs as `postgres` when tests run as root
    s = StackProcess(data_dir=data_dir, jwt_expiry=3600)
    s.start()
    try:
        yield s
    finally:
        s.close()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "mirror.sqlite"


def fig(worker: Worker, name: str) -> TableFigures:
    return next(f for f in worker.figures if f.name == name)


def records(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]


async def test_a_dropped_table_is_reported_and_the_other_is_still_repaired(
    stack: StackProcess, db: Path
) -> None:
    create_table(stack, "rn", 40)
    create_table(stack, "dr", 20)
    out = io.StringIO()
    worker = Worker(settings_for(stack), [MirrorTarget("public", "rn"),
                                          MirrorTarget("public", "dr")], db,
                    json_logs=True, out=out)
    await worker.live()
    rn, dr = fig(worker, "public.rn"), fig(worker, "public.dr")
    stack.sql("drop table dr")
    stack.drop_connections()
    # 16 rows written while the sockets are down or rejoining: only a repair brings them
    stack.sql("insert into rn (id, title) select g, 'gap ' || g from generate_series(101, 116) g")
    await until(lambda: dr.state == "missing", "dr to be reported missing",
                detail=lambda: f"dr is {dr.state} ({dr.problem})")
    await until(lambda: rn.state == "live" and rn.repairs >= 2, "rn to be repaired and live")
    await equal(stack, db, "public", "rn")
    stack.sql("insert into rn (id, title) values (200, 'after')")
    await equal(stack, db, "public", "rn")
    assert not worker.task.done()
    assert "not found" in (dr.problem or "")
    await until(lambda: any(r.get("event") == "table_failed" and r.get("table") == "public.dr"
                            and r.get("state") == "missing" for r in records(out)),
                "a table_failed record for dr")
    await until(lambda: any(r.get("event") == "status" and any(
        t["table"] == "public.dr" and t["state"] == "missing"  # type: ignore[index]
        for t in r["tables"]) for r in records(out)),  # type: ignore[union-attr]
        "a status record saying dr is missing")
    assert await worker.stop() == EXIT_FAILURE  # a table failed: said at the end
    assert "public.dr" in out.getvalue().splitlines()[-1]


async def test_a_renamed_table_is_missing_then_repaired_when_it_is_back(
    stack: StackProcess, db: Path
) -> None:
    create_table(stack, "rk", 30)
    create_table(stack, "rm", 30)
    worker = Worker(settings_for(stack), [MirrorTarget("public", "rk"),
                                          MirrorTarget("public", "rm")], db)
    await worker.live()
    rm = fig(worker, "public.rm")
    stack.sql("alter table rm rename to rm_away")
    stack.drop_connections()
    await until(lambda: rm.state == "missing", "rm to be reported missing",
                detail=lambda: f"rm is {rm.state} ({rm.problem})")
    stack.sql("insert into rk (id, title) select g, 'k ' || g from generate_series(101, 110) g")
    await equal(stack, db, "public", "rk")
    stack.sql("update rm_away set title = 'changed while away' where id <= 5;"
              "alter table rm_away rename to rm")
    await until(lambda: rm.state == "live", "rm to be back and live",
                detail=lambda: f"rm is {rm.state} ({rm.problem})")
    await equal(stack, db, "public", "rm")
    stack.sql("insert into rm (id, title) values (500, 'live again')")
    await equal(stack, db, "public", "rm")
    await equal(stack, db, "public", "rk")
    assert rm.problem is None
    assert await worker.stop() == 0


async def test_a_restart_with_a_table_missing_upstream_mirrors_the_others(
    stack: StackProcess, db: Path
) -> None:
    create_table(stack, "sa", 10)
    create_table(stack, "sb", 10)
    targets = [MirrorTarget("public", "sa"), MirrorTarget("public", "sb")]
    worker = Worker(settings_for(stack), targets, db)
    await worker.live()
    assert await worker.stop() == 0
    stack.sql("drop table sb; insert into sa (id, title) values (300, 'while stopped')")
    out = io.StringIO()
    worker = Worker(settings_for(stack), targets, db, json_logs=True, out=out)
    await until(lambda: worker.ready.is_set(), "the worker to start")
    sa, sb = fig(worker, "public.sa"), fig(worker, "public.sb")
    await until(lambda: sa.state == "live", "sa to be live")
    await equal(stack, db, "public", "sa")
    await until(lambda: sb.state == "missing", "sb to be reported missing")
    assert await worker.stop() == EXIT_FAILURE
    # --once: the others are repaired, the missing one is named, exit 1
    stack.sql("insert into sa (id, title) values (301, 'before once')")
    once_out = io.StringIO()
    code = await run_mirror(settings_for(stack), targets,
                            MirrorOptions(db=db, once=True, progress=False, out=once_out,
                                          err=once_out))
    assert code == EXIT_FAILURE
    assert "public.sb is missing" in once_out.getvalue()
    await equal(stack, db, "public", "sa")


async def test_a_table_renamed_while_its_channel_stays_joined_is_noticed_and_repaired(
    stack: StackProcess, db: Path
) -> None:
    """No socket drop: the server just stops sending the renamed table's changes. The presence
    check says ``missing``; when the table is back, what changed meanwhile is repaired."""
    create_table(stack, "pk1", 20)
    create_table(stack, "pk2", 20)
    worker = Worker(settings_for(stack), [MirrorTarget("public", "pk1"),
                                          MirrorTarget("public", "pk2")], db,
                    presence_interval=0.5)
    await worker.live()
    p1, p2 = fig(worker, "public.pk1"), fig(worker, "public.pk2")
    stack.sql("alter table pk2 rename to pk2_away")
    await until(lambda: p2.state == "missing", "pk2 to be reported missing",
                detail=lambda: f"pk2 is {p2.state}")
    stack.sql("update pk2_away set title = 'while away' where id <= 7;"
              "delete from pk2_away where id = 20;"
              "insert into pk1 (id, title) values (100, 'pk1 goes on')")
    await equal(stack, db, "public", "pk1")
    assert p1.state == "live"
    stack.sql("alter table pk2_away rename to pk2")
    await until(lambda: p2.state == "live", "pk2 to be back and live",
                detail=lambda: f"pk2 is {p2.state} ({p2.problem})")
    await equal(stack, db, "public", "pk2")
    assert await worker.stop() == 0
