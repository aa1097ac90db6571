"""A FastAPI app with a live view of one table: its rows, and its changes streamed to browsers.

    pip install fastapi 'supasync[web]'    # or: pip install -e ".[examples,web]" in this checkout
    python examples/fastapi_app.py         # serves http://127.0.0.1:8000

    open http://127.0.0.1:8000/                        # examples/web/index.html: a live table
    curl http://127.0.0.1:8000/todos                   # the rows (your own route, from the mirror)
    curl http://127.0.0.1:8000/live/todos/rows         # the rows and the seq they reflect
    curl -N http://127.0.0.1:8000/live/todos/changes   # server-sent events, resumable

Settings come from the environment or ``.env`` (``SUPABASE_URL``, ``SUPABASE_ANON_KEY`` and a
credential that may read the table, e.g. ``SUPASYNC_TOKEN_SOURCE=service_role``);
``EXAMPLE_TABLE`` names the table (default ``todos``, as in ``examples/async_backend.py``).

How it fits together: the mirror worker (:func:`supasync.mirror.worker.run_mirror`, the library
call behind ``supasync mirror``) keeps the table in a local file through drops, restarts and
token expiry, and journals every change it applies; :class:`supasync.web.LiveEndpoint`, mounted
at ``/live``, serves that file: ``/live/todos/rows`` and ``/live/todos/changes``, where every
event's id is its journal position, a reconnecting browser resumes exactly where it left off, a
browser that stops reading is cut off without slowing the others, and shutdown ends every stream
at once (:func:`supasync.web.serve.serve` instead of ``uvicorn.run``, which would wait for open
streams for ever).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

try:
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse

    from supasync.web import LiveEndpoint, StoreSource
    from supasync.web.serve import serve
except ImportError:  # pragma: no cover - depends on the environment
    raise SystemExit(
        "this example needs FastAPI, starlette and uvicorn: pip install fastapi uvicorn "
        "'supasync[web]' (or pip install -e \".[examples,web]\" in the supasync checkout)"
    ) from None

from supasync.client.config import load_settings
from supasync.core.waiting import install_stop_signals
from supasync.mirror.worker import MirrorOptions, mirror_targets, run_mirror

TABLE = os.environ.get("EXAMPLE_TABLE", "todos")
PAGE = Path(__file__).resolve().parent / "web" / "index.html"


def create_app(db: Path, stop: asyncio.Event) -> tuple[FastAPI, LiveEndpoint]:
    """The app, and its endpoint (to close at shutdown). The mirror runs while the app does."""
    settings = load_settings()
    targets = mirror_targets([TABLE], None, settings)
    source = StoreSource(db, targets[0].table)  # public.todos is "todos" in the file
    live = LiveEndpoint({TABLE: source})

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        options = MirrorOptions(db=db, progress=False, quiet=True)
        mirror = asyncio.create_task(run_mirror(settings, targets, options, stop=stop))
        try:
            yield
        finally:
            stop.set()
            await mirror
            source.close()

    app = FastAPI(title="supasync example", lifespan=lifespan)
    app.mount("/live", live)

    @app.get("/todos")
    async def list_todos() -> list[dict[str, Any]]:
        """The rows, read from the mirror file in a worker thread (never behind a stream)."""
        got = await asyncio.to_thread(source.read, None, order_by="id")
        return got.rows

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return PAGE.read_text().replace('content="todos"', f'content="{TABLE}"')

    return app, live


async def main() -> None:
    stop = asyncio.Event()
    install_stop_signals(stop)  # SIGINT/SIGTERM: end the streams, stop the mirror, exit 0
    with tempfile.TemporaryDirectory(prefix="supasync-example-") as tmp:
        app, live = create_app(Path(tmp) / "mirror.sqlite", stop)
        await serve(app, port=int(os.environ.get("PORT", "8000")), endpoints=[live], stop=stop)


if __name__ == "__main__":
    asyncio.run(main())
