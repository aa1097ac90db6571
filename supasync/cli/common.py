"""What every ``supasync`` command shares: exit codes, error printing, logging, the global
options and the typer classes that keep ``--help`` readable.

The command modules (``tail``, ``mirror``, ``verify``, ``sql``, ``dev``) import this module and
nothing else of the CLI; :mod:`supasync.cli.app` imports them to register them. So the modules of
this package never import each other in a cycle.

Global options (``--log-level``, ``--env-file``) are accepted both before the command (by the
root callback, :func:`remember_globals`) and after it (by every command). :func:`prepare` merges
them: the command's value wins over the root's, which wins over ``SUPASYNC_LOG_LEVEL`` and the
defaults (``WARNING``, ``.env``). Logging is configured once, by the command, through
:func:`setup_logging`.

Output contract, for every command: results (``--json`` lines, printed SQL, the verify report,
tailed changes) go to stdout; logs, status lines and errors go to stderr.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup

from ..core.errors import CacheError, ConfigError, FilterError, MissingExtra, SupasyncError
from ..core.redact import install_redaction, mask

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAILURE",
    "EXIT_OK",
    "Command",
    "ConfigOption",
    "EnvFileOption",
    "FilterOption",
    "Globals",
    "Group",
    "LogLevelOption",
    "MetricsPortOption",
    "QuietOption",
    "RepairOption",
    "TablesOption",
    "error",
    "guarded",
    "parse_table",
    "prepare",
    "remember_globals",
    "setup_logging",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

DEFAULT_LOG_LEVEL = "WARNING"
DEFAULT_ENV_FILE = Path(".env")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

# Chatty HTTP libraries: their INFO lines (one per request) are shown only at DEBUG.
_QUIET_BELOW_DEBUG = ("httpx", "httpcore", "hpack")


# --------------------------------------------------------------------------- options

LogLevelOption = Annotated[
    str | None,
    typer.Option(
        "--log-level",
        metavar="LEVEL",
        show_default=False,
        help="Logging on stderr: DEBUG, INFO, WARNING (default) or ERROR; also "
        "SUPASYNC_LOG_LEVEL. Before or after the command.",
    ),
]
EnvFileOption = Annotated[
    Path | None,
    typer.Option(
        "--env-file",
        metavar="FILE",
        show_default=False,
        help="Read SUPABASE_* from this file (default .env). Before or after the command.",
    ),
]
ConfigOption = Annotated[
    Path,
    typer.Option(
        "--config",
        metavar="FILE",
        help="supasync.toml declaring the subscriptions and the mirror file.",
    ),
]
QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", metavar="", help="No status lines on stderr.")
]
# The options the long-running table commands (mirror, relay, serve) share.
TablesOption = Annotated[
    list[str] | None,
    typer.Option("--table", "-t", metavar="[SCHEMA.]TABLE",
                 help="A table (repeatable); default: the subscriptions of supasync.toml."),
]
FilterOption = Annotated[
    str | None, typer.Option("--filter", "-f", metavar="FILTER",
                             help="Realtime filter of the rows followed, e.g. done=eq.false")
]
RepairOption = Annotated[
    str | None, typer.Option("--repair", metavar="MODE",
                             help="Gap repair: auto, exact, cursor or diff (default: "
                             "supasync.toml's, else auto).")
]
MetricsPortOption = Annotated[
    int | None, typer.Option("--metrics-port", metavar="PORT",
                             help="Serve Prometheus /metrics on this port (on 127.0.0.1).")
]


@dataclass
class Globals:
    """The global options as given before the command (``None``: not given there)."""

    log_level: str | None = None
    env_file: Path | None = None


def remember_globals(ctx: typer.Context, log_level: str | None, env_file: Path | None) -> None:
    """Root callback helper: keep the options given before the command for :func:`prepare`."""
    ctx.obj = Globals(log_level, env_file)


def _root_globals(ctx: typer.Context) -> Globals:
    found = ctx.find_root().obj
    return found if isinstance(found, Globals) else Globals()


def prepare(ctx: typer.Context, log_level: str | None, env_file: Path | None) -> Path:
    """Merge the global options given after the command (*log_level*, *env_file*) with those
    given before it, configure logging, and return the env file to read.

    Raises:
        ConfigError: an unknown log level.
    """
    root = _root_globals(ctx)
    level = log_level or root.log_level or os.environ.get("SUPASYNC_LOG_LEVEL") or None
    setup_logging(level or DEFAULT_LOG_LEVEL)
    return env_file or root.env_file or DEFAULT_ENV_FILE


def root_env_file(ctx: typer.Context) -> Path | None:
    """``--env-file`` as given before the command, if it was."""
    return _root_globals(ctx).env_file


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The CLI's one log handler (replaced, not stacked, when logging is set up again).

    Writes to ``sys.stderr`` as it is at each record, not as it was at setup (like the
    standard library's last-resort handler), so a swapped or closed stream is never used."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> Any:
        return sys.stderr


def setup_logging(level_name: str) -> None:
    """Log to stderr at *level_name*, through the redacting filter; HTTP libraries' request
    lines only at DEBUG.

    Raises:
        ConfigError: *level_name* is not DEBUG, INFO, WARNING or ERROR.
    """
    name = level_name.strip().upper()
    if name not in LEVELS:
        raise ConfigError("unknown log level", key="--log-level", value=level_name,
                          fix="use DEBUG, INFO, WARNING or ERROR")
    level = logging.getLevelName(name)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _StderrHandler):
            root.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in _QUIET_BELOW_DEBUG:
        logging.getLogger(noisy).setLevel(logging.NOTSET if level <= logging.DEBUG
                                          else max(level, logging.WARNING))
    install_redaction()


# --------------------------------------------------------------------------- errors


def error(message: str) -> None:
    """Print ``error: <message>`` to stderr, masked (no secret ever reaches the terminal)."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, highlight=False, soft_wrap=True).print(
        f"[bold red]error:[/bold red] {escape(mask(message))}"
    )


P = ParamSpec("P")
R = TypeVar("R")


def guarded(command: Callable[P, R]) -> Callable[P, R]:
    """Wrap a command: library errors become an error line on stderr and an exit code.

    :class:`~supasync.core.errors.MissingExtra` (an optional dependency group is not
    installed), :class:`ConfigError` (including its subclass
    :class:`~supasync.core.errors.ApiKeyRejected`: the project refused the API key),
    :class:`FilterError` and :class:`CacheError` (a cache file given on the command line that
    cannot be opened: a later failure falls back to memory inside the client) exit 2; any other
    :class:`SupasyncError` exits 1. Other exceptions propagate (a bug: show the traceback).
    """

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except (MissingExtra, ConfigError, FilterError, CacheError) as exc:
            error(str(exc))
            raise typer.Exit(EXIT_CONFIG) from None
        except SupasyncError as exc:
            error(str(exc))
            raise typer.Exit(EXIT_FAILURE) from None

    return wrapper


# --------------------------------------------------------------------------- help


def _plain_help_option(option: Any) -> Any:
    # typer shows a type placeholder (`<bool>`) next to --help unless a metavar is set.
    if option is not None:
        option.metavar = ""
    return option


def _no_type(ctx: Any) -> None:
    return None


class Command(TyperCommand):
    """A typer command whose help shows no type placeholders (``<bool>``, ``<list[str]>``):
    not next to ``--help``, nor next to an argument that has a metavar (typer shows an
    argument's type even then). Options get theirs from ``metavar=`` (``""`` for flags)."""

    def get_help_option(self, ctx: Any) -> Any:
        return _plain_help_option(super().get_help_option(ctx))

    def get_params(self, ctx: Any) -> Any:
        params = super().get_params(ctx)
        for param in params:
            if isinstance(param, TyperArgument) and param.metavar is not None:
                setattr(param, "display_type_rich", _no_type)  # noqa: B010 - an instance
        return params


class Group(TyperGroup):
    """The ``supasync`` group, with the same plain ``--help`` line as :class:`Command`."""

    def get_help_option(self, ctx: Any) -> Any:
        return _plain_help_option(super().get_help_option(ctx))


# --------------------------------------------------------------------------- parsing


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
