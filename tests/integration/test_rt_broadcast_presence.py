"""Broadcast and presence on the local Realtime server (realtime-protocol.md §2.2, §9), with
realtime-py and raw V1/V2 websocket clients."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import websockets
from realtime import AsyncRealtimeClient, RealtimeSubscribeStates

from supasync.devstack.testing import StackProcess

pytestmark = pytest.mark.integration

WAIT = 10.0


@pytest.fixture(scope="module")
def supabase_stack(stack: StackProcess) -> StackProcess:
    """This module's own stack (tests/conftest.py) under the plugin's fixture name."""
    return stack


class Raw:
    """A raw client; ``recv`` gives ``(join_ref, ref, topic, event, payload)`` or
    ``("binary", bytes)``."""

    def __init__(self, ws: websockets.ClientConnection, v2: bool) -> None:
        self.ws, self.v2 = ws, v2
        self._ref = 0

    @classmethod
    async def open(cls, stack: StackProcess, v2: bool) -> Raw:
        vsn = "&vsn=2.0.0" if v2 else ""
        url = f"ws://127.0.0.1:{stack.port}/realtime/v1/websocket?apikey={stack.anon_key}{vsn}"
        return cls(await websockets.connect(url), v2)

    async def send(self, topic: str, event: str, payload: Any, ref: Any = None,
                   join_ref: Any = None) -> None:
        if self.v2:
            await self.ws.send(json.dumps([join_ref, ref, topic, event, payload]))
        else:
            await self.ws.send(json.dumps({"topic": topic, "event": event, "payload": payload,
                                           "ref": ref}))

    async def recv(self) -> tuple[Any, ...]:
        frame = await asyncio.wait_for(self.ws.recv(), WAIT)
        if isinstance(frame, bytes):
            return ("binary", frame)
        data = json.loads(frame)
        if self.v2:
            return tuple(data)
        return (None, data["ref"], data["topic"], data["event"], data["payload"])

    async def join(self, topic: str, config: dict[str, Any], ref: str = "1") -> None:
        await self.send(topic, "phx_join", {"config": config}, ref=ref, join_ref=ref)
        reply = await self.recv()
        assert reply[3] == "phx_reply" and reply[4]["status"] == "ok", reply

    async def barrier(self) -> None:
        """Heartbeat round trip: anything sent to us before it has arrived by now."""
        self._ref += 1
        ref = f"hb{self._ref}"
        await self.send("phoenix", "heartbeat", {}, ref=ref)
        reply = await self.recv()
        assert reply[1:4] == (ref, "phoenix", "phx_reply"), reply


def kind3(join_ref: str, ref: str, topic: str, event: str, payload: bytes,
          encoding: int = 1) -> bytes:
    parts = [join_ref.encode(), ref.encode(), topic.encode(), event.encode(), b""]
    return bytes([3, *(len(p) for p in parts), encoding]) + b"".join(parts) + payload


# -- socket broadcast -----------------------------------------------------------------------
async def test_realtime_py_broadcast_with_self(supabase_stack: StackProcess) -> None:
    url, key = supabase_stack.realtime_url, supabase_stack.anon_key
    a, b = AsyncRealtimeClient(url, key), AsyncRealtimeClient(url, key)
    await a.connect()
    await b.connect()
    try:
        got_a: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        got_b: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        ca = a.channel("py-bc", {"config": {"broadcast": {"self": True, "ack": True},
                                            "presence": {"key": "", "enabled": False},
                                            "private": False}})
        ca.on_broadcast("*", lambda p: got_a.put_nowait(dict(p)))
        cb = b.channel("py-bc")
        cb.on_broadcast("ping", lambda p: got_b.put_nowait(dict(p)))
        states: list[RealtimeSubscribeStates] = []
        await ca.subscribe(lambda s, e: states.append(s))
        await cb.subscribe(lambda s, e: states.append(s))
        assert states == [RealtimeSubscribeStates.SUBSCRIBED] * 2
        await ca.send_broadcast("ping", {"n": 1})
        expected = {"event": "ping", "payload": {"n": 1}}  # realtime-py keeps these two
        assert await asyncio.wait_for(got_b.get(), WAIT) == expected
        assert await asyncio.wait_for(got_a.get(), WAIT) == expected  # self: true
        # b has self: false, so a's queue sees b's message and b's does not.
        await cb.send_broadcast("ping", {"n": 2})
        assert (await asyncio.wait_for(got_a.get(), WAIT))["payload"] == {"n": 2}
        await cb.send_broadcast("ping", {"n": 3})
        await ca.send_broadcast("ping", {"n": 4})
        assert (await asyncio.wait_for(got_b.get(), WAIT))["payload"] == {"n": 4}
    finally:
        await a.close()
        await b.close()


async def test_ack_only_when_asked(supabase_stack: StackProcess) -> None:
    acked = await Raw.open(supabase_stack, v2=False)
    plain = await Raw.open(supabase_stack, v2=True)
    await acked.join("realtime:ack", {"broadcast": {"ack": "true"}})
    await plain.join("realtime:ack", {"broadcast": {}})
    await acked.send("realtime:ack", "broadcast",
                     {"type": "broadcast", "event": "e", "payload": {}}, ref="5")
    assert await acked.recv() == (None, "5", "realtime:ack", "phx_reply",
                                  {"status": "ok", "response": {}})
    assert await plain.recv() == (None, None, "realtime:ack", "broadcast",
                                  {"type": "broadcast", "event": "e", "payload": {}})
    await plain.send("realtime:ack", "broadcast",
                     {"type": "broadcast", "event": "f", "payload": {}}, ref="6", join_ref="1")
    assert (await acked.recv())[3:] == ("broadcast", {"type": "broadcast", "event": "f",
                                                      "payload": {}})
    await plain.barrier()  # no ack reply came before the heartbeat reply
    await acked.ws.close()
    await plain.ws.close()


async def test_v2_binary_in_kind4_out(supabase_stack: StackProcess) -> None:
    sender = await Raw.open(supabase_stack, v2=True)
    v2 = await Raw.open(supabase_stack, v2=True)
    v1 = await Raw.open(supabase_stack, v2=False)
    topic = "realtime:room1"
    await sender.join(topic, {"broadcast": {"self": True, "ack": True}}, ref="3")
    await v2.join(topic, {})
    await v1.join(topic, {})
    await sender.ws.send(kind3("3", "5", topic, "cursor", b'{"x":1}'))
    kind4 = bytes([4, 14, 6, 0, 1]) + b"realtime:room1" + b"cursor" + b'{"x":1}'
    assert await v2.recv() == ("binary", kind4)
    assert await v1.recv() == (None, None, topic, "broadcast",
                               {"event": "cursor", "payload": {"x": 1}, "type": "broadcast"})
    # The sender (self: true) gets its own kind-4 copy and, with ack, a text reply.
    first, second = await sender.recv(), await sender.recv()
    assert {first[0], second[0]} == {"binary", "3"}
    reply = first if first[0] == "3" else second
    assert reply == ("3", "5", topic, "phx_reply", {"status": "ok", "response": {}})
    # Binary payloads reach V2 sockets only.
    await sender.ws.send(kind3("3", "6", topic, "blob", b"\x00\xff", encoding=0))
    assert await v2.recv() == ("binary", bytes([4, 14, 4, 0, 0]) + b"realtime:room1blob\x00\xff")
    await v1.barrier()
    for c in (sender, v2, v1):
        await c.ws.close()


async def test_public_and_private_namespaces_are_apart(supabase_stack: StackProcess) -> None:
    # A private channel is authorised by RLS on realtime.messages (§9.5): let anon use 'ns'.
    supabase_stack.sql("""
        drop policy if exists "test ns read" on realtime.messages;
        drop policy if exists "test ns write" on realtime.messages;
        create policy "test ns read" on realtime.messages for select to anon
          using (realtime.topic() = 'ns');
        create policy "test ns write" on realtime.messages for insert to anon
          with check (realtime.topic() = 'ns');
    """)
    public = await Raw.open(supabase_stack, v2=False)
    private = await Raw.open(supabase_stack, v2=False)
    await public.join("realtime:ns", {"broadcast": {"self": True}})
    await private.join("realtime:ns", {"broadcast": {"self": True}, "private": True})
    msg = {"type": "broadcast", "event": "e", "payload": {"who": "public"}}
    await public.send("realtime:ns", "broadcast", msg, ref="2")
    assert (await public.recv())[4] == msg
    await private.barrier()  # the private channel got nothing
    await private.send("realtime:ns", "broadcast", {**msg, "payload": {"who": "private"}})
    assert (await private.recv())[4]["payload"] == {"who": "private"}
    await public.barrier()
    await public.ws.close()
    await private.ws.close()


# -- REST broadcast ---------------------------------------------------------------------------
async def test_rest_broadcast(supabase_stack: StackProcess) -> None:
    s = supabase_stack
    v1 = await Raw.open(s, v2=False)
    v2 = await Raw.open(s, v2=True)
    await v1.join("realtime:rest", {})
    await v2.join("realtime:rest", {})
    base = f"{s.url}/realtime/v1/api/broadcast"
    headers = {"apikey": s.anon_key, "Authorization": f"Bearer {s.anon_key}"}
    async with httpx.AsyncClient(timeout=WAIT) as http:
        r = await http.post(base, headers=headers, json={"messages": [
            {"topic": "rest", "event": "batch", "payload": {"n": 1}},
            {"topic": "rest", "event": "hidden", "payload": {}, "private": True}]})
        assert r.status_code == 202 and r.content == b""
        plain = {"payload": {"n": 1}, "event": "batch", "type": "broadcast"}
        assert await v1.recv() == (None, None, "realtime:rest", "broadcast", plain)
        assert await v2.recv() == (None, None, "realtime:rest", "broadcast", plain)

        r = await http.post(f"{base}/rest/events/single", headers=headers, json={"a": [1]})
        assert r.status_code == 202
        assert await v2.recv() == ("binary", bytes([4, 13, 6, 0, 1]) + b"realtime:rest"
                                   + b"single" + b'{"a":[1]}')
        assert (await v1.recv())[3:] == ("broadcast", {"event": "single", "payload": {"a": [1]},
                                                       "type": "broadcast"})
        r = await http.post(f"{base}/rest/events/bin",
                            headers={**headers, "Content-Type": "application/octet-stream"},
                            content=b"\x01\x02")
        assert r.status_code == 202
        assert (await v2.recv())[1][-2:] == b"\x01\x02"
        await v1.barrier()  # binary never reaches V1

        bad = await http.post(base, headers={"apikey": "nope"}, json={"messages": []})
        assert (bad.status_code, bad.json()) == (401, {"message": "Unauthorized"})
        invalid = await http.post(base, headers=headers, json={"messages": [{"topic": "x"}]})
        assert invalid.status_code == 422 and "errors" in invalid.json()

    # realtime-py's http_send goes to the single-message endpoint.
    client = AsyncRealtimeClient(s.realtime_url, s.anon_key)
    try:
        await client.channel("rest").http_send("from-py", {"ok": True})
    finally:
        await client.close()
    assert (await v1.recv())[4] == {"event": "from-py", "payload": {"ok": True},
                                    "type": "broadcast"}
    await v1.ws.close()
    await v2.ws.close()


# -- presence --------------------------------------------------------------------------------
async def test_presence_state_and_diffs_raw(supabase_stack: StackProcess) -> None:
    alice = await Raw.open(supabase_stack, v2=True)
    bob = await Raw.open(supabase_stack, v2=False)
    topic = "realtime:lobby"
    await alice.join(topic, {"presence": {"enabled": True, "key": "alice"}}, ref="1")
    assert await alice.recv() == ("1", None, topic, "presence_state", {})
    await alice.send(topic, "presence", {"type": "presence", "event": "track",
                                         "payload": {"status": "online"}}, ref="2", join_ref="1")
    assert await alice.recv() == ("1", "2", topic, "phx_reply", {"status": "ok", "response": {}})
    diff = await alice.recv()
    assert diff[:4] == (None, None, topic, "presence_diff") and diff[4]["leaves"] == {}
    meta = diff[4]["joins"]["alice"]["metas"][0]
    assert meta["status"] == "online" and isinstance(meta["phx_ref"], str)

    await bob.join(topic, {"presence": {"enabled": True}})
    state = await bob.recv()
    assert state[3] == "presence_state" and state[4] == {"alice": {"metas": [meta]}}
    await bob.send(topic, "presence", {"event": "track", "payload": "nope"}, ref="3")
    assert (await bob.recv())[4] == {
        "status": "error", "response": {"reason": "Presence track payload must be a map"}}

    await alice.send(topic, "phx_leave", {}, ref="4")
    leave = await bob.recv()
    assert leave[3:] == ("presence_diff", {"joins": {}, "leaves": {"alice": {"metas": [meta]}}})
    await alice.ws.close()
    await bob.ws.close()


async def test_realtime_py_presence(supabase_stack: StackProcess) -> None:
    url, key = supabase_stack.realtime_url, supabase_stack.anon_key
    watcher, tracker = AsyncRealtimeClient(url, key), AsyncRealtimeClient(url, key)
    await watcher.connect()
    await tracker.connect()
    events: asyncio.Queue[tuple[str, str, list[Any]]] = asyncio.Queue()
    try:
        w = watcher.channel("py-presence")
        w.on_presence_join(lambda k, cur, new: events.put_nowait(("join", k, new)))
        w.on_presence_leave(lambda k, cur, left: events.put_nowait(("leave", k, left)))
        await w.subscribe()
        t = tracker.channel("py-presence", {"config": {
            "broadcast": {"ack": False, "self": False},
            "presence": {"key": "tracker-1", "enabled": True}, "private": False}})
        await t.subscribe()
        await t.track({"mood": "happy"})
        kind, k, new = await asyncio.wait_for(events.get(), WAIT)
        assert (kind, k) == ("join", "tracker-1") and new[0]["mood"] == "happy"
        assert "tracker-1" in w.presence_state()
        await t.untrack()
        kind, k, left = await asyncio.wait_for(events.get(), WAIT)
        assert (kind, k) == ("leave", "tracker-1") and left[0]["mood"] == "happy"
        assert "tracker-1" not in w.presence_state()
        # Leaving the channel untracks automatically.
        await t.track({"mood": "busy"})
        assert (await asyncio.wait_for(events.get(), WAIT))[0] == "join"
        await t.unsubscribe()
        kind, k, left = await asyncio.wait_for(events.get(), WAIT)
        assert (kind, k) == ("leave", "tracker-1") and left[0]["mood"] == "busy"
    finally:
        await watcher.close()
        await tracker.close()

