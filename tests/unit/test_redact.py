"""Unit tests for supasync.core.redact: masking and the logging filter."""

from __future__ import annotations

import logging

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from supasync.core.redact import RedactingFilter, install_redaction, mask

JWT = jwt.encode({"role": "service_role", "exp": 2_000_000_000}, "k" * 32, algorithm="HS256")
SB_SECRET = "sb_secret_N7UND0UgjKTVK-Uodkm0Hg_xSvEMPvz"
SB_PUB = "sb_publishable_ACJWlzQHlZjBrEguHvfOxg_3BJgxAaH"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (f"connecting to ws://h/realtime/v1/websocket?apikey={JWT}&vsn=1.0.0", JWT),
        (f"payload {{'access_token': '{JWT}'}}", JWT),
        (f'{{"access_token": "{JWT}", "x": 1}}', JWT),
        (f"Authorization: Bearer {JWT}", JWT),
        (f"headers={{'apikey': '{SB_SECRET}'}}", SB_SECRET),
        (f"key {SB_SECRET} used", SB_SECRET),
        (f"key {SB_PUB} used", SB_PUB),
        ("login password=hunter2 ok", "hunter2"),
        ('{"email": "a@b.c", "password": "hunter2"}', "hunter2"),
        ("refresh_token=abcdef123456", "abcdef123456"),
        ("x-api-key: opaque-key-1234", "opaque-key-1234"),
        ("postgresql://postgres:pg-secret@127.0.0.1:5432/postgres", "pg-secret"),
        (f"truncated header {JWT[:20]}", JWT[:20]),
        (f"token={JWT}", JWT),
    ],
)
def test_mask_removes_secret(text: str, secret: str) -> None:
    out = mask(text)
    assert secret not in out
    assert "***" in out
    assert mask(out) == out


def test_mask_keeps_ordinary_text() -> None:
    for text in [
        "Token has expired 0 seconds ago",
        "subscribed to public:todos (vsn=1.0.0)",
        "token_source is password",
        "",
        "INSERT public.todos pk=(1,)",
    ]:
        assert mask(text) == text


def test_mask_keeps_key_names_for_context() -> None:
    out = mask(f"apikey={JWT}&vsn=1.0.0")
    assert out == "apikey=***&vsn=1.0.0"
    assert mask(f"push {JWT} now") == "push eyJ*** now"
    assert mask(f"key {SB_SECRET}") == "key sb_secret_***"


@given(st.text(alphabet=st.characters(codec="ascii"), max_size=60))
def test_mask_hides_jwt_anywhere(prefix: str) -> None:
    out = mask(prefix + " " + JWT + " tail")
    assert JWT not in out
    assert JWT.split(".")[2] not in out


@given(st.text(max_size=200))
def test_mask_idempotent(text: str) -> None:
    assert mask(mask(text)) == mask(text)


def test_filter_masks_args_and_exceptions(caplog: pytest.LogCaptureFixture) -> None:
    lg = logging.getLogger("supasync.test_redact.direct")
    lg.addFilter(RedactingFilter())
    try:
        with caplog.at_level(logging.DEBUG, logger="supasync"):
            lg.debug("joining with %s and %r", JWT, {"apikey": SB_SECRET})
            try:
                raise ValueError(f"bad token {JWT}")
            except ValueError:
                lg.exception("failed")
        assert JWT not in caplog.text and SB_SECRET not in caplog.text
        record = caplog.records[0]
        assert record.args is None and "eyJ***" in record.getMessage()
        assert caplog.records[1].exc_text and JWT not in caplog.records[1].exc_text
    finally:
        lg.filters.clear()


def test_install_covers_children_and_root_handlers(caplog: pytest.LogCaptureFixture) -> None:
    child = logging.getLogger("realtime._async.test_child")  # exists before install
    install_redaction()
    install_redaction()  # idempotent
    assert sum(isinstance(f, RedactingFilter) for f in child.filters) == 1
    assert any(isinstance(f, RedactingFilter) for f in logging.getLogger("httpx").filters)
    with caplog.at_level(logging.DEBUG):
        child.debug("send %s", {"access_token": JWT})
        logging.getLogger("supasync").info("password=%s", "hunter2")
    assert JWT not in caplog.text and "hunter2" not in caplog.text
    assert "access_token" in caplog.text


def test_install_covers_root_handlers_for_later_loggers() -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(level=logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    try:
        install_redaction()
        later = logging.getLogger("websockets.created_later_for_test")
        later.debug("> TEXT %s", f'{{"apikey":"{JWT}"}}')
        assert records and JWT not in handler.format(records[-1])
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
