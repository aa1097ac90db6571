"""The values ``supasync verify`` works with: check results, the report, and the facts.

Facts are plain frozen records filled in by :mod:`supasync.verify.facts` (the I/O) and read by
the pure ``check_*`` decisions in :mod:`supasync.verify.runner`. Keeping them here lets the
decisions be unit-tested by constructing facts by hand, with no server.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

__all__ = [
    "ALL_EVENTS",
    "STATUS_ORDER",
    "CheckResult",
    "ConnectionFacts",
    "JoinFacts",
    "Policy",
    "ProbeFacts",
    "Report",
    "SpecLike",
    "Status",
    "TableFacts",
    "TokenFacts",
    "VisibleRows",
    "Want",
    "scrub",
    "scrub_report",
    "want_from_spec",
]

Status = Literal["ok", "warn", "fail", "skip"]
STATUS_ORDER: Final[Mapping[str, int]] = {"skip": 0, "ok": 1, "warn": 2, "fail": 3}
ALL_EVENTS: Final = frozenset({"INSERT", "UPDATE", "DELETE"})


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check.

    Attributes:
        name: the check (``connection``, ``join``, ``rls``, ...).
        status: ``ok``; ``warn`` (works, with a caveat); ``fail`` (will not work); ``skip``
            (could not be checked, the message says why).
        message: what was found, one sentence.
        fix: how to fix it (empty when nothing to fix).
        details: machine-readable facts (numbers, names), never secrets.
        subscription: the subscription's name, or None for a check of the whole setup.
    """

    name: str
    status: Status
    message: str
    fix: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)
    subscription: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON object ``--json`` prints for this check."""
        return {
            "subscription": self.subscription,
            "check": self.name,
            "status": self.status,
            "message": self.message,
            "fix": self.fix,
            "details": dict(self.details),
        }


@dataclass(frozen=True)
class Report:
    """All check results of one run, in order (setup checks first, then per subscription)."""

    checks: tuple[CheckResult, ...]

    @property
    def failed(self) -> tuple[CheckResult, ...]:
        return tuple(c for c in self.checks if c.status == "fail")

    @property
    def warnings(self) -> tuple[CheckResult, ...]:
        return tuple(c for c in self.checks if c.status == "warn")

    @property
    def ok(self) -> bool:
        """True when nothing failed (warnings allowed)."""
        return not self.failed

    @property
    def exit_code(self) -> int:
        """0 when nothing failed, 1 otherwise (2, bad configuration, never gets a report)."""
        return 0 if self.ok else 1

    def get(self, name: str, subscription: str | None = None) -> CheckResult:
        """The result of check *name* (for *subscription*); KeyError if absent."""
        for check in self.checks:
            if check.name == name and check.subscription == subscription:
                return check
        raise KeyError((name, subscription))

    def subscriptions(self) -> list[str | None]:
        """Subscription names in report order (None for the setup checks)."""
        return list(dict.fromkeys(c.subscription for c in self.checks))


# --------------------------------------------------------------------------- facts


@dataclass(frozen=True)
class Want:
    """A subscription, normalised: what it asks the server for."""

    name: str
    schema: str
    table: str
    events: frozenset[str]  # subset of ALL_EVENTS
    filter_text: str = ""
    filter_columns: frozenset[str] = frozenset()
    legacy_compatible: bool = True
    columns: tuple[str, ...] = ()
    primary_key: tuple[str, ...] = ()
    repair: str = "auto"
    cursor_column: str | None = None
    role: str | None = None
    filter_obj: Any = field(default=None, compare=False, repr=False)  # supasync.core.filters.Filter

    def named_columns(self) -> dict[str, str]:
        """Every column the subscription names, with where it was named."""
        named: dict[str, str] = {}
        for col in self.columns:
            named.setdefault(col, "select list")
        for col in self.primary_key:
            named.setdefault(col, "primary_key")
        if self.cursor_column:
            named.setdefault(self.cursor_column, "cursor_column")
        for col in sorted(self.filter_columns):
            named.setdefault(col, "filter")
        return named


@dataclass(frozen=True)
class TokenFacts:
    """What a token's claims say (it is decoded, never shown)."""

    label: str  # "api key" or "access token"
    is_jwt: bool
    opaque_key: bool = False  # an sb_publishable_/sb_secret_ key
    role: str | None = None
    expires_at: float | None = None
    signature_ok: bool | None = None  # None: no secret to check it against
    missing_claims: tuple[str, ...] = ()
    refreshable: bool = False  # the token source renews it (session, JWT secret)
    error: str | None = None  # the token could not be obtained at all


@dataclass(frozen=True)
class ConnectionFacts:
    """The websocket handshake's outcome."""

    url: str  # without the key
    connected: bool
    http_status: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class JoinFacts:
    """One subscription's join and ``Subscribed to PostgreSQL``."""

    topic: str
    timeout: float
    joined: bool = False
    join_error: str | None = None  # the reason of a join error reply
    subscribed: bool = False
    system_error: str | None = None  # the message of a system error after the join
    seconds_to_subscribed: float | None = None


@dataclass(frozen=True)
class Policy:
    """An RLS policy: ``command`` is SELECT, INSERT, UPDATE, DELETE or ALL."""

    name: str
    command: str
    roles: tuple[str, ...]
    permissive: bool = True
    applies: bool = False  # applies to the subscriber's role (directly, by membership or public)


@dataclass(frozen=True)
class TableFacts:
    """A table as the catalog describes it, relative to the subscriber's role."""

    schema: str
    table: str
    exists: bool
    columns: Mapping[str, str] = field(default_factory=dict)  # name -> pg_type.typname
    required_columns: frozenset[str] = frozenset()  # NOT NULL, no default, not generated
    primary_key: tuple[str, ...] = ()
    replica_identity: str = "default"  # default | full | nothing | index
    identity_columns: tuple[str, ...] = ()  # the columns old rows carry (unless full)
    publication_exists: bool = True
    published: bool = False
    published_actions: frozenset[str] = ALL_EVENTS
    rls_enabled: bool = False
    policies: tuple[Policy, ...] = ()
    row_count: int | None = None
    exact_installed: bool = False
    # Row triggers that fire BEFORE UPDATE (enabled, not internal): what could bump a cursor
    # column. supasync's own is "supasync_touch"; the columns it bumps are cursor_touched.
    update_triggers: tuple[str, ...] = ()
    cursor_touched: frozenset[str] = frozenset()
    role_exists: bool = True
    role_bypasses_rls: bool = False
    role_can_select: bool = True


@dataclass(frozen=True)
class VisibleRows:
    """Rows the subscriber's token can read through PostgREST."""

    count: int | None = None
    any: bool | None = None
    error: str | None = None


@dataclass(frozen=True)
class ProbeFacts:
    """A probe write and the event it should cause."""

    op: str  # the event waited for: INSERT, UPDATE or DELETE
    wrote: bool = False
    write_error: str | None = None
    received: bool = False
    latency_ms: float | None = None  # commit_timestamp -> event received
    roundtrip_ms: float | None = None  # write sent -> event received
    cleanup_error: str | None = None
    skipped_reason: str | None = None  # why the probe could not run (a failure when asked for)
    missing_columns: tuple[str, ...] = ()  # required columns the probe row lacks
    row: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)  # as written


# --------------------------------------------------------------------------- subscriptions


class SpecLike(Protocol):
    """What :func:`verify` reads from a subscription
    (``supasync.client.config.SubscriptionSpec``)."""

    @property
    def name(self) -> str: ...
    @property
    def schema(self) -> str: ...
    @property
    def table(self) -> str: ...
    @property
    def events(self) -> Any: ...
    @property
    def filter(self) -> Any: ...
    @property
    def columns(self) -> Any: ...
    @property
    def primary_key(self) -> Any: ...
    @property
    def repair(self) -> str: ...
    @property
    def cursor_column(self) -> str | None: ...


def want_from_spec(spec: SpecLike, role: str | None) -> Want:
    """Normalise a subscription into the facts the decisions need."""
    flt = spec.filter
    text = ""
    columns: frozenset[str] = frozenset()
    legacy = True
    if flt is not None:
        text = flt.to_realtime() or ""
        columns = frozenset(flt.columns or ())
        legacy = bool(flt.legacy_compatible)
    events = {str(e).upper() for e in (spec.events or ("*",))}
    return Want(
        name=spec.name, schema=spec.schema or "public", table=spec.table,
        events=ALL_EVENTS if "*" in events else frozenset(events) & ALL_EVENTS,
        filter_text=text, filter_columns=columns, legacy_compatible=legacy or not text,
        columns=tuple(spec.columns or ()), primary_key=tuple(spec.primary_key or ()),
        repair=spec.repair or "auto", cursor_column=spec.cursor_column, role=role,
        filter_obj=flt)


# --------------------------------------------------------------------------- secrets


def scrub(text: str, secrets: Iterable[str]) -> str:
    """*text* with every secret replaced by ``***`` (longest first, so overlaps go too)."""
    for secret in sorted({s for s in secrets if s and len(s) >= 6}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _scrub_value(value: Any, secrets: Iterable[str]) -> Any:
    if isinstance(value, str):
        return scrub(value, secrets)
    if isinstance(value, Mapping):
        return {k: _scrub_value(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub_value(v, secrets) for v in value]
    return value


def scrub_report(report: Report, secrets: Iterable[str]) -> Report:
    """A copy of *report* whose messages, fixes and details contain none of *secrets*."""
    keep = tuple(secrets)
    return Report(tuple(
        dataclasses.replace(c, message=scrub(c.message, keep), fix=scrub(c.fix, keep),
                            details=_scrub_value(dict(c.details), keep))
        for c in report.checks))
