"""Unit tests for supasync.core.errors: the tree, messages, redaction and server-text
classification."""

from __future__ import annotations

import pickle

import pytest

from supasync.core import errors
from supasync.core.errors import (
    ConfigError,
    FilterError,
    FilterRejected,
    RestError,
    SubscriptionError,
    SupasyncError,
    TableNotPublished,
    Unauthorized,
    classify_system_error,
)


def test_every_exception_is_a_supasync_error() -> None:
    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, SupasyncError), name
    assert issubclass(FilterError, ValueError)
    for sub in (FilterRejected, TableNotPublished, Unauthorized):
        assert issubclass(sub, SubscriptionError)


def test_filter_error_caret() -> None:
    err = FilterError("unknown operator 'eqq'", "status=eqq.open", 7)
    assert str(err) == "unknown operator 'eqq'\n  status=eqq.open\n         ^"
    assert (err.text, err.position, err.message) == ("status=eqq.open", 7, "unknown operator 'eqq'")
    assert str(FilterError("plain")) == "plain"
    assert str(FilterError("no pos", "a=b")) == "no pos\n  a=b"
    # A position past the end points just after the text.
    assert str(FilterError("end", "ab", 9)).splitlines()[2] == "    ^"
    copy = pickle.loads(pickle.dumps(err))
    assert str(copy) == str(err)


def test_config_error_names_key_value_fix() -> None:
    err = ConfigError("must start with http:// or https://", key="SUPABASE_URL",
                      value="ftp://x", fix="set SUPABASE_URL=https://<ref>.supabase.co",
                      source=".env")
    text = str(err)
    assert "SUPABASE_URL = 'ftp://x' (from .env)" in text
    assert "must start with http" in text and "Fix: set SUPABASE_URL" in text
    assert err.key == "SUPABASE_URL" and err.fix and err.source == ".env"


@pytest.mark.parametrize(
    "key",
    ["SUPABASE_ANON_KEY", "SUPABASE_SERVICE_ROLE_KEY", "SUPABASE_ACCESS_TOKEN",
     "SUPABASE_PASSWORD", "SUPABASE_JWT_SECRET", "SUPABASE_DB_URL"],
)
def test_config_error_redacts_secrets(key: str) -> None:
    secret = "s3cr3t-value-xyz"
    err = ConfigError("is malformed", key=key, value=secret, fix="fix it")
    assert secret not in str(err) and secret not in repr(err)
    assert "<redacted>" in str(err)
    assert "<empty>" in str(ConfigError("is empty", key=key, value=""))


def test_config_error_forced_redaction() -> None:
    err = ConfigError("bad", key="WHATEVER", value="hunter2", secret=True)
    assert "hunter2" not in str(err)


def test_subscription_error_str_and_attrs() -> None:
    err = TableNotPublished("todos", "Unable to subscribe ... check Realtime is enabled ...")
    assert err.subscription == "todos" and "check Realtime" in err.reason
    assert "alter publication supabase_realtime" in str(err)
    assert not err.retryable
    copy = pickle.loads(pickle.dumps(err))
    assert isinstance(copy, TableNotPublished) and copy.reason == err.reason


def test_rest_error() -> None:
    err = RestError("JSON object requested, multiple rows returned", status=406,
                    code="PGRST116", details="Results contain 2 rows", hint=None)
    assert str(err) == (
        "PostgREST error 406 [PGRST116]: JSON object requested, multiple rows returned; "
        "details: Results contain 2 rows"
    )
    assert (err.status, err.code, err.hint) == (406, "PGRST116", None)


# Exact texts from docs/realtime-protocol.md §3.5, §4, §7.2-7.3, §10.
CASES = [
    ('Error parsing `filter` params: ["wrong"]', FilterRejected, False),
    ("Error parsing `filter` params: `in` filter value must be wrapped by parentheses",
     FilterRejected, False),
    ("Error parsing `filter` params: filter must not contain empty segments "
     "(check for extra commas)", FilterRejected, False),
    ("Unable to subscribe to changes with given parameters. Please check Realtime is enabled "
     "for the given connect parameters: [event: *, schema: public, table: doesnotexist, "
     "filters: [], select: nil]", TableNotPublished, False),
    ("Unable to subscribe to changes with given parameters. An exception happened so please "
     "check your connect parameters: [event: *, schema: public, table: test, filters: "
     '[{"notacolumn", "eq", "123", false}], select: nil]. Exception: ERROR P0001 '
     "(raise_exception) invalid column for filter notacolumn", FilterRejected, False),
    ("Unable to subscribe to changes with given parameters. An exception happened so please "
     "check your connect parameters: [...]. Exception: ERROR 22P02 (invalid_text_representation)"
     ' invalid input syntax for type bigint: "abc"', FilterRejected, False),
    ("Unable to subscribe to changes with given parameters. An exception happened so please "
     'check your connect parameters: [...]. Exception: ERROR 22023 role "nobody" does not exist',
     Unauthorized, False),
    ("No subscription params provided. Please provide at least a `schema` or `table` to "
     "subscribe to: %{}", SubscriptionError, False),
    ('{:error, "Too many database timeouts"}', SubscriptionError, True),
    ("Token has expired 0 seconds ago", Unauthorized, True),
    ("InvalidJWTToken: Token has expired 12 seconds ago", Unauthorized, True),
    ("The token provided is not a valid JWT", Unauthorized, False),
    ("MalformedJWT: The token provided is not a valid JWT", Unauthorized, False),
    ("Fields `role` and `exp` are required in JWT", Unauthorized, False),
    ("JwtSignatureError: Failed to validate JWT signature", Unauthorized, False),
    ("Unauthorized: You do not have permissions to read from this Channel topic: room",
     Unauthorized, False),
    ("You no longer have permission to read from this Channel topic: room", Unauthorized, False),
    ("PrivateOnly: This project only allows private channels", Unauthorized, False),
    ("ChannelRateLimitReached: Too many channels", SubscriptionError, True),
    ("Too many messages per second", SubscriptionError, True),
    ("RealtimeRestarting: Realtime is restarting, please standby", SubscriptionError, True),
    ("something nobody has seen before", SubscriptionError, True),
]


@pytest.mark.parametrize(("message", "kind", "retryable"), CASES)
def test_classify_system_error(message: str, kind: type[SubscriptionError],
                               retryable: bool) -> None:
    err = classify_system_error(message, "todos")
    assert type(err) is kind
    assert err.retryable is retryable
    assert err.subscription == "todos" and err.reason == message
    assert "todos" in str(err)


@pytest.mark.parametrize(("status", "transient"), [
    (None, True), (408, True), (429, True), (500, True), (502, True), (503, True),
    (400, False), (401, False), (403, False), (404, False), (406, False),
])
def test_a_rest_error_says_whether_the_same_request_may_succeed_later(
    status: int | None, transient: bool
) -> None:
    assert RestError("x", status=status).transient is transient
