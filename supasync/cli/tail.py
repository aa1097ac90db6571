"""``supasync tail``: print changes as they happen, one line per change, until Ctrl-C.

Changes go to stdout (``--json``: one ``Change.to_dict()`` object per line); status lines
(``supasync tail: live``), logs and errors go to stderr. Exit codes: 0 on SIGINT/SIGTERM, 1 when
every subscription was rejected or the sign-in failed, 2 for bad configuration (including a
``--table`` PostgREST does not know, a URL with a bad port, and an API key the project refuses).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import typer

from ..core.errors import CacheError, ConfigError, FilterError, RestError, SupasyncError
from ..core.waiting import install_stop_signals, restore_signals
from .common import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_OK,
    ConfigOption,
    EnvFileOption,
    LogLevelOption,
    QuietOption,
    error,
    guarded,
    parse_table,
    prepare,
)

if TYPE_CHECKING:
    from ..client.config import Settings
    from ..client.realtime import Realtime
    from ..core.changes import Change
    from ..core.filters import Filter

__all__ = [
    "TailTarget",
    "check_tables_exist",
    "format_change",
    "parse_events",
    "run_tail",
    "tail",
    "tail_async",
    "tail_targets",
]


@dataclass(frozen=True)
class TailTarget:
    """One table to tail: what ``client.subscribe`` gets."""

    schema: str
    table: str
    events: tuple[str, ...] | str = "*"
    filter: str | Filter | None = None


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
    """One line for a change: compact JSON (``Change.to_dict()``) or a readable summary
    starting with the commit time (``-`` when the change has none)."""
    data = change.to_dict()
    if as_json:
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=str)
    # The commit time (ISO 8601, ``Z``) for every line, live or replayed; ``-`` when the
    # change carries none (a row re-read by repair has no commit time of its own).
    ts = data.get("commit_timestamp") or "-"
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
    If the project refuses the API key itself, :class:`~supasync.core.errors.ApiKeyRejected`
    is raised (exit code 2 in the CLI).

    Gaps are repaired (``repair``): changes missed while the socket was down are printed like
    live ones, with their origin ``replay``. With ``cache`` the rows and cursor are kept in that
    file, so a restarted tail prints what it missed while it was not running. The rows present
    at the first join (origin ``snapshot``) are printed only with ``snapshot=True``.

    Raises:
        ConfigError: nothing to tail, or a table PostgREST does not know (checked before
            subscribing, see :func:`check_tables_exist`).
        AuthError: the first token could not be had (bad credentials, auth unreachable).
        ApiKeyRejected: Realtime and PostgREST both answered 401 to the API key.
    """
    from ..client.realtime import Realtime
    from ..core.status import (
        ConnectionFailed,
        GapRepaired,
        StateChanged,
        StatusEvent,
        SubscriptionFailed,
    )

    stop = stop or asyncio.Event()
    installed = install_stop_signals(stop)

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
            elif isinstance(event, ConnectionFailed):
                stop.set()  # the API key was refused: nothing will ever arrive; raised below
            elif isinstance(event, StateChanged):
                if event.state.value != "live" or repair == "off" or names <= repaired:
                    say(event.state.value)
            elif isinstance(event, SubscriptionFailed):
                failed[event.subscription] = str(event.error)
                if names <= failed.keys():
                    stop.set()  # nothing left to tail: the error below says why, once
                else:
                    say(f"{event.subscription} failed: {event.error}")

        await check_tables_exist(settings, client)
        client.status.subscribe(report)
        async with client:
            await stop.wait()
    finally:
        restore_signals(installed)
    if client.connection.failure is not None:
        raise client.connection.failure  # ApiKeyRejected, a ConfigError: exit 2
    if failed and names <= failed.keys():
        error("every subscription was rejected: " + "; ".join(failed.values()))
        return EXIT_FAILURE
    return EXIT_OK


async def check_tables_exist(settings: Settings, client: Realtime) -> None:
    """Before subscribing: ask PostgREST (with the subscriber's token) whether every
    subscribed table exists. A Realtime join of a missing table is refused with the same words
    as an unpublished one; this says what is wrong instead.

    Starts the client's token keeper (idempotent; ``async with client`` reuses it). When
    PostgREST cannot answer (schema not exposed, server down), nothing is decided here: the
    join reports what it finds.

    Raises:
        ConfigError: a table is not described by PostgREST for this role.
        AuthError: the first token could not be had.
    """
    from ..repair.rest import Rest

    await client.tokens.start()
    rest = Rest(settings.rest_url, client.tokens.api_key, client.tokens.token)
    try:
        seen: set[tuple[str, str]] = set()
        for sub in client.subscriptions:
            where = (sub.schema, sub.table)
            if where in seen:
                continue
            seen.add(where)
            try:
                info = await rest.table_info(*where)
            except RestError:
                continue
            if info is None:
                await client.tokens.aclose()  # the client never starts: let go of the token
                raise ConfigError(
                    f"table {sub.schema}.{sub.table} not found: PostgREST does not describe it "
                    "for this role",
                    key="--table",
                    fix="check the name (SCHEMA.TABLE, e.g. public.todos), create the table, or "
                    "grant select on it to the role you connect as",
                )
    finally:
        await rest.aclose()


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
        error(str(exc))
        return EXIT_CONFIG

    def status(state: str) -> None:
        if not quiet:
            print(f"supasync tail: {state}", file=sys.stderr, flush=True)

    try:
        return asyncio.run(
            tail_async(settings, targets, as_json=as_json, out=out or sys.stdout, status=status,
                       cache=cache, snapshot=snapshot, repair=repair)
        )
    except (ConfigError, FilterError, CacheError) as exc:
        # CacheError here: the --cache file cannot be opened (bad input, like a bad path).
        error(str(exc))
        return EXIT_CONFIG
    except SupasyncError as exc:
        error(str(exc))
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK


@guarded
def tail(
    ctx: typer.Context,
    table: Annotated[
        list[str] | None,
        typer.Option("--table", "-t", metavar="[SCHEMA.]TABLE",
                     help="Table to tail (repeatable)."),
    ] = None,
    filter: Annotated[
        str | None, typer.Option("--filter", "-f", metavar="FILTER",
                                 help="Realtime filter, e.g. status=eq.open")
    ] = None,
    events: Annotated[
        list[str] | None,
        typer.Option("--events", "-e", metavar="EVENTS",
                     help="INSERT, UPDATE, DELETE or * (comma-separated, repeatable)."),
    ] = None,
    json_lines: Annotated[
        bool, typer.Option("--json", metavar="",
                           help="One JSON object per line on stdout (Change.to_dict()).")
    ] = False,
    env_file: EnvFileOption = None,
    config: ConfigOption = Path("supasync.toml"),
    quiet: QuietOption = False,
    cache: Annotated[
        Path | None,
        typer.Option("--cache", metavar="FILE",
                     help="Keep rows and cursor in this SQLite file: a restarted tail prints "
                     "what it missed."),
    ] = None,
    snapshot: Annotated[
        bool, typer.Option("--snapshot", metavar="",
                           help="Also print the rows present at the first join.")
    ] = False,
    repair: Annotated[
        str, typer.Option("--repair", metavar="MODE",
                          help="Gap repair: auto, exact, cursor, diff or off.")
    ] = "auto",
    log_level: LogLevelOption = None,
) -> None:
    """Print changes as they happen, one per line on stdout, until Ctrl-C.

    Tails the --table options, or else every subscription in supasync.toml. Each line starts
    with the commit time. Changes missed during a disconnect are repaired and printed with
    origin "replay". Status lines and logs go to stderr.

    Example: supasync tail --json --table todos --events INSERT
    """
    raise typer.Exit(
        run_tail(
            tables=table or (),
            filter_text=filter,
            events=events or (),
            as_json=json_lines,
            env_file=prepare(ctx, log_level, env_file),
            toml_path=config,
            quiet=quiet,
            cache=cache,
            snapshot=snapshot,
            repair=repair,
        )
    )
