"""The mirror's entry points: bad input gives a clear error and a non-zero exit and never
touches an existing mirror; ``--once`` snapshots then repairs; ``supasync mirror`` exits 0 on
SIGTERM after committing, and with ``--json`` writes only JSON lines to stdout."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from supasync.devstack.testing import StackProcess
from supasync.mirror.worker import EXIT_CONFIG, EXIT_OK, run_mirror_cli

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack() -> Iterator[StackProcess]:
    data_dir = tempfile.mkdtemp(prefix="supasync-h-mirror-cli-")
    os.chmod(data_dir, 0o755)
    s = StackProcess(data_dir=data_dir)
    s.start()
    s.sql(
        """
        create table c_todos (id bigint primary key, title text, done boolean default false);
        insert into c_todos select g, 'todo ' || g from generate_series(1, 50) g;
        create table c_nopk (a int, b text);
        create schema sales;
        create table sales.orders (id int primary key, total numeric(10,2));
        insert into sales.orders values (1, 9.5), (2, 20);
        grant usage on schema sales to anon, authenticated, service_role;
        grant select on c_todos, c_nopk, sales.orders to anon, authenticated, service_role;
        alter publication supabase_realtime add table c_todos;
        """
    )
    try:
        yield s
    finally:
        s.close()
        shutil.rmtree(data_dir, ignore_errors=True)


def env_for(stack: StackProcess) -> dict[str, str]:
    return {
        "SUPABASE_URL": stack.url,
        "SUPABASE_ANON_KEY": stack.anon_key,
        "SUPABASE_SERVICE_ROLE_KEY": stack.service_role_key,
        "SUPASYNC_TOKEN_SOURCE": "service_role",
    }


def run(stack: StackProcess, *tables: str, db: Path, **kw: object) -> tuple[int, str]:
    out = io.StringIO()
    code = run_mirror_cli(tables=tables, db=db, env=env_for(stack), env_file=None,
                          toml_path=None, out=out, err=out, quiet=False,
                          **kw)  # type: ignore[arg-type]
    return code, out.getvalue()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mirror_content(path: Path) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("select * from c_todos order by id").fetchall() + conn.execute(
            "select * from _supasync_state order by key").fetchall()
    finally:
        conn.close()


def test_once_snapshots_then_repairs(stack: StackProcess, tmp_path: Path) -> None:
    db = tmp_path / "m.sqlite"
    code, text = run(stack, "c_todos", db=db, once=True)
    assert code == EXIT_OK, text
    assert "snapshot" in text
    conn = sqlite3.connect(db)
    assert conn.execute("select count(*) from c_todos").fetchone() == (50,)
    conn.close()
    stack.sql("update c_todos set done = true where id = 3; delete from c_todos where id = 4;")
    code, text = run(stack, "c_todos", db=db, once=True, json_logs=True)
    assert code == EXIT_OK, text
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    repaired = [r for r in records if r.get("event") == "repaired"]
    assert repaired and repaired[0]["mode"] == "diff" and repaired[0]["deleted"] == 1
    conn = sqlite3.connect(db)
    assert conn.execute("select done from c_todos where id = 3").fetchone() == (1,)
    assert conn.execute("select count(*) from c_todos").fetchone() == (49,)
    conn.close()
    stack.sql("insert into c_todos values (4, 'todo 4', false)")


@pytest.fixture
def good_mirror(stack: StackProcess, tmp_path: Path) -> Path:
    db = tmp_path / "good.sqlite"
    code, text = run(stack, "c_todos", db=db, once=True)
    assert code == EXIT_OK, text
    return db


def test_unknown_table_and_no_primary_key_leave_the_mirror_alone(
    stack: StackProcess, good_mirror: Path
) -> None:
    before, content = digest(good_mirror), mirror_content(good_mirror)
    code, text = run(stack, "c_todos", "no_such_table", db=good_mirror)
    assert code == EXIT_CONFIG
    assert "public.no_such_table not found" in text
    code, text = run(stack, "c_nopk", db=good_mirror)
    assert code == EXIT_CONFIG
    assert "has no primary key" in text and "add primary key" in text
    code, text = run(stack, "sales.orders", db=good_mirror)
    assert code == EXIT_CONFIG and "not exposed" in text
    code, text = run(stack, "bad.name.here", db=good_mirror)
    assert code == EXIT_CONFIG and "SCHEMA.TABLE" in text
    code, text = run(stack, "c_todos", db=good_mirror, filter_text="done=eq")
    assert code == EXIT_CONFIG
    assert digest(good_mirror) == before and mirror_content(good_mirror) == content
    assert stack.service_role_key not in text


def test_unusable_paths_and_files(stack: StackProcess, tmp_path: Path) -> None:
    code, text = run(stack, "c_todos", db=tmp_path / "missing-dir" / "m.sqlite")
    assert code == EXIT_CONFIG and "does not exist" in text
    assert not (tmp_path / "missing-dir").exists()
    code, text = run(stack, "c_todos", db=tmp_path)
    assert code == EXIT_CONFIG and "is a directory" in text
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"definitely not sqlite " * 200)
    before = digest(corrupt)
    code, text = run(stack, "c_todos", db=corrupt)
    assert code == EXIT_CONFIG and "not a usable SQLite database" in text
    assert digest(corrupt) == before
    foreign = tmp_path / "foreign.sqlite"
    conn = sqlite3.connect(foreign)
    conn.execute("create table c_todos (id int primary key, mine text)")
    conn.execute("insert into c_todos values (1, 'precious')")
    conn.commit()
    conn.close()
    before = digest(foreign)
    code, text = run(stack, "c_todos", db=foreign)
    assert code == EXIT_CONFIG and "did not create" in text
    assert digest(foreign) == before


def _module(stack: StackProcess, cwd: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, **env_for(stack)}
    return subprocess.Popen(
        [sys.executable, "-m", "supasync.cli", "mirror", *args], cwd=cwd,
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_command_bad_input_and_sigterm(stack: StackProcess, tmp_path: Path) -> None:
    proc = _module(stack, tmp_path, "--table", "nope", "--db", str(tmp_path / "x.sqlite"))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_CONFIG and "public.nope not found" in err
    assert not (tmp_path / "x.sqlite").exists()
    db = tmp_path / "live.sqlite"
    proc = _module(stack, tmp_path, "--table", "c_todos", "--db", str(db), "--json",
                   "--log-level", "INFO")
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        live = False
        while time.monotonic() < deadline and not live:
            line = proc.stdout.readline()
            if not line:
                break
            record = json.loads(line)  # stdout carries JSON lines only
            tables = record.get("tables") or []
            live = bool(tables) and all(t["state"] == "live" for t in tables)
        assert live, "the worker did not report live"
        # A second writer on the same file is refused (issue #17: two ran side by side).
        code, out = run(stack, "c_todos", db=db, once=True)
        assert code == EXIT_CONFIG and "being written by another supasync process" in out, out
        proc.send_signal(signal.SIGTERM)
        rest, err = proc.communicate(timeout=60)
        assert proc.returncode == EXIT_OK
        assert all(json.loads(line) for line in rest.splitlines())
        # logs are on stderr (JSON, at --log-level), never a record of stdout's, and the
        # HTTP client's request lines stay out at INFO
        records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        assert all(r["event"] == "log" for r in records), records
        assert "HTTP Request" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    conn = sqlite3.connect(db)
    assert conn.execute("select count(*) from c_todos").fetchone() == (50,)
    conn.close()


def test_supasync_mirror_command_reaches_the_worker(tmp_path: Path) -> None:
    """`supasync mirror` (the console command) runs the mirror worker: bad input exits 2 with
    the worker's own message, not a placeholder."""
    env = {"PATH": "/usr/bin:/bin", "SUPABASE_URL": "http://127.0.0.1:9",
           "SUPABASE_ANON_KEY": "x"}
    proc = subprocess.run(
        [sys.executable, "-m", "supasync.cli", "mirror", "--table", "todos",
         "--db", str(tmp_path), "--once", "--env-file", str(tmp_path / "none.env")],
        capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert "not yet available" not in proc.stderr


def test_a_damaged_mirror_file_exits_2_with_a_message(stack: StackProcess, tmp_path: Path) -> None:
    """Issue #17: a mirror file with zeroed pages in the middle gave a 61-line traceback and
    exit 1; the README promises exit 2 and a message."""
    stack.sql("create table if not exists c_big (id bigint primary key, body text);"
              "insert into c_big select g, repeat('x', 300) from generate_series(1, 20000) g"
              " on conflict do nothing;"
              "grant select on c_big to anon, authenticated, service_role;")
    db = tmp_path / "big.sqlite"
    code, out = run(stack, "c_big", db=db, once=True)
    assert code == EXIT_OK, out
    conn = sqlite3.connect(db)
    conn.execute("pragma wal_checkpoint(truncate)")
    conn.close()
    assert db.stat().st_size > 80 * 16384
    with db.open("r+b") as fh:  # dd if=/dev/zero of=FILE bs=16384 seek=20 count=50 conv=notrunc
        fh.seek(20 * 16384)
        fh.write(bytes(50 * 16384))
    proc = _module(stack, tmp_path, "--table", "c_big", "--db", str(db), "--once")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_CONFIG, err
    assert "is damaged" in err and "move it aside" in err
    assert "Traceback" not in err
