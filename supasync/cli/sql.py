"""``supasync sql``: print, apply or remove the SQL of exact gap repair.

The script goes to stdout (to review or put in a migration); ``--apply``/``--uninstall`` say what
they did on stderr. Applying needs a PostgreSQL driver (``pip install 'supasync[db]'``); printing
does not.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, TextIO

import typer

from ..core.errors import ConfigError
from ..core.extras import require
from ..core.redact import mask
from .common import (
    EXIT_FAILURE,
    EXIT_OK,
    ConfigOption,
    EnvFileOption,
    LogLevelOption,
    error,
    guarded,
    prepare,
)

__all__ = ["run_sql", "sql"]


def run_sql(
    tables: Sequence[str],
    *,
    apply: bool,
    uninstall: bool,
    retention: str,
    db_url: str | None,
    env_file: Path,
    toml_path: Path,
    touch: str | None = None,
    out: TextIO | None = None,
) -> int:
    """Print, apply or remove the exact-mode SQL. Tables default to the subscriptions of
    supasync.toml; the database URL to ``SUPABASE_DB_URL``. *touch* also installs the trigger
    that sets that timestamp column on every write (a cursor ``repair="auto"`` may trust).
    Returns the exit code (1: the database refused the script).

    Raises:
        ConfigError: no tables, a bad retention, no database URL, or a table that does not
            exist or has no primary key (named, with the fix).
        MissingExtra: applying without the PostgreSQL driver installed.
    """
    from ..repair import sqlinstall

    out = out or sys.stdout
    if not tables and not uninstall:
        from ..client.config import load_settings

        settings = load_settings(env_file=env_file, toml_path=toml_path)
        tables = [f"{s.schema}.{s.table}" for s in settings.subscriptions]
        db_url = db_url or settings.db_url
    script = (sqlinstall.uninstall_sql() if uninstall
              else sqlinstall.render(tables, retention, touch=touch))
    if not (apply or uninstall):
        out.write(script)
        return EXIT_OK
    if not db_url:
        from dotenv import dotenv_values

        db_url = os.environ.get("SUPABASE_DB_URL") or dotenv_values(env_file).get(
            "SUPABASE_DB_URL"
        )
    if not db_url:
        raise ConfigError(
            "applying the SQL needs a database connection",
            key="SUPABASE_DB_URL",
            fix="set SUPABASE_DB_URL (Supabase: Project Settings > Database > URI), or run "
            "`supasync sql` without --apply and paste the script into the SQL editor",
        )
    psycopg = require("psycopg", "db", "supasync sql --apply needs a PostgreSQL driver")
    try:
        if uninstall:
            sqlinstall.uninstall(db_url)
            print("supasync sql: exact mode removed", file=sys.stderr)
        else:
            sqlinstall.apply(db_url, tables, retention, touch=touch)
            touched = f" (and the {touch} trigger)" if touch else ""
            print(f"supasync sql: exact mode installed for {', '.join(tables)}{touched}",
                  file=sys.stderr)
    except psycopg.Error as exc:
        error(f"the database refused the script: {mask(str(exc).strip())}")
        return EXIT_FAILURE
    return EXIT_OK


@guarded
def sql(
    ctx: typer.Context,
    table: Annotated[
        list[str] | None,
        typer.Argument(metavar="TABLE",
                       help="Tables to log ([SCHEMA.]TABLE); default: those of supasync.toml.",
                       show_default=False),
    ] = None,
    apply: Annotated[
        bool, typer.Option("--apply", metavar="",
                           help="Run it against SUPABASE_DB_URL (idempotent).")
    ] = False,
    uninstall: Annotated[
        bool, typer.Option("--uninstall", metavar="",
                           help="Remove supasync's SQL (with --apply or alone).")
    ] = False,
    retention: Annotated[
        str, typer.Option("--retention", metavar="INTERVAL",
                          help="How long change-log entries are kept (PostgreSQL interval).")
    ] = "7 days",
    db_url: Annotated[
        str | None, typer.Option("--db-url", metavar="URL",
                                 help="Database URL (default SUPABASE_DB_URL).")
    ] = None,
    touch: Annotated[
        str | None, typer.Option(
            "--touch", metavar="COLUMN",
            help="Also install a trigger that sets this timestamp column on every write, so "
                 "repair=auto may use it as a cursor.")
    ] = None,
    env_file: EnvFileOption = None,
    config: ConfigOption = Path("supasync.toml"),
    log_level: LogLevelOption = None,
) -> None:
    """Print, apply (--apply) or remove (--uninstall) the SQL of exact gap repair: a change
    log filled by triggers on the chosen tables, stamped with the writing transaction id, and
    the RPC that reads it.

    Example: supasync sql public.todos --apply
    """
    raise typer.Exit(
        run_sql(table or (), apply=apply, uninstall=uninstall, retention=retention,
                db_url=db_url, env_file=prepare(ctx, log_level, env_file), toml_path=config,
                touch=touch)
    )
