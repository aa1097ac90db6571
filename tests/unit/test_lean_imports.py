"""A lean install (``pip install supasync``, no extras): every module outside the local stack
imports without psycopg and aiohttp, and so does the pytest plugin that pytest loads in every
environment where supasync is installed. Printing the exact-mode SQL needs no driver; applying it
says what to install.

The imports run in a fresh interpreter in which psycopg and aiohttp cannot be imported (``None``
in ``sys.modules``, as for a package that is not installed)."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import pytest

import supasync
from supasync.core.errors import MissingExtra
from tests.blocking import block

HEAVY = ("psycopg", "aiohttp")
_SCRIPT = """
import importlib, json, sys
for name in {heavy!r}:
    sys.modules[name] = None
failed = {{}}
for module in {modules!r}:
    try:
        importlib.import_module(module)
    except Exception as exc:
        failed[module] = f"{{type(exc).__name__}}: {{exc}}"
print(json.dumps(failed))
"""


def lean_modules() -> list[str]:
    """Every supasync module a lean install imports: all but the local stack's (and no
    ``__main__``, which would run a command), plus the pytest plugin."""
    names = [m.name for m in pkgutil.walk_packages(supasync.__path__, "supasync.")]
    return ["supasync"] + [
        n for n in names
        if not n.endswith(".__main__")
        and (not n.startswith("supasync.devstack.") or n == "supasync.devstack.pytest_plugin")]


def test_the_list_covers_the_client_commands_and_the_plugin() -> None:
    modules = lean_modules()
    for name in ("supasync.client.realtime", "supasync.cli.app", "supasync.mirror.worker",
                 "supasync.verify.runner", "supasync.verify.probe", "supasync.repair.sqlinstall",
                 "supasync.devstack.pytest_plugin"):
        assert name in modules
    assert "supasync.devstack.app" not in modules


def test_every_module_outside_the_stack_imports_without_psycopg_and_aiohttp() -> None:
    script = _SCRIPT.format(heavy=HEAVY, modules=lean_modules())
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    failed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert failed == {}


def test_printing_the_sql_needs_no_driver_and_applying_names_the_extra(
        monkeypatch: pytest.MonkeyPatch) -> None:
    block(monkeypatch, "psycopg")
    from supasync.repair import sqlinstall

    assert "public.todos" in sqlinstall.render(["public.todos"])
    assert "drop schema" in sqlinstall.uninstall_sql().lower()
    url = "postgresql://postgres@127.0.0.1:1/postgres"
    for call in (lambda: sqlinstall.apply(url, ["public.todos"]),
                 lambda: sqlinstall.uninstall(url), lambda: sqlinstall.status(url)):
        with pytest.raises(MissingExtra, match=r"psycopg is not installed.*supasync\[db\]'$"):
            call()
