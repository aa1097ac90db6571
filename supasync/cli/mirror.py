"""``supasync mirror``: keep a local SQLite mirror of tables up to date, through anything.

The options are parsed here; the worker is :func:`supasync.mirror.worker.run_mirror_cli`.
``--json`` records go to stdout, one JSON object per line; status lines, the progress bar, logs
and errors go to stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from .common import (
    ConfigOption,
    EnvFileOption,
    FilterOption,
    LogLevelOption,
    MetricsPortOption,
    QuietOption,
    RepairOption,
    TablesOption,
    guarded,
    prepare,
)

__all__ = ["mirror"]


@guarded
def mirror(
    ctx: typer.Context,
    table: TablesOption = None,
    filter: FilterOption = None,
    db: Annotated[
        Path | None,
        typer.Option("--db", metavar="FILE",
                     help="The mirror file (default: mirror.db in supasync.toml, else "
                     "mirror.sqlite)."),
    ] = None,
    once: Annotated[
        bool, typer.Option("--once", metavar="", help="Snapshot or repair, then exit (for cron).")
    ] = False,
    json_lines: Annotated[
        bool, typer.Option("--json", metavar="",
                           help="JSON records on stdout, one per line (status, progress, "
                           "repairs, errors); logs as JSON lines on stderr.")
    ] = False,
    metrics_port: MetricsPortOption = None,
    repair: RepairOption = None,
    env_file: EnvFileOption = None,
    config: ConfigOption = Path("supasync.toml"),
    quiet: QuietOption = False,
    log_level: LogLevelOption = None,
) -> None:
    """Keep a local SQLite mirror of tables up to date, through anything.

    Mirrors the --table options, or else every subscription in supasync.toml. The first run
    snapshots; later runs resume. SIGINT/SIGTERM commit the current batch and exit 0. Exit 1:
    runtime failure; 2: bad input (configuration, unknown table, no primary key, unusable file).

    Example: supasync mirror --table public.todos --db mirror.sqlite
    """
    from ..mirror.worker import run_mirror_cli  # lazy: the mirror pulls in the client side

    raise typer.Exit(
        run_mirror_cli(
            tables=table or (),
            filter_text=filter,
            db=db,
            once=once,
            json_logs=json_lines,
            metrics_port=metrics_port,
            repair=repair,
            env_file=prepare(ctx, log_level, env_file),
            toml_path=config,
            quiet=quiet,
            out=sys.stdout,
            err=sys.stderr,
        )
    )
