"""A private PostgreSQL cluster for the local stack and for tests.

Contract:

* :func:`find_server_binaries` locates ``initdb`` and ``postgres`` (15 or newer): ``PATH``,
  then ``pg_config --bindir``, then ``/usr/lib/postgresql/*/bin`` (newest first), then the
  optional pip package ``pgserver``. It raises :class:`PostgresNotFound` naming every place
  it looked and how to fix it.
* :class:`Cluster` owns one data directory. ``start()`` runs ``initdb`` when the directory is
  new (``wal_level=logical``, loopback TCP only, no Unix socket), starts ``postgres`` as a
  direct child, waits until it accepts connections, and bootstraps it like a Supabase database
  (roles, ``auth`` schema, ``supabase_realtime`` publication). ``stop()`` asks for a fast
  shutdown and waits.
* Every connection needs a password (``scram-sha-256``), even on loopback: any local account
  could otherwise log in as the superuser. The password is random, kept next to the data
  directory in ``db-password`` (mode 0600, reused across restarts; a temporary cluster gets a
  new one) and carried in :attr:`Cluster.dsn`. A data directory made by an older version
  (``trust`` in ``pg_hba.conf``) is upgraded on start: the password is set in single-user mode,
  before the server listens, and ``pg_hba.conf`` is rewritten. The server only ever receives
  the SCRAM verifier, never the password itself.
* By default the server runs with ``fsync=off`` (fast, not crash-safe: a machine crash can lose
  or corrupt the data directory); ``durable=True`` turns fsync and full-page writes back on.
* When this process runs as root the server runs as the ``postgres`` user (PostgreSQL
  refuses root). The child gets ``PR_SET_PDEATHSIG`` so that if the parent dies without
  cleaning up, the postmaster receives SIGINT (fast shutdown) instead of lingering as an
  orphan. Linux only; elsewhere ``stop()`` is the only clean-up.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import glob
import hashlib
import hmac
import importlib.util
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from supasync.core.redact import mask

MIN_MAJOR = 15
_PR_SET_PDEATHSIG = 1


class PostgresError(RuntimeError):
    """The private cluster could not be created, started or bootstrapped."""


class PostgresNotFound(PostgresError):
    """No PostgreSQL 15+ server binaries were found."""


@dataclass(frozen=True)
class ServerBinaries:
    bindir: Path
    major: int

    @property
    def initdb(self) -> Path:
        return self.bindir / "initdb"

    @property
    def postgres(self) -> Path:
        return self.bindir / "postgres"


def _major_of(postgres_bin: Path) -> int | None:
    try:
        out = subprocess.run(
            [str(postgres_bin), "--version"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"(\d+)(?:\.\d+)?", out)
    return int(m.group(1)) if m else None


def _candidate_bindirs() -> Iterator[tuple[str, Path]]:
    on_path = shutil.which("postgres")
    if on_path:
        yield "PATH", Path(os.path.realpath(on_path)).parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
            if out:
                yield "pg_config --bindir", Path(out)
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(re.sub(r"\D", "", Path(p).parent.name) or 0),
        reverse=True,
    )
    for p in versions:
        yield "/usr/lib/postgresql", Path(p)
    # The optional pip package `pgserver` ships PostgreSQL binaries; find it without importing
    # it (its import has side effects we do not need).
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin:
        yield "pgserver", Path(spec.origin).parent / "pginstall" / "bin"


def find_server_binaries() -> ServerBinaries:
    """Return the newest usable server binaries, or raise :class:`PostgresNotFound`."""
    looked: list[str] = []
    for where, bindir in _candidate_bindirs():
        postgres_bin, initdb_bin = bindir / "postgres", bindir / "initdb"
        if not (postgres_bin.exists() and initdb_bin.exists()):
            looked.append(f"{where}: {bindir} (no postgres/initdb)")
            continue
        major = _major_of(postgres_bin)
        if major is None or major < MIN_MAJOR:
            looked.append(f"{where}: {bindir} (version {major}, need {MIN_MAJOR}+)")
            continue
        return ServerBinaries(bindir=bindir, major=major)
    raise PostgresNotFound(
        "No PostgreSQL 15+ server binaries found. Looked at: "
        + ("; ".join(looked) or "PATH, pg_config, /usr/lib/postgresql/*/bin, pgserver")
        + ". Fix: install the server (e.g. `apt-get install postgresql`) or "
        "`pip install 'supasync[pgserver]'`."
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _server_user() -> pwd.struct_passwd | None:
    """The account the server runs as: ``postgres`` when we are root, else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError as exc:
        raise PostgresError(
            "Running as root, and PostgreSQL refuses to run as root, but there is no "
            "`postgres` user to run it as. Fix: `useradd --system postgres` or run as a "
            "non-root user."
        ) from exc


def _pdeathsig_preexec() -> None:  # pragma: no cover - runs in the child
    # Runs after the uid switch (CPython applies user= before preexec_fn), and credential
    # changes clear the parent-death signal, so it must be set here, last.
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGINT)
    os.setpgrp()  # Ctrl-C in a terminal goes to us; we shut the server down in order.


PASSWORD_FILE = "db-password"
SCRAM_ITERATIONS = 4096  # PostgreSQL's default (scram_iterations)
HBA_CONF = (
    "# written by supasync: loopback TCP only, a password (scram-sha-256) always required\n"
    "host all all 127.0.0.1/32 scram-sha-256\n"
    "host all all ::1/128 scram-sha-256\n"
    "host replication all 127.0.0.1/32 scram-sha-256\n"
)


def scram_verifier(password: str, *, salt: bytes | None = None,
                   iterations: int = SCRAM_ITERATIONS) -> str:
    """The ``SCRAM-SHA-256$...`` verifier PostgreSQL stores for ``password`` (RFC 5802/7677).

    Giving the server the verifier instead of the password keeps the password out of any
    statement text the server could log. ``password`` must be ASCII (SASLprep is then a no-op).
    """
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()

    def b64(b: bytes) -> str:
        return base64.b64encode(b).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def hba_trusts(text: str) -> bool:
    """True if a ``pg_hba.conf`` lets anyone in without a password (a ``trust`` line)."""
    for line in text.splitlines():
        tokens = line.split("#", 1)[0].split()
        if tokens and "trust" in tokens[3:]:
            return True
    return False


def _write_secret(path: Path, text: str) -> None:
    """Create ``path`` with mode 0600 from the start (never briefly readable by others)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def bootstrap_sql() -> str:
    """The SQL that makes a fresh cluster look like a Supabase database."""
    return resources.files("supasync.devstack").joinpath("bootstrap.sql").read_text()


class Cluster:
    """A private cluster in ``data_dir`` (a new temporary directory when ``None``)."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        port: int | None = None,
        binaries: ServerBinaries | None = None,
        extra_settings: dict[str, str] | None = None,
        durable: bool = False,
    ) -> None:
        self._temporary = data_dir is None
        self._root = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="supasync-pg-"))
        self.data_dir = self._root / "pgdata"
        self.port = port or free_port()
        self.binaries = binaries
        self.extra_settings = extra_settings or {}
        self.durable = durable
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path = self._root / "postgres.log"
        self._password_path = self._root / PASSWORD_FILE
        self._password: str | None = None
        self._password_is_new = False

    # -- addresses -------------------------------------------------------------------
    @property
    def password(self) -> str:
        """The superuser's password: read from ``db-password``, or made (and saved) once."""
        if self._password is None:
            try:
                self._password = self._password_path.read_text().strip()
            except FileNotFoundError:
                self._password = ""
            if not self._password:
                self._root.mkdir(parents=True, exist_ok=True)
                self._password_path.unlink(missing_ok=True)
                self._password = secrets.token_urlsafe(24)  # URL-safe: fits a DSN as is
                _write_secret(self._password_path, self._password + "\n")
                self._password_is_new = True
        return self._password

    @property
    def dsn(self) -> str:
        """Superuser connection string (loopback only; it holds the password: never log it)."""
        return f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/postgres"

    def connect(self, *, connect_timeout: int = 10) -> psycopg.Connection[tuple[Any, ...]]:
        """A new autocommit connection as the superuser."""
        return psycopg.connect(self.dsn, autocommit=True, connect_timeout=connect_timeout)

    # -- lifecycle -------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 60.0) -> None:
        if self.running:
            return
        self.binaries = self.binaries or find_server_binaries()
        user = _server_user()
        self._root.mkdir(parents=True, exist_ok=True)
        fresh = not (self.data_dir / "PG_VERSION").exists()
        if user is not None:
            os.chown(self._root, user.pw_uid, user.pw_gid)
        password = self.password
        if fresh:
            self._initdb(user, password)
        else:
            self._secure_existing(user, password)
        self._spawn(user)
        self._wait_ready(timeout)
        self._bootstrap()

    def _run_as(self, user: pwd.struct_passwd | None) -> dict[str, Any]:
        if user is None:
            return {}
        return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}

    def _initdb(self, user: pwd.struct_passwd | None, password: str) -> None:
        assert self.binaries is not None
        # initdb reads the password from a file the server account can read; it is removed
        # as soon as initdb is done (the kept copy, db-password, stays ours alone).
        pwfile = self._root / f".initdb-pw-{secrets.token_hex(4)}"
        _write_secret(pwfile, password + "\n")
        if user is not None:
            os.chown(pwfile, user.pw_uid, user.pw_gid)
        cmd = [
            str(self.binaries.initdb),
            "-D", str(self.data_dir),
            "-U", "postgres",
            "--auth-host=scram-sha-256",
            "--auth-local=scram-sha-256",
            f"--pwfile={pwfile}",
            "-E", "UTF8",
            "--locale=C",
        ]
        if not self.durable:
            cmd.append("--no-sync")
        try:
            res = subprocess.run(
                cmd, capture_output=True, text=True, cwd=self._root, **self._run_as(user)
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if res.returncode != 0:
            hint = ""
            if user is not None and "Permission denied" in res.stderr:
                hint = (f" Fix: the server runs as user `{user.pw_name}`, which must be able to "
                        f"reach {self._root}; pick a directory outside private home or temp "
                        "folders (e.g. under /tmp or the project checkout).")
            raise PostgresError(f"initdb failed in {self.data_dir}: {res.stderr.strip()}{hint}")
        # Loopback TCP only, always with the password; no Unix socket at all (see _spawn).
        (self.data_dir / "pg_hba.conf").write_text(HBA_CONF)

    def _secure_existing(self, user: pwd.struct_passwd | None, password: str) -> None:
        """Make an existing data directory require ``password`` before the server starts.

        A directory made by an older supasync trusts every loopback connection; one whose
        ``db-password`` was lost has a password nobody knows. Either way the superuser's
        password is set in single-user mode (no listening socket meanwhile) and
        ``pg_hba.conf`` is rewritten.
        """
        hba = self.data_dir / "pg_hba.conf"
        try:
            current = hba.read_text()
        except OSError:
            current = ""
        if self._password_is_new or hba_trusts(current):
            self._set_password_offline(user, password)
        if current != HBA_CONF:
            hba.write_text(HBA_CONF)

    def _set_password_offline(self, user: pwd.struct_passwd | None, password: str) -> None:
        assert self.binaries is not None
        verifier = scram_verifier(password)
        res = subprocess.run(
            [str(self.binaries.postgres), "--single", "-D", str(self.data_dir),
             "-c", "unix_socket_directories=", "-c", "listen_addresses=", "postgres"],
            input=f"ALTER ROLE postgres WITH LOGIN PASSWORD '{verifier}';\n",
            capture_output=True, text=True, cwd=self._root, timeout=120, **self._run_as(user),
        )
        out = (res.stdout + res.stderr).replace(verifier, "***")
        if res.returncode != 0 or "ERROR:" in out:
            raise PostgresError(
                f"could not set the database password in {self.data_dir} (single-user mode "
                f"exited with {res.returncode}): {mask(out.strip())[-2000:]}. Fix: stop any "
                "server still running on this data directory and try again.")

    def _spawn(self, user: pwd.struct_passwd | None) -> None:
        assert self.binaries is not None
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": "",
            "wal_level": "logical",
            "max_replication_slots": "20",
            "max_wal_senders": "20",
            "max_connections": "200",
            # Fast, not crash-safe, unless asked for durability (``supasync dev --durable``).
            "fsync": "on" if self.durable else "off",
            "synchronous_commit": "on" if self.durable else "off",
            "full_page_writes": "on" if self.durable else "off",
            "password_encryption": "scram-sha-256",
            "shared_buffers": "128MB",
            "timezone": "UTC",
            "log_timezone": "UTC",
            "datestyle": "ISO, MDY",
            "logging_collector": "off",
        }
        settings.update(self.extra_settings)
        cmd = [str(self.binaries.postgres), "-D", str(self.data_dir)]
        for k, v in settings.items():
            cmd += ["-c", f"{k}={v}"]
        log = open(self._log_path, "ab")
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self._root,
                preexec_fn=_pdeathsig_preexec,
                **self._run_as(user),
            )
        finally:
            log.close()

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise PostgresError(
                    f"postgres exited with code {self._proc.returncode}; "
                    f"log: {self.log_tail()}"
                )
            try:
                with psycopg.connect(self.dsn, connect_timeout=2) as conn:
                    conn.execute("select 1")
                    return
            except psycopg.OperationalError as exc:
                last = exc
                time.sleep(0.05)  # polling a process we cannot get an event from
        self.stop()
        raise PostgresError(
            f"postgres did not accept connections in {timeout}s: {mask(str(last))}")

    def _bootstrap(self) -> None:
        with self.connect() as conn:
            conn.execute(bootstrap_sql())  # idempotent
            # PostgREST's login role signs in with the same password (the REST pool's DSN is
            # this one with user=authenticator); only its verifier crosses the wire.
            conn.execute(sql.SQL("ALTER ROLE authenticator WITH PASSWORD {}").format(
                sql.Literal(scram_verifier(self.password))))

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 30.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # fast shutdown: disconnects clients
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGQUIT)
                proc.wait(10)
        if self._temporary:
            shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
