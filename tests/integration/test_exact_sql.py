"""Exact-mode SQL against a real PostgreSQL: install, log, horizon, late commits, retention,
grants, uninstall (supasync.repair.sqlinstall, supasync/repair/sql/*.sql)."""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from supasync.core.errors import ConfigError
from supasync.devstack.postgres import Cluster
from supasync.repair import sqlinstall

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def db() -> Iterator[str]:
    cluster = Cluster()  # a fresh temporary directory (tempfile.mkdtemp)
    cluster.start()
    try:
        with cluster.connect() as conn:
            conn.execute("create table items (id int primary key, owner text, v int)")
            conn.execute("create table pairs (a int, b text, v int, primary key (a, b))")
            conn.execute("create table nokey (v int)")
        yield cluster.dsn
    finally:
        cluster.stop()


def rpc(conn: psycopg.Connection[Any], table: str, since: str | None, **kw: Any) -> dict[str, Any]:
    args = {"p_table": table, "p_since": since, **kw}
    names = ", ".join(f"{k} => %({k})s" for k in args)
    row = conn.execute(f"select public.supasync_changes({names})", args).fetchone()
    assert row is not None
    result: dict[str, Any] = row[0] if isinstance(row[0], dict) else json.loads(row[0])
    return result


def test_render_fills_tables_and_retention() -> None:
    text = sqlinstall.render(["public.items", "o'brien"], "36 hours")
    assert "array['public.items', 'o''brien']" in text
    assert "'36 hours'::interval" in text
    assert "{{" not in text
    assert "'3600.000000 seconds'::interval" in sqlinstall.render(["t"], _dt.timedelta(hours=1))
    with pytest.raises(Exception, match="at least one table"):
        sqlinstall.render([])
    with pytest.raises(Exception, match="not an interval"):
        sqlinstall.render(["t"], "1 day'; drop table x; --")


def test_apply_is_idempotent_and_status_reports(db: str) -> None:
    sqlinstall.apply(db, ["public.items"])
    sqlinstall.apply(db, ["items", "pairs"], "2 days")
    st = sqlinstall.status(db)
    assert st.installed
    assert st.tables == {"public.items": ("id",), "public.pairs": ("a", "b")}
    assert st.retention_s == 2 * 86400
    with psycopg.connect(db, autocommit=True) as conn:
        n = conn.execute(
            "select count(*) from pg_trigger where tgname = 'supasync_log'"
        ).fetchone()
    assert n == (2,)


def test_missing_table_or_key_is_named(db: str) -> None:
    """A ConfigError naming the table and the fix, not the raw PL/pgSQL error."""
    with pytest.raises(ConfigError, match=r"public\.nosuch does not exist") as missing:
        sqlinstall.apply(db, ["public.nosuch"])
    assert missing.value.fix is not None and "schema-qualify" in missing.value.fix
    assert "CONTEXT" not in str(missing.value)
    with pytest.raises(ConfigError, match="nokey has no primary key") as keyless:
        sqlinstall.apply(db, ["nokey"])
    assert keyless.value.fix is not None and "primary key" in keyless.value.fix


def test_writes_are_logged_with_xids_and_read_from_the_horizon(db: str) -> None:
    sqlinstall.apply(db, ["items", "pairs"])
    with psycopg.connect(db, autocommit=True) as conn:
        start = rpc(conn, "items", None)
        assert start["logged"] is True and start["entries"] == []
        h0 = start["horizon"]
        conn.execute("insert into items values (1, 'a', 1), (2, 'b', 1)")
        conn.execute("update items set v = 2 where id = 1")
        conn.execute("update items set id = 3 where id = 2")  # key change
        conn.execute("delete from items where id = 1")
        conn.execute("insert into pairs values (1, 'x', 0)")
        got = rpc(conn, "public.items", h0)
        ops = [(e[2], e[3]) for e in got["entries"]]
        assert ops == [
            ("I", [1]), ("I", [2]), ("U", [1]), ("D", [2]), ("U", [3]), ("D", [1])
        ]
        xids = [int(e[1]) for e in got["entries"]]
        assert xids == sorted(xids) and int(got["horizon"]) > xids[-1]
        assert [e[3] for e in rpc(conn, "pairs", h0)["entries"]] == [[1, "x"]]
        # Paging by (xid, id).
        first = rpc(conn, "items", h0, p_limit=2)["entries"]
        rest = rpc(conn, "items", h0, p_after_xid=first[-1][1], p_after_id=first[-1][0])
        assert [e[0] for e in first + rest["entries"]] == [e[0] for e in got["entries"]]
        # The server caps a page and says so.
        assert rpc(conn, "items", h0, p_limit=20000)["limit"] == 10000
        # Nothing new past the horizon.
        assert rpc(conn, "items", got["horizon"])["entries"] == []
        assert rpc(conn, "nokey", h0) == {"logged": False, "table": "public.nokey"}


def test_long_transaction_committing_late_is_not_skipped(db: str) -> None:
    sqlinstall.apply(db, ["items"])
    with psycopg.connect(db, autocommit=True) as reader, psycopg.connect(db) as slow:
        h0 = rpc(reader, "items", None)["horizon"]
        slow.execute("insert into items values (100, 'slow', 1)")  # open, not committed
        reader.execute("insert into items values (101, 'fast', 1)")
        first = rpc(reader, "items", h0)
        assert [e[3] for e in first["entries"]] == [[101]]
        # The horizon stays at or below the open transaction's id.
        slow_xid = slow.execute("select pg_current_xact_id()::text").fetchone()
        assert slow_xid is not None and int(first["horizon"]) <= int(slow_xid[0])
        slow.commit()
        second = rpc(reader, "items", first["horizon"])
        assert [100] in [e[3] for e in second["entries"]]


def test_retention_prunes_and_exposes_pruned_max(db: str) -> None:
    sqlinstall.apply(db, ["items"], "1 hour")
    with psycopg.connect(db, autocommit=True) as conn:
        h0 = rpc(conn, "items", None)["horizon"]
        conn.execute("insert into items values (200, 'old', 1)")
        conn.execute(
            "update supasync.change_log set logged_at = now() - interval '2 hours' "
            "where pk = '[200]'"
        )
        old = conn.execute(
            "select max(xid::text::bigint) from supasync.change_log where pk = '[200]'"
        ).fetchone()
        conn.execute("select supasync.prune()")
        got = rpc(conn, "items", h0)
        assert [200] not in [e[3] for e in got["entries"]]
        assert old is not None and int(got["pruned_max"]) >= old[0] >= int(h0)
        assert got["retention_s"] == 3600


def test_truncate_is_logged(db: str) -> None:
    sqlinstall.apply(db, ["pairs"])
    with psycopg.connect(db, autocommit=True) as conn:
        h0 = rpc(conn, "pairs", None)["horizon"]
        conn.execute("truncate pairs")
        assert [(e[2], e[3]) for e in rpc(conn, "pairs", h0)["entries"]] == [("T", None)]


def test_api_roles_call_the_rpc_but_cannot_read_the_log(db: str) -> None:
    sqlinstall.apply(db, ["items"])
    with psycopg.connect(db, autocommit=True) as conn:
        for role in ("anon", "authenticated", "service_role"):
            conn.execute(f"set role {role}")
            assert rpc(conn, "items", None)["logged"] is True
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("select * from supasync.change_log")
            conn.execute("reset role")
        # Writers without rights on the log still get logged (SECURITY DEFINER trigger).
        conn.execute("set role authenticated")
        h0 = conn.execute("select pg_snapshot_xmin(pg_current_snapshot())::text").fetchone()
        conn.execute("insert into items values (300, 'x', 1)")
        conn.execute("reset role")
        assert h0 is not None
        assert [300] in [e[3] for e in rpc(conn, "items", h0[0])["entries"]]


def test_uninstall_removes_everything_and_is_idempotent(db: str) -> None:
    sqlinstall.apply(db, ["items", "pairs"])
    sqlinstall.uninstall(db)
    sqlinstall.uninstall(db)
    assert sqlinstall.status(db).installed is False
    with psycopg.connect(db, autocommit=True) as conn:
        assert conn.execute(
            "select count(*) from pg_trigger where tgname like 'supasync_log%'"
        ).fetchone() == (0,)
        assert conn.execute(
            "select to_regprocedure('public.supasync_changes(text,text,text,bigint,integer)')"
        ).fetchone() == (None,)
        conn.execute("insert into items values (400, 'after', 1)")  # writes still work
    sqlinstall.apply(db, ["items"])  # and it installs again
    assert sqlinstall.status(db).tables == {"public.items": ("id",)}


def test_touch_trigger_bumps_the_column_and_the_rpc_reports_it(db: str) -> None:
    text = sqlinstall.render(["public.touched"], touch="updated_at", log=False)
    assert "supasync_touch" in text and "supasync_log" not in text and "{{" not in text
    assert "supasync_log" in sqlinstall.render(["t"], touch="updated_at")  # both
    with pytest.raises(Exception, match="nothing to install"):
        sqlinstall.render(["t"], log=False)
    with pytest.raises(Exception, match="column to touch is empty"):
        sqlinstall.render(["t"], touch=" ")
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("create table touched (id int primary key, body text, "
                     "updated_at timestamptz not null default now(), n int)")
        conn.execute("insert into touched (id, body, updated_at) values "
                     "(1, 'a', '2000-01-01')")
    sqlinstall.apply(db, ["public.touched"], touch="updated_at", log=False)
    sqlinstall.apply(db, ["public.touched"], touch="updated_at", log=False)  # idempotent
    with pytest.raises(psycopg.Error, match="n is int4, not a timestamp"):
        sqlinstall.apply(db, ["touched"], touch="n", log=False)
    with pytest.raises(psycopg.Error, match="has no column nosuch"):
        sqlinstall.apply(db, ["touched"], touch="nosuch", log=False)
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("update touched set body = 'b', updated_at = '2000-01-01' where id = 1")
        row = conn.execute("select updated_at > now() - interval '1 minute', "
                           "public.supasync_cursor_columns() from touched").fetchone()
        assert row is not None and row[0] is True
        assert {"schema": "public", "table": "touched", "column": "updated_at"} in row[1]
        # A disabled (or dropped) trigger is not reported: auto must not trust the column.
        conn.execute("alter table touched disable trigger supasync_touch")
        listed = conn.execute("select public.supasync_cursor_columns()").fetchone()
        assert listed is not None and listed[0] == []
        conn.execute("alter table touched enable trigger supasync_touch")
    sqlinstall.uninstall(db)
    with psycopg.connect(db, autocommit=True) as conn:
        gone = conn.execute("select count(*) from pg_trigger where tgname = 'supasync_touch'")
        assert gone.fetchone() == (0,)
        conn.execute("drop table touched")
