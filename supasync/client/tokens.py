"""Token providers and the TokenKeeper: a valid token for Realtime, always, without the app's help.

Realtime checks two tokens (``docs/realtime-protocol.md`` §7.1): the socket's ``apikey``, checked
once at connect, and each channel's ``access_token``, whose claims are the RLS identity and whose
``exp`` the server enforces with a timer (§7.3: "Token has expired", then the channel is closed).
So a token must be refreshed *ahead* of ``exp`` and pushed to live channels, and a fresh one must
be in hand before every reconnect or rejoin.

Layers (sans-I/O core first):

* Pure functions - :func:`token_expiry` (``exp`` of a JWT, read without verifying; ``None`` for
  ``sb_`` keys and other non-JWTs, which never expire), :func:`effective_margin` (the refresh
  margin, clamped to a fraction of the token's lifetime so 5-second tokens work),
  :func:`needs_refresh` and :func:`next_refresh_at` (when the background task should refresh, from
  ``now``, ``exp``, the margin and the failures so far), :func:`backoff_delay`.
* Providers - anything with ``async fetch(*, reason) -> Token`` and ``async aclose()``
  (:class:`TokenProvider`): :class:`StaticToken`, :class:`PasswordSession` (supabase-auth email and
  password through the official ``AsyncGoTrueClient``; refresh driven by the keeper, not by
  supabase-auth's timer), :class:`GoTrueSession` (a supabase-auth client the app signed in
  itself), :class:`SecretMinter` (HS256 JWTs from the project's secret) and
  :class:`CallableProvider` (any sync or async callable).
* :class:`TokenKeeper` - the asyncio layer: holds the current token, refreshes it in a background
  task ahead of ``exp`` (retrying failures with backoff, reporting each at WARNING and to
  :meth:`TokenKeeper.on_failure` listeners), serialises refreshes (concurrent callers share one
  fetch), and tells :meth:`TokenKeeper.on_change` listeners about every new token.

Secrets never appear in logs, reprs or exception messages: :class:`Token` hides its value, errors
from providers are re-raised as :class:`~supasync.core.errors.AuthError` with masked text.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol, Self, runtime_checkable

import jwt

from ..core.errors import AuthError, ConfigError
from ..core.redact import mask
from ..core.waiting import wait_event

if TYPE_CHECKING:
    import httpx

__all__ = [
    "CallableProvider",
    "GoTrueSession",
    "PasswordSession",
    "RefreshFailure",
    "SecretMinter",
    "StaticToken",
    "Token",
    "TokenKeeper",
    "TokenProvider",
    "backoff_delay",
    "effective_margin",
    "needs_refresh",
    "next_refresh_at",
    "token_expiry",
]

log = logging.getLogger(__name__)


class SettingsLike(Protocol):
    """What :meth:`TokenKeeper.from_settings` reads from
    :class:`supasync.client.config.Settings`."""

    @property
    def url(self) -> str: ...
    @property
    def anon_key(self) -> str | None: ...
    @property
    def service_role_key(self) -> str | None: ...
    @property
    def access_token(self) -> str | None: ...
    @property
    def email(self) -> str | None: ...
    @property
    def password(self) -> str | None: ...
    @property
    def jwt_secret(self) -> str | None: ...
    @property
    def jwt_claims(self) -> Mapping[str, Any]: ...
    @property
    def refresh_margin(self) -> float: ...

    def token_source(self) -> str: ...

#: Default margin: a token handed out is valid for at least this long (seconds).
DEFAULT_MARGIN: Final = 60.0
#: The margin never exceeds this fraction of a token's lifetime (so short tokens still work).
MARGIN_FRACTION: Final = 0.5
#: Backoff of failed refreshes: first delay and cap (seconds).
BACKOFF_BASE: Final = 0.5
BACKOFF_CAP: Final = 30.0


# --------------------------------------------------------------------------- sans-I/O core


def token_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT as a POSIX timestamp, read without verifying the signature.

    Returns None when the token never expires as far as the client can tell: ``sb_`` keys
    (``sb_publishable_...``, ``sb_secret_...``), anything that is not a JWT, and JWTs without a
    numeric ``exp``. Never raises and never echoes the token.
    """
    if not token or token.startswith("sb_") or token.count(".") != 2:
        return None
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    return float(exp)


def effective_margin(margin: float, lifetime: float | None) -> float:
    """The refresh margin actually used for a token of the given lifetime.

    ``min(margin, lifetime * MARGIN_FRACTION)``: with the default 60 s margin a one-hour token is
    refreshed a minute before ``exp``, a 5-second token 2.5 s before. ``lifetime`` None (or not
    positive) leaves the margin as is.
    """
    margin = max(0.0, margin)
    if lifetime is None or lifetime <= 0:
        return margin
    return min(margin, lifetime * MARGIN_FRACTION)


def needs_refresh(now: float, *, exp: float | None, obtained_at: float, margin: float) -> bool:
    """Whether a token obtained at ``obtained_at`` expiring at ``exp`` is too close to expiry.

    True when less than the effective margin (see :func:`effective_margin`, lifetime measured
    from ``obtained_at`` on the local clock, which also absorbs clock skew) is left. A token
    without ``exp`` never needs a refresh.
    """
    if exp is None:
        return False
    return now >= exp - effective_margin(margin, exp - obtained_at)


def backoff_delay(
    failures: int, *, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP, jitter: float = 0.0
) -> float:
    """Delay before retry number ``failures`` (1 = first retry): ``base * 2**(failures-1)``,
    capped at ``cap``, then shortened by up to ``jitter`` (a fraction in [0, 1), e.g. a random
    draw supplied by the caller, so this function stays pure). Never returns less than base/2."""
    if failures <= 0:
        return 0.0
    delay = min(cap, base * 2.0 ** min(failures - 1, 30))
    delay *= 1.0 - min(max(jitter, 0.0), 0.99)
    return max(delay, base / 2)


def next_refresh_at(
    *,
    exp: float | None,
    obtained_at: float,
    margin: float,
    failures: int = 0,
    last_failure_at: float | None = None,
    base: float = BACKOFF_BASE,
    cap: float = BACKOFF_CAP,
    jitter: float = 0.0,
) -> float | None:
    """When (POSIX time) the background task should next refresh; None means never.

    * After ``failures`` consecutive failures (the last at ``last_failure_at``): retry after
      :func:`backoff_delay`, whatever ``exp`` says - a failure is never the end.
    * Otherwise ``exp - effective_margin(margin, exp - obtained_at)``; None when ``exp`` is None
      (static keys never expire).
    """
    if failures > 0 and last_failure_at is not None:
        return last_failure_at + backoff_delay(failures, base=base, cap=cap, jitter=jitter)
    if exp is None:
        return None
    return exp - effective_margin(margin, exp - obtained_at)


# --------------------------------------------------------------------------- tokens and providers


@dataclass(frozen=True, slots=True)
class Token:
    """A token and what the client knows about its expiry. ``repr`` never shows the value.

    Attributes:
        value: the token itself (a JWT or an ``sb_`` key).
        expires_at: POSIX time of expiry, or None if it does not expire (as far as we know).
    """

    value: str = field(repr=False)
    expires_at: float | None = None

    @classmethod
    def of(cls, value: str) -> Token:
        """Wrap a raw token, reading ``exp`` from it when it is a JWT."""
        return cls(value, token_expiry(value))

    def __repr__(self) -> str:
        value = self.value
        kind = "sb_key" if value.startswith("sb_") else "jwt" if value.count(".") == 2 else "opaque"
        return f"Token(<{kind} redacted>, expires_at={self.expires_at!r})"

    __str__ = __repr__


@runtime_checkable
class TokenProvider(Protocol):
    """Where tokens come from. Implementations must be safe to call again after a failure.

    ``fetch`` returns a token; ``reason`` says why (``initial``, ``scheduled``, ``expired``,
    ``reconnect``...) and may be used for logging only. It raises
    :class:`~supasync.core.errors.AuthError` (never containing a secret) when no token can be had.
    ``aclose`` releases resources (HTTP clients); the provider is not used afterwards.
    """

    async def fetch(self, *, reason: str) -> Token: ...

    async def aclose(self) -> None: ...


class StaticToken:
    """A fixed token or key (anon key, service-role key, a user's access token).

    ``fetch`` always returns it; an expired JWT cannot be renewed, so fetching one raises
    :class:`AuthError` (use another provider for tokens that expire).
    """

    def __init__(self, token: str, *, clock: Callable[[], float] = time.time) -> None:
        if not token:
            raise ConfigError("the static token is empty", fix="pass a key or a token")
        self._token = Token.of(token)
        self._clock = clock

    async def fetch(self, *, reason: str) -> Token:
        exp = self._token.expires_at
        if exp is not None and exp <= self._clock():
            raise AuthError(
                "the static access token has expired and cannot be renewed; give a fresh one, "
                "or use email/password, a JWT secret or a callable provider instead"
            )
        return self._token

    async def aclose(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"StaticToken({self._token!r})"


class SecretMinter:
    """Mints JWTs from the project's JWT secret (HS256), like the server-side of a Supabase app.

    Each fetch signs ``{**claims, "iat": now, "exp": now + lifetime}``. ``claims`` should carry a
    ``role`` (``authenticated``, ``service_role``...) and, for RLS, a ``sub``; ``role`` defaults to
    ``authenticated`` when missing (Realtime requires ``role`` and ``exp``, §7.2).
    """

    def __init__(
        self,
        secret: str,
        claims: Mapping[str, Any] | None = None,
        lifetime: float = 3600.0,
        *,
        algorithm: str = "HS256",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not secret:
            raise ConfigError("the JWT secret is empty", key="SUPABASE_JWT_SECRET", fix="set it")
        if lifetime <= 0:
            raise ConfigError("the minted token lifetime must be positive", value=lifetime)
        self._secret = secret
        self._claims = {"role": "authenticated", **dict(claims or {})}
        self._lifetime = float(lifetime)
        self._algorithm = algorithm
        self._clock = clock

    async def fetch(self, *, reason: str) -> Token:
        now = self._clock()
        exp = int(now + self._lifetime)
        payload = {**self._claims, "iat": int(now), "exp": exp}
        return Token(jwt.encode(payload, self._secret, algorithm=self._algorithm), float(exp))

    async def aclose(self) -> None:
        return None

    def __repr__(self) -> str:
        return (
            f"SecretMinter(secret=<redacted>, role={self._claims.get('role')!r}, "
            f"lifetime={self._lifetime!r})"
        )


TokenCallable = Callable[[], "str | Token | Awaitable[str | Token]"]


class CallableProvider:
    """Any sync or async zero-argument callable returning a token (``str`` or :class:`Token`).

    For third-party JWTs, a secrets manager, or a token the app already refreshes. Exceptions it
    raises become :class:`AuthError` (masked); returning an empty value is an error too.
    """

    def __init__(self, fn: TokenCallable) -> None:
        self._fn = fn

    async def fetch(self, *, reason: str) -> Token:
        try:
            result = self._fn()
            if inspect.isawaitable(result):
                result = await result
        except AuthError:
            raise
        except Exception as exc:
            raise AuthError(f"token callable failed: {_describe(exc)}") from None
        if isinstance(result, Token):
            token = result
        elif isinstance(result, str) and result:
            token = Token.of(result)
        else:
            raise AuthError(f"token callable returned {type(result).__name__}, not a token")
        if not token.value:
            raise AuthError("token callable returned an empty token")
        return token

    async def aclose(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"CallableProvider({getattr(self._fn, '__qualname__', type(self._fn).__name__)})"


class PasswordSession:
    """A supabase-auth user session from an email and password (official ``AsyncGoTrueClient``).

    The first fetch signs in (``grant_type=password``); later fetches use the refresh token
    (``grant_type=refresh_token``). If the refresh token is rejected (revoked, reused, expired)
    it signs in again with the password, so the session heals itself. supabase-auth's own refresh
    timer is switched off (``auto_refresh_token=False``): its failures are swallowed silently
    (``python-clients.md`` §4.1), so the :class:`TokenKeeper` drives refreshes and sees every
    error. Network errors and 5xx answers raise :class:`AuthError` for the keeper to retry.

    Args:
        url: the project URL (``https://<ref>.supabase.co``); auth lives at ``<url>/auth/v1``.
        api_key: the anon (or publishable) key sent as ``apikey``.
        email, password: the user's credentials (never logged or shown).
        http_client: optional ``httpx.AsyncClient`` to use (not closed by :meth:`aclose`).
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        email: str,
        password: str,
        *,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        if not (url and api_key and email and password):
            raise ConfigError(
                "email/password sign-in needs the project URL, the anon key, an email and a "
                "password",
                fix="set SUPABASE_URL, SUPABASE_ANON_KEY, SUPABASE_EMAIL and SUPABASE_PASSWORD",
            )
        self._auth_url = url.rstrip("/") + "/auth/v1"
        self._api_key = api_key
        self._email = email
        self._password = password
        self._own_http = http_client is None
        self._http = http_client
        self._client: Any = None  # supabase_auth.AsyncGoTrueClient, made lazily
        self._refresh_token: str | None = None

    def _gotrue(self) -> Any:
        if self._client is None:
            import httpx
            from supabase_auth import AsyncGoTrueClient

            if self._http is None:
                self._http = httpx.AsyncClient(timeout=httpx.Timeout(10.0), follow_redirects=True)
            self._client = AsyncGoTrueClient(
                url=self._auth_url,
                headers={"apikey": self._api_key, "Authorization": f"Bearer {self._api_key}"},
                auto_refresh_token=False,
                persist_session=False,
                http_client=self._http,
            )
        return self._client

    async def fetch(self, *, reason: str) -> Token:
        from supabase_auth.errors import AuthApiError, AuthRetryableError

        client = self._gotrue()
        if self._refresh_token is not None:
            try:
                response = await client.refresh_session(self._refresh_token)
                return self._accept(response.session, "refresh")
            except AuthRetryableError as exc:
                raise AuthError(f"session refresh failed (will retry): {_describe(exc)}") from None
            except AuthApiError as exc:
                # Rejected refresh token: fall back to the password, once.
                log.warning(
                    "refresh token rejected (%s); signing in again with the password",
                    _describe(exc),
                )
                self._refresh_token = None
            except Exception as exc:
                raise AuthError(f"session refresh failed: {_describe(exc)}") from None
        try:
            response = await client.sign_in_with_password(
                {"email": self._email, "password": self._password}
            )
        except Exception as exc:
            raise AuthError(f"sign-in with email and password failed: {_describe(exc)}") from None
        return self._accept(response.session, "sign-in")

    def _accept(self, session: Any, what: str) -> Token:
        if session is None or not getattr(session, "access_token", None):
            raise AuthError(f"{what} returned no session")
        self._refresh_token = session.refresh_token or None
        exp = token_expiry(session.access_token)
        if exp is None and session.expires_at:
            exp = float(session.expires_at)
        return Token(session.access_token, exp)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        self._refresh_token = None
        if client is not None:
            timer = getattr(client, "_refresh_token_timer", None)
            if timer is not None:
                timer.cancel()
        if self._own_http and self._http is not None:
            http, self._http = self._http, None
            await http.aclose()

    def __repr__(self) -> str:
        return f"PasswordSession(url={self._auth_url!r}, email=<redacted>, password=<redacted>)"


class GoTrueSession:
    """Tokens from a supabase-auth client the app has already signed in (``supabase.auth``).

    For apps that sign users in with supabase-py themselves. The first fetch reads the client's
    session (``get_session()``); every later fetch forces ``refresh_session()``, so the keeper,
    not supabase-auth's timer, decides when - that timer's failures are swallowed silently
    (``python-clients.md`` §4.1), the keeper's are reported. A ``SIGNED_OUT`` event is logged at
    WARNING; fetching then raises :class:`AuthError` until the app signs in again.

    Args:
        client: a ``supabase_auth.AsyncGoTrueClient`` (e.g. ``AsyncClient.auth``); not closed by
            :meth:`aclose`, which only stops listening to its events.
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        self._signed_out = False
        self._subscription = client.on_auth_state_change(self._on_event)

    def _on_event(self, event: str, session: Any) -> None:
        if event == "SIGNED_OUT":
            self._signed_out = True
            log.warning("the supabase-auth session was signed out; Realtime keeps the last token")
        elif session is not None:
            self._signed_out = False

    async def fetch(self, *, reason: str) -> Token:
        from supabase_auth.errors import AuthSessionMissingError

        if self._signed_out:
            raise AuthError("the supabase-auth session is signed out; sign in again")
        try:
            if reason == "initial":
                session = await self._client.get_session()
            else:
                session = (await self._client.refresh_session()).session
        except AuthSessionMissingError:
            raise AuthError("the supabase-auth client has no session; sign in first") from None
        except Exception as exc:
            raise AuthError(f"supabase-auth session refresh failed: {_describe(exc)}") from None
        if session is None or not getattr(session, "access_token", None):
            raise AuthError("the supabase-auth client has no session; sign in first")
        exp = token_expiry(session.access_token)
        if exp is None and session.expires_at:
            exp = float(session.expires_at)
        return Token(session.access_token, exp)

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            self._subscription.unsubscribe()

    def __repr__(self) -> str:
        state = "signed out" if self._signed_out else "signed in"
        return f"GoTrueSession(<{state}>)"


def _describe(exc: BaseException) -> str:
    """``Type: message`` of an exception with any secret masked (status code when known)."""
    status = getattr(exc, "status", None)
    text = mask(str(exc)) or "no details"
    head = type(exc).__name__ + (f" {status}" if isinstance(status, int) and status else "")
    return f"{head}: {text}"


# --------------------------------------------------------------------------- the keeper


@dataclass(frozen=True, slots=True)
class RefreshFailure:
    """A failed refresh, as reported to :meth:`TokenKeeper.on_failure` listeners.

    Attributes:
        reason: why the refresh was attempted (``scheduled``, ``expired``, ``reconnect``...).
        attempt: consecutive failures so far (1 for the first).
        error: what went wrong (masked; never contains a secret).
        retry_at: POSIX time of the next automatic attempt.
        expires_at: expiry of the token still held, or None (none held, or it never expires).
    """

    reason: str
    attempt: int
    error: str
    retry_at: float
    expires_at: float | None


ChangeListener = Callable[[str], "Awaitable[None] | None"]
FailureListener = Callable[[RefreshFailure], "Awaitable[None] | None"]


class TokenKeeper:
    """Keeps a valid token for one identity, refreshing it ahead of expiry.

    Use it as ``async with TokenKeeper(provider, api_key=anon) as keeper:`` (or call
    :meth:`start` and :meth:`aclose`). While started, a background task refreshes the token at
    :func:`next_refresh_at`; failures are retried with backoff (without a limit) and reported at
    WARNING and to :meth:`on_failure` listeners - never silently. Without :meth:`start` the
    keeper still works on demand through :meth:`token` and :meth:`refresh`.

    Args:
        provider: where tokens come from (:class:`TokenProvider`).
        api_key: the socket ``apikey`` (the anon key unless the service-role key is the token).
        margin: :meth:`token` returns a token valid for at least this long; clamped to half the
            token's lifetime (:func:`effective_margin`).
        clock: POSIX-time clock (injectable for tests).
    """

    def __init__(
        self,
        provider: TokenProvider,
        *,
        api_key: str,
        margin: float = DEFAULT_MARGIN,
        clock: Callable[[], float] = time.time,
        backoff_base: float = BACKOFF_BASE,
        backoff_cap: float = BACKOFF_CAP,
    ) -> None:
        if not api_key:
            raise ConfigError("the API key is empty", key="SUPABASE_ANON_KEY", fix="set it")
        self._provider = provider
        self._api_key = api_key
        self.margin = float(margin)
        self._clock = clock
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._token: Token | None = None
        self._obtained_at = 0.0
        self._generation = 0
        self._failures = 0
        self._last_failure_at: float | None = None
        self._last_error: str | None = None
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._change_listeners: list[ChangeListener] = []
        self._failure_listeners: list[FailureListener] = []

    # -- construction ----------------------------------------------------------------

    @classmethod
    def from_settings(cls, settings: SettingsLike, **kwargs: Any) -> TokenKeeper:
        """Choose the provider from ``settings.token_source()``.

        ``access_token`` -> :class:`StaticToken`; ``password`` -> :class:`PasswordSession`;
        ``jwt_secret`` -> :class:`SecretMinter` with ``settings.jwt_claims``; ``service_role`` ->
        the service-role key as both token and ``apikey``; ``anon`` -> the anon key.
        ``margin`` defaults to ``settings.refresh_margin``; other keyword arguments go to the
        constructor.
        """
        source = settings.token_source()
        anon = settings.anon_key or ""
        api_key = anon
        provider: TokenProvider
        if source == "access_token":
            provider = StaticToken(_required(settings.access_token, "SUPABASE_ACCESS_TOKEN"))
        elif source == "password":
            provider = PasswordSession(
                settings.url,
                _required(settings.anon_key, "SUPABASE_ANON_KEY"),
                _required(settings.email, "SUPABASE_EMAIL"),
                _required(settings.password, "SUPABASE_PASSWORD"),
            )
        elif source == "jwt_secret":
            provider = SecretMinter(
                _required(settings.jwt_secret, "SUPABASE_JWT_SECRET"),
                dict(settings.jwt_claims or {}),
            )
        elif source == "service_role":
            api_key = _required(settings.service_role_key, "SUPABASE_SERVICE_ROLE_KEY")
            provider = StaticToken(api_key)
        elif source == "anon":
            provider = StaticToken(_required(settings.anon_key, "SUPABASE_ANON_KEY"))
        else:  # pragma: no cover - config.py validates the source
            raise ConfigError(f"unknown token source {source!r}")
        if not api_key:
            api_key = _required(settings.anon_key, "SUPABASE_ANON_KEY")
        margin = getattr(settings, "refresh_margin", None)
        if margin is not None and "margin" not in kwargs:
            kwargs["margin"] = float(margin)
        return cls(provider, api_key=api_key, **kwargs)

    # -- state -----------------------------------------------------------------------

    @property
    def api_key(self) -> str:
        """The ``apikey`` for the socket and REST calls (not refreshed; keys do not expire)."""
        return self._api_key

    @property
    def expires_at(self) -> float | None:
        """Expiry (POSIX time) of the current token; None if none yet or it never expires."""
        return self._token.expires_at if self._token else None

    @property
    def current(self) -> str | None:
        """The token held now, without refreshing (None before the first fetch)."""
        return self._token.value if self._token else None

    @property
    def last_error(self) -> str | None:
        """The (masked) error of the last failed refresh, cleared by a success."""
        return self._last_error

    @property
    def failures(self) -> int:
        """Consecutive failed refreshes (0 when healthy)."""
        return self._failures

    @property
    def provider(self) -> TokenProvider:
        return self._provider

    def __repr__(self) -> str:
        return (
            f"TokenKeeper(provider={self._provider!r}, api_key=<redacted>, margin={self.margin!r}, "
            f"expires_at={self.expires_at!r}, failures={self._failures})"
        )

    # -- listeners -------------------------------------------------------------------

    def on_change(self, callback: ChangeListener) -> Callable[[], None]:
        """Call ``callback(token)`` (sync or async) with every *new* token; returns an
        unsubscribe function. Listener errors are logged and never stop a refresh."""
        self._change_listeners.append(callback)
        return lambda: _discard(self._change_listeners, callback)

    def on_failure(self, callback: FailureListener) -> Callable[[], None]:
        """Call ``callback(RefreshFailure)`` (sync or async) after each failed refresh; returns
        an unsubscribe function."""
        self._failure_listeners.append(callback)
        return lambda: _discard(self._failure_listeners, callback)

    # -- tokens ----------------------------------------------------------------------

    async def token(self) -> str:
        """A token valid for at least the (effective) margin, refreshing first if needed.

        If the refresh fails but the current token has not expired yet, the current token is
        returned (the failure is reported and the background task keeps retrying).

        Raises:
            AuthError: no usable token (first fetch failed, or the held token has expired).
        """
        tok = self._token
        if tok is not None and not self._due(tok):
            return tok.value
        try:
            return await self._refresh_if(reason="expiring" if tok else "initial", force=False)
        except AuthError:
            tok = self._token
            if tok is not None and (tok.expires_at is None or tok.expires_at > self._clock()):
                return tok.value
            raise

    async def refresh(self, *, reason: str) -> str:
        """Fetch a fresh token now (before a reconnect or rejoin, after "Token has expired").

        Concurrent calls share one fetch. Static tokens simply come back unchanged.

        Raises:
            AuthError: the provider failed (also reported to :meth:`on_failure` listeners; the
                background task, if started, retries with backoff).
        """
        return await self._refresh_if(reason=reason, force=True)

    def _due(self, tok: Token) -> bool:
        return needs_refresh(
            self._clock(), exp=tok.expires_at, obtained_at=self._obtained_at, margin=self.margin
        )

    async def _refresh_if(self, *, reason: str, force: bool) -> str:
        generation = self._generation
        async with self._lock:
            tok = self._token
            if tok is not None and self._generation != generation:
                return tok.value  # someone refreshed while we waited: share their result
            if tok is not None and not force and not self._due(tok):
                return tok.value
            return await self._do_refresh(reason)

    async def _do_refresh(self, reason: str) -> str:
        if self._closed:
            raise AuthError("the token keeper is closed")
        try:
            new = await self._provider.fetch(reason=reason)
        except Exception as exc:
            error = str(exc) if isinstance(exc, AuthError) else _describe(exc)
            await self._report_failure(reason, mask(error))
            raise AuthError(mask(error)) from None
        now = self._clock()
        old = self._token
        self._token = new
        self._obtained_at = now
        self._generation += 1
        if self._failures:
            log.info("token refresh recovered after %d failure(s)", self._failures)
        self._failures = 0
        self._last_failure_at = None
        self._last_error = None
        self._wake.set()
        if log.isEnabledFor(logging.DEBUG):
            left = "never" if new.expires_at is None else f"{new.expires_at - now:.1f}s"
            log.debug("= token obtained (%s), expires in %s", reason, left)
        if old is None or old.value != new.value:
            await self._notify(self._change_listeners, new.value, "token change")
        return new.value

    async def _report_failure(self, reason: str, error: str) -> None:
        now = self._clock()
        self._failures += 1
        self._last_failure_at = now
        self._last_error = error
        retry_at = next_refresh_at(
            exp=None,
            obtained_at=now,
            margin=self.margin,
            failures=self._failures,
            last_failure_at=now,
            base=self._backoff_base,
            cap=self._backoff_cap,
        )
        assert retry_at is not None
        failure = RefreshFailure(reason, self._failures, error, retry_at, self.expires_at)
        left = (
            "no token held"
            if self._token is None
            else "token never expires"
            if self.expires_at is None
            else f"token expires in {self.expires_at - now:.1f}s"
        )
        log.warning(
            "token refresh failed (%s, attempt %d, retry in %.1fs, %s): %s",
            reason,
            self._failures,
            retry_at - now,
            left,
            error,
        )
        self._wake.set()
        await self._notify(self._failure_listeners, failure, "refresh-failure")

    async def _notify(self, listeners: list[Any], value: Any, what: str) -> None:
        for callback in list(listeners):
            try:
                result = callback(value)
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                log.error("%s listener %r failed: %s", what, callback, _describe(exc))

    # -- background refresh ------------------------------------------------------------

    async def start(self) -> Self:
        """Fetch the first token (raising :class:`AuthError` if that fails) and start the
        background refresh task. Idempotent."""
        if self._closed:
            raise AuthError("the token keeper is closed")
        if self._token is None:
            await self.token()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="supasync-token-keeper")
        return self

    async def aclose(self) -> None:
        """Stop the background task and close the provider. Idempotent."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._provider.aclose()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _run(self) -> None:
        rng = random.Random()
        while not self._closed:
            tok = self._token
            at = next_refresh_at(
                exp=tok.expires_at if tok else None,
                obtained_at=self._obtained_at,
                margin=self.margin,
                failures=self._failures if (self._failures or tok is None) else 0,
                last_failure_at=self._last_failure_at,
                base=self._backoff_base,
                cap=self._backoff_cap,
                jitter=rng.random() * 0.2,
            )
            if tok is None and at is None:
                at = self._clock()
            self._wake.clear()
            if at is None:
                await self._wake.wait()  # static token: sleep until something changes
                continue
            delay = at - self._clock()
            if delay > 0:
                await wait_event(self._wake, delay)  # keeps aclose()'s cancellation (3.11)
                continue  # re-plan: a refresh elsewhere or a failure may have changed things
            try:
                reason = "retry" if self._failures else "scheduled"
                await self._refresh_if(reason=reason, force=self._failures > 0)
            except AuthError:
                pass  # reported in _do_refresh; the next plan backs off
            except Exception:  # pragma: no cover - defensive: the loop must not die
                log.exception("token keeper loop error")
                await asyncio.sleep(self._backoff_base)


def _required(value: str | None, key: str) -> str:
    if not value:
        raise ConfigError("is required for the chosen token source", key=key, fix=f"set {key}")
    return value


def _discard(items: list[Any], item: Any) -> None:
    with contextlib.suppress(ValueError):
        items.remove(item)
