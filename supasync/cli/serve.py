"""``supasync serve``: a ready server-sent-events endpoint for tables (issue #15).

Mirrors each ``--table`` into a store file (``--db``, or a temporary file removed on exit) with
the mirror worker, and serves it with :class:`~supasync.web.endpoint.LiveEndpoint` mounted at
``/``: ``GET /todos/rows`` and ``GET /todos/changes``. The library call behind it is
:func:`supasync.web.serve.run_serve`.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated

import typer

from .common import (
    ConfigOption,
    EnvFileOption,
    FilterOption,
    LogLevelOption,
    QuietOption,
    TablesOption,
    guarded,
    prepare,
)

__all__ = ["serve"]


@guarded
def serve(
    ctx: typer.Context,
    table: TablesOption = None,
    filter: FilterOption = None,
    identity: Annotated[
        str, typer.Option("--identity", metavar="service|user",
                          help="Whose access decides what browsers see: service (the "
                          "backend's own identity; no browser token needed) or user (each "
                          "browser's own access token; RLS decides).")
    ] = "service",
    user_ttl: Annotated[
        float, typer.Option("--user-ttl", metavar="SECONDS",
                            help="With --identity user: close a user's mirror after this "
                            "long without an open stream.")
    ] = 300.0,
    host: Annotated[str, typer.Option("--host", metavar="HOST",
                                      help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", metavar="PORT",
                                      help="Port to listen on.")] = 8000,
    db: Annotated[
        Path | None,
        typer.Option("--db", metavar="FILE",
                     help="Keep the mirror in this file (resumed on the next start); default: "
                     "a temporary file removed on exit."),
    ] = None,
    env_file: EnvFileOption = None,
    config: ConfigOption = Path("supasync.toml"),
    quiet: QuietOption = False,
    log_level: LogLevelOption = None,
) -> None:
    """Serve tables to browsers: GET /TABLE/rows and GET /TABLE/changes (server-sent events).

    Each table is mirrored into a local file and its changes are streamed with resumable ids
    (Last-Event-ID), filters (?filter=), coalescing (?coalesce_ms=) and slow-client cut-off.
    SIGINT/SIGTERM end every stream at once and exit 0.

    Example: supasync serve --table todos --port 8000
    """
    from ..client.config import load_settings
    from ..core.errors import ConfigError
    from ..core.redact import install_redaction
    from ..mirror.worker import mirror_targets
    from ..web.serve import run_serve

    if identity not in ("service", "user"):
        raise ConfigError("unknown identity", key="--identity", value=identity,
                          fix="use --identity service or --identity user")
    if identity == "user" and db is not None:
        raise ConfigError("--db is for --identity service (each user's mirror is a temporary "
                          "file of its own)", key="--db", fix="leave out --db")
    env = prepare(ctx, log_level, env_file)
    install_redaction()
    install_redaction(["uvicorn", "uvicorn.error", "uvicorn.access"])
    settings = load_settings(None, env_file=env, toml_path=config)
    targets = mirror_targets(table or (), filter, settings)

    def started(bound: int) -> None:
        if not quiet:
            names = ", ".join(t.table for t in targets)
            sys.stderr.write(f"supasync serve: {names} on http://{host}:{bound}/ "
                             f"(GET /{targets[0].table}/rows, /{targets[0].table}/changes)\n")
            sys.stderr.flush()

    try:
        code = asyncio.run(run_serve(settings, targets, db=db, host=host, port=port,
                                     quiet=quiet, identity=identity, user_ttl=user_ttl,
                                     on_started=started))
    except KeyboardInterrupt:
        code = 0
    raise typer.Exit(code)
