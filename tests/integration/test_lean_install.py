"""The acceptance test of a lean install (issue #12): in a fresh virtual environment,
``pip install <this checkout>`` without extras gives a working client and commands without the
local stack's server dependencies; a command whose extra is missing exits 2 naming the pip line.

This builds a real venv and installs into it with pip (its configured index; pip's cache makes
a repeat quick): about 30-90 s, once per run, shared by the tests of this module. It needs no
PostgreSQL and no stack. Skipped only when this interpreter cannot make a venv with pip.

Three tests also need the CLI side (``supasync/cli``): ``test_dev_without_the_stack_extra_
exits_2_naming_it`` (``dev`` calls ``require("aiohttp", "stack", ...)`` before importing the
stack and turns ``MissingExtra`` into exit 2), ``test_sql_prints_the_script_without_psycopg``
and ``test_sql_apply_without_psycopg_exits_2_naming_the_extra`` (``sql`` imports psycopg only to
apply or uninstall, through :mod:`supasync.repair.sqlinstall`, and exits 2 on ``MissingExtra``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT = 600


@dataclass(frozen=True)
class Venv:
    path: Path

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def supasync(self) -> Path:
        return self.path / "bin" / "supasync"

    def run(self, *args: str | os.PathLike[str], cwd: Path | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SUPABASE_", "SUPASYNC_", "VIRTUAL_ENV", "PYTHON"))}
        env["PATH"] = f"{self.path / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        return subprocess.run([str(a) for a in args], capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=cwd or self.path)

    def pip_install(self, *args: str | os.PathLike[str]) -> None:
        proc = self.run(self.python, "-m", "pip", "install", "--disable-pip-version-check",
                        "-q", *args, timeout=INSTALL_TIMEOUT)
        assert proc.returncode == 0, f"pip install {args} failed:\n{proc.stdout}{proc.stderr}"

    def has(self, module: str) -> bool:
        proc = self.run(self.python, "-c",
                        f"import importlib.util, sys; sys.exit(importlib.util.find_spec("
                        f"{module!r}) is None)")
        return proc.returncode == 0


def _source_copy(dest: Path) -> Path:
    """What pip needs to build the package, copied so the build leaves the checkout alone."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / "supasync", dest / "supasync",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


@pytest.fixture(scope="module")
def lean(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Venv]:
    """A fresh venv with ``pip install <checkout>`` (no extras)."""
    base = tmp_path_factory.mktemp("lean")
    made = subprocess.run([sys.executable, "-m", "venv", str(base / "venv")],
                          capture_output=True, text=True, timeout=300)
    venv = Venv(base / "venv")
    if made.returncode != 0 or not venv.python.exists():
        pytest.skip(f"cannot create a virtual environment with pip here ({sys.executable} -m "
                    f"venv: {(made.stderr or made.stdout).strip()[-300:]})")
    if venv.run(venv.python, "-m", "pip", "--version").returncode != 0:
        pytest.skip("the new virtual environment has no pip (ensurepip missing)")
    venv.pip_install(_source_copy(base / "src"))
    yield venv


def test_the_base_install_has_neither_aiohttp_nor_psycopg(lean: Venv) -> None:
    assert lean.has("supasync")
    assert not lean.has("aiohttp")
    assert not lean.has("psycopg")


def test_import_and_the_lean_modules_work(lean: Venv) -> None:
    proc = lean.run(lean.python, "-c", "import supasync; print(supasync.Realtime.__name__)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "Realtime"
    proc = lean.run(lean.python, "-c",
                    "import supasync.verify.runner, supasync.mirror.worker, "
                    "supasync.repair.sqlinstall, sys; "
                    "print(sorted(m for m in ('aiohttp', 'psycopg') if m in sys.modules))")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("command", ["tail", "verify", "mirror", "sql"])
def test_command_help_works(lean: Venv, command: str) -> None:
    proc = lean.run(lean.supasync, command, "--help")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "usage" in proc.stdout.lower()


def test_sql_prints_the_script_without_psycopg(lean: Venv) -> None:
    proc = lean.run(lean.supasync, "sql", "public.todos")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "public.todos" in proc.stdout
    assert "supasync_changes" in proc.stdout  # the RPC repair calls


def test_sql_apply_without_psycopg_exits_2_naming_the_extra(lean: Venv) -> None:
    proc = lean.run(lean.supasync, "sql", "public.todos", "--apply", "--db-url",
                    "postgresql://postgres@127.0.0.1:1/postgres")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "pip install 'supasync[db]'" in proc.stderr


def test_dev_without_the_stack_extra_exits_2_naming_it(lean: Venv) -> None:
    proc = lean.run(lean.supasync, "dev", timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "pip install 'supasync[stack]'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_pytest_plugin_loads_and_stack_tests_skip_naming_the_extra(lean: Venv) -> None:
    lean.pip_install("pytest")  # the plugin is loaded only by pytest; pytest brings no extra
    assert not lean.has("aiohttp")
    tests = lean.path.parent / "plugin_tests"
    tests.mkdir()
    (tests / "test_it.py").write_text(
        "def test_plain():\n    pass\n\n"
        "def test_stack(supabase_stack):\n    raise AssertionError('ran without the stack')\n")
    proc = lean.run(lean.python, "-m", "pytest", "-rs", "-p", "no:cacheprovider", "test_it.py",
                    cwd=tests)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "1 passed, 1 skipped" in out, out
    assert "pip install 'supasync[stack]'" in out, out
