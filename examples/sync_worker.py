"""Realtime changes in plain synchronous code: a Celery/Django-style worker function.

    python examples/sync_worker.py                   # table "todos", INSERT and UPDATE
    python examples/sync_worker.py --table todos --seconds 60

No asyncio in sight: :class:`~supasync.client.sync.SyncRealtime` runs the client on a background
thread, calls handlers on one dedicated handler thread (one change at a time, in order), and
every method blocks until done. Settings come from the environment or ``.env``, as for every
supasync program. The table is the one of ``examples/async_backend.py``.

In a Celery worker, create the facade in ``worker_process_init`` (after the fork), not at
import time; in Django, in ``AppConfig.ready()`` of the process that should listen (a
management command is the usual place), never in every web worker.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from supasync import Change, GapRepaired, StatusEvent
from supasync.client.sync import SyncRealtime

log = logging.getLogger("sync_worker")


def process_todo(change: Change) -> None:
    """The work itself: what a Celery task or a Django signal receiver would do.

    It may block (ORM writes, HTTP calls): it runs on the handler thread, not on the thread
    that keeps the socket alive. If it raises, the error is logged and reported as
    ``HandlerFailed``, and the next change still arrives.
    """
    row = change.row or {}
    print(f"{change.origin:<8} {change.op:<6} id={row.get('id')} title={row.get('title')!r}",
          flush=True)


def on_status(event: StatusEvent) -> None:
    """Status events, on the handler thread too (so never concurrently with process_todo)."""
    if isinstance(event, GapRepaired) and event.mode != "none":
        log.info("%s caught up by %s repair (+%d ~%d -%d)", event.subscription, event.mode,
                 event.inserted, event.updated, event.deleted)


def run(table: str, seconds: float | None) -> None:
    stop = threading.Event()
    # Ctrl-C and SIGTERM end the wait below; the `with` block then closes the client.
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    with SyncRealtime.from_env() as rt:  # SUPABASE_* from the environment / .env
        rt.on_status(on_status)
        rt.subscribe(table, events=["INSERT", "UPDATE"], handler=process_todo)
        rt.wait_live(timeout=30)  # raises TableNotPublished, FilterRejected... if wrong
        print(f"live ({rt.state})", flush=True)
        rt.wait_synced(timeout=60)  # the rows already there are in the handlers' queue too
        print("synced", flush=True)
        stop.wait(seconds)  # the main thread is free: serve requests, run a scheduler...
        print("stopping", flush=True)
    # Here the client is closed, the loop and handler threads have ended.


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", default="todos")
    parser.add_argument("--seconds", type=float, help="stop after this long (default: Ctrl-C)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    run(args.table, args.seconds)
