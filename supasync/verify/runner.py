"""Check subscriptions end to end: the library behind ``supasync verify``.

Realtime fails quietly. A table missing from the ``supabase_realtime`` publication, an RLS policy
that hides every row, a filter the server rejects *after* a successful join, a token about to
expire, DELETEs that cannot be filtered: each of these gives a subscription that joins and then
never delivers. :func:`verify` looks for every one of them and says how to fix it.

Theory of operation
-------------------
Two layers, kept apart so the decisions are tested without a server:

* **Facts** are gathered by :mod:`supasync.verify.facts` (the only I/O): the socket handshake,
  the join and the ``Subscribed to PostgreSQL`` system message (realtime-py's
  ``AsyncRealtimeClient``), catalog facts about each table (psycopg, when ``SUPABASE_DB_URL`` is
  set and the ``db`` extra installed; else the database check says what is missing), the rows
  the subscriber's token can see (PostgREST), and the optional probe write.
* **Decisions** are the small pure ``check_*`` functions of :mod:`supasync.verify.checks`
  (re-exported here). Each takes facts and returns one :class:`CheckResult` (``ok``, ``warn``,
  ``fail`` or ``skip``) with a message and a fix. A check that needs facts nobody could gather
  says ``skip`` and why.

:func:`verify` runs both for every subscription and returns a :class:`Report`, whose
``exit_code`` is 0 when nothing failed (warnings allowed) and 1 when a check failed. The command
line, ``supasync verify``, is :mod:`supasync.cli.verify`; :func:`adhoc_specs` and
:func:`probe_rows_from_json` turn its options into arguments of :func:`verify`.

Secrets never leave this module: every text in a report is scrubbed of the keys, tokens, JWT
secret and database URL in use (:func:`scrub_report`), and tokens are only ever decoded for their
``role`` and ``exp`` claims.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..core.errors import ConfigError
from .checks import (
    CHANNELS_PER_SOCKET,
    EXPIRY_WARN_SECONDS,
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
)
from .facts import gather
from .model import (
    ALL_EVENTS,
    CheckResult,
    ConnectionFacts,
    JoinFacts,
    Policy,
    ProbeFacts,
    Report,
    SpecLike,
    Status,
    TableFacts,
    TokenFacts,
    VisibleRows,
    Want,
    scrub_report,
    want_from_spec,
)
from .probe import require_driver, run_probes

__all__ = [
    "ALL_EVENTS",
    "CHANNELS_PER_SOCKET",
    "EXPIRY_WARN_SECONDS",
    "AdHocSpec",
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
    "adhoc_specs",
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
    "probe_rows_from_json",
    "scrub_report",
    "verify",
    "want_from_spec",
]


# --------------------------------------------------------------------------- runner


async def verify(settings: Any, specs: Sequence[SpecLike] | None = None, *, probe: bool = False,
                 timeout: float = 10.0,  # noqa: ASYNC109 - one budget per wait, not overall
                 probe_rows: Mapping[str, Mapping[str, Any]] | None = None,
                 expiry_warn: float = EXPIRY_WARN_SECONDS) -> Report:
    """Check every subscription end to end and return the :class:`Report`.

    Never raises for what it finds: an unreachable server, a refused key or a missing table are
    findings in the report.

    Raises:
        ConfigError: the settings name no usable identity (no key or token to connect with).
        MissingExtra: *probe* would write over the database and psycopg is not installed
            (checked before connecting; without psycopg the catalog checks are skipped, and
            say so, rather than failing).

    Args:
        settings: a ``supasync.client.config.Settings`` (URL, keys, token, JWT secret, database
        URL). specs: the subscriptions; default ``settings.subscriptions``.
        probe: also write a probe row per subscription, wait for its event, then delete it.
        timeout: seconds to wait for the join, ``Subscribed to PostgreSQL`` and each probe.
        probe_rows: per subscription name (or ``"*"`` for all), the row to write as the probe.
        expiry_warn: warn when a token expires within this many seconds.
    """
    chosen = list(specs if specs is not None else getattr(settings, "subscriptions", ()))
    if probe:
        require_driver(settings)
    facts = await gather(settings, chosen, prober=run_probes if probe else None, wait=timeout,
                         probe_rows=dict(probe_rows or {}))
    now = time.time()
    results: list[CheckResult] = [check_connection(facts.connection),
                                  check_database(facts.database, facts.driver_missing)]
    results += [check_token(t, now, expiry_warn) for t in facts.tokens]
    results.append(check_channels(len(chosen)))
    for spec in chosen:
        want = want_from_spec(spec, facts.role)
        join = facts.joins.get(spec.name)
        table = facts.tables.get(spec.name)
        visible = facts.visible.get(spec.name)
        per = [
            check_join(want, join),
            check_subscribed(want, join),
            check_filter(want, join),
            check_columns(want, table, join),
            check_publication(want, table, join),
            check_primary_key(want, table),
            check_replica_identity(want, table),
            check_rls(want, table, visible),
            check_repair(want, table),
        ]
        if probe:
            probe_facts = facts.probes.get(spec.name) or ProbeFacts(
                op="INSERT", skipped_reason="not run: the subscription is not live")
            per.append(check_probe(probe_facts, per, facts.mismatches.get(spec.name), timeout))
        results += [dataclasses.replace(r, subscription=spec.name) for r in per]
    return scrub_report(Report(tuple(results)), facts.secrets)


# --------------------------------------------------------------------------- command line


@dataclass(frozen=True)
class AdHocSpec:
    """A subscription given on the command line (``--table``, ``--filter``, ``--events``)."""

    name: str
    schema: str
    table: str
    events: frozenset[str]
    filter: Any
    columns: tuple[str, ...] = ()
    primary_key: tuple[str, ...] = ()
    repair: str = "auto"
    cursor_column: str | None = None


def adhoc_specs(tables: Sequence[str], *, filter_text: str = "", events: str = "*",
                columns: str = "", repair: str = "auto",
                cursor_column: str | None = None) -> list[AdHocSpec]:
    """Subscriptions given on the command line: one :class:`AdHocSpec` per ``[SCHEMA.]TABLE``
    in *tables*, each with the same filter, events (comma-separated), columns (a select list)
    and repair mode.

    Raises:
        FilterError: the filter does not parse.
        ConfigError: unknown events or repair mode.
    """
    from ..core.filters import parse_filter

    flt = parse_filter(filter_text)  # raises FilterError
    wanted = frozenset(e.strip().upper() for e in events.split(",") if e.strip())
    bad = wanted - ALL_EVENTS - {"*"}
    if bad or not wanted:
        raise ConfigError("events must be INSERT, UPDATE, DELETE or *", key="--events",
                          value=events)
    if repair not in REPAIR_MODES:
        raise ConfigError("unknown repair mode", key="--repair", value=repair,
                          fix="use " + ", ".join(REPAIR_MODES))
    specs = []
    for table in tables:
        schema, _, name = table.rpartition(".")
        specs.append(AdHocSpec(
            name=table, schema=schema or "public", table=name, events=wanted, filter=flt,
            columns=tuple(c.strip() for c in columns.split(",") if c.strip()),
            repair=repair, cursor_column=cursor_column))
    return specs


REPAIR_MODES = ("auto", "exact", "cursor", "diff", "off")


def probe_rows_from_json(text: str | None) -> dict[str, Mapping[str, Any]]:
    """``--probe-row`` (a JSON object) as *probe_rows* for :func:`verify` (used for every
    subscription); ``{}`` when not given.

    Raises:
        ConfigError: not JSON, or not an object.
    """
    if not text:
        return {}
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"not JSON: {exc}", key="--probe-row",
                          fix="""give an object, e.g. --probe-row '{"title": "probe"}'""") from exc
    if not isinstance(row, dict):
        raise ConfigError("must be a JSON object", key="--probe-row",
                          fix="""give an object, e.g. --probe-row '{"title": "probe"}'""")
    return {"*": row}
