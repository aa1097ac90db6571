"""The PostgREST subset at ``/rest/v1``: HTTP, connections, transactions, roles and errors.

Contract (what the official ``postgrest`` client relies on):

* Every request needs an ``apikey`` header or query parameter signed with the stack's secret
  (Supabase's gateway: 401 ``No API key found in request`` / ``Invalid API key``); the
  ``Authorization: Bearer`` token, else the apikey, is verified with the stack's JWT secret and
  decides the role (no ``role`` claim: ``anon``). Errors: 401 ``PGRST301`` (malformed or badly
  signed JWT); 401 ``PGRST303`` (``JWT expired``), with ``WWW-Authenticate``.
* Each request runs in one transaction on a pooled connection that logged in as
  ``authenticator``: ``set_config('role', <jwt role>, true)`` and
  ``set_config('request.jwt.claims', <claims>, true)`` first, so row-level security,
  ``auth.uid()`` and ``auth.role()`` behave as on Supabase. GET/HEAD transactions are read-only.
* Tables and views: GET/HEAD (select, filters, order, limit/offset, ``Range``, ``Prefer:
  count=exact`` with ``Content-Range``, ``Accept: application/vnd.pgrst.object+json``, ``Accept:
  text/csv``, ``Accept: application/vnd.pgrst.plan[+json|+text]; options=analyze|...`` for the
  ``EXPLAIN`` of the read; resource embedding through foreign keys, :mod:`.rest_embed`, also on
  writes' ``return=representation``), POST
  (insert/upsert, ``return=``, ``resolution=``, ``on_conflict``, ``columns``,
  ``missing=default``), PATCH and DELETE with filters (a WHERE clause is required, as
  Supabase's ``pg_safeupdate`` does). ``/rpc/<fn>``: POST with JSON arguments, GET/HEAD with
  query arguments. ``Accept-Profile`` / ``Content-Profile`` pick the schema (default public).
* Row JSON is PostgreSQL's own (``row_to_json``). A read whose ``limit`` is at most
  :data:`JOINED_ROWS` (a keyset page) has its rows joined by PostgreSQL into one value, as
  PostgREST builds a whole answer; other reads go through a server-side cursor and, beyond
  :data:`BUFFER_ROWS` rows, are streamed in chunks (chunked transfer encoding) with at most
  :data:`BUFFER_ROWS` rows held. Both give the same bytes.
* ``supasync dev --max-rows N`` (or ``PGRST_DB_MAX_ROWS`` in the stack's environment) caps the
  rows of every read, as PostgREST's ``db-max-rows`` does (Supabase's "Max rows", 1000 there by
  default; no cap when unset): a larger ``limit`` gets that many rows, and ``Content-Range``
  says so.
* ``GET /rest/v1/`` returns a Swagger 2.0 description (:mod:`.rest_catalog`):
  ``definitions.<table>.properties.<column>.format`` is the PostgreSQL type, primary-key
  columns carry ``<pk/>`` in their ``description``.
* Database errors come back as ``{"code","message","details","hint"}`` with PostgREST's status
  mapping (e.g. 23505 → 409, 42501 → 401 for anon / 403 otherwise, 42P01 → 404, others 400).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import jwt
import psycopg
from aiohttp import web
from psycopg import sql
from psycopg.conninfo import make_conninfo

from . import rest_query as rq
from .rest_catalog import Function, Table, describe_schema, find_function, find_table, foreign_keys
from .rest_embed import has_embeds, resolve
from .rest_query import ApiError

if TYPE_CHECKING:
    from .context import StackContext

log = logging.getLogger("supasync.devstack.rest")

BUFFER_ROWS = 5000  # responses up to this many rows are sent with a Content-Length
JOINED_ROWS = 20000  # reads limited to this many rows are joined by PostgreSQL (one value)
FETCH_ROWS = 2000  # rows per server-side-cursor fetch while streaming
JSON_CT = "application/json; charset=utf-8"
CSV_CT = "text/csv; charset=utf-8"
PLAN_MT = "application/vnd.pgrst.plan"
OBJECT_MT = "application/vnd.pgrst.object+json"
DEFAULT_SCHEMAS = ("public", "graphql_public")

Conn = psycopg.AsyncConnection[Any]


# -- connections ----------------------------------------------------------------------------


class ConnectionPool:
    """A small pool of autocommit connections (callers open transactions themselves).

    Connections are made lazily up to ``max_size``; a connection that comes back broken or
    inside a transaction is closed instead of reused.
    """

    def __init__(self, conninfo: str, max_size: int = 8, *, name: str = "supasync-rest") -> None:
        self._conninfo = conninfo
        self._name = name
        self._idle: list[Conn] = []
        self._slots = asyncio.Semaphore(max_size)
        self._all: set[Conn] = set()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Conn]:
        async with self._slots:
            conn = None
            while self._idle and conn is None:
                candidate = self._idle.pop()
                if candidate.closed or candidate.broken:
                    self._all.discard(candidate)
                else:
                    conn = candidate
            if conn is None:
                conn = await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, application_name=self._name)
                self._all.add(conn)
            try:
                yield conn
            finally:
                ok = (not conn.closed and not conn.broken
                      and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE)
                if ok:
                    self._idle.append(conn)
                else:
                    self._all.discard(conn)
                    with contextlib.suppress(Exception):
                        await conn.close()

    async def close(self) -> None:
        for conn in list(self._all):
            with contextlib.suppress(Exception):
                await conn.close()
        self._all.clear()
        self._idle.clear()


# -- the gateway ----------------------------------------------------------------------------


def gateway_error(request: web.Request, secret: str) -> dict[str, str] | None:
    """What Supabase's API gateway answers (401) before a request reaches a service, or None.

    The ``apikey`` header (or query parameter) must be present and be a JWT signed with the
    project's secret (its expiry is the service's business, not the gateway's).
    """
    apikey = request.headers.get("apikey") or request.query.get("apikey")
    if not apikey:
        return {"message": "No API key found in request",
                "hint": "No `apikey` request header or url param was found."}
    try:
        jwt.decode(apikey, secret, algorithms=["HS256", "HS384", "HS512"],
                   options={"verify_exp": False, "verify_aud": False, "verify_iat": False,
                            "verify_nbf": False})
    except jwt.PyJWTError:
        return {"message": "Invalid API key",
                "hint": "Double check your Supabase `anon` or `service_role` API key."}
    return None


# -- errors ---------------------------------------------------------------------------------

_EXACT_STATUS = {"23503": 409, "23505": 409, "25006": 405, "53400": 500, "P0001": 400,
                 "42883": 404, "42P01": 404, "42P17": 500}
_PREFIX_STATUS = {"08": 503, "09": 500, "0L": 403, "0P": 403, "25": 500, "28": 403, "2D": 500,
                  "38": 500, "39": 500, "3B": 500, "40": 500, "53": 503, "54": 500, "55": 500,
                  "57": 500, "58": 500, "F0": 500, "HV": 500, "P0": 500, "XX": 500}


def status_for_sqlstate(code: str, role: str) -> int:
    """PostgREST's HTTP status for a PostgreSQL error code (``PTnnn`` gives ``nnn``)."""
    if code == "42501":
        return 401 if role == "anon" else 403
    if code.startswith("PT") and code[2:].isdigit():
        return int(code[2:])
    if code in _EXACT_STATUS:
        return _EXACT_STATUS[code]
    return _PREFIX_STATUS.get(code[:2], 400)


def db_error(exc: psycopg.Error, role: str) -> ApiError:
    diag = exc.diag
    code = diag.sqlstate
    if not code:
        if "NUL (0x00)" in str(exc):  # psycopg refuses what PostgreSQL would refuse
            return ApiError(400, "22021", 'invalid byte sequence for encoding "UTF8": 0x00')
        if isinstance(exc, psycopg.OperationalError):
            return ApiError(503, "PGRST001", "Database client error. Retrying the connection.",
                            str(exc) or None)
        return ApiError(500, "PGRST000", "Database client error", str(exc) or None)
    return ApiError(status_for_sqlstate(code, role), code, diag.message_primary or str(exc),
                    diag.message_detail, diag.message_hint)


def error_response(err: ApiError) -> web.Response:
    headers = {}
    if err.code.startswith("PGRST"):
        headers["Proxy-Status"] = f"PostgREST; error={err.code}"
    if err.status == 401 and err.code.startswith("PGRST3"):
        headers["WWW-Authenticate"] = (
            f'Bearer error="invalid_token", error_description="{err.message}"')
    elif err.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return web.json_response(err.body(), status=err.status, headers=headers)


# -- the server -----------------------------------------------------------------------------


@dataclass
class RequestAuth:
    role: str
    claims: dict[str, Any]


class RestServer:
    """The ``/rest/v1`` routes; mount with :meth:`add_routes`, then ``await start()``."""

    def __init__(self, ctx: StackContext, *, pool_size: int = 8) -> None:
        self.ctx = ctx
        self.schemas: tuple[str, ...] = tuple(
            dict.fromkeys((*DEFAULT_SCHEMAS, *getattr(ctx.config, "rest_schemas", ()))))
        self._pool_size = pool_size
        self._pool: ConnectionPool | None = None
        cap = os.environ.get("PGRST_DB_MAX_ROWS", "").strip()
        configured = getattr(ctx.config, "max_rows", None)
        self.max_rows: int | None = (
            configured if configured is not None else int(cap) if cap.isdigit() else None
        )

    def _capped(self, limit: int | None) -> int | None:
        """The rows a read may return: its own limit, within ``db-max-rows``."""
        if self.max_rows is None:
            return limit
        return self.max_rows if limit is None else min(limit, self.max_rows)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/rest/v1", self._root)
        app.router.add_route("*", "/rest/v1/", self._root)
        app.router.add_route("*", "/rest/v1/rpc/{fn}", self._rpc)
        app.router.add_route("*", "/rest/v1/{table}", self._table)

    async def start(self) -> None:
        conninfo = make_conninfo(self.ctx.dsn, user="authenticator")
        self._pool = ConnectionPool(conninfo, self._pool_size)

    async def stop(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    # -- request plumbing ------------------------------------------------------------------
    def _authenticate(self, request: web.Request) -> RequestAuth:
        gate = gateway_error(request, self.ctx.keys.jwt_secret)
        if gate is not None:
            raise ApiError(401, "", gate["message"], None, gate["hint"])
        apikey = request.headers.get("apikey") or request.query.get("apikey") or ""
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else apikey
        parts = token.split(".")
        if len(parts) != 3:
            raise ApiError(401, "PGRST301", f"Expected 3 parts in JWT; got {len(parts)}")
        try:
            claims = jwt.decode(token, self.ctx.keys.jwt_secret,
                                algorithms=["HS256", "HS384", "HS512"],
                                options={"verify_aud": False, "verify_iat": False})
        except jwt.ExpiredSignatureError as exc:
            raise ApiError(401, "PGRST303", "JWT expired") from exc
        except jwt.InvalidSignatureError as exc:
            raise ApiError(401, "PGRST301", "No suitable key or wrong key type") from exc
        except jwt.PyJWTError as exc:
            raise ApiError(401, "PGRST301", "JWT cryptographic operation failed") from exc
        if not isinstance(claims, dict):
            raise ApiError(401, "PGRST303", "Parsing JWT claims failed")
        role = claims.get("role") or "anon"
        if not isinstance(role, str):
            raise ApiError(401, "PGRST303", "Parsing JWT claims failed")
        return RequestAuth(role, claims)

    def _schema(self, request: web.Request, write: bool) -> str:
        header = "Content-Profile" if write else "Accept-Profile"
        schema = request.headers.get(header) or self.schemas[0]
        if schema not in self.schemas:
            raise ApiError(406, "PGRST106", f"Invalid schema: {schema}", None,
                           "Only the following schemas are exposed: " + ", ".join(self.schemas))
        return schema

    @contextlib.asynccontextmanager
    async def _transaction(self, request: web.Request, auth: RequestAuth, *, read_only: bool
                           ) -> AsyncIterator[Conn]:
        """A pooled connection inside a transaction running as the request's role."""
        assert self._pool is not None, "RestServer.start() was not called"
        async with self._pool.connection() as conn, conn.transaction():
            if read_only:
                await conn.execute("set transaction read only")
            headers = {k.lower(): v for k, v in request.headers.items()}
            await conn.execute(
                "select set_config('role', %s, true), set_config('request.jwt.claims', %s, true),"
                " set_config('request.method', %s, true), set_config('request.path', %s, true),"
                " set_config('request.headers', %s, true)",
                (auth.role, json.dumps(auth.claims), request.method, request.path,
                 json.dumps(headers)))
            yield conn

    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Authenticate, run ``handler(request, auth)`` and turn every failure into JSON."""
        role = "anon"
        try:
            auth = self._authenticate(request)
            role = auth.role
            result: web.StreamResponse = await handler(request, auth)
            return result
        except ApiError as err:
            if err.code == "":  # the gateway's own error shape
                return web.json_response({"message": err.message, "hint": err.hint}, status=401)
            return error_response(err)
        except psycopg.Error as exc:
            return error_response(db_error(exc, role))
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception:  # a bug here must not take the server down
            log.exception("REST handler failed for %s %s", request.method, request.path)
            return error_response(ApiError(500, "PGRST000", "Internal error in the devstack"))

    # -- routes ----------------------------------------------------------------------------
    async def _root(self, request: web.Request) -> web.StreamResponse:
        return await self._guard(request, self._openapi)

    async def _table(self, request: web.Request) -> web.StreamResponse:
        method = request.method
        if method in ("GET", "HEAD"):
            return await self._guard(request, self._read)
        if method == "POST":
            return await self._guard(request, self._insert)
        if method in ("PATCH", "DELETE"):
            return await self._guard(request, self._modify)
        return error_response(ApiError(405, "PGRST117", f"Unsupported HTTP method: {method}"))

    async def _rpc(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD", "POST"):
            return error_response(
                ApiError(405, "PGRST101", "Only GET, HEAD and POST are allowed for functions"))
        return await self._guard(request, self._call)

    # -- helpers ---------------------------------------------------------------------------
    @classmethod
    def _accept(cls, request: web.Request) -> tuple[bool, bool]:
        """(object wanted, nulls stripped) from ``Accept``; 406 ``PGRST107`` if unsupported."""
        media, stripped = cls._media(request, csv=False)
        return media == "object", stripped

    @staticmethod
    def _media(request: web.Request, *, csv: bool) -> tuple[str, bool]:
        """("array" | "object" | "csv", nulls stripped) from ``Accept``, first match first;
        406 ``PGRST107`` if none is supported (``text/csv`` only where ``csv`` says so)."""
        accept = request.headers.get("Accept", "")
        if not accept:
            return "array", False
        for item in accept.split(","):
            media, *params = (p.strip() for p in item.split(";"))
            stripped = "nulls=stripped" in params
            if media == OBJECT_MT:
                return "object", stripped
            if csv and media == "text/csv":
                return "csv", False
            if media in ("application/json", "*/*", "application/*",
                         "application/vnd.pgrst.array+json", ""):
                return "array", stripped
        raise ApiError(406, "PGRST107", f"None of these media types are available: {accept}")

    @staticmethod
    def _plan(request: web.Request) -> tuple[str, tuple[str, ...]] | None:
        """``("json" | "text", options)`` if ``Accept`` asks for the query plan, else None."""
        for item in request.headers.get("Accept", "").split(","):
            media, *params = (p.strip() for p in item.split(";"))
            if media in (PLAN_MT, PLAN_MT + "+json", PLAN_MT + "+text"):
                options: tuple[str, ...] = ()
                for p in params:
                    key, _, value = p.partition("=")
                    if key.strip() == "options":
                        options = tuple(o.strip() for o in value.strip('"').split("|"))
                return ("json" if media.endswith("+json") else "text"), options
        return None

    @staticmethod
    async def _joins(conn: Conn, schema: str, table: Table, q: rq.ReadQuery
                     ) -> tuple[rq.Join, ...]:
        """The resolved embeddings of ``q`` (no catalog query when there are none)."""
        if not has_embeds(q):
            return ()
        return resolve(schema, table.name, q, await foreign_keys(conn, schema))

    @staticmethod
    async def _json_body(request: web.Request) -> Any:
        raw = await request.read()
        try:
            return json.loads(raw) if raw.strip() else None
        except ValueError as exc:
            raise ApiError(400, "PGRST102", "Empty or invalid json") from exc

    @staticmethod
    def _body_response(rows: list[str], *, status: int, single: bool,
                       headers: dict[str, str], head: bool = False) -> web.Response:
        if single:
            if len(rows) != 1:
                raise _single_error(len(rows))
            body = rows[0].encode()
            ctype = f"{OBJECT_MT}; charset=utf-8"
        else:
            body = b"[" + ",".join(rows).encode() + b"]"
            ctype = JSON_CT
        resp = web.Response(body=None if head else body, status=status,
                            headers={**headers, "Content-Type": ctype})
        return resp

    # -- GET / HEAD ------------------------------------------------------------------------
    async def _read(self, request: web.Request, auth: RequestAuth) -> web.StreamResponse:
        schema = self._schema(request, write=False)
        q = rq.parse_read(list(request.query.items()))
        prefer = rq.parse_prefer(request.headers.getall("Prefer", []))
        plan = self._plan(request)
        media, strip = ("array", False) if plan else self._media(request, csv=True)
        single = media == "object"
        offset, limit = rq.effective_window(q, rq.parse_range(request.headers.get("Range")))
        limit = self._capped(limit)
        head = request.method == "HEAD"
        async with self._transaction(request, auth, read_only=True) as conn:
            table = await find_table(conn, schema, request.match_info["table"])
            joins = await self._joins(conn, schema, table, q)
            total: int | None = None
            if prefer.count:
                cur = await conn.execute(rq.count_sql(table.rel, q, table.name, joins))
                total = int((await cur.fetchone() or (0,))[0])
            if media == "csv":
                cur = await conn.execute(rq.csv_sql(
                    rq.rows_sql(table.rel, q, offset, limit, table.name, joins)))
                n, text = await cur.fetchone() or (0, "")
                headers = {"Content-Range": _content_range(offset, n, total),
                           "Content-Type": CSV_CT}
                if prefer.applied:
                    headers["Preference-Applied"] = ", ".join(prefer.applied)
                return web.Response(body=None if head else (text or "").encode(),
                                    status=_range_status(offset, n, total), headers=headers)
            query = rq.read_sql(table.rel, q, offset, limit, strip, table.name, joins)
            if plan is not None:
                fmt: Literal["json", "text"] = "json" if plan[0] == "json" else "text"
                cur = await conn.execute(rq.explain_sql(rq.joined_rows_sql(query), fmt, plan[1]))
                lines = [r[0] for r in await cur.fetchall()]
                body = (json.dumps(lines[0]) if fmt == "json" else "\n".join(lines)).encode()
                ctype = f'{PLAN_MT}+{fmt}; for="application/json"; charset=utf-8'
                return web.Response(body=None if head else body, headers={"Content-Type": ctype})
            return await self._send_rows(request, conn, query, offset=offset, limit=limit,
                                         total=total, single=single, head=head,
                                         prefer=prefer)

    async def _send_rows(self, request: web.Request, conn: Conn, query: sql.Composed, *,
                         offset: int, limit: int | None, total: int | None, single: bool,
                         head: bool, prefer: rq.Preferences) -> web.StreamResponse:
        """Run ``query`` (one JSON text per row) and answer.

        A window of at most :data:`JOINED_ROWS` rows (``limit`` says so; a keyset page)
        is joined by PostgreSQL itself (:func:`rest_query.joined_rows_sql`) and fetched as one
        value: no Python object per row. Otherwise the rows go through a server-side cursor:
        up to :data:`BUFFER_ROWS` rows are answered in one body, beyond that they are streamed
        ``FETCH_ROWS`` at a time, never all in memory. Both give the same bytes.
        """
        headers: dict[str, str] = {}
        if prefer.applied:
            headers["Preference-Applied"] = ", ".join(prefer.applied)
        if not single and limit is not None and limit <= JOINED_ROWS:
            # The limit bounds the answer, so the query runs once whatever it returns (a
            # volatile function must not run twice) and never holds more than the client
            # asked for in one body.
            cur = await conn.execute(rq.joined_rows_sql(query))
            n, joined = await cur.fetchone() or (0, None)
            headers["Content-Range"] = _content_range(offset, n, total)
            headers["Content-Type"] = JSON_CT
            body = b"[" + (joined or "").encode() + b"]"
            return web.Response(body=None if head else body,
                                status=_range_status(offset, n, total), headers=headers)
        async with conn.cursor(name="supasync_rest") as cur:
            await cur.execute(query)
            first = [r[0] for r in await cur.fetchmany(BUFFER_ROWS + 1)]
            if single:
                n = len(first)
                while n > 1 and (more := await cur.fetchmany(FETCH_ROWS)):
                    n += len(more)
                if n != 1:
                    raise _single_error(n)
            if len(first) <= BUFFER_ROWS:
                status = _range_status(offset, len(first), total)
                headers["Content-Range"] = _content_range(offset, len(first), total)
                return self._body_response(first, status=status, single=single,
                                           headers=headers, head=head)
            # Big answer: its length is known only from a count of the window.
            n_rows = total - offset if total is not None else None
            if n_rows is not None and limit is not None:
                n_rows = min(n_rows, limit)
            if n_rows is None:
                n_rows = await _window_count(conn, query)
            headers["Content-Range"] = _content_range(offset, n_rows, total)
            resp = web.StreamResponse(status=_range_status(offset, n_rows, total),
                                      headers={**headers, "Content-Type": JSON_CT})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            if head:
                await resp.write_eof()
                return resp
            try:
                await resp.write(b"[" + ",".join(first).encode())
                del first
                while rows := await cur.fetchmany(FETCH_ROWS):
                    await resp.write(b"," + ",".join(r[0] for r in rows).encode())
                await resp.write(b"]")
                await resp.write_eof()
            except psycopg.Error as exc:
                # Headers are gone already: cut the body short so the client sees a failure
                # (a truncated chunked body) rather than valid-looking JSON.
                log.warning("streaming %s failed midway: %s", request.path, exc)
                if request.transport is not None:
                    request.transport.abort()
            return resp

    # -- POST ------------------------------------------------------------------------------
    async def _insert(self, request: web.Request, auth: RequestAuth) -> web.StreamResponse:
        schema = self._schema(request, write=True)
        q = rq.parse_read(list(request.query.items()))
        prefer = rq.parse_prefer(request.headers.getall("Prefer", []))
        single, strip = self._accept(request)
        body = await self._json_body(request)
        if isinstance(body, dict):
            rows = [body]
        elif isinstance(body, list) and all(isinstance(r, dict) for r in body):
            rows = body
        else:
            raise ApiError(400, "PGRST102", "Empty or invalid json")
        async with self._transaction(request, auth, read_only=False) as conn:
            table = await find_table(conn, schema, request.match_info["table"])
            joins = await self._joins(conn, schema, table, q)
            known = table.column_names()
            columns = list(q.columns) if q.columns else list(
                dict.fromkeys(k for r in rows for k in r))
            for col in columns:
                if col not in known:
                    raise ApiError(400, "PGRST204", f"Could not find the '{col}' column of "
                                   f"'{table.name}' in the schema cache")
            conflict = q.on_conflict or table.pk or None
            if prefer.missing_default:
                groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
                for r in rows:
                    groups.setdefault(tuple(c for c in columns if c in r), []).append(r)
            else:
                groups = {tuple(columns): rows} if rows else {}
            out: list[str] = []
            affected = 0
            representation = prefer.return_ == "representation"
            for cols, group in groups.items():
                write = rq.insert_sql(table.rel, list(cols), json.dumps(group), conflict,
                                      prefer.resolution, table.name)
                if not cols and len(group) > 1:
                    for _ in group:
                        affected += (await conn.execute(write)).rowcount
                    continue
                if representation or single:
                    cur = await conn.execute(
                        rq.returning_sql(write, q, strip, table.name, joins))
                    got = [r[0] for r in await cur.fetchall()]
                    out.extend(got)
                    affected += len(got)
                else:
                    affected += (await conn.execute(write)).rowcount
            return self._write_answer(out, affected, prefer, single, status=201,
                                      minimal_status=201)

    def _write_answer(self, rows: list[str], affected: int, prefer: rq.Preferences,
                      single: bool, *, status: int, minimal_status: int) -> web.Response:
        if single and affected != 1:
            raise _single_error(affected)  # raising rolls the transaction back
        headers = {"Content-Range": f"*/{affected}" if prefer.count else "*/*"}
        if prefer.applied:
            headers["Preference-Applied"] = ", ".join(prefer.applied)
        if prefer.return_ == "representation":
            return self._body_response(rows, status=status, single=single, headers=headers)
        return web.Response(status=minimal_status if minimal_status != 200 else 204,
                            headers=headers)

    # -- PATCH / DELETE --------------------------------------------------------------------
    async def _modify(self, request: web.Request, auth: RequestAuth) -> web.StreamResponse:
        schema = self._schema(request, write=True)
        q = rq.parse_read(list(request.query.items()))
        prefer = rq.parse_prefer(request.headers.getall("Prefer", []))
        single, strip = self._accept(request)
        verb = "UPDATE" if request.method == "PATCH" else "DELETE"
        if q.limit is not None or q.offset is not None:
            raise rq.parse_error(f"limit/offset on {request.method} is not supported by the "
                                 "supasync devstack")
        body: Any = None
        if verb == "UPDATE":
            body = await self._json_body(request)
            if not isinstance(body, dict):
                raise ApiError(400, "PGRST102", "Empty or invalid json")
        if not q.filters:
            raise ApiError(400, "21000", f"{verb} requires a WHERE clause")
        async with self._transaction(request, auth, read_only=False) as conn:
            table = await find_table(conn, schema, request.match_info["table"])
            joins = await self._joins(conn, schema, table, q)
            if verb == "UPDATE":
                assert isinstance(body, dict)
                known = table.column_names()
                for col in body:
                    if col not in known:
                        raise ApiError(400, "PGRST204", f"Could not find the '{col}' column "
                                       f"of '{table.name}' in the schema cache")
                if not body:
                    return self._write_answer([], 0, prefer, single, status=200,
                                              minimal_status=200)
                write = rq.update_sql(table.rel, list(body), json.dumps(body), q.filters,
                                      table.name)
            else:
                write = rq.delete_sql(table.rel, q.filters, table.name)
            if prefer.return_ == "representation" or single:
                cur = await conn.execute(rq.returning_sql(write, q, strip, table.name, joins))
                rows = [r[0] for r in await cur.fetchall()]
                affected = len(rows)
            else:
                rows = []
                affected = (await conn.execute(write)).rowcount
            return self._write_answer(rows, affected, prefer, single, status=200,
                                      minimal_status=200)

    # -- RPC -------------------------------------------------------------------------------
    async def _call(self, request: web.Request, auth: RequestAuth) -> web.StreamResponse:
        post = request.method == "POST"
        schema = self._schema(request, write=post)
        prefer = rq.parse_prefer(request.headers.getall("Prefer", []))
        single, strip = self._accept(request)
        head = request.method == "HEAD"
        query_items = list(request.query.items())
        args: dict[str, Any]
        raw_body: Any = None
        if post:
            raw_body = await self._json_body(request)
            if raw_body is None:
                raw_body = {}
            args = raw_body if isinstance(raw_body, dict) else {}
            keys = set(args)
        else:
            keys = {k for k, _ in query_items if k not in rq.RESERVED and k != "apikey"}
            args = {}
        async with self._transaction(request, auth, read_only=not post) as conn:
            fn = await find_function(conn, schema, request.match_info["fn"], keys,
                                     partial=not post)
            single_json = (len(fn.arg_names) == 1 and not fn.arg_names[0]
                           and fn.arg_types[0] in ("json", "jsonb"))
            if not post:
                names = set(fn.arg_names)
                args = {k: v for k, v in query_items if k in names}
            q = rq.parse_read(query_items, skip=frozenset(args) if not post else frozenset())
            offset, limit = rq.effective_window(q, rq.parse_range(request.headers.get("Range")))
            limit = self._capped(limit)
            call, args_item = _call_sql(fn, args, raw_body if single_json else None,
                                        single_json)
            from_args = (sql.SQL(" FROM {}").format(args_item) if args_item is not None
                         else sql.SQL(""))
            if fn.returns == "void":
                await conn.execute(sql.SQL("SELECT {}{}").format(call, from_args))
                return web.Response(status=204)
            if fn.returns == "scalar" and not fn.returns_set:
                cur = await conn.execute(
                    sql.SQL("SELECT to_json({})::text{}").format(call, from_args))
                row = await cur.fetchone()
                value = row[0] if row and row[0] is not None else "null"
                return web.Response(body=None if head else value.encode(), status=200,
                                    headers={"Content-Type": JSON_CT,
                                             "Content-Range": "0-0/*"})
            source = (sql.SQL("{} AS _t").format(call) if args_item is None
                      else sql.SQL("{} CROSS JOIN LATERAL {} AS _t").format(args_item, call))
            if fn.returns == "scalar":
                query: sql.Composed = sql.SQL("SELECT to_json(_t)::text FROM {}{}").format(
                    source, rq.window_sql(offset, limit))
            else:
                inner = sql.SQL("SELECT {} FROM {}{}{}{}").format(
                    rq.fields_sql(q.select, "_t"), source, rq.where_sql(q.filters, "_t"),
                    rq.order_sql(q.order, "_t"), rq.window_sql(offset, limit))
                query = rq.json_rows_sql(inner, strip)
            if not fn.returns_set:  # one composite value: an object, not an array
                cur = await conn.execute(query)
                row = await cur.fetchone()
                value = row[0] if row and row[0] is not None else "null"
                return web.Response(body=None if head else value.encode(), status=200,
                                    headers={"Content-Type": JSON_CT})
            total: int | None = None
            if prefer.count:
                cur = await conn.execute(
                    sql.SQL("SELECT count(*) FROM ({}) AS _c").format(query))
                total = int((await cur.fetchone() or (0,))[0])
            return await self._send_rows(request, conn, query, offset=offset, limit=limit,
                                         total=total, single=single, head=head,
                                         prefer=prefer)

    # -- OpenAPI ---------------------------------------------------------------------------
    async def _openapi(self, request: web.Request, auth: RequestAuth) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            raise ApiError(405, "PGRST117", f"Unsupported HTTP method: {request.method}")
        schema = self._schema(request, write=False)
        async with self._transaction(request, auth, read_only=True) as conn:
            doc = await describe_schema(conn, schema, request.host)
        return web.Response(body=json.dumps(doc).encode(),
                            content_type="application/openapi+json", charset="utf-8")


# -- helpers --------------------------------------------------------------------------------


def _single_error(n: int) -> ApiError:
    return ApiError(406, "PGRST116", "Cannot coerce the result to a single JSON object",
                    f"The result contains {n} rows")


def _content_range(offset: int, n: int, total: int | None) -> str:
    tail = "*" if total is None else str(total)
    return f"{offset}-{offset + n - 1}/{tail}" if n else f"*/{tail}"


def _range_status(offset: int, n: int, total: int | None) -> int:
    if total is None:
        return 200
    if offset > 0 and offset >= total and total > 0:
        raise ApiError(416, "PGRST103", "Requested range not satisfiable",
                       f"An offset of {offset} was requested, but there are only {total} rows.")
    return 206 if n < total else 200


async def _window_count(conn: Conn, query: sql.Composed) -> int:
    cur = await conn.execute(sql.SQL("SELECT count(*) FROM ({}) AS _c").format(query))
    row = await cur.fetchone()
    return int(row[0]) if row else 0


def _call_sql(fn: Function, args: dict[str, Any], whole_body: Any, single_json: bool
              ) -> tuple[sql.Composable, sql.Composable | None]:
    """(call expression, ``json_to_record(...)`` FROM item or None) for ``fn``.

    Arguments travel as one JSON literal that ``json_to_record`` converts to the argument
    types (so JSON arrays become PostgreSQL arrays, as PostgREST does).
    """
    target = sql.Identifier(fn.schema, fn.name)
    if single_json:
        body = json.dumps(whole_body if whole_body is not None else {})
        call = sql.SQL("{}({}::{})").format(target, sql.Literal(body), sql.SQL(fn.arg_types[0]))
        return call, None
    names = [n for n in fn.arg_names if n in args]
    if not names:
        return sql.SQL("{}()").format(target), None
    types = dict(zip(fn.arg_names, fn.arg_types, strict=False))
    named = sql.SQL(", ").join(
        sql.SQL("{} := _a.{}").format(sql.Identifier(n), sql.Identifier(n)) for n in names)
    coldefs = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(types[n])) for n in names)
    call = sql.SQL("{}({})").format(target, named)
    values = json.dumps({n: args[n] for n in names})
    from_args = sql.SQL("json_to_record({}::json) AS _a({})").format(sql.Literal(values), coldefs)
    return call, from_args
