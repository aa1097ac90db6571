"""The ``supasync`` command line: ``dev``, ``tail``, ``mirror``, ``verify`` and ``sql``.

Each command parses its options and calls one library function (``run_<command>``, which returns
an exit code), so the logic stays testable without a terminal. Exit codes: 0 success (``tail``
also exits 0 on SIGINT/SIGTERM), 1 runtime failure (sign-in refused, server unreachable), 2 bad
configuration or usage (the message says which setting and how to fix it).

This is the one module that joins the client side and the local stack: ``supasync dev`` imports
:mod:`supasync.devstack` lazily, inside the command, so nothing else pays for it.

Logging goes to stderr at ``--log-level`` (or ``SUPASYNC_LOG_LEVEL``), always through the
redacting filter (:mod:`supasync.core.redact`): tokens, keys and passwords never reach the terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as _dt
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import typer

from ..core.errors import ConfigError, FilterError, SupasyncError
from ..core.redact import install_redaction, mask

if TYPE_CHECKING:
    from ..client.config import Settings
    from ..core.changes import Change
    from ..core.filters import Filter

__all__ = ["TailTarget", "app", "format_change", "main", "parse_table", "run_dev", "run_tail"]

log = logging.getLogger(__name__)

app = typer.Typer(
    name="supasync",
    help="Dependable Supabase Realtime for Python backends.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

# Options several commands share, declared once.
EnvFileOption = Annotated[Path, typer.Option(help="Read SUPABASE_* from this file.")]
ConfigOption = Annotated[
    Path,
    typer.Option("--config", help="supasync.toml declaring the subscriptions and the mirror file."),
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No status lines on stderr.")]


def _error(message: str) -> None:
    """Print an error to stderr (rich if available, masked in any case)."""
    from rich.console import Console

    Console(stderr=True, highlight=False, soft_wrap=True).print(
        f"[bold red]error:[/bold red] {_escape(mask(message))}"
    )


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


@app.callback()
def _root(
    log_level: Annotated[
        str,
        typer.Option(
            "--log-level",
            envvar="SUPASYNC_LOG_LEVEL",
            help="Logging level on stderr: DEBUG, INFO, WARNING, ERROR.",
        ),
    ] = "WARNING",
) -> None:
    """supasync: supervised Realtime subscriptions, token lifecycle, cache and gap repair."""
    level = logging.getLevelName(log_level.upper())
    if not isinstance(level, int):
        _error(f"--log-level {log_level!r}: use DEBUG, INFO, WARNING or ERROR")
        raise typer.Exit(EXIT_CONFIG)
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    install_redaction()


# --------------------------------------------------------------------------- dev


def dev_argv(
    *,
    host: str | None = None,
    port: int | None = None,
    data_dir: Path | None = None,
    env_file: Path | None = None,
    sql: Sequence[Path] = (),
    jwt_expiry: int | None = None,
    max_record_bytes: int | None = None,
    real_backoffs: bool = False,
) -> list[str]:
    """The argument list for :func:`supasync.devstack.runner.run` (only options given)."""
    argv: list[str] = []
    for flag, value in (
        ("--host", host),
        ("--port", port),
        ("--data-dir", data_dir),
        ("--env-file", env_file),
        ("--jwt-expiry", jwt_expiry),
        ("--max-record-bytes", max_record_bytes),
    ):
        if value is not None:
            argv += [flag, str(value)]
    for path in sql:
        argv += ["--sql", str(path)]
    if real_backoffs:
        argv.append("--real-backoffs")
    return argv


def run_dev(argv: list[str]) -> int:
    """Run the local stack in the foreground until SIGINT/SIGTERM."""
    from ..devstack.runner import run  # lazy: the client side never imports the devstack

    return run(argv)


@app.command()
def dev(
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 54321; 0 = any free).")] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Keep the database, secret and keys here.")
    ] = None,
    env_file: Annotated[
        Path | None, typer.Option(help="Write the SUPABASE_* variables to this file (.env).")
    ] = None,
    sql: Annotated[
        list[Path] | None, typer.Option(help="SQL file to run after start (repeatable).")
    ] = None,
    jwt_expiry: Annotated[
        int | None, typer.Option(help="Access-token lifetime in seconds (default 3600).")
    ] = None,
    max_record_bytes: Annotated[
        int | None, typer.Option(help="Largest record sent whole (default 1 MiB).")
    ] = None,
    real_backoffs: Annotated[
        bool, typer.Option(help="Sleep before refusing connects/joins, like the real server.")
    ] = False,
) -> None:
    """Run a local Supabase-compatible stack (PostgreSQL, Realtime, REST, Auth) until Ctrl-C.

    Example: supasync dev --env-file .env
    """
    argv = dev_argv(
        host=host,
        port=port,
        data_dir=data_dir,
        env_file=env_file,
        sql=sql or (),
        jwt_expiry=jwt_expiry,
        max_record_bytes=max_record_bytes,
        real_backoffs=real_backoffs,
    )
    raise typer.Exit(run_dev(argv))


# --------------------------------------------------------------------------- tail


@dataclass(frozen=True)
class TailTarget:
    """One table to tail: what ``client.subscribe`` gets."""

    schema: str
    table: str
    events: tuple[str, ...] | str = "*"
    filter: str | Filter | None = None


def parse_table(text: str) -> tuple[str, str]:
    """``schema.table`` or ``table`` (schema ``public``); raises ConfigError when malformed."""
    parts = text.strip().split(".")
    if len(parts) == 1 and parts[0]:
        return "public", parts[0]
    if len(parts) == 2 and all(parts):
        return parts[0], parts[1]
    raise ConfigError(
        "expected TABLE or SCHEMA.TABLE", key="--table", value=text, fix="e.g. --table todos"
    )


def parse_events(values: Sequence[str]) -> tuple[str, ...] | str:
    """``--events`` values (repeatable, comma-separated) to a tuple, or ``"*"``."""
    events: list[str] = []
    for value in values:
        for part in value.split(","):
            part = part.strip().upper()
            if not part:
                continue
            if part == "*":
                return "*"
            if part not in ("INSERT", "UPDATE", "DELETE"):
                raise ConfigError(
                    "unknown event", key="--events", value=part,
                    fix="use INSERT, UPDATE, DELETE or *",
                )
            if part not in events:
                events.append(part)
    return tuple(events) if events else "*"


def tail_targets(
    tables: Sequence[str], filter_text: str | None, events: Sequence[str]
) -> list[TailTarget]:
    """The ``--table`` options (with ``--filter``/``--events``) as targets; ``[]`` when no
    ``--table`` was given (then the subscriptions configured in ``supasync.toml`` are tailed).
    Raises ConfigError / FilterError for bad options."""
    if not tables:
        if filter_text or events:
            raise ConfigError("--filter and --events need --table", fix="add --table TABLE")
        return []
    parsed_events = parse_events(events)
    if filter_text:
        from ..core.filters import parse_filter

        parse_filter(filter_text)  # fail early, with a caret, before connecting
    targets = []
    for text in tables:
        schema, table = parse_table(text)
        targets.append(TailTarget(schema, table, parsed_events, filter_text or None))
    return targets


def format_change(change: Change, *, as_json: bool) -> str:
    """One line for a change: compact JSON (``Change.to_dict()``) or a readable summary."""
    data = change.to_dict()
    if as_json:
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=str)
    ts = data.get("commit_timestamp") or _dt.datetime.now(_dt.UTC).isoformat()
    key = ",".join(f"{c}={v}" for c, v in zip(data["pk_columns"], data["pk"], strict=False))
    row = data["new"] if data["new"] is not None else data["old"]
    body = json.dumps(row, separators=(",", ":"), ensure_ascii=False, default=str)
    flags = " (partial)" if data["partial"] else ""
    origin = "" if data["origin"] == "live" else f" [{data['origin']}]"
    where = f"{data['schema']}.{data['table']}"
    return f"{ts} {data['op']:<6} {where} {key or '-'}{origin}{flags} {body}"


async def tail_async(
    settings: Settings,
    targets: Sequence[TailTarget],
    *,
    as_json: bool,
    out: TextIO,
    status: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
    cache: Path | None = None,
    snapshot: bool = False,
    repair: str = "auto",
) -> int:
    """Subscribe to ``targets`` and write one line per change to ``out`` until ``stop`` is set
    or SIGINT/SIGTERM arrives (exit code 0). If every subscription is rejected for good (table
    not published, bad filter, unauthorised), the reasons are reported and the code is 1.

    Gaps are repaired (``repair``): changes missed while the socket was down are printed like
    live ones, with their origin ``replay``. With ``cache`` the rows and cursor are kept in that
    file, so a restarted tail prints what it missed while it was not running. The rows present
    at the first join (origin ``snapshot``) are printed only with ``snapshot=True``.

    Raises:
        ConfigError: nothing to tail.
        AuthError: the first token could not be had (bad credentials, auth unreachable).
    """
    from ..client.realtime import Realtime
    from ..core.status import GapRepaired, StateChanged, StatusEvent, SubscriptionFailed

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)

    async def write(change: Change) -> None:
        # async: runs on the loop, so lines from several subscriptions never interleave
        if change.origin == "snapshot" and not snapshot:
            return
        out.write(format_change(change, as_json=as_json) + "\n")
        out.flush()

    try:
        if targets:
            # --table replaces the configured subscriptions
            if dataclasses.is_dataclass(settings) and not isinstance(settings, type):
                settings = dataclasses.replace(settings, subscriptions=())
            client = Realtime.from_settings(settings, cache=cache, repair=repair)
            for target in targets:
                kwargs: dict[str, Any] = {"schema": target.schema, "events": target.events}
                if target.filter is not None:
                    kwargs["filter"] = target.filter
                client.subscribe(target.table, **kwargs)
        else:
            client = Realtime.from_settings(settings, cache=cache, repair=repair)
        if not client.subscriptions:
            raise ConfigError(
                "nothing to tail: no --table given and no subscriptions in supasync.toml",
                fix="run `supasync tail --table todos`, or declare [[subscription]] tables in "
                "supasync.toml",
            )
        for sub in client.subscriptions:
            sub.on(write)
        names = {sub.name for sub in client.subscriptions}
        failed: dict[str, str] = {}
        say = status or (lambda text: None)

        repaired: set[str] = set()

        def report(event: StatusEvent) -> None:
            # With repair on, "live" is said once every subscription is caught up (its first
            # repair done): changes from then on print as live ones.
            if isinstance(event, GapRepaired):
                first = not names <= repaired
                repaired.add(event.subscription)
                if first and names <= repaired and client.status.state.value == "live":
                    say("live")
            elif isinstance(event, StateChanged):
                if event.state.value != "live" or repair == "off" or names <= repaired:
                    say(event.state.value)
            elif isinstance(event, SubscriptionFailed):
                failed[event.subscription] = str(event.error)
                say(f"{event.subscription} failed: {event.error}")
                if names <= failed.keys():
                    stop.set()  # nothing left to tail

        client.status.subscribe(report)
        async with client:
            await stop.wait()
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
    if failed and names <= failed.keys():
        _error("every subscription was rejected: " + "; ".join(failed.values()))
        return EXIT_FAILURE
    return EXIT_OK


def run_tail(
    *,
    tables: Sequence[str] = (),
    filter_text: str | None = None,
    events: Sequence[str] = (),
    as_json: bool = False,
    env_file: Path = Path(".env"),
    toml_path: Path = Path("supasync.toml"),
    quiet: bool = False,
    out: TextIO | None = None,
    cache: Path | None = None,
    snapshot: bool = False,
    repair: str = "auto",
) -> int:
    """Load settings, then tail (see :func:`tail_async`). Returns the exit code."""
    from ..client.config import load_settings

    try:
        settings = load_settings(env_file=env_file, toml_path=toml_path)
        targets = tail_targets(tables, filter_text, events)
    except (ConfigError, FilterError) as exc:
        _error(str(exc))
        return EXIT_CONFIG

    def status(state: str) -> None:
        if not quiet:
            print(f"supasync tail: {state}", file=sys.stderr, flush=True)

    try:
        return asyncio.run(
            tail_async(settings, targets, as_json=as_json, out=out or sys.stdout, status=status,
                       cache=cache, snapshot=snapshot, repair=repair)
        )
    except (ConfigError, FilterError) as exc:
        _error(str(exc))
        return EXIT_CONFIG
    except SupasyncError as exc:
        _error(str(exc))
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK


@app.command()
def tail(
    table: Annotated[
        list[str] | None,
        typer.Option("--table", "-t", help="TABLE or SCHEMA.TABLE to tail (repeatable)."),
    ] = None,
    filter: Annotated[
        str | None, typer.Option("--filter", "-f", help="Realtime filter, e.g. status=eq.open")
    ] = None,
    events: Annotated[
        list[str] | None,
        typer.Option("--events", "-e", help="INSERT, UPDATE, DELETE or * (comma-separated)."),
    ] = None,
    json_lines: Annotated[
        bool, typer.Option("--json", help="One JSON object per line (Change.to_dict()).")
    ] = False,
    env_file: EnvFileOption = Path(".env"),
    config: ConfigOption = Path("supasync.toml"),
    quiet: QuietOption = False,
    cache: Annotated[
        Path | None,
        typer.Option("--cache", help="Keep rows and cursor in this SQLite file: a restarted "
                     "tail prints what it missed."),
    ] = None,
    snapshot: Annotated[
        bool, typer.Option("--snapshot", help="Also print the rows present at the first join.")
    ] = False,
    repair: Annotated[
        str, typer.Option("--repair", help="Gap repair: auto, exact, cursor, diff or off.")
    ] = "auto",
) -> None:
    """Print changes as they happen, one per line, until Ctrl-C.

    Tails the --table options, or else every subscription in supasync.toml. Changes missed
    during a disconnect are repaired and printed with origin "replay".

    Example: supasync tail --json --table todos --events INSERT
    """
    raise typer.Exit(
        run_tail(
            tables=table or (),
            filter_text=filter,
            events=events or (),
            as_json=json_lines,
            env_file=env_file,
            toml_path=config,
            quiet=quiet,
            cache=cache,
            snapshot=snapshot,
            repair=repair,
        )
    )


# --------------------------------------------------------------------------- mirror, verify, sql


@app.command()
def mirror(
    table: Annotated[
        list[str] | None,
        typer.Option("--table", "-t", help="TABLE or SCHEMA.TABLE to mirror (repeatable)."),
    ] = None,
    filter: Annotated[
        str | None, typer.Option("--filter", "-f", help="Realtime filter, e.g. done=eq.false")
    ] = None,
    db: Annotated[
        Path | None,
        typer.Option(
            "--db", help="The mirror file (default: mirror.db in supasync.toml, else "
            "mirror.sqlite)."
        ),
    ] = None,
    once: Annotated[
        bool, typer.Option("--once", help="Snapshot or repair, then exit (for cron).")
    ] = False,
    json_lines: Annotated[
        bool, typer.Option("--json", help="Structured logs: one JSON object per line.")
    ] = False,
    metrics_port: Annotated[
        int | None, typer.Option("--metrics-port", help="Serve Prometheus /metrics here.")
    ] = None,
    repair: Annotated[
        str | None, typer.Option("--repair", help="auto, exact, cursor or diff.")
    ] = None,
    env_file: EnvFileOption = Path(".env"),
    config: ConfigOption = Path("supasync.toml"),
    quiet: QuietOption = False,
) -> None:
    """Keep a local SQLite mirror of tables up to date, through anything.

    Mirrors the --table options, or else every subscription in supasync.toml. The first run
    snapshots; later runs resume. SIGINT/SIGTERM commit the current batch and exit 0.

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
            env_file=env_file,
            toml_path=config,
            quiet=quiet,
        )
    )


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def verify(ctx: typer.Context) -> None:
    """Check every subscription end to end (connection, token, join, `Subscribed to
    PostgreSQL`, filter, columns, publication, primary key, replica identity, RLS, channels,
    repair mode; --probe times a real event). Exit 0 ok (warnings allowed), 1 a check failed,
    2 bad configuration. All options: supasync verify --help
    """
    from ..verify.runner import main as run_verify  # its argparse owns the options and --help

    raise typer.Exit(run_verify(list(ctx.args)))


def run_sql(
    tables: Sequence[str],
    *,
    apply: bool,
    uninstall: bool,
    retention: str,
    db_url: str | None,
    env_file: Path,
    toml_path: Path,
    out: TextIO | None = None,
) -> int:
    """Print, apply or remove the exact-mode SQL. Tables default to the subscriptions of
    supasync.toml; the database URL to ``SUPABASE_DB_URL``."""
    import psycopg

    from ..repair import sqlinstall

    out = out or sys.stdout
    try:
        if not tables and not uninstall:
            from ..client.config import load_settings

            settings = load_settings(env_file=env_file, toml_path=toml_path)
            tables = [f"{s.schema}.{s.table}" for s in settings.subscriptions]
            db_url = db_url or settings.db_url
        script = sqlinstall.uninstall_sql() if uninstall else sqlinstall.render(tables, retention)
        if not (apply or uninstall):
            out.write(script)
            return EXIT_OK
        if not db_url:
            import os

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
        if uninstall:
            sqlinstall.uninstall(db_url)
            print("supasync sql: exact mode removed", file=sys.stderr)
        else:
            sqlinstall.apply(db_url, tables, retention)
            print(f"supasync sql: exact mode installed for {', '.join(tables)}", file=sys.stderr)
        return EXIT_OK
    except (ConfigError, FilterError) as exc:
        _error(str(exc))
        return EXIT_CONFIG
    except psycopg.Error as exc:
        _error(f"the database refused the script: {mask(str(exc).strip())}")
        return EXIT_FAILURE


@app.command()
def sql(
    table: Annotated[
        list[str] | None,
        typer.Argument(help="Tables to log (schema.table); default: those of supasync.toml."),
    ] = None,
    apply: Annotated[
        bool, typer.Option("--apply", help="Run it against SUPABASE_DB_URL (idempotent).")
    ] = False,
    uninstall: Annotated[
        bool, typer.Option("--uninstall", help="Remove supasync's SQL (with --apply or alone).")
    ] = False,
    retention: Annotated[
        str, typer.Option(help="How long change-log entries are kept (PostgreSQL interval).")
    ] = "7 days",
    db_url: Annotated[
        str | None, typer.Option("--db-url", help="Database URL (default SUPABASE_DB_URL).")
    ] = None,
    env_file: EnvFileOption = Path(".env"),
    config: ConfigOption = Path("supasync.toml"),
) -> None:
    """Print, apply (--apply) or remove (--uninstall) the SQL of exact gap repair: a change
    log filled by triggers on the chosen tables, stamped with the writing transaction id, and
    the RPC that reads it.

    Example: supasync sql public.todos --apply
    """
    raise typer.Exit(
        run_sql(table or (), apply=apply, uninstall=uninstall, retention=retention,
                db_url=db_url, env_file=env_file, toml_path=config)
    )


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``supasync``)."""
    app(args=argv, prog_name="supasync")
