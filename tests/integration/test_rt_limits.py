"""The tenant rate limits of the local Realtime server, enabled with ``supasync dev`` options
(realtime-protocol.md §10; supasync/devstack/realtime/limits.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
import websockets

from supasync.devstack.testing import StackProcess

pytestmark = pytest.mark.integration

WAIT = 10.0


@pytest.fixture(scope="module")
def stack() -> Iterator[StackProcess]:
    with StackProcess(extra_args=["--max-events-per-second", "1",
                                  "--max-joins-per-second", "1"]) as s:
        yield s


async def connect(stack: StackProcess) -> Any:
    url = f"ws://127.0.0.1:{stack.port}/realtime/v1/websocket?apikey={stack.anon_key}"
    return await websockets.connect(url)


async def send(ws: Any, topic: str, event: str, payload: Any, ref: str) -> None:
    await ws.send(json.dumps({"topic": topic, "event": event, "payload": payload, "ref": ref}))


async def recv_until(ws: Any, pred: Any) -> dict[str, Any]:
    async def loop() -> dict[str, Any]:
        while True:
            frame = json.loads(await ws.recv())
            if pred(frame):
                return frame  # type: ignore[no-any-return]

    return await asyncio.wait_for(loop(), WAIT)


async def test_events_limit_closes_receiving_channels_and_joins_limit_refuses(
    stack: StackProcess,
) -> None:
    config = {"config": {"broadcast": {"self": True}}}
    ws = await connect(stack)
    try:
        await send(ws, "realtime:busy", "phx_join", config, "1")
        await recv_until(ws, lambda f: f["event"] == "phx_reply" and f["ref"] == "1")
        # 1 event/s averaged over 60 s: 60 events are allowed; each broadcast to ourselves
        # counts twice (the push and the delivery).
        for i in range(31):
            await send(ws, "realtime:busy", "broadcast",
                       {"type": "broadcast", "event": "e", "payload": {"i": i}}, f"b{i}")
        await recv_until(ws, lambda f: f["event"] == "broadcast" and f["payload"]["payload"]["i"]
                         == 30)
        await send(ws, "realtime:busy", "broadcast",
                   {"type": "broadcast", "event": "e", "payload": {"i": 99}}, "over")
        error = await recv_until(ws, lambda f: f["event"] in ("system", "broadcast"))
        assert error["event"] == "system", error
        assert error["payload"]["message"] == "Too many messages per second"
        assert error["payload"]["status"] == "error"
        await recv_until(ws, lambda f: f["event"] == "phx_close")
    finally:
        await ws.close()

    # Joins: one was made above; 59 more are allowed in the window, the next is refused and
    # its socket closed with 1001.
    ws = await connect(stack)
    try:
        for i in range(59):
            await send(ws, f"realtime:j{i}", "phx_join", {"config": {}}, f"j{i}")
            reply = await recv_until(ws, lambda f, r=f"j{i}": f["event"] == "phx_reply"
                                     and f["ref"] == r)
            assert reply["payload"]["status"] == "ok"
            await send(ws, f"realtime:j{i}", "phx_leave", {}, f"l{i}")
        await send(ws, "realtime:one-too-many", "phx_join", {"config": {}}, "last")
        refused = await recv_until(ws, lambda f: f["event"] == "phx_reply"
                                   and f["ref"] == "last")
        assert refused["payload"] == {"status": "error", "response": {
            "reason": "ClientJoinRateLimitReached: Too many joins per second"}}
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), WAIT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    finally:
        await ws.close()
