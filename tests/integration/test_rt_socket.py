"""The local Realtime server's socket side, driven by unmodified realtime-py and by raw
websockets clients speaking V1 and V2 (realtime-protocol.md §1-§4, §7, §8, §11)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import pytest
import websockets
from aiohttp import web
from realtime import AsyncRealtimeClient, RealtimeSubscribeStates
from realtime.types import RealtimePostgresChangesListenEvent

from supasync.devstack.app import StackConfig
from supasync.devstack.keys import StackKeys
from supasync.devstack.realtime.server import RealtimeServer
from supasync.devstack.testing import StackProcess

pytestmark = pytest.mark.integration

WAIT = 10.0


@pytest.fixture(scope="module")
def supabase_stack(stack: StackProcess) -> StackProcess:
    """This module's own stack (tests/conftest.py) under the plugin's fixture name."""
    return stack


class Raw:
    """A raw Phoenix client: sends and receives ``(join_ref, ref, topic, event, payload)``."""

    def __init__(self, ws: websockets.ClientConnection, v2: bool) -> None:
        self.ws = ws
        self.v2 = v2

    async def send(self, topic: str, event: str, payload: Any, ref: Any = None,
                   join_ref: Any = None) -> None:
        if self.v2:
            await self.ws.send(json.dumps([join_ref, ref, topic, event, payload]))
        else:
            await self.ws.send(json.dumps({"topic": topic, "event": event, "payload": payload,
                                           "ref": ref, "join_ref": join_ref}))

    async def recv(self) -> tuple[Any, ...]:
        frame = await asyncio.wait_for(self.ws.recv(), WAIT)
        if isinstance(frame, bytes):
            return ("binary", frame)
        data = json.loads(frame)
        if self.v2:
            return tuple(data)
        assert "join_ref" not in data  # V1 output never carries join_ref (§2.1)
        return (None, data["ref"], data["topic"], data["event"], data["payload"])

    async def join(self, topic: str, ref: str = "1", payload: Any = None) -> tuple[Any, ...]:
        await self.send(topic, "phx_join", {"config": {}} if payload is None else payload,
                        ref=ref, join_ref=ref)
        return await self.recv()

    async def heartbeat(self, ref: Any = "hb") -> None:
        """Send a heartbeat and require its reply as the next frame (an ordering barrier)."""
        await self.send("phoenix", "heartbeat", {}, ref=ref)
        reply = await self.recv()
        assert reply[1:] == (ref, "phoenix", "phx_reply", {"status": "ok", "response": {}})


def ws_url(port: int, token: str | None, vsn: str | None = None,
           path: str = "/realtime/v1/websocket") -> str:
    params = []
    if token is not None:
        params.append(f"apikey={token}")
    if vsn is not None:
        params.append(f"vsn={vsn}")
    return f"ws://127.0.0.1:{port}{path}" + ("?" + "&".join(params) if params else "")


async def raw(stack: StackProcess, *, v2: bool = False, token: str | None = None,
              path: str = "/realtime/v1/websocket") -> Raw:
    url = ws_url(stack.port, token or stack.anon_key, "2.0.0" if v2 else None, path)
    return Raw(await websockets.connect(url), v2)


async def refused(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    with pytest.raises(websockets.exceptions.InvalidStatus) as info:
        async with websockets.connect(url, additional_headers=headers):
            pass
    resp = info.value.response
    return resp.status_code, bytes(resp.body or b"")


# -- connect ------------------------------------------------------------------------------
async def test_connect_refusals(supabase_stack: StackProcess) -> None:
    s = supabase_stack
    port = s.port

    async def error_of(token: str | None, **kw: Any) -> tuple[int, Any]:
        status, body = await refused(ws_url(port, token), **kw)
        return status, json.loads(body)

    assert await error_of(None) == (401, {"error": "API key is missing"})
    assert await error_of(s.mint({"role": "anon"}, expires_in=-10)) == (
        401, {"error": "Token has expired"})
    other = StackKeys.generate("not-the-stack-secret-not-the-stack-secret-xx")
    assert await error_of(other.anon_key) == (
        401, {"error": "Failed to validate JWT signature"})
    assert await error_of(s.mint({"sub": "x"})) == (
        401, {"error": "Fields `role` and `exp` are required in JWT"})
    assert await error_of("sb_publishable_abc") == (
        401, {"error": "The token provided is not a valid JWT"})
    # x-api-key wins over the query parameter.
    assert await error_of(s.anon_key, headers={"x-api-key": "garbage"}) == (
        401, {"error": "The token provided is not a valid JWT"})
    assert await refused(ws_url(port, s.anon_key, "3.0.0")) == (403, b"")
    async with websockets.connect(ws_url(port, "garbage"),
                                  additional_headers={"x-api-key": s.anon_key}):
        pass


async def test_both_paths_and_heartbeats(supabase_stack: StackProcess) -> None:
    for path in ("/realtime/v1/websocket", "/socket/websocket"):
        c = await raw(supabase_stack, path=path)
        await c.heartbeat("7")
        await c.heartbeat(None)  # realtime-py sends null refs; they are echoed
        await c.ws.close()


# -- joins --------------------------------------------------------------------------------
async def test_join_reply_leave_and_unmatched(supabase_stack: StackProcess) -> None:
    c = await raw(supabase_stack)
    pc = [{"event": "INSERT", "schema": "public", "table": "todos", "select": ["id"]},
          {"event": "*", "schema": "public", "table": "todos", "filter": "id=eq.1"},
          {"event": "INSERT", "schema": "public", "table": "todos", "select": ["id"]}]
    reply = await c.join("realtime:room-a", payload={"config": {"postgres_changes": pc}})
    assert reply[1:4] == ("1", "realtime:room-a", "phx_reply")
    assert reply[4]["status"] == "ok"
    echoed = reply[4]["response"]["postgres_changes"]
    assert [{k: v for k, v in e.items() if k != "id"} for e in echoed] == pc
    ids = [e["id"] for e in echoed]
    assert all(isinstance(i, int) and i > 0 for i in ids) and ids[0] == ids[2] != ids[1]
    # The system message about postgres_changes follows (ok or error, never before the reply).
    system = await c.recv()
    assert system[1:4] == (None, "realtime:room-a", "system")
    assert system[4]["extension"] == "postgres_changes" and system[4]["channel"] == "room-a"

    # Non-join messages on topics not joined, and joins outside realtime:*.
    await c.send("realtime:nope", "broadcast", {"event": "x", "payload": {}}, ref="5")
    assert await c.recv() == (None, "5", "realtime:nope", "phx_reply",
                              {"status": "error", "response": {"reason": "unmatched topic"}})
    await c.send("room", "phx_join", {}, ref="6")
    assert (await c.recv())[4] == {"status": "error", "response": {"reason": "unmatched topic"}}
    await c.send("phoenix", "phx_join", {}, ref="6b")
    assert (await c.recv())[4]["response"] == {"reason": "unmatched topic"}
    await c.send("realtime:nope", "phx_leave", {}, ref="7")
    assert (await c.recv())[1:] == ("7", "realtime:nope", "phx_reply",
                                    {"status": "ok", "response": {}})

    # Leave: ok reply with the leave's ref, then phx_close stamped with the join's ref.
    await c.send("realtime:room-a", "phx_leave", {}, ref="8", join_ref="1")
    assert (await c.recv())[1:] == ("8", "realtime:room-a", "phx_reply",
                                    {"status": "ok", "response": {}})
    assert await c.recv() == (None, "1", "realtime:room-a", "phx_close", {})
    await c.heartbeat()
    await c.ws.close()


async def test_duplicate_join_closes_the_old_join_first(supabase_stack: StackProcess) -> None:
    c = await raw(supabase_stack, v2=True)
    assert (await c.join("realtime:dup", ref="1"))[4]["status"] == "ok"
    await c.send("realtime:dup", "phx_join", {"config": {}}, ref="2", join_ref="2")
    assert await c.recv() == ("1", "1", "realtime:dup", "phx_close", {})
    assert await c.recv() == ("2", "2", "realtime:dup", "phx_reply",
                             {"status": "ok", "response": {"postgres_changes": []}})
    await c.heartbeat()
    await c.ws.close()


async def test_join_errors_have_the_real_reasons(supabase_stack: StackProcess) -> None:
    s = supabase_stack
    c = await raw(s)
    cases = [
        ("realtime:", {"config": {}}, "TopicNameRequired: You must provide a topic name"),
        ("realtime:x", {"config": {}, "access_token": "abc"},
         "MalformedJWT: The token provided is not a valid JWT"),
        ("realtime:x", {"config": {}, "access_token": s.mint({"sub": "u"})},
         "InvalidJWTToken: Fields `role` and `exp` are required in JWT"),
        ("realtime:x", {"config": {"broadcast": {"replay": {"since": 0}}}},
         "UnableToReplayMessages: Replay is not allowed for public channels"),
    ]
    for i, (topic, payload, reason) in enumerate(cases):
        reply = await c.join(topic, ref=str(i), payload=payload)
        assert reply[1:] == (str(i), topic, "phx_reply",
                             {"status": "error", "response": {"reason": reason}})
    expired = await c.join("realtime:x", ref="e", payload={
        "config": {}, "access_token": s.mint({"role": "anon"}, expires_in=-30)})
    assert expired[4]["response"]["reason"].startswith("InvalidJWTToken: Token has expired ")
    # A join token starting with sb_ is replaced by the socket token: join succeeds.
    ok = await c.join("realtime:x", ref="s", payload={"config": {}, "access_token": "sb_x"})
    assert ok[4]["status"] == "ok"
    await c.ws.close()


async def test_malformed_frames_do_not_hurt(supabase_stack: StackProcess) -> None:
    c = await raw(supabase_stack)
    other = await raw(supabase_stack, v2=True)
    assert (await c.join("realtime:mal"))[4]["status"] == "ok"
    for frame in ("not json", "[]", "{}", '{"topic":"t","event":"e","payload":{}}',
                  '{"topic":1,"event":"e","payload":{},"ref":null}', "null", '"s"',
                  '{"topic":"realtime:mal","event":"phx_join","payload":{"config":5},"ref":"j"}'):
        await c.ws.send(frame)
    await c.ws.send(b"\x03\x00")  # binary on a V1 socket
    await other.ws.send(b"\x09garbage")
    await other.ws.send("[1,2]")
    # The join with an invalid config still joins (InvalidJoinPayload is only logged);
    # it closes the previous join of that topic first.
    assert (await c.recv())[3] == "phx_close"
    assert (await c.recv())[1:4] == ("j", "realtime:mal", "phx_reply")
    # Unknown events on a joined channel are logged and ignored (no reply).
    await c.send("realtime:mal", "no_such_event", {}, ref="u")
    await c.heartbeat()
    await other.heartbeat()
    await c.ws.close()
    await other.ws.close()


# -- tokens ---------------------------------------------------------------------------------
async def test_access_token_push(supabase_stack: StackProcess) -> None:
    s = supabase_stack
    c = await raw(s)
    assert (await c.join("realtime:tok"))[4]["status"] == "ok"
    # Ignored: null, same token, sb_ keys; no reply ever (§7.2).
    for value in (None, s.anon_key, "sb_publishable_x"):
        await c.send("realtime:tok", "access_token", {"access_token": value})
    fresh = s.mint({"role": "authenticated", "sub": "u1"})
    await c.send("realtime:tok", "access_token", {"access_token": fresh})
    await c.heartbeat()
    await c.send("realtime:tok", "access_token", {"access_token": "not-a-jwt"})
    assert await c.recv() == (None, None, "realtime:tok", "system", {
        "extension": "system", "status": "error",
        "message": "The token provided is not a valid JWT", "channel": "tok"})
    assert await c.recv() == (None, "1", "realtime:tok", "phx_close", {})
    await c.heartbeat()
    # The channel is gone: its topic is unmatched now.
    await c.send("realtime:tok", "broadcast", {}, ref="9")
    assert (await c.recv())[4]["response"] == {"reason": "unmatched topic"}
    await c.ws.close()


async def test_token_expiry_closes_the_channel_not_the_socket(
        supabase_stack: StackProcess) -> None:
    s = supabase_stack
    c = await raw(s, v2=True)
    short = s.mint({"role": "anon"}, expires_in=2)
    assert (await c.join("realtime:exp", payload={"config": {}, "access_token": short}))[4][
        "status"] == "ok"
    assert (await c.join("realtime:stay", ref="2"))[4]["status"] == "ok"
    system = await c.recv()  # arrives when the timer fires, about 2 s later
    assert system[:4] == ("1", None, "realtime:exp", "system")
    assert system[4]["extension"] == "system" and system[4]["status"] == "error"
    assert system[4]["channel"] == "exp"
    assert system[4]["message"].startswith("Token has expired ")
    assert system[4]["message"].endswith(" seconds ago")
    assert await c.recv() == ("1", "1", "realtime:exp", "phx_close", {})
    await c.heartbeat()
    await c.send("realtime:stay", "broadcast", {"event": "e", "payload": {}}, ref="b")
    await c.heartbeat()  # the other channel is still joined: no unmatched-topic reply
    await c.ws.close()


async def test_expire_tokens_control(supabase_stack: StackProcess) -> None:
    s = supabase_stack
    c = await raw(s)
    assert (await c.join("realtime:ex1"))[4]["status"] == "ok"
    result = await asyncio.to_thread(s.expire_tokens)
    assert result["ok"] and result["expired"] >= 1
    assert await c.recv() == (None, None, "realtime:ex1", "system", {
        "extension": "system", "status": "error",
        "message": "Token has expired 0 seconds ago", "channel": "ex1"})
    assert await c.recv() == (None, "1", "realtime:ex1", "phx_close", {})
    await c.heartbeat()
    await c.ws.close()


# -- realtime-py -------------------------------------------------------------------------------
def states_queue() -> tuple[asyncio.Queue[RealtimeSubscribeStates],
                            Callable[[RealtimeSubscribeStates, Exception | None], None]]:
    q: asyncio.Queue[RealtimeSubscribeStates] = asyncio.Queue()

    def cb(state: RealtimeSubscribeStates, err: Exception | None) -> None:
        q.put_nowait(state)

    return q, cb


async def next_state(q: asyncio.Queue[RealtimeSubscribeStates],
                     want: RealtimeSubscribeStates) -> None:
    async with asyncio.timeout(WAIT * 2):
        while (state := await q.get()) != want:
            pass
    assert state == want


@pytest.fixture
async def rt_client(supabase_stack: StackProcess) -> AsyncIterator[AsyncRealtimeClient]:
    client = AsyncRealtimeClient(supabase_stack.realtime_url, supabase_stack.anon_key,
                                 initial_backoff=0.2)
    await client.connect()
    try:
        yield client
    finally:
        await client.close()


async def test_realtime_py_subscribes_with_binding_ids(rt_client: AsyncRealtimeClient) -> None:
    ch = rt_client.channel("py-room")
    ch.on_postgres_changes(RealtimePostgresChangesListenEvent.Insert, lambda p: None,
                          table="todos")
    ch.on_postgres_changes(RealtimePostgresChangesListenEvent.All, lambda p: None,
                          table="todos", filter="id=eq.1")
    q, cb = states_queue()
    await ch.subscribe(cb)
    assert q.get_nowait() == RealtimeSubscribeStates.SUBSCRIBED
    ids = [c.id for c in ch.postgres_changes_callbacks]
    assert all(isinstance(i, int) and i > 0 for i in ids) and ids[0] != ids[1]


@pytest.mark.parametrize("control", ["drop_connections", "close_connections"])
async def test_realtime_py_sees_a_drop_and_rejoins(
        supabase_stack: StackProcess, rt_client: AsyncRealtimeClient, control: str) -> None:
    ch = rt_client.channel(f"py-{control}")
    q, cb = states_queue()
    await ch.subscribe(cb)
    assert q.get_nowait() == RealtimeSubscribeStates.SUBSCRIBED
    result = await asyncio.to_thread(getattr(supabase_stack, control))
    assert result["ok"]
    await next_state(q, RealtimeSubscribeStates.CHANNEL_ERROR)
    await next_state(q, RealtimeSubscribeStates.SUBSCRIBED)


async def test_close_connections_sends_1012(supabase_stack: StackProcess) -> None:
    c = await raw(supabase_stack)
    assert (await c.join("realtime:bye"))[4]["status"] == "ok"
    await asyncio.to_thread(supabase_stack.close_connections)
    assert await c.recv() == (None, None, "realtime:bye", "system", {
        "extension": "system", "status": "ok", "message": "Server requested disconnect"})
    with pytest.raises(websockets.exceptions.ConnectionClosed) as info:
        await asyncio.wait_for(c.ws.recv(), WAIT)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1012


async def test_drop_connections_sends_no_close_frame(supabase_stack: StackProcess) -> None:
    c = await raw(supabase_stack, v2=True)
    await c.heartbeat()
    await asyncio.to_thread(supabase_stack.drop_connections)
    with pytest.raises(websockets.exceptions.ConnectionClosed) as info:
        await asyncio.wait_for(c.ws.recv(), WAIT)
    assert info.value.rcvd is None


async def test_set_latency_delays_frames_in_order(supabase_stack: StackProcess) -> None:
    c = await raw(supabase_stack, v2=True)
    await c.heartbeat()
    await asyncio.to_thread(supabase_stack.set_latency, 300)
    try:
        started = time.monotonic()
        for i in range(5):
            await c.send("phoenix", "heartbeat", {}, ref=str(i))
        refs = [(await c.recv())[1] for _ in range(5)]
        assert refs == ["0", "1", "2", "3", "4"]
        assert time.monotonic() - started >= 0.3  # no frame left before its delay
    finally:
        await asyncio.to_thread(supabase_stack.set_latency, 0)
    await c.heartbeat()
    await c.ws.close()


# -- configuration: an in-process server on loopback (no change feed needed) ---------------------
@pytest.fixture
async def tuned() -> AsyncIterator[SimpleNamespace]:
    """A RealtimeServer with a short idle timeout and real-style back-offs."""
    keys = StackKeys.generate()
    config = StackConfig(idle_timeout_s=1.0, connect_error_backoff_ms=300,
                         join_error_backoff_ms=300)
    ctx = SimpleNamespace(config=config, keys=keys)
    server = RealtimeServer(ctx)
    app = web.Application()
    server.add_routes(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield SimpleNamespace(port=port, keys=keys, server=server)
    finally:
        await server.stop()
        await runner.cleanup()


async def test_idle_socket_is_closed(tuned: SimpleNamespace) -> None:
    async with websockets.connect(ws_url(tuned.port, tuned.keys.anon_key)) as ws:
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), WAIT)


async def test_error_backoffs(tuned: SimpleNamespace) -> None:
    started = time.monotonic()
    assert (await refused(ws_url(tuned.port, None)))[0] == 401
    assert time.monotonic() - started >= 0.3
    async with websockets.connect(ws_url(tuned.port, tuned.keys.anon_key)) as ws:
        c = Raw(ws, False)
        started = time.monotonic()
        reply = await c.join("realtime:", ref="1")
        assert reply[4]["response"]["reason"].startswith("TopicNameRequired")
        assert time.monotonic() - started >= 0.3


# -- end to end through the change feed ---------------------------------------------------------
async def test_realtime_py_receives_an_insert(supabase_stack: StackProcess) -> None:
    pytest.importorskip("supasync.devstack.realtime.feed")
    s = supabase_stack
    await asyncio.to_thread(s.sql, """
        create table if not exists public.rt_e2e (id bigint primary key, v text);
        do $$ begin
          if not exists (select 1 from pg_publication_tables
                         where pubname = 'supabase_realtime' and tablename = 'rt_e2e') then
            alter publication supabase_realtime add table public.rt_e2e;
          end if;
        end $$;
        grant select on public.rt_e2e to anon, authenticated;""")
    client = AsyncRealtimeClient(s.realtime_url, s.anon_key)
    await client.connect()
    v2 = await raw(s, v2=True)
    try:
        changes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        systems: asyncio.Queue[str] = asyncio.Queue()
        ch = client.channel("e2e")
        ch.on_postgres_changes(RealtimePostgresChangesListenEvent.Insert,
                               lambda p: changes.put_nowait(dict(p)), table="rt_e2e")
        ch.on_system(lambda p: systems.put_nowait(p.message))
        await ch.subscribe()
        assert await asyncio.wait_for(systems.get(), WAIT * 2) == "Subscribed to PostgreSQL"
        binding = {"event": "INSERT", "schema": "public", "table": "rt_e2e"}
        reply = await v2.join("realtime:e2e-raw", payload={
            "config": {"postgres_changes": [binding]}})
        bid = reply[4]["response"]["postgres_changes"][0]["id"]
        assert (await v2.recv())[3:] == ("system", {
            "extension": "postgres_changes", "status": "ok",
            "message": "Subscribed to PostgreSQL", "channel": "e2e-raw"})

        await asyncio.to_thread(s.sql, "insert into public.rt_e2e values (1, 'one')")
        got = await asyncio.wait_for(changes.get(), WAIT)
        assert got["data"]["type"] == "INSERT" and got["data"]["record"] == {"id": 1, "v": "one"}
        frame = await v2.recv()
        assert frame[:4] == (None, None, "realtime:e2e-raw", "postgres_changes")
        assert frame[4]["ids"] == [bid] and frame[4]["data"]["record"] == {"id": 1, "v": "one"}

        # A new token re-subscribes: another "Subscribed to PostgreSQL", no reply.
        fresh = s.mint({"role": "authenticated", "sub": "e2e-user"})
        await v2.send("realtime:e2e-raw", "access_token", {"access_token": fresh})
        assert (await v2.recv())[4]["message"] == "Subscribed to PostgreSQL"

        # pause/resume reach the feed; held changes arrive after resume.
        assert (await asyncio.to_thread(s.pause_changes))["paused"] is True
        try:
            await asyncio.to_thread(s.sql, "insert into public.rt_e2e values (2, 'two')")
        finally:
            assert (await asyncio.to_thread(s.resume_changes))["resumed"] is True
        frame = await v2.recv()
        assert frame[3] == "postgres_changes" and frame[4]["data"]["record"]["id"] == 2
    finally:
        await client.close()
        await v2.ws.close()


async def test_server_stop_closes_sockets_with_1001(tuned: SimpleNamespace) -> None:
    async with websockets.connect(ws_url(tuned.port, tuned.keys.anon_key, "2.0.0")) as ws:
        c = Raw(ws, True)
        assert (await c.join("realtime:stop"))[4]["status"] == "ok"
        await tuned.server.stop()
        with pytest.raises(websockets.exceptions.ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), WAIT)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1001
