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

:func:`verify` runs both for every subscription and returns a :class:`Report`;
:func:`main` is the command line (``python -m supasync.verify``, ``supasync verify``): exit
code 0 when nothing failed (warnings allowed), 1 when a check failed, 2 for bad configuration.

Secrets never leave this module: every text in a report is scrubbed of the keys, tokens, JWT
secret and database URL in use (:func:`scrub_report`), and tokens are only ever decoded for their
``role`` and ``exp`` claims.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError, FilterError, SupasyncError
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
    "main",
    "probe_cause",
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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="supasync verify",
        description="Check every subscription end to end: connection, token, join, "
        "`Subscribed to PostgreSQL`, filter, columns, publication, primary key, replica "
        "identity, RLS, channel count, repair mode; optionally a probe write. "
        "Exit 0: nothing failed (warnings allowed); 1: a check failed; 2: bad configuration.")
    p.add_argument("--table", action="append", default=[], metavar="[SCHEMA.]TABLE",
                   help="check this table instead of supasync.toml's subscriptions (repeatable)")
    p.add_argument("--filter", default="",
                   help="Realtime filter for --table, e.g. 'status=eq.open'")
    p.add_argument("--events", default="*", help="INSERT,UPDATE,DELETE or * (default)")
    p.add_argument("--columns", default="", help="comma-separated select list for --table")
    p.add_argument("--repair", default="auto", choices=["auto", "exact", "cursor", "diff", "off"])
    p.add_argument("--cursor-column", default=None)
    p.add_argument("--probe", action="store_true",
                   help="write a probe row per subscription, wait for its event, delete it")
    p.add_argument("--probe-row", default=None, metavar="JSON",
                   help="the probe row to write, e.g. '{\"status\": \"open\"}'")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per wait (default 10)")
    p.add_argument("--expiry-warn", type=float, default=EXPIRY_WARN_SECONDS,
                   help="warn when a token expires within this many seconds (default 300)")
    p.add_argument("--json", action="store_true", help="one JSON object per check per line")
    p.add_argument("--env-file", type=Path, default=Path(".env"))
    p.add_argument("--config", type=Path, default=Path("supasync.toml"),
                   help="subscriptions file (default supasync.toml)")
    return p


def _adhoc_specs(args: argparse.Namespace) -> list[AdHocSpec]:
    from ..core.filters import parse_filter

    flt = parse_filter(args.filter)  # raises FilterError
    events = frozenset(e.strip().upper() for e in args.events.split(",") if e.strip())
    bad = events - ALL_EVENTS - {"*"}
    if bad or not events:
        raise ConfigError("events must be INSERT, UPDATE, DELETE or *", key="--events",
                          value=args.events)
    specs = []
    for table in args.table:
        schema, _, name = table.rpartition(".")
        specs.append(AdHocSpec(
            name=table, schema=schema or "public", table=name, events=events, filter=flt,
            columns=tuple(c.strip() for c in args.columns.split(",") if c.strip()),
            repair=args.repair, cursor_column=args.cursor_column))
    return specs


def _probe_rows(text: str | None) -> dict[str, Mapping[str, Any]]:
    if not text:
        return {}
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"not JSON: {exc}", key="--probe-row") from exc
    if not isinstance(row, dict):
        raise ConfigError("must be a JSON object", key="--probe-row")
    return {"*": row}


def main(argv: Sequence[str] | None = None) -> int:
    """``supasync verify``: returns the exit code (0 ok, 1 a check failed, 2 bad configuration)."""
    args = _parser().parse_args(argv)
    from .render import render_json, render_table

    # realtime-py logs join errors itself; this report says the same, with a fix.
    logging.getLogger("realtime").addHandler(logging.NullHandler())
    logging.getLogger("realtime").propagate = False
    try:
        from ..client.config import load_settings

        settings = load_settings(env_file=args.env_file, toml_path=args.config)
        specs: Sequence[SpecLike] = (_adhoc_specs(args) if args.table
                                     else tuple(settings.subscriptions))
        if not specs:
            raise ConfigError("no subscriptions to check", fix="give --table, or declare "
                              f"[[subscription]] in {args.config}")
        report = asyncio.run(verify(settings, specs, probe=args.probe, timeout=args.timeout,
                                    probe_rows=_probe_rows(args.probe_row),
                                    expiry_warn=args.expiry_warn))
    except (ConfigError, FilterError) as exc:
        print(f"supasync verify: configuration error: {exc}", file=sys.stderr)
        return 2
    except SupasyncError as exc:
        print(f"supasync verify: {exc}", file=sys.stderr)
        return 2
    if args.json:
        render_json(report, sys.stdout)
    else:
        render_table(report)
    return report.exit_code
