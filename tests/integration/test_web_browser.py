"""examples/web/index.html in a real browser: the Debian package ``chromium`` (/usr/bin/chromium)
driven by Playwright. The page shows the table's rows, applies live changes, and survives the
endpoint going away and coming back (a restart on the same store file) without a gap or a
duplicate: its EventSource reconnects with Last-Event-ID by itself. With the identity ``user``,
two signed-in users' pages each show only their own rows, live."""

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
async def page_server(db: Path | None, port: int = 0, live: LiveEndpoint | None = None
                      ) -> AsyncIterator[tuple[int, asyncio.Event]]:
    """The page at / and a LiveEndpoint at /live (over *db*, or *live*), until the block ends."""
    if live is None:
        assert db is not None
        live = LiveEndpoint({"todos": StoreSource(db, "todos")}, poll_interval=0.01)

    async def index(request: Request) -> HTMLResponse:
        return HTMLResponse(PAGE.read_text())

    app = Starlette(routes=[Route("/", index), Mount("/live", live)])
    assert live is not None
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


def launch_args() -> dict[str, Any]:
    return {"executable_path": CHROMIUM,
            "args": ["--headless", "--no-sandbox", "--disable-gpu",
                     "--disable-background-networking"]}


@pytest.mark.integration
async def test_two_signed_in_users_each_see_only_their_own_rows(
        supabase_stack: Any, tmp_path: Path) -> None:
    import uuid

    from playwright.async_api import async_playwright

    from supasync.client.config import Settings
    from supasync.mirror.worker import MirrorTarget
    from supasync.web.users import UserSources

    table = f"web_page_{uuid.uuid4().hex[:8]}"
    supabase_stack.sql(f"""
        create table public.{table} (
            id bigint generated by default as identity primary key,
            owner uuid not null references auth.users(id) on delete cascade,
            title text not null);
        alter table public.{table} enable row level security;
        create policy own_rows on public.{table} for all using (owner = auth.uid());
        grant select on public.{table} to authenticated;
        alter publication supabase_realtime add table public.{table};
    """)
    people = {}
    for name in ("ann", "bob"):
        email = f"{name}-{uuid.uuid4().hex[:6]}@example.com"
        uid = supabase_stack.create_user(email, "correct horse")["id"]
        token = supabase_stack.sign_in(email, "correct horse")["access_token"]
        people[name] = (uid, token)
        supabase_stack.sql(f"insert into public.{table} (owner, title) values "
                           f"('{uid}', '{name} 1'), ('{uid}', '{name} 2')")
    settings = Settings(url=supabase_stack.url, realtime_url=supabase_stack.realtime_url,
                        anon_key=supabase_stack.anon_key,
                        service_role_key=supabase_stack.service_role_key)
    live = LiveEndpoint(users=UserSources(settings, [MirrorTarget("public", table)],
                                          poll_interval=0.01))

    async def titles(page: Any) -> list[str]:
        cells: list[str] = await page.eval_on_selector_all(
            "#rows tr", "trs => trs.map(tr => tr.cells[2].textContent)")
        return sorted(c.strip('"') for c in cells)

    try:
        async with async_playwright() as pw, page_server(None, live=live) as (port, _):
            browser = await pw.chromium.launch(**launch_args())
            try:
                pages = {}
                for name, (_, token) in people.items():
                    page = await (await browser.new_context()).new_page()
                    await page.goto(f"http://127.0.0.1:{port}/?base=/live&table={table}"
                                    f"&access_token={token}")
                    await page.wait_for_function(
                        "document.getElementById('status').textContent == 'live'",
                        timeout=WAIT * 2000)
                    pages[name] = page
                assert await titles(pages["ann"]) == ["ann 1", "ann 2"]
                assert await titles(pages["bob"]) == ["bob 1", "bob 2"]
                for name, (uid, _) in people.items():
                    supabase_stack.sql(f"insert into public.{table} (owner, title) values "
                                       f"('{uid}', '{name} live')")
                for name, page in pages.items():
                    await page.wait_for_function(
                        "document.querySelectorAll('#rows tr').length == 3",
                        timeout=WAIT * 1000)
                    assert await titles(page) == [f"{name} 1", f"{name} 2", f"{name} live"]
            finally:
                await browser.close()
    finally:
        supabase_stack.sql(f"drop table if exists public.{table}")
