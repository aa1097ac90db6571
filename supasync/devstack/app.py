"""One HTTP port for the whole local stack, like Supabase's API gateway.

Routes:

* ``/realtime/v1/websocket`` and ``/socket/websocket``: the Realtime server
  (:mod:`supasync.devstack.realtime`); ``/realtime/v1/api/broadcast...``: its REST broadcast.
* ``/rest/v1/...``: the PostgREST subset (:mod:`supasync.devstack.rest`).
* ``/auth/v1/...``: the auth subset (:mod:`supasync.devstack.auth`).
* ``/_dev/...``: fault controls, service-role key required (``apikey`` header or
  ``Authorization: Bearer``).

:class:`Stack` starts PostgreSQL and the servers and stops them in order. It is the object
the ``supasync dev`` command, the pytest plugin and the tests drive.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from pathlib import Path
from typing import Any

from aiohttp import web

from .context import StackConfig, StackContext
from .keys import StackKeys, TokenError, verify
from .postgres import Cluster, free_port

log = logging.getLogger("supasync.devstack")


def _bearer(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("apikey") or request.query.get("apikey")


class Stack:
    """PostgreSQL plus the HTTP/websocket servers on one port."""

    def __init__(self, config: StackConfig | None = None) -> None:
        self.config = config or StackConfig()
        data_dir = self.config.data_dir
        self.cluster = Cluster(
            data_dir / "db" if data_dir else None,
            port=_kept_db_port(data_dir) if data_dir else None,
            durable=self.config.durable,
        )
        if data_dir:
            self.keys = StackKeys.load_or_create(data_dir / "keys.json")
        else:
            self.keys = StackKeys.generate(self.config.jwt_secret)
        self.ctx = StackContext(self.config, self.keys, self.cluster)
        self._runner: web.AppRunner | None = None
        self.realtime: Any = None
        self.rest: Any = None
        self.auth: Any = None

    # -- addresses -------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.config.port}"

    def env(self) -> dict[str, str]:
        """The variables every supasync command reads (design.md §4)."""
        return {
            "SUPABASE_URL": self.url,
            "SUPABASE_ANON_KEY": self.keys.anon_key,
            "SUPABASE_SERVICE_ROLE_KEY": self.keys.service_role_key,
            "SUPABASE_JWT_SECRET": self.keys.jwt_secret,
            "SUPABASE_DB_URL": self.cluster.dsn,
        }

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        await asyncio.to_thread(self.cluster.start)
        for sql_file in self.config.sql_files:
            await asyncio.to_thread(self._run_sql_file, sql_file)
        app = web.Application(client_max_size=8 * 1024 * 1024)
        await self._mount(app)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port, reuse_address=True)
        await site.start()
        if self.config.port == 0:  # resolve the port the OS picked
            server = site._server
            sockets = getattr(server, "sockets", None)
            assert sockets
            self.config.port = int(sockets[0].getsockname()[1])
        log.info("local stack listening on %s", self.url)

    def _run_sql_file(self, path: Path) -> None:
        with self.cluster.connect() as conn:
            conn.execute(path.read_text().encode())

    async def _mount(self, app: web.Application) -> None:
        # Imported here so that a broken optional part names itself at start-up.
        from .realtime.server import RealtimeServer

        self.realtime = RealtimeServer(self.ctx)
        self.realtime.add_routes(app)
        await self.realtime.start()
        try:
            from .rest import RestServer

            self.rest = RestServer(self.ctx)
            self.rest.add_routes(app)
            await self.rest.start()
        except ImportError:  # pragma: no cover - during development only
            log.debug("REST subset not available")
        try:
            from .auth import AuthServer

            self.auth = AuthServer(self.ctx)
            self.auth.add_routes(app)
            await self.auth.start()
        except ImportError:  # pragma: no cover
            log.debug("auth subset not available")
        app.router.add_post("/_dev/{action}", self._dev_control)
        app.router.add_get("/_dev/health", self._health)

    async def stop(self) -> None:
        for part in (self.realtime, self.rest, self.auth):
            if part is not None:
                await part.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await asyncio.to_thread(self.cluster.stop)

    async def __aenter__(self) -> Stack:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- fault controls ----------------------------------------------------------------
    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _dev_control(self, request: web.Request) -> web.Response:
        token = _bearer(request)
        try:
            claims = verify(token, self.keys.jwt_secret)
        except TokenError as exc:
            return web.json_response({"error": exc.text}, status=401)
        if claims.get("role") != "service_role":
            return web.json_response({"error": "the service-role key is required"}, status=403)
        action = request.match_info["action"]
        body: dict[str, Any] = {}
        if request.can_read_body:
            try:
                body = await request.json()
            except ValueError:
                return web.json_response({"error": "body must be JSON"}, status=400)
        try:
            result = await self.fault(action, **body)
        except KeyError:
            return web.json_response({"error": f"unknown control {action!r}"}, status=404)
        except (TypeError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"ok": True, **(result or {})})

    async def fault(self, action: str, **kwargs: Any) -> dict[str, Any] | None:
        """Run a fault control by name (the same names as the ``/_dev/`` routes)."""
        rt = self.realtime
        controls = {
            "drop-connections": rt.drop_connections,
            "close-connections": rt.close_connections,
            "pause-changes": rt.pause_changes,
            "resume-changes": rt.resume_changes,
            "expire-tokens": rt.expire_tokens,
            "set-latency": rt.set_latency,
        }
        result: dict[str, Any] | None = await controls[action](**kwargs)
        return result


def _kept_db_port(data_dir: Path) -> int:
    """The database port of a stack kept in ``data_dir``: the one it used before when that is
    free again, so ``SUPABASE_DB_URL`` stays valid across restarts; else a new one, saved."""
    path = data_dir / "db-port"
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        port = int(path.read_text())
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            # As PostgreSQL binds: connections the old server closed leave the port in
            # TIME_WAIT, which must not count as taken.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
        return port
    except (OSError, ValueError):
        port = free_port()
        path.write_text(str(port))
        return port


def write_env_file(path: Path, env: dict[str, str]) -> None:
    """Write ``KEY=value`` lines readable by python-dotenv and shells; mode 0600 from the start
    (the file holds the keys and the database password)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
    with os.fdopen(fd, "w") as f:
        f.write("".join(f"{k}={v}\n" for k, v in env.items()))
