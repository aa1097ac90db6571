"""The ``supasync`` command line: ``dev``, ``tail``, ``mirror``, ``verify``, ``sql``, ``relay``
and ``serve``.

This module builds the typer app and registers the commands, one module each
(:mod:`~supasync.cli.tail`, :mod:`~supasync.cli.mirror`, :mod:`~supasync.cli.verify`,
:mod:`~supasync.cli.sql`, :mod:`~supasync.cli.dev`); what they share is in
:mod:`~supasync.cli.common`. Each command parses its options and calls one library function, so
the logic stays testable without a terminal.

Exit codes: 0 success (``tail`` and ``mirror`` also exit 0 on SIGINT/SIGTERM), 1 runtime failure
(sign-in refused, server unreachable, a verify check failed), 2 bad configuration or usage, or a
missing optional dependency group (the message says which setting, or which ``pip install``).

Global options: ``--log-level`` and ``--env-file`` go before or after the command
(``supasync --log-level INFO tail ...`` = ``supasync tail --log-level INFO ...``; the one after
the command wins). Results go to stdout, logs and status lines to stderr, always through the
redacting filter (:mod:`supasync.core.redact`): tokens, keys and passwords never reach the
terminal.

``supasync dev`` imports :mod:`supasync.devstack` lazily, inside the command, so nothing else
pays for the stack's server dependencies.
"""

from __future__ import annotations

import typer

from . import dev, mirror, relay, serve, sql, tail, verify
from .common import Command, EnvFileOption, Group, LogLevelOption, remember_globals

__all__ = ["app", "main"]

app = typer.Typer(
    name="supasync",
    help="Dependable Supabase Realtime for Python backends.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=Group,
)


@app.callback()
def _root(
    ctx: typer.Context,
    log_level: LogLevelOption = None,
    env_file: EnvFileOption = None,
) -> None:
    """supasync: supervised Realtime subscriptions, token lifecycle, cache and gap repair.

    --log-level and --env-file may also follow the command.
    """
    remember_globals(ctx, log_level, env_file)


app.command("dev", cls=Command)(dev.dev)
app.command("tail", cls=Command)(tail.tail)
app.command("mirror", cls=Command)(mirror.mirror)
app.command("verify", cls=Command)(verify.verify)
app.command("relay", cls=Command)(relay.relay)
app.command("sql", cls=Command)(sql.sql)
app.command("serve", cls=Command)(serve.serve)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``supasync``)."""
    app(args=argv, prog_name="supasync")
