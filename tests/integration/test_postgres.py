"""The private cluster: logical WAL, loopback only, Supabase-like bootstrap, clean stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from supasync.devstack.postgres import Cluster, PostgresNotFound, find_server_binaries


def test_cluster_settings_and_bootstrap() -> None:
    with Cluster() as c, c.connect() as conn:
        assert conn.execute("show wal_level").fetchone() == ("logical",)
        assert conn.execute("show listen_addresses").fetchone() == ("127.0.0.1",)
        roles = {r for (r,) in conn.execute("select rolname from pg_roles").fetchall()}
        assert {"anon", "authenticated", "service_role"} <= roles
        assert conn.execute(
            "select rolbypassrls from pg_roles where rolname = 'service_role'"
        ).fetchone() == (True,)
        assert conn.execute(
            "select count(*) from pg_publication where pubname = 'supabase_realtime'"
        ).fetchone() == (1,)
        conn.execute(
            "select set_config('request.jwt.claims', %s, false)",
            ['{"sub": "6f1e0000-0000-0000-0000-000000000001", "role": "authenticated",'
             ' "email": "a@example.com"}'],
        )
        uid, role, jwt = conn.execute("select auth.uid(), auth.role(), auth.jwt()").fetchone()  # type: ignore[misc]
        assert str(uid) == "6f1e0000-0000-0000-0000-000000000001"
        assert role == "authenticated"
        assert jwt["email"] == "a@example.com"


def test_data_dir_survives_restart() -> None:
    tmp_path = Path(tempfile.mkdtemp())
    c = Cluster(tmp_path)
    c.start()
    with c.connect() as conn:
        conn.execute("create table kept (id int primary key)")
        conn.execute("insert into kept values (1)")
    c.stop()
    c.start()  # bootstrap again: must be idempotent
    with c.connect() as conn:
        assert conn.execute("select id from kept").fetchall() == [(1,)]
    c.stop()


def test_no_orphan_after_parent_crash() -> None:
    tmp_path = Path(tempfile.mkdtemp())
    script = (
        "import sys; from supasync.devstack.postgres import Cluster; "
        f"c = Cluster({str(tmp_path)!r}); c.start(); print(c.port, flush=True); "
        "import time; time.sleep(600)"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    port = int(parent.stdout.readline())
    pid_file = tmp_path / "pgdata" / "postmaster.pid"
    pm_pid = int(pid_file.read_text().split()[0])
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pm_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)  # waiting for another process to exit; bounded
    else:
        pytest.fail("postmaster outlived its parent")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", connect_timeout=2)


def test_binaries_found() -> None:
    b = find_server_binaries()
    assert b.major >= 15


def test_missing_binaries_error_names_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    import supasync.devstack.postgres as pg

    monkeypatch.setattr(pg, "_candidate_bindirs", lambda: iter([]))
    with pytest.raises(PostgresNotFound, match="pgserver"):
        pg.find_server_binaries()


def test_a_kept_stack_keeps_its_database_url_across_restarts() -> None:
    """SUPABASE_DB_URL written to a .env stays valid when `supasync dev --data-dir` restarts."""
    from supasync.devstack.testing import StackProcess

    data_dir = Path(tempfile.mkdtemp())
    os.chmod(data_dir, 0o755)
    stack = StackProcess(data_dir=data_dir)
    try:
        stack.start()
        first = stack.db_url
        stack.sql("create table kept_rows (id int primary key); insert into kept_rows values (1)")
        # Connections open at the restart are closed by the server, leaving its port in
        # TIME_WAIT: that must not make the restarted stack move to another port.
        open_conns = [psycopg.connect(first) for _ in range(3)]
        stack.restart()
        for conn in open_conns:
            conn.close()
        assert stack.db_url == first
        assert stack.sql("select id from kept_rows") == [(1,)]
    finally:
        stack.close()
