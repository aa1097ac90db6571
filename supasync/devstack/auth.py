"""The auth subset at ``/auth/v1``: password sign-up and sign-in, rotating refresh tokens.

Contract (what ``supabase_auth`` relies on):

* ``POST /signup`` {email, password, data} creates a confirmed user (auto-confirm, like a
  local Supabase) and returns a session. ``POST /token?grant_type=password`` {email,
  password} and ``POST /token?grant_type=refresh_token`` {refresh_token} return sessions.
  Refresh tokens rotate: using one revokes it and issues its child; presenting a revoked
  token again is treated as theft, ends the whole session and answers 400
  ``refresh_token_already_used`` (GoTrue with reuse detection). GoTrue's reuse interval
  (a rotated token still answering for a few seconds) is 0 unless configured.
* ``GET /user`` / ``PUT /user`` and ``POST /logout?scope=global|local|others`` take the user's
  access token; a token whose session was logged out gets 403 ``session_not_found``.
* ``POST/GET /admin/users``, ``GET/PUT/DELETE /admin/users/{id}`` need a ``service_role``
  bearer token (403 ``not_admin`` otherwise). ``GET /settings`` and ``/health`` are there too.
* Every route needs the gateway's ``apikey`` (401 ``No API key found in request`` /
  ``Invalid API key``), see :func:`supasync.devstack.rest.gateway_error`.
* Access tokens are HS256 JWTs signed with the stack secret, with Supabase's claims (``sub``,
  ``role``/``aud`` = authenticated, ``exp``/``iat``, ``email``, ``phone``, ``session_id``,
  ``app_metadata``, ``user_metadata``, ``aal``, ``amr``, ``is_anonymous``), living
  ``ctx.config.jwt_expiry`` seconds. Sessions look like GoTrue's (access_token, token_type
  ``bearer``, expires_in, expires_at, refresh_token, user).
* Errors look like GoTrue's: ``{"code": <status>, "error_code", "msg"}``, or, when the
  request carries ``X-Supabase-Api-Version: 2024-01-01`` (supabase_auth does),
  ``{"code": <error_code>, "message"}`` plus that response header, so the client's
  ``AuthApiError`` gets the right ``code``, ``status`` and message.
* Users live in ``auth.users`` of the stack's database; passwords are salted scrypt hashes
  (``hashlib.scrypt``), computed off the event loop. Passwords and tokens are never logged.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import jwt
import psycopg
from aiohttp import web
from psycopg.rows import dict_row

from .rest import ConnectionPool, gateway_error

if TYPE_CHECKING:
    from .context import StackContext

log = logging.getLogger("supasync.devstack.auth")

MIN_PASSWORD = 6
API_VERSION = "2024-01-01"
ADMIN_ROLES = ("service_role", "supabase_admin")
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AuthError(Exception):
    """A GoTrue API error: HTTP status, ``error_code`` and message."""

    def __init__(self, status: int, error_code: str, msg: str,
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(msg)
        self.status = status
        self.error_code = error_code
        self.msg = msg
        self.extra = extra or {}


# -- passwords ------------------------------------------------------------------------------


def hash_password(password: str) -> str:
    """``scrypt$n$r$p$salt$hash`` (base64), with a fresh 16-byte salt."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)
    b64 = base64.b64encode
    return "scrypt${n}${r}${p}$".format(**_SCRYPT) + f"{b64(salt).decode()}${b64(digest).decode()}"


def check_password(password: str, stored: str | None) -> bool:
    """Constant-time check of ``password`` against :func:`hash_password` output."""
    if not stored:
        hash_password(password)  # same cost whether or not the user exists
        return False
    try:
        _, n, r, p, salt, digest = stored.split("$")
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r),
                             p=int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, base64.b64decode(digest))


# -- shapes ---------------------------------------------------------------------------------


def _ts(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def user_json(u: dict[str, Any]) -> dict[str, Any]:
    """A user as GoTrue renders it."""
    uid = str(u["id"])
    confirmed = _ts(u["email_confirmed_at"])
    identity = {
        "identity_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"supasync:identity:{uid}")),
        "id": uid,
        "user_id": uid,
        "identity_data": {"email": u["email"], "email_verified": confirmed is not None,
                          "phone_verified": False, "sub": uid},
        "provider": "email",
        "last_sign_in_at": _ts(u["last_sign_in_at"]) or _ts(u["created_at"]),
        "created_at": _ts(u["created_at"]),
        "updated_at": _ts(u["updated_at"]),
        "email": u["email"],
    }
    return {
        "id": uid,
        "aud": u["aud"],
        "role": u["role"],
        "email": u["email"] or "",
        "email_confirmed_at": confirmed,
        "phone": u.get("phone") or "",
        "confirmed_at": confirmed,
        "last_sign_in_at": _ts(u["last_sign_in_at"]),
        "app_metadata": u["raw_app_meta_data"],
        "user_metadata": u["raw_user_meta_data"],
        "identities": [identity] if u["email"] else [],
        "created_at": _ts(u["created_at"]),
        "updated_at": _ts(u["updated_at"]),
        "is_anonymous": u["is_anonymous"],
    }


def _body_error(request: web.Request, err: AuthError) -> web.Response:
    version = request.headers.get("X-Supabase-Api-Version", "")
    modern = bool(re.fullmatch(r"\d{4}-\d{2}-\d{2}", version)) and version >= API_VERSION
    headers = {"X-Supabase-Api-Version": API_VERSION} if modern else {}
    body: dict[str, Any]
    if modern:
        body = {"code": err.error_code, "message": err.msg}
    else:
        body = {"code": err.status, "error_code": err.error_code, "msg": err.msg}
    body.update(err.extra)
    return web.json_response(body, status=err.status, headers=headers)


# -- the server -----------------------------------------------------------------------------

_USER_COLS = ("id, aud, role, email, phone, encrypted_password, email_confirmed_at, "
              "raw_app_meta_data, raw_user_meta_data, is_anonymous, created_at, updated_at, "
              "last_sign_in_at")


class AuthServer:
    """The ``/auth/v1`` routes; mount with :meth:`add_routes`, then ``await start()``."""

    def __init__(self, ctx: StackContext, *, pool_size: int = 4,
                 reuse_interval_s: float | None = None) -> None:
        self.ctx = ctx
        # GoTrue's REFRESH_TOKEN_REUSE_INTERVAL; 0 (the default here) makes every reuse of a
        # rotated token an error. ``StackConfig.refresh_reuse_interval_s`` sets it if present.
        self.reuse_interval_s = float(reuse_interval_s if reuse_interval_s is not None
                                      else getattr(ctx.config, "refresh_reuse_interval_s", 0))
        self._pool_size = pool_size
        self._pool: ConnectionPool | None = None

    def add_routes(self, app: web.Application) -> None:
        routes: list[tuple[str, str, Handler]] = [
            ("GET", "/health", self._health),
            ("GET", "/settings", self._settings),
            ("POST", "/signup", self._signup),
            ("POST", "/token", self._token),
            ("GET", "/user", self._get_user),
            ("PUT", "/user", self._put_user),
            ("POST", "/logout", self._logout),
            ("GET", "/admin/users", self._admin_list),
            ("POST", "/admin/users", self._admin_create),
            ("GET", "/admin/users/{id}", self._admin_get),
            ("PUT", "/admin/users/{id}", self._admin_update),
            ("DELETE", "/admin/users/{id}", self._admin_delete),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, "/auth/v1" + path, self._guard(handler))

    async def start(self) -> None:
        # GoTrue owns the auth schema; here the stack's own superuser plays that part.
        self._pool = ConnectionPool(self.ctx.dsn, self._pool_size, name="supasync-auth")

    async def stop(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    # -- plumbing ----------------------------------------------------------------------------
    def _guard(self, handler: Handler) -> Handler:
        async def run(request: web.Request) -> web.StreamResponse:
            gate = gateway_error(request, self.ctx.keys.jwt_secret)
            if gate is not None:
                return web.json_response(gate, status=401)
            try:
                return await handler(request)
            except AuthError as err:
                return _body_error(request, err)
            except Exception:  # a bug must not take the server down
                log.exception("auth handler failed for %s %s", request.method, request.path)
                return _body_error(request, AuthError(500, "unexpected_failure",
                                                      "Internal server error"))
        return run

    def _conn(self) -> Any:
        assert self._pool is not None, "AuthServer.start() was not called"
        return self._pool.connection()

    @staticmethod
    async def _json(request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise AuthError(400, "bad_json",
                            f"Could not parse request body as JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise AuthError(400, "bad_json", "Could not parse request body as JSON: "
                            "expected an object")
        return body

    def _claims(self, request: web.Request) -> dict[str, Any]:
        header = request.headers.get("Authorization", "")
        if not header.lower().startswith("bearer "):
            raise AuthError(401, "no_authorization", "This endpoint requires a Bearer token")
        token = header[7:].strip()
        try:
            claims: dict[str, Any] = jwt.decode(
                token, self.ctx.keys.jwt_secret, algorithms=["HS256", "HS384", "HS512"],
                options={"verify_aud": False, "verify_iat": False})
        except jwt.ExpiredSignatureError as exc:
            raise AuthError(403, "bad_jwt", "invalid JWT: unable to parse or verify signature, "
                            "token has invalid claims: token is expired") from exc
        except jwt.PyJWTError as exc:
            raise AuthError(403, "bad_jwt", "invalid JWT: unable to parse or verify signature, "
                            "token signature is invalid") from exc
        return claims

    async def _current_user(self, conn: Any, request: web.Request
                            ) -> tuple[dict[str, Any], dict[str, Any]]:
        claims = self._claims(request)
        try:
            uid = uuid.UUID(str(claims.get("sub")))
        except ValueError as exc:
            raise AuthError(403, "bad_jwt", "invalid claim: missing sub claim") from exc
        user = await _fetch_user(conn, "id = %s", uid)
        if user is None:
            raise AuthError(403, "user_not_found", "User from sub claim in JWT does not exist")
        sid = claims.get("session_id")
        if sid:
            cur = await conn.execute("select 1 from auth.sessions where id::text = %s", (sid,))
            if await cur.fetchone() is None:
                raise AuthError(403, "session_not_found",
                                "Session from session_id claim in JWT does not exist")
        return user, claims

    def _require_admin(self, request: web.Request) -> None:
        if self._claims(request).get("role") not in ADMIN_ROLES:
            raise AuthError(403, "not_admin", "User not allowed")

    # -- sessions ----------------------------------------------------------------------------
    def _access_token(self, user: dict[str, Any], session_id: str, amr_time: int
                      ) -> tuple[str, int, int]:
        now = int(time.time())
        expiry = int(self.ctx.config.jwt_expiry)
        claims = {
            "iss": f"http://{self.ctx.config.host}:{self.ctx.config.port}/auth/v1",
            "sub": str(user["id"]),
            "aud": user["aud"],
            "exp": now + expiry,
            "iat": now,
            "email": user["email"] or "",
            "phone": user.get("phone") or "",
            "app_metadata": user["raw_app_meta_data"],
            "user_metadata": user["raw_user_meta_data"],
            "role": user["role"],
            "aal": "aal1",
            "amr": [{"method": "password", "timestamp": amr_time}],
            "session_id": session_id,
            "is_anonymous": user["is_anonymous"],
        }
        return jwt.encode(claims, self.ctx.keys.jwt_secret, algorithm="HS256"), expiry, now + expiry

    async def _new_session(self, conn: Any, user: dict[str, Any]) -> dict[str, Any]:
        cur = await conn.execute(
            "insert into auth.sessions (user_id) values (%s) returning id, created_at",
            (user["id"],))
        row = await cur.fetchone()
        return await self._issue(conn, user, str(row["id"]), None,
                                 int(row["created_at"].timestamp()))

    async def _issue(self, conn: Any, user: dict[str, Any], session_id: str, parent: str | None,
                     amr_time: int) -> dict[str, Any]:
        refresh = secrets.token_urlsafe(16)
        await conn.execute(
            "insert into auth.refresh_tokens (token, session_id, user_id, parent) "
            "values (%s, %s, %s, %s)", (refresh, session_id, user["id"], parent))
        return self._session(user, session_id, refresh, amr_time)

    def _session(self, user: dict[str, Any], session_id: str, refresh: str, amr_time: int
                 ) -> dict[str, Any]:
        access, expires_in, expires_at = self._access_token(user, session_id, amr_time)
        return {"access_token": access, "token_type": "bearer", "expires_in": expires_in,
                "expires_at": expires_at, "refresh_token": refresh, "user": user_json(user)}

    # -- routes ------------------------------------------------------------------------------
    async def _health(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"version": "supasync-devstack", "name": "GoTrue",
                                  "description": "supasync devstack auth subset"})

    async def _settings(self, request: web.Request) -> web.StreamResponse:
        external = dict.fromkeys(("anonymous_users", "apple", "azure", "github", "google",
                                  "phone"), False)
        external["email"] = True
        return web.json_response({"external": external, "disable_signup": False,
                                  "mailer_autoconfirm": True, "phone_autoconfirm": False,
                                  "sms_provider": "", "saml_enabled": False})

    async def _signup(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        email = body.get("email")
        password = body.get("password")
        if not email:
            if body.get("phone"):
                raise AuthError(400, "phone_provider_disabled", "Phone signups are disabled")
            raise AuthError(400, "validation_failed", "To signup, please provide your email")
        email = _check_email(email)
        if not isinstance(password, str) or not password:
            raise AuthError(422, "validation_failed", "Signup requires a valid password")
        _check_password_strength(password)
        data = body.get("data") or {}
        if not isinstance(data, dict):
            raise AuthError(400, "validation_failed", "data must be an object")
        hashed = await asyncio.to_thread(hash_password, password)
        async with self._conn() as conn, conn.transaction():
            conn.row_factory = dict_row
            if await _fetch_user(conn, "lower(email) = %s", email) is not None:
                raise AuthError(422, "user_already_exists", "User already registered")
            user = await _insert_user(conn, email, hashed, True, data, None)
            cur = await conn.execute(
                f"update auth.users set last_sign_in_at = now() where id = %s "
                f"returning {_USER_COLS}", (user["id"],))
            user = await cur.fetchone()
            session = await self._new_session(conn, user)
        return web.json_response(session)

    async def _token(self, request: web.Request) -> web.StreamResponse:
        grant = request.query.get("grant_type", "")
        body = await self._json(request)
        if grant == "password":
            return web.json_response(await self._password_grant(body))
        if grant == "refresh_token":
            return web.json_response(await self._refresh_grant(body))
        raise AuthError(400, "validation_failed", "unsupported_grant_type")

    async def _password_grant(self, body: dict[str, Any]) -> dict[str, Any]:
        email = body.get("email")
        password = body.get("password")
        if not isinstance(password, str) or not isinstance(email, str) or not email:
            if body.get("phone"):
                raise AuthError(400, "phone_provider_disabled", "Phone logins are disabled")
            raise AuthError(400, "invalid_credentials", "Invalid login credentials")
        async with self._conn() as conn:
            conn.row_factory = dict_row
            user = await _fetch_user(conn, "lower(email) = %s", email.strip().lower())
        stored = user["encrypted_password"] if user else None
        if not await asyncio.to_thread(check_password, password, stored) or user is None:
            raise AuthError(400, "invalid_credentials", "Invalid login credentials")
        if user["email_confirmed_at"] is None:
            raise AuthError(400, "email_not_confirmed", "Email not confirmed")
        async with self._conn() as conn, conn.transaction():
            conn.row_factory = dict_row
            cur = await conn.execute(
                f"update auth.users set last_sign_in_at = now() where id = %s "
                f"returning {_USER_COLS}", (user["id"],))
            user = await cur.fetchone()
            return await self._new_session(conn, user)

    async def _refresh_grant(self, body: dict[str, Any]) -> dict[str, Any]:
        token = body.get("refresh_token")
        if not isinstance(token, str) or not token:
            raise AuthError(400, "validation_failed", "refresh_token required")
        reused = False
        async with self._conn() as conn:
            conn.row_factory = dict_row
            async with conn.transaction():
                cur = await conn.execute(
                    "select t.token, t.session_id, t.user_id, t.revoked, s.created_at "
                    "from auth.refresh_tokens t join auth.sessions s on s.id = t.session_id "
                    "where t.token = %s for update of t, s", (token,))
                row = await cur.fetchone()
                if row is None:
                    raise AuthError(400, "refresh_token_not_found",
                                    "Invalid Refresh Token: Refresh Token Not Found")
                child = None
                if row["revoked"] and self.reuse_interval_s > 0:
                    cur = await conn.execute(
                        "select token from auth.refresh_tokens where parent = %s and not revoked"
                        " and created_at > now() - make_interval(secs => %s)",
                        (token, self.reuse_interval_s))
                    child = await cur.fetchone()
                if child is not None:
                    # Within the reuse interval a rotated token still answers, with the
                    # token that replaced it (concurrent refreshes from one client).
                    user = await _fetch_user(conn, "id = %s", row["user_id"])
                    if user is not None:
                        return self._session(user, str(row["session_id"]), child["token"],
                                             int(row["created_at"].timestamp()))
                if row["revoked"]:
                    # Reuse of a rotated token: end the whole session (the token family),
                    # committed before the error goes out.
                    await conn.execute("delete from auth.sessions where id = %s",
                                       (row["session_id"],))
                    reused = True
                else:
                    await conn.execute(
                        "update auth.refresh_tokens set revoked = true where token = %s",
                        (token,))
                    await conn.execute(
                        "update auth.sessions set updated_at = now() where id = %s",
                        (row["session_id"],))
                    user = await _fetch_user(conn, "id = %s", row["user_id"])
                    if user is None:
                        raise AuthError(400, "refresh_token_not_found",
                                        "Invalid Refresh Token: Refresh Token Not Found")
                    return await self._issue(conn, user, str(row["session_id"]), token,
                                             int(row["created_at"].timestamp()))
        assert reused
        raise AuthError(400, "refresh_token_already_used", "Invalid Refresh Token: Already Used")

    async def _get_user(self, request: web.Request) -> web.StreamResponse:
        async with self._conn() as conn:
            conn.row_factory = dict_row
            user, _ = await self._current_user(conn, request)
        return web.json_response(user_json(user))

    async def _put_user(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        async with self._conn() as conn, conn.transaction():
            conn.row_factory = dict_row
            user, _ = await self._current_user(conn, request)
            user = await self._update_user(conn, user, body, admin=False)
        return web.json_response(user_json(user))

    async def _update_user(self, conn: Any, user: dict[str, Any], body: dict[str, Any], *,
                           admin: bool) -> dict[str, Any]:
        sets: list[str] = []
        args: list[Any] = []
        if isinstance(body.get("password"), str):
            _check_password_strength(body["password"])
            sets.append("encrypted_password = %s")
            args.append(await asyncio.to_thread(hash_password, body["password"]))
        if isinstance(body.get("email"), str) and body["email"]:
            email = _check_email(body["email"])
            other = await _fetch_user(conn, "lower(email) = %s", email)
            if other is not None and other["id"] != user["id"]:
                raise AuthError(422, "email_exists", "A user with this email address has "
                                "already been registered")
            sets.append("email = %s")
            args.append(email)
        meta = body.get("user_metadata") if admin else body.get("data")
        if isinstance(meta, dict):
            sets.append("raw_user_meta_data = raw_user_meta_data || %s::jsonb")
            args.append(json.dumps(meta))
        if admin and isinstance(body.get("app_metadata"), dict):
            sets.append("raw_app_meta_data = raw_app_meta_data || %s::jsonb")
            args.append(json.dumps(body["app_metadata"]))
        if admin and body.get("email_confirm") is True:
            sets.append("email_confirmed_at = coalesce(email_confirmed_at, now())")
        if not sets:
            return user
        cur = await conn.execute(
            f"update auth.users set {', '.join(sets)}, updated_at = now() where id = %s "
            f"returning {_USER_COLS}", (*args, user["id"]))
        updated: dict[str, Any] = await cur.fetchone()
        return updated

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        scope = request.query.get("scope") or "global"
        if scope not in ("global", "local", "others"):
            raise AuthError(400, "validation_failed",
                            "Unsupported logout scope, must be one of global, local, others")
        async with self._conn() as conn, conn.transaction():
            conn.row_factory = dict_row
            user, claims = await self._current_user(conn, request)
            sid = str(claims.get("session_id") or "")
            if scope == "local":
                await conn.execute("delete from auth.sessions where id::text = %s", (sid,))
            elif scope == "others":
                await conn.execute("delete from auth.sessions where user_id = %s and "
                                   "id::text <> %s", (user["id"], sid))
            else:
                await conn.execute("delete from auth.sessions where user_id = %s", (user["id"],))
        return web.Response(status=204)

    async def _admin_create(self, request: web.Request) -> web.StreamResponse:
        self._require_admin(request)
        body = await self._json(request)
        email = body.get("email")
        if not email:
            raise AuthError(400, "validation_failed", "Unable to validate email address: "
                            "invalid format")
        email = _check_email(email)
        password = body.get("password")
        hashed = None
        if password is not None:
            if not isinstance(password, str):
                raise AuthError(400, "validation_failed", "password must be a string")
            _check_password_strength(password)
            hashed = await asyncio.to_thread(hash_password, password)
        meta = body.get("user_metadata") or body.get("data") or {}
        app_meta = body.get("app_metadata")
        if not isinstance(meta, dict) or not (app_meta is None or isinstance(app_meta, dict)):
            raise AuthError(400, "validation_failed", "metadata must be an object")
        async with self._conn() as conn, conn.transaction():
            conn.row_factory = dict_row
            if await _fetch_user(conn, "lower(email) = %s", email) is not None:
                raise AuthError(422, "email_exists", "A user with this email address has "
                                "already been registered")
            user = await _insert_user(conn, email, hashed, bool(body.get("email_confirm")),
                                      meta, app_meta)
        return web.json_response(user_json(user))

    async def _admin_list(self, request: web.Request) -> web.StreamResponse:
        self._require_admin(request)
        try:
            page = max(1, int(request.query.get("page") or 1))
            per_page = max(1, int(request.query.get("per_page") or 50))
        except ValueError as exc:
            raise AuthError(400, "validation_failed", "Bad Pagination Parameters") from exc
        async with self._conn() as conn:
            conn.row_factory = dict_row
            cur = await conn.execute("select count(*) as n from auth.users")
            total = (await cur.fetchone())["n"]
            cur = await conn.execute(
                f"select {_USER_COLS} from auth.users order by created_at, id "
                "limit %s offset %s", (per_page, (page - 1) * per_page))
            users = [user_json(u) for u in await cur.fetchall()]
        return web.json_response({"users": users, "aud": "authenticated"},
                                 headers={"X-Total-Count": str(total)})

    async def _admin_user(self, conn: Any, request: web.Request) -> dict[str, Any]:
        try:
            uid = uuid.UUID(request.match_info["id"])
        except ValueError as exc:
            raise AuthError(404, "user_not_found", "User not found") from exc
        user = await _fetch_user(conn, "id = %s", uid)
        if user is None:
            raise AuthError(404, "user_not_found", "User not found")
        return user

    async def _admin_get(self, request: web.Request) -> web.StreamResponse:
        self._require_admin(request)
        async with self._conn() as conn:
            conn.row_factory = dict_row
            user = await self._admin_user(conn, request)
        return web.json_response(user_json(user))

    async def _admin_update(self, request: web.Request) -> web.StreamResponse:
        self._require_admin(request)
        body = await self._json(request)
        async with self._conn() as conn, conn.transaction():
            conn.row_factory = dict_row
            user = await self._admin_user(conn, request)
            user = await self._update_user(conn, user, body, admin=True)
        return web.json_response(user_json(user))

    async def _admin_delete(self, request: web.Request) -> web.StreamResponse:
        self._require_admin(request)
        async with self._conn() as conn, conn.transaction():
            conn.row_factory = dict_row
            user = await self._admin_user(conn, request)
            await conn.execute("delete from auth.users where id = %s", (user["id"],))
        return web.json_response({})


# -- database helpers -----------------------------------------------------------------------


def _check_email(email: object) -> str:
    if not isinstance(email, str) or not _EMAIL_RE.match(email.strip()):
        raise AuthError(400, "validation_failed", "Unable to validate email address: "
                        "invalid format")
    return email.strip().lower()


def _check_password_strength(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise AuthError(422, "weak_password",
                        f"Password should be at least {MIN_PASSWORD} characters.",
                        {"weak_password": {"reasons": ["length"]}})


async def _fetch_user(conn: Any, where: str, value: object) -> dict[str, Any] | None:
    # ``where`` is one of this module's fixed predicates, never request text.
    cur = await conn.execute(f"select {_USER_COLS} from auth.users where {where}", (value,))
    row: dict[str, Any] | None = await cur.fetchone()
    return row


async def _insert_user(conn: Any, email: str, hashed: str | None, confirmed: bool,
                       meta: dict[str, Any], app_meta: dict[str, Any] | None) -> dict[str, Any]:
    app = {"provider": "email", "providers": ["email"], **(app_meta or {})}
    try:
        cur = await conn.execute(
            "insert into auth.users (email, encrypted_password, email_confirmed_at, "
            "raw_user_meta_data, raw_app_meta_data) values (%s, %s, "
            "case when %s then now() end, %s::jsonb, %s::jsonb) "
            f"returning {_USER_COLS}", (email, hashed, confirmed, json.dumps(meta),
                                        json.dumps(app)))
    except psycopg.errors.UniqueViolation as exc:
        raise AuthError(422, "email_exists", "A user with this email address has already been "
                        "registered") from exc
    row: dict[str, Any] = await cur.fetchone()
    return row
