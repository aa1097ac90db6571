"""`supasync sql`: print, apply (idempotent), uninstall, and clear errors."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from supasync.cli.sql import run_sql
from supasync.devstack.postgres import Cluster


@pytest.fixture(scope="module")
def db() -> Iterator[Cluster]:
    with Cluster() as c:
        with c.connect() as conn:
            conn.execute("create table public.todos (id int primary key, task text)")
        yield c


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "supasync.cli", "sql", *args],
                          capture_output=True, text=True, timeout=60, env=env, cwd="/")


def test_prints_the_script_for_named_tables() -> None:
    out = io.StringIO()
    code = run_sql(["public.todos"], apply=False, uninstall=False, retention="2 days",
                   db_url=None, env_file=Path("/nonexistent.env"),
                   toml_path=Path("/nonexistent.toml"), out=out)
    assert code == 0
    assert "public.todos" in out.getvalue()
    assert "'2 days'::interval" in out.getvalue()


def test_apply_is_idempotent_and_uninstall_removes(db: Cluster) -> None:
    for _ in range(2):
        proc = _run("public.todos", "--apply", "--db-url", db.dsn)
        assert proc.returncode == 0, proc.stderr
    with db.connect() as conn:
        conn.execute("insert into todos values (1, 'a')")
        assert conn.execute("select count(*) from supasync.change_log").fetchone() == (1,)
        assert conn.execute(
            "select count(*) from pg_trigger where tgname = 'supasync_log'"
        ).fetchone() == (1,)
    proc = _run("--uninstall", "--db-url", db.dsn)
    assert proc.returncode == 0, proc.stderr
    with db.connect() as conn:
        assert conn.execute("select to_regnamespace('supasync')").fetchone() == (None,)


def test_errors_name_the_fix(db: Cluster) -> None:
    env = {"PATH": "/usr/bin:/bin"}
    proc = _run("public.todos", "--apply", env=env)
    assert proc.returncode == 2
    assert "SUPABASE_DB_URL" in proc.stderr
    assert _run("public.todos", "--retention", "1; drop table x").returncode == 2


def test_unknown_table_exits_2_naming_it_and_the_fix(db: Cluster) -> None:
    """Not a raw PL/pgSQL error: the table, what is wrong and how to fix it; nothing installed."""
    proc = _run("public.missing_table", "--apply", "--db-url", db.dsn)
    assert proc.returncode == 2, proc.stderr
    assert "public.missing_table does not exist" in proc.stderr
    assert "schema-qualify" in proc.stderr and "create it" in proc.stderr
    assert "CONTEXT" not in proc.stderr and "PL/pgSQL" not in proc.stderr
    assert "Traceback" not in proc.stderr
    with db.connect() as conn:
        assert conn.execute("select to_regnamespace('supasync')").fetchone() == (None,)


def test_table_without_primary_key_exits_2_naming_it(db: Cluster) -> None:
    with db.connect() as conn:
        conn.execute("create table if not exists public.no_pk (a int)")
    proc = _run("public.no_pk", "--apply", "--db-url", db.dsn)
    assert proc.returncode == 2, proc.stderr
    assert "no_pk has no primary key" in proc.stderr and "CONTEXT" not in proc.stderr


def test_printed_script_points_to_the_readme() -> None:
    proc = _run("public.todos")
    assert proc.returncode == 0, proc.stderr
    assert "design.md" not in proc.stdout and "supasync README" in proc.stdout


def test_touch_installs_the_cursor_trigger(db: Cluster) -> None:
    """``supasync sql TABLE --touch COLUMN --apply``: the trigger that makes a cursor column
    trustworthy for repair="auto" (issue #13), reported by the RPC auto asks."""
    with db.connect() as conn:
        conn.execute("create table if not exists public.touched (id int primary key, body text,"
                     " updated_at timestamptz not null default now())")
        conn.commit()
    proc = _run("public.touched", "--touch", "updated_at", "--apply", "--db-url", db.dsn)
    assert proc.returncode == 0, proc.stderr
    assert "updated_at trigger" in proc.stderr
    with db.connect() as conn:
        conn.execute("insert into touched values (1, 'a', '2000-01-01')")
        (stamped,) = conn.execute("select updated_at from touched where id = 1").fetchone()
        assert stamped.year > 2000  # the trigger set it, whatever the writer said
        (cols,) = conn.execute("select public.supasync_cursor_columns()").fetchone()
        assert {"schema": "public", "table": "touched", "column": "updated_at"} in cols
    proc = _run("--uninstall", "--db-url", db.dsn)
    assert proc.returncode == 0, proc.stderr
