"""``supasync verify``: check every subscription end to end (see :mod:`supasync.verify.runner`).

The report goes to stdout: a table, or with ``--json`` one JSON object per check per line and
nothing else. Errors go to stderr. Exit codes: 0 nothing failed (warnings allowed), 1 a check
failed (a ``--probe`` that could not run counts as failed), 2 bad configuration.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..core.errors import ConfigError, FilterError, SupasyncError
from ..verify.checks import EXPIRY_WARN_SECONDS  # light: pure functions, no I/O
from .common import ConfigOption, EnvFileOption, LogLevelOption, guarded, prepare

if TYPE_CHECKING:
    from ..verify.model import SpecLike

__all__ = ["run_verify", "verify"]



def run_verify(
    *,
    tables: Sequence[str] = (),
    filter_text: str = "",
    events: str = "*",
    columns: str = "",
    repair: str = "auto",
    cursor_column: str | None = None,
    probe: bool = False,
    probe_row: str | None = None,
    timeout: float = 10.0,
    expiry_warn: float = EXPIRY_WARN_SECONDS,
    as_json: bool = False,
    env_file: Path = Path(".env"),
    toml_path: Path = Path("supasync.toml"),
    broadcast: str | None = None,
    topic: str | None = None,
    public: bool = False,
) -> int:
    """Load settings, verify the ``--table`` options (or else the subscriptions of
    supasync.toml), print the report to stdout; return the exit code. With ``broadcast``
    (a table): the checks of a Broadcast from Database subscription instead."""
    from ..client.config import load_settings
    from ..verify.render import render_json, render_table
    from ..verify.runner import adhoc_specs, probe_rows_from_json, verify

    # realtime-py logs join errors itself; the report says the same, with a fix.
    logging.getLogger("realtime").addHandler(logging.NullHandler())
    logging.getLogger("realtime").propagate = False
    try:
        settings = load_settings(env_file=env_file, toml_path=toml_path)
        if broadcast:
            from ..verify.broadcast import verify_broadcast

            report = asyncio.run(verify_broadcast(settings, broadcast, topic=topic,
                                                  private=not public, probe=probe,
                                                  timeout=timeout))
            if as_json:
                render_json(report, sys.stdout)
            else:
                render_table(report)
            return report.exit_code
        specs: Sequence[SpecLike] = (
            adhoc_specs(tables, filter_text=filter_text, events=events, columns=columns,
                        repair=repair, cursor_column=cursor_column)
            if tables else tuple(settings.subscriptions))
        if not specs:
            raise ConfigError("no subscriptions to check", fix="give --table, or declare "
                              f"[[subscription]] in {toml_path}")
        report = asyncio.run(verify(settings, specs, probe=probe, timeout=timeout,
                                    probe_rows=probe_rows_from_json(probe_row),
                                    expiry_warn=expiry_warn))
    except (ConfigError, FilterError) as exc:
        raise ConfigError(f"configuration error: {exc}") from exc
    except SupasyncError as exc:  # no usable identity: a configuration matter too
        raise ConfigError(str(exc)) from exc
    if as_json:
        render_json(report, sys.stdout)
    else:
        render_table(report)
    return report.exit_code


@guarded
def verify(
    ctx: typer.Context,
    table: Annotated[
        list[str] | None,
        typer.Option("--table", metavar="[SCHEMA.]TABLE",
                     help="Check this table instead of supasync.toml's subscriptions "
                     "(repeatable)."),
    ] = None,
    filter: Annotated[
        str, typer.Option("--filter", metavar="FILTER",
                          help="Realtime filter for --table, e.g. 'status=eq.open'.")
    ] = "",
    events: Annotated[
        str, typer.Option("--events", metavar="EVENTS",
                          help="INSERT,UPDATE,DELETE or * for --table.")
    ] = "*",
    columns: Annotated[
        str, typer.Option("--columns", metavar="COLUMNS",
                          help="Comma-separated select list for --table.")
    ] = "",
    repair: Annotated[
        str, typer.Option("--repair", metavar="MODE",
                          help="Repair mode for --table: auto, exact, cursor, diff or off.")
    ] = "auto",
    cursor_column: Annotated[
        str | None, typer.Option("--cursor-column", metavar="COLUMN",
                                 help="The cursor column for --repair cursor.")
    ] = None,
    probe: Annotated[
        bool, typer.Option("--probe", metavar="",
                           help="Write a probe row per subscription, wait for its event, delete "
                           "it; a probe that cannot run fails.")
    ] = False,
    probe_row: Annotated[
        str | None, typer.Option("--probe-row", metavar="JSON",
                                 help="""The probe row, e.g. '{"status": "open"}'.""")
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", metavar="SECONDS", help="Seconds per wait.")
    ] = 10.0,
    expiry_warn: Annotated[
        float, typer.Option("--expiry-warn", metavar="SECONDS",
                            help="Warn when a token expires within this many seconds.")
    ] = EXPIRY_WARN_SECONDS,
    json_lines: Annotated[
        bool, typer.Option("--json", metavar="",
                           help="One JSON object per check per line on stdout.")
    ] = False,
    broadcast: Annotated[
        str | None, typer.Option(
            "--broadcast", metavar="[SCHEMA.]TABLE",
            help="Instead: check a Broadcast from Database subscription of TABLE (trigger, "
                 "read access to the topic, with --probe a message arriving).")
    ] = None,
    topic: Annotated[
        str | None, typer.Option("--topic", metavar="TOPIC",
                                 help="With --broadcast: the topic (default: the table name).")
    ] = None,
    public: Annotated[
        bool, typer.Option("--public", metavar="",
                           help="With --broadcast: the topic is a public channel.")
    ] = False,
    env_file: EnvFileOption = None,
    config: ConfigOption = Path("supasync.toml"),
    log_level: LogLevelOption = None,
) -> None:
    """Check every subscription end to end: connection, token, join, `Subscribed to
    PostgreSQL`, filter, columns, publication, primary key, replica identity, RLS, channel
    count, repair mode; with --probe, a real write and its event.

    Exit 0: nothing failed (warnings allowed); 1: a check failed; 2: bad configuration.

    Example: supasync verify --table todos --events INSERT --probe --json
    """
    raise typer.Exit(run_verify(
        tables=table or (), filter_text=filter, events=events, columns=columns, repair=repair,
        cursor_column=cursor_column, probe=probe, probe_row=probe_row, timeout=timeout,
        expiry_warn=expiry_warn, as_json=json_lines,
        env_file=prepare(ctx, log_level, env_file), toml_path=config,
        broadcast=broadcast, topic=topic, public=public))

