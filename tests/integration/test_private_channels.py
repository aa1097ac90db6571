"""Private channels, Broadcast from Database and replay on the local stack (issue #14,
realtime-protocol.md §9.3-9.5), with supasync's channels and with realtime-py unmodified."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from realtime import AsyncRealtimeClient, RealtimeSubscribeStates

from supasync import Realtime
from supasync.core.broadcast import Broadcast
from supasync.core.errors import ChannelUnauthorized, SendFailed
from supasync.devstack.testing import StackProcess

pytestmark = pytest.mark.integration

WAIT = 30.0
MEMBER = "00000000-0000-0000-0000-0000000000a1"
STRANGER = "00000000-0000-0000-0000-0000000000b2"


@pytest.fixture(scope="module")
def stack() -> Iterator[StackProcess]:
    with StackProcess() as s:
        # Members (a `members` table) may read and write `room:<id>` topics; anyone
        # authenticated may read `announcements` but not write to it.
        s.sql(f"""
            create table public.members (user_id uuid, room text);
            insert into public.members values ('{MEMBER}', 'room:1');
            create policy "members read their rooms" on realtime.messages for select
              to authenticated using (exists (select 1 from public.members m
                where m.user_id = auth.uid() and m.room = realtime.topic()));
            create policy "members write their rooms" on realtime.messages for insert
              to authenticated with check (exists (select 1 from public.members m
                where m.user_id = auth.uid() and m.room = realtime.topic()));
            create policy "everyone reads announcements" on realtime.messages for select
              to authenticated using (realtime.topic() = 'announcements');
        """)
        yield s


def token(stack: StackProcess, sub: str) -> str:
    return stack.mint({"role": "authenticated", "sub": sub, "aud": "authenticated"})


def client(stack: StackProcess, sub: str) -> Realtime:
    return Realtime(stack.url, stack.anon_key, token=token(stack, sub), repair="off")


class Inbox:
    def __init__(self) -> None:
        self.items: list[Broadcast] = []
        self.changed = asyncio.Event()

    async def take(self, msg: Broadcast) -> None:
        self.items.append(msg)
        self.changed.set()

    async def wait_for(self, n: int) -> list[Broadcast]:
        async def wait() -> None:
            while len(self.items) < n:
                self.changed.clear()
                if len(self.items) >= n:
                    return
                await self.changed.wait()

        await asyncio.wait_for(wait(), WAIT)
        return self.items


async def test_private_channel_refused_by_policy_is_a_typed_error(stack: StackProcess) -> None:
    async with client(stack, STRANGER) as rt:
        ch = rt.channel("room:1", private=True)
        with pytest.raises(ChannelUnauthorized) as info:
            await ch.wait_live(WAIT)
        text = str(info.value)
        assert "do not have permissions to read from this Channel topic: room:1" in text
        assert "realtime.messages" in text and "realtime.topic() = 'room:1'" in text
        with pytest.raises(ChannelUnauthorized):
            await rt.wait_live(WAIT)
        with pytest.raises(ChannelUnauthorized):
            await ch.send("x", {})


async def test_private_channel_allowed_sends_and_receives(stack: StackProcess) -> None:
    async with client(stack, MEMBER) as a, client(stack, MEMBER) as b:
        inbox = Inbox()
        a.channel("room:1", private=True).on_broadcast("*", inbox.take)
        sender = b.channel("room:1", private=True)
        await a.wait_live(WAIT)
        await b.wait_live(WAIT)
        mid = await sender.send("chat", {"text": "hello"})
        got = (await inbox.wait_for(1))[0]
        assert (got.event, got.payload, got.id) == ("chat", {"text": "hello"}, mid)

        # A database broadcast (realtime.send) reaches the private channel with meta.id.
        await asyncio.to_thread(
            stack.sql, "select realtime.send('{\"n\": 1}'::jsonb, 'db', 'room:1', true)")
        db = (await inbox.wait_for(2))[1]
        assert db.event == "db" and db.payload["n"] == 1 and db.id == db.payload["id"]
        assert not db.replayed


async def test_send_without_write_policy_fails_naming_the_policy(stack: StackProcess) -> None:
    async with client(stack, STRANGER) as rt:
        ch = rt.channel("announcements", private=True)
        ch.send_timeout, ch.max_attempts = 0.5, 2
        await rt.wait_live(WAIT)
        with pytest.raises(SendFailed, match="write policy"):
            await ch.send("x", {"y": 1})


async def test_replay_and_database_broadcast_with_realtime_py(stack: StackProcess) -> None:
    """realtime-py, unmodified: a private channel with replay gets the stored messages
    (oldest first, meta.replayed) and then live database broadcasts; one without the policy
    is refused."""
    since = int(time.time() * 1000) - 1000
    for i in range(30):
        await asyncio.to_thread(
            stack.sql, f"select realtime.send('{{\"i\": {i}}}'::jsonb, 'tick', 'room:1', true)")
    client_ = AsyncRealtimeClient(f"{stack.url}/realtime/v1", stack.anon_key)
    await client_.set_auth(token(stack, MEMBER))
    await client_.connect()
    got: list[dict[str, Any]] = []
    changed = asyncio.Event()
    states: list[Any] = []
    try:
        ch = client_.channel("room:1", {"config": {
            "broadcast": {"ack": False, "self": False, "replay": {"since": since, "limit": 10}},
            "presence": {"key": "", "enabled": False}, "private": True}})

        def on_tick(payload: Any) -> None:
            got.append(payload)
            changed.set()

        ch.on_broadcast("tick", on_tick)
        await ch.subscribe(lambda state, err: states.append((state, err)))
        assert states[-1][0] == RealtimeSubscribeStates.SUBSCRIBED

        async def until(n: int) -> None:
            while len(got) < n:
                changed.clear()
                if len(got) < n:
                    await changed.wait()

        await asyncio.wait_for(until(10), WAIT)
        assert [p["payload"]["i"] for p in got] == list(range(20, 30))
        assert all(p["meta"]["replayed"] is True for p in got)
        await asyncio.to_thread(
            stack.sql, "select realtime.send('{\"i\": 99}'::jsonb, 'tick', 'room:1', true)")
        await asyncio.wait_for(until(11), WAIT)
        assert got[10]["payload"]["i"] == 99 and "replayed" not in got[10]["meta"]

        refused: list[Any] = []
        other = client_.channel("room:2", {"config": {
            "broadcast": {"ack": False, "self": False},
            "presence": {"key": "", "enabled": False}, "private": True}})
        await other.subscribe(lambda state, err: refused.append((state, err)))
        assert refused[-1][0] == RealtimeSubscribeStates.CHANNEL_ERROR
        assert "do not have permissions to read" in str(refused[-1][1])
    finally:
        await client_.close()


async def test_supasync_replay_limit_and_flags(stack: StackProcess) -> None:
    since = time.time() - 1
    for i in range(3):
        await asyncio.to_thread(
            stack.sql, f"select realtime.send('{{\"k\": {i}}}'::jsonb, 'k', 'room:1', true)")
    async with client(stack, MEMBER) as rt:
        inbox = Inbox()
        ch = rt.channel("room:1", private=True, replay_since=since, replay_limit=2)
        ch.on_broadcast("k", inbox.take)
        await rt.wait_live(WAIT)
        items = await inbox.wait_for(2)
        assert [m.payload["k"] for m in items] == [1, 2]
        assert all(m.replayed and m.id for m in items)


# -- realtime-js ---------------------------------------------------------------------------

JS_DIR = Path(__file__).parent / "js"


@pytest.fixture(scope="module")
def realtime_js(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``@supabase/realtime-js`` and ``ws`` installed with npm into a directory of this test
    session (skipped, with the reason, when npm is absent or the install fails)."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.skip("realtime-js tests need node and npm on PATH")
    where = tmp_path_factory.mktemp("realtime-js")
    try:
        subprocess.run([npm, "install", "--silent", "--no-audit", "--no-fund", "--prefix",
                        str(where), "@supabase/realtime-js", "ws"],
                       check=True, capture_output=True, timeout=300)
    except (subprocess.SubprocessError, OSError) as exc:
        pytest.skip(f"npm could not install @supabase/realtime-js: {exc}")
    return where


def test_realtime_js_private_channel_replay_and_refusal(
    stack: StackProcess, realtime_js: Path,
) -> None:
    since = int(time.time() * 1000) - 1000
    for i in range(3):
        stack.sql(f"select realtime.send('{{\"js\": {i}}}'::jsonb, 'tick', 'room:1', true)")
    env = {**os.environ, "NODE_PATH": str(realtime_js / "node_modules")}
    proc = subprocess.Popen(
        ["node", str(JS_DIR / "private_channel.js"), f"{stack.url}/realtime/v1",
         stack.anon_key, token(stack, MEMBER), str(since)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env)
    lines: queue.Queue[dict[str, Any]] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(json.loads(line))

    threading.Thread(target=read, daemon=True).start()
    seen: list[dict[str, Any]] = []

    def expect(pred: Any, what: str) -> dict[str, Any]:
        for item in seen:
            if pred(item):
                return item
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            try:
                item = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            seen.append(item)
            if pred(item):
                return item
        err = proc.stderr.read() if proc.poll() is not None and proc.stderr else ""
        raise AssertionError(f"realtime-js: no {what}; got {seen} {err}")

    try:
        expect(lambda o: o["kind"] == "status" and o["topic"] == "room:1"
               and o["status"] == "SUBSCRIBED", "SUBSCRIBED on room:1")
        refused = expect(lambda o: o["kind"] == "status" and o["topic"] == "room:2"
                         and o["status"] == "CHANNEL_ERROR", "CHANNEL_ERROR on room:2")
        assert "do not have permissions to read" in (refused["error"] or "")
        replayed = [expect(lambda o, i=i: o["kind"] == "tick" and o["msg"]["payload"].get("js")
                           == i, f"replayed tick {i}") for i in range(3)]
        assert all(r["msg"]["meta"]["replayed"] is True for r in replayed)
        stack.sql("select realtime.send('{\"js\": 99}'::jsonb, 'tick', 'room:1', true)")
        live = expect(lambda o: o["kind"] == "tick" and o["msg"]["payload"].get("js") == 99,
                      "the live database broadcast")
        assert live["msg"]["meta"]["id"] and not live["msg"]["meta"].get("replayed")
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
