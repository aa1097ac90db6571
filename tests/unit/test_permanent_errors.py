"""The pure parts of "a permanent error is not an outage" (issue #17): a refused handshake read
from websockets' exception, the key verdict, the URL port check, the ``failed`` state."""

from __future__ import annotations

import pytest
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response

from supasync.client.config import url_port_problem
from supasync.client.connection import api_key_rejected, handshake_refusal
from supasync.core.errors import ApiKeyRejected, ConfigError
from supasync.core.status import (
    CONNECTION_TRANSITIONS,
    ConnectionState,
    Observation,
    next_connection_state,
)


def refused(status: int, body: bytes) -> InvalidStatus:
    return InvalidStatus(Response(status, "x", Headers(), body))


def test_handshake_refusal_reads_status_and_server_text() -> None:
    exc = refused(401, b'{"error": "The token provided is not a valid JWT"}')
    assert handshake_refusal(exc) == (401, "The token provided is not a valid JWT")
    assert handshake_refusal(refused(403, b"")) == (403, "")
    assert handshake_refusal(OSError("connection refused")) is None


@pytest.mark.parametrize(
    ("handshake", "rest", "expected"),
    [(401, 401, True), (401, 200, False), (401, None, False), (401, 503, False),
     (None, 401, False), (403, 401, False), (500, 401, False)],
)
def test_only_a_401_confirmed_by_postgrest_is_permanent(
    handshake: int | None, rest: int | None, expected: bool
) -> None:
    assert api_key_rejected(handshake, rest) is expected


def test_api_key_rejected_is_a_config_error_naming_the_setting_not_the_key() -> None:
    error = ApiKeyRejected("The token provided is not a valid JWT", rest_reason="Invalid API key",
                           key="SUPABASE_SERVICE_ROLE_KEY")
    assert isinstance(error, ConfigError)
    text = str(error)
    assert text.startswith("SUPABASE_SERVICE_ROLE_KEY: the API key was rejected")
    assert "401" in text and "Invalid API key" in text and "Fix:" in text


@pytest.mark.parametrize(
    ("url", "problem"),
    [("http://127.0.0.1:99999", "99999"), ("http://127.0.0.1:0", "port 0"),
     ("http://h:abc", "'abc'"), ("http://[::1]:70000", "70000"),
     ("https://x.supabase.co", None), ("http://127.0.0.1:54321", None),
     ("http://[::1]:8080/", None), ("http://user:pw@h:5432", None)],
)
def test_url_port_problem(url: str, problem: str | None) -> None:
    found = url_port_problem(url)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_settings_name_the_bad_port() -> None:
    from supasync.client.config import load_settings

    with pytest.raises(ConfigError) as caught:
        load_settings(env={"SUPABASE_URL": "http://127.0.0.1:99999", "SUPABASE_ANON_KEY": "a"},
                      env_file=None, toml_path=None)
    assert "SUPABASE_URL" in str(caught.value) and "99999" in str(caught.value)
    assert caught.value.fix and "65535" in caught.value.fix


def test_rejected_fails_every_live_state_and_only_stop_leaves_failed() -> None:
    for state in ConnectionState:
        expected = (ConnectionState.STOPPED if state is ConnectionState.STOPPED
                    else ConnectionState.FAILED)
        assert next_connection_state(state, Observation.REJECTED) is expected
    for observation in Observation:
        expected = (ConnectionState.STOPPED if observation is Observation.STOP
                    else ConnectionState.FAILED)
        assert CONNECTION_TRANSITIONS[(ConnectionState.FAILED, observation)] is expected


class _Tokens:
    api_key = "anon"

    async def token(self) -> str:
        return "t"

    async def refresh(self, *, reason: str) -> str:
        return "t"

    def on_change(self, callback: object) -> object:
        return lambda: None


async def _run_refused(
    rest_status: int | None, attempts: int
) -> tuple[tuple[ConnectionState, ApiKeyRejected | None], int]:
    """Run a Connection whose every handshake is answered 401 while PostgREST answers
    *rest_status*, until it failed or tried *attempts* times; ``((state, failure), tries)``."""
    import asyncio

    from supasync.client.connection import Connection, ConnectionOptions
    from supasync.client.subscription import Subscription
    from supasync.core.backoff import BackoffPolicy
    from supasync.core.status import ConnectionFailed

    tried = 0
    enough = asyncio.Event()

    class Refused:
        def __init__(self, *args: object, **kwargs: object) -> None:
            self.channels: object = {}

        async def set_auth(self, token: str) -> None:
            pass

        async def connect(self) -> None:
            nonlocal tried
            tried += 1
            if tried >= attempts:
                enough.set()
            raise refused(401, b'{"error": "Failed to validate JWT signature"}')

    conn = Connection("ws://127.0.0.1:9/realtime/v1", _Tokens(),  # type: ignore[arg-type]
                      rest_url="http://127.0.0.1:9/rest/v1",
                      client_factory=Refused,  # type: ignore[arg-type]
                      options=ConnectionOptions(backoff=BackoffPolicy(initial=0.01, cap=0.01)))

    async def probe() -> tuple[int | None, str | None]:
        return rest_status, "Invalid API key" if rest_status == 401 else None

    conn._probe_rest = probe  # type: ignore[method-assign]
    failed = asyncio.ensure_future(
        conn.status.wait_for(lambda e: isinstance(e, ConnectionFailed), timeout=5))
    await conn.add(Subscription("t"))
    await conn.start()
    retried = asyncio.ensure_future(enough.wait())
    await asyncio.wait({failed, retried}, timeout=5, return_when=asyncio.FIRST_COMPLETED)
    state, failure = conn.status.state, conn.failure
    await conn.aclose()
    for waiter in (failed, retried):
        waiter.cancel()
    return (state, failure), tried


async def test_a_401_postgrest_does_not_confirm_is_retried() -> None:
    (state, failure), attempts = await _run_refused(200, attempts=4)
    assert failure is None and attempts >= 4
    assert state is ConnectionState.CONNECTING


async def test_a_401_postgrest_confirms_fails_the_connection_once() -> None:
    (state, failure), attempts = await _run_refused(401, attempts=4)
    assert isinstance(failure, ApiKeyRejected) and attempts == 1
    assert state is ConnectionState.FAILED
    assert "Failed to validate JWT signature" in str(failure)
