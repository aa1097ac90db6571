"""Unit tests for supasync.client.tokens: the pure scheduling core, the providers, the
TokenKeeper."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Any

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from supasync.client.tokens import (
    CallableProvider,
    PasswordSession,
    RefreshFailure,
    SecretMinter,
    StaticToken,
    Token,
    TokenKeeper,
    backoff_delay,
    effective_margin,
    needs_refresh,
    next_refresh_at,
    token_expiry,
)
from supasync.core.errors import AuthError, ConfigError

SECRET = "unit-test-secret-that-is-long-enough-for-hs256"
T0 = 1_800_000_000.0


def make_jwt(exp: float | None, **claims: Any) -> str:
    payload = {"role": "authenticated", **claims}
    if exp is not None:
        payload["exp"] = int(exp)
    return jwt.encode(payload, SECRET, algorithm="HS256")


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------- pure core


def test_token_expiry_reads_exp_without_verifying() -> None:
    assert token_expiry(make_jwt(T0 + 10)) == T0 + 10
    forged = jwt.encode({"exp": 123, "role": "x"}, "other-secret-that-is-long-enough-32b")
    assert token_expiry(forged) == 123.0


@pytest.mark.parametrize(
    "token",
    ["", "sb_publishable_abcdef123456", "sb_secret_abcdef123456", "opaque", "a.b.c",
     make_jwt(None), jwt.encode({"exp": "soon"}, SECRET), jwt.encode({"exp": True}, SECRET)],
)
def test_token_expiry_none_for_non_expiring(token: str) -> None:
    assert token_expiry(token) is None


def test_effective_margin_clamps_for_short_tokens() -> None:
    assert effective_margin(60, 3600) == 60
    assert effective_margin(60, 5) == 2.5
    assert effective_margin(60, None) == 60
    assert effective_margin(60, -1) == 60
    assert effective_margin(-5, 100) == 0


def test_needs_refresh() -> None:
    exp = T0 + 3600
    assert not needs_refresh(T0, exp=exp, obtained_at=T0, margin=60)
    assert not needs_refresh(exp - 61, exp=exp, obtained_at=T0, margin=60)
    assert needs_refresh(exp - 60, exp=exp, obtained_at=T0, margin=60)
    assert needs_refresh(exp + 1, exp=exp, obtained_at=T0, margin=60)
    assert not needs_refresh(T0 + 10**9, exp=None, obtained_at=T0, margin=60)
    # a five-second token is good for 2.5 s, then due
    assert not needs_refresh(T0 + 2.4, exp=T0 + 5, obtained_at=T0, margin=60)
    assert needs_refresh(T0 + 2.5, exp=T0 + 5, obtained_at=T0, margin=60)


def test_next_refresh_at_schedules_ahead_of_exp() -> None:
    assert next_refresh_at(exp=T0 + 3600, obtained_at=T0, margin=60) == T0 + 3540
    assert next_refresh_at(exp=T0 + 5, obtained_at=T0, margin=60) == T0 + 2.5
    assert next_refresh_at(exp=None, obtained_at=T0, margin=60) is None


def test_next_refresh_at_backs_off_after_failures() -> None:
    f = T0 + 100
    at = [
        next_refresh_at(exp=T0 + 3600, obtained_at=T0, margin=60, failures=n, last_failure_at=f)
        for n in range(1, 10)
    ]
    delays = [a - f for a in at if a is not None]
    assert delays[0] == 0.5
    assert delays == sorted(delays)
    assert max(delays) == 30.0
    # a failure is retried even for a token that never expires
    assert next_refresh_at(exp=None, obtained_at=T0, margin=60, failures=1, last_failure_at=f)


@given(
    failures=st.integers(min_value=1, max_value=10_000),
    jitter=st.floats(min_value=-1, max_value=2, allow_nan=False),
)
def test_backoff_delay_bounded(failures: int, jitter: float) -> None:
    d = backoff_delay(failures, base=0.5, cap=30, jitter=jitter)
    assert 0.25 <= d <= 30


@given(
    lifetime=st.floats(min_value=0.1, max_value=10**7, allow_nan=False),
    margin=st.floats(min_value=0, max_value=10**5, allow_nan=False),
)
def test_refresh_always_before_exp_and_after_issue(lifetime: float, margin: float) -> None:
    at = next_refresh_at(exp=T0 + lifetime, obtained_at=T0, margin=margin)
    assert at is not None
    assert T0 <= at <= T0 + lifetime
    # the token is still valid for half its lifetime or the margin, whichever is smaller
    assert T0 + lifetime - at == pytest.approx(min(margin, lifetime / 2), abs=1e-5)


# --------------------------------------------------------------------------- providers


async def test_static_token() -> None:
    tok = make_jwt(T0 + 100)
    p = StaticToken(tok, clock=Clock())
    got = await p.fetch(reason="initial")
    assert got.value == tok and got.expires_at == T0 + 100
    assert tok not in repr(p) and tok not in repr(got) and tok not in str(got)
    expired = StaticToken(tok, clock=Clock(T0 + 101))
    with pytest.raises(AuthError) as info:
        await expired.fetch(reason="x")
    assert tok not in str(info.value)
    sb = await StaticToken("sb_secret_abcdefghijkl").fetch(reason="x")
    assert sb.expires_at is None
    with pytest.raises(ConfigError):
        StaticToken("")


async def test_secret_minter_claims_and_lifetime() -> None:
    p = SecretMinter(SECRET, {"sub": "user-1", "role": "authenticated"}, 5, clock=Clock())
    got = await p.fetch(reason="initial")
    claims = jwt.decode(
        got.value, SECRET, algorithms=["HS256"], options={"verify_exp": False, "verify_iat": False}
    )
    assert claims["sub"] == "user-1" and claims["role"] == "authenticated"
    assert claims["exp"] == int(T0) + 5 and claims["iat"] == int(T0)
    assert got.expires_at == T0 + 5
    assert SECRET not in repr(p)
    default_role = await SecretMinter(SECRET, {}, clock=Clock()).fetch(reason="x")
    unverified = jwt.decode(default_role.value, options={"verify_signature": False})
    assert unverified["role"] == "authenticated"
    with pytest.raises(ConfigError):
        SecretMinter("", {})
    with pytest.raises(ConfigError):
        SecretMinter(SECRET, {}, 0)


async def test_callable_provider_sync_async_and_errors() -> None:
    tok = make_jwt(T0 + 50)
    assert (await CallableProvider(lambda: tok).fetch(reason="x")).expires_at == T0 + 50

    async def afn() -> Token:
        return Token("sb_publishable_abcdefgh", None)

    assert (await CallableProvider(afn).fetch(reason="x")).value == "sb_publishable_abcdefgh"

    def bad() -> str:
        raise RuntimeError(f"vault said no for {tok}")

    with pytest.raises(AuthError) as info:
        await CallableProvider(bad).fetch(reason="x")
    assert tok not in str(info.value) and "vault said no" in str(info.value)
    with pytest.raises(AuthError):
        await CallableProvider(lambda: "").fetch(reason="x")
    with pytest.raises(AuthError):
        await CallableProvider(lambda: 42).fetch(reason="x")  # type: ignore[arg-type,return-value]


def test_password_session_repr_and_validation() -> None:
    p = PasswordSession("http://localhost:1", "anon-key-value", "me@example.com", "hunter2-secret")
    text = repr(p)
    assert "hunter2-secret" not in text and "me@example.com" not in text
    assert "anon-key-value" not in text
    with pytest.raises(ConfigError) as info:
        PasswordSession("http://localhost:1", "anon", "me@example.com", "")
    assert "hunter2" not in str(info.value)


async def test_password_session_unreachable_server_is_auth_error() -> None:
    p = PasswordSession("http://127.0.0.1:9", "anon", "me@example.com", "hunter2-secret")
    try:
        with pytest.raises(AuthError) as info:
            await p.fetch(reason="initial")
        assert "hunter2-secret" not in str(info.value)
    finally:
        await p.aclose()


# --------------------------------------------------------------------------- keeper


class Scripted:
    """A provider returning scripted results (tokens or exceptions), counting fetches."""

    def __init__(self, *results: Token | Exception) -> None:
        self.results = list(results)
        self.fetches: list[str] = []
        self.closed = False
        self.gate: asyncio.Event | None = None

    async def fetch(self, *, reason: str) -> Token:
        self.fetches.append(reason)
        if self.gate is not None:
            await self.gate.wait()
        result = self.results.pop(0) if len(self.results) > 1 else self.results[0]
        if isinstance(result, Exception):
            raise result
        return result

    async def aclose(self) -> None:
        self.closed = True


def tok(exp: float | None, sub: str = "u") -> Token:
    return Token(make_jwt(exp, sub=sub), exp)


async def test_keeper_token_reuses_until_margin_then_refreshes() -> None:
    clock = Clock()
    a, b = tok(T0 + 100, "a"), tok(T0 + 200, "b")
    p = Scripted(a, b)
    k = TokenKeeper(p, api_key="anon", margin=10, clock=clock)
    assert await k.token() == a.value
    clock.now = T0 + 89
    assert await k.token() == a.value
    assert p.fetches == ["initial"]
    clock.now = T0 + 90
    assert await k.token() == b.value
    assert p.fetches == ["initial", "expiring"]
    assert k.expires_at == T0 + 200


async def test_keeper_short_tokens_clamp_margin() -> None:
    clock = Clock()
    p = Scripted(tok(T0 + 5, "a"), tok(T0 + 7.5, "b"))
    k = TokenKeeper(p, api_key="anon", margin=60, clock=clock)
    first = await k.token()
    clock.now = T0 + 2  # 3 s left, margin clamped to 2.5: still fine
    assert await k.token() == first
    clock.now = T0 + 2.6
    assert await k.token() != first


async def test_keeper_refresh_forces_and_notifies_only_on_change() -> None:
    clock = Clock()
    a, b = tok(T0 + 100, "a"), tok(T0 + 100, "b")
    p = Scripted(a, a, b)
    k = TokenKeeper(p, api_key="anon", clock=clock)
    seen_sync: list[str] = []
    seen_async: list[str] = []

    async def alistener(t: str) -> None:
        seen_async.append(t)

    k.on_change(seen_sync.append)
    unsubscribe = k.on_change(alistener)
    await k.token()
    assert await k.refresh(reason="reconnect") == a.value  # same token: no notification
    unsubscribe()
    assert await k.refresh(reason="expired") == b.value
    assert seen_sync == [a.value, b.value]
    assert seen_async == [a.value]
    assert p.fetches == ["initial", "reconnect", "expired"]


async def test_keeper_concurrent_refreshes_share_one_fetch() -> None:
    p = Scripted(tok(T0 + 100))
    p.gate = asyncio.Event()
    k = TokenKeeper(p, api_key="anon", clock=Clock())
    calls = [asyncio.create_task(k.refresh(reason=f"r{i}")) for i in range(5)]
    await asyncio.sleep(0)
    p.gate.set()
    results = await asyncio.gather(*calls)
    assert len(set(results)) == 1
    assert len(p.fetches) == 1


async def test_keeper_listener_errors_do_not_break_refresh(
    caplog: pytest.LogCaptureFixture,
) -> None:
    p = Scripted(tok(T0 + 100))
    k = TokenKeeper(p, api_key="anon", clock=Clock())

    def boom(t: str) -> None:
        raise RuntimeError("listener broke")

    k.on_change(boom)
    with caplog.at_level(logging.DEBUG, logger="supasync"):
        assert await k.token()
    assert "listener broke" in caplog.text


async def test_keeper_failure_reported_never_silent_and_never_leaks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    good = tok(T0 + 100, "good")
    p = Scripted(good, AuthError("server said 503"), AuthError("server said 503"))
    k = TokenKeeper(p, api_key="anon-key-secret", margin=10, clock=clock)
    failures: list[RefreshFailure] = []
    k.on_failure(failures.append)
    with caplog.at_level(logging.DEBUG):
        await k.token()
        clock.now = T0 + 95  # inside the margin, refresh fails, old token still valid
        assert await k.token() == good.value
        with pytest.raises(AuthError):
            await k.refresh(reason="reconnect")
    assert [f.attempt for f in failures] == [1, 2]
    assert failures[0].reason == "expiring" and failures[1].reason == "reconnect"
    assert failures[1].retry_at > clock.now and failures[0].expires_at == T0 + 100
    assert k.failures == 2 and k.last_error and "503" in k.last_error
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert good.value not in caplog.text and "anon-key-secret" not in caplog.text
    assert good.value not in repr(k) and "anon-key-secret" not in repr(k)
    # once expired, a failing refresh raises
    clock.now = T0 + 101
    with pytest.raises(AuthError):
        await k.token()


async def test_keeper_first_fetch_failure_raises() -> None:
    k = TokenKeeper(Scripted(AuthError("nope")), api_key="anon", clock=Clock())
    with pytest.raises(AuthError, match="nope"):
        await k.token()
    with pytest.raises(AuthError):
        await k.start()


async def test_keeper_masks_unexpected_provider_errors() -> None:
    secret = make_jwt(T0 + 1)

    class Leaky:
        async def fetch(self, *, reason: str) -> Token:
            raise ValueError(f"bad token {secret}")

        async def aclose(self) -> None:
            return None

    k = TokenKeeper(Leaky(), api_key="anon", clock=Clock())
    with pytest.raises(AuthError) as info:
        await k.token()
    assert secret not in str(info.value) and "ValueError" in str(info.value)


async def test_keeper_background_task_refreshes_ahead_of_exp() -> None:
    # Real clock, half-second tokens: the background task must keep a fresh token without anyone
    # calling token(). Waits on change notifications, not on sleeps.
    lifetime = 0.5
    minted = itertools.count()

    async def mint() -> Token:
        now = time.time()
        return Token(make_jwt(now + lifetime, jti=next(minted)), now + lifetime)

    changes: asyncio.Queue[str] = asyncio.Queue()
    async with TokenKeeper(CallableProvider(mint), api_key="anon", margin=60) as k:
        k.on_change(changes.put_nowait)
        seen = {await asyncio.wait_for(changes.get(), 5) for _ in range(3)}
        assert len(seen) == 3
    assert k._task is None


async def test_keeper_background_retries_failures_with_backoff() -> None:
    p = Scripted(tok(None, "static"))
    k = TokenKeeper(p, api_key="anon", backoff_base=0.01, backoff_cap=0.02)
    await k.start()
    # Make the next refresh fail twice, then succeed with a new token.
    fresh = tok(None, "fresh")
    p.results = [AuthError("down"), AuthError("down"), fresh]
    done = asyncio.Event()
    k.on_change(lambda t: done.set() if t == fresh.value else None)
    failures: list[RefreshFailure] = []
    k.on_failure(failures.append)
    with pytest.raises(AuthError):
        await k.refresh(reason="expired")
    await asyncio.wait_for(done.wait(), 5)
    assert [f.attempt for f in failures] == [1, 2]
    assert k.failures == 0 and k.last_error is None
    await k.aclose()
    assert p.closed
    with pytest.raises(AuthError):
        await k.refresh(reason="after close")


class FakeSettings:
    url = "http://127.0.0.1:1"
    anon_key = "anon-key"
    service_role_key = "service-key"
    access_token: str | None = None
    email: str | None = "me@example.com"
    password: str | None = "pw-secret"
    jwt_secret: str | None = SECRET
    jwt_claims: dict[str, Any] = {"sub": "abc"}
    refresh_margin = 42.0

    def __init__(self, source: str) -> None:
        self.source = source

    def token_source(self) -> str:
        return self.source


@pytest.mark.parametrize(
    ("source", "provider", "api_key"),
    [
        ("password", PasswordSession, "anon-key"),
        ("jwt_secret", SecretMinter, "anon-key"),
        ("service_role", StaticToken, "service-key"),
        ("anon", StaticToken, "anon-key"),
    ],
)
def test_from_settings_chooses_provider(source: str, provider: type, api_key: str) -> None:
    k = TokenKeeper.from_settings(FakeSettings(source))
    assert isinstance(k.provider, provider)
    assert k.api_key == api_key
    assert k.margin == 42.0


async def test_from_settings_access_token_and_anon() -> None:
    s = FakeSettings("access_token")
    s.access_token = make_jwt(T0 + 10**9)
    k = TokenKeeper.from_settings(s)
    assert await k.token() == s.access_token and k.api_key == "anon-key"
    anon = TokenKeeper.from_settings(FakeSettings("anon"))
    assert await anon.token() == "anon-key"
    s = FakeSettings("access_token")
    with pytest.raises(ConfigError) as info:
        TokenKeeper.from_settings(s)
    assert "SUPABASE_ACCESS_TOKEN" in str(info.value)
