"""``supasync verify`` against the local stack: each check made to pass, and made to fail or warn.

Every test uses its own table, so tests do not see each other's rows. The probe measures real
latency; the tests only report it (printed) and check the event arrived.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supasync.client.config import Settings, load_settings
from supasync.core.filters import parse_filter
from supasync.devstack.testing import StackProcess
from supasync.verify.runner import AdHocSpec, Report, verify

pytestmark = pytest.mark.integration

TIMEOUT = 10.0
_n = itertools.count(1)


def settings_for(stack: StackProcess, *, anon_key: str | None = None,
                 access_token: str | None = None, db_url: str | None = "",
                 ) -> Settings:
    """Settings as the application would load them: the anon identity (or *access_token*),
    the JWT secret only to check signatures, and the database URL unless ``db_url=None``."""
    env = {
        "SUPABASE_URL": stack.url, "SUPABASE_ANON_KEY": anon_key or stack.anon_key,
        "SUPABASE_SERVICE_ROLE_KEY": stack.service_role_key,
        "SUPABASE_JWT_SECRET": stack.jwt_secret,
        "SUPASYNC_TOKEN_SOURCE": "access_token" if access_token else "anon",
    }
    if access_token:
        env["SUPABASE_ACCESS_TOKEN"] = access_token
    if db_url is not None:
        env["SUPABASE_DB_URL"] = db_url or stack.db_url
    return load_settings(env, env_file=None, toml_path=None)


@pytest.fixture(scope="module")
def supabase_stack() -> Iterator[StackProcess]:
    """A stack of this module's own. Its data directory must be reachable by the `postgres`
    user the cluster runs as when the tests run as root (mkdtemp makes 0700 directories)."""
    data_dir = tempfile.mkdtemp(prefix="supasync-verify-test-")
    os.chmod(data_dir, 0o755)
    stack = StackProcess(data_dir=data_dir)
    stack.start()
    try:
        yield stack
    finally:
        stack.close()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def make_table(supabase_stack: StackProcess) -> Iterator[Any]:
    """``make_table(columns_sql, publish=True)`` -> a fresh table name in public."""
    made: list[str] = []

    def make(columns: str = "id bigint generated always as identity primary key, "
             "status text not null default 'open', owner uuid, updated_at timestamptz "
             "not null default now()", *, publish: bool = True, rows: int = 2) -> str:
        name = f"verify_t{next(_n)}_{uuid.uuid4().hex[:6]}"
        supabase_stack.sql(f"create table public.{name} ({columns})")
        made.append(name)
        for _ in range(rows):
            supabase_stack.sql(f"insert into public.{name} default values")
        if publish:
            supabase_stack.sql(f"alter publication supabase_realtime add table public.{name}")
        return name

    yield make
    for name in made:
        supabase_stack.sql(f"drop table if exists public.{name}")


def spec(table: str, *, filter: str = "", events: str = "*", **kw: Any) -> AdHocSpec:
    evs = frozenset(e.strip().upper() for e in events.split(","))
    return AdHocSpec(name=table, schema="public", table=table, events=evs,
                     filter=parse_filter(filter), **kw)


async def run(stack: StackProcess, *specs: AdHocSpec, probe: bool = False,
              **settings: Any) -> Report:
    return await verify(settings_for(stack, **settings), list(specs), probe=probe,
                        timeout=TIMEOUT)


def status(report: Report, check: str, sub: str | None = None) -> str:
    return report.get(check, sub).status


# --------------------------------------------------------------------------- the happy path


async def test_everything_passes_and_probe_reports_latency(
        supabase_stack: StackProcess, make_table: Any) -> None:
    t = make_table()
    report = await run(supabase_stack, spec(t, filter="status=eq.open"), probe=True)
    bad = [c for c in report.checks if c.status in ("fail", "warn")]
    # DELETE with a filter on a non-key column is the one expected warning here
    assert [(c.name, c.status) for c in bad] == [("replica_identity", "warn")], bad
    for check in ("connection", "database", "token:api_key", "channels"):
        assert status(report, check) == "ok"
    for check in ("join", "subscribed", "filter", "columns", "publication", "primary_key",
                  "rls", "repair", "probe"):
        assert status(report, check, t) == "ok", report.get(check, t)
    probe = report.get("probe", t)
    assert probe.details["op"] == "INSERT" and probe.details["latency_ms"] >= 0
    print(f"\nprobe commit-to-event latency: {probe.details['latency_ms']} ms "
          f"(write-to-event {probe.details['write_to_event_ms']} ms)")
    assert report.exit_code == 0
    # the probe row was cleaned up
    assert supabase_stack.sql(f"select count(*) from public.{t}") == [(2,)]


# --------------------------------------------------------------------------- connection, token


async def test_bad_key_fails_the_connection(supabase_stack: StackProcess, make_table: Any) -> None:
    t = make_table()
    forged = _forge({"role": "anon"})
    report = await run(supabase_stack, spec(t), anon_key=forged)
    assert status(report, "connection") == "fail"
    assert report.get("connection").details.get("http_status") == 401
    assert status(report, "token:api_key") == "fail"  # not signed with the project's secret
    assert status(report, "join", t) == "skip"
    assert report.exit_code == 1


def _forge(claims: dict[str, Any]) -> str:
    import time

    import jwt

    return jwt.encode({**claims, "exp": int(time.time()) + 3600}, "not-the-secret" * 4, "HS256")


async def test_token_expiring_soon_warns(supabase_stack: StackProcess, make_table: Any) -> None:
    t = make_table()
    soon = supabase_stack.mint({"role": "authenticated",
                                "sub": "6f1e0000-0000-0000-0000-0000000000aa"}, expires_in=30)
    report = await run(supabase_stack, spec(t, events="INSERT"), access_token=soon)
    token = report.get("token:access_token")
    assert token.status == "warn" and 0 < token.details["seconds_to_expiry"] <= 30
    assert status(report, "subscribed", t) == "ok"
    long = supabase_stack.mint({"role": "authenticated"}, expires_in=3600)
    ok = await run(supabase_stack, spec(t, events="INSERT"), access_token=long)
    assert status(ok, "token:access_token") == "ok"


async def test_expired_token_fails(supabase_stack: StackProcess, make_table: Any) -> None:
    t = make_table()
    expired = supabase_stack.mint({"role": "authenticated"}, expires_in=-60)
    report = await run(supabase_stack, spec(t, events="INSERT"), access_token=expired)
    assert status(report, "token:access_token") == "fail"
    assert "expired" in report.get("token:access_token").message
    assert status(report, "join", t) == "fail"  # the server refuses a join with it
    assert report.exit_code == 1


async def test_database_check(supabase_stack: StackProcess, make_table: Any) -> None:
    t = make_table()
    without = await run(supabase_stack, spec(t), db_url=None)
    assert status(without, "database") == "skip"
    assert status(without, "replica_identity", t) == "skip"
    assert status(without, "publication", t) == "ok"  # the server subscribed
    broken = await run(supabase_stack, spec(t),
                       db_url="postgresql://nobody:wrong@127.0.0.1:1/none")
    assert status(broken, "database") == "fail"


# --------------------------------------------------------------------------- subscription checks


async def test_unpublished_table(supabase_stack: StackProcess, make_table: Any) -> None:
    t = make_table(publish=False)
    report = await run(supabase_stack, spec(t), probe=True)
    assert status(report, "join", t) == "ok"
    assert status(report, "publication", t) == "fail"
    assert "alter publication supabase_realtime add table" in report.get("publication", t).fix
    assert status(report, "subscribed", t) == "fail"
    # the probe was asked for and could not run: a failure too (not a silent skip)
    assert status(report, "probe", t) == "fail"
    assert "could not run" in report.get("probe", t).message
    assert report.exit_code == 1


async def test_filter_rejected_by_server(supabase_stack: StackProcess, make_table: Any) -> None:
    t = make_table()
    report = await run(supabase_stack, spec(t, filter="nope=eq.1"))
    assert status(report, "join", t) == "ok"  # the join succeeds, then the server refuses
    assert status(report, "filter", t) == "fail"
    assert status(report, "subscribed", t) == "fail"
    assert status(report, "columns", t) == "fail"
    assert "nope" in report.get("columns", t).message


async def test_filter_for_new_servers_only_warns(supabase_stack: StackProcess,
                                                 make_table: Any) -> None:
    t = make_table()
    report = await run(supabase_stack, spec(t, events="INSERT", filter="status=eq.open,id=gt.0"))
    assert status(report, "subscribed", t) == "ok"
    assert status(report, "filter", t) == "warn"
    assert report.exit_code == 0


async def test_missing_primary_key(supabase_stack: StackProcess, make_table: Any) -> None:
    t = make_table("id bigint, status text default 'open'")
    report = await run(supabase_stack, spec(t, events="INSERT"))
    assert status(report, "primary_key", t) == "fail"
    keyed = make_table()
    assert status(await run(supabase_stack, spec(keyed)), "primary_key", keyed) == "ok"


async def test_replica_identity_and_delete_filters(supabase_stack: StackProcess,
                                                   make_table: Any) -> None:
    t = make_table()
    report = await run(supabase_stack, spec(t, events="DELETE", filter="status=eq.open"))
    result = report.get("replica_identity", t)
    assert result.status == "warn" and "locally by key" in result.message
    supabase_stack.sql(f"alter table public.{t} replica identity full")
    report = await run(supabase_stack, spec(t, events="DELETE", filter="status=eq.open"))
    assert status(report, "replica_identity", t) == "ok"
    supabase_stack.sql(f"alter table public.{t} replica identity nothing")
    report = await run(supabase_stack, spec(t, events="UPDATE"))
    assert status(report, "replica_identity", t) == "fail"


async def test_rls_without_policy_fails_and_probe_blames_rls(
        supabase_stack: StackProcess, make_table: Any) -> None:
    t = make_table()
    supabase_stack.sql(f"alter table public.{t} enable row level security")
    report = await run(supabase_stack, spec(t, events="INSERT"), probe=True)
    assert status(report, "rls", t) == "fail"
    assert "no SELECT policy" in report.get("rls", t).message
    probe = report.get("probe", t)
    assert probe.status == "fail" and "RLS" in probe.message
    assert supabase_stack.sql(f"select count(*) from public.{t}") == [(2,)]  # cleaned up


async def test_rls_policy_hiding_every_row_warns(supabase_stack: StackProcess,
                                                 make_table: Any) -> None:
    t = make_table()
    supabase_stack.sql(f"alter table public.{t} enable row level security")
    supabase_stack.sql(f"create policy nobody on public.{t} for select to anon using (false)")
    report = await run(supabase_stack, spec(t, events="INSERT"))
    result = report.get("rls", t)
    assert result.status == "warn" and result.details["visible_rows"] == 0
    supabase_stack.sql(f"create policy everyone on public.{t} for select to anon using (true)")
    report = await run(supabase_stack, spec(t, events="INSERT"))
    assert status(report, "rls", t) == "ok"


async def test_repair_modes(supabase_stack: StackProcess, make_table: Any) -> None:
    from supasync.repair import sqlinstall

    t = make_table()
    auto = (await run(supabase_stack, spec(t))).get("repair", t)
    assert auto.details["mode"] == "diff"
    assert auto.message.startswith("auto -> diff: no change log installed and updated_at is "
                                   "not bumped by a supasync trigger")
    exact = await run(supabase_stack, spec(t, repair="exact"))
    assert status(exact, "repair", t) == "fail"
    sqlinstall.apply(supabase_stack.db_url, [f"public.{t}"])
    try:
        exact = await run(supabase_stack, spec(t, repair="exact"))
        assert status(exact, "repair", t) == "ok"
    finally:
        sqlinstall.uninstall(supabase_stack.db_url)
    # updated_at with only a default: cursor mode asked for is a warning (issue #13) ...
    cursor = (await run(supabase_stack, spec(t, repair="cursor"))).get("repair", t)
    assert cursor.status == "warn" and "no trigger bumps it" in cursor.message
    # ... and once supasync's trigger bumps it, auto trusts it and cursor mode is fine.
    sqlinstall.apply(supabase_stack.db_url, [f"public.{t}"], touch="updated_at", log=False)
    try:
        auto = (await run(supabase_stack, spec(t))).get("repair", t)
        assert auto.details["mode"] == "cursor" and auto.message.startswith(
            "auto -> cursor on updated_at")
        assert status(await run(supabase_stack, spec(t, repair="cursor")), "repair", t) == "ok"
    finally:
        sqlinstall.uninstall(supabase_stack.db_url)
    bare = make_table("id bigint primary key", rows=0)
    diff = await run(supabase_stack, spec(bare))
    assert diff.get("repair", bare).details["mode"] == "diff"


async def test_probe_with_a_given_row_and_update_events(supabase_stack: StackProcess,
                                                        make_table: Any) -> None:
    t = make_table("id bigint primary key, status text not null", rows=0)
    report = await verify(settings_for(supabase_stack), [spec(t, events="UPDATE")], probe=True,
                          timeout=TIMEOUT, probe_rows={"*": {"id": 4242, "status": "open"}})
    probe = report.get("probe", t)
    assert probe.status == "ok" and probe.details["op"] == "UPDATE", probe
    assert supabase_stack.sql(f"select count(*) from public.{t} where id = 4242") == [(0,)]
    # without a row, required columns make the probe fail (it was asked for), with a fix
    skipped = await run(supabase_stack, spec(t, events="INSERT"), probe=True)
    assert status(skipped, "probe", t) == "fail"
    assert skipped.exit_code == 1
    fix = skipped.get("probe", t).fix or ""
    assert "--probe-row" in fix and "status" in fix


# --------------------------------------------------------------------------- the command line


def _cli(stack: StackProcess, *args: str, env: dict[str, str] | None = None,
         cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SUPABASE_")}
    full_env.update({
        "SUPABASE_URL": stack.url, "SUPABASE_ANON_KEY": stack.anon_key,
        "SUPABASE_SERVICE_ROLE_KEY": stack.service_role_key,
        "SUPABASE_JWT_SECRET": stack.jwt_secret, "SUPABASE_DB_URL": stack.db_url,
    })
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "supasync.cli", "verify", *args], env=full_env,
                          cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def _secrets(stack: StackProcess) -> list[str]:
    from urllib.parse import urlsplit

    password = urlsplit(stack.db_url).password
    return [s for s in (stack.anon_key, stack.service_role_key, stack.jwt_secret, stack.db_url,
                        password) if s]


def test_exit_codes_and_no_secrets_in_output(supabase_stack: StackProcess, make_table: Any,
                                             tmp_path: Path) -> None:
    t = make_table()
    passing = _cli(supabase_stack, "--table", t, "--events", "INSERT", "--json", "--probe",
                   cwd=tmp_path)
    assert passing.returncode == 0, passing.stdout + passing.stderr
    lines = [json.loads(line) for line in passing.stdout.splitlines()]
    assert {line["check"] for line in lines} >= {"connection", "subscribed", "rls", "probe"}
    assert all(set(line) == {"subscription", "check", "status", "message", "fix", "details"}
               for line in lines)

    u = make_table(publish=False)
    failing = _cli(supabase_stack, "--table", u, cwd=tmp_path)
    assert failing.returncode == 1, failing.stdout + failing.stderr
    assert "publication" in failing.stdout and "FAIL" in failing.stdout

    bad_filter = _cli(supabase_stack, "--table", t, "--filter", "status=eqq.open",
                      cwd=tmp_path)
    assert bad_filter.returncode == 2 and "configuration error" in bad_filter.stderr
    assert "eqq" in bad_filter.stderr
    no_subs = _cli(supabase_stack, cwd=tmp_path)
    assert no_subs.returncode == 2

    for result in (passing, failing, bad_filter, no_subs):
        for secret in _secrets(supabase_stack):
            assert secret not in result.stdout and secret not in result.stderr


def test_cli_probe_that_cannot_run_fails(supabase_stack: StackProcess, make_table: Any,
                                        tmp_path: Path) -> None:
    """`verify --probe` on a table with required columns and no --probe-row: exit 1, and the
    JSON on stdout (nothing else there) names the columns and the --probe-row fix."""
    t = make_table("id bigint primary key, status text not null", rows=0)
    result = _cli(supabase_stack, "--table", t, "--events", "INSERT", "--probe", "--json",
                  "--log-level", "INFO", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    probe = next(line for line in lines if line["check"] == "probe")
    assert probe["status"] == "fail"
    assert "--probe-row" in probe["fix"] and '"id": value' in probe["fix"]
    assert '"status": value' in probe["fix"]
    assert "HTTP Request" not in result.stderr


def test_scripts_verify_runs_the_command(supabase_stack: StackProcess, make_table: Any,
                                         tmp_path: Path) -> None:
    t = make_table()
    script = Path(__file__).resolve().parents[2] / "scripts" / "verify"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPABASE_")}
    env.update({"SUPABASE_URL": supabase_stack.url, "SUPABASE_ANON_KEY": supabase_stack.anon_key,
                "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}"})
    result = subprocess.run(["bash", str(script), "--table", t, "--events", "INSERT", "--json"],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert any(json.loads(line)["check"] == "subscribed" for line in result.stdout.splitlines())


def test_cli_checks_the_subscriptions_of_supasync_toml(supabase_stack: StackProcess,
                                                       make_table: Any, tmp_path: Path) -> None:
    good, bad = make_table(), make_table(publish=False)
    (tmp_path / "supasync.toml").write_text(
        f'[[subscription]]\nname = "good"\ntable = "{good}"\nevents = ["INSERT"]\n\n'
        f'[[subscription]]\nname = "bad"\ntable = "{bad}"\n')
    result = _cli(supabase_stack, "--json", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    found = {(line["subscription"], line["check"]): line["status"]
             for line in map(json.loads, result.stdout.splitlines())}
    assert found[("good", "subscribed")] == "ok" and found[("good", "publication")] == "ok"
    assert found[("bad", "publication")] == "fail" and found[(None, "channels")] == "ok"
    # a broken supasync.toml is a configuration error
    (tmp_path / "supasync.toml").write_text('[[subscription]]\ntable = "x"\nrepair = "sometimes"\n')
    assert _cli(supabase_stack, cwd=tmp_path).returncode == 2


async def test_channel_count_near_the_limit_warns(supabase_stack: StackProcess,
                                                  make_table: Any) -> None:
    t = make_table()
    specs = [dataclasses.replace(spec(t, events="INSERT"), name=f"{t}-{i}") for i in range(81)]
    report = await run(supabase_stack, *specs)
    assert status(report, "channels") == "warn"
    assert report.get("channels").details["subscriptions"] == 81
    assert all(status(report, "subscribed", s.name) == "ok" for s in specs)


async def test_probe_row_outside_the_filter_is_named_as_the_cause(
        supabase_stack: StackProcess, make_table: Any) -> None:
    t = make_table()
    report = await verify(settings_for(supabase_stack),
                          [spec(t, events="INSERT", filter="status=eq.open")], probe=True,
                          timeout=2.0, probe_rows={t: {"status": "closed"}})
    probe = report.get("probe", t)
    assert probe.status == "fail" and "does not match the filter" in probe.message, probe
    assert supabase_stack.sql(f"select count(*) from public.{t}") == [(2,)]  # cleaned up
    # the row as the database wrote it is judged too (here: its generated id)
    report = await verify(settings_for(supabase_stack),
                          [spec(t, events="INSERT", filter="id=gt.1000000")], probe=True,
                          timeout=2.0)
    probe = report.get("probe", t)
    assert probe.status == "fail" and "does not match the filter" in probe.message, probe


async def test_unknown_role_in_token(supabase_stack: StackProcess, make_table: Any) -> None:
    t = make_table()
    stranger = supabase_stack.mint({"role": "nobody_here"}, expires_in=3600)
    report = await run(supabase_stack, spec(t, events="INSERT"), access_token=stranger)
    assert status(report, "rls", t) == "fail"
    assert "does not exist" in report.get("rls", t).message
    assert status(report, "subscribed", t) in ("fail", "skip")
    assert report.exit_code == 1
