"""examples/web/index.html in a real browser: the Debian package ``chromium`` (/usr/bin/chromium)
driven by Playwright. The page shows the table's rows, applies live changes, and survives the
endpoint going away and coming back (a restart on the same store file) without a gap or a
duplicate: its EventSource reconnects with Last-Event-ID by itself."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Mount, Route

from supasync.store.tables import MirrorStore, TableShape
from supasync.web import LiveEndpoint, StoreSource
from supasync.web.serve import serve

CHROMIUM = "/usr/bin/chromium"
PAGE = Path(__file__).resolve().parents[2] / "examples" / "web" / "index.html"
SHAPE = TableShape("public", "todos", (("id", "int8"), ("title", "text"), ("done", "bool")),
                   ("id",))
WAIT = 30.0

pytestmark = [
    pytest.mark.skipif(not os.path.exists(CHROMIUM),
                       reason="needs the Debian package chromium (/usr/bin/chromium): "
                       "apt-get install chromium"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None,
                       reason="needs playwright: pip install playwright"),
]


def put(store: MirrorStore, *rows: dict[str, Any]) -> None:
    with store.transaction():
        store.merge_rows(SHAPE, rows)


@contextlib.asynccontextmanager
async def page_server(db: Path, port: int = 0) -> AsyncIterator[tuple[int, asyncio.Event]]:
    """The page at / and a LiveEndpoint at /live over *db*, until the block ends."""
    live = LiveEndpoint({"todos": StoreSource(db, "todos")}, poll_interval=0.01)

    async def index(request: Request) -> HTMLResponse:
        return HTMLResponse(PAGE.read_text())

    app = Starlette(routes=[Route("/", index), Mount("/live", live)])
    stop = asyncio.Event()
    bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(app, port=port, endpoints=[live], stop=stop,
                                     on_started=bound.set_result))
    async with asyncio.timeout(WAIT):
        got = await asyncio.shield(bound)
    try:
        yield got, stop
    finally:
        stop.set()
        await task


async def test_the_page_shows_live_changes_and_survives_a_restart_without_gap_or_duplicate(
        tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    store = MirrorStore(tmp_path / "todos.sqlite")
    store.ensure_table(SHAPE)
    store.mark_snapshot_complete("public", "todos")
    put(store, *({"id": i, "title": f"todo {i}", "done": False} for i in (1, 2, 3)))

    async def shown(page: Any) -> dict[int, str]:
        cells = await page.eval_on_selector_all(
            "#rows tr", "trs => trs.map(tr => [...tr.cells].map(td => td.textContent))")
        return {int(c[0]): c[1].strip('"') for c in cells}

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking"])
        try:
            page = await browser.new_page()
            async with page_server(store.path) as (port, _):
                await page.goto(f"http://127.0.0.1:{port}/?base=/live&table=todos")
                await page.wait_for_function("document.querySelectorAll('#rows tr').length == 3",
                                             timeout=WAIT * 1000)
                await page.wait_for_function(
                    "document.getElementById('status').textContent == 'live'",
                    timeout=WAIT * 1000)
                put(store, {"id": 4, "title": "added live", "done": False})
                await page.wait_for_function("document.querySelectorAll('#rows tr').length == 4",
                                             timeout=WAIT * 1000)
                assert (await shown(page))[4] == "added live"
            # the endpoint is gone (every stream ended); changes go on meanwhile
            put(store, {"id": 5, "title": "while away", "done": False})
            put(store, {"id": 1, "title": "changed while away", "done": True})
            async with page_server(store.path, port):  # back, same address, same file
                await page.wait_for_function("window.supasync.events == 3",
                                             timeout=WAIT * 1000)
                await page.wait_for_function("document.querySelectorAll('#rows tr').length == 5",
                                             timeout=WAIT * 1000)
                # exactly 3 changes applied (4, 5, 1): none missed, none twice, no refetch
                assert await page.evaluate("window.supasync.refetches") == 0
                assert await shown(page) == {r["id"]: r["title"] for r in store.rows(SHAPE)}
                put(store, {"id": 6, "title": "after the restart", "done": False})
                await page.wait_for_function("window.supasync.events == 4",
                                             timeout=WAIT * 1000)
                assert (await shown(page))[6] == "after the restart"
        finally:
            await browser.close()
            store.close()
