"""``supasync verify`` without the database driver (a lean ``pip install supasync``): the
catalog checks are skipped and say what to install; a probe that must write over the database
fails up front with the pip line instead of passing or writing as someone else."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from supasync.cli.app import main
from supasync.core.errors import MissingExtra
from supasync.verify import facts as facts_mod
from supasync.verify.checks import check_database
from supasync.verify.model import ConnectionFacts, Want
from supasync.verify.probe import require_driver, writes_over_database
from supasync.verify.runner import verify
from tests.blocking import block

DB_URL = "postgresql://postgres:pw@127.0.0.1:1/postgres"


def _missing() -> MissingExtra:
    return MissingExtra("verify's catalog checks", "psycopg", "db")


def test_database_check_skips_naming_the_pip_line_when_the_driver_is_missing() -> None:
    result = check_database(None, _missing())
    assert result.status == "skip"
    assert "psycopg is not installed" in result.message
    assert "catalog checks were skipped" in result.message
    assert result.fix is not None and "pip install 'supasync[db]'" in result.fix


async def test_catalog_facts_without_psycopg_record_the_missing_driver(
        monkeypatch: pytest.MonkeyPatch) -> None:
    block(monkeypatch, "psycopg")
    facts = facts_mod.Facts(connection=ConnectionFacts("ws://x", False, None, "not tried"))
    want = Want(name="todos", schema="public", table="todos", events=frozenset({"INSERT"}))
    await facts_mod._tables(DB_URL, [want], "authenticated", 1.0, facts)
    assert facts.tables == {}
    assert facts.database is None  # not "connected", not a connection error
    assert isinstance(facts.driver_missing, MissingExtra)
    assert facts.driver_missing.install == "pip install 'supasync[db]'"


def _settings(**kw: str | None) -> SimpleNamespace:
    base: dict[str, str | None] = {"url": "http://127.0.0.1:1", "anon_key": "anon",
                                   "service_role_key": None, "db_url": DB_URL}
    return SimpleNamespace(**{**base, **kw})


def test_the_probe_writes_over_the_database_only_without_a_service_role_key() -> None:
    assert writes_over_database(_settings())
    assert not writes_over_database(_settings(service_role_key="service"))
    assert not writes_over_database(_settings(db_url=None))


def test_a_probe_over_the_database_needs_psycopg(monkeypatch: pytest.MonkeyPatch) -> None:
    block(monkeypatch, "psycopg")
    with pytest.raises(MissingExtra, match=r"--probe.*pip install 'supasync\[db\]'$"):
        require_driver(_settings())
    require_driver(_settings(service_role_key="service"))  # writes over PostgREST: no driver


async def test_verify_with_probe_fails_before_connecting_without_psycopg(
        monkeypatch: pytest.MonkeyPatch) -> None:
    block(monkeypatch, "psycopg")

    async def no_gather(*args: object, **kwargs: object) -> None:
        raise AssertionError("verify went on without the driver its probe needs")

    monkeypatch.setattr("supasync.verify.runner.gather", no_gather)
    with pytest.raises(MissingExtra, match=r"pip install 'supasync\[db\]'$"):
        await verify(_settings(), [], probe=True)


def test_verify_command_with_probe_exits_2_with_the_pip_line(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    block(monkeypatch, "psycopg")
    monkeypatch.chdir(tmp_path)
    for name in ("SUPABASE_SERVICE_ROLE_KEY", "SUPABASE_ACCESS_TOKEN", "SUPABASE_JWT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SUPABASE_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("SUPABASE_ANON_KEY", "anon")
    monkeypatch.setenv("SUPABASE_DB_URL", DB_URL)
    with pytest.raises(SystemExit) as exited:
        main(["verify", "--table", "todos", "--probe", "--timeout", "1"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.rstrip().endswith("pip install 'supasync[db]'"), err
