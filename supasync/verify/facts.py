"""The I/O of ``supasync verify``: gather the facts the checks decide on.

* Tokens are decoded (never shown) for ``role`` and ``exp``, and their signature checked when
  the JWT secret is known.
* The socket, the joins, ``Subscribed to PostgreSQL`` and the probe events come from realtime-py's
  ``AsyncRealtimeClient``, used exactly as an application would (one socket, one channel per
  subscription, the subscriber's token pushed with ``set_auth``). realtime-py hands ``system``
  *errors* to the subscribe callback as ``CHANNEL_ERROR`` with the JSON of the payload as the
  exception text (``realtime/_async/channel.py`` ``on_error``); :func:`error_text` reads the
  server's message back out of it.
* Catalog facts (columns, keys, replica identity, publication, RLS policies, grants) come from
  PostgreSQL over ``SUPABASE_DB_URL`` when it is set and the driver (psycopg, the ``db`` extra)
  is installed; without the driver :attr:`Facts.driver_missing` says so and the catalog checks
  are skipped, as when the URL is not set. psycopg is imported only then, never at import time.
* Visible rows are counted through PostgREST with the subscriber's own token.
* The probe (:mod:`supasync.verify.probe`) writes a row with the service-role key over
  PostgREST (else over the database), waits for its event, and deletes it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import httpx
import jwt
from realtime import (
    AsyncRealtimeClient,
    RealtimePostgresChangesListenEvent,
    RealtimeSubscribeStates,
)
from websockets.exceptions import InvalidStatus

from ..client.tokens import TokenKeeper
from ..core.errors import AuthError, ConfigError, MissingExtra, SupasyncError
from ..core.extras import require
from ..repair.sqlinstall import RPC_NAME
from .model import (
    ALL_EVENTS,
    ConnectionFacts,
    JoinFacts,
    Policy,
    ProbeFacts,
    TableFacts,
    TokenFacts,
    VisibleRows,
    Want,
    want_from_spec,
)

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "Facts",
    "Watch",
    "error_text",
    "gather",
    "opt",
    "rest_error",
    "rest_headers",
    "table_facts",
    "token_facts",
]

SUBSCRIBED_TEXT = "Subscribed to PostgreSQL"
_HS_ALGS = ["HS256", "HS384", "HS512"]


@dataclass
class Facts:
    """Everything :func:`gather` found, keyed by subscription name where per subscription."""

    connection: ConnectionFacts
    tokens: list[TokenFacts] = field(default_factory=list)
    role: str | None = None
    database: str | None = None  # None: not configured; "" : connected; else the error
    driver_missing: MissingExtra | None = None  # configured, but psycopg is not installed
    joins: dict[str, JoinFacts] = field(default_factory=dict)
    tables: dict[str, TableFacts] = field(default_factory=dict)
    visible: dict[str, VisibleRows] = field(default_factory=dict)
    probes: dict[str, ProbeFacts] = field(default_factory=dict)
    mismatches: dict[str, str] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- tokens


def token_facts(label: str, token: str, jwt_secret: str | None) -> TokenFacts:
    """Decode *token*'s claims (no verification unless *jwt_secret* is given)."""
    if token.startswith("sb_"):
        return TokenFacts(label, is_jwt=False, opaque_key=True)
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return TokenFacts(label, is_jwt=False)
    missing = tuple(c for c in ("role", "exp") if c not in claims)
    signature_ok: bool | None = None
    if jwt_secret and header.get("alg") in _HS_ALGS:
        try:
            jwt.decode(token, jwt_secret, algorithms=_HS_ALGS,
                       options={"verify_exp": False, "verify_aud": False, "verify_iat": False,
                                "verify_nbf": False})
            signature_ok = True
        except jwt.InvalidSignatureError:
            signature_ok = False
        except jwt.PyJWTError:
            signature_ok = None
    exp = claims.get("exp")
    role = claims.get("role")
    return TokenFacts(label, is_jwt=True, role=role if isinstance(role, str) else None,
                      expires_at=float(exp) if isinstance(exp, int | float) else None,
                      signature_ok=signature_ok, missing_claims=missing)


def opt(settings: Any, name: str) -> str | None:
    value = getattr(settings, name, None)
    return str(value) if value else None


@dataclass(frozen=True)
class _Tokens:
    api_key: str
    token: str
    source: str | None
    error: str | None = None


async def _resolve_tokens(settings: Any, wait: float) -> _Tokens:
    """The socket API key and the channel token the application would use, obtained the way
    the application obtains them (:meth:`supasync.client.tokens.TokenKeeper.from_settings`)."""
    source: str | None = None
    with contextlib.suppress(Exception):
        source = str(settings.token_source())
    api_key = opt(settings, "anon_key") or opt(settings, "service_role_key") or ""
    fallback = opt(settings, "access_token") or api_key
    try:
        keeper = TokenKeeper.from_settings(settings)
    except ConfigError:
        raise  # no usable identity configured: a configuration error (exit 2), not a finding
    except (SupasyncError, AttributeError, TypeError) as exc:
        return _Tokens(api_key, fallback, source, str(exc))
    try:
        token = await asyncio.wait_for(keeper.token(), wait)
        return _Tokens(keeper.api_key, token, source)
    except (SupasyncError, TimeoutError) as exc:
        # An expired static token lands here: report it as what it is (the token check says
        # "expired"), other failures as "could not obtain".
        error = None if fallback and isinstance(exc, AuthError) and "expired" in str(exc) \
            else (str(exc) or type(exc).__name__)
        return _Tokens(keeper.api_key, fallback, source, error)
    finally:
        with contextlib.suppress(Exception):
            await keeper.aclose()


# --------------------------------------------------------------------------- realtime


def error_text(error: BaseException | None) -> str:
    """The server's text from realtime-py's error (JSON of the system payload or join reply)."""
    if error is None:
        return "unknown error"
    text = str(error)
    try:
        payload = json.loads(text)
    except ValueError:
        return text
    if isinstance(payload, dict):
        for key in ("message", "reason"):
            if isinstance(payload.get(key), str):
                return str(payload[key])
    return text


class Watch:
    """Collects one channel's lifecycle and its postgres_changes events."""

    def __init__(self, topic: str, timeout: float) -> None:
        self.topic = topic
        self.timeout = timeout
        self.started = time.monotonic()
        self.joined = False
        self.join_error: str | None = None
        self.system_error: str | None = None
        self.subscribed_after: float | None = None
        self.settled = asyncio.Event()
        self.events: asyncio.Queue[tuple[float, float, Mapping[str, Any]]] = asyncio.Queue()

    def on_state(self, state: RealtimeSubscribeStates, error: Exception | None) -> None:
        if state == RealtimeSubscribeStates.SUBSCRIBED:
            self.joined = True
        elif state == RealtimeSubscribeStates.CHANNEL_ERROR:
            if self.joined:
                self.system_error = self.system_error or error_text(error)
            else:
                self.join_error = self.join_error or error_text(error)
            self.settled.set()
        else:  # TIMED_OUT, CLOSED
            self.settled.set()

    def on_system(self, payload: Any) -> None:
        if SUBSCRIBED_TEXT in str(getattr(payload, "message", "")):
            if self.subscribed_after is None:
                self.subscribed_after = time.monotonic() - self.started
            self.settled.set()

    def on_change(self, payload: Mapping[str, Any]) -> None:
        self.events.put_nowait((time.time(), time.monotonic(), payload))

    def facts(self) -> JoinFacts:
        return JoinFacts(topic=self.topic, timeout=self.timeout, joined=self.joined,
                         join_error=self.join_error,
                         subscribed=self.subscribed_after is not None and not self.system_error,
                         system_error=self.system_error,
                         seconds_to_subscribed=self.subscribed_after)


async def _connect(url: str, api_key: str, wait: float,
                   ) -> tuple[AsyncRealtimeClient, ConnectionFacts]:
    client = AsyncRealtimeClient(url, token=api_key or None, auto_reconnect=False,
                                 timeout=max(1, ceil_int(wait)))
    try:
        await asyncio.wait_for(client.connect(), wait)
    except InvalidStatus as exc:
        status = exc.response.status_code
        body = exc.response.body or b""
        try:
            message = str(json.loads(body).get("error") or body.decode(errors="replace"))
        except (ValueError, AttributeError):
            message = body.decode(errors="replace").strip() or f"HTTP {status}"
        return client, ConnectionFacts(url, False, status, message)
    except TimeoutError:
        return client, ConnectionFacts(url, False, None, f"no handshake within {wait:g} s")
    except Exception as exc:
        return client, ConnectionFacts(url, False, None, f"{type(exc).__name__}: {exc}")
    return client, ConnectionFacts(url, True)


def ceil_int(value: float) -> int:
    return int(-(-value // 1))


async def _join(client: AsyncRealtimeClient, want: Want, wait: float) -> Watch:
    topic = f"supasync-verify:{want.name}:{uuid.uuid4().hex[:8]}"
    watch = Watch(f"realtime:{topic}", wait)
    channel = client.channel(topic)
    events = (["*"] if want.events == ALL_EVENTS
              else sorted(want.events, key=["INSERT", "UPDATE", "DELETE"].index))
    for event in events:
        channel.on_postgres_changes(
            RealtimePostgresChangesListenEvent(event), watch.on_change, table=want.table,
            schema=want.schema, filter=want.filter_text or None, select=list(want.columns) or None)
    channel.on_system(watch.on_system)
    await channel.subscribe(watch.on_state)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(watch.settled.wait(),
                               max(0.0, wait - (time.monotonic() - watch.started)))
    return watch


async def _close(client: AsyncRealtimeClient) -> None:
    for channel in list(client.channels.values()):
        channel.rejoin_timer.reset()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.remove_all_channels(), 5)
    with contextlib.suppress(Exception):
        await client.close()


# --------------------------------------------------------------------------- database

_TABLE_SQL = """
select c.oid, c.relrowsecurity, c.relreplident from pg_class c
join pg_namespace n on n.oid = c.relnamespace
where n.nspname = %s and c.relname = %s and c.relkind in ('r', 'p')
"""
_COLUMNS_SQL = """
select a.attname, t.typname,
       a.attnotnull and not a.atthasdef and a.attidentity = '' and a.attgenerated = ''
from pg_attribute a join pg_type t on t.oid = a.atttypid
where a.attrelid = %s and a.attnum > 0 and not a.attisdropped order by a.attnum
"""
_INDEX_COLUMNS_SQL = """
select a.attname from pg_index i
cross join lateral unnest(i.indkey) with ordinality k(attnum, ord)
join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
where i.indrelid = %s and {which} order by k.ord
"""
_PUBLICATION_SQL = """
select p.pubinsert, p.pubupdate, p.pubdelete,
       exists(select 1 from pg_publication_tables t
              where t.pubname = p.pubname and t.schemaname = %s and t.tablename = %s)
from pg_publication p where p.pubname = 'supabase_realtime'
"""
_POLICIES_SQL = """
select p.polname, p.polcmd, p.polpermissive,
       array(select case when r = 0 then 'public' else r::regrole::text end
             from unnest(p.polroles) r),
       (0 = any(p.polroles) or (%(exists)s and exists(
            select 1 from unnest(p.polroles) r
            where r <> 0 and pg_has_role(%(role)s, r, 'member'))))
from pg_policy p where p.polrelid = %(oid)s
"""
_CMD = {"r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE", "*": "ALL"}
_IDENT = {"d": "default", "f": "full", "n": "nothing", "i": "index"}


# Names from supasync/repair/sql/exact.sql (supasync.repair.sqlinstall): the table list, the row
# trigger and the RPC that repair calls. All three must be there for exact mode to work.
_EXACT_SQL = """
select to_regclass('supasync.logged_tables') is not null
   and exists(select 1 from pg_trigger where tgrelid = %(oid)s and tgname = 'supasync_log'
              and not tgisinternal)
   and exists(select 1 from pg_proc p join pg_namespace n on n.oid = p.pronamespace
              where n.nspname = 'public' and p.proname = %(rpc)s)
"""
_EXACT_LOGGED = """
select exists(select 1 from supasync.logged_tables where schema_name = %s and table_name = %s)
"""


async def _exact_installed(conn: psycopg.AsyncConnection[Any], oid: int, schema: str,
                           table: str) -> bool:
    """Whether supasync's exact-mode SQL (change log, trigger, RPC) is installed for the table."""
    cur = await conn.execute(_EXACT_SQL, {"oid": oid, "rpc": RPC_NAME})
    row = await cur.fetchone()
    if not (row and row[0]):
        return False
    cur = await conn.execute(_EXACT_LOGGED, (schema, table))
    row = await cur.fetchone()
    return bool(row and row[0])


# Enabled, non-internal row triggers firing BEFORE UPDATE (pg_trigger.tgtype bits: 1 row,
# 2 before, 16 update), and the columns supasync's touch trigger bumps (repair/sql/touch.sql).
_UPDATE_TRIGGERS_SQL = """
select t.tgname from pg_trigger t
where t.tgrelid = %(oid)s and not t.tgisinternal and t.tgenabled <> 'D'
  and t.tgtype & 19 = 19 order by 1
"""
_TOUCHED_SQL = """
select column_name from supasync.touched_columns where schema_name = %s and table_name = %s
"""


async def _cursor_triggers(conn: psycopg.AsyncConnection[Any], oid: int, schema: str,
                           table: str) -> tuple[tuple[str, ...], frozenset[str]]:
    """BEFORE UPDATE row triggers of the table, and the columns supasync's trigger bumps."""
    cur = await conn.execute(_UPDATE_TRIGGERS_SQL, {"oid": oid})
    names = tuple(str(r[0]) for r in await cur.fetchall())
    touched: frozenset[str] = frozenset()
    if "supasync_touch" in names:
        cur = await conn.execute("select to_regclass('supasync.touched_columns') is not null")
        found = await cur.fetchone()
        if found and found[0]:
            cur = await conn.execute(_TOUCHED_SQL, (schema, table))
            touched = frozenset(str(r[0]) for r in await cur.fetchall())
    return names, touched


async def table_facts(conn: psycopg.AsyncConnection[Any], schema: str, table: str,
                      role: str | None) -> TableFacts:
    """Read one table's catalog facts, relative to *role* (psycopg is installed: *conn*)."""
    from psycopg import sql

    cur = await conn.execute(_TABLE_SQL, (schema, table))
    row = await cur.fetchone()
    if row is None:
        return TableFacts(schema, table, exists=False)
    oid, rls, ident = row
    cur = await conn.execute(_COLUMNS_SQL, (oid,))
    cols = await cur.fetchall()
    columns = {name: typ for name, typ, _ in cols}
    required = frozenset(name for name, _, req in cols if req)
    cur = await conn.execute(sql.SQL(_INDEX_COLUMNS_SQL).format(which=sql.SQL("i.indisprimary")),
                             (oid,))
    pk = tuple(r[0] for r in await cur.fetchall())
    replica = _IDENT.get(ident, "default")
    identity: tuple[str, ...] = pk
    if replica == "index":
        cur = await conn.execute(
            sql.SQL(_INDEX_COLUMNS_SQL).format(which=sql.SQL("i.indisreplident")), (oid,))
        identity = tuple(r[0] for r in await cur.fetchall())
    elif replica == "full":
        identity = tuple(columns)
    cur = await conn.execute(_PUBLICATION_SQL, (schema, table))
    pub = await cur.fetchone()
    actions: frozenset[str] = frozenset()
    if pub is not None:
        actions = frozenset(e for e, on in zip(("INSERT", "UPDATE", "DELETE"), pub[:3],
                                              strict=True) if on)
    role_exists, bypass, can_select = True, False, True
    if role:
        cur = await conn.execute("select rolbypassrls or rolsuper from pg_roles where rolname = %s",
                                 (role,))
        role_row = await cur.fetchone()
        role_exists = role_row is not None
        bypass = bool(role_row and role_row[0])
        if role_exists:
            cur = await conn.execute("select has_table_privilege(%s, %s::oid, 'SELECT')",
                                     (role, oid))
            priv = await cur.fetchone()
            can_select = bool(priv and priv[0])
    cur = await conn.execute(_POLICIES_SQL, {"exists": role_exists and bool(role),
                                             "role": role or "", "oid": oid})
    policies = tuple(Policy(name, _CMD.get(cmd, cmd), tuple(roles), bool(perm), bool(applies))
                     for name, cmd, perm, roles, applies in await cur.fetchall())
    cur = await conn.execute(sql.SQL("select count(*) from (select 1 from {} limit 100001) s")
                             .format(sql.Identifier(schema, table)))
    count = await cur.fetchone()
    update_triggers, touched = await _cursor_triggers(conn, oid, schema, table)
    return TableFacts(
        schema, table, exists=True, columns=columns, required_columns=required, primary_key=pk,
        replica_identity=replica, identity_columns=identity, publication_exists=pub is not None,
        published=bool(pub and pub[3]), published_actions=actions, rls_enabled=bool(rls),
        policies=policies, row_count=int(count[0]) if count else None,
        exact_installed=await _exact_installed(conn, oid, schema, table), role_exists=role_exists,
        update_triggers=update_triggers, cursor_touched=touched,
        role_bypasses_rls=bypass, role_can_select=can_select)


# --------------------------------------------------------------------------- REST


def rest_headers(api_key: str, token: str, schema: str, write: bool = False) -> dict[str, str]:
    headers = {"apikey": api_key, "Authorization": f"Bearer {token}"}
    if schema != "public":
        headers["Content-Profile" if write else "Accept-Profile"] = schema
    return headers


def rest_error(response: httpx.Response) -> str:
    try:
        body = response.json()
        message = body.get("message") or body.get("error") or response.text
    except (ValueError, AttributeError):
        message = response.text
    return f"HTTP {response.status_code}: {str(message)[:200]}"


async def visible_rows(http: httpx.AsyncClient, rest: str, api_key: str, token: str,
                       want: Want) -> VisibleRows:
    """How many rows the subscriber's token can read (exact count when PostgREST gives one)."""
    headers = {**rest_headers(api_key, token, want.schema), "Prefer": "count=exact"}
    try:
        response = await http.get(f"{rest}/{want.table}", params={"select": "*", "limit": "1"},
                                  headers=headers)
    except httpx.HTTPError as exc:
        return VisibleRows(error=f"{type(exc).__name__}: {exc}")
    if response.status_code >= 400:
        return VisibleRows(error=rest_error(response))
    total = response.headers.get("content-range", "").rpartition("/")[2]
    try:
        rows = response.json()
    except ValueError:
        rows = []
    count = int(total) if total.isdigit() else None
    return VisibleRows(count=count, any=bool(rows) if count is None else count > 0)


# --------------------------------------------------------------------------- gather


def _db_secrets(db_url: str | None) -> list[str]:
    if not db_url:
        return []
    parts = urlsplit(db_url)
    return [db_url] + ([parts.password] if parts.password else [])


async def _tables(db_url: str, wants: Sequence[Want], role: str | None, wait: float,
                  facts: Facts) -> None:
    try:
        pg = require("psycopg", "db", "verify's catalog checks")
    except MissingExtra as exc:
        facts.driver_missing = exc
        return
    try:
        async with await pg.AsyncConnection.connect(
                db_url, autocommit=True, connect_timeout=max(1, ceil_int(wait))) as conn:
            for want in wants:
                facts.tables[want.name] = await table_facts(conn, want.schema, want.table, role)
        facts.database = ""
    except pg.Error as exc:
        facts.database = f"{type(exc).__name__}: {str(exc).strip()[:300]}"


class Prober(Protocol):
    """Runs the probe writes once the joins are live (:func:`supasync.verify.probe.run_probes`)."""

    async def __call__(self, http: httpx.AsyncClient, rest: str, settings: Any,
                       wants: Sequence[Want], watches: Mapping[str, Watch],
                       probe_rows: Mapping[str, Mapping[str, Any]], api_key: str, token: str,
                       wait: float, facts: Facts) -> None: ...


async def gather(settings: Any, specs: Sequence[Any], *, prober: Prober | None, wait: float,
                 probe_rows: Mapping[str, Mapping[str, Any]]) -> Facts:
    """Gather every fact the checks need; never raises for what it finds.

    Args:
        settings: ``supasync.client.config.Settings``-like (``url``, ``realtime_url``, keys,
            ``db_url``).
        specs: the subscriptions.
        prober: runs the probe write per live subscription (None: no probe). Passed in, so
            this module and :mod:`supasync.verify.probe`, which reads these facts, import one
            way only.
        wait: seconds per wait (handshake, join plus ``Subscribed``, each probe event).
        probe_rows: probe rows by subscription name, ``"*"`` for every subscription.
    """
    resolved = await _resolve_tokens(settings, wait)
    api_key, token = resolved.api_key, resolved.token
    jwt_secret = opt(settings, "jwt_secret")
    db_url = opt(settings, "db_url")
    url = (opt(settings, "url") or "").rstrip("/")
    realtime_url = opt(settings, "realtime_url") or url + "/realtime/v1"
    secrets = [s for s in (api_key, token, opt(settings, "service_role_key"),
                           opt(settings, "anon_key"), jwt_secret) if s] + _db_secrets(db_url)

    tokens = [token_facts("api key", api_key, jwt_secret)]
    if resolved.error:
        tokens.append(TokenFacts("access token", False, error=resolved.error))
    elif token != api_key:
        refreshable = resolved.source in ("password", "jwt_secret")
        tokens.append(dataclasses.replace(token_facts("access token", token, jwt_secret),
                                          refreshable=refreshable))
    role = token_facts("token", token, None).role  # the identity the channels join with
    wants = [want_from_spec(s, role) for s in specs]

    client, connection = await _connect(realtime_url, api_key, wait)
    facts = Facts(connection=connection, tokens=tokens, role=role, secrets=secrets)
    watches: dict[str, Watch] = {}
    try:
        if connection.connected:
            if token != api_key:
                await client.set_auth(token)
            done = await asyncio.gather(*(_join(client, w, wait) for w in wants),
                                        return_exceptions=True)
            for want, outcome in zip(wants, done, strict=True):
                if isinstance(outcome, Watch):
                    watches[want.name] = outcome
                    facts.joins[want.name] = outcome.facts()
                else:
                    facts.joins[want.name] = JoinFacts(
                        topic="", timeout=wait, join_error=f"{type(outcome).__name__}: {outcome}")
        if db_url:
            await _tables(db_url, wants, role, wait, facts)
        async with httpx.AsyncClient(timeout=wait) as http:
            rest = f"{url}/rest/v1"
            if url:
                for want in wants:
                    facts.visible[want.name] = await visible_rows(http, rest, api_key, token, want)
            if prober is not None:
                await prober(http, rest, settings, wants, watches, probe_rows, api_key, token,
                             wait, facts)
    finally:
        await _close(client)
    return facts
