"""``supasync dev``: run the local Supabase-compatible stack in the foreground until Ctrl-C.

The stack's own parser (:func:`supasync.devstack.runner.build_parser`, also behind ``python -m
supasync.devstack``) stays the one authority on the options: this command declares the same
options for ``--help`` and hands every option it was given to that parser unchanged
(:func:`dev_argv`), so values are validated in one place. ``tests/unit/test_cli.py`` checks that
every option of the stack's parser is accepted here.

The stack's server dependencies (aiohttp, psycopg: the ``stack`` extra) are imported only when
the command runs; without them it exits 2 with the ``pip install`` line.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from .common import LogLevelOption, guarded, prepare, root_env_file

__all__ = ["dev", "dev_argv", "run_dev"]

# Parameters of the command that are not the stack's options.
_OWN = frozenset({"ctx", "log_level"})


def dev_argv(params: Mapping[str, Any]) -> list[str]:
    """The stack's argument list for the options given: ``--name value`` for each (a list
    repeats the option, ``True`` is a bare flag), nothing for ``None``/``False``/empty."""
    argv: list[str] = []
    for name, value in params.items():
        if name in _OWN or value is None or value is False:
            continue
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif isinstance(value, list | tuple):
            for item in value:
                argv += [flag, str(item)]
        else:
            argv += [flag, str(value)]
    return argv


def run_dev(argv: list[str]) -> int:
    """Run the local stack with *argv* (the stack parser's options) until SIGINT/SIGTERM.

    Raises:
        MissingExtra: the stack's server dependencies are not installed.
    """
    from ..core.extras import EXTRAS, require

    for module in EXTRAS["stack"]:
        require(module, "stack", "supasync dev needs the local stack's dependencies")
    from ..devstack.runner import run  # lazy: the client side never imports the devstack

    return run(argv)


@guarded
def dev(
    ctx: typer.Context,
    host: Annotated[
        str | None, typer.Option("--host", metavar="ADDRESS",
                                 help="Address to bind (default 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", metavar="PORT",
                                 help="Port (default 54321; 0 = any free).")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", metavar="DIR",
                                  help="Keep the database, secret and keys here.")
    ] = None,
    env_file: Annotated[
        Path | None,
        typer.Option("--env-file", metavar="FILE",
                     help="Write the SUPABASE_* variables to this file (the one the other "
                     "commands read). Before or after the command."),
    ] = None,
    sql: Annotated[
        list[Path] | None, typer.Option("--sql", metavar="FILE",
                                        help="SQL file to run after start (repeatable).")
    ] = None,
    jwt_expiry: Annotated[
        int | None, typer.Option("--jwt-expiry", metavar="SECONDS",
                                 help="Access-token lifetime (default 3600).")
    ] = None,
    max_record_bytes: Annotated[
        int | None, typer.Option("--max-record-bytes", metavar="BYTES",
                                 help="Largest record sent whole (default 1 MiB).")
    ] = None,
    max_rows: Annotated[
        int | None, typer.Option("--max-rows", metavar="N",
                                 help="Cap every REST read at N rows, like Supabase's 'Max "
                                 "rows' (1000 there by default; default here: no cap).")
    ] = None,
    real_backoffs: Annotated[
        bool, typer.Option("--real-backoffs", metavar="",
                           help="Sleep 2 s before refusing a connect and 5 s before a join "
                           "error, like the real server.")
    ] = False,
    max_events_per_second: Annotated[
        int | None, typer.Option(
            "--max-events-per-second", metavar="N",
            help="Tenant limit on broadcast events (60 s average), like Supabase's (100 there "
                 "by default; default here: none). Over it, receiving channels are closed "
                 "with 'Too many messages per second'.")
    ] = None,
    max_joins_per_second: Annotated[
        int | None, typer.Option(
            "--max-joins-per-second", metavar="N",
            help="Tenant limit on joins (60 s average; Supabase: 100; default here: none).")
    ] = None,
    durable: Annotated[
        bool, typer.Option("--durable", metavar="",
                           help="Keep PostgreSQL crash-safe (fsync on); by default the stack "
                           "runs with fsync off: fast, not crash-safe.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", metavar="", help="Do not print the environment.")
    ] = False,
    ready_file: Annotated[
        Path | None, typer.Option("--ready-file", metavar="FILE", hidden=True)
    ] = None,
    log_level: LogLevelOption = None,
) -> None:
    """Run a local Supabase-compatible stack (PostgreSQL, Realtime, REST, Auth) until Ctrl-C.

    Prints the SUPABASE_* environment on stdout once it accepts connections.

    Example: supasync dev --env-file .env
    """
    prepare(ctx, log_level, None)
    params = dict(ctx.params)
    params["env_file"] = env_file or root_env_file(ctx)
    raise typer.Exit(run_dev(dev_argv(params)))
