"""A private PostgreSQL cluster for the local stack and for tests.

Contract:

* :func:`find_server_binaries` locates ``initdb`` and ``postgres`` (15 or newer): ``PATH``,
  then ``pg_config --bindir``, then ``/usr/lib/postgresql/*/bin`` (newest first), then the
  optional pip package ``pgserver``. It raises :class:`PostgresNotFound` naming every place
  it looked and how to fix it.
* :class:`Cluster` owns one data directory. ``start()`` runs ``initdb`` when the directory is
  new (``wal_level=logical``, loopback only, trust auth only for loopback TCP, no Unix
  socket), starts ``postgres`` as a direct child, waits until it accepts connections, and
  bootstraps it like a Supabase database (roles, ``auth`` schema, ``supabase_realtime``
  publication). ``stop()`` asks for a fast shutdown and waits.
* When this process runs as root the server runs as the ``postgres`` user (PostgreSQL
  refuses root). The child gets ``PR_SET_PDEATHSIG`` so that if the parent dies without
  cleaning up, the postmaster receives SIGINT (fast shutdown) instead of lingering as an
  orphan. Linux only; elsewhere ``stop()`` is the only clean-up.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import importlib.util
import os
import pwd
import re
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
    ) -> None:
        self._temporary = data_dir is None
        self._root = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="supasync-pg-"))
        self.data_dir = self._root / "pgdata"
        self.port = port or free_port()
        self.binaries = binaries
        self.extra_settings = extra_settings or {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path = self._root / "postgres.log"

    # -- addresses -------------------------------------------------------------------
    @property
    def dsn(self) -> str:
        """Superuser connection string (trust auth, loopback only)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

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
        if fresh:
            self._initdb(user)
        self._spawn(user)
        self._wait_ready(timeout)
        self._bootstrap()

    def _run_as(self, user: pwd.struct_passwd | None) -> dict[str, Any]:
        if user is None:
            return {}
        return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}

    def _initdb(self, user: pwd.struct_passwd | None) -> None:
        assert self.binaries is not None
        cmd = [
            str(self.binaries.initdb),
            "-D", str(self.data_dir),
            "-U", "postgres",
            "-A", "trust",
            "-E", "UTF8",
            "--locale=C",
            "--no-sync",
        ]
        res = subprocess.run(
            cmd, capture_output=True, text=True, cwd=self._root, **self._run_as(user)
        )
        if res.returncode != 0:
            hint = ""
            if user is not None and "Permission denied" in res.stderr:
                hint = (f" Fix: the server runs as user `{user.pw_name}`, which must be able to "
                        f"reach {self._root}; pick a directory outside private home or temp "
                        "folders (e.g. under /tmp or the project checkout).")
            raise PostgresError(f"initdb failed in {self.data_dir}: {res.stderr.strip()}{hint}")
        # Trust only loopback TCP; no Unix socket at all (see _spawn).
        (self.data_dir / "pg_hba.conf").write_text(
            "# written by supasync: loopback TCP only\n"
            "host all all 127.0.0.1/32 trust\n"
            "host all all ::1/128 trust\n"
            "host replication all 127.0.0.1/32 trust\n"
        )

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
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
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
        raise PostgresError(f"postgres did not accept connections in {timeout}s: {last}")

    def _bootstrap(self) -> None:
        with self.connect() as conn:
            conn.execute(bootstrap_sql())  # idempotent

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
