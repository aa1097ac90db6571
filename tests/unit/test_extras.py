"""supasync.core.extras: the extras table matches pyproject.toml, and :func:`require` says what
to install when a module is missing without masking a broken install."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import pytest

from supasync.core.errors import MissingExtra, SupasyncError
from supasync.core.extras import EXTRAS, require
from tests.blocking import block

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
# Extras that are not a runtime feature: tooling, the examples, a PostgreSQL wheel, "everything".
NOT_FEATURES = {"test", "dev", "pgserver", "examples", "all"}


def _name(requirement: str) -> str:
    """The distribution name of a requirement string (``psycopg[binary]>=3.1`` -> psycopg)."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match, requirement
    return match.group(0).lower().replace("_", "-")


def _project() -> dict[str, object]:
    project: dict[str, object] = tomllib.loads(PYPROJECT.read_text())["project"]
    return project


def test_extras_table_matches_pyproject() -> None:
    optional: dict[str, list[str]] = _project()["optional-dependencies"]  # type: ignore[assignment]
    features = {extra: {_name(r) for r in reqs} for extra, reqs in optional.items()
                if extra not in NOT_FEATURES}
    assert features == {extra: set(modules) for extra, modules in EXTRAS.items()}


def test_the_base_install_has_none_of_the_extras_modules() -> None:
    base = {_name(r) for r in _project()["dependencies"]}  # type: ignore[attr-defined]
    heavy = {m for modules in EXTRAS.values() for m in modules}
    assert not base & heavy, f"in [project] dependencies: {sorted(base & heavy)}"


def test_all_brings_every_feature_extra() -> None:
    optional: dict[str, list[str]] = _project()["optional-dependencies"]  # type: ignore[assignment]
    (requirement,) = optional["all"]
    named = re.fullmatch(r"supasync\[([a-z,]+)\]", requirement)
    assert named, requirement
    assert set(named.group(1).split(",")) == set(EXTRAS)


def test_require_returns_an_installed_module() -> None:
    assert require("json", "db", "a test") is sys.modules["json"]


def test_a_missing_module_raises_missing_extra_with_the_pip_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    block(monkeypatch, "psycopg")
    with pytest.raises(MissingExtra) as caught:
        require("psycopg", "db", "supasync sql --apply")
    exc = caught.value
    assert isinstance(exc, SupasyncError) and isinstance(exc, ImportError)
    assert (exc.feature, exc.module, exc.extra) == ("supasync sql --apply", "psycopg", "db")
    assert str(exc).startswith("supasync sql --apply (psycopg is not installed)")
    assert str(exc).endswith("pip install 'supasync[db]'")


def test_a_submodule_of_a_missing_package_names_the_package(
        monkeypatch: pytest.MonkeyPatch) -> None:
    block(monkeypatch, "aiohttp")
    with pytest.raises(MissingExtra, match=r"aiohttp is not installed.*supasync\[stack\]'$"):
        require("aiohttp.web", "stack", "supasync dev")


def _package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, body: str) -> None:
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)


def test_a_missing_dependency_of_an_installed_module_is_not_masked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _package(tmp_path, monkeypatch, "lean_broken_dep", "import lean_no_such_module_xyz\n")
    with pytest.raises(ModuleNotFoundError) as caught:
        require("lean_broken_dep", "db", "a test")
    assert not isinstance(caught.value, MissingExtra)
    assert caught.value.name == "lean_no_such_module_xyz"


def test_an_import_error_inside_an_installed_module_is_not_masked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # psycopg says this when no libpq binding loads: an ImportError without a module name
    _package(tmp_path, monkeypatch, "lean_broken_lib",
             "raise ImportError('no pq wrapper available')\n")
    with pytest.raises(ImportError, match="no pq wrapper available") as caught:
        require("lean_broken_lib", "db", "a test")
    assert not isinstance(caught.value, MissingExtra)


def test_an_unknown_extra_is_a_bug() -> None:
    with pytest.raises(ValueError, match="unknown extra 'dbs'"):
        require("json", "dbs", "a test")
