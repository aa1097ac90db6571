"""A FastAPI app with a live view of one table: its rows, its recent changes, and a change stream.

    pip install fastapi uvicorn            # or: pip install -e ".[examples]" in this checkout
    python examples/fastapi_app.py         # serves http://127.0.0.1:8000

    curl http://127.0.0.1:8000/todos             # the rows, from supasync's cache (no query)
    curl http://127.0.0.1:8000/changes           # the last 100 changes
    curl -N http://127.0.0.1:8000/changes/stream # server-sent events, one per change

Settings come from the environment or ``.env`` (``SUPABASE_URL``, ``SUPABASE_ANON_KEY`` and a
credential); ``EXAMPLE_TABLE`` names the table (default ``todos``, as in
``examples/async_backend.py``).

The :class:`~supasync.Realtime` client lives as long as the app: it is started in the lifespan
and closed when the server shuts down. Gap repair is on by default, so the subscription's cache
holds the table's current rows (the first join loads them, every reconnect catches up), and
``GET /todos`` answers from memory without touching the database.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

try:
    from fastapi import FastAPI, Request
    from fastapi.responses import StreamingResponse
except ImportError:  # pragma: no cover - depends on the environment
    raise SystemExit(
        "this example needs FastAPI and uvicorn: pip install fastapi uvicorn "
        '(or pip install -e ".[examples]" in the supasync checkout)'
    ) from None

from supasync import Change, Realtime, Subscription

TABLE = os.environ.get("EXAMPLE_TABLE", "todos")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    rt = Realtime.from_env()
    todos = rt.subscribe(TABLE)
    recent: collections.deque[Change] = collections.deque(maxlen=100)

    async def remember(change: Change) -> None:  # async: runs on the loop, no thread hop
        recent.append(change)

    todos.on(remember)
    async with rt:
        await rt.wait_live(timeout=30)  # fail at start-up, not on the first request
        await rt.wait_synced(timeout=60)  # serve once the rows already there are loaded
        app.state.rt, app.state.todos, app.state.recent = rt, todos, recent
        yield
    # Leaving the block closed the client: every /changes/stream response has ended.


app = FastAPI(title="supasync example", lifespan=lifespan)


@app.get("/todos")
async def list_todos(request: Request) -> list[dict[str, Any]]:
    """The rows as the subscription's cache holds them (its read model: safe from any
    thread, so the read runs in a worker thread and never blocks the event loop)."""
    todos: Subscription = request.app.state.todos
    return await asyncio.to_thread(lambda: list(todos.rows(order_by="id")))


@app.get("/changes")
async def recent_changes(request: Request) -> list[dict[str, Any]]:
    """The last 100 changes, oldest first, as JSON (``Change.to_dict()``)."""
    return [change.to_dict() for change in request.app.state.recent]


@app.get("/changes/stream")
async def stream_changes(request: Request) -> StreamingResponse:
    """Server-sent events: every change from now on, until the client goes away.

    Each ``async for`` over a subscription gets its own bounded queue (``queue_size``). A client
    that stops reading fills its queue and then holds up the subscription (backpressure), so an
    app with many browsers should copy changes into per-client queues that drop or disconnect
    the slow ones.
    """
    todos: Subscription = request.app.state.todos

    async def events() -> AsyncIterator[str]:
        async for change in todos:  # ends when the client disconnects or the app stops
            yield f"event: {change.op.lower()}\ndata: {json.dumps(change.to_dict())}\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
