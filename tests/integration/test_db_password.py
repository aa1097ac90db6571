"""The local stack's PostgreSQL requires its password on every TCP connection (issue #17).

Before, ``pg_hba.conf`` trusted loopback: any local account could log in as the superuser.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from supasync.devstack.postgres import (
    HBA_CONF,
    PASSWORD_FILE,
    Cluster,
    _server_user,
    find_server_binaries,
    hba_trusts,
    scram_verifier,
)
from supasync.devstack.testing import StackProcess

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _no_ambient_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """libpq must not find a password anywhere but in the URL we give it."""
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", "/nonexistent/supasync-test-pgpass")


@pytest.fixture
def data_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="supasync-pw-test-"))
    os.chmod(d, 0o755)  # the server may run as `postgres`
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _refused_without_password(port: int, dbname: str = "postgres") -> None:
    with pytest.raises(psycopg.OperationalError) as exc:
        psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname=dbname,
                        connect_timeout=5)
    text = str(exc.value)
    assert "password" in text, text  # "no password supplied" / "password authentication failed"


def _works(dsn: str) -> None:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        assert conn.execute("select current_user").fetchone() == ("postgres",)


def test_stack_db_url_carries_the_password_and_tcp_without_it_is_refused(data_dir: Path) -> None:
    stack = StackProcess(data_dir=data_dir)
    try:
        stack.start()
        url = conninfo_to_dict(stack.db_url)
        assert url.get("password"), "SUPABASE_DB_URL must carry the password"
        port = int(str(url["port"]))
        _refused_without_password(port)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres",
                            password="wrong", connect_timeout=5)
        # Another login role cannot get in without a password either.
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(host="127.0.0.1", port=port, user="authenticator",
                            dbname="postgres", connect_timeout=5)
        _works(stack.db_url)
        stack.sql("create table pw_kept (id int primary key); insert into pw_kept values (1)")
        # The stack's own connections (REST pool as authenticator, Realtime, auth) use it too.
        stack.create_user("pw@example.com", "secret-password-1")
        assert stack.sign_in("pw@example.com", "secret-password-1")["access_token"]
        import httpx
        r = httpx.get(f"{stack.url}/rest/v1/pw_kept",
                      headers={"apikey": stack.service_role_key,
                               "Authorization": f"Bearer {stack.service_role_key}"})
        assert (r.status_code, r.json()) == (200, [{"id": 1}])

        first = stack.db_url
        stack.restart()  # same data directory: same password, same URL
        assert stack.db_url == first
        _works(stack.db_url)
        _refused_without_password(port)
        assert stack.sql("select id from pw_kept") == [(1,)]

        secret = data_dir / "db" / PASSWORD_FILE
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        assert url["password"] in secret.read_text()
        ready = data_dir / "ready.json"
        assert stat.S_IMODE(ready.stat().st_mode) == 0o600
        assert str(url["password"]) not in stack.log_tail(1000)
        assert str(url["password"]) not in (data_dir / "db" / "postgres.log").read_text()
    finally:
        stack.close()


def test_a_temporary_cluster_gets_a_new_password_each_time() -> None:
    with Cluster() as a:
        _refused_without_password(a.port)
        _works(a.dsn)
        first = a.password
    with Cluster() as b:
        assert b.password != first
        _works(b.dsn)


def test_a_data_dir_made_with_trust_is_upgraded(data_dir: Path) -> None:
    """What the old code made: initdb -A trust and a trusting pg_hba.conf, no password."""
    c = Cluster(data_dir)
    c.binaries = find_server_binaries()
    user = _server_user()
    if user is not None:
        os.chown(data_dir, user.pw_uid, user.pw_gid)
    subprocess.run(
        [str(c.binaries.initdb), "-D", str(c.data_dir), "-U", "postgres", "-A", "trust",
         "-E", "UTF8", "--locale=C", "--no-sync"],
        check=True, capture_output=True, cwd=data_dir,
        **({"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}))
    (c.data_dir / "pg_hba.conf").write_text(
        "host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n"
        "host replication all 127.0.0.1/32 trust\n")
    assert not (data_dir / PASSWORD_FILE).exists()
    c.start()
    try:
        assert (c.data_dir / "pg_hba.conf").read_text() == HBA_CONF
        _refused_without_password(c.port)
        _works(c.dsn)
    finally:
        c.stop()
    again = Cluster(data_dir, port=c.port)
    again.start()
    try:
        assert again.password == c.password
        _works(again.dsn)
        _refused_without_password(again.port)
    finally:
        again.stop()


def test_a_lost_password_file_is_replaced(data_dir: Path) -> None:
    c = Cluster(data_dir)
    c.start()
    old = c.password
    c.stop()
    (data_dir / PASSWORD_FILE).unlink()
    c2 = Cluster(data_dir)
    c2.start()
    try:
        assert c2.password != old
        _works(c2.dsn)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(c2.dsn.replace(c2.password, old), connect_timeout=5)
    finally:
        c2.stop()


def test_hba_and_verifier_helpers() -> None:
    assert hba_trusts("host all all 127.0.0.1/32 trust\n")
    assert hba_trusts("local all all trust")
    assert not hba_trusts(HBA_CONF)
    assert not hba_trusts("# trust nobody\nhost all all 127.0.0.1/32 scram-sha-256")
    v = scram_verifier("pw", salt=b"0123456789abcdef")
    assert v.startswith("SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$")
    assert "pw" not in v.split("$", 1)[1].split(":")[0]


def test_fsync_is_off_unless_durable() -> None:
    """The README says so: fast by default, crash-safe with --durable."""
    from supasync.devstack.runner import build_parser, config_from_args

    assert config_from_args(build_parser().parse_args(["--durable"])).durable is True
    assert config_from_args(build_parser().parse_args([])).durable is False
    with Cluster() as fast, fast.connect() as conn:
        assert conn.execute("show fsync").fetchone() == ("off",)
    with Cluster(durable=True) as safe, safe.connect() as conn:
        assert conn.execute("show fsync").fetchone() == ("on",)
        assert conn.execute("show full_page_writes").fetchone() == ("on",)
