"""The ``supasync`` command line without a server: help texts, option parsing, the global
options' placement, the dev command's options against the stack's parser, and exit code 2 for a
missing optional dependency group."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from supasync.cli.app import app
from supasync.cli.common import parse_table
from supasync.cli.dev import dev_argv
from supasync.cli.tail import format_change, parse_events
from supasync.core.changes import change_from_row
from supasync.core.errors import ConfigError

COMMANDS = ("dev", "tail", "mirror", "verify", "sql")

# Every option each command documents (README "The command line").
DOCUMENTED = {
    "tail": ("--table", "--filter", "--events", "--json", "--env-file", "--config", "--quiet",
             "--cache", "--snapshot", "--repair", "--log-level"),
    "mirror": ("--table", "--filter", "--db", "--once", "--json", "--metrics-port", "--repair",
               "--env-file", "--config", "--quiet", "--log-level"),
    "verify": ("--table", "--filter", "--events", "--columns", "--repair", "--cursor-column",
               "--probe", "--probe-row", "--timeout", "--expiry-warn", "--json", "--env-file",
               "--config", "--log-level"),
    "sql": ("--apply", "--uninstall", "--retention", "--db-url", "--env-file", "--config",
            "--log-level"),
    "dev": ("--host", "--port", "--data-dir", "--env-file", "--sql", "--jwt-expiry",
            "--max-record-bytes", "--max-rows", "--real-backoffs", "--quiet", "--log-level"),
}

# typer's type placeholders: <bool>, <str>, <list[str]>, <path>, <int>, ...
PLACEHOLDER = re.compile(r"<[a-z][a-zA-Z_\[\], |]*>")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The commands configure logging (root level, the HTTP loggers); undo it per test."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level,
             {name: logging.getLogger(name).level for name in ("httpx", "httpcore", "hpack")})
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    for name, level in saved[2].items():
        logging.getLogger(name).setLevel(level)


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200", **(env or {})})


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith(("SUPABASE_", "SUPASYNC_")):
            monkeypatch.delenv(key)


# --------------------------------------------------------------------------- help


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_is_readable_and_complete(command: str) -> None:
    result = invoke(*([command] if command else []), "--help")
    assert result.exit_code == 0, result.output
    assert not PLACEHOLDER.search(result.output), result.output
    for option in DOCUMENTED.get(command, ("--log-level", "--env-file", *COMMANDS)):
        assert option in result.output, (command, option)


def test_flags_are_plain_flags() -> None:
    """No --no-<flag> twins and no value after a flag."""
    group = get_command(app)
    for name in COMMANDS:
        command = group.commands[name]  # type: ignore[attr-defined]
        for param in command.params:
            if getattr(param, "is_flag", False):
                assert not param.secondary_opts, (name, param.opts)


# --------------------------------------------------------------------------- global options


@pytest.mark.parametrize("where", ["before", "after"])
def test_log_level_before_or_after_the_command(where: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch)
    opts = ["--log-level", "LOUD"]
    args = [*opts, "tail", "--table", "todos"] if where == "before" else [
        "tail", "--table", "todos", *opts]
    result = invoke(*args)
    assert result.exit_code == 2
    assert "unknown log level" in result.output and "LOUD" in result.output
    assert "No such option" not in result.output


@pytest.mark.parametrize("where", ["before", "after"])
@pytest.mark.parametrize("command", ["tail", "mirror", "verify"])
def test_env_file_before_or_after_the_command(where: str, command: str, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The env file is read wherever --env-file stands: a malformed --table is then the only
    complaint (not a missing SUPABASE_URL, not an unknown option)."""
    _clean_env(monkeypatch)
    env_file = tmp_path / "stack.env"
    env_file.write_text("SUPABASE_URL=http://127.0.0.1:9\nSUPABASE_ANON_KEY=anon\n")
    opts = ["--env-file", str(env_file), "--log-level", "ERROR"]
    bad = ["--filter", "id=eqq.1"] if command == "verify" else []  # verify takes a.b.c
    rest = [command, "--table", "a.b.c", *bad]
    args = [*opts, *rest] if where == "before" else [*rest, *opts]
    monkeypatch.chdir(tmp_path)
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert "No such option" not in result.output
    assert "SUPABASE_URL" not in result.output
    assert ("eqq" if command == "verify" else "a.b.c") in result.output


def test_the_option_after_the_command_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch)
    result = invoke("--log-level", "LOUD", "tail", "--log-level", "QUIETER", "--table", "x")
    assert result.exit_code == 2 and "QUIETER" in result.output and "LOUD" not in result.output


# --------------------------------------------------------------------------- dev


def test_dev_accepts_every_option_of_the_stack_parser() -> None:
    """`supasync dev` and `python -m supasync.devstack` cannot drift: every option of the
    stack's parser (hidden ones included) is an option of `supasync dev`, with the same arity."""
    from supasync.devstack.runner import build_parser

    dev = get_command(app).commands["dev"]  # type: ignore[attr-defined]
    ours = {opt: param for param in dev.params for opt in param.opts}
    for action in build_parser()._actions:
        for opt in action.option_strings:
            if opt in ("-h", "--help"):
                continue
            assert opt in ours, f"supasync dev lacks {opt}"
            flag = action.nargs == 0
            assert bool(getattr(ours[opt], "is_flag", False)) == flag, opt


def test_dev_hands_every_given_option_to_the_stack_parser(tmp_path: Path) -> None:
    from supasync.devstack.runner import build_parser

    sql = tmp_path / "a.sql"
    argv = dev_argv({
        "ctx": None, "log_level": "INFO", "host": "0.0.0.0", "port": 5, "data_dir": Path("d"),
        "env_file": Path(".env"), "sql": [sql, sql], "jwt_expiry": 5, "max_record_bytes": 10,
        "max_rows": 1000, "real_backoffs": True, "quiet": False, "ready_file": None,
    })
    assert argv == [
        "--host", "0.0.0.0", "--port", "5", "--data-dir", "d", "--env-file", ".env",
        "--sql", str(sql), "--sql", str(sql), "--jwt-expiry", "5", "--max-record-bytes", "10",
        "--max-rows", "1000", "--real-backoffs",
    ]
    args = build_parser().parse_args(argv)
    assert args.max_rows == 1000 and args.real_backoffs and args.sql == [sql, sql]


def test_dev_max_rows_reaches_the_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    monkeypatch.setattr("supasync.devstack.runner.run", lambda argv: seen.append(argv) or 0)
    result = invoke("--env-file", "x.env", "dev", "--max-rows", "1000", "--quiet", "--port", "0")
    assert result.exit_code == 0, result.output
    from supasync.devstack.runner import build_parser

    assert len(seen) == 1 and len(seen[0]) == 7, seen
    args = build_parser().parse_args(seen[0])
    assert (args.max_rows, args.quiet, args.port, args.env_file) == (1000, True, 0, Path("x.env"))


def test_missing_stack_extra_exits_2_with_the_install_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "aiohttp", None)  # import aiohttp -> ModuleNotFoundError
    result = invoke("dev", "--port", "0")
    assert result.exit_code == 2, result.output
    assert "pip install 'supasync[stack]'" in result.output
    assert "supasync dev needs the local stack's dependencies" in result.output


def test_missing_db_extra_exits_2_for_sql_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch)
    monkeypatch.setitem(sys.modules, "psycopg", None)
    result = invoke("sql", "public.todos", "--apply", "--db-url", "postgresql://u@127.0.0.1:9/x")
    assert result.exit_code == 2, result.output
    assert "pip install 'supasync[db]'" in result.output
    printed = invoke("sql", "public.todos")  # printing needs no driver
    assert printed.exit_code == 0 and "public.todos" in printed.output


# --------------------------------------------------------------------------- sql


def test_sql_points_to_what_users_have() -> None:
    result = invoke("sql", "public.todos")
    assert result.exit_code == 0
    assert "design.md" not in result.output
    assert "supasync README" in result.output


# --------------------------------------------------------------------------- tail helpers


def test_parse_table_and_events() -> None:
    assert parse_table("todos") == ("public", "todos")
    assert parse_table("app.todos") == ("app", "todos")
    for bad in ("", "a.b.c", ".todos", "app."):
        with pytest.raises(ConfigError):
            parse_table(bad)
    assert parse_events([]) == "*"
    assert parse_events(["insert, update", "INSERT"]) == ("INSERT", "UPDATE")
    assert parse_events(["DELETE", "*"]) == "*"
    with pytest.raises(ConfigError):
        parse_events(["TRUNCATE"])


def test_format_change_json_and_readable() -> None:
    change = change_from_row(
        "public", "todos", "UPDATE", {"id": 7, "title": "milk"}, {"id": 7}, ("id",),
        origin="replay", commit_timestamp="2026-01-02T03:04:05Z", subscription="todos",
    )
    data = json.loads(format_change(change, as_json=True))
    assert data["new"] == {"id": 7, "title": "milk"} and data["op"] == "UPDATE"
    assert data["commit_timestamp"].startswith("2026-01-02T03:04:05")
    line = format_change(change, as_json=False)
    assert "UPDATE" in line and "public.todos" in line and "id=7" in line
    assert "[replay]" in line and '"title":"milk"' in line and "\n" not in line
    assert line.startswith("2026-01-02T03:04:05") and line.split(" ", 1)[0].endswith("Z")


def test_readable_lines_show_the_commit_time_or_a_dash() -> None:
    """One time format: the commit time (``Z``) when the change has one, ``-`` when it has
    none (a replayed row re-read by repair), never the time it was received."""
    live = change_from_row("public", "todos", "INSERT", {"id": 1}, None, ("id",),
                           origin="live", commit_timestamp="2026-01-02T03:04:05.524Z")
    replayed = change_from_row("public", "todos", "INSERT", {"id": 2}, None, ("id",),
                               origin="replay")
    assert format_change(live, as_json=False).split(" ", 1)[0] == "2026-01-02T03:04:05.524000Z"
    first = format_change(replayed, as_json=False).split(" ", 1)[0]
    assert first == "-", first
