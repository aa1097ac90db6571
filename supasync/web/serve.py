"""Running the endpoint: :func:`serve` (uvicorn with a prompt shutdown) and :func:`run_serve`,
``supasync serve`` (the mirror worker and the endpoint in one process).

Why :func:`serve` and not ``uvicorn.run``: on SIGTERM uvicorn stops accepting, then waits for
every open response to end before it runs the app's shutdown, and a server-sent-events response
does not end on its own; a server with one stream open exited only after its kill timeout
(issue #15: 26 s). :func:`serve` handles SIGINT/SIGTERM itself: it first closes the
:class:`~supasync.web.endpoint.LiveEndpoint` s (every stream gets the end of its response at
once), then lets uvicorn finish the other requests, for at most ``grace`` seconds. With your own
``uvicorn`` command, call ``await endpoint.close()`` where your server starts shutting down, or
set ``--timeout-graceful-shutdown``.

Access logs are off: a browser's ``?access_token=`` would be in every line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import ConfigError
from ..core.extras import require
from ..core.waiting import install_stop_signals, restore_signals

if TYPE_CHECKING:
    from ..client.config import Settings
    from ..mirror.worker import MirrorTarget
    from .endpoint import LiveEndpoint

__all__ = ["run_serve", "serve"]

logger = logging.getLogger("supasync.web")


async def serve(app: Any, *, host: str = "127.0.0.1", port: int = 8000,
                endpoints: Sequence[LiveEndpoint] = (), stop: asyncio.Event | None = None,
                grace: float = 5.0, log_level: str = "warning",
                on_started: Callable[[int], None] | None = None) -> None:
    """Serve the ASGI *app* until *stop* is set (or SIGINT/SIGTERM when *stop* is None).

    On stop: the *endpoints* are closed first (every stream ends at once), then the server
    finishes what else is in flight, for at most *grace* seconds. *on_started* gets the port
    listened on (useful with ``port=0``).
    """
    uvicorn = require("uvicorn", "web", "supasync.web.serve")

    class _Server(uvicorn.Server):  # type: ignore[misc,name-defined]
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield  # SIGINT/SIGTERM are handled by serve(), which closes the streams first

    own_signals = stop is None
    stop = stop or asyncio.Event()
    installed = install_stop_signals(stop) if own_signals else []
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=grace, lifespan="auto")
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    stopping = asyncio.create_task(stop.wait())
    try:
        if on_started is not None:
            while not server.started and not task.done():
                await asyncio.wait({task, stopping}, timeout=0.01,
                                   return_when=asyncio.FIRST_COMPLETED)
                if stopping.done():
                    break
            if server.started:
                on_started(server.servers[0].sockets[0].getsockname()[1])
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        for endpoint in endpoints:
            await endpoint.close()
        server.should_exit = True
        try:
            async with asyncio.timeout(grace + 1.0):
                await asyncio.shield(task)
        except TimeoutError:
            server.force_exit = True
            await task
        restore_signals(installed)
    if task.done() and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]
    if not server.started:
        raise ConfigError(f"could not listen on {host}:{port} (see the log above)",
                          key="--port", value=port, fix="choose a free port, e.g. --port 8001")


async def run_serve(settings: Settings, targets: Sequence[MirrorTarget], *,
                    db: Path | None = None, host: str = "127.0.0.1", port: int = 8000,
                    stop: asyncio.Event | None = None, quiet: bool = False,
                    identity: str = "service", user_ttl: float = 300.0,
                    on_started: Callable[[int], None] | None = None,
                    endpoint_options: dict[str, Any] | None = None) -> int:
    """``supasync serve``: serve ``/<table>/rows`` and ``/<table>/changes`` for *targets*
    until *stop* (or SIGINT/SIGTERM).

    * ``identity="service"``: one mirror of the tables with the backend's own identity into
      *db* (a temporary file removed on exit when None); browsers need no token. Returns the
      mirror worker's exit code.
    * ``identity="user"``: a mirror per signed-in user, with that user's token
      (:class:`~supasync.web.users.UserSources`, closed after *user_ttl* idle seconds);
      browsers present their access token. Returns 0.

    Raises:
        ConfigError / CacheError: bad input (before anything is served).
    """
    require("starlette", "web", "supasync serve")
    from ..mirror.worker import MirrorOptions, run_mirror
    from ..store.tables import mirror_table_name
    from .endpoint import LiveEndpoint
    from .source import StoreSource, new_store_file

    if identity not in ("service", "user"):
        raise ConfigError("unknown identity", key="identity", value=identity,
                          fix="use service or user")
    stop = stop or asyncio.Event()
    installed = install_stop_signals(stop)
    if identity == "user":
        from .users import UserSources

        users = UserSources(settings, targets, ttl=user_ttl)
        endpoint = LiveEndpoint(users=users, **(endpoint_options or {}))
        try:
            await serve(endpoint, host=host, port=port, endpoints=[endpoint], stop=stop,
                        on_started=on_started)
        finally:
            restore_signals(installed)
        return 0
    with contextlib.ExitStack() as cleanup:
        if db is None:
            tmp = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="supasync-serve-"))
            db = Path(tmp) / "serve.sqlite"
        if not db.exists():  # ids a browser kept from an earlier file must not fit this one
            new_store_file(db)
        sources: dict[str, StoreSource] = {}
        for t in targets:
            name = mirror_table_name(t.schema, t.table)
            sources[name] = StoreSource(db, name)
            cleanup.callback(sources[name].close)
        endpoint = LiveEndpoint(sources, **(endpoint_options or {}))
        # The worker commits each burst of live changes as it ends (the library's gate), and
        # the endpoint's hubs hear the commit at once (store/commits.py).
        options = MirrorOptions(db=db, quiet=quiet, progress=False, status_interval=60.0)
        mirror = asyncio.create_task(run_mirror(settings, targets, options, stop=stop,
                                                handle_signals=False))
        web = asyncio.create_task(serve(endpoint, host=host, port=port, endpoints=[endpoint],
                                        stop=stop, on_started=on_started))
        try:
            await asyncio.wait({mirror, web}, return_when=asyncio.FIRST_COMPLETED)
            stop.set()  # one ended (a signal, a failure): end the other
            await asyncio.wait({mirror, web})
        finally:
            for task in (mirror, web):
                task.cancel()
            await asyncio.gather(mirror, web, return_exceptions=True)
            restore_signals(installed)
        if web.exception() is not None and mirror.exception() is None:
            raise web.exception()  # type: ignore[misc]
        return mirror.result()
