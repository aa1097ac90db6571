"""supasync.client.frames: postgres_changes frames taken off the socket before realtime-py's
loop."""

from __future__ import annotations

import contextvars
import json
import logging
from typing import Any

import pytest
from pydantic import ValidationError
from realtime import AsyncRealtimeClient
from realtime.message import ServerMessageAdapter

from supasync.client.frames import (
    _OWN_CLIENT,
    REALTIME_CLIENT_LOGGER,
    RoutineLossFilter,
    TappedRealtimeClient,
    TappedSocket,
    take_postgres_changes,
)

TOPIC = "realtime:todos~1"


def frame(data: dict[str, Any], *, ids: Any = (7,), topic: str = TOPIC, **extra: Any) -> str:
    payload: dict[str, Any] = {"ids": list(ids) if ids is not None else None, "data": data}
    return json.dumps({"event": "postgres_changes", "topic": topic, "ref": None,
                       "payload": payload, **extra})


INSERT = {"schema": "public", "table": "todos", "type": "INSERT",
          "commit_timestamp": "2026-11-26T10:00:00Z", "errors": None,
          "columns": [{"name": "id", "type": "int8"}], "record": {"id": 1}}
ERROR_401 = {"schema": "public", "table": "todos", "type": "INSERT", "commit_timestamp": None,
             "errors": ["Error 401: Unauthorized"], "columns": [], "record": {}}


@pytest.fixture
def channels() -> tuple[dict[str, Any], list[Any], list[Any]]:
    """A real realtime-py client and channel with two postgres_changes bindings (ids 7 and 8)."""
    client = AsyncRealtimeClient("ws://127.0.0.1:9/realtime/v1", token="t", auto_reconnect=False)
    channel = client.channel("todos~1")
    inserts: list[Any] = []
    deletes: list[Any] = []
    channel.on_postgres_changes("INSERT", inserts.append, table="todos")  # type: ignore[arg-type]
    channel.on_postgres_changes("DELETE", deletes.append, table="todos")  # type: ignore[arg-type]
    channel.postgres_changes_callbacks[0].id = 7
    channel.postgres_changes_callbacks[1].id = 8
    return client.channels, inserts, deletes


def test_a_change_goes_to_the_bindings_whose_id_and_event_match(channels: Any) -> None:
    table, inserts, deletes = channels
    assert take_postgres_changes(frame(INSERT, ids=[7, 8]), table)
    assert [p["data"]["record"] for p in inserts] == [{"id": 1}]
    assert deletes == []  # id 8 listed, but the binding is for DELETE
    assert take_postgres_changes(frame(INSERT, ids=[8]), table)
    assert len(inserts) == 1


def test_an_error_401_frame_realtime_py_would_drop_is_delivered(channels: Any) -> None:
    table, inserts, _ = channels
    text = frame(ERROR_401)
    with pytest.raises(ValidationError):  # what realtime-py's own loop does with it
        ServerMessageAdapter.validate_json(text)
    assert take_postgres_changes(text, table)
    assert inserts[0]["data"]["errors"] == ["Error 401: Unauthorized"]
    assert inserts[0]["data"]["commit_timestamp"] is None


@pytest.mark.parametrize(
    "text",
    [
        b'{"event": "postgres_changes"}',  # binary frames are realtime-py's
        '{"event":"phx_reply","topic":"realtime:todos~1","payload":{"status":"ok"},"ref":"1"}',
        '{"event":"broadcast","topic":"realtime:todos~1","payload":{"x":"postgres_changes"}}',
        'not json "postgres_changes"',
        '["postgres_changes"]',
        frame(INSERT, topic="realtime:other"),
        frame(INSERT, ids=None),
        frame({**INSERT, "type": None}),
        json.dumps({"event": "postgres_changes", "topic": TOPIC, "payload": [1]}),
    ],
)
def test_anything_else_is_left_to_realtime_py(channels: Any, text: Any) -> None:
    table, inserts, deletes = channels
    assert not take_postgres_changes(text, table)
    assert inserts == [] and deletes == []


def test_a_raising_callback_is_contained_and_the_others_still_run(channels: Any) -> None:
    table, inserts, _ = channels
    channel = table[TOPIC]
    first = channel.postgres_changes_callbacks[0]

    def boom(payload: Any) -> None:
        raise RuntimeError("bug")

    channel.postgres_changes_callbacks.insert(0, type(first)(
        callback=boom, event=first.event, table="todos", schema="public", filter=None, id=7))
    assert take_postgres_changes(frame(INSERT), table)
    assert len(inserts) == 1


class FakeConnection:
    """Stands in for a websockets connection: yields frames, then ends or raises."""

    def __init__(self, frames: list[Any], end: BaseException | None = None) -> None:
        self.frames = frames
        self.end = end
        self.close_code = 1000

    async def _iterate(self) -> Any:
        for f in self.frames:
            yield f
        if self.end is not None:
            raise self.end

    def __aiter__(self) -> Any:
        return self._iterate()

    async def send(self, text: str) -> str:
        return f"sent {text}"


async def test_tapped_socket_passes_on_what_is_not_taken_and_forwards_the_rest() -> None:
    ws = FakeConnection(["a", "take", "b"])
    tap = TappedSocket(ws, lambda f: f == "take")
    assert [f async for f in tap] == ["a", "b"]
    assert tap.close_code == 1000 and tap.wrapped is ws
    assert await tap.send("x") == "sent x"


async def test_tapped_socket_raises_what_the_connection_raises() -> None:
    tap = TappedSocket(FakeConnection(["take"], ConnectionError("gone")), lambda f: True)
    with pytest.raises(ConnectionError):
        async for _ in tap:
            pass


# --------------------------------------------------------------------------- routine losses


def _record(msg: str, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(REALTIME_CLIENT_LOGGER, level, __file__, 1, msg, None, None)


def _filtered(msg: str, *, own: bool, debug: bool = False,
              level: int = logging.ERROR) -> logging.LogRecord | None:
    target = logging.getLogger(REALTIME_CLIENT_LOGGER)
    before = target.level
    target.setLevel(logging.DEBUG if debug else logging.WARNING)
    try:
        record = _record(msg, level)

        def run() -> bool:
            if own:
                _OWN_CLIENT.set(True)
            return RoutineLossFilter().filter(record)

        passed = contextvars.copy_context().run(run)
    finally:
        target.setLevel(before)
    return record if passed else None


@pytest.mark.parametrize("msg", [
    "WebSocket connection closed with code: 1006, reason: ",
    "Auto-reconnect disabled, terminating connection",
    "Connection attempt failed: [Errno 111] Connect call failed",
    "Connection failed permanently after 1 attempts. Error: boom",
    "Unrecognized message format '{\"event\":\"system\"}'\n25 validation errors",
])
def test_routine_losses_of_own_clients_go_to_debug(msg: str) -> None:
    assert _filtered(msg, own=True) is None  # DEBUG not enabled: dropped
    kept = _filtered(msg, own=True, debug=True)
    assert kept is not None and kept.levelno == logging.DEBUG and kept.levelname == "DEBUG"
    other = _filtered(msg, own=False)  # a realtime-py client of the application's own
    assert other is not None and other.levelno == logging.ERROR


def test_other_records_pass_unchanged() -> None:
    record = _filtered("subscribe callback failed for channel x", own=True)
    assert record is not None and record.levelno == logging.ERROR
    record = _filtered("send: {...}", own=True, level=logging.DEBUG)
    assert record is not None and record.levelno == logging.DEBUG


def test_the_filter_is_installed_once_by_supasync_clients() -> None:
    target = logging.getLogger(REALTIME_CLIENT_LOGGER)
    TappedRealtimeClient("ws://127.0.0.1:9/realtime/v1", token="t", auto_reconnect=False)
    TappedRealtimeClient("ws://127.0.0.1:9/realtime/v1", token="t", auto_reconnect=False)
    assert sum(isinstance(f, RoutineLossFilter) for f in target.filters) == 1
