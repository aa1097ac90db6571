"""supasync.web over real HTTP (uvicorn on 127.0.0.1, a random port) against a store file the
test writes itself with MirrorStore, the writer the mirror worker uses: the rows/changes
hand-off, resume without gap or duplicate, must-refetch, filters, coalescing, bad input,
slow-client isolation and prompt shutdown. No Supabase needed (the devstack versions are in
test_web_mirror.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from supasync.store.tables import MirrorStore, TableShape
from supasync.web import LiveEndpoint, StoreSource
from supasync.web.serve import serve
from supasync.web.source import new_store_file
from tests.sse import Parser, Sse, streams

SHAPE = TableShape("public", "items", (("id", "int8"), ("title", "text"), ("done", "bool")),
                   ("id",))
WAIT = 30.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MirrorStore]:
    s = MirrorStore(tmp_path / "web.sqlite", journal_keep=50)
    s.ensure_table(SHAPE)
    s.mark_snapshot_complete("public", "items")
    try:
        yield s
    finally:
        s.close()


def put(store: MirrorStore, *rows: dict[str, Any]) -> None:
    with store.transaction():
        store.merge_rows(SHAPE, rows)


def drop(store: MirrorStore, *ids: int) -> None:
    with store.transaction():
        store.delete_keys(SHAPE, [(i,) for i in ids])


def row(i: int, title: str | None = None, done: bool = False) -> dict[str, Any]:
    return {"id": i, "title": title if title is not None else f"item {i}", "done": done}


@dataclass
class Served:
    base: str
    endpoint: LiveEndpoint
    stop: asyncio.Event
    task: asyncio.Task[None]


@contextlib.asynccontextmanager
async def served(store: MirrorStore, **options: Any) -> AsyncIterator[Served]:
    options.setdefault("poll_interval", 0.01)
    endpoint = LiveEndpoint({"items": StoreSource(store.path, "items")}, **options)
    stop = asyncio.Event()
    port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(endpoint, port=0, endpoints=[endpoint], stop=stop,
                                     on_started=port.set_result))
    async with asyncio.timeout(WAIT):
        bound = await asyncio.shield(port)
    try:
        yield Served(f"http://127.0.0.1:{bound}", endpoint, stop, task)
    finally:
        stop.set()
        await task


def apply(rows: dict[int, dict[str, Any]], events: list[Sse]) -> dict[int, dict[str, Any]]:
    out = dict(rows)
    for e in events:
        key = e.data["key"][0]
        if e.event == "delete":
            out.pop(key, None)
        else:
            out[key] = e.data["record"]
    return out


def table_rows(store: MirrorStore) -> dict[int, dict[str, Any]]:
    return {r["id"]: {"id": r["id"], "title": r["title"], "done": bool(r["done"])}
            for r in store.rows(SHAPE)}


async def test_rows_then_changes_then_resume_misses_nothing_and_repeats_nothing(
        store: MirrorStore) -> None:
    put(store, row(1), row(2), row(3))
    async with served(store) as srv, httpx.AsyncClient() as http, streams() as open_:
        got = (await http.get(f"{srv.base}/items/rows")).json()
        resp = await http.get(f"{srv.base}/items/rows")
        assert resp.headers["x-supasync-seq"] == str(got["seq"])
        rows = {r["id"]: r for r in got["rows"]}
        assert sorted(rows) == [1, 2, 3] and rows[1]["done"] is False
        first = open_(f"{srv.base}/items/changes?last_event_id={got['seq']}")
        for i in range(4, 10):
            put(store, row(i))
        put(store, row(2, "two"))
        drop(store, 3)
        await first.wait(lambda s: len(s.changes()) == 8)
        await first.close()  # the client goes away after 8 changes...
        seen = first.changes()
        assert [e.event for e in seen] == ["insert"] * 6 + ["update", "delete"]
        # ...and changes go on while it is away
        put(store, row(10), row(4, "four"))
        drop(store, 5)
        resumed = open_(f"{srv.base}/items/changes", {"Last-Event-ID": str(first.last_id)})
        await resumed.wait(lambda s: len(s.changes()) == 3)
        again = resumed.changes()
        ids = [e.id for e in seen + again]
        assert ids == sorted(set(ids)), "a gap or a duplicate"  # strictly increasing
        assert all(e.id is not None and e.id > (first.last_id or 0) for e in again)
        assert [(e.event, e.data["key"]) for e in again] == [
            ("insert", [10]), ("update", [4]), ("delete", [5])]
        assert apply(rows, seen + again) == table_rows(store)
        # position events: the stream starts with one, and each change's id is its seq
        assert first.events[0].event == "" and first.events[0].id == got["seq"]


async def test_a_position_older_than_the_journal_gets_must_refetch(store: MirrorStore) -> None:
    put(store, row(1))
    old = store.seq()
    for i in range(2, 80):  # journal_keep=50: the oldest entries are pruned
        put(store, row(i))
    async with served(store) as srv, httpx.AsyncClient() as http, streams() as open_:
        s = open_(f"{srv.base}/items/changes?last_event_id={old}")
        await s.wait(lambda s: s.ended)
        refetch = [e for e in s.events if e.event == "must-refetch"]
        assert len(refetch) == 1 and "older" in refetch[0].data["reason"]
        assert not s.changes()
        # the documented recovery: /rows, then /changes from its seq
        got = (await http.get(f"{srv.base}/items/rows")).json()
        assert len(got["rows"]) == 79
        s2 = open_(f"{srv.base}/items/changes?last_event_id={got['seq']}")
        put(store, row(100))
        await s2.wait(lambda s: len(s.changes()) == 1)
        assert s2.changes()[0].data["record"]["id"] == 100


async def test_a_first_snapshot_after_the_position_gets_must_refetch(tmp_path: Path) -> None:
    store = MirrorStore(tmp_path / "snap.sqlite")
    try:
        store.ensure_table(SHAPE)
        store.begin_snapshot(SHAPE)
        with store.transaction():
            store.upsert_rows(SHAPE, [row(i) for i in range(1, 6)])
        store.end_snapshot(SHAPE)
        store.mark_snapshot_complete("public", "items")
        async with served(store) as srv, streams() as open_:
            s = open_(f"{srv.base}/items/changes?last_event_id=0")
            await s.wait(lambda s: s.ended)
            assert [e.event for e in s.events if e.event] == ["must-refetch"]
    finally:
        store.close()


async def test_an_id_from_another_file_is_never_taken_for_this_one(tmp_path: Path) -> None:
    """Files made with new_store_file number their changes from their creation time: an id a
    browser kept from an older file (a temporary mirror before a restart) gets must-refetch,
    one from a newer file is refused, instead of pointing into the wrong history."""
    ids = []
    for n in (1, 2):
        path = tmp_path / f"gen{n}.sqlite"
        new_store_file(path)
        s = MirrorStore(path)
        s.ensure_table(SHAPE)
        s.mark_snapshot_complete("public", "items")
        put(s, row(1), row(2))
        ids.append(s.seq())
        s.close()
    old, new = ids
    assert new > old > 10**15  # microseconds since 1970
    second = StoreSource(tmp_path / "gen2.sqlite", "items")
    try:
        assert second.changes(old, limit=10).must_refetch
        assert not second.changes(new - 1, limit=10).must_refetch
    finally:
        second.close()
    first = MirrorStore(tmp_path / "gen1.sqlite")
    try:
        async with served(first) as srv, httpx.AsyncClient() as http:
            resp = await http.get(f"{srv.base}/items/changes?last_event_id={new}")
            assert resp.status_code == 400 and "ahead" in resp.text
    finally:
        first.close()


async def test_filter_narrows_and_updates_moving_out_become_deletes(store: MirrorStore) -> None:
    async with served(store) as srv, streams() as open_:
        s = open_(f"{srv.base}/items/changes?filter=done=eq.false")
        await s.wait(lambda s: bool(s.events))
        put(store, row(1, done=True))   # not shown
        put(store, row(2))              # insert
        await s.wait(lambda s: len(s.changes()) == 1)
        put(store, row(2, done=True))   # moves out: delete
        put(store, row(3))              # insert
        await s.wait(lambda s: len(s.changes()) == 3)
        drop(store, 3)                  # delete
        await s.wait(lambda s: len(s.changes()) == 4)
        assert [(e.event, e.data["key"]) for e in s.changes()] == [
            ("insert", [2]), ("delete", [2]), ("insert", [3]), ("delete", [3])]
        assert all(e.data["record"] is None or e.data["record"]["done"] is False
                   for e in s.changes())


async def test_coalesce_sends_the_latest_state_per_key(store: MirrorStore) -> None:
    put(store, row(1))
    async with served(store) as srv, streams() as open_:
        plain = open_(f"{srv.base}/items/changes")
        merged = open_(f"{srv.base}/items/changes?coalesce_ms=200")
        await plain.wait(lambda s: bool(s.events))
        await merged.wait(lambda s: bool(s.events))
        with store.transaction():  # one commit: both streams read it as one batch
            for n in range(10):
                store.merge_rows(SHAPE, [row(1, f"v{n}")])
            store.merge_rows(SHAPE, [row(2)])
        await plain.wait(lambda s: len(s.changes()) == 11)
        await merged.wait(lambda s: len(s.changes()) == 2)
        assert [(e.event, e.data["key"]) for e in merged.changes()] == [
            ("update", [1]), ("insert", [2])]
        assert merged.changes()[0].data["record"]["title"] == "v9"
        assert merged.changes()[-1].id == plain.changes()[-1].id
        put(store, row(1, "later"))  # a later window
        await merged.wait(lambda s: len(s.changes()) == 3)
        assert merged.changes()[-1].data["record"]["title"] == "later"


async def test_heartbeats_carry_the_position(store: MirrorStore) -> None:
    async with served(store, heartbeat=0.1) as srv, streams() as open_:
        s = open_(f"{srv.base}/items/changes")
        await s.wait(lambda s: len([e for e in s.events if e.event == ""]) >= 3)
        put(store, row(1))
        await s.wait(lambda s: len(s.changes()) == 1)
        after = s.changes()[0].id
        await s.wait(lambda s: s.events[-1].event == "" and s.events[-1].id == after)


async def test_bad_requests_get_json_errors(store: MirrorStore, tmp_path: Path) -> None:
    async with served(store) as srv, httpx.AsyncClient() as http:
        for path, status, words in [
            ("/items/changes?filter=done=eqq.x", 400, "bad filter"),
            ("/items/changes?filter=nope=eq.1", 400, "no column"),
            ("/items/rows?filter=nope=eq.1", 400, "no column"),
            ("/items/changes?last_event_id=abc", 400, "sequence number"),
            ("/items/changes?coalesce_ms=-5", 400, "coalesce_ms"),
            (f"/items/changes?last_event_id={store.seq() + 1000}", 400, "ahead"),
            ("/nothing/changes", 404, "items"),
            ("/items/rows?limit=x", 400, "limit"),
        ]:
            resp = await http.get(srv.base + path)
            assert resp.status_code == status, (path, resp.text)
            assert words in resp.text, (path, resp.text)
    # no file yet, then a table whose first snapshot is still being taken
    half = MirrorStore(tmp_path / "half.sqlite")
    half.ensure_table(SHAPE)
    half.close()
    missing = LiveEndpoint({"items": StoreSource(tmp_path / "absent.sqlite", "items"),
                            "half": StoreSource(tmp_path / "half.sqlite", "items")})
    transport = httpx.ASGITransport(app=missing)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        for path in ("/items/rows", "/half/rows", "/half/changes"):
            resp = await http.get(path)
            assert resp.status_code == 503 and "not ready" in resp.json()["error"], path
            assert resp.headers["retry-after"] == "1"


def stalled_client(port: int, path: str) -> socket.socket:
    """A client that sends its request and then never reads (a tiny receive window)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
    return sock


def read_all(sock: socket.socket) -> list[Sse]:
    """Everything the server wrote before closing (headers skipped, chunked body parsed)."""
    sock.settimeout(WAIT)
    raw = b""
    while chunk := sock.recv(65536):
        raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"200" in head.split(b"\r\n")[0]
    text = b""
    while body:  # chunked transfer encoding
        size_line, _, rest = body.partition(b"\r\n")
        if not size_line:
            break
        size = int(size_line, 16)
        if size == 0 or len(rest) < size:
            text += rest[:size]
            break
        text += rest[:size]
        body = rest[size + 2:]
    parser = Parser()
    events = [e for line in text.decode().split("\n") if (e := parser.line(line)) is not None]
    return events


async def test_a_stalled_client_is_cut_off_and_never_slows_a_healthy_one(
        store: MirrorStore, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="supasync.web")
    big = "x" * 4000
    async with served(store, buffer_bytes=64 * 1024, max_lag=200, send_timeout=120) as srv, \
            streams() as open_, httpx.AsyncClient() as http:
        port = int(srv.base.rsplit(":", 1)[1])
        start = store.seq()
        healthy = open_(f"{srv.base}/items/changes?last_event_id={start}")
        stalled = await asyncio.to_thread(stalled_client, port,
                                          f"/items/changes?last_event_id={start}")
        await healthy.wait(lambda s: bool(s.events))
        await asyncio.sleep(0)
        written = 0
        try:
            while srv.endpoint.stats.cut_off == 0:  # write until the stalled one is cut off
                assert written < 20_000, "the stalled client was never cut off"
                with store.transaction():
                    store.merge_rows(SHAPE, [row(written + i, big) for i in range(50)])
                written += 50
                await healthy.wait(lambda s, n=written: len(s.changes()) == n)
                # /rows answers meanwhile
                assert (await http.get(f"{srv.base}/items/rows?limit=1")).status_code == 200
            # the healthy client got every change, the stalled one held nobody up
            await healthy.wait(lambda s: len(s.changes()) == written)
            assert srv.endpoint.stats.cut_off == 1
            assert "fell behind" in caplog.text and "cut off stream" in caplog.text
            # the stalled client reads what reached it, then resumes from its last id
            got = await asyncio.to_thread(read_all, stalled)
        finally:
            stalled.close()
        partial = [e for e in got if e.event == "insert"]
        assert len(partial) < written
        last = max(e.id for e in got if e.id is not None)
        rest = open_(f"{srv.base}/items/changes", {"Last-Event-ID": str(last)})
        await rest.wait(lambda s: len(partial) + len(s.changes()) == written)
        ids = [e.id for e in partial + rest.changes()]
        assert ids == sorted(set(ids)) == [e.id for e in healthy.changes()]


async def test_shutdown_ends_every_stream_at_once(store: MirrorStore) -> None:
    async with served(store, heartbeat=3600, send_timeout=3600) as srv, streams() as open_:
        port = int(srv.base.rsplit(":", 1)[1])
        open_streams = [open_(f"{srv.base}/items/changes") for _ in range(5)]
        stalled = await asyncio.to_thread(stalled_client, port, "/items/changes")
        try:
            for s in open_streams:
                await s.wait(lambda s: bool(s.events))
            put(store, row(1, "x" * 4000))
            for s in open_streams:
                await s.wait(lambda s: len(s.changes()) == 1)
            srv.stop.set()
            # uvicorn alone would wait for these responses for ever (until killed)
            async with asyncio.timeout(10):
                await srv.task
                for s in open_streams:
                    await s.wait(lambda s: s.ended)
        finally:
            stalled.close()
        assert srv.endpoint.stats.open == 0
