"""``supasync verify --broadcast TABLE``: checks of a subscription fed by Broadcast from
Database (``subscribe(..., source="broadcast")``, issue #14).

Three checks, each a pure function of facts (unit-tested from hand-made facts), plus the I/O
that gathers them (:func:`verify_broadcast`):

* ``broadcast-trigger``: a row trigger on the table calls ``realtime.broadcast_changes`` with
  the topic (read from the catalog with ``SUPABASE_DB_URL``; skipped without it);
* ``broadcast-read``: the channel joins with the application's token (a private topic needs a
  read policy on ``realtime.messages``: the failure names it);
* ``broadcast-probe`` (``--probe``): a message sent to the topic with ``realtime.send`` (no row
  of the table is touched) arrives on the channel within the timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..core.errors import ChannelUnauthorized, SubscriptionError
from ..repair.broadcast_sql import default_topic
from .model import CheckResult, Report

__all__ = [
    "BroadcastTrigger",
    "check_broadcast_probe",
    "check_broadcast_read",
    "check_broadcast_trigger",
    "verify_broadcast",
]

PROBE_EVENT = "supasync_probe"


@dataclass(frozen=True)
class BroadcastTrigger:
    """A trigger on the table whose function calls ``realtime.broadcast_changes``."""

    name: str
    function: str
    topic_found: bool  # the function's source names the topic as a literal
    enabled: bool = True


def _sql_fix(table: str, topic: str) -> str:
    return f"supasync sql {table} --broadcast --topic {topic} --apply"


def check_broadcast_trigger(name: str, table: str, topic: str,
                            triggers: Sequence[BroadcastTrigger] | None,
                            why_unknown: str = "") -> CheckResult:
    if triggers is None:
        return CheckResult("broadcast-trigger", "skip",
                           f"could not read the triggers of {table}: {why_unknown}",
                           subscription=name)
    good = [t for t in triggers if t.topic_found and t.enabled]
    if good:
        return CheckResult("broadcast-trigger", "ok",
                           f"trigger {good[0].name} sends {table}'s changes to {topic!r}",
                           details={"trigger": good[0].name, "function": good[0].function},
                           subscription=name)
    if any(t.topic_found for t in triggers):
        return CheckResult("broadcast-trigger", "fail",
                           f"the broadcast trigger on {table} is disabled",
                           fix=f"alter table {table} enable trigger "
                               f"{triggers[0].name}", subscription=name)
    if triggers:
        return CheckResult(
            "broadcast-trigger", "warn",
            f"{table} has a realtime.broadcast_changes trigger ({triggers[0].name}), but its "
            f"source does not name the topic {topic!r} as a literal; it may use another topic",
            fix=f"check the topic, or install supasync's: {_sql_fix(table, topic)}",
            subscription=name)
    return CheckResult("broadcast-trigger", "fail",
                       f"no trigger on {table} calls realtime.broadcast_changes: no change "
                       "will ever be broadcast", fix=_sql_fix(table, topic), subscription=name)


def check_broadcast_read(name: str, topic: str, private: bool, joined: bool,
                         error: BaseException | None) -> CheckResult:
    if joined:
        what = "private, read allowed by RLS" if private else "public"
        return CheckResult("broadcast-read", "ok", f"joined topic {topic!r} ({what})",
                           subscription=name)
    if isinstance(error, ChannelUnauthorized):
        return CheckResult("broadcast-read", "fail",
                           f"the token's role may not read the private topic {topic!r}: "
                           f"{error.reason}", fix=error.hint, subscription=name)
    if isinstance(error, SubscriptionError):
        return CheckResult("broadcast-read", "fail",
                           f"the server refused topic {topic!r}: {error.reason}",
                           fix=error.hint, subscription=name)
    return CheckResult("broadcast-read", "fail",
                       f"topic {topic!r} did not join: {error or 'timed out'}",
                       fix="check SUPABASE_URL and that Realtime is up (supasync verify "
                           "without --broadcast checks the connection)", subscription=name)


def check_broadcast_probe(name: str, topic: str, arrived: bool | None, timeout: float,
                          why_not_run: str = "") -> CheckResult:
    if arrived is None:
        return CheckResult("broadcast-probe", "fail" if why_not_run else "skip",
                           f"the probe could not run: {why_not_run}" if why_not_run
                           else "not asked for (--probe)", subscription=name)
    if arrived:
        return CheckResult("broadcast-probe", "ok",
                           f"a message sent with realtime.send arrived on {topic!r}",
                           subscription=name)
    return CheckResult("broadcast-probe", "fail",
                       f"a message sent with realtime.send to {topic!r} did not arrive within "
                       f"{timeout:g} s", fix="check that the topic and the private flag match "
                       "the trigger's (realtime.send sends private messages by default)",
                       subscription=name)


async def trigger_facts(db_url: str, table: str, topic: str) -> list[BroadcastTrigger]:
    import psycopg  # the db extra; verify imports it only here

    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        cur = await conn.execute(
            "select t.tgname, p.oid::regprocedure::text, p.prosrc, t.tgenabled <> 'D'"
            " from pg_trigger t join pg_proc p on p.oid = t.tgfoid"
            " where t.tgrelid = to_regclass(%s) and not t.tgisinternal"
            " and p.prosrc ilike '%%broadcast_changes%%'", [table])
        rows = await cur.fetchall()
    literal = "'" + topic.replace("'", "''") + "'"
    return [BroadcastTrigger(name, fn, literal in src, enabled)
            for name, fn, src, enabled in rows]


async def verify_broadcast(settings: Any, table: str, *, topic: str | None = None,
                           private: bool = True, probe: bool = False,
                           timeout: float = 10.0) -> Report:  # noqa: ASYNC109
    """Run the three checks for ``table`` with the application's settings and token."""
    from ..client.realtime import Realtime

    topic = topic or default_topic(table)
    name = f"broadcast:{table}"
    qualified = table if "." in table else f"public.{table}"
    db_url = getattr(settings, "db_url", None)
    checks: list[CheckResult] = []
    if db_url:
        try:
            triggers: list[BroadcastTrigger] | None = await trigger_facts(db_url, qualified,
                                                                          topic)
            why = ""
        except Exception as exc:
            triggers, why = None, f"{type(exc).__name__}: {exc}".splitlines()[0]
    else:
        triggers, why = None, "needs SUPABASE_DB_URL"
    checks.append(check_broadcast_trigger(name, qualified, topic, triggers, why))

    rt = Realtime.from_settings(settings, repair="off")
    received = asyncio.Event()
    joined, error = False, None
    try:
        await rt.start()
        channel = rt.channel(topic, private=private)
        channel.on_broadcast(PROBE_EVENT, lambda _msg: received.set())
        try:
            await channel.wait_live(timeout)
            joined = True
        except (SubscriptionError, TimeoutError) as exc:
            error = exc
        checks.append(check_broadcast_read(name, topic, private, joined, error))
        if not probe:
            checks.append(check_broadcast_probe(name, topic, None, timeout))
        elif not joined:
            checks.append(check_broadcast_probe(name, topic, None, timeout,
                                                "the channel did not join"))
        elif not db_url:
            checks.append(check_broadcast_probe(name, topic, None, timeout,
                                                "needs SUPABASE_DB_URL to call realtime.send"))
        else:
            await asyncio.to_thread(_send_probe, db_url, topic, private)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(received.wait(), timeout)
            checks.append(check_broadcast_probe(name, topic, received.is_set(), timeout))
    finally:
        await rt.aclose()
    return Report(tuple(checks))


def _send_probe(db_url: str, topic: str, private: bool) -> None:
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("select realtime.send('{\"probe\": true}'::jsonb, %s, %s, %s)",
                     [PROBE_EVENT, topic, private])
