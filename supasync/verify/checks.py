"""The decisions of ``supasync verify``: one small pure function per check.

Each ``check_*`` takes facts (:mod:`supasync.verify.model`, gathered by
:mod:`supasync.verify.facts`) and returns one :class:`~supasync.verify.model.CheckResult`:
``ok``, ``warn`` (works, with a caveat), ``fail`` (will not work) or ``skip`` (the facts it
needs could not be gathered; the message says which). No I/O here, so every rule is unit-tested
from hand-made facts. Section numbers refer to ``docs/realtime-protocol.md``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..core.errors import FilterRejected, MissingExtra, TableNotPublished, classify_system_error
from ..repair.repairer import Capabilities, RepairConfig, choose
from .model import (
    CheckResult,
    ConnectionFacts,
    JoinFacts,
    Policy,
    ProbeFacts,
    TableFacts,
    TokenFacts,
    VisibleRows,
    Want,
)

__all__ = [
    "CHANNELS_PER_SOCKET",
    "EXPIRY_WARN_SECONDS",
    "check_channels",
    "check_columns",
    "check_connection",
    "check_database",
    "check_filter",
    "check_join",
    "check_primary_key",
    "check_probe",
    "check_publication",
    "check_repair",
    "check_replica_identity",
    "check_rls",
    "check_subscribed",
    "check_token",
    "cursor_candidates",
    "probe_cause",
]

CHANNELS_PER_SOCKET = 100  # server default max_channels_per_client (protocol doc §10)
EXPIRY_WARN_SECONDS = 300.0
_DB_NOTE = "needs SUPABASE_DB_URL (a PostgreSQL connection string) to read the catalog"
_CURSOR_NAMES = ("updated_at", "modified_at", "updatedat", "modifiedat", "last_modified",
                 "last_modified_at", "changed_at", "last_updated", "updated", "version")
_CURSOR_TYPES = frozenset({"timestamptz", "timestamp", "int8", "int4", "numeric", "xid8"})


def _qualified(want: Want) -> str:
    return f"{want.schema}.{want.table}"


def _fmt_seconds(seconds: float) -> str:
    if abs(seconds) < 120:
        return f"{seconds:.0f} s"
    if abs(seconds) < 7200:
        return f"{seconds / 60:.0f} min"
    if abs(seconds) < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


# --------------------------------------------------------------------------- connection checks


def check_connection(facts: ConnectionFacts) -> CheckResult:
    """The websocket handshake: URL reachable and the API key accepted (protocol doc §1.3)."""
    name = "connection"
    details: dict[str, Any] = {"url": facts.url}
    if facts.http_status is not None:
        details["http_status"] = facts.http_status
    if facts.connected:
        return CheckResult(name, "ok", f"connected to {facts.url}", details=details)
    error = facts.error or "unknown error"
    status = facts.http_status
    if status == 401:
        return CheckResult(
            name, "fail", f"the server refused the API key: {error}",
            "set SUPABASE_ANON_KEY (or SUPABASE_SERVICE_ROLE_KEY) to a key of this project "
            "(Project Settings > API); it must be a JWT with `role` and `exp` claims",
            details)
    if status == 404:
        return CheckResult(
            name, "fail", f"no Realtime tenant at this address: {error}",
            "check SUPABASE_URL: it must be the project URL (https://<ref>.supabase.co)", details)
    if status == 403:
        return CheckResult(
            name, "fail", f"connection forbidden: {error}",
            "Realtime may be disabled for the project, or (older servers) the key was rejected",
            details)
    if status == 429:
        return CheckResult(
            name, "fail", f"rate limited: {error}",
            "too many connected users or joins per second; retry later or raise the limits",
            details)
    if status is not None:
        return CheckResult(name, "fail", f"handshake failed with HTTP {status}: {error}",
                           "check SUPABASE_URL and that Realtime runs there", details)
    return CheckResult(
        name, "fail", f"cannot reach {facts.url}: {error}",
        "check SUPABASE_URL, the network, and that the server is running", details)


def check_token(facts: TokenFacts, now: float,
                warn_within: float = EXPIRY_WARN_SECONDS) -> CheckResult:
    """A token's claims and time left (protocol doc §1.3, §7): never shows the token itself."""
    name = f"token:{facts.label.replace(' ', '_')}"
    details: dict[str, Any] = {"label": facts.label}
    if facts.role:
        details["role"] = facts.role
    if facts.error:
        return CheckResult(name, "fail", f"could not obtain the {facts.label}: {facts.error}",
                           "check SUPABASE_ACCESS_TOKEN, or the email/password or JWT secret "
                           "settings", details)
    if not facts.is_jwt:
        if facts.opaque_key:
            return CheckResult(
                name, "warn",
                f"the {facts.label} is a new-style `sb_` key, not a JWT: Supabase's gateway "
                "swaps it for a JWT, but a self-hosted or local Realtime server rejects it",
                "against self-hosted servers use the legacy JWT anon/service_role key", details)
        return CheckResult(name, "fail", f"the {facts.label} is not a JWT",
                           "use the project's anon or service_role key, or a user's access token",
                           details)
    if facts.missing_claims:
        missing = ", ".join(facts.missing_claims)
        return CheckResult(name, "fail", f"the {facts.label} lacks the claim(s) {missing}",
                           "Realtime requires both `role` and `exp` in the JWT", details)
    if facts.signature_ok is False:
        return CheckResult(
            name, "fail",
            f"the {facts.label} is not signed with this project's JWT secret (SUPABASE_JWT_SECRET)",
            "use a key or token issued by this project", details)
    assert facts.expires_at is not None
    left = facts.expires_at - now
    details["seconds_to_expiry"] = math.floor(left)
    role = f"role {facts.role}, " if facts.role else ""
    if left <= 0:
        return CheckResult(
            name, "fail", f"the {facts.label} expired {_fmt_seconds(-left)} ago",
            "get a fresh token (sign in again, or refresh the session)", details)
    if facts.refreshable:
        return CheckResult(name, "ok", f"{role}valid for {_fmt_seconds(left)}, renewed "
                           "automatically before it expires", details=details)
    if left < warn_within:
        return CheckResult(
            name, "warn",
            f"the {facts.label} ({role}expires in {_fmt_seconds(left)}) expires soon: the server "
            "closes every channel joined with it at `exp` (\"Token has expired\")",
            "give supasync a refreshable token source (a session or SUPABASE_JWT_SECRET) so its "
            "TokenKeeper pushes a new token before `exp`", details)
    return CheckResult(name, "ok", f"{role}valid for {_fmt_seconds(left)}", details=details)


def check_database(state: str | None, driver_missing: MissingExtra | None = None) -> CheckResult:
    """Whether the catalog could be read: *state* is None (not configured), "" (connected) or
    the connection error; *driver_missing* when the URL is set but psycopg is not installed (the
    catalog was not read: a skip that names the pip line, never a pass)."""
    if driver_missing is not None:
        return CheckResult(
            "database", "skip", "SUPABASE_DB_URL is set, but the PostgreSQL driver psycopg is not "
            "installed, so the catalog checks were skipped: publication actions, primary key, "
            "replica identity, RLS policies and repair mode are checked only as far as the "
            "server and PostgREST show them",
            f"{driver_missing.install} for all checks")
    if state is None:
        return CheckResult(
            "database", "skip", "SUPABASE_DB_URL is not set: publication actions, primary key, "
            "replica identity, RLS policies and repair mode are checked only as far as the "
            "server and PostgREST show them",
            "set SUPABASE_DB_URL (Project Settings > Database > connection string) for all checks")
    if state:
        return CheckResult("database", "fail", f"cannot connect with SUPABASE_DB_URL: {state}",
                           "check the connection string, password and network access")
    return CheckResult("database", "ok", "catalog read with SUPABASE_DB_URL")


def check_channels(count: int, limit: int = CHANNELS_PER_SOCKET) -> CheckResult:
    """Subscriptions against the server's channels-per-socket limit (protocol doc §10)."""
    details = {"subscriptions": count, "limit": limit}
    if count > limit:
        return CheckResult(
            "channels", "warn",
            f"{count} subscriptions exceed the {limit}-channels-per-socket limit: supasync shards "
            "them over several sockets; a single realtime-py socket would get "
            "`ChannelRateLimitReached: Too many channels`",
            "fewer subscriptions (one per table, with broader filters) keep one socket", details)
    if count > limit * 0.8:
        return CheckResult(
            "channels", "warn", f"{count} subscriptions is close to the {limit}-per-socket limit",
            "merge subscriptions where you can", details)
    return CheckResult("channels", "ok", f"{count} of {limit} channels per socket",
                       details=details)


# --------------------------------------------------------------------------- join checks


def _hint(reason: str, name: str) -> tuple[type, str]:
    error = classify_system_error(reason, name)
    return type(error), error.hint


def check_join(want: Want, join: JoinFacts | None) -> CheckResult:
    """The ``phx_join`` reply (protocol doc §3.4, §3.5)."""
    if join is None:
        return CheckResult("join", "skip", "not attempted: no connection")
    if join.joined:
        return CheckResult("join", "ok", f"joined {join.topic}",
                           details={"topic": join.topic})
    if join.join_error:
        _, hint = _hint(join.join_error, want.name)
        return CheckResult("join", "fail", f"the server refused the join: {join.join_error}",
                           hint, {"topic": join.topic})
    return CheckResult("join", "fail", f"no reply to the join within {join.timeout:g} s",
                       "the socket may be stalled by other failing joins; check the server",
                       {"topic": join.topic})


def check_subscribed(want: Want, join: JoinFacts | None) -> CheckResult:
    """``Subscribed to PostgreSQL`` within the timeout, or the system error instead (§4)."""
    name = "subscribed"
    if join is None or not join.joined:
        return CheckResult(name, "skip", "not joined")
    details: dict[str, Any] = {}
    if join.seconds_to_subscribed is not None:
        details["seconds"] = round(join.seconds_to_subscribed, 3)
    if join.subscribed:
        return CheckResult(name, "ok", "the server confirmed: Subscribed to PostgreSQL",
                           details=details)
    if join.system_error:
        _, hint = _hint(join.system_error, want.name)
        return CheckResult(name, "fail",
                           f"joined, then the server refused the subscription: {join.system_error}",
                           hint, details)
    return CheckResult(
        name, "fail",
        f"joined, but no `Subscribed to PostgreSQL` within {join.timeout:g} s: changes are "
        "not being captured for this subscription",
        "check that the server's replication works (wal_level=logical, a free replication "
        "slot) and read the Realtime server logs; a first subscriber can take a few seconds",
        details)


def check_filter(want: Want, join: JoinFacts | None) -> CheckResult:
    """The filter: accepted by this server, and by the older servers' grammar (§5.1)."""
    name = "filter"
    details: dict[str, Any] = {"filter": want.filter_text} if want.filter_text else {}
    if not want.filter_text:
        return CheckResult(name, "ok", "no filter", details=details)
    if join is not None and join.system_error:
        kind, hint = _hint(join.system_error, want.name)
        if kind is FilterRejected:
            return CheckResult(name, "fail", f"the server rejected the filter: {join.system_error}",
                               hint, details)
    if not want.legacy_compatible:
        return CheckResult(
            name, "warn",
            "older Realtime servers (self-hosted and CLI images before 2026-05) reject this "
            "filter: they accept one `column=op.value` with eq/neq/lt/lte/gt/gte/in and no `not.`",
            "keep one simple condition (supasync also filters locally), or upgrade the server",
            details)
    if join is not None and join.subscribed:
        return CheckResult(name, "ok", "accepted by the server", details=details)
    return CheckResult(name, "skip", "the server did not confirm the subscription (see above)",
                       details=details)


# --------------------------------------------------------------------------- catalog checks


def check_columns(want: Want, table: TableFacts | None, join: JoinFacts | None) -> CheckResult:
    """Every column the subscription names exists (filter, select list, key, cursor)."""
    name = "columns"
    wanted = want.named_columns()
    if table is None:
        if join is not None and join.subscribed and want.filter_text:
            return CheckResult(name, "ok", "the server accepted the filter's columns; "
                               f"other columns not checked ({_DB_NOTE})")
        return CheckResult(name, "skip", _DB_NOTE)
    if not table.exists:
        return CheckResult(name, "fail", f"table {_qualified(want)} does not exist",
                           "check the schema and table names", {"table": _qualified(want)})
    missing = sorted(c for c in wanted if c not in table.columns)
    if missing:
        where = ", ".join(f"{c} ({wanted[c]})" for c in missing)
        return CheckResult(name, "fail", f"no such column(s) in {_qualified(want)}: {where}",
                           f"existing columns: {', '.join(table.columns)}",
                           {"missing": missing})
    if not wanted:
        return CheckResult(name, "ok", "no columns named")
    return CheckResult(name, "ok", f"all exist: {', '.join(sorted(wanted))}")


def check_publication(want: Want, table: TableFacts | None, join: JoinFacts | None) -> CheckResult:
    """The table is in ``supabase_realtime`` and the publication publishes the events asked."""
    name = "publication"
    add = f"alter publication supabase_realtime add table {_qualified(want)};"
    if table is None:
        if join is not None and join.system_error:
            kind, _ = _hint(join.system_error, want.name)
            if kind is TableNotPublished:
                return CheckResult(name, "fail", "the server says the table is not published "
                                   "(or does not exist)", add)
        if join is not None and join.subscribed:
            return CheckResult(name, "ok", f"the server subscribed, so the table is published "
                               f"(actions not checked: {_DB_NOTE})")
        return CheckResult(name, "skip", _DB_NOTE)
    if not table.exists:
        return CheckResult(name, "skip", "no such table")
    if not table.publication_exists:
        return CheckResult(name, "fail", "the publication supabase_realtime does not exist",
                           f"create publication supabase_realtime for table {_qualified(want)};")
    if not table.published:
        return CheckResult(
            name, "fail",
            f"{_qualified(want)} is not in the supabase_realtime publication: the join succeeds "
            "but no change is ever delivered", add)
    missing = sorted(want.events - table.published_actions)
    if missing:
        return CheckResult(
            name, "fail",
            f"the publication does not publish {', '.join(missing)}: those events never arrive",
            "alter publication supabase_realtime set (publish = 'insert, update, delete');",
            {"published_actions": sorted(table.published_actions)})
    return CheckResult(name, "ok", f"{_qualified(want)} is published")


def check_primary_key(want: Want, table: TableFacts | None) -> CheckResult:
    """A primary key: without one the server sends INSERT/UPDATE as ``Error 400`` (§5.2)."""
    name = "primary_key"
    if table is None:
        return CheckResult(name, "skip", _DB_NOTE)
    if not table.exists:
        return CheckResult(name, "skip", "no such table")
    if not table.primary_key:
        return CheckResult(
            name, "fail",
            f"{_qualified(want)} has no primary key: Realtime sends its INSERTs and UPDATEs as "
            "`Error 400: Bad Request, no primary key` with an empty record, UPDATE/DELETE are "
            "lost unless REPLICA IDENTITY FULL, and supasync cannot key its cache",
            f"alter table {_qualified(want)} add primary key (<column>);")
    pk = ", ".join(table.primary_key)
    if want.primary_key and tuple(want.primary_key) != table.primary_key:
        return CheckResult(
            name, "warn",
            f"configured primary_key ({', '.join(want.primary_key)}) differs from the table's "
            f"({pk}); the server keys events by the table's",
            "remove primary_key from the configuration or make it match",
            {"primary_key": list(table.primary_key)})
    return CheckResult(name, "ok", f"({pk})", details={"primary_key": list(table.primary_key)})


def check_replica_identity(want: Want, table: TableFacts | None) -> CheckResult:
    """REPLICA IDENTITY suits the events and the filter (§5.2 ``old_record``, §5.3 step 3)."""
    name = "replica_identity"
    if table is None:
        return CheckResult(name, "skip", _DB_NOTE)
    if not table.exists:
        return CheckResult(name, "skip", "no such table")
    ident = table.replica_identity
    details: dict[str, Any] = {"replica_identity": ident.upper()}
    full_fix = f"alter table {_qualified(want)} replica identity full;"
    changes_old = want.events & {"UPDATE", "DELETE"}
    if changes_old and (ident == "nothing" or (ident == "default" and not table.primary_key)):
        why = "NOTHING" if ident == "nothing" else "DEFAULT without a primary key"
        return CheckResult(
            name, "fail",
            f"REPLICA IDENTITY {why}: PostgreSQL logs no old row, so "
            f"{'/'.join(sorted(changes_old))} events are never sent", full_fix, details)
    if ident == "full":
        return CheckResult(name, "ok", "FULL: old rows carry every column", details=details)
    identity_cols = set(table.identity_columns)
    # (columns the table lacks are the columns check's finding, not this one's)
    off_key = sorted((want.filter_columns & set(table.columns)) - identity_cols)
    if "DELETE" in want.events and want.filter_text and off_key:
        return CheckResult(
            name, "warn",
            f"DELETE with a filter on non-key column(s) {', '.join(off_key)}: deleted rows carry "
            "only the key, so the server cannot test the filter and drops those DELETEs; "
            "supasync matches deletes locally by key (rows it has cached)",
            full_fix + " (then the server can filter deletes itself)", details)
    note = ""
    if "UPDATE" in want.events:
        note = "; UPDATE events carry only the key as old values (FULL for old values)"
    return CheckResult(name, "ok", f"{ident.upper()} suits the events and filter{note}",
                       details=details)


def _policy_for(table: TableFacts) -> list[Policy]:
    return [p for p in table.policies if p.applies and p.permissive
            and p.command in ("SELECT", "ALL")]


def check_rls(want: Want, table: TableFacts | None, visible: VisibleRows | None) -> CheckResult:
    """RLS lets the subscriber's role see rows (§5.3 step 4): policies, then counted rows."""
    name = "rls"
    role = want.role
    details: dict[str, Any] = {"role": role}
    if visible is not None and visible.count is not None:
        details["visible_rows"] = visible.count
    if table is not None and table.row_count is not None:
        details["total_rows"] = table.row_count
    if table is None:
        if visible is None or visible.error:
            reason = visible.error if visible is not None and visible.error else _DB_NOTE
            return CheckResult(name, "skip", f"cannot tell: {reason}", details=details)
        if visible.count == 0 or visible.any is False:
            return CheckResult(
                name, "warn",
                f"the token (role {role}) sees no rows: the table is empty or RLS hides them",
                f"set SUPABASE_DB_URL to tell which; or check the SELECT policies for {role}",
                details)
        shown = f"{visible.count} rows" if visible.count is not None else "rows"
        return CheckResult(name, "ok", f"the token (role {role}) sees {shown}", details=details)
    if not table.exists:
        return CheckResult(name, "skip", "no such table")
    if role is None:
        return CheckResult(name, "warn", "the token has no role claim; cannot check RLS",
                           "use a JWT with a `role` claim", details)
    if not table.role_exists:
        return CheckResult(name, "fail", f"the token's role {role} does not exist in the database",
                           "use a token for anon, authenticated or service_role", details)
    if table.role_bypasses_rls:
        return CheckResult(name, "ok", f"role {role} bypasses RLS and sees every row",
                           details=details)
    if not table.role_can_select:
        return CheckResult(name, "fail", f"role {role} lacks SELECT on {_qualified(want)}: "
                           "every change is refused",
                           f"grant select on {_qualified(want)} to {role};", details)
    if not table.rls_enabled:
        return CheckResult(name, "ok", f"RLS is off: role {role} sees every row",
                           details=details)
    if not _policy_for(table):
        return CheckResult(
            name, "fail",
            f"RLS is enabled with no SELECT policy for role {role}: every row is hidden, so "
            "Realtime silently drops every INSERT and UPDATE for this subscriber",
            f"create policy \"{role} can read\" on {_qualified(want)} for select to {role} "
            "using (<condition>);", details)
    if visible is not None and visible.count is not None and table.row_count:
        if visible.count == 0:
            return CheckResult(
                name, "warn",
                f"the policies hide all {table.row_count} rows from this token (role {role})",
                "check the policies' conditions against this token's claims (auth.uid(), ...)",
                details)
        return CheckResult(name, "ok", f"role {role} sees {visible.count} of {table.row_count} "
                           "rows", details=details)
    if visible is not None and visible.error:
        return CheckResult(name, "ok", f"a SELECT policy applies to role {role} (rows not "
                           f"counted: {visible.error})", details=details)
    return CheckResult(name, "ok", f"a SELECT policy applies to role {role}", details=details)


def cursor_candidates(table: TableFacts) -> list[str]:
    """Columns that look like a write cursor (``updated_at``-like), best first."""
    found = [c for c in _CURSOR_NAMES for col, typ in table.columns.items()
             if col.lower() == c and typ in _CURSOR_TYPES]
    return list(dict.fromkeys(found))


def check_repair(want: Want, table: TableFacts | None) -> CheckResult:
    """Which gap-repair mode is available and why (design.md §2)."""
    name = "repair"
    mode = want.repair
    qualified = _qualified(want)
    install = f"supasync sql --apply (installs the change log for {qualified})"
    if mode == "off":
        return CheckResult(name, "warn", "repair is off: changes missed while disconnected are "
                           "lost (Realtime has no replay)",
                           "set repair = \"auto\" for this subscription")
    if table is None:
        if mode in ("exact", "cursor"):
            return CheckResult(name, "warn", f"{mode} mode requested; cannot confirm it works "
                               f"({_DB_NOTE})", "set SUPABASE_DB_URL and run verify again")
        if mode == "diff":
            return CheckResult(name, "ok", "diff: compares the whole table with the cache per gap")
        return CheckResult(name, "skip", f"auto: chosen at runtime ({_DB_NOTE})")
    if not table.exists:
        return CheckResult(name, "skip", "no such table")
    candidates = cursor_candidates(table)
    touched = sorted(table.cursor_touched) if "supasync_touch" in table.update_triggers else []
    cursor = want.cursor_column or (touched[0] if touched else None) or (
        candidates[0] if candidates else None)
    cursor_ok = cursor is not None and cursor in table.columns
    verified = cursor_ok and cursor in touched
    # Other BEFORE UPDATE triggers may bump the column too; which column they set cannot be
    # read from the catalog, so they are named, not trusted.
    others = [t for t in table.update_triggers if t != "supasync_touch"]
    details: dict[str, Any] = {"requested": mode, "exact_installed": table.exact_installed,
                               "cursor_column": cursor if cursor_ok else None,
                               "cursor_verified": verified, "update_triggers": others}
    touch = f"supasync sql {qualified} --touch {cursor or 'updated_at'} --apply"
    if mode == "exact":
        if table.exact_installed:
            return CheckResult(name, "ok", "exact: supasync's change log is installed",
                               details=details)
        return CheckResult(name, "fail", f"exact mode needs supasync's SQL, which is not "
                           f"installed for {qualified}", install, details)
    if mode == "cursor":
        if not cursor_ok:
            return CheckResult(name, "fail", f"cursor mode needs a column every write bumps; "
                               f"{want.cursor_column or 'no updated_at-like column'} not found",
                               "set cursor_column, or add updated_at with a trigger", details)
        if verified:
            return CheckResult(name, "ok", f"cursor on {cursor} (bumped by supasync's trigger)",
                               details=details)
        if others:
            return CheckResult(name, "ok", f"cursor on {cursor}; not verified: trigger(s) "
                               f"{', '.join(others)} may bump it (supasync cannot tell which "
                               "column a trigger sets)", f"to make sure: {touch}", details)
        return CheckResult(name, "warn", f"cursor on {cursor}, but no trigger bumps it: a "
                           f"column with only a default is set on INSERT, so UPDATEs made "
                           "while disconnected are missed by cursor repair",
                           f"{touch} (or use repair = \"auto\")", details)
    if mode == "diff":
        return CheckResult(name, "ok", "diff: compares the whole table with the cache per gap",
                           details=details)
    # auto: the same decision the repairer makes at runtime (repairer.choose).
    chosen, why = choose(RepairConfig(), Capabilities(
        logged=table.exact_installed, horizon=None, pruned_max=None,
        cursor_column=cursor if cursor_ok else None, cursor_verified=verified))
    if chosen == "exact":
        return CheckResult(name, "ok", why, details={**details, "mode": "exact"})
    if chosen == "cursor":
        return CheckResult(name, "ok", f"{why} (deletes found by a key scan)",
                           details={**details, "mode": "cursor"})
    fix = f"for cheaper repair: {install}"
    if cursor_ok:
        fix += f", or make {cursor} a trusted cursor: {touch}"
    return CheckResult(name, "ok", f"{why}, so each gap re-reads the whole table", fix,
                       {**details, "mode": "diff"})


# --------------------------------------------------------------------------- probe


_CAUSES: Mapping[str, tuple[str, str]] = {
    "publication": ("the table is not published", "add it to supabase_realtime (see above)"),
    "subscribed": ("the subscription was never live", "fix the subscription error above"),
    "filter": ("the server rejected the filter", "fix the filter"),
    "rls": ("RLS hides the probe row from the subscriber",
            "add a SELECT policy that lets this role see the row"),
    "replica_identity": ("the replica identity drops this event",
                         "alter table ... replica identity full"),
    "primary_key": ("the table has no primary key", "add a primary key"),
}


def probe_cause(op: str, results: Iterable[CheckResult],
                filter_mismatch: str | None) -> tuple[str, str]:
    """The most likely reason a probe event never arrived: a (cause, fix) pair.

    Looks, in order, at failed checks (publication, subscription, filter, RLS, replica identity,
    primary key), then a probe row that does not satisfy the filter, then warnings.
    """
    by_name = {r.name: r for r in results}
    relevant = ["publication", "subscribed", "filter", "rls", "primary_key"]
    if op in ("UPDATE", "DELETE"):
        relevant.insert(4, "replica_identity")
    for status in ("fail",):
        for check in relevant:
            result = by_name.get(check)
            if result is not None and result.status == status:
                return _CAUSES[check]
    if filter_mismatch:
        return (f"the probe row does not match the filter ({filter_mismatch})",
                "give --probe-row values that satisfy the filter")
    for check in ("rls", "replica_identity"):
        result = by_name.get(check)
        if result is not None and result.status == "warn" and (check == "rls" or op == "DELETE"):
            return _CAUSES[check]
    if by_name.get("rls") is None or by_name["rls"].status == "skip":
        return ("RLS may hide the row from the subscriber (not checked)",
                "set SUPABASE_DB_URL for the RLS and replica identity checks")
    return ("unknown: the subscription looks right", "read the Realtime server logs; check the "
            "server's replication slot and the tenant's events-per-second limit")


def check_probe(probe: ProbeFacts, results: Sequence[CheckResult], filter_mismatch: str | None,
                timeout: float) -> CheckResult:
    """A probe write seen (or not) by the subscription, with commit-to-event latency.

    Only called when a probe was asked for, so a probe that could not run (required columns
    without a ``--probe-row``, a subscription that never went live) is ``fail``, not ``skip``;
    the fix names the required columns."""
    name = "probe"
    details: dict[str, Any] = {"op": probe.op}
    if probe.latency_ms is not None:
        details["latency_ms"] = round(probe.latency_ms, 1)
    if probe.roundtrip_ms is not None:
        details["write_to_event_ms"] = round(probe.roundtrip_ms, 1)
    if probe.skipped_reason:
        # --probe was asked for: a probe that cannot run must not pass a CI job unseen.
        if probe.missing_columns:
            example = ", ".join(f'"{c}": value' for c in probe.missing_columns)
            fix = (f"give the probe row with --probe-row '{{{example}, ...}}' (required: "
                   f"{', '.join(probe.missing_columns)})")
            details["missing_columns"] = list(probe.missing_columns)
        else:
            fix = ("fix the failures above so the subscription goes live, or give a row the "
                   "table accepts with --probe-row '{\"col\": value, ...}'")
        return CheckResult(name, "fail", f"the probe could not run: {probe.skipped_reason}",
                           fix, details)
    if not probe.wrote:
        return CheckResult(name, "fail", f"could not write the probe row: {probe.write_error}",
                           "give a row the table accepts with --probe-row '{\"col\": \"val\"}'",
                           details)
    if not probe.received:
        cause, fix = probe_cause(probe.op, results, filter_mismatch)
        return CheckResult(name, "fail", f"the probe {probe.op} never arrived within "
                           f"{timeout:g} s; most likely: {cause}", fix,
                           {**details, "cause": cause})
    latency = probe.latency_ms if probe.latency_ms is not None else probe.roundtrip_ms
    shown = f"{latency:.0f} ms after commit" if latency is not None else "arrived"
    if probe.cleanup_error:
        return CheckResult(name, "warn", f"{probe.op} event {shown}, but the probe row was not "
                           f"deleted: {probe.cleanup_error}", "delete the probe row by hand",
                           details)
    return CheckResult(name, "ok", f"{probe.op} event {shown}", details=details)
