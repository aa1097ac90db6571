"""The decisions of ``supasync verify``, from hand-made facts (no server)."""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass

import jwt
import pytest

from supasync.core.filters import parse_filter
from supasync.verify.facts import error_text, token_facts
from supasync.verify.model import (
    ALL_EVENTS,
    CheckResult,
    ConnectionFacts,
    JoinFacts,
    Policy,
    ProbeFacts,
    Report,
    TableFacts,
    TokenFacts,
    VisibleRows,
    Want,
    scrub_report,
)
from supasync.verify.probe import filter_mismatch, probe_row_for
from supasync.verify.render import render_json, render_table, summary
from supasync.verify.runner import (
    AdHocSpec,
    check_channels,
    check_columns,
    check_connection,
    check_database,
    check_filter,
    check_join,
    check_primary_key,
    check_probe,
    check_publication,
    check_repair,
    check_replica_identity,
    check_rls,
    check_subscribed,
    check_token,
    cursor_candidates,
    probe_cause,
    want_from_spec,
)

NOW = 1_800_000_000.0
SECRET = "super-secret-jwt-key-for-unit-tests-0123456789"


def want(**kw: object) -> Want:
    base: dict[str, object] = {"name": "todos", "schema": "public", "table": "todos",
                               "events": ALL_EVENTS, "role": "authenticated"}
    base.update(kw)
    return Want(**base)  # type: ignore[arg-type]


def table(**kw: object) -> TableFacts:
    base: dict[str, object] = {
        "schema": "public", "table": "todos", "exists": True,
        "columns": {"id": "int8", "owner": "uuid", "status": "text", "updated_at": "timestamptz"},
        "primary_key": ("id",), "identity_columns": ("id",), "published": True,
        "row_count": 10,
    }
    base.update(kw)
    return TableFacts(**base)  # type: ignore[arg-type]


SUBSCRIBED = JoinFacts(topic="realtime:t", timeout=5, joined=True, subscribed=True,
                       seconds_to_subscribed=0.1)
NOT_PUBLISHED = JoinFacts(
    topic="realtime:t", timeout=5, joined=True,
    system_error="Unable to subscribe to changes with given parameters. Please check Realtime is "
    "enabled for the given connect parameters: [event: *, schema: public, table: todos]")
BAD_COLUMN = JoinFacts(
    topic="realtime:t", timeout=5, joined=True,
    system_error="Unable to subscribe to changes with given parameters. An exception happened so "
    "please check your connect parameters: [...]. Exception: ERROR P0001 (raise_exception) "
    "invalid column for filter nope")


# --------------------------------------------------------------------------- connection, token


def test_connection_ok_and_refusals() -> None:
    assert check_connection(ConnectionFacts("ws://h/realtime/v1", True)).status == "ok"
    bad_key = check_connection(ConnectionFacts("ws://h", False, 401, "Failed to validate JWT"))
    assert bad_key.status == "fail" and "API key" in bad_key.message and bad_key.fix
    assert check_connection(ConnectionFacts("ws://h", False, 404, "Tenant not found")).status \
        == "fail"
    down = check_connection(ConnectionFacts("ws://h", False, None, "ConnectionRefusedError"))
    assert down.status == "fail" and "cannot reach" in down.message


def test_database_states() -> None:
    assert check_database(None).status == "skip"
    assert check_database("").status == "ok"
    assert check_database("OperationalError: refused").status == "fail"


def test_token_expiry() -> None:
    def facts(exp: float) -> TokenFacts:
        return TokenFacts("access token", True, role="authenticated", expires_at=exp)

    assert check_token(facts(NOW + 3600), NOW).status == "ok"
    soon = check_token(facts(NOW + 30), NOW)
    assert soon.status == "warn" and "30 s" in soon.message
    assert soon.details["seconds_to_expiry"] == 30
    gone = check_token(facts(NOW - 10), NOW)
    assert gone.status == "fail" and "expired" in gone.message


def test_token_claims_and_signature() -> None:
    assert check_token(TokenFacts("api key", False), NOW).status == "fail"
    assert check_token(TokenFacts("api key", False, opaque_key=True), NOW).status == "warn"
    missing = TokenFacts("api key", True, expires_at=NOW + 99, missing_claims=("role",))
    assert check_token(missing, NOW).status == "fail"
    forged = TokenFacts("api key", True, role="anon", expires_at=NOW + 9999, signature_ok=False)
    assert check_token(forged, NOW).status == "fail"


def test_token_facts_decodes_without_leaking() -> None:
    token = jwt.encode({"role": "anon", "exp": int(time.time()) + 60}, SECRET, "HS256")
    facts = token_facts("api key", token, SECRET)
    assert facts.role == "anon" and facts.signature_ok is True and facts.is_jwt
    assert token_facts("api key", token, SECRET + "x").signature_ok is False
    assert token_facts("api key", "not-a-jwt", None).is_jwt is False
    assert token_facts("api key", "sb_publishable_abcdef123", None).opaque_key
    no_exp = jwt.encode({"role": "anon"}, SECRET, "HS256")
    assert token_facts("api key", no_exp, SECRET).missing_claims == ("exp",)
    assert token not in repr(facts)


def test_channels_limit() -> None:
    assert check_channels(3).status == "ok"
    assert check_channels(90).status == "warn"
    over = check_channels(101)
    assert over.status == "warn" and "shards" in over.message


# --------------------------------------------------------------------------- join, filter


def test_join_and_subscribed() -> None:
    w = want()
    assert check_join(w, None).status == "skip"
    assert check_join(w, SUBSCRIBED).status == "ok"
    refused = JoinFacts("realtime:t", 5,
                        join_error="InvalidJWTToken: Token has expired 3 seconds ago")
    result = check_join(w, refused)
    assert result.status == "fail" and "token" in result.fix
    assert check_join(w, JoinFacts("realtime:t", 5)).status == "fail"
    assert check_subscribed(w, SUBSCRIBED).status == "ok"
    assert check_subscribed(w, refused).status == "skip"
    never = check_subscribed(w, JoinFacts("realtime:t", 5, joined=True))
    assert never.status == "fail" and "Subscribed to PostgreSQL" in never.message
    unpublished = check_subscribed(w, NOT_PUBLISHED)
    assert unpublished.status == "fail" and "alter publication" in unpublished.fix


def test_filter_checks() -> None:
    assert check_filter(want(), SUBSCRIBED).message == "no filter"
    simple = want(filter_text="status=eq.open", filter_columns=frozenset({"status"}))
    assert check_filter(simple, SUBSCRIBED).status == "ok"
    rejected = check_filter(simple, BAD_COLUMN)
    assert rejected.status == "fail" and "rejected the filter" in rejected.message
    modern = want(filter_text="status=eq.open,owner=not.is.null", legacy_compatible=False)
    legacy = check_filter(modern, SUBSCRIBED)
    assert legacy.status == "warn" and "older" in legacy.message
    # an unpublished table is not the filter's fault
    assert check_filter(simple, NOT_PUBLISHED).status == "skip"


def test_want_from_spec_with_real_filter() -> None:
    spec = AdHocSpec(name="t", schema="public", table="todos", events=frozenset({"*"}),
                     filter=parse_filter("status=eq.open,id=gt.3"))
    w = want_from_spec(spec, "anon")
    assert w.events == ALL_EVENTS and w.filter_columns == {"status", "id"}
    assert not w.legacy_compatible and w.filter_text == "status=eq.open,id=gt.3"
    one = AdHocSpec(name="t", schema="public", table="todos", events=frozenset({"delete"}),
                    filter=parse_filter(""))
    w1 = want_from_spec(one, None)
    assert w1.events == {"DELETE"} and w1.filter_text == "" and w1.legacy_compatible


# --------------------------------------------------------------------------- catalog


def test_columns() -> None:
    w = want(filter_text="status=eq.open", filter_columns=frozenset({"status"}),
             cursor_column="updated_at")
    assert check_columns(w, table(), None).status == "ok"
    missing = check_columns(want(filter_columns=frozenset({"nope"})), table(), None)
    assert missing.status == "fail" and "nope" in missing.message
    assert check_columns(w, table(exists=False), None).status == "fail"
    assert check_columns(w, None, None).status == "skip"
    assert check_columns(w, None, SUBSCRIBED).status == "ok"


def test_publication() -> None:
    w = want()
    assert check_publication(w, table(), None).status == "ok"
    out = check_publication(w, table(published=False), SUBSCRIBED)
    assert out.status == "fail" and "add table public.todos" in out.fix
    assert check_publication(w, table(publication_exists=False), None).status == "fail"
    no_delete = check_publication(w, table(published_actions=frozenset({"INSERT", "UPDATE"})),
                                  None)
    assert no_delete.status == "fail" and "DELETE" in no_delete.message
    assert check_publication(w, None, NOT_PUBLISHED).status == "fail"
    assert check_publication(w, None, SUBSCRIBED).status == "ok"
    assert check_publication(w, None, None).status == "skip"


def test_primary_key() -> None:
    assert check_primary_key(want(), table()).status == "ok"
    nopk = check_primary_key(want(), table(primary_key=(), identity_columns=()))
    assert nopk.status == "fail" and "Error 400" in nopk.message
    assert check_primary_key(want(primary_key=("owner",)), table()).status == "warn"
    assert check_primary_key(want(), None).status == "skip"


def test_replica_identity() -> None:
    on_status = dict(filter_text="status=eq.open", filter_columns=frozenset({"status"}))
    deletes = check_replica_identity(want(**on_status), table())
    assert deletes.status == "warn" and "matches deletes locally by key" in deletes.message
    assert "replica identity full" in deletes.fix
    assert check_replica_identity(want(**on_status), table(replica_identity="full")).status == "ok"
    # a DELETE filter on the key is fine under DEFAULT
    on_id = want(filter_text="id=eq.1", filter_columns=frozenset({"id"}))
    assert check_replica_identity(on_id, table()).status == "ok"
    # no DELETE events: the filter does not matter
    inserts = want(events=frozenset({"INSERT"}), **on_status)
    assert check_replica_identity(inserts, table()).status == "ok"
    nothing = check_replica_identity(want(), table(replica_identity="nothing"))
    assert nothing.status == "fail"
    assert check_replica_identity(want(events=frozenset({"INSERT"})),
                                  table(replica_identity="nothing")).status == "ok"
    nokey = check_replica_identity(want(), table(primary_key=(), identity_columns=()))
    assert nokey.status == "fail"
    updates = check_replica_identity(want(events=frozenset({"UPDATE"})), table())
    assert updates.status == "ok" and "old values" in updates.message
    assert check_replica_identity(want(), None).status == "skip"


def test_rls() -> None:
    w = want()
    select_policy = Policy("read own", "SELECT", ("authenticated",), True, True)
    other_role = Policy("admins", "SELECT", ("service_role",), True, False)
    insert_only = Policy("write", "INSERT", ("authenticated",), True, True)
    assert check_rls(w, table(), VisibleRows(10, True)).status == "ok"
    hidden = check_rls(w, table(rls_enabled=True, policies=(other_role, insert_only)),
                       VisibleRows(0, False))
    assert hidden.status == "fail" and "no SELECT policy" in hidden.message
    assert "create policy" in hidden.fix
    zero = check_rls(w, table(rls_enabled=True, policies=(select_policy,)), VisibleRows(0, False))
    assert zero.status == "warn" and "hide all 10 rows" in zero.message
    some = check_rls(w, table(rls_enabled=True, policies=(select_policy,)), VisibleRows(4, True))
    assert some.status == "ok" and "4 of 10" in some.message
    assert check_rls(w, table(rls_enabled=True, role_bypasses_rls=True), None).status == "ok"
    assert check_rls(w, table(role_can_select=False), None).status == "fail"
    assert check_rls(w, table(role_exists=False), None).status == "fail"
    assert check_rls(want(role=None), table(), None).status == "warn"
    # no database: REST alone
    assert check_rls(w, None, VisibleRows(0, False)).status == "warn"
    assert check_rls(w, None, VisibleRows(3, True)).status == "ok"
    assert check_rls(w, None, None).status == "skip"


def test_repair() -> None:
    assert cursor_candidates(table()) == ["updated_at"]
    assert cursor_candidates(table(columns={"id": "int8", "updated_at": "text"})) == []
    auto = check_repair(want(), table(exact_installed=True))
    assert auto.status == "ok" and auto.details["mode"] == "exact"
    # updated_at alone (a default, no trigger) is not a cursor auto trusts (issue #13).
    unverified = check_repair(want(), table())
    assert unverified.details["mode"] == "diff"
    assert unverified.message.startswith(
        "auto -> diff: no change log installed and updated_at is not bumped by a supasync "
        "trigger")
    assert "--touch updated_at" in (unverified.fix or "")
    touched = table(update_triggers=("supasync_touch",), cursor_touched=frozenset({"updated_at"}))
    cursor = check_repair(want(), touched)
    assert cursor.details["mode"] == "cursor" and cursor.message.startswith(
        "auto -> cursor on updated_at")
    # supasync's bookkeeping without its trigger (dropped by hand) is not trusted.
    dropped = check_repair(want(), table(cursor_touched=frozenset({"updated_at"})))
    assert dropped.details["mode"] == "diff"
    diff = check_repair(want(), table(columns={"id": "int8"}))
    assert diff.details["mode"] == "diff" and diff.fix
    assert check_repair(want(repair="exact"), table()).status == "fail"
    assert check_repair(want(repair="exact"), table(exact_installed=True)).status == "ok"
    assert check_repair(want(repair="cursor"), table(columns={"id": "int8"})).status == "fail"
    # An explicit cursor column that no trigger bumps: a warning, saying what is lost.
    bare = check_repair(want(repair="cursor", cursor_column="status"), table())
    assert bare.status == "warn" and "no trigger bumps it" in bare.message
    assert "--touch status" in (bare.fix or "")
    other = check_repair(want(repair="cursor"), table(update_triggers=("my_touch",)))
    assert other.status == "ok" and "my_touch" in other.message
    assert check_repair(want(repair="cursor"), touched).status == "ok"
    assert check_repair(want(repair="off"), table()).status == "warn"
    assert check_repair(want(), None).status == "skip"
    assert check_repair(want(repair="exact"), None).status == "warn"


# --------------------------------------------------------------------------- probe


def _r(name: str, status: str) -> CheckResult:
    return CheckResult(name, status, "")  # type: ignore[arg-type]


def test_probe_cause_order() -> None:
    fine = [_r("publication", "ok"), _r("subscribed", "ok"), _r("filter", "ok"), _r("rls", "ok"),
            _r("replica_identity", "ok"), _r("primary_key", "ok")]
    assert probe_cause("INSERT", fine, None)[0].startswith("unknown")
    assert "not published" in probe_cause("INSERT", [*fine, _r("publication", "fail")], None)[0]
    assert "RLS" in probe_cause("INSERT", [_r("rls", "fail")], None)[0]
    assert "RLS" in probe_cause("INSERT", [_r("rls", "warn")], None)[0]
    assert "match the filter" in probe_cause("INSERT", fine, "status='x' fails status=eq.open")[0]
    identity = [_r("replica_identity", "warn"), _r("rls", "ok")]
    assert "replica identity" in probe_cause("DELETE", identity, None)[0]
    assert probe_cause("INSERT", identity, None)[0].startswith("unknown")
    assert "not checked" in probe_cause("INSERT", [_r("rls", "skip")], None)[0]


def test_check_probe() -> None:
    ok = check_probe(ProbeFacts("INSERT", wrote=True, received=True, latency_ms=42.4,
                                roundtrip_ms=50.0), [], None, 5)
    assert ok.status == "ok" and ok.details["latency_ms"] == 42.4 and "42 ms" in ok.message
    lost = check_probe(ProbeFacts("INSERT", wrote=True), [_r("rls", "fail")], None, 5)
    assert lost.status == "fail" and "RLS" in lost.message and lost.details["cause"]
    assert check_probe(ProbeFacts("INSERT", write_error="HTTP 400"), [], None, 5).status == "fail"
    # asked for and could not run: a failure, not a skip (a CI job with --probe must not pass)
    assert check_probe(ProbeFacts("INSERT", skipped_reason="x"), [], None, 5).status == "fail"
    dirty = ProbeFacts("INSERT", wrote=True, received=True, latency_ms=1, cleanup_error="HTTP 500")
    assert check_probe(dirty, [], None, 5).status == "warn"


def test_probe_that_cannot_run_fails_naming_the_required_columns() -> None:
    facts = ProbeFacts("INSERT", skipped_reason="the table has required columns without "
                       "defaults (status, title)", missing_columns=("status", "title"))
    result = check_probe(facts, [], None, 5)
    assert result.status == "fail"
    assert "could not run" in result.message
    assert result.fix is not None
    assert """--probe-row '{"status": value, "title": value, ...}'""" in result.fix
    assert result.details["missing_columns"] == ["status", "title"]


def test_probe_rows_from_filters() -> None:
    w = want(filter_obj=parse_filter("status=eq.open,kind=in.(a,b),gone=is.null,n=gt.3"))
    assert probe_row_for(w) == {"status": "open", "kind": "a", "gone": None}
    assert filter_mismatch(w, {"status": "open", "kind": "b"}) is None
    mismatch = filter_mismatch(w, {"status": "closed"})
    assert mismatch is not None and "status" in mismatch
    assert probe_row_for(want()) == {}


def test_error_text_reads_realtime_py_errors() -> None:
    system = Exception(json.dumps({"extension": "postgres_changes", "status": "error",
                                   "message": "Error parsing `filter` params", "channel": "x"}))
    assert error_text(system) == "Error parsing `filter` params"
    assert error_text(Exception(json.dumps({"reason": "Unauthorized: nope"}))) == \
        "Unauthorized: nope"
    assert error_text(Exception("mismatch between server and client bindings")).startswith(
        "mismatch")
    assert error_text(None) == "unknown error"


# --------------------------------------------------------------------------- report, rendering


def test_report_exit_codes_and_rendering() -> None:
    passing = Report((_r("connection", "ok"), _r("token:api_key", "warn")))
    assert passing.exit_code == 0 and passing.ok
    failing = Report((_r("connection", "ok"),
                      CheckResult("rls", "fail", "hidden", "add a policy", subscription="todos")))
    assert failing.exit_code == 1
    assert failing.get("rls", "todos").fix == "add a policy"
    out = io.StringIO()
    render_json(failing, out)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["check"] for line in lines] == ["connection", "rls"]
    assert lines[1] == {"subscription": "todos", "check": "rls", "status": "fail",
                        "message": "hidden", "fix": "add a policy", "details": {}}
    assert summary(failing).startswith("FAILED")
    from rich.console import Console

    console = Console(file=io.StringIO(), width=120)
    render_table(failing, console)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "subscription todos" in text and "add a policy" in text


def test_scrub_removes_secrets_everywhere() -> None:
    token = jwt.encode({"role": "anon", "exp": 2_000_000_000}, SECRET, "HS256")
    dsn = "postgresql://postgres:hunter2-password@127.0.0.1:5432/postgres"
    leaky = Report((CheckResult("x", "fail", f"bad {token}", f"use {SECRET}",
                                {"nested": [f"{dsn}"], "pw": "hunter2-password"}),))
    clean = scrub_report(leaky, [token, SECRET, dsn, "hunter2-password"])
    out = io.StringIO()
    render_json(clean, out)
    for secret in (token, SECRET, "hunter2-password"):
        assert secret not in out.getvalue()


@dataclass
class _Spec:
    name: str = "s"
    schema: str = "public"
    table: str = "t"
    events: frozenset[str] = frozenset({"INSERT", "UPDATE"})
    filter: object = None
    columns: tuple[str, ...] | None = None
    primary_key: tuple[str, ...] | None = None
    repair: str = "auto"
    cursor_column: str | None = None


@pytest.mark.parametrize("events,expected", [
    (frozenset({"INSERT", "UPDATE"}), {"INSERT", "UPDATE"}),
    (frozenset({"*"}), set(ALL_EVENTS)),
    (frozenset(), set(ALL_EVENTS)),
])
def test_want_events(events: frozenset[str], expected: set[str]) -> None:
    assert want_from_spec(_Spec(events=events), None).events == expected
