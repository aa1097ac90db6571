"""``supasync relay``: publish tables' changes into NATS JetStream, exactly once in the stream.

The options are parsed here; the relay is :func:`supasync.relay.command.run_relay_cli` (and
:class:`supasync.relay.Relay` for embedding). ``--json`` records go to stdout, one JSON object per
line; status lines and errors go to stderr.
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

__all__ = ["relay"]


@guarded
def relay(
    ctx: typer.Context,
    to: Annotated[
        list[str] | None,
        typer.Option("--to", metavar="URL",
                     help="NATS server URL (repeatable: servers of one cluster); default: "
                     "[relay] to in supasync.toml, else nats://127.0.0.1:4222."),
    ] = None,
    table: TablesOption = None,
    filter: FilterOption = None,
    stream: Annotated[
        str | None, typer.Option("--stream", metavar="NAME",
                                 help="JetStream stream (created when missing; default SUPASYNC).")
    ] = None,
    subject_prefix: Annotated[
        str | None, typer.Option("--subject-prefix", metavar="P",
                                 help="Subjects are P.SCHEMA.TABLE (default supasync).")
    ] = None,
    cache: Annotated[
        Path | None, typer.Option("--cache", metavar="FILE",
                                  help="The relay's store file: resume where it stopped "
                                  "(default: a temporary file, no resume).")
    ] = None,
    snapshot: Annotated[
        bool | None, typer.Option("--snapshot/--no-snapshot",
                                  help="Publish every row once when a table is first relayed.",
                                  show_default=False)
    ] = None,
    replicas: Annotated[
        int | None, typer.Option("--replicas", metavar="N",
                                 help="Replicas of a stream the relay creates (default 1).")
    ] = None,
    duplicate_window: Annotated[
        float | None, typer.Option("--duplicate-window", metavar="SECONDS",
                                   help="Deduplication window of a stream the relay creates "
                                   "(default 120).")
    ] = None,
    max_age: Annotated[
        float | None, typer.Option("--max-age", metavar="SECONDS",
                                   help="Stream limit: drop messages older than this.")
    ] = None,
    max_bytes: Annotated[
        int | None, typer.Option("--max-bytes", metavar="N", help="Stream limit: bytes kept.")
    ] = None,
    max_msgs: Annotated[
        int | None, typer.Option("--max-msgs", metavar="N", help="Stream limit: messages kept.")
    ] = None,
    repair: RepairOption = None,
    json_lines: Annotated[
        bool, typer.Option("--json", metavar="",
                           help="JSON records on stdout, one per line (status with position "
                           "and lag, errors).")
    ] = False,
    metrics_port: MetricsPortOption = None,
    status_interval: Annotated[
        float | None, typer.Option("--status-interval", metavar="SECONDS",
                                   help="Seconds between status lines (default 5).")
    ] = None,
    env_file: EnvFileOption = None,
    config: ConfigOption = Path("supasync.toml"),
    quiet: QuietOption = False,
    log_level: LogLevelOption = None,
) -> None:
    """Publish every change of tables into NATS JetStream, exactly once in the stream.

    Follows the tables into a local store file (snapshot, live changes, every gap repaired) and
    publishes each change on SUBJECT_PREFIX.SCHEMA.TABLE with a message id derived from the
    change, advancing only after JetStream's ack. SIGINT/SIGTERM: publish what is pending, exit
    0. Exit 1: runtime failure; 2: bad input or `pip install 'supasync[relay]'` needed.

    Example: supasync relay --to nats://127.0.0.1:4222 --table public.todos --cache relay.sqlite
    """
    from ..relay.command import run_relay_cli  # lazy: the relay pulls in the client side

    raise typer.Exit(
        run_relay_cli(
            servers=to or (),
            tables=table or (),
            filter_text=filter,
            stream=stream,
            subject_prefix=subject_prefix,
            cache=cache,
            snapshot=snapshot,
            replicas=replicas,
            duplicate_window=duplicate_window,
            max_age=max_age,
            max_bytes=max_bytes,
            max_msgs=max_msgs,
            repair=repair,
            json_logs=json_lines,
            metrics_port=metrics_port,
            status_interval=status_interval,
            env_file=prepare(ctx, log_level, env_file),
            toml_path=config,
            quiet=quiet,
            out=sys.stdout,
            err=sys.stderr,
        )
    )
