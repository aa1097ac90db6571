"""The ``--probe`` of ``supasync verify``: write a row the subscription should see, time its
event, delete the row.

The row is written with the service-role key over PostgREST (RLS cannot refuse it), else over
the database (``SUPABASE_DB_URL``), else with the subscriber's own token. For a subscription to
UPDATEs only, the row is inserted and then updated; for DELETEs only, inserted and deleted. The
latency reported is from the change's ``commit_timestamp`` to the event's arrival (and, as
``write_to_event_ms``, from the write request to the arrival).

Writing over the database needs psycopg (the ``db`` extra), imported only then:
:func:`require_driver` raises :class:`~supasync.core.errors.MissingExtra` up front when the
probe would write that way without it (the command exits 2 with the pip line; it does not fall
back to another identity, which could hide an RLS problem or pass for the wrong reason).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import httpx

from ..core.changes import parse_timestamp
from ..core.extras import require
from .facts import Facts, Watch, opt, rest_error, rest_headers
from .model import ProbeFacts, TableFacts, Want

if TYPE_CHECKING:
    from psycopg import sql

__all__ = [
    "filter_mismatch",
    "probe_row_for",
    "require_driver",
    "run_probe",
    "run_probes",
    "writes_over_database",
]

_FEATURE = ("supasync verify --probe, which writes its rows over SUPABASE_DB_URL when no "
            "service-role key is set")


def writes_over_database(settings: Any) -> bool:
    """Whether the probe writes over ``SUPABASE_DB_URL`` (set, and no service-role key)."""
    return not opt(settings, "service_role_key") and bool(opt(settings, "db_url"))


def require_driver(settings: Any) -> None:
    """Check, before anything is written, that the probe can write as *settings* say.

    Raises:
        MissingExtra: the probe would write over the database and psycopg is not installed
            (``pip install 'supasync[db]'``).
    """
    if writes_over_database(settings):
        require("psycopg", "db", _FEATURE)


def _conditions(want: Want) -> tuple[Any, ...]:
    flt = want.filter_obj
    return tuple(getattr(flt, "conditions", ())) if flt is not None else ()


def probe_row_for(want: Want) -> dict[str, Any]:
    """A row satisfying the filter's ``eq``/``in``/``is`` conditions (other columns left out)."""
    row: dict[str, Any] = {}
    for cond in _conditions(want):
        if cond.negated:
            continue
        if cond.op == "eq":
            row[cond.column] = cond.value
        elif cond.op == "in" and cond.value:
            row[cond.column] = cond.value[0]
        elif cond.op == "is" and cond.value in ("null", "true", "false"):
            row[cond.column] = {"null": None, "true": True, "false": False}[cond.value]
    return row


def filter_mismatch(want: Want, row: Mapping[str, Any]) -> str | None:
    """The first filter condition *row* fails, as text, or None. Conditions on columns the row
    does not give are not judged (the database fills those in)."""
    for cond in _conditions(want):
        if cond.column not in row:
            continue
        try:
            ok = cond.matches(row)
        except Exception:  # a value the local predicate cannot compare: no verdict
            continue
        if not ok:
            return f"{cond.column}={row[cond.column]!r} fails {cond.to_realtime()}"
    return None


class _Writer:
    """Writes probe rows: over PostgREST with a key, or over the database."""

    def __init__(self, want: Want, http: httpx.AsyncClient, rest: str, api_key: str,
                 key: str | None, db_url: str | None) -> None:
        self.want, self.http, self.rest = want, http, rest
        self.api_key, self.key, self.db_url = api_key, key, db_url

    def _url(self) -> str:
        return f"{self.rest}/{self.want.table}"

    def _headers(self) -> dict[str, str]:
        assert self.key is not None
        return {**rest_headers(self.api_key or self.key, self.key, self.want.schema, True),
                "Prefer": "return=representation"}

    @staticmethod
    def _where(match: Mapping[str, Any]) -> dict[str, str]:
        return {c: "is.null" if v is None else f"eq.{v}" for c, v in match.items()}

    async def _db(self, query: sql.Composed, params: Sequence[Any]) -> dict[str, Any]:
        assert self.db_url is not None
        pg = require("psycopg", "db", _FEATURE)
        from psycopg.rows import dict_row

        async with await pg.AsyncConnection.connect(self.db_url, autocommit=True,
                                                    row_factory=dict_row) as conn:
            cur = await conn.execute(query, params)
            row = await cur.fetchone() if cur.description else None
            return dict(row) if row else {}

    def _ident(self) -> sql.Identifier:
        from psycopg import sql

        return sql.Identifier(self.want.schema, self.want.table)

    def _cond(self, match: Mapping[str, Any]) -> sql.Composable:
        from psycopg import sql

        return sql.SQL(" and ").join(sql.SQL("{} is not distinct from %s").format(
            sql.Identifier(c)) for c in match)

    async def insert(self, row: Mapping[str, Any]) -> dict[str, Any]:
        if self.key is not None:
            response = await self.http.post(self._url(), json=dict(row), headers=self._headers())
            if response.status_code >= 400:
                raise RuntimeError(rest_error(response))
            body = response.json()
            return dict(body[0]) if isinstance(body, list) and body else {}
        from psycopg import sql

        cols = sql.SQL(", ").join(sql.Identifier(c) for c in row)
        values = sql.SQL(", ").join(sql.Placeholder() for _ in row)
        query = (sql.SQL("insert into {} ({}) values ({}) returning *").format(
            self._ident(), cols, values) if row else
            sql.SQL("insert into {} default values returning *").format(self._ident()))
        return await self._db(query, list(row.values()))

    async def update(self, match: Mapping[str, Any], values: Mapping[str, Any]) -> None:
        if self.key is not None:
            response = await self.http.patch(self._url(), params=self._where(match),
                                             json=dict(values), headers=self._headers())
            if response.status_code >= 400:
                raise RuntimeError(rest_error(response))
            return
        from psycopg import sql

        sets = sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in values)
        await self._db(sql.SQL("update {} set {} where {}").format(
            self._ident(), sets, self._cond(match)), [*values.values(), *match.values()])

    async def delete(self, match: Mapping[str, Any]) -> None:
        if self.key is not None:
            response = await self.http.delete(self._url(), params=self._where(match),
                                              headers=self._headers())
            if response.status_code >= 400:
                raise RuntimeError(rest_error(response))
            return
        from psycopg import sql

        await self._db(sql.SQL("delete from {} where {}").format(self._ident(), self._cond(match)),
                       list(match.values()))


def _matches(payload: Mapping[str, Any], op: str, match: Mapping[str, Any]) -> bool:
    data = payload.get("data") or {}
    kind = data.get("type", "")
    # realtime-py hands over its own str-Enum here (RealtimePostgresChangesListenEvent)
    if str(getattr(kind, "value", kind)).upper() != op:
        return False
    record = data.get("old_record") if op == "DELETE" else data.get("record")
    if not isinstance(record, Mapping):
        return False
    return all(str(record.get(c)) == str(v) for c, v in match.items() if c in record)


async def _wait_event(watch: Watch, op: str, match: Mapping[str, Any], deadline: float,
                      ) -> tuple[float, float, Mapping[str, Any]] | None:
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        try:
            item = await asyncio.wait_for(watch.events.get(), left)
        except TimeoutError:
            return None
        if _matches(item[2], op, match):
            return item


async def run_probe(want: Want, watch: Watch, writer: _Writer, table: TableFacts | None,
                    given: Mapping[str, Any] | None, wait: float) -> ProbeFacts:
    """Write a probe row, wait for the event the subscription should see, delete the row."""
    op = next(e for e in ("INSERT", "UPDATE", "DELETE") if e in want.events)
    row = dict(given) if given is not None else probe_row_for(want)
    if table is not None and table.exists:
        missing = sorted(table.required_columns - set(row))
        if missing:
            return ProbeFacts(op, missing_columns=tuple(missing), skipped_reason=(
                f"the table has required columns without defaults ({', '.join(missing)})"))
    pk = (table.primary_key if table is not None and table.primary_key else want.primary_key)
    while not watch.events.empty():
        watch.events.get_nowait()
    start = time.monotonic()
    try:
        written = await writer.insert(row)
    except Exception as exc:
        return ProbeFacts(op, write_error=str(exc)[:300])
    key_cols = [c for c in (pk or ("id",)) if c in written] or list(row)
    match = {c: written.get(c, row.get(c)) for c in key_cols}
    cleanup_error: str | None = None
    try:
        if op != "INSERT":
            start = time.monotonic()
            if op == "UPDATE":
                values = {c: v for c, v in row.items() if c not in match} or dict(match)
                await writer.update(match, values)
            else:
                await writer.delete(match)
        got = await _wait_event(watch, op, match, start + wait)
    finally:
        if op != "DELETE":
            try:
                await writer.delete(match)
            except Exception as exc:
                cleanup_error = str(exc)[:300]
    if got is None:
        return ProbeFacts(op, wrote=True, cleanup_error=cleanup_error, row=written or row)
    wall, mono, payload = got
    committed = parse_timestamp((payload.get("data") or {}).get("commit_timestamp"))
    latency = (wall - committed.timestamp()) * 1000 if committed is not None else None
    return ProbeFacts(op, wrote=True, received=True, latency_ms=latency, row=written or row,
                      roundtrip_ms=(mono - start) * 1000, cleanup_error=cleanup_error)



async def run_probes(http: httpx.AsyncClient, rest: str, settings: Any, wants: Sequence[Want],
                     watches: Mapping[str, Watch], probe_rows: Mapping[str, Mapping[str, Any]],
                     api_key: str, token: str, wait: float, facts: Facts) -> None:
    """Probe every live subscription in turn, recording results and filter mismatches.

    Raises:
        MissingExtra: see :func:`require_driver` (checked before the first write).
    """
    require_driver(settings)
    service_key = opt(settings, "service_role_key")
    db_url = opt(settings, "db_url")
    for want in wants:
        watch = watches.get(want.name)
        if watch is None or not facts.joins[want.name].subscribed:
            continue
        given = probe_rows.get(want.name, probe_rows.get("*"))
        # Prefer the service-role key (RLS cannot refuse the write), then the database, then
        # the subscriber's own token.
        key = service_key or (None if db_url else token)
        writer = _Writer(want, http, rest, api_key, key, db_url)
        facts.probes[want.name] = await run_probe(want, watch, writer, facts.tables.get(want.name),
                                                  given, wait)
        # judge the row as written (defaults filled in by the database), else as given
        written = facts.probes[want.name].row
        mismatch = filter_mismatch(want, written if written is not None else
                                   dict(given) if given is not None else probe_row_for(want))
        if mismatch:
            facts.mismatches[want.name] = mismatch
