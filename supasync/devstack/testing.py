"""Drive a local stack from Python: in a child process, with its fault controls.

:class:`StackProcess` starts ``python -m supasync.devstack`` on a free (or given) port and
waits until it is ready; ``restart()`` stops and starts it on the same port and data
directory, as a real outage would. The fault controls are the ``/_dev/`` HTTP routes, so they
work on any running stack, including one started with ``supasync dev``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

from .keys import sign
from .postgres import free_port


class StackNotReady(RuntimeError):
    """The stack process exited or did not become ready in time."""


class DevControl:
    """The ``/_dev/`` fault controls of a stack at ``url``."""

    def __init__(self, url: str, service_role_key: str) -> None:
        self.url = url.rstrip("/")
        self._key = service_role_key

    def _post(self, action: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        r = httpx.post(
            f"{self.url}/_dev/{action}",
            json=body or {},
            headers={"apikey": self._key, "Authorization": f"Bearer {self._key}"},
            timeout=30,
        )
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        return data

    def drop_connections(self, sub: str | None = None) -> dict[str, Any]:
        """Abruptly close every websocket (no close frame); with ``sub``, only those with a
        channel whose token has that ``sub`` claim."""
        return self._post("drop-connections", {"sub": sub} if sub is not None else None)

    def close_connections(self) -> dict[str, Any]:
        """Cleanly close every websocket."""
        return self._post("close-connections")

    def pause_changes(self) -> dict[str, Any]:
        """Hold changes in the replication slot until :meth:`resume_changes`."""
        return self._post("pause-changes")

    def resume_changes(self) -> dict[str, Any]:
        return self._post("resume-changes")

    def expire_tokens(self) -> dict[str, Any]:
        """Every joined channel's token counts as expired now."""
        return self._post("expire-tokens")

    def set_latency(self, ms: int) -> dict[str, Any]:
        """Delay every outgoing websocket frame by ``ms`` milliseconds."""
        return self._post("set-latency", {"ms": ms})


class StackProcess(DevControl):
    """A local stack in a child process."""

    def __init__(
        self,
        *,
        port: int | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        jwt_expiry: int = 3600,
        extra_args: list[str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self._own_dir = data_dir is None
        self.data_dir = (
            Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="supasync-stack-"))
        )
        if self._own_dir:
            # mkdtemp makes the directory 0700; when we are root the database runs as the
            # `postgres` user, which must be able to reach <data_dir>/db.
            os.chmod(self.data_dir, 0o755)
        self.jwt_expiry = jwt_expiry
        self.extra_args = extra_args or []
        self.env: dict[str, str] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._ready_file = self.data_dir / "ready.json"
        self._log_file = self.data_dir / "stack.log"
        super().__init__(f"http://127.0.0.1:{self.port}", "")

    # -- environment -------------------------------------------------------------------
    @property
    def anon_key(self) -> str:
        return self.env["SUPABASE_ANON_KEY"]

    @property
    def service_role_key(self) -> str:
        return self.env["SUPABASE_SERVICE_ROLE_KEY"]

    @property
    def jwt_secret(self) -> str:
        return self.env["SUPABASE_JWT_SECRET"]

    @property
    def db_url(self) -> str:
        return self.env["SUPABASE_DB_URL"]

    @property
    def realtime_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/realtime/v1"

    # -- lifecycle ---------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> StackProcess:
        if self._proc is not None and self._proc.poll() is None:
            return self
        self._ready_file.unlink(missing_ok=True)
        cmd = [
            sys.executable, "-m", "supasync.devstack",
            "--port", str(self.port),
            "--data-dir", str(self.data_dir),
            "--jwt-expiry", str(self.jwt_expiry),
            "--ready-file", str(self._ready_file),
            "--quiet",
            *self.extra_args,
        ]
        log = open(self._log_file, "ab")
        try:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while not self._ready_file.exists():
            if self._proc.poll() is not None:
                raise StackNotReady(f"stack exited with {self._proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise StackNotReady(f"stack not ready after {timeout}s: {self.log_tail()}")
            time.sleep(0.02)  # waiting for the child's ready file, bounded by the deadline
        self.env = json.loads(self._ready_file.read_text())
        self._key = self.service_role_key
        return self

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self._log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 30.0) -> None:
        """Stop cleanly (SIGTERM), keeping the data directory."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def kill(self) -> None:
        """Kill the stack process abruptly; its PostgreSQL follows (parent-death signal)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def restart(self, timeout: float = 60.0) -> StackProcess:
        self.stop()
        return self.start(timeout)

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> StackProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers -------------------------------------------------------------------------
    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Run SQL as the superuser; returns the rows of the last statement (or [])."""
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def mint(self, claims: dict[str, Any], *, expires_in: float = 3600) -> str:
        """A JWT signed with the stack's secret (``exp``/``iat`` added unless given)."""
        now = int(time.time())
        return sign({"iat": now, "exp": now + int(expires_in), **claims}, self.jwt_secret)

    def create_user(self, email: str, password: str) -> dict[str, Any]:
        """Create a confirmed user through the auth admin endpoint; returns the user."""
        r = httpx.post(
            f"{self.url}/auth/v1/admin/users",
            json={"email": email, "password": password, "email_confirm": True},
            headers={"apikey": self.service_role_key,
                     "Authorization": f"Bearer {self.service_role_key}"},
            timeout=30,
        )
        r.raise_for_status()
        user: dict[str, Any] = r.json()
        return user

    def sign_in(self, email: str, password: str) -> dict[str, Any]:
        """A password sign-in; returns the session (access_token, refresh_token, ...)."""
        r = httpx.post(
            f"{self.url}/auth/v1/token?grant_type=password",
            json={"email": email, "password": password},
            headers={"apikey": self.anon_key},
            timeout=30,
        )
        r.raise_for_status()
        session: dict[str, Any] = r.json()
        return session
