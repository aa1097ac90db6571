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
    broadcast: bool = False,
    topic: str | None = None,
    read_role: str | None = None,
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
    if broadcast:
        return _run_broadcast(tables, topic=topic, read_role=read_role, apply=apply,
                              db_url=db_url, env_file=env_file, out=out)
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


def _db_url(db_url: str | None, env_file: Path) -> str:
    if not db_url:
        from dotenv import dotenv_values

        db_url = os.environ.get("SUPABASE_DB_URL") or dotenv_values(env_file).get(
            "SUPABASE_DB_URL")
    if not db_url:
        raise ConfigError(
            "applying the SQL needs a database connection",
            key="SUPABASE_DB_URL",
            fix="set SUPABASE_DB_URL (Supabase: Project Settings > Database > URI), or run "
            "`supasync sql` without --apply and paste the script into the SQL editor",
        )
    return db_url


def _run_broadcast(tables: Sequence[str], *, topic: str | None, read_role: str | None,
                   apply: bool, db_url: str | None, env_file: Path, out: TextIO) -> int:
    """``--broadcast``: the Broadcast from Database trigger (and policy) of one table."""
    from ..repair import broadcast_sql

    if len(tables) != 1:
        raise ConfigError("--broadcast takes exactly one table", key="TABLE",
                          value=list(tables), fix="e.g. supasync sql public.todos --broadcast")
    script = broadcast_sql.render_broadcast(tables[0], topic, read_role=read_role)
    if not apply:
        out.write(script)
        return EXIT_OK
    url = _db_url(db_url, env_file)
    psycopg = require("psycopg", "db", "supasync sql --apply needs a PostgreSQL driver")
    try:
        broadcast_sql.apply_broadcast(url, tables[0], topic, read_role=read_role)
    except psycopg.Error as exc:
        error(f"the database refused the script: {mask(str(exc).strip())}")
        return EXIT_FAILURE
    print(f"supasync sql: Broadcast from Database installed for {tables[0]} (topic "
          f"{topic or broadcast_sql.default_topic(tables[0])!r})", file=sys.stderr)
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
    broadcast: Annotated[
        bool, typer.Option(
            "--broadcast", metavar="",
            help="Instead: the Broadcast from Database trigger of TABLE (for "
                 "subscribe(..., source='broadcast')) and an example RLS policy.")
    ] = False,
    topic: Annotated[
        str | None, typer.Option("--topic", metavar="TOPIC",
                                 help="With --broadcast: the topic (default: the table name).")
    ] = None,
    read_role: Annotated[
        str | None, typer.Option(
            "--read-role", metavar="ROLE",
            help="With --broadcast: also install a policy letting ROLE read the topic.")
    ] = None,
    env_file: EnvFileOption = None,
    config: ConfigOption = Path("supasync.toml"),
    log_level: LogLevelOption = None,
) -> None:
    """Print, apply (--apply) or remove (--uninstall) the SQL of exact gap repair: a change
    log filled by triggers on the chosen tables, stamped with the writing transaction id, and
    the RPC that reads it. With --broadcast: the trigger that sends the table's changes with
    realtime.broadcast_changes, and an example policy on realtime.messages.

    Examples: supasync sql public.todos --apply;
    supasync sql public.todos --broadcast --topic todos --read-role authenticated --apply
    """
    raise typer.Exit(
        run_sql(table or (), apply=apply, uninstall=uninstall, retention=retention,
                db_url=db_url, env_file=prepare(ctx, log_level, env_file), toml_path=config,
                touch=touch, broadcast=broadcast, topic=topic, read_role=read_role)
    )
